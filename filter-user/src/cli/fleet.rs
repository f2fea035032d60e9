//! `apifence fleet …`: the cluster's list in etcd, followed by every host's daemon
//! (`ranges_from = "etcd"`). This module holds the flags, finds etcd (`--config FILE`'s
//! `[etcd]` table, flags, environment variables) and runs `show` and `status`;
//! [`super::fleet_change`] runs `set`, `add` and `remove`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use super::fleet_change::{self, FleetChangeArgs};
use crate::{
    daemon::{
        config::etcd::{EtcdConfig, parse_etcd},
        config::{self, RangesFrom},
        desired::RangeEntry,
    },
    features::fleet::{status::HostState, store::Store},
    kernel::paths::DEFAULT_CONFIG_FILE,
    policy::timestamp::rfc3339,
};

/// Shown after `apifence fleet --help`.
pub const HELP: &str = "Examples:
  apifence fleet --config /etc/apifence/apifence.toml set 73.140.245.0/24,2001:db8::/32 --wait
  apifence fleet add 203.0.113.7 --note \"on-call VPN\" --wait=10s
  apifence fleet show --json
  apifence fleet status            # exit 1 when a live host is behind or failing

Every host's daemon with ranges_from = \"etcd\" follows the document and reports what it
enforces. etcd is found through --config FILE (the daemon's [etcd] table; default
/etc/apifence/apifence.toml when it exists), or --endpoints and the TLS flags (or the
APIFENCE_ETCD_* environment variables), which override the file's keys.";

/// `apifence fleet …`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Where etcd is.
    #[command(flatten)]
    etcd: EtcdArgs,
    /// What to do.
    #[command(subcommand)]
    command: FleetCommand,
}

/// Where etcd is: a config file's `[etcd]` table, overridden key by key by these flags.
#[derive(Debug, Default, Args)]
pub struct EtcdArgs {
    /// Daemon config file whose [etcd] table names etcd.
    #[arg(long, global = true, value_name = "FILE", env = "APIFENCE_CONFIG")]
    config: Option<PathBuf>,
    /// etcd client URLs, comma separated (https://10.0.0.1:2379,...).
    #[arg(
        long,
        global = true,
        value_name = "URLS",
        env = "APIFENCE_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Key prefix (default /apifence/).
    #[arg(
        long,
        global = true,
        value_name = "PREFIX",
        env = "APIFENCE_ETCD_PREFIX"
    )]
    prefix: Option<String>,
    /// Cluster name (default "default").
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "APIFENCE_ETCD_CLUSTER"
    )]
    cluster: Option<String>,
    /// CA of the etcd servers' certificates.
    #[arg(long, global = true, value_name = "PATH", env = "APIFENCE_ETCD_CA")]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, global = true, value_name = "PATH", env = "APIFENCE_ETCD_CERT")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, global = true, value_name = "PATH", env = "APIFENCE_ETCD_KEY")]
    key: Option<PathBuf>,
    /// etcd user (with --password-file).
    #[arg(long, global = true, value_name = "NAME", env = "APIFENCE_ETCD_USER")]
    user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "APIFENCE_ETCD_PASSWORD_FILE"
    )]
    password_file: Option<PathBuf>,
}

/// Subcommands of `apifence fleet`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Replace the cluster's list ("" disables filtering; 0.0.0.0/32 allows only always-allow).
    #[command(after_help = "Example:\n  apifence fleet set 73.140.245.0/24,2001:db8::/32 --wait")]
    Set(FleetChangeArgs),
    /// Add entries to the cluster's list (retried when another writer was first).
    #[command(after_help = "Example:\n  apifence fleet add 203.0.113.7 --wait")]
    Add(FleetChangeArgs),
    /// Remove entries from the cluster's list (retried when another writer was first).
    #[command(after_help = "Example:\n  apifence fleet remove 203.0.113.7/32 --wait")]
    Remove(FleetChangeArgs),
    /// Show the cluster's document: revision, mode, always-allow, the list.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Each host: the revision it enforces, how far behind, report age, error, digest. Exits 1
    /// when a live host is behind or failing.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `apifence fleet …`.
