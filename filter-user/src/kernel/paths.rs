//! Every filesystem path apifence uses, in one place.

use std::path::{Path, PathBuf};

use filter_common::PROGRAM_NAME;

use crate::kernel::framing::Framing;

/// Default bpffs directory holding apifence's pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/apifence";
/// Where a host's bpffs is conventionally mounted.
pub const SYSTEM_BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Named network namespaces as made by `ip netns add`.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";
/// Default configuration file of `apifence daemon`.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/apifence/apifence.toml";
/// Default directory where the daemon keeps its durable state (config key `state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/apifence";
/// Default Unix socket the daemon listens on and the CLI talks to (config key `socket`,
/// CLI `--socket`, env `APIFENCE_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/apifence/apifence.sock";

/// Pin locations under one bpffs directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// Layout rooted at `root` (the `--bpffs` directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The bpffs directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pinned XDP program for Ethernet devices (the first one loaded, which marks the
    /// filter as loaded).
    pub fn program(&self) -> PathBuf {
        self.root.join(PROGRAM_NAME)
    }

    /// The pinned instance of the program for frames framed as `framing`: [`Self::program`] for
    /// Ethernet, `apifence_ip` for L3 devices (loaded on the first attach to one).
    pub fn program_for(&self, framing: Framing) -> PathBuf {
        match framing {
            Framing::Ethernet => self.program(),
            Framing::Ip => self.root.join(format!("{PROGRAM_NAME}_ip")),
        }
    }

    /// The pinned map called `name` (aya pins maps by name in the root).
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Directory of pinned XDP links, one per interface.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pinned XDP link of `interface`.
    pub fn link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(interface)
    }
}

/// Files under the daemon's `state_dir`.
#[derive(Clone, Debug)]
pub struct StateLayout {
    dir: PathBuf,
}

impl StateLayout {
    /// Layout rooted at `dir` (the `state_dir` config key).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The desired state the CLI set through the daemon (JSON, replaced atomically).
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Where a new state file is written before it is renamed over [`Self::state_file`].
    pub fn state_file_tmp(&self) -> PathBuf {
        self.dir.join("state.json.tmp")
    }

    /// Held (`flock`) by the running daemon, so two daemons never share one state.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }
}

/// Path of the named network namespace `name` (checked with
/// [`crate::kernel::names::check_netns`] first).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}
