//! `apifence check-config FILE`: validates a config file and shows what it compiles to
//! (entries per address family before and after merging), touching nothing.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use time::OffsetDateTime;

use crate::{
    daemon::{
        ErrorChain,
        config::{self, ConfigFileError, RangesFrom},
        desired::{Desired, ResolveError, resolve},
        engine::compose,
        hooks::Features,
        secure_dir::{self, SecureDirError},
        state_file::StateFile,
    },
    kernel::bpffs::{self, BpffsError},
    policy::Mode,
    policy::compile::{self, CompileError, FamilyCounts},
    policy::{language::Entry, merge::merge},
};

/// Why a config file fails the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Not a valid config.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The service tags file.
    #[error("config file {}: service tags: {message}", file.display())]
    Tags {
        /// The config file.
        file: PathBuf,
        /// What the service tags loader said.
        message: String,
    },
    /// The bpffs directory is one apifence would refuse to use.
    #[error("config file {}: bpffs", file.display())]
    Bpffs {
        /// The config file.
        file: PathBuf,
        /// Why.
        #[source]
        source: BpffsError,
    },
    /// state_dir or the socket's directory is not safe.
    #[error("config file {}", file.display())]
    Insecure {
        /// The config file.
        file: PathBuf,
        /// Why.
        #[source]
        source: SecureDirError,
    },
    /// A name can't be resolved.
    #[error("config file {}", file.display())]
    Resolve {
        /// The config file.
        file: PathBuf,
        /// The entry.
        #[source]
        source: ResolveError,
    },
    /// More prefixes than `capacity`.
    #[error(
        "config file {}: authorized_ranges and always_allow compile to {count} {family} \
         prefixes after merging, more than capacity = {capacity}; set capacity = {suggested} \
         (a new capacity takes effect after `apifence detach --all` and a daemon restart)",
        file.display()
    )]
    OverCapacity {
        /// The config file.
        file: PathBuf,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Prefixes after merging.
        count: usize,
        /// The configured capacity.
        capacity: u32,
        /// A capacity that fits.
        suggested: usize,
    },
}

/// One entry as `check-config` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CheckedEntry {
    /// As given.
    pub range: String,
    /// `prefix` or `name`.
    pub kind: &'static str,
    /// Note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Expiry (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Already expired at the time of the check.
    pub expired: bool,
    /// Prefixes it stands for.
    pub expanded: usize,
}

/// What a valid config file compiles to.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The file.
    pub file: PathBuf,
    /// Interfaces.
    pub interfaces: Vec<String>,
    /// Protected ports.
    pub ports: Vec<u16>,
    /// `auto`, `native` or `skb`.
    pub xdp_mode: String,
    /// `enforce` or `monitor`.
    pub mode: Mode,
    /// Owner of the list.
    pub ranges_from: RangesFrom,
    /// `disabled`, `only_always_allowed` or `ranges`.
    pub filtering: &'static str,
    /// The authorized entries.
    pub entries: Vec<CheckedEntry>,
    /// The always-allow list.
    pub always_allow: Vec<String>,
    /// Prefixes before merging (authorized, expanded, plus always-allow), per family.
    pub given: FamilyCounts,
    /// Prefixes after merging, per family: what the tries would hold.
    pub compiled: FamilyCounts,
    /// Prefixes per family the filter holds.
    pub capacity: u32,
    /// Service tags file.
    pub service_tags_file: Option<PathBuf>,
    /// bpffs directory.
    pub bpffs: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Socket.
    pub socket: PathBuf,
    /// Metrics endpoint (`null`: off).
    pub metrics: Option<String>,
    /// Valid but probably unintended.
    pub warnings: Vec<String>,
}