pub fn run(args: FleetArgs) -> Result<()> {
    let config = args.etcd.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let store = Store::connect(&config).await?;
        match args.command {
            FleetCommand::Set(change) => {
                fleet_change::run(&store, fleet_change::Verb::Set, change).await
            }
            FleetCommand::Add(change) => {
                fleet_change::run(&store, fleet_change::Verb::Add, change).await
            }
            FleetCommand::Remove(change) => {
                fleet_change::run(&store, fleet_change::Verb::Remove, change).await
            }
            FleetCommand::Show { json } => show(&store, json).await,
            FleetCommand::Status { json } => status(&store, json).await,
        }
    })
}

impl EtcdArgs {
    /// The `[etcd]` settings: the config file's table (if any) with the flags laid over it,
    /// validated like the daemon's config.
    pub fn resolve(&self) -> Result<EtcdConfig> {
        let default = Path::new(DEFAULT_CONFIG_FILE);
        let file = match &self.config {
            Some(path) => Some(path.clone()),
            None if self.endpoints.is_empty() && default.exists() => Some(default.to_path_buf()),
            None => None,
        };
        let mut table = toml::Table::new();
        let mut dir = PathBuf::from("/");
        if let Some(path) = &file {
            let loaded = config::load(path)?;
            if loaded.config.etcd.is_none() && self.endpoints.is_empty() {
                bail!(
                    "config file {} has no [etcd] table; add one (for example: [etcd] endpoints \
                     = [\"https://10.0.0.1:2379\"]) or pass --endpoints",
                    path.display()
                );
            }
            if loaded.config.ranges_from != RangesFrom::Etcd {
                crate::errln!(
                    "note: {} has ranges_from = \"{}\": that host's daemon does not follow the \
                     fleet's document",
                    path.display(),
                    loaded.config.ranges_from.as_str()
                );
            }
            let raw: toml::Table = loaded.text.parse().context("parsing the config file")?;
            if let Some(toml::Value::Table(etcd)) = raw.get("etcd") {
                table = etcd.clone();
            }
            if let Some(parent) = path.parent() {
                dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
            }
        } else if self.endpoints.is_empty() {
            bail!(
                "no etcd to talk to: pass --config FILE (a daemon config with an [etcd] table; \
                 {DEFAULT_CONFIG_FILE} is used when it exists) or --endpoints URLS (or set \
                 APIFENCE_ETCD_ENDPOINTS)"
            );
        }
        let text = |v: &str| toml::Value::String(v.to_string());
        let path = |p: &Path| {
            toml::Value::String(
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string(),
            )
        };
        if !self.endpoints.is_empty() {
            table.insert(
                "endpoints".into(),
                toml::Value::Array(self.endpoints.iter().map(|e| text(e.trim())).collect()),
            );
        }
        for (key, value) in [
            ("prefix", &self.prefix),
            ("cluster", &self.cluster),
            ("username", &self.user),
        ] {
            if let Some(value) = value {
                table.insert(key.into(), text(value));
            }
        }
        for (key, value) in [
            ("ca", &self.ca),
            ("cert", &self.cert),
            ("key", &self.key),
            ("password_file", &self.password_file),
        ] {
            if let Some(value) = value {
                table.insert(key.into(), path(value));
            }
        }
        // The CLI reports nothing under hosts/: its host name is only a placeholder.
        table.entry("host").or_insert_with(|| text("apifence-cli"));
        Ok(parse_etcd(toml::Value::Table(table), &dir)?)
    }
}

fn entry_line(entry: &RangeEntry) -> String {
    let mut line = entry.text();
    if let Some(note) = &entry.note {
        line.push_str(&format!("  # {note}"));
    }
    if let Some(expires) = entry.expires {
        line.push_str(&format!("  [expires {}]", rfc3339(expires)));
    }
    line
}

