//! The `[etcd]` table of the daemon's configuration: where the fleet's desired state lives
//! (`ranges_from = "etcd"`). Plain validated settings; the connection itself belongs to the
//! fleet feature.
//!
//! ```toml
//! ranges_from = "etcd"
//! [etcd]
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//! prefix = "/apifence/"                 # default
//! cluster = "default"                   # default: one document per cluster
//! host = "cp-1"                         # default: the hostname
//! ca = "/etc/kubernetes/pki/etcd/ca.crt"
//! cert = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
//! key = "/etc/kubernetes/pki/apiserver-etcd-client.key"
//! username = "apifence"                 # optional, with password_file
//! password_file = "/etc/apifence/etcd-password"
//! ```

use std::path::{Path, PathBuf};

use toml::Value;

use super::toml_value::article;
use crate::policy::echo::escape;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/apifence/";
/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "default";
/// Keys of the `[etcd]` table, each with an example line used in error messages.
pub const ETCD_KEYS: [(&str, &str); 8] = [
    ("endpoints", r#"endpoints = ["https://10.0.0.1:2379"]"#),
    ("prefix", r#"prefix = "/apifence/""#),
    ("cluster", r#"cluster = "default""#),
    ("host", r#"host = "cp-1""#),
    ("ca", r#"ca = "/etc/kubernetes/pki/etcd/ca.crt""#),
    (
        "cert",
        r#"cert = "/etc/kubernetes/pki/apiserver-etcd-client.crt""#,
    ),
    (
        "key",
        r#"key = "/etc/kubernetes/pki/apiserver-etcd-client.key""#,
    ),
    ("username", r#"username = "apifence""#),
];
/// `password_file` is the ninth key; kept apart so the table above stays one line per key.
const PASSWORD_FILE: (&str, &str) = (
    "password_file",
    r#"password_file = "/etc/apifence/etcd-password""#,
);

fn example(key: &str) -> &'static str {
    ETCD_KEYS
        .iter()
        .chain(std::iter::once(&PASSWORD_FILE))
        .find(|(k, _)| *k == key)
        .map_or("", |(_, e)| e)
}

fn key_names() -> String {
    ETCD_KEYS
        .iter()
        .chain(std::iter::once(&PASSWORD_FILE))
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// TLS material for the etcd connection (kubeadm's etcd client certificates work as they are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA bundle that signed the etcd servers' certificates.
    pub ca: PathBuf,
    /// Client certificate and key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The validated `[etcd]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/`. Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// The cluster whose document this host follows. Default [`DEFAULT_CLUSTER`].
    pub cluster: String,
    /// This host's name under `hosts/`. Default: the hostname.
    pub host: String,
    /// TLS, when `ca` is set (required with `https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// User name for etcd authentication, with the file holding its password.
    pub auth: Option<(String, PathBuf)>,
}

impl EtcdConfig {
    /// The key of the small pointer flipped last: `<prefix><cluster>/current`.
    pub fn current_key(&self) -> String {
        format!("{}{}/current", self.prefix, self.cluster)
    }

    /// Prefix of the content-addressed chunks: `<prefix><cluster>/chunks/`.
    pub fn chunks_prefix(&self) -> String {
        format!("{}{}/chunks/", self.prefix, self.cluster)
    }

    /// Prefix of the hosts' status keys: `<prefix><cluster>/hosts/`.
    pub fn hosts_prefix(&self) -> String {
        format!("{}{}/hosts/", self.prefix, self.cluster)
    }

    /// Prefix of the names of every host that ever reported (no lease, so a host whose report
    /// expired is shown as gone): `<prefix><cluster>/seen/`.
    pub fn seen_prefix(&self) -> String {
        format!("{}{}/seen/", self.prefix, self.cluster)
    }
}

/// Why the `[etcd]` table is rejected. Each message names the key and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdConfigError {
    /// `[etcd]` is not a table.
    #[error(
        "etcd must be a table; write it as [etcd] followed by keys, for example: [etcd] \
         endpoints = [\"https://10.0.0.1:2379\"]"
    )]
    NotATable,
    /// A key the table doesn't know.
    #[error(
        "unknown key \"etcd.{key}\"{suggestion}; the keys of [etcd] are {}",
        key_names()
    )]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `; did you mean "…"?` or empty.
        suggestion: String,
    },
    /// A value of the wrong type.
    #[error(
        "etcd.{key} is {found}, but it must be {expected}; for example: {}",
        example(key)
    )]
    WrongType {
        /// The key.
        key: &'static str,
        /// What was found.
        found: &'static str,
        /// What is needed.
        expected: &'static str,
    },
    /// No endpoints.
    #[error(
        "etcd.endpoints is missing or empty; list the etcd client URLs, for example: {}",
        example("endpoints")
    )]
    NoEndpoints,
    /// An endpoint that is not `scheme://host:port`.
    #[error(
        "etcd.endpoints entry {position} \"{value}\" {problem}; write http://HOST:PORT or \
         https://HOST:PORT, for example: {}",
        example("endpoints")
    )]
    BadEndpoint {
        /// 1-based entry.
        position: usize,
        /// As written.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// http and https endpoints mixed.
    #[error(
        "etcd.endpoints mixes http:// and https://; use one scheme for all members (https:// \
         with ca, cert and key)"
    )]
    MixedSchemes,
    /// A bad prefix.
    #[error(
        "etcd.prefix = \"{0}\" must start and end with \"/\" and hold no spaces; for example: \
         prefix = \"/apifence/\""
    )]
    BadPrefix(String),
    /// A bad cluster or host name.
    #[error(
        "etcd.{key} = \"{value}\" must be 1 to 63 letters, digits, '.', '_' or '-'; for \
         example: {}",
        example(key)
    )]
    BadName {
        /// `cluster` or `host`.
        key: &'static str,
        /// As written.
        value: String,
    },
    /// A relative path.
    #[error(
        "etcd.{key} = \"{value}\" is not an absolute path; for example: {}",
        example(key)
    )]
    NotAbsolute {
        /// The key.
        key: &'static str,
        /// As written.
        value: String,
    },
    /// One of cert/key without the other, or username/password_file.
    #[error(
        "etcd.{given} is set but etcd.{missing} is not; set both, for example: {}",
        example(missing)
    )]
    Pair {
        /// The key given.
        given: &'static str,
        /// The key missing.
        missing: &'static str,
    },
    /// https without a CA, or a CA or client certificate with http.
    #[error("{0}")]
    Tls(&'static str),
    /// The hostname can't be read for the default `host`.
    #[error(
        "etcd.host is not set and the hostname can't be read; set it, for example: host = \"cp-1\""
    )]
    NoHostname,
}