/// Validates `path` as the daemon would load it (config, service tags, names, capacity) and
/// reports what it compiles to. Reads only the files it names.
pub fn check(path: &Path, features: &mut dyn Features) -> Result<CheckReport, CheckError> {
    let file = path.to_path_buf();
    let config = config::load(path)?.config;
    // The paths the daemon would refuse at start.
    bpffs::check_mount_target(&config.bpffs).map_err(|source| CheckError::Bpffs {
        file: file.clone(),
        source,
    })?;
    let socket_dir = config.socket.parent().unwrap_or(Path::new("/"));
    secure_dir::check("state_dir", &config.state_dir)
        .and_then(|()| secure_dir::check("socket directory", socket_dir))
        .map_err(|source| CheckError::Insecure {
            file: file.clone(),
            source,
        })?;
    let tags = features
        .load_tags(&config)
        .map_err(|message| CheckError::Tags {
            file: file.clone(),
            message,
        })?;
    // The config's own list, whoever owns the list at run time (with ranges_from = "state"
    // it is the seed).
    let desired: Desired = compose(
        &config,
        &mut StateFile {
            authorized: Some(config.authorized_ranges.clone()),
            ..StateFile::default()
        },
    );
    let resolved = resolve(&desired, tags.as_deref()).map_err(|source| CheckError::Resolve {
        file: file.clone(),
        source,
    })?;
    let compiled = compile::compile(&resolved.policy, config.capacity, &BTreeMap::new()).map_err(
        |CompileError::OverCapacity {
             family,
             count,
             capacity,
             suggested,
         }| CheckError::OverCapacity {
            file: file.clone(),
            family,
            count,
            capacity,
            suggested,
        },
    )?;
    let now = OffsetDateTime::now_utc();
    Ok(CheckReport {
        file,
        interfaces: config.interfaces.clone(),
        ports: config.ports.clone(),
        xdp_mode: format!("{:?}", config.xdp_mode).to_ascii_lowercase(),
        mode: config.mode,
        ranges_from: config.ranges_from,
        filtering: desired.authorized.kind(),
        entries: resolved
            .entries
            .iter()
            .map(|e| CheckedEntry {
                range: e.entry.text(),
                kind: match e.entry.entry {
                    Entry::Prefix(_) => "prefix",
                    Entry::Name(_) => "name",
                },
                note: e.entry.note.clone(),
                expires: e.entry.expires.map(crate::policy::timestamp::rfc3339),
                expired: e.entry.expires.is_some_and(|t| t <= now),
                expanded: e.prefixes.len(),
            })
            .collect(),
        always_allow: merge(&config.always_allow)
            .iter()
            .map(ToString::to_string)
            .collect(),
        given: resolved.given_counts(),
        compiled: compiled.counts,
        capacity: config.capacity,
        service_tags_file: config.service_tags_file.clone(),
        bpffs: config.bpffs.clone(),
        state_dir: config.state_dir.clone(),
        socket: config.socket.clone(),
        metrics: config.metrics.map(|m| m.to_string()),
        warnings: config.warnings(),
    })
}

