//! `apifence check-config FILE`: validate a daemon config and show what it compiles to.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::daemon::check;

/// Shown after `apifence check-config --help`.
pub const HELP: &str = "Examples:\n  apifence check-config /etc/apifence/apifence.toml\n  \
apifence check-config --json apifence.toml\n  \
apifence check-config --connect apifence.toml   # with [etcd]: also reach etcd\n\n\
Prints the entries per address family before and after merging; exits non-zero with the \
offending key or entry when the file is invalid. With an [etcd] table it shows where the \
fleet's document is; --connect also reads it (exits non-zero when etcd can't be reached or the \
document is unusable).";

/// Flags of `apifence check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// With an [etcd] table: connect and read the fleet's document (the TLS files, the
    /// password and the endpoints are tried for real).
    #[arg(long)]
    connect: bool,
}

/// Runs `apifence check-config`.
pub fn run(args: &CheckConfigArgs) -> Result<()> {
    let mut features = super::daemon::standard_features();
    let report = check::check(&args.file, features.as_mut())?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::out!("{}", report.render());
    }
    let config = crate::daemon::config::load(&args.file)?.config;
    let Some(etcd) = &config.etcd else {
        if args.connect {
            anyhow::bail!(
                "--connect needs an [etcd] table in {}; for example: [etcd] endpoints = \
                 [\"https://10.0.0.1:2379\"]",
                args.file.display()
            );
        }
        return Ok(());
    };
    if !args.json {
        let tls = match &etcd.tls {
            Some(tls) if tls.identity.is_some() => "TLS with a client certificate",
            Some(_) => "TLS without a client certificate",
            None => "plain HTTP",
        };
        crate::outln!(
            "etcd:            {} ({tls}{})",
            etcd.endpoints.join(", "),
            etcd.auth
                .as_ref()
                .map_or(String::new(), |(user, _)| format!(", user {user}"))
        );
        crate::outln!(
            "document:        {} (host {} reports under {})",
            etcd.current_key(),
            etcd.host,
            etcd.hosts_prefix()
        );
    }
    if args.connect {
        connect(etcd, args.json)?;
    }
    Ok(())
}

/// `--connect`: reads the document and the hosts' reports.
fn connect(etcd: &crate::daemon::config::etcd::EtcdConfig, json: bool) -> Result<()> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = crate::features::fleet::store::Store::connect(etcd).await?;
        let (current, _) = store.current().await?;
        let hosts = store.hosts().await?;
        if !json {
            match current {
                Some(current) => crate::outln!(
                    "connected:       document revision {}, {} entries; {} host(s) report",
                    current.revision,
                    current.document.authorized.entries().len(),
                    hosts.len()
                ),
                None => crate::outln!(
                    "connected:       no document yet (apifence fleet set writes one); {} \
                     host(s) report",
                    hosts.len()
                ),
            }
        }
        Ok(())
    })
}
