//! The daemon's standard features, plugged into the core through
//! [`Features`]: service tags ([`crate::features::service_tags`]),
//! expiry ([`crate::features::expiry`]), the deny log ([`crate::features::deny_log`]), metrics
//! ([`crate::features::metrics`]) and the lockout guard with the dry-run impact ([`crate::features::lockout`],
//! [`crate::features::impact`]). This module only connects them; each one's logic lives in its own module.
//!
//! - Names resolve through the `service_tags_file` of the config, loaded at start and on every
//!   reload (a changed tags file triggers a reload like the config itself).
//! - Expired entries are dropped before every resolve, logged and counted once each; the tick
//!   asks for a re-resolve as soon as one expires. When every entry has expired only the
//!   always-allow list may connect: an expiry never turns filtering off.
//! - The lockout guard reviews changes asked through the CLI (`set`, `add`, `remove`, `mode`):
//!   one that would cut an established connection to a protected port (one the filter lets
//!   through now) is refused unless `--force`. A change that denies nothing new (a range
//!   added to a list in force) can cut nothing, and the connection table is not read for it.
//!   Reloads and expiry are not refused (the config file and the expiry time are the
//!   operator's explicit instructions); their impact is still computed for dry runs.
//! - The deny-log reader and the metrics endpoint run as tasks until the daemon stops, and with
//!   `ranges_from = "etcd"` the fleet follower ([`crate::features::fleet::follow`]).

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::{
    daemon::denied::{DeniedQuery, DeniedReport},
    daemon::{
        ErrorChain,
        config::Config,
        desired::{Authorized, Desired, RangeEntry, TagSource},
        hooks::{Features, Origin, Plan, Review, TaskContext},
        telemetry::Telemetry,
    },
    features::deny_log::{DenyLog, DenyReader},
    features::expiry::{self, Expiring},
    features::fleet,
    features::impact,
    features::lockout::{self, GuardOptions, LockoutError},
    features::metrics::{self, DaemonGauges, Renderer, ServerOptions, SourceGauges},
    features::service_tags::ServiceTags,
    kernel::attach,
    kernel::interfaces,
    kernel::maps::FilterMaps,
    kernel::operations::Filter,
    kernel::paths::PinLayout,
    policy::Policy,
    policy::bypass,
    policy::verdict::VerdictModel,
};

/// Deny-log rows considered for "sources that would flip" in a dry run.
const MAX_FLIP_CANDIDATES: usize = 10_000;

impl Expiring for RangeEntry {
    fn expires(&self) -> Option<OffsetDateTime> {
        self.expires
    }

    fn label(&self) -> String {
        self.text()
    }

    fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }
}

impl TagSource for ServiceTags {
    fn expand(&self, name: &str) -> Result<Vec<IpNet>, String> {
        ServiceTags::expand(self, name)
            .map(<[IpNet]>::to_vec)
            .map_err(|unknown| unknown.reason())
    }
}

/// Loads the service tags file named by `config`, logging what was tolerated in it.
pub fn load_tags(config: &Config) -> Result<Option<Arc<dyn TagSource>>, String> {
    let Some(path) = &config.service_tags_file else {
        return Ok(None);
    };
    let tags = ServiceTags::load(path).map_err(|e| ErrorChain(&e).to_string())?;
    info!(
        file = %path.display(),
        change_number = tags.change_number(),
        tags = tags.tag_count(),
        prefixes = tags.prefix_count(),
        "service tags loaded"
    );
    if !tags.warnings().is_empty() {
        warn!(file = %path.display(), "service tags file: {}", tags.warnings());
    }
    Ok(Some(Arc::new(tags)))
}

/// Shared between the engine thread and the tasks.
#[derive(Debug, Default)]
struct Shared {
    deny_log: Arc<Mutex<DenyLog>>,
    expired_removed: AtomicU64,
}

