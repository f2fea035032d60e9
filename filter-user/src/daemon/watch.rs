//! Reload on file change, by polling: once a second each watched file (the config and, through
//! the features, the service tags file) is `stat`ed; when its identity, size or times changed it
//! is read and hashed, and a changed hash asks the engine to reload.
//!
//! Why polling rather than inotify (`notify`): it follows every way a file gets replaced (editors
//! that write a new file and rename it, Kubernetes ConfigMap symlink swaps, a file deleted and
//! created again, a file that doesn't exist yet) without watching directories or re-arming
//! watches; it costs one `stat` per file per second; and a change is picked up within about a
//! second, which is fast enough for a config file. Hashing the contents means a `touch` or a
//! rewrite with the same bytes reloads nothing.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::daemon::engine::Command;

/// How often watched files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// One watched file: its last stamp and content hash (`None`: missing or unreadable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    stamp: Option<Stamp>,
    hash: Option<u64>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

/// Hash of `bytes`, to tell contents apart (not a security measure).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn hash_file(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| content_hash(&bytes))
}

/// Watches `config` (whose contents when the engine read it hash to `config_hash`) and the
/// files the engine publishes on `extra`, sending [`Command::Reload`] on a change, until
/// `shutdown` turns true.
pub async fn watch_files(
    config: PathBuf,
    config_hash: u64,
    mut extra: watch::Receiver<Vec<PathBuf>>,
    commands: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
    seen.insert(
        config.clone(),
        Seen {
            stamp: stamp(&config),
            hash: Some(config_hash),
        },
    );
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut files = vec![config.clone()];
        files.extend(extra.borrow_and_update().iter().cloned());
        seen.retain(|path, _| files.contains(path));
        let mut changed = Vec::new();
        for path in files {
            let now = stamp(&path);
            match seen.get(&path) {
                Some(last) if last.stamp == now => continue,
                _ => {}
            }
            let hash = now.and_then(|_| hash_file(&path));
            let previous = seen.insert(path.clone(), Seen { stamp: now, hash });
            match previous {
                // First sight of a newly watched file: remember it, don't reload.
                None => debug!(file = %path.display(), "watching"),
                Some(last) if last.hash != hash => changed.push(path),
                Some(_) => {}
            }
        }
        if let Some(path) = changed.first() {
            info!(file = %path.display(), "changed on disk");
            let reload = Command::Reload {
                reason: "file changed",
                reply: None,
            };
            if commands.send(reload).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watcher of `config` (whose contents hash to `hash`) and `extra`, running until the
    /// returned sender says stop; reloads arrive on the returned receiver.
    fn start(
        config: PathBuf,
        hash: u64,
        extra: Vec<PathBuf>,
    ) -> (
        mpsc::Receiver<Command>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        // The engine's sender may go away: the receiver keeps the last list.
        let (_, extra) = watch::channel(extra);
        let task = tokio::spawn(watch_files(config, hash, extra, tx, stop));
        (rx, stop_tx, task)
    }

    /// Waits (bounded) for one reload request.
    async fn reload_asked(rx: &mut mpsc::Receiver<Command>) {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(Command::Reload { .. }))), "{got:?}");
    }

    /// Stops the watcher and checks it ends (bounded).
    async fn stop(stop_tx: watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_content_change_asks_for_one_reload() {
        let dir = std::env::temp_dir().join(format!("apifence-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("apifence.toml");
        std::fs::write(&config, "mode = \"enforce\"\n").unwrap();
        let hash = content_hash(b"mode = \"enforce\"\n");
        let (mut rx, stop_tx, task) = start(config.clone(), hash, Vec::new());

        // Same bytes, new mtime: nothing.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        std::fs::write(&config, "mode = \"enforce\"\n").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(2500), rx.recv()).await;
        assert!(quiet.is_err(), "reloaded on an unchanged file");

        // Replaced by rename with new contents: one reload.
        let tmp = dir.join("apifence.toml.new");
        std::fs::write(&tmp, "mode = \"monitor\"\n").unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        reload_asked(&mut rx).await;

        stop(stop_tx, task).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_changed_service_tags_file_asks_for_a_reload() {
        let dir = std::env::temp_dir().join(format!("apifence-watch-tags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tags = dir.join("ServiceTags_Public.json");
        std::fs::write(&tags, "{\"changeNumber\": 1}").unwrap();
        let text = format!("service_tags_file = \"{}\"\n", tags.display());
        let config = dir.join("apifence.toml");
        std::fs::write(&config, &text).unwrap();
        // What the engine publishes for this config: the tags file.
        let watched = crate::daemon::config::parse(&text, &dir)
            .unwrap()
            .watched_files();
        assert_eq!(watched, std::slice::from_ref(&tags));
        let (mut rx, stop_tx, task) = start(config, content_hash(text.as_bytes()), watched);

        // Seen once (no reload for that), then changed: one reload.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        std::fs::write(&tags, "{\"changeNumber\": 2}").unwrap();
        reload_asked(&mut rx).await;

        stop(stop_tx, task).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
