//! Where the features built on the daemon core plug in: service tags, expiry, metrics, the
//! deny log and the lockout guard. The engine calls a [`Features`] at fixed points; every
//! method has a default that does nothing, so [`NoFeatures`] is the core alone.
//! The features themselves live one layer up; the command line decides which of them run.
//!
//! Threads: [`Features::spawn_tasks`] runs once on the engine thread inside the tokio runtime
//! (so it may `tokio::spawn`); every other method runs on the engine thread, which owns the
//! desired state and is the only writer of the filter, one request at a time.

use std::{path::PathBuf, sync::Arc};

use time::OffsetDateTime;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    daemon::denied::{DeniedQuery, DeniedReport},
    daemon::{
        config::Config,
        desired::{Desired, Diff, Resolved, TagSource},
        external::{ExternalDesired, ExternalSink},
        protocol::ChangeFlags,
        telemetry::Telemetry,
    },
    kernel::operations::ApplyReport,
    kernel::paths::PinLayout,
    policy::Policy,
};

/// What asked for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The daemon starting (state file or config).
    Start,
    /// `apifence ranges set`.
    Set,
    /// `apifence ranges add`.
    Add,
    /// `apifence ranges remove`.
    Remove,
    /// `apifence mode`.
    Mode,
    /// A config (or service tags) reload.
    Reload,
    /// The periodic tick (expiry).
    Tick,
    /// A desired state from an external source (the fleet's document in etcd).
    External,
}

/// A change about to be persisted and applied.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Who asked.
    pub origin: Origin,
    /// The desired state before the change (what the daemon last applied).
    pub before: &'a Resolved,
    /// What the filter enforces now, read from its pins: usually `before`'s policy; `None`
    /// when no filter is loaded (removed by `apifence detach` under the daemon), so nothing is
    /// dropped now and the change loads it again.
    pub enforced: Option<&'a Policy>,
    /// What would be enforced.
    pub after: &'a Resolved,
    /// The difference.
    pub diff: &'a Diff,
    /// `dry_run` and `force` as asked.
    pub flags: ChangeFlags,
    /// The configuration the change is made under (on a reload: the new one).
    pub config: &'a Config,
}

/// What a feature says about a [`Plan`].
#[derive(Debug, Default)]
pub struct Review {
    /// Shown with a dry run and a refusal (connections that would be cut, sources that would
    /// flip …). Free-form JSON, owned by the feature.
    pub impact: Option<serde_json::Value>,
    /// Refuse the change unless `force` (one line naming who would be cut and how to go on).
    pub refusal: Option<String>,
}

/// What background tasks get.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The configuration at start (metrics address …). Keys read here need a restart to
    /// change.
    pub config: Config,
    /// Where the pins are (open maps read-only with `Filter::open`).
    pub layout: PinLayout,
    /// Daemon counters (reload failures, last apply).
    pub telemetry: Arc<Telemetry>,
    /// Becomes `true` when the daemon shuts down; tasks then finish promptly.
    pub shutdown: watch::Receiver<bool>,
    /// Where an external source hands the engine a new desired state.
    pub external: ExternalSink,
    /// The external desired state applied last (from the state file), if any.
    pub applied_external: Option<ExternalDesired>,
}

/// The hooks the engine calls. Every method has a do-nothing default.
pub trait Features: Send + 'static {
    /// Loads what resolving names needs (the service tags file named by
    /// `config.service_tags_file`), at start and on every reload. `Ok(None)`: names can't be
    /// resolved and are reported as needing `service_tags_file`. An `Err` (one line naming
    /// the file and the fix) fails the start, or rejects the reload.
    fn load_tags(&mut self, config: &Config) -> Result<Option<Arc<dyn TagSource>>, String> {
        let _ = config;
        Ok(None)
    }

    /// Files whose change triggers a reload, besides the config file itself.
    fn watched_files(&self, config: &Config) -> Vec<PathBuf> {
        config.watched_files()
    }

    /// Adjusts a desired state before it is resolved: at start, on reload, on every CLI change
    /// and after [`Features::tick`] asked for it (expiry drops expired entries here, logging
    /// and counting them). With `ranges_from = "state"` the adjusted list is what is
    /// persisted.
    fn before_resolve(&mut self, desired: &mut Desired, now: OffsetDateTime) {
        let _ = (desired, now);
    }

    /// Runs about once a second. Returning `true` re-runs the desired state through
    /// [`Features::before_resolve`], then resolves, persists and applies it if it changed.
    fn tick(&mut self, now: OffsetDateTime, desired: &Desired) -> bool {
        let _ = (now, desired);
        false
    }

    /// Reviews a change before it is persisted (lockout guard, dry-run impact). A refusal
    /// stops it unless `force`; a dry run returns the review without applying.
    fn review(&mut self, plan: &Plan<'_>) -> Review {
        let _ = plan;
        Review::default()
    }

    /// Called after every apply that reached the maps.
    fn applied(&mut self, resolved: &Resolved, report: &ApplyReport) {
        let _ = (resolved, report);
    }

    /// Starts background tasks (the metrics endpoint, the deny-log reader) once, after the
    /// filter is adopted or loaded. The daemon waits a moment for them at shutdown, then
    /// aborts them.
    fn spawn_tasks(&mut self, context: &TaskContext) -> Vec<JoinHandle<()>> {
        let _ = context;
        Vec::new()
    }

    /// Answers `apifence denied`: the deny log's rows. `Err` is one line saying why not.
    fn denied(&mut self, query: &DeniedQuery) -> Result<DeniedReport, String> {
        let _ = query;
        Err("this daemon runs without the deny log".into())
    }
}

/// The daemon core without features.
#[derive(Debug, Default)]
pub struct NoFeatures;

impl Features for NoFeatures {}