impl CheckReport {
    /// The report for a person.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let join = |items: &[String]| {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(", ")
            }
        };
        let _ = writeln!(out, "{}: valid", self.file.display());
        let _ = writeln!(
            out,
            "interfaces:      {} (xdp_mode {})",
            join(&self.interfaces),
            self.xdp_mode
        );
        let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "ports:           {}", ports.join(", "));
        let _ = writeln!(out, "mode:            {}", self.mode.as_str());
        let owner = match self.ranges_from {
            RangesFrom::Config => "config (this file owns the list; CLI changes are refused)",
            RangesFrom::State => {
                "state (the daemon's state file owns the list; this file only seeds it)"
            }
            RangesFrom::Etcd => {
                "etcd (the fleet's document owns the list, always_allow and mode; this file's \
                 are used only until a first document arrives)"
            }
        };
        let _ = writeln!(out, "ranges_from:     {owner}");
        let filtering = match self.filtering {
            "disabled" => "disabled: every source passes",
            "only_always_allowed" => "only always_allow may connect",
            _ => "on",
        };
        let _ = writeln!(out, "filtering:       {filtering}");
        let _ = writeln!(out, "authorized ({} entries):", self.entries.len());
        for entry in &self.entries {
            let mut line = format!("  {}", entry.range);
            if entry.kind == "name" {
                let _ = write!(line, "  ({} prefixes)", entry.expanded);
            }
            if let Some(note) = &entry.note {
                let _ = write!(line, "  # {note}");
            }
            if let Some(expires) = &entry.expires {
                let state = if entry.expired { "expired" } else { "expires" };
                let _ = write!(line, "  [{state} {expires}]");
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "always_allow:    {}", join(&self.always_allow));
        let _ = writeln!(
            out,
            "compiles to:     IPv4 {} given -> {} after merging; IPv6 {} given -> {} after \
             merging (capacity {} per family)",
            self.given.v4, self.compiled.v4, self.given.v6, self.compiled.v6, self.capacity
        );
        let tags = self
            .service_tags_file
            .as_ref()
            .map_or("-".to_string(), |p| p.display().to_string());
        let _ = writeln!(out, "service tags:    {tags}");
        let _ = writeln!(out, "bpffs:           {}", self.bpffs.display());
        let _ = writeln!(out, "state_dir:       {}", self.state_dir.display());
        let _ = writeln!(out, "socket:          {}", self.socket.display());
        let _ = writeln!(
            out,
            "metrics:         {}",
            self.metrics.as_deref().unwrap_or("off")
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}

/// The error of a failed check, in one line with its causes.
pub fn describe(error: &CheckError) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::hooks::NoFeatures;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("apifence-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reports_counts_before_and_after_merging() {
        let path = write(
            "ok.toml",
            r#"
interfaces = ["eth0"]
authorized_ranges = ["10.0.0.0/25", "10.0.0.128/25", "2001:db8::/32",
                     { range = "203.0.113.0/24", note = "on-call VPN", expires = "2001-01-01T00:00:00Z" }]
always_allow = ["198.51.100.7"]
"#,
        );
        let report = check(&path, &mut NoFeatures).unwrap();
        assert_eq!(report.given, FamilyCounts { v4: 4, v6: 1 });
        assert_eq!(report.compiled, FamilyCounts { v4: 3, v6: 1 });
        assert!(report.entries[3].expired);
        let text = report.render();
        assert!(
            text.contains("IPv4 4 given -> 3 after merging; IPv6 1 given -> 1 after merging"),
            "{text}"
        );
        assert!(
            text.contains("203.0.113.0/24  # on-call VPN  [expired 2001-01-01T00:00:00Z]"),
            "{text}"
        );
    }

    #[test]
    fn names_without_a_tags_file_and_capacity_are_errors() {
        let path = write("names.toml", r#"authorized_ranges = ["AzureDevOps"]"#);
        let message = describe(&check(&path, &mut NoFeatures).unwrap_err());
        assert!(message.ends_with("authorized range entry 1 \"AzureDevOps\" is a name (a service tag such as AzureCloud), which needs service_tags_file in the config, for example service_tags_file = \"/etc/apifence/ServiceTags_Public.json\"; or write IP ranges instead"), "{message}");
        assert!(message.starts_with("config file /"), "{message}");

        let path = write(
            "capacity.toml",
            "capacity = 1\nauthorized_ranges = [\"10.0.0.0/8\", \"12.0.0.0/8\"]",
        );
        let message = describe(&check(&path, &mut NoFeatures).unwrap_err());
        assert!(
            message.contains(
                "compile to 2 IPv4 prefixes after merging, more than capacity = 1; set capacity = 2"
            ),
            "{message}"
        );

        let path = write("bad.toml", "ports = [70000]");
        let message = describe(&check(&path, &mut NoFeatures).unwrap_err());
        assert!(message.ends_with("ports entry 1 (70000) is not a TCP port number from 1 to 65535; for example: ports = [443, 6443]"), "{message}");
    }
}
