//! Names from outside that reach the kernel or become path components: interface names (passed
//! to aya, which panics on a NUL, and joined into link pin paths) and network namespace names
//! (joined into `/var/run/netns/NAME`). Checked here, before any use, with errors that name the
//! input (escaped) and the fix.

use crate::policy::echo::escape;

/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_INTERFACE_NAME: usize = 15;
/// Longest network namespace name (a file name: `NAME_MAX`).
pub const MAX_NETNS_NAME: usize = 255;

/// A name that can't be an interface or namespace name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A bad interface name.
    #[error("interface name \"{name}\" {problem}")]
    Interface {
        /// The name, escaped.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A bad network namespace name.
    #[error("network namespace name \"{name}\" {problem}")]
    Netns {
        /// The name, escaped.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// What is wrong with `name` as a file-name-like component, if anything: empty, `.` or `..`,
/// or a character outside printable ASCII, or one of `extra_forbidden`.
fn component_problem(name: &str, max: usize, extra_forbidden: &[char]) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > max {
        return Some(format!("is longer than {max} bytes"));
    }
    if name == "." || name == ".." {
        return Some("is a directory reference, not a name".into());
    }
    if name.contains('/') {
        return Some("contains '/'".into());
    }
    if name.contains(|c: char| c.is_ascii_whitespace()) {
        return Some("contains whitespace".into());
    }
    if let Some(c) = name.chars().find(|c| extra_forbidden.contains(c)) {
        return Some(format!("contains {c:?}"));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!(
            "contains {}, which is not a printable ASCII character",
            c.escape_unicode()
        ));
    }
    None
}

/// Checks an interface name the way the kernel does (`dev_valid_name`: at most 15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace), and further allows only printable ASCII (no NUL,
/// no control characters).
pub fn check_interface(name: &str) -> Result<(), NameError> {
    match component_problem(name, MAX_INTERFACE_NAME, &[':']) {
        None => Ok(()),
        Some(problem) => Err(NameError::Interface {
            name: escape(name),
            problem: format!(
                "{problem}; interface names are 1 to {MAX_INTERFACE_NAME} printable ASCII \
                 characters without spaces, '/' or ':' (`ip link` lists them)"
            ),
        }),
    }
}

/// Checks a network namespace name (as made by `ip netns add`): a single file name under
/// `/var/run/netns`, so no `/`, not `.` or `..`, printable ASCII only.
pub fn check_netns(name: &str) -> Result<(), NameError> {
    match component_problem(name, MAX_NETNS_NAME, &[]) {
        None => Ok(()),
        Some(problem) => Err(NameError::Netns {
            name: escape(name),
            problem: format!("{problem}; give the name `ip netns list` shows (a name, not a path)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in [
            "eth0",
            "enp0s31f6",
            "bond0.100",
            "veth-a_b",
            "a23456789012345",
        ] {
            assert_eq!(check_interface(good), Ok(()), "{good}");
        }
        for (bad, problem) in [
            ("", "is empty"),
            ("a234567890123456", "is longer than 15 bytes"),
            ("..", "directory reference"),
            ("eth0/x", "contains '/'"),
            ("eth0:1", "contains ':'"),
            ("eth 0", "contains whitespace"),
            ("eth\0", "\\u{0}, which is not a printable"),
            ("e\u{1b}[2J", "\\u{1b}, which is not a printable"),
        ] {
            let error = check_interface(bad).unwrap_err().to_string();
            assert!(error.contains(problem), "{bad:?}: {error}");
            assert!(
                !error.contains('\0') && !error.contains('\u{1b}'),
                "{error:?}"
            );
        }
    }

    #[test]
    fn netns_names() {
        assert_eq!(check_netns("blue"), Ok(()));
        assert_eq!(check_netns("api-ns_1.x"), Ok(()));
        let error = check_netns("../../proc/self/ns/net")
            .unwrap_err()
            .to_string();
        assert!(error.contains("contains '/'"), "{error}");
        assert!(check_netns("..").is_err());
        assert!(check_netns("").is_err());
        assert!(check_netns("a\0").is_err());
    }
}