fn string(key: &'static str, value: &Value) -> Result<String, EtcdConfigError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(EtcdConfigError::WrongType {
            key,
            found: article(other),
            expected: "a string",
        }),
    }
}

fn path(key: &'static str, value: &Value, dir: &Path) -> Result<PathBuf, EtcdConfigError> {
    let text = string(key, value)?;
    let path = PathBuf::from(&text);
    if path.is_absolute() {
        Ok(path)
    } else if text.is_empty() {
        Err(EtcdConfigError::NotAbsolute {
            key,
            value: escape(&text),
        })
    } else {
        // Relative to the config file's directory, like service_tags_file.
        Ok(dir.join(path))
    }
}

fn name(key: &'static str, text: String) -> Result<String, EtcdConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(text)
    } else {
        Err(EtcdConfigError::BadName {
            key,
            value: escape(&text),
        })
    }
}

/// Checks one endpoint; returns whether it is https.
fn endpoint(position: usize, text: &str) -> Result<bool, EtcdConfigError> {
    let bad = |problem| EtcdConfigError::BadEndpoint {
        position,
        value: escape(text),
        problem,
    };
    let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("has no http:// or https://"));
    };
    let rest = rest.trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(bad("has no port"));
    };
    if host.is_empty() || host.contains('/') || host.contains(' ') {
        return Err(bad("has no valid host"));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("has no valid port"));
    }
    Ok(https)
}

/// The machine's hostname.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    // The first label: `cp-1.example.com` reports as `cp-1`.
    let first = name.split('.').next().unwrap_or_default().to_string();
    (!first.is_empty()).then_some(first)
}