async fn show(store: &Store, json: bool) -> Result<()> {
    let (current, _) = store.current().await?;
    let Some(current) = current else {
        if json {
            crate::outln!("null");
            return Ok(());
        }
        bail!(
            "no document in etcd under {} yet; write one with apifence fleet set LIST",
            store.config().current_key()
        );
    };
    if json {
        let value = serde_json::json!({
            "revision": current.revision,
            "digest": current.pointer.digest,
            "size": current.pointer.size,
            "chunks": current.pointer.chunks.len(),
            "document": current.document,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let document = &current.document;
    crate::outln!(
        "revision {}  {}  ({} bytes in {} chunks)",
        current.revision,
        current.pointer.digest,
        current.pointer.size,
        current.pointer.chunks.len()
    );
    crate::outln!("mode:          {}", document.mode.as_str());
    let always: Vec<String> = document
        .always_allow
        .iter()
        .map(ToString::to_string)
        .collect();
    crate::outln!(
        "always_allow:  {}",
        if always.is_empty() {
            "-".to_string()
        } else {
            always.join(", ")
        }
    );
    match document.authorized.kind() {
        "disabled" => crate::outln!("filtering:     disabled: every source passes"),
        "only_always_allowed" => crate::outln!("filtering:     only always_allow may connect"),
        _ => {
            let entries = document.authorized.entries();
            crate::outln!("authorized ({} entries):", entries.len());
            for entry in entries {
                crate::outln!("  {}", entry_line(entry));
            }
        }
    }
    Ok(())
}

async fn status(store: &Store, json: bool) -> Result<()> {
    let view = store.view().await?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        crate::outln!(
            "document revision: {}",
            view.revision.map_or("none".to_string(), |r| r.to_string())
        );
        crate::outln!(
            "{:<20} {:<8} {:>9} {:>7} {:>9} {:>9}  {}",
            "HOST",
            "STATE",
            "APPLIED",
            "BEHIND",
            "REPORT",
            "PREFIXES",
            "KERNEL DIGEST / ERROR"
        );
        for host in &view.hosts {
            let state = match host.state {
                HostState::Ok => "ok",
                HostState::Behind => "behind",
                HostState::Failing => "failing",
                HostState::Gone => "gone",
            };
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let detail = host
                .error
                .clone()
                .or_else(|| {
                    host.kernel_digest
                        .clone()
                        .map(|d| d.chars().take(23).collect())
                })
                .unwrap_or_default();
            crate::outln!(
                "{:<20} {:<8} {:>9} {:>7} {:>9} {:>9}  {}",
                host.host,
                state,
                or_dash(host.applied_revision.map(|r| r.to_string())),
                or_dash(host.behind_by.map(|r| r.to_string())),
                or_dash(host.report_age_s.map(|s| format!("{s:.1}s ago"))),
                or_dash(host.merged.map(|m| (m.v4 + m.v6).to_string())),
                detail
            );
        }
    }
    if view.tags_differ() {
        let numbers: Vec<String> = view
            .hosts
            .iter()
            .filter(|h| h.state != HostState::Gone)
            .map(|h| {
                format!(
                    "{} {}",
                    h.host,
                    h.tags_change.map_or("none".into(), |n| n.to_string())
                )
            })
            .collect();
        crate::errln!(
            "warning: the hosts' service tags files differ (changeNumber: {}); a name may stand \
             for different prefixes on different hosts: give every host the same file",
            numbers.join(", ")
        );
    }
    if !view.healthy() {
        let bad = view
            .hosts
            .iter()
            .filter(|h| matches!(h.state, HostState::Behind | HostState::Failing))
            .map(|h| h.host.as_str())
            .collect::<Vec<_>>();
        bail!(
            "{} live host(s) behind or failing: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(())
}