impl Shared {
    fn deny_log(&self) -> std::sync::MutexGuard<'_, DenyLog> {
        self.deny_log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Service tags, expiry, deny log, metrics and the lockout guard.
#[derive(Debug, Default)]
pub struct StandardFeatures {
    shared: Arc<Shared>,
    /// Expired entries already logged and counted: `(entry, expiry)`.
    reported_expired: BTreeSet<(String, OffsetDateTime)>,
    /// The pins, once the tasks started.
    layout: Option<PinLayout>,
}

impl StandardFeatures {
    /// Drops the expired entries of `desired`, logging and counting each once.
    fn drop_expired(&mut self, desired: &mut Desired, now: OffsetDateTime) {
        let Authorized::Entries(entries) = &desired.authorized else {
            return;
        };
        if !entries.iter().any(|e| expiry::is_expired(e, now)) {
            return;
        }
        let split = expiry::split(entries.clone(), now);
        for expired in &split.expired {
            if self
                .reported_expired
                .insert((expired.entry.text(), expired.expired_at))
            {
                info!(
                    entry = %expired.entry.text(),
                    expired_at = %crate::policy::timestamp::rfc3339(expired.expired_at),
                    "{}",
                    expired.message
                );
                self.shared.expired_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if split.live.is_empty() {
            warn!(
                "every authorized entry has expired; only the always-allow list may connect \
                 (filtering stays on)"
            );
        }
        desired.authorized = Authorized::Entries(split.live);
    }

    /// The deny log's rows, for `apifence denied`.
    pub fn report(&self, query: &DeniedQuery) -> DeniedReport {
        let suppressed = self.layout.as_ref().and_then(|layout| {
            FilterMaps::open(layout)
                .and_then(|maps| maps.verdicts())
                .ok()
                .map(|v| v[filter_common::COUNTER_DENY_EVENTS_SUPPRESSED as usize])
        });
        let log = self.shared.deny_log();
        DeniedReport {
            sources: log.top(query.top.unwrap_or(usize::MAX)),
            distinct: log.len(),
            events: log.events(),
            evicted: log.evicted(),
            suppressed,
        }
    }
}

impl Features for StandardFeatures {
    fn load_tags(&mut self, config: &Config) -> Result<Option<Arc<dyn TagSource>>, String> {
        load_tags(config)
    }

    fn before_resolve(&mut self, desired: &mut Desired, now: OffsetDateTime) {
        self.drop_expired(desired, now);
    }

    fn tick(&mut self, now: OffsetDateTime, desired: &Desired) -> bool {
        desired
            .authorized
            .entries()
            .iter()
            .any(|e| expiry::is_expired(e, now))
    }

    fn review(&mut self, plan: &Plan<'_>) -> Review {
        let guarded = matches!(
            plan.origin,
            Origin::Set | Origin::Add | Origin::Remove | Origin::Mode
        );
        if !guarded && !plan.flags.dry_run {
            return Review::default();
        }
        // The guard compares with what the filter enforces now: nothing, when it was removed
        // under the daemon (the change loads it again, which cuts whoever connected meanwhile).
        // Usually that is the last applied state, whose merged list is at hand already.
        let nothing = Policy::default();
        let enforced = match plan.enforced {
            Some(policy) if *policy == plan.before.policy => &plan.before.policy,
            Some(policy) => policy,
            None => &nothing,
        };
        let before = VerdictModel::from_policy(enforced);
        let after = VerdictModel::from_policy(&plan.after.policy);
        // A change that denies nothing new (a range added to a list in force, a switch to
        // monitor mode) can cut no connection and deny no established source, so the
        // connection table (a walk over the kernel's whole TCP hash table, milliseconds) is
        // not read for it. Otherwise only ports the new policy protects matter: a connection
        // is cut, or newly denied, only where the new policy denies.
        let connections = if after.denies_nothing_new(&before) {
            Ok(Vec::new())
        } else {
            lockout::established(&plan.after.policy.ports)
        };
        let connections = match connections {
            Ok(connections) => connections,
            Err(e) => {
                return Review {
                    impact: None,
                    refusal: guarded.then(|| e.to_string()),
                };
            }
        };
        let denied = self.shared.deny_log().top(MAX_FLIP_CANDIDATES);
        let guard = GuardOptions::for_interfaces(&plan.config.interfaces);
        let impact = impact::impact(&before, &after, &connections, guard, &denied, &[]);
        let refusal = (guarded && !impact.cut.is_empty())
            .then(|| LockoutError::WouldCut(impact.cut.clone()).to_string());
        let mut json = serde_json::to_value(&impact).unwrap_or_default();
        if let Some(object) = json.as_object_mut() {
            object.insert("summary".into(), impact.describe().into());
        }
        Review {
            impact: Some(json),
            refusal,
        }
    }

    fn spawn_tasks(&mut self, context: &TaskContext) -> Vec<JoinHandle<()>> {
        self.layout = Some(context.layout.clone());
        let mut tasks = Vec::new();
        let stopped = |mut shutdown: tokio::sync::watch::Receiver<bool>| async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        match DenyReader::open(&context.layout) {
            Ok(reader) => {
                let log = Arc::clone(&self.shared.deny_log);
                let shutdown = stopped(context.shutdown.clone());
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = reader.run(log, shutdown).await {
                        error!(error = %ErrorChain(&e), "the deny-log reader stopped");
                    }
                }));
            }
            Err(e) => error!(
                error = %ErrorChain(&e),
                "the deny log is off: apifence denied will show nothing"
            ),
        }
        if let Some(addr) = context.config.metrics {
            match metrics::bind_std(addr) {
                Ok(listener) => {
                    info!(%addr, "metrics endpoint: http://{addr}/metrics");
                    let renderer = renderer(
                        context.config.metrics_ranges,
                        context.layout.clone(),
                        Arc::clone(&context.telemetry),
                        Arc::clone(&self.shared),
                    );
                    let shutdown = stopped(context.shutdown.clone());
                    tasks.push(tokio::spawn(metrics::serve(
                        listener,
                        renderer,
                        ServerOptions::default(),
                        shutdown,
                    )));
                }
                Err(e) => error!(error = %ErrorChain(&e), "the metrics endpoint is off"),
            }
        }
        // ranges_from = "etcd": follow the fleet's document.
        tasks.extend(fleet::follow::spawn(context));
        tasks
    }

