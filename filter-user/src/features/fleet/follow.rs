//! The daemon's follower (`ranges_from = "etcd"`): a task that keeps this host on the fleet's
//! document and reports what it enforces.
//!
//! One session: connect → grant a lease → read the current document in full (so nothing is
//! missed across reconnects, restarts and compactions) and hand it to the engine if its
//! revision differs from the one applied → report → watch the pointer from the revision just
//! read, handing every new document to the engine, keeping the lease alive and the report
//! fresh. A watch cancelled by a compaction leads to a full read again. Any failure ends the
//! session; the next starts after a bounded exponential backoff. Throughout, the kernel keeps
//! enforcing the last good document (also across restarts: the engine persisted it), and the
//! trouble is logged, shown by `apifence status` (source health) and reported to etcd once it
//! answers again.

use std::time::{Duration, SystemTime};

use etcd_client::{EventType, WatchOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    daemon::{
        ErrorChain,
        config::RangesFrom,
        config::etcd::EtcdConfig,
        external::{ExternalDesired, ExternalSink},
        hooks::TaskContext,
        protocol::SourceHealth,
        telemetry::Telemetry,
    },
    features::fleet::{
        document::{Document, Pointer},
        host::{HostStatus, kernel_facts},
        store::{Store, StoreError},
    },
    features::service_tags::ServiceTags,
    kernel::paths::PinLayout,
    policy::timestamp::rfc3339,
};

/// Lease of the host's report: it disappears this long after the host stops reporting.
pub const REPORT_TTL: i64 = 10;
/// How often the lease is kept alive and the report refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// First wait before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait before reconnecting.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The source's bookmark persisted with the applied document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bookmark {
    /// The pointer's mod revision.
    pub revision: i64,
    /// The document's digest.
    pub digest: String,
}

/// Starts the follower when the config says `ranges_from = "etcd"`.
pub fn spawn(context: &TaskContext) -> Option<JoinHandle<()>> {
    if context.config.ranges_from != RangesFrom::Etcd {
        return None;
    }
    let config = context.config.etcd.clone()?;
    let applied = context
        .applied_external
        .as_ref()
        .and_then(|e| serde_json::from_value::<Bookmark>(e.source.clone()).ok());
    let mut follower = Follower {
        status: HostStatus {
            host: config.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            applied_revision: applied.as_ref().map(|b| b.revision),
            applied_digest: applied.as_ref().map(|b| b.digest.clone()),
            ..HostStatus::default()
        },
        config,
        layout: context.layout.clone(),
        telemetry: context.telemetry.clone(),
        sink: context.external.clone(),
        shutdown: context.shutdown.clone(),
        last_event: None,
        etcd_error: None,
        tags_file: context.config.service_tags_file.clone(),
        tags_seen: None,
        lease: None,
    };
    // Not healthy until etcd answered once.
    follower.etcd_error = Some(format!(
        "not connected to etcd yet; enforcing {}",
        follower.enforcing()
    ));
    if let Some(bookmark) = &applied {
        info!(
            revision = bookmark.revision,
            "enforcing the fleet document applied last (from the state file) until etcd answers"
        );
    }
    follower.publish_health();
    Some(tokio::spawn(async move { follower.run().await }))
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// The keep-alive of the report's lease, running on its own task for one session: every
/// [`REPORT_EVERY`] it renews the lease and sends whether etcd answered; it stops at the first
/// failure (sent as the session's error) and when dropped.
struct LeaseKeeping {
    /// One item per renewal: `Ok` when etcd renewed the lease, else why the session ends.
    answers: mpsc::Receiver<Result<(), SessionError>>,
    task: JoinHandle<()>,
}

impl LeaseKeeping {
    fn start(
        mut keeper: etcd_client::LeaseKeeper,
        mut alive: etcd_client::LeaseKeepAliveStream,
        endpoints: String,
    ) -> Self {
        let (send, answers) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let etcd = |source| {
                SessionError::Store(StoreError::Etcd {
                    endpoints: endpoints.clone(),
                    source,
                })
            };
            let mut ticks = tokio::time::interval(REPORT_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let answer = match keeper.keep_alive().await {
                    Err(e) => Err(etcd(e)),
                    Ok(()) => match tokio::time::timeout(REPORT_EVERY * 2, alive.message()).await {
                        Ok(Ok(Some(response))) if response.ttl() > 0 => Ok(()),
                        Ok(Ok(_)) => Err(SessionError::Other("the report's lease expired".into())),
                        Ok(Err(e)) => Err(etcd(e)),
                        Err(_) => Err(SessionError::Other(format!(
                            "etcd did not answer a keep-alive within {}s",
                            (REPORT_EVERY * 2).as_secs()
                        ))),
                    },
                };
                if answer.is_err() {
                    // The failure reaches the session even behind an unread renewal.
                    let _ = send.send(answer).await;
                    return;
                }
                // A renewal nobody has read yet says the same as this one: skipped.
                if let Err(mpsc::error::TrySendError::Closed(_)) = send.try_send(answer) {
                    return;
                }
            }
        });
        Self { answers, task }
    }
}