/// Validates the `[etcd]` table; relative paths are taken relative to `dir` (the config file's
/// directory).
pub fn parse_etcd(value: Value, dir: &Path) -> Result<EtcdConfig, EtcdConfigError> {
    let Value::Table(table) = value else {
        return Err(EtcdConfigError::NotATable);
    };
    let known = || {
        ETCD_KEYS
            .iter()
            .chain(std::iter::once(&PASSWORD_FILE))
            .map(|(k, _)| *k)
    };
    for key in table.keys() {
        if !known().any(|k| k == key) {
            return Err(EtcdConfigError::UnknownKey {
                key: escape(key),
                suggestion: crate::policy::suggest::did_you_mean(key, known()),
            });
        }
    }
    let endpoints = match table.get("endpoints") {
        None => return Err(EtcdConfigError::NoEndpoints),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| string("endpoints", item))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(EtcdConfigError::WrongType {
                key: "endpoints",
                found: article(other),
                expected: "a list of URLs",
            });
        }
    };
    if endpoints.is_empty() {
        return Err(EtcdConfigError::NoEndpoints);
    }
    let schemes = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(i + 1, e))
        .collect::<Result<Vec<_>, _>>()?;
    let https = schemes[0];
    if schemes.iter().any(|&s| s != https) {
        return Err(EtcdConfigError::MixedSchemes);
    }
    let prefix = match table.get("prefix") {
        Some(value) => string("prefix", value)?,
        None => DEFAULT_PREFIX.to_string(),
    };
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.contains(char::is_whitespace) {
        return Err(EtcdConfigError::BadPrefix(escape(&prefix)));
    }
    let cluster = match table.get("cluster") {
        Some(value) => name("cluster", string("cluster", value)?)?,
        None => DEFAULT_CLUSTER.to_string(),
    };
    let host = match table.get("host") {
        Some(value) => name("host", string("host", value)?)?,
        None => name("host", hostname().ok_or(EtcdConfigError::NoHostname)?)?,
    };
    let get_path = |key: &'static str| table.get(key).map(|v| path(key, v, dir)).transpose();
    let (ca, cert, key) = (get_path("ca")?, get_path("cert")?, get_path("key")?);
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            return Err(EtcdConfigError::Pair {
                given: "cert",
                missing: "key",
            });
        }
        (None, Some(_)) => {
            return Err(EtcdConfigError::Pair {
                given: "key",
                missing: "cert",
            });
        }
        (None, None) => None,
    };
    let tls = match (https, ca, identity) {
        (true, Some(ca), identity) => Some(EtcdTls { ca, identity }),
        (true, None, _) => {
            return Err(EtcdConfigError::Tls(
                "etcd.endpoints use https:// but etcd.ca is not set; name the CA that signed \
                 the etcd servers' certificates, for example: ca = \
                 \"/etc/kubernetes/pki/etcd/ca.crt\"",
            ));
        }
        (false, None, None) => None,
        (false, _, _) => {
            return Err(EtcdConfigError::Tls(
                "etcd.ca, etcd.cert or etcd.key is set but etcd.endpoints use http://; write \
                 the endpoints as https://HOST:PORT",
            ));
        }
    };
    let username = table
        .get("username")
        .map(|v| string("username", v))
        .transpose()?;
    let password_file = get_path("password_file")?;
    let auth = match (username, password_file) {
        (Some(user), Some(file)) => Some((user, file)),
        (Some(_), None) => {
            return Err(EtcdConfigError::Pair {
                given: "username",
                missing: "password_file",
            });
        }
        (None, Some(_)) => {
            return Err(EtcdConfigError::Pair {
                given: "password_file",
                missing: "username",
            });
        }
        (None, None) => None,
    };
    Ok(EtcdConfig {
        endpoints,
        prefix,
        cluster,
        host,
        tls,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EtcdConfig, EtcdConfigError> {
        let table: toml::Table = text.parse().unwrap();
        parse_etcd(Value::Table(table), Path::new("/etc/apifence"))
    }

    #[test]
    fn defaults_and_keys() {
        let config = parse(
            r#"endpoints = ["http://127.0.0.1:2379"]
host = "cp-1""#,
        )
        .unwrap();
        assert_eq!(config.prefix, "/apifence/");
        assert_eq!(config.cluster, "default");
        assert_eq!(config.host, "cp-1");
        assert_eq!(config.tls, None);
        assert_eq!(config.current_key(), "/apifence/default/current");
        assert_eq!(config.hosts_prefix(), "/apifence/default/hosts/");
        let full = parse(
            r#"endpoints = ["https://10.0.0.1:2379", "https://etcd-2:2379/"]
prefix = "/x/"
cluster = "prod"
ca = "/pki/ca.crt"
cert = "client.crt"
key = "/pki/client.key"
username = "apifence"
password_file = "/etc/apifence/pw""#,
        )
        .unwrap();
        assert_eq!(
            full.tls,
            Some(EtcdTls {
                ca: "/pki/ca.crt".into(),
                identity: Some(("/etc/apifence/client.crt".into(), "/pki/client.key".into())),
            })
        );
        assert_eq!(
            full.auth,
            Some(("apifence".into(), "/etc/apifence/pw".into()))
        );
        assert_eq!(full.chunks_prefix(), "/x/prod/chunks/");
    }

    #[test]
    fn the_default_host_is_the_hostname() {
        let config = parse(r#"endpoints = ["http://127.0.0.1:2379"]"#).unwrap();
        assert_eq!(Some(config.host), hostname());
    }

    #[test]
    fn every_error_names_the_key_and_the_fix() {
        let cases = [
            (
                "",
                "etcd.endpoints is missing or empty; list the etcd client URLs, for example: endpoints = [\"https://10.0.0.1:2379\"]",
            ),
            ("endpoints = []", "etcd.endpoints is missing or empty"),
            (
                "endpoints = \"http://a:1\"",
                "etcd.endpoints is a string, but it must be a list of URLs",
            ),
            (
                "endpoints = [\"10.0.0.1:2379\"]",
                "etcd.endpoints entry 1 \"10.0.0.1:2379\" has no http:// or https://; write http://HOST:PORT or https://HOST:PORT",
            ),
            (
                "endpoints = [\"http://a:1\", \"http://b\"]",
                "etcd.endpoints entry 2 \"http://b\" has no port",
            ),
            (
                "endpoints = [\"http://a:0\"]",
                "entry 1 \"http://a:0\" has no valid port",
            ),
            (
                "endpoints = [\"http://a:1\", \"https://b:1\"]",
                "mixes http:// and https://",
            ),
            (
                "endpoints = [\"https://a:1\"]",
                "etcd.endpoints use https:// but etcd.ca is not set",
            ),
            (
                "endpoints = [\"http://a:1\"]\nca = \"/ca\"",
                "etcd.ca, etcd.cert or etcd.key is set but etcd.endpoints use http://",
            ),
            (
                "endpoints = [\"https://a:1\"]\nca = \"/ca\"\ncert = \"/c\"",
                "etcd.cert is set but etcd.key is not; set both, for example: key = ",
            ),
            (
                "endpoints = [\"http://a:1\"]\nusername = \"u\"",
                "etcd.username is set but etcd.password_file is not",
            ),
            (
                "endpoints = [\"http://a:1\"]\nprefix = \"apifence\"",
                "etcd.prefix = \"apifence\" must start and end with \"/\"",
            ),
            (
                "endpoints = [\"http://a:1\"]\ncluster = \"a b\"",
                "etcd.cluster = \"a b\" must be 1 to 63 letters",
            ),
            (
                "endpoints = [\"http://a:1\"]\nhost = \"\"",
                "etcd.host = \"\" must be 1 to 63",
            ),
            (
                "endpoints = [\"http://a:1\"]\nendpoint = 1",
                "unknown key \"etcd.endpoint\"; did you mean \"endpoints\"?",
            ),
            (
                "endpoints = [\"http://a:1\"]\ncluster = 3",
                "etcd.cluster is an integer, but it must be a string; for example: cluster = \"default\"",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(
                error.contains(expected),
                "{text}:\n  {error}\n  wanted {expected}"
            );
        }
        let hostile = parse("endpoints = [\"http://a:1\"]\ncluster = \"a\\u001b[31m\"")
            .unwrap_err()
            .to_string();
        assert!(
            hostile.contains("etcd.cluster = \"a\\u{1b}[31m\""),
            "control characters are escaped: {hostile}"
        );
        assert_eq!(
            parse_etcd(Value::Integer(1), Path::new("/")).unwrap_err(),
            EtcdConfigError::NotATable
        );
    }
}