    fn denied(&mut self, query: &DeniedQuery) -> Result<DeniedReport, String> {
        Ok(self.report(query))
    }
}

/// The metrics text of one scrape: the filter's counters and the daemon's gauges, with at most
/// `range_series` per-range hit series.
fn renderer(
    range_series: usize,
    layout: PinLayout,
    telemetry: Arc<Telemetry>,
    shared: Arc<Shared>,
) -> Renderer {
    Arc::new(move || {
        let stats = Filter::open(&layout).and_then(|f| f.stats()).ok();
        let apply = telemetry.last_apply();
        let (evicted, sources) = {
            let log = shared.deny_log();
            (log.evicted(), log.len() as u64)
        };
        let gauges = DaemonGauges {
            entries: telemetry.compiled(),
            last_apply: apply.as_ref().and_then(|a| {
                Duration::try_from_secs_f64(a.at_unix)
                    .ok()
                    .map(|d| SystemTime::UNIX_EPOCH + d)
            }),
            last_apply_duration: apply
                .as_ref()
                .and_then(|a| Duration::try_from_secs_f64(a.duration_ms / 1e3).ok()),
            config_reload_failures: telemetry.reload_failures(),
            interface_reattachments: telemetry.reattachments(),
            interfaces_live: attach::attached_interfaces(&layout)
                .into_iter()
                .map(|name| {
                    let live = attach::liveness(&layout, &name).is_ok_and(|l| l.is_live());
                    (name, live)
                })
                .collect(),
            unfiltered_interfaces: interfaces::list(|name| attach::filters(&layout, name))
                .ok()
                .map(|listed| bypass::bypasses(&bypass::assess(&listed)).len() as u64),
            expired_entries_removed: shared.expired_removed.load(Ordering::Relaxed),
            deny_log_evicted: evicted,
            deny_log_sources: sources,
            source: telemetry.source_health().map(|health| SourceGauges {
                applied_revision: health.applied_revision,
                healthy: health.healthy,
                since_event: health.last_event_unix.map(|at| {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    (now - at).max(0.0)
                }),
            }),
        };
        metrics::render(stats.as_ref(), &gauges, range_series)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        daemon::{
            desired::{Resolved, resolve},
            hooks::Plan,
            protocol::ChangeFlags,
        },
        policy::Mode,
        policy::language::Entry,
    };
    use time::format_description::well_known::Rfc3339;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    fn entry(text: &str, expires: Option<&str>) -> RangeEntry {
        RangeEntry {
            entry: Entry::Prefix(text.parse().unwrap()),
            note: Some("vpn".into()),
            expires: expires.map(at),
        }
    }

    fn desired(entries: Vec<RangeEntry>) -> Desired {
        Desired {
            authorized: Authorized::Entries(entries),
            always_allow: vec!["198.51.100.7/32".parse().unwrap()],
            ports: vec![443, 6443],
            mode: Mode::Enforce,
        }
    }

    #[test]
    fn expiry_drops_counts_once_and_never_disables() {
        let mut features = StandardFeatures::default();
        let start = desired(vec![
            entry("10.0.0.0/8", None),
            entry("203.0.113.0/24", Some("2026-12-01T00:00:00Z")),
        ]);
        let before = at("2026-11-30T23:59:59Z");
        let after = at("2026-12-01T00:00:00Z");
        assert!(!features.tick(before, &start));
        assert!(features.tick(after, &start));
        let mut adjusted = start.clone();
        features.before_resolve(&mut adjusted, after);
        assert_eq!(adjusted.authorized.entries().len(), 1);
        assert!(!features.tick(after, &adjusted));
        // The config still lists it on the next reload: dropped again, counted once.
        let mut again = start.clone();
        features.before_resolve(&mut again, after);
        assert_eq!(again, adjusted);
        assert_eq!(features.shared.expired_removed.load(Ordering::Relaxed), 1);

        let mut all_gone = desired(vec![entry("203.0.113.0/24", Some("2026-12-01T00:00:00Z"))]);
        features.before_resolve(&mut all_gone, after);
        assert_eq!(all_gone.authorized, Authorized::Entries(vec![]));
        assert_eq!(all_gone.authorized.kind(), "only_always_allowed");
    }

    #[test]
    fn service_tags_resolve_through_the_daemon_hook() {
        let dir = std::env::temp_dir().join(format!("apifence-features-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/ServiceTags_Public_20251106_excerpt.json"
        );
        let config =
            crate::daemon::config::parse(&format!("service_tags_file = \"{fixture}\""), &dir)
                .unwrap();
        let tags = load_tags(&config).unwrap().expect("a tag source");
        let list = desired(vec![RangeEntry::plain(Entry::Name("AzureDevOps".into()))]);
        let resolved = resolve(&list, Some(tags.as_ref())).unwrap();
        assert_eq!(resolved.entries[0].prefixes.len(), 55);
        let unknown = desired(vec![RangeEntry::plain(Entry::Name("AzureDevOp".into()))]);
        let error = resolve(&unknown, Some(tags.as_ref()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"AzureDevOp\": not a service tag in")
                && error.contains("did you mean \"AzureDevOps\"?"),
            "{error}"
        );
        let missing =
            crate::daemon::config::parse("service_tags_file = \"/nonexistent/tags.json\"", &dir)
                .unwrap();
        let error = load_tags(&missing).err().expect("an error");
        assert!(
            error.starts_with("reading service tags file /nonexistent/tags.json"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn resolved(ranges: &str, mode: Mode) -> Resolved {
        let mut d = desired(vec![]);
        d.authorized = Authorized::parse(ranges).unwrap();
        d.mode = mode;
        resolve(&d, None).unwrap()
    }

    #[test]
    fn review_describes_the_impact_and_only_guards_cli_changes() {
        let mut features = StandardFeatures::default();
        let before = resolved("10.0.0.0/8", Mode::Enforce);
        let after = resolved("192.0.2.0/24", Mode::Enforce);
        let diff = crate::daemon::desired::Diff::between(&before, &after);
        let config = Config::default();
        let plan = |origin, dry_run| Plan {
            origin,
            before: &before,
            enforced: Some(&before.policy),
            after: &after,
            diff: &diff,
            flags: ChangeFlags {
                dry_run,
                force: false,
            },
            config: &config,
        };
        let review = features.review(&plan(Origin::Set, true));
        let impact = review.impact.expect("an impact");
        assert_eq!(impact["merged_before"]["v4"], 2);
        assert_eq!(impact["merged_after"]["v4"], 2);
        assert!(
            impact["summary"][0]
                .as_str()
                .unwrap()
                .starts_with("merged prefixes: IPv4 2 -> 2")
        );
        // Expiry and reloads are never refused, and need no review unless dry.
        let quiet = features.review(&plan(Origin::Tick, false));
        assert!(quiet.impact.is_none() && quiet.refusal.is_none());
        // With no filter loaded (detached under the daemon) the change is judged against a
        // filter that enforces nothing, not against the last applied state.
        let detached = Plan {
            enforced: None,
            ..plan(Origin::Add, true)
        };
        let impact = features.review(&detached).impact.expect("an impact");
        assert_eq!(impact["merged_before"]["v4"], 0);
        assert_eq!(impact["merged_after"]["v4"], 2);
    }
}
