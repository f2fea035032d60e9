//! Facts about the running daemon that other tasks read (the metrics endpoint, `status`):
//! reloads and their failures, and the last apply. Written by the engine thread only.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use time::OffsetDateTime;

use crate::{
    daemon::protocol::{ApplyInfo, SourceHealth},
    policy::{compile::FamilyCounts, timestamp::rfc3339},
};

/// Shared, cheap-to-read daemon counters. Held in an `Arc` by the engine and by tasks.
#[derive(Debug)]
pub struct Telemetry {
    started_at: OffsetDateTime,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    reattachments: AtomicU64,
    last: Mutex<Last>,
}

#[derive(Debug, Default)]
struct Last {
    reload_error: Option<String>,
    apply: Option<ApplyInfo>,
    compiled: FamilyCounts,
    source: Option<SourceHealth>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            started_at: OffsetDateTime::now_utc(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            reattachments: AtomicU64::new(0),
            last: Mutex::new(Last::default()),
        }
    }
}

impl Telemetry {
    fn last(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The external source's health, once its task reported.
    pub fn source_health(&self) -> Option<SourceHealth> {
        self.last().source.clone()
    }

    /// Records the external source's health (its task calls this on every change).
    pub fn set_source_health(&self, health: SourceHealth) {
        self.last().source = Some(health);
    }

    /// When the daemon started.
    pub fn started_at(&self) -> OffsetDateTime {
        self.started_at
    }

    /// Stale attachments repaired so far (interfaces deleted and created again).
    pub fn reattachments(&self) -> u64 {
        self.reattachments.load(Ordering::Relaxed)
    }

    /// Counts one repaired attachment.
    pub fn reattached(&self) {
        self.reattachments.fetch_add(1, Ordering::Relaxed);
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Rejected reloads so far (invalid config, unresolvable names, over capacity …).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Why the last reload failed, when the most recent reload failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last().reload_error.clone()
    }

    /// The last apply, if any happened since the start.
    pub fn last_apply(&self) -> Option<ApplyInfo> {
        self.last().apply.clone()
    }

    /// Entries per family in the tries now (after merging).
    pub fn compiled(&self) -> FamilyCounts {
        self.last().compiled
    }

    /// Counts a successful reload.
    pub fn reload_succeeded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.last().reload_error = None;
    }

    /// Counts a failed reload and keeps its reason.
    pub fn reload_failed(&self, reason: String) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.last().reload_error = Some(reason);
    }

    /// Records an apply that finished at `at` after `duration`.
    pub fn applied(
        &self,
        at: SystemTime,
        duration: Duration,
        given: FamilyCounts,
        compiled: FamilyCounts,
    ) {
        let at = OffsetDateTime::from(at);
        let mut last = self.last();
        last.compiled = compiled;
        last.apply = Some(ApplyInfo {
            at: rfc3339(at),
            at_unix: at.unix_timestamp_nanos() as f64 / 1e9,
            duration_ms: duration.as_secs_f64() * 1e3,
            given,
            compiled,
        });
    }

    /// Records the tries' contents without an apply (adopted at start).
    pub fn set_compiled(&self, compiled: FamilyCounts) {
        self.last().compiled = compiled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reloads_and_keeps_the_last_error() {
        let telemetry = Telemetry::default();
        telemetry.reload_failed("ports entry 2 ...".into());
        assert_eq!(telemetry.reload_failures(), 1);
        assert_eq!(
            telemetry.last_reload_error().as_deref(),
            Some("ports entry 2 ...")
        );
        telemetry.reload_succeeded();
        assert_eq!(telemetry.reloads(), 1);
        assert_eq!(telemetry.last_reload_error(), None);
        let counts = FamilyCounts { v4: 2, v6: 1 };
        telemetry.applied(
            SystemTime::UNIX_EPOCH,
            Duration::from_millis(3),
            counts,
            counts,
        );
        let apply = telemetry.last_apply().unwrap();
        assert_eq!(apply.at, "1970-01-01T00:00:00Z");
        assert_eq!(apply.duration_ms, 3.0);
        assert_eq!(telemetry.compiled(), counts);
    }
}
