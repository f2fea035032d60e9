//! Every filesystem path apifence uses, in one place.

use std::path::{Path, PathBuf};

use filter_common::PROGRAM_NAME;

/// Default bpffs directory holding apifence's pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/apifence";
/// Where a host's bpffs is conventionally mounted.
pub const SYSTEM_BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Named network namespaces as made by `ip netns add`.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

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

    /// The pinned XDP program.
    pub fn program(&self) -> PathBuf {
        self.root.join(PROGRAM_NAME)
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

/// Path of the named network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}