impl Drop for LeaseKeeping {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Follower {
    config: EtcdConfig,
    layout: PinLayout,
    telemetry: std::sync::Arc<Telemetry>,
    sink: ExternalSink,
    shutdown: watch::Receiver<bool>,
    status: HostStatus,
    last_event: Option<OffsetDateTime>,
    /// Trouble with etcd itself (not with a document), while it lasts.
    etcd_error: Option<String>,
    /// The service tags file, and its modification time and change number when last read.
    tags_file: Option<std::path::PathBuf>,
    tags_seen: Option<(SystemTime, Option<u64>)>,
    /// The report's lease, kept across reconnects while etcd still has it (so a short
    /// reconnect does not make the host look gone).
    lease: Option<i64>,
}

impl Follower {
    async fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let started = std::time::Instant::now();
            match self.session().await {
                Ok(()) => return,
                Err(e) => {
                    let message = format!(
                        "{}; enforcing {} until etcd answers",
                        ErrorChain(&e),
                        self.enforcing()
                    );
                    error!(error = %message, retry_ms = backoff.as_millis() as u64, "fleet: etcd");
                    self.etcd_error = Some(message);
                    self.publish_health();
                }
            }
            // A session that ran a while was healthy: start the backoff over.
            if started.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN;
            }
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn enforcing(&self) -> String {
        match self.status.applied_revision {
            Some(revision) => format!("revision {revision} (the last good document)"),
            None => "the config file's list (no document applied yet)".to_string(),
        }
    }

    fn publish_health(&self) {
        let error = self
            .etcd_error
            .clone()
            .or_else(|| self.status.error.clone());
        self.telemetry.set_source_health(SourceHealth {
            name: "etcd".into(),
            healthy: error.is_none(),
            applied_revision: self
                .status
                .applied_revision
                .and_then(|r| u64::try_from(r).ok()),
            last_event: self.last_event.map(rfc3339),
            last_event_unix: self
                .last_event
                .map(|t| t.unix_timestamp_nanos() as f64 / 1e9),
            error,
        });
    }

