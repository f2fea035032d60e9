//! Section 5, fan-out: many lightweight watchers of one etcd document. Each watcher is what a
//! host's follower does up to the kernel: its own etcd connection and watch of the pointer, the
//! document read and checked (chunks, digests, the range language); the kernel step is stood in
//! for by merging the list in userspace (`policy::merge`), stated as such in the report. The
//! time is from `apifence fleet set` starting until every watcher has the new revision merged
//! (watchers usually have it before the command returns: it flips the pointer, then deletes
//! unused chunks).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence::{
    daemon::config::etcd::EtcdConfig,
    features::fleet::{document::Pointer, store::Store},
    policy::{language::Entry, merge::merge},
};
use apifence_tests::{cmd::output_with_timeout, etcd::EtcdCluster};
use etcd_client::WatchOptions;
use tokio::sync::mpsc;

/// Bound on every watcher having a change.
const LIMIT: Duration = Duration::from_secs(60);

/// What one watcher reports: its index, the revision it merged, and when.
type Applied = (usize, i64, Instant);

async fn watcher(
    index: usize,
    config: EtcdConfig,
    applied: mpsc::UnboundedSender<Applied>,
) -> Result<()> {
    let store = Store::connect(&config).await?;
    let mut client = store.client();
    let mut stream = client
        .watch(config.current_key(), Some(WatchOptions::new()))
        .await
        .map_err(|e| store.error(e))?;
    while let Some(response) = stream.message().await.map_err(|e| store.error(e))? {
        let Some(kv) = response.events().last().and_then(|e| e.kv()) else {
            continue;
        };
        let pointer = Pointer::parse(kv.value())?;
        let document = store.assemble(&pointer).await?;
        let prefixes: Vec<_> = document
            .authorized
            .entries()
            .iter()
            .filter_map(|e| match e.entry {
                Entry::Prefix(net) => Some(net),
                Entry::Name(_) => None,
            })
            .collect();
        let merged = merge(&prefixes);
        std::hint::black_box(&merged);
        if applied
            .send((index, kv.mod_revision(), Instant::now()))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// `watchers` watchers, `changes` changes alternating `files`; the time until all have each.
pub fn run(
    etcd: &EtcdCluster,
    bin: &Path,
    files: [&Path; 2],
    watchers: usize,
    changes: usize,
) -> Result<Vec<f64>> {
    let endpoints = etcd.local_endpoints();
    let endpoints_text = endpoints.join(",");
    let ns = etcd.ns().name().to_string();
    let bin = bin.to_path_buf();
    let files = files.map(Path::to_path_buf);
    etcd.ns().run(move || -> Result<Vec<f64>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("fan-out runtime")?;
        runtime.block_on(async move {
            let config = EtcdConfig {
                endpoints,
                prefix: "/apifence/".into(),
                cluster: "default".into(),
                host: "fan-out".into(),
                tls: None,
                auth: None,
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let tasks: Vec<_> = (0..watchers)
                .map(|i| tokio::spawn(watcher(i, config.clone(), tx.clone())))
                .collect();
            drop(tx);
            // Let every watch be established.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let bin = Arc::new(bin);
            let mut times = Vec::new();
            for change in 0..changes {
                let file = files[change % 2].clone();
                let (bin, ns, endpoints) = (bin.clone(), ns.clone(), endpoints_text.clone());
                let started = Instant::now();
                let out = tokio::task::spawn_blocking(move || {
                    let mut command = Command::new(bin.as_path());
                    command
                        .args(["--netns", &ns, "fleet", "--endpoints"])
                        .arg(&endpoints)
                        .args(["set", "--file"])
                        .arg(&file);
                    output_with_timeout(&mut command, Duration::from_secs(120))
                })
                .await??;
                let returned = Instant::now();
                if !out.status.success() {
                    bail!("fleet set: {}", String::from_utf8_lossy(&out.stderr));
                }
                let revision: i64 = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .nth(1)
                    .and_then(|r| r.parse().ok())
                    .context("revision written")?;
                let mut have = vec![false; watchers];
                let mut left = watchers;
                let mut last = started;
                while left > 0 {
                    match tokio::time::timeout_at((returned + LIMIT).into(), rx.recv()).await {
                        Ok(Some((i, r, at))) if r >= revision && !have[i] => {
                            have[i] = true;
                            left -= 1;
                            last = last.max(at);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => bail!(
                            "fan-out: {left} of {watchers} watchers did not get revision {revision}"
                        ),
                    }
                }
                times.push(last.duration_since(started).as_secs_f64() * 1e3);
            }
            for task in tasks {
                task.abort();
            }
            Ok(times)
        })
    })?
}
