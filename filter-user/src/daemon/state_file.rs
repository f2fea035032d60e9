//! The daemon's durable state (`state_dir/state.json`): what the CLI changed through the
//! daemon, so a restart enforces the same thing. Written atomically and durably: a temporary
//! file is written and fsynced, renamed over the old one, and the directory is fsynced, before
//! the change is applied and acknowledged.
//!
//! ```json
//! {"version":1,
//!  "authorized":{"enabled":true,"entries":[{"range":"203.0.113.0/24","note":"on-call VPN",
//!                                           "expires":"2026-12-01T00:00:00Z"}]},
//!  "mode":{"mode":"monitor","config_mode":"enforce"}}
//! ```
//!
//! With `ranges_from = "etcd"` it also holds `"external"`: the last document applied (list,
//! always-allow, mode) with its source's bookmark (`{"revision":…,"digest":"sha256:…"}`), so a
//! start without etcd enforces it. Nothing secret is in it.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    daemon::{
        desired::Authorized,
        external::ExternalDesired,
        secure_dir::{self, SecureDirError},
    },
    kernel::paths::StateLayout,
    policy::Mode,
};

/// Current [`StateFile::version`].
pub const STATE_VERSION: u32 = 1;

/// What the state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Format version.
    pub version: u32,
    /// The authorized list owned by the state (`ranges_from = "state"`); `None` until it is
    /// seeded from the config's `authorized_ranges`.
    #[serde(default)]
    pub authorized: Option<Authorized>,
    /// The last `apifence mode`, valid while the config's `mode` is still what it was then.
    #[serde(default)]
    pub mode: Option<ModeOverride>,
    /// The last external desired state applied (`ranges_from = "etcd"`): enforced at start
    /// until the source answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDesired>,
}

impl Default for StateFile {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            authorized: None,
            mode: None,
            external: None,
        }
    }
}

/// A mode set with `apifence mode`. It wins over the config's `mode` until that line of the
/// config is changed (the later change wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeOverride {
    /// The mode asked for.
    pub mode: Mode,
    /// The config's `mode` when it was asked for.
    pub config_mode: Mode,
}

/// The state file can't be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O step failed.
    #[error(
        "{action} {}: {source}; state_dir in the config must name a directory root can write",
        path.display()
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The directory is not safe to keep state in.
    #[error(transparent)]
    Insecure(#[from] SecureDirError),
    /// The file is not a state file this version understands.
    #[error(
        "state file {} is unreadable ({reason}); fix it, or move it away so the daemon starts \
         from the config file's authorized_ranges", path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// Creates the state directory (mode 0700) if it is missing; refuses one that others own or
/// can write (see [`secure_dir`]).
pub fn ensure_dir(layout: &StateLayout) -> Result<(), StateError> {
    Ok(secure_dir::ensure("state_dir", layout.dir())?)
}

/// Reads the state file; `None` when there is none yet.
pub fn read(layout: &StateLayout) -> Result<Option<StateFile>, StateError> {
    let path = layout.state_file();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("reading state file", &path)(e)),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(StateError::Corrupt {
            path,
            reason: format!(
                "version {} where this apifence writes {STATE_VERSION}",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Replaces the state file durably: write a temporary file (mode 0600), fsync it, rename it
/// over the old one, fsync the directory. When this returns, the new state survives a crash
/// or power loss; on error the old file is intact.
pub fn write(layout: &StateLayout, state: &StateFile) -> Result<(), StateError> {
    let tmp = layout.state_file_tmp();
    let path = layout.state_file();
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let mut file = secure_dir::open_new(&tmp).map_err(io_error("creating", &tmp))?;
    file.write_all(&bytes).map_err(io_error("writing", &tmp))?;
    file.sync_all().map_err(io_error("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io_error("renaming the new state file to", &path))?;
    File::open(layout.dir())
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("syncing state directory", layout.dir()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::desired::Authorized;

    fn temp_layout(name: &str) -> StateLayout {
        let dir =
            std::env::temp_dir().join(format!("apifence-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateLayout::new(dir)
    }

    #[test]
    fn writes_and_reads_back_durably() {
        let layout = temp_layout("roundtrip");
        ensure_dir(&layout).unwrap();
        assert_eq!(read(&layout).unwrap(), None);
        let state = StateFile {
            authorized: Some(Authorized::parse("10.0.0.0/8 AzureCloud").unwrap()),
            mode: Some(ModeOverride {
                mode: Mode::Monitor,
                config_mode: Mode::Enforce,
            }),
            ..StateFile::default()
        };
        write(&layout, &state).unwrap();
        assert_eq!(read(&layout).unwrap(), Some(state.clone()));
        assert!(!layout.state_file_tmp().exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.state_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let replaced = StateFile {
            authorized: Some(Authorized::Disabled),
            ..StateFile::default()
        };
        write(&layout, &replaced).unwrap();
        assert_eq!(read(&layout).unwrap(), Some(replaced));
        std::fs::remove_dir_all(layout.dir()).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_reported_with_the_fix() {
        let layout = temp_layout("corrupt");
        ensure_dir(&layout).unwrap();
        std::fs::write(layout.state_file(), "{\"version\":1,\"authorized\":{\"enabled\":true,\"entries\":[{\"range\":\"10.0.0.1/8\"}]}}").unwrap();
        let message = read(&layout).unwrap_err().to_string();
        assert!(message.contains("did you mean 10.0.0.0/8"), "{message}");
        assert!(message.contains("move it away"), "{message}");
        std::fs::write(layout.state_file(), "{\"version\":7}").unwrap();
        let message = read(&layout).unwrap_err().to_string();
        assert!(message.contains("version 7"), "{message}");
        std::fs::remove_dir_all(layout.dir()).unwrap();
    }
}