    async fn session(&mut self) -> Result<(), SessionError> {
        let store = Store::connect(&self.config).await?;
        let mut client = store.client();
        let (lease, keeper, alive) = self.lease(&store).await?;
        // On its own task: applying a large list in this loop must not let the report expire.
        let mut lease_answers = LeaseKeeping::start(keeper, alive, store.endpoints());
        store.mark_seen().await?;
        let mut from = self.full_read(&store).await?;
        if self.etcd_error.take().is_some() {
            info!(
                enforcing = %self.enforcing(),
                "fleet: etcd answers again"
            );
        }
        self.publish_health();
        self.report(&store, lease).await?;
        let mut watching = self.watch(&store, from).await?;
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => {
                    // The report goes at once; the filter keeps enforcing.
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                    return Ok(());
                }
                answer = lease_answers.answers.recv() => match answer {
                    Some(Ok(())) => {
                        // etcd answered: the metric of the time since contact restarts.
                        self.last_event = Some(OffsetDateTime::now_utc());
                        self.publish_health();
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(SessionError::Other("the lease keeper stopped".into())),
                },
                _ = ticks.tick() => self.report(&store, lease).await?,
                message = watching.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return Err(SessionError::Other("the watch ended".into())),
                        Err(e) => return Err(store.error(e).into()),
                    };
                    if response.canceled() {
                        if response.compact_revision() > 0 {
                            warn!(
                                compacted = response.compact_revision(),
                                "fleet: the watch's revision was compacted; reading the document in full"
                            );
                            from = self.full_read(&store).await?;
                            self.report(&store, lease).await?;
                            watching = self.watch(&store, from).await?;
                            continue;
                        }
                        return Err(SessionError::Other(format!(
                            "the watch was cancelled: {}", response.cancel_reason()
                        )));
                    }
                    // Only the newest pointer of a batch matters.
                    let newest = response.events().iter().rev().find_map(|event| {
                        let kv = event.kv()?;
                        Some((event.event_type(), kv.value().to_vec(), kv.mod_revision()))
                    });
                    let Some((kind, value, revision)) = newest else { continue };
                    self.last_event = Some(OffsetDateTime::now_utc());
                    match kind {
                        EventType::Put => self.follow(&store, &value, revision).await,
                        EventType::Delete => self.reject(
                            revision,
                            "the current key was deleted; write the list again with apifence fleet set".into(),
                        ),
                    }
                    self.publish_health();
                    self.report(&store, lease).await?;
                }
            }
        }
    }

    /// The lease of the previous session while etcd still has it, else a new one; with its
    /// keep-alive stream.
    async fn lease(
        &mut self,
        store: &Store,
    ) -> Result<
        (
            i64,
            etcd_client::LeaseKeeper,
            etcd_client::LeaseKeepAliveStream,
        ),
        SessionError,
    > {
        let mut client = store.client();
        if let Some(id) = self.lease.take() {
            let (mut keeper, mut alive) = client
                .lease_keep_alive(id)
                .await
                .map_err(|e| store.error(e))?;
            keeper.keep_alive().await.map_err(|e| store.error(e))?;
            let answer = tokio::time::timeout(REPORT_EVERY * 2, alive.message()).await;
            if let Ok(Ok(Some(response))) = answer
                && response.ttl() > 0
            {
                self.lease = Some(id);
                return Ok((id, keeper, alive));
            }
        }
        let id = client
            .lease_grant(REPORT_TTL, None)
            .await
            .map_err(|e| store.error(e))?
            .id();
        let (keeper, alive) = client
            .lease_keep_alive(id)
            .await
            .map_err(|e| store.error(e))?;
        self.lease = Some(id);
        Ok((id, keeper, alive))
    }

    async fn watch(
        &self,
        store: &Store,
        from: i64,
    ) -> Result<etcd_client::WatchStream, SessionError> {
        let mut client = store.client();
        let options = WatchOptions::new().with_start_revision(from + 1);
        Ok(client
            .watch(self.config.current_key(), Some(options))
            .await
            .map_err(|e| store.error(e))?)
    }

    /// Reads the pointer and applies its document unless it is the one enforced (or was
    /// rejected already); returns the store's revision at the read.
    async fn full_read(&mut self, store: &Store) -> Result<i64, SessionError> {
        let mut client = store.client();
        let response = client
            .get(self.config.current_key(), None)
            .await
            .map_err(|e| store.error(e))?;
        let header = response.header().map_or(0, |h| h.revision());
        self.last_event = Some(OffsetDateTime::now_utc());
        if let Some(kv) = response.kvs().first() {
            let revision = kv.mod_revision();
            if self.status.applied_revision != Some(revision)
                && self.status.rejected_revision != Some(revision)
            {
                let value = kv.value().to_vec();
                self.follow(store, &value, revision).await;
            }
        }
        self.publish_health();
        Ok(header)
    }

    async fn follow(&mut self, store: &Store, value: &[u8], revision: i64) {
        match Pointer::parse(value) {
            Ok(pointer) => self.follow_pointer(store, &pointer, revision).await,
            Err(e) => self.reject(revision, ErrorChain(&e).to_string()),
        }
    }

    async fn follow_pointer(&mut self, store: &Store, pointer: &Pointer, revision: i64) {
        let document = match store.assemble(pointer).await {
            Ok(document) => document,
            Err(e) => return self.reject(revision, ErrorChain(&e).to_string()),
        };
        self.apply(document, &pointer.digest, revision).await;
    }

    async fn apply(&mut self, document: Document, digest: &str, revision: i64) {
        let bookmark = Bookmark {
            revision,
            digest: digest.to_string(),
        };
        let desired = ExternalDesired {
            authorized: document.authorized,
            always_allow: document.always_allow,
            mode: document.mode,
            source: serde_json::to_value(&bookmark).unwrap_or_default(),
        };
        match self.sink.submit(desired, false).await {
            Ok(reply) => {
                info!(
                    revision,
                    digest,
                    applied = reply.applied,
                    v4 = reply.compiled.v4,
                    v6 = reply.compiled.v6,
                    "fleet: document enforced"
                );
                self.status.applied_revision = Some(revision);
                self.status.applied_digest = Some(bookmark.digest);
                self.status.applied_at = Some(rfc3339(OffsetDateTime::now_utc()));
                self.status.given = reply.given;
                self.status.merged = reply.compiled;
                self.status.rejected_revision = None;
                self.status.error = None;
            }
            Err(e) => self.reject(revision, e.message),
        }
    }

    fn reject(&mut self, revision: i64, reason: String) {
        let message = format!(
            "revision {revision} rejected: {reason}; enforcing {}",
            self.enforcing()
        );
        error!(revision, error = %message, "fleet: document rejected");
        self.status.rejected_revision = Some(revision);
        self.status.error = Some(message);
    }

    /// The service tags file's change number, read again only when the file changed.
    fn tags_change(&mut self) -> Option<u64> {
        let path = self.tags_file.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        match self.tags_seen {
            Some((seen, number)) if seen == modified => number,
            _ => {
                // Rare (the file changed): a short blocking read is fine here.
                let number = ServiceTags::load(path).ok().map(|t| t.change_number());
                self.tags_seen = Some((modified, number));
                number
            }
        }
    }

    async fn report(&mut self, store: &Store, lease: i64) -> Result<(), SessionError> {
        self.status.tags_change = self.tags_change();
        let (digest, mode, interfaces) = kernel_facts(&self.layout);
        let now = OffsetDateTime::now_utc();
        self.status.kernel_digest = digest;
        self.status.mode = mode;
        self.status.interfaces = interfaces;
        self.status.reported_at = rfc3339(now);
        self.status.reported_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if self.status.given == Default::default()
            && let Some(counts) = self.telemetry.last_apply()
        {
            self.status.given = counts.given;
            self.status.merged = counts.compiled;
        }
        store.report(&self.status, lease).await?;
        Ok(())
    }
}
