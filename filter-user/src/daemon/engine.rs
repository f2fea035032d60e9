//! The engine: the one owner of the desired state and the only writer of the filter while the
//! daemon runs. It lives on its own thread and handles one [`Command`] at a time (socket
//! requests, reloads, ticks), so changes never interleave.
//!
//! Every change takes the same path ([`Engine::change`]): adjust (features) → resolve names →
//! check capacity → diff → review (features; may refuse) → stop here for a dry run → persist
//! the state file durably → apply atomically → acknowledge.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    daemon::{
        DaemonError, ErrorChain,
        bypass_log::BypassLog,
        config::{self, Config, LoadedConfig, RangesFrom},
        desired::{
            Authorized, Desired, Diff, RangeEntry, Resolved, TagSource, parse_entries, resolve,
        },
        external::{ExternalDesired, ExternalRequest},
        hooks::{Features, Origin, Plan},
        protocol::{
            ChangeFlags, ChangeReply, EntryMeta, ErrorKind, ErrorReply, LinkStatus, ModeChange,
            RangesChange, ReloadReply, Reply, Request, Response, ShowEntry, ShowReply, StatusReply,
        },
        state_file::{self, ModeOverride, StateFile},
        telemetry::Telemetry,
    },
    kernel::attach::{self, Replacement},
    kernel::bpffs::DirLock,
    kernel::operations::{self, AttachOptions, Filter, FilterError, Unsettled},
    kernel::paths::{PinLayout, StateLayout},
    policy::compile,
    policy::timestamp::rfc3339,
    policy::{Mode, Policy},
    policy::{language::Entry, merge::merge},
};

/// How often interfaces that could not be attached are tried again.
const ATTACH_RETRY: Duration = Duration::from_secs(5);

/// What the engine is asked to do.
#[derive(Debug)]
pub enum Command {
    /// A socket request; the response goes back on `reply`.
    Request {
        /// The request.
        request: Request,
        /// Where the response goes.
        reply: oneshot::Sender<Response>,
    },
    /// Re-read the config file (file change, SIGHUP, `apifence reload`).
    Reload {
        /// Why, for the log.
        reason: &'static str,
        /// Where the outcome goes, when someone waits for it.
        reply: Option<oneshot::Sender<Response>>,
    },
    /// The periodic tick.
    Tick,
    /// The kernel reported a link change (an interface created, deleted or changed).
    LinksChanged,
    /// A desired state from an external source (see [`crate::daemon::external`]).
    External(ExternalRequest),
}

/// The owner of the desired state.
pub struct Engine {
    config_path: PathBuf,
    loaded: LoadedConfig,
    state: StateFile,
    desired: Desired,
    resolved: Resolved,
    tags: Option<Arc<dyn TagSource>>,
    layout: PinLayout,
    state_layout: StateLayout,
    features: Box<dyn Features>,
    telemetry: Arc<Telemetry>,
    watched: watch::Sender<Vec<PathBuf>>,
    /// Interfaces of the config that could not be attached, with the last error logged.
    missing: BTreeMap<String, String>,
    /// Attached interfaces not in the config that were already warned about.
    extra_warned: BTreeSet<String>,
    /// Configured interfaces whose stale attachment was reported as gone (logged once).
    gone_warned: BTreeSet<String>,
    last_attach_try: Instant,
    warned_gone: bool,
    /// The bypass report last logged.
    bypass_log: BypassLog,
    /// The last flip, until its grace period has been waited for ([`Engine::settle`]).
    unsettled: Option<Unsettled>,
}

/// Everything the engine starts from.
pub struct EngineSetup {
    /// The config file.
    pub config_path: PathBuf,
    /// Its contents, loaded and validated.
    pub loaded: LoadedConfig,
    /// Load the embedded program and swap it in even when it is the pinned version.
    pub replace_program: bool,
    /// The features.
    pub features: Box<dyn Features>,
    /// Shared counters.
    pub telemetry: Arc<Telemetry>,
    /// Where the engine publishes the files to watch.
    pub watched: watch::Sender<Vec<PathBuf>>,
}

/// Composes the desired state from the config and the state file, updating the state file's
/// contents: with `ranges_from = "state"` an empty state is seeded from the config; a mode
/// override is dropped once the config's `mode` changed since it was set. With
/// `ranges_from = "etcd"` the last external desired state applied wins (until a first one
/// arrives, the config's keys are used).
pub fn compose(config: &Config, state: &mut StateFile) -> Desired {
    if config.ranges_from == RangesFrom::Etcd {
        state.mode = None;
        return match &state.external {
            Some(external) => Desired {
                authorized: external.authorized.clone(),
                always_allow: external.always_allow.clone(),
                ports: config.ports.clone(),
                mode: external.mode,
            },
            None => Desired {
                authorized: config.authorized_ranges.clone(),
                always_allow: config.always_allow.clone(),
                ports: config.ports.clone(),
                mode: config.mode,
            },
        };
    }
    let authorized = match config.ranges_from {
        RangesFrom::Config | RangesFrom::Etcd => config.authorized_ranges.clone(),
        RangesFrom::State => state
            .authorized
            .get_or_insert_with(|| config.authorized_ranges.clone())
            .clone(),
    };
    let mode = match state.mode {
        Some(over) if over.config_mode == config.mode => over.mode,
        Some(_) => {
            state.mode = None;
            config.mode
        }
        None => config.mode,
    };
    Desired {
        authorized,
        always_allow: config.always_allow.clone(),
        ports: config.ports.clone(),
        mode,
    }
}

/// A change that did not happen.
struct Refused(ErrorReply);

impl From<ErrorReply> for Refused {
    fn from(reply: ErrorReply) -> Self {
        Self(reply)
    }
}

fn invalid(error: &dyn std::error::Error) -> ErrorReply {
    ErrorReply::new(ErrorKind::Invalid, ErrorChain(error).to_string())
}

fn failed(error: &dyn std::error::Error) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Failed,
        format!(
            "{}; nothing changed, the previous state stays enforced",
            ErrorChain(error)
        ),
    )
}

impl Engine {
    /// Loads the state, adopts the pinned filter (or loads and attaches it), replaces the
    /// program when the embedded version differs, applies the desired state and attaches the
    /// config's interfaces. Never detaches anything.
    pub fn start(setup: EngineSetup) -> Result<Self, DaemonError> {
        let EngineSetup {
            config_path,
            loaded,
            replace_program,
            mut features,
            telemetry,
            watched,
        } = setup;
        let config = &loaded.config;
        let layout = PinLayout::new(&config.bpffs);
        let state_layout = StateLayout::new(&config.state_dir);
        let persisted = state_file::read(&state_layout)?;
        let mut state = persisted.clone().unwrap_or_default();
        let tags = features.load_tags(config).map_err(DaemonError::Tags)?;
        let mut desired = compose(config, &mut state);
        features.before_resolve(&mut desired, OffsetDateTime::now_utc());
        if config.ranges_from == RangesFrom::State {
            state.authorized = Some(desired.authorized.clone());
        }
        let resolved = resolve(&desired, tags.as_deref()).map_err(DaemonError::Resolve)?;
        if persisted.as_ref() != Some(&state) {
            state_file::write(&state_layout, &state)?;
        }
        let _ = watched.send(features.watched_files(config));
        let mut engine = Self {
            config_path,
            loaded,
            state,
            desired,
            resolved,
            tags,
            layout,
            state_layout,
            features,
            telemetry,
            watched,
            missing: BTreeMap::new(),
            extra_warned: BTreeSet::new(),
            gone_warned: BTreeSet::new(),
            last_attach_try: Instant::now(),
            warned_gone: false,
            bypass_log: BypassLog::default(),
            unsettled: None,
        };
        engine.converge(replace_program)?;
        engine.bypass_log.check(&engine.layout);
        Ok(engine)
    }

    fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The layout of the pins.
    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The configuration in force.
    pub fn current_config(&self) -> &Config {
        &self.loaded.config
    }

    /// Calls [`Features::spawn_tasks`] (on the engine thread, inside the runtime).
    pub fn spawn_tasks(
        &mut self,
        context: &crate::daemon::hooks::TaskContext,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.features.spawn_tasks(context)
    }

    /// Loads or adopts the filter, applies the resolved policy, attaches interfaces.
    fn converge(&mut self, replace_program: bool) -> Result<(), DaemonError> {
        let bpffs = self.layout.root().display().to_string();
        let adopted = attach::is_loaded(&self.layout);
        if adopted {
            info!(%bpffs, "adopting the pinned program, maps and links (nothing is detached)");
            let filter = Filter::open(&self.layout)?;
            if filter.capacity() != self.config().capacity {
                warn!(
                    pinned = filter.capacity(),
                    configured = self.config().capacity,
                    "capacity differs from the attached filter's; it takes effect after \
                     `apifence detach --all` and a restart"
                );
            }
            if filter.lookup() != self.config().lookup {
                warn!(
                    pinned = filter.lookup().name(),
                    configured = self.config().lookup.name(),
                    "lookup differs from the attached filter's; it takes effect after \
                     `apifence detach --all` and a restart"
                );
            }
            drop(filter);
            // Under the writer lock, like every other change of the pins.
            let replaced = DirLock::acquire(self.layout.root())
                .map_err(FilterError::from)
                .and_then(|_lock| Ok(attach::replace_program(&self.layout, replace_program)?));
            match replaced {
                Ok(instances) => {
                    for (framing, replacement) in instances {
                        let framing = framing.name();
                        match replacement {
                            Replacement::Unchanged { program_id } => info!(
                                program_id,
                                framing, "the pinned program is this version; kept"
                            ),
                            Replacement::Replaced {
                                old_id,
                                new_id,
                                interfaces,
                            } => info!(
                                old_id,
                                new_id,
                                framing,
                                interfaces = %interfaces.join(","),
                                "replaced the program on the existing links (bpf_link_update, \
                                 no gap)"
                            ),
                        }
                    }
                }
                Err(e) => error!(
                    error = %ErrorChain(&e),
                    "could not replace the pinned program; the pinned version keeps running"
                ),
            }
        } else {
            self.load_fresh()?;
        }
        let policy = self.resolved.policy.clone();
        // A record this daemon did not stamp is applied again, so it carries the stamp.
        let enforced = Filter::open(&self.layout)?
            .record()
            .ok()
            .filter(|r| r.managed_by.as_deref() == Some(self.config_path.as_path()))
            .map(|r| r.policy);
        match enforced {
            Some(enforced) if enforced == policy => {
                info!("the enforced policy already matches the desired state; nothing applied");
                self.telemetry.set_compiled(self.compiled_counts());
            }
            Some(enforced) if adopted => {
                // Changes made with the CLI while no daemon ran are replaced: say so.
                warn!(
                    ranges_differ = enforced.ranges != policy.ranges,
                    enforced_mode = enforced.mode.as_str(),
                    desired_mode = policy.mode.as_str(),
                    ranges_from = self.config().ranges_from.as_str(),
                    "the pinned filter enforces something else than the daemon's desired state \
                     (changed with the CLI while no daemon ran?); enforcing the desired state"
                );
                self.apply(&policy)?;
            }
            _ => {
                self.apply(&policy)?;
            }
        }
        // Links left stale while no daemon ran (interfaces recreated) are repaired now.
        self.repair_stale();
        self.attach_missing(true);
        Ok(())
    }

    /// Loads and pins the program with the configured policy, attached to no interface yet.
    fn load_fresh(&mut self) -> Result<(), DaemonError> {
        let config = self.config().clone();
        info!(bpffs = %config.bpffs.display(), capacity = config.capacity, "loading the filter");
        let policy = &self.resolved.policy;
        operations::attach(
            &self.layout,
            &AttachOptions {
                interfaces: Vec::new(),
                ports: Some(policy.ports.clone()),
                xdp_mode: config.xdp_mode,
                monitor: policy.mode == Mode::Monitor,
                capacity: Some(config.capacity),
                lookup: Some(config.lookup),
                always_allow: Some(policy.always_allow.clone()),
            },
        )?;
        Ok(())
    }

    fn compiled_counts(&self) -> compile::FamilyCounts {
        crate::daemon::desired::count_families(self.resolved.merged().iter())
    }

    /// Applies `policy` atomically, loading the filter again if its pins are gone.
    fn apply(&mut self, policy: &Policy) -> Result<operations::ApplyReport, FilterError> {
        let reloaded = !attach::is_loaded(&self.layout);
        if reloaded {
            warn!(
                bpffs = %self.layout.root().display(),
                "the pinned filter is gone (apifence detach?); loading and attaching it again"
            );
            self.load_fresh().map_err(|e| match e {
                DaemonError::Filter(e) => e,
                other => FilterError::BadRecord {
                    dir: self.layout.root().display().to_string(),
                    reason: ErrorChain(&other).to_string(),
                },
            })?;
            self.extra_warned.clear();
        }
        let mut filter = Filter::open_for_write(&self.layout)?;
        let (report, unsettled) = filter.apply_policy_managed(policy.clone(), &self.config_path)?;
        drop(filter);
        // An earlier flip's token is stale now (this apply waited for it if needed).
        self.unsettled = Some(unsettled);
        if reloaded {
            // The policy is in place before any interface sees the program again.
            self.attach_missing(true);
        }
        info!(
            given_v4 = report.given.v4,
            given_v6 = report.given.v6,
            compiled_v4 = report.compiled.v4,
            compiled_v6 = report.compiled.v6,
            mode = policy.mode.as_str(),
            slot = report.slot,
            ms = report.duration.as_secs_f64() * 1e3,
            "applied"
        );
        self.telemetry.applied(
            SystemTime::now(),
            report.duration,
            report.given,
            report.compiled,
        );
        Ok(report)
    }

    /// Attaches interfaces of the config that are not attached; logs each failure once.
    fn attach_missing(&mut self, now: bool) {
        if !now && (self.missing.is_empty() || self.last_attach_try.elapsed() < ATTACH_RETRY) {
            return;
        }
        self.last_attach_try = Instant::now();
        if !attach::is_loaded(&self.layout) {
            return;
        }
        let attached = attach::attached_interfaces(&self.layout);
        let config = self.config().clone();
        for interface in &config.interfaces {
            if attached.contains(interface) {
                self.missing.remove(interface);
                continue;
            }
            let options = AttachOptions {
                interfaces: vec![interface.clone()],
                xdp_mode: config.xdp_mode,
                ..AttachOptions::default()
            };
            match operations::attach(&self.layout, &options) {
                Ok(report) => {
                    for (name, mode) in &report.attached {
                        let framing = if report.ip_framed.contains(name) {
                            "ip"
                        } else {
                            "ethernet"
                        };
                        info!(interface = %name, xdp_mode = mode.as_str(), framing, "attached");
                    }
                    self.missing.remove(interface);
                }
                Err(e) => {
                    let message = ErrorChain(&e).to_string();
                    if self.missing.get(interface) != Some(&message) {
                        error!(
                            interface = %interface,
                            error = %message,
                            "cannot attach; retrying every {}s",
                            ATTACH_RETRY.as_secs()
                        );
                    }
                    self.missing.insert(interface.clone(), message);
                }
            }
        }
        self.missing
            .retain(|name, _| config.interfaces.contains(name));
        for interface in attached {
            if !config.interfaces.contains(&interface)
                && self.extra_warned.insert(interface.clone())
            {
                warn!(
                    interface = %interface,
                    "attached but not in the config; left attached (fail-static): \
                     `apifence detach {interface}` removes it"
                );
            }
        }
    }

    /// Waits for the grace period after the last flip, if not done yet, and records it, so the
    /// next change writes without waiting. Called after a command was answered: every packet
    /// judged after the answer is judged by the new policy (the flip came before it), and this
    /// wait is no longer on the client's path. Never waits for the writer lock: when another
    /// writer holds it, that writer waits itself if it has to. A failure only costs time (the
    /// next change waits before writing), and is logged.
    pub fn settle(&mut self) {
        let Some(unsettled) = self.unsettled.take() else {
            return;
        };
        if let Err(e) = unsettled.settle(&self.layout) {
            warn!(
                error = %ErrorChain(&e),
                "could not wait for or record the grace period after the last change; the next \
                 change waits for one before writing"
            );
        }
    }

    /// Handles one command.
    pub fn handle(&mut self, command: Command) {
        match command {
            Command::Request { request, reply } => {
                let response = self.request(request);
                let _ = reply.send(response);
            }
            Command::Reload { reason, reply } => {
                let response = match self.reload(reason) {
                    Ok(ok) => Response::Ok(Reply::Reload(ok)),
                    Err(e) => Response::Error(e),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(response);
                }
            }
            Command::Tick => self.tick(),
            Command::LinksChanged => {
                if attach::is_loaded(&self.layout) {
                    self.repair_stale();
                    self.attach_missing(true);
                }
                self.bypass_log.check(&self.layout);
            }
            Command::External(ExternalRequest {
                desired,
                dry_run,
                reply,
            }) => {
                let _ = reply.send(self.external(*desired, dry_run));
            }
        }
    }

    /// The last external desired state applied (persisted in the state file).
    pub fn applied_external(&self) -> Option<ExternalDesired> {
        self.state.external.clone()
    }

    /// Takes a desired state from the external source through the one change path.
    fn external(
        &mut self,
        external: ExternalDesired,
        dry_run: bool,
    ) -> Result<ChangeReply, ErrorReply> {
        if self.config().ranges_from != RangesFrom::Etcd {
            return Err(ErrorReply::new(
                ErrorKind::ConfigOwned,
                format!(
                    "this daemon takes its list from {} (ranges_from = \"{}\"), not from etcd",
                    self.config_path.display(),
                    self.config().ranges_from.as_str()
                ),
            ));
        }
        let desired = Desired {
            authorized: external.authorized.clone(),
            always_allow: external.always_allow.clone(),
            ports: self.config().ports.clone(),
            mode: external.mode,
        };
        let mut state = self.state.clone();
        state.external = Some(external);
        let flags = ChangeFlags {
            dry_run,
            ..ChangeFlags::default()
        };
        let tags = self.tags.clone();
        self.change(desired, state, Origin::External, flags, tags)
            .map_err(|Refused(e)| e)
    }

    /// The periodic tick: features first (expiry), then interface retries.
    fn tick(&mut self) {
        let now = OffsetDateTime::now_utc();
        if self.features.tick(now, &self.desired) {
            let desired = self.desired.clone();
            let state = self.state.clone();
            let tags = self.tags.clone();
            if let Err(Refused(e)) =
                self.change(desired, state, Origin::Tick, ChangeFlags::default(), tags)
            {
                error!(error = %e.message, "applying the tick's change failed");
            }
        }
        if !attach::is_loaded(&self.layout) {
            if !self.warned_gone {
                warn!(
                    bpffs = %self.layout.root().display(),
                    "the filter was removed (apifence detach?); it is loaded again on the next \
                     change or reload (systemctl reload apifence)"
                );
                self.warned_gone = true;
            }
            return;
        }
        self.warned_gone = false;
        self.restore_abandoned_trace();
        self.repair_stale();
        self.attach_missing(false);
        self.bypass_log.check(&self.layout);
    }

    /// Puts the filter back on links that still run the trace program of an `apifence trace`
    /// that died (they kept enforcing, with the same maps and verdicts; only the tracing
    /// stops). Runs on every tick; a running trace is left alone.
    fn restore_abandoned_trace(&self) {
        match crate::kernel::trace::restore_abandoned(&self.layout) {
            Ok(found) => {
                for interface in found.restored {
                    warn!(
                        interface = %interface,
                        "the interface still ran the trace program of an `apifence trace` that \
                         ended without putting the filter back; the filter runs there again"
                    );
                }
            }
            Err(e) => error!(
                error = %ErrorChain(&e),
                "could not check the links for a trace program left by `apifence trace`"
            ),
        }
    }

    /// Re-attaches every configured interface whose attachment is stale (the interface was
    /// deleted and created again, so its link filters nothing) and that exists now. Runs on
    /// every link event and every tick; an interface that is gone is reported once.
    fn repair_stale(&mut self) {
        let config = self.config().clone();
        for (interface, liveness) in attach::stale_interfaces(&self.layout) {
            if !config.interfaces.contains(&interface) {
                continue;
            }
            let attach::Liveness::Stale {
                current_ifindex: Some(ifindex),
                ..
            } = liveness
            else {
                if self.gone_warned.insert(interface.clone()) {
                    warn!(
                        interface = %interface,
                        "the interface is gone; its attachment is stale and it is attached \
                         again as soon as it exists"
                    );
                }
                continue;
            };
            self.gone_warned.remove(&interface);
            let options = AttachOptions {
                interfaces: vec![interface.clone()],
                xdp_mode: config.xdp_mode,
                ..AttachOptions::default()
            };
            match operations::attach(&self.layout, &options) {
                Ok(report) if report.repaired.contains(&interface) => {
                    self.telemetry.reattached();
                    let framing = if report.ip_framed.contains(&interface) {
                        "ip"
                    } else {
                        "ethernet"
                    };
                    info!(
                        interface = %interface,
                        ifindex,
                        framing,
                        "re-attached: the interface was deleted and created again"
                    );
                }
                Ok(_) => {}
                Err(e) => error!(
                    interface = %interface,
                    error = %ErrorChain(&e),
                    "the interface was recreated but re-attaching failed; it is not filtered; \
                     retrying on the next link event or tick"
                ),
            }
        }
    }

    fn request(&mut self, request: Request) -> Response {
        let result = match request {
            Request::RangesSet(change) => self.ranges(Origin::Set, change),
            Request::RangesAdd(change) => self.ranges(Origin::Add, change),
            Request::RangesRemove(change) => self.ranges(Origin::Remove, change),
            Request::Mode(change) => self.mode(change),
            Request::Show => self.show().map(Reply::Show),
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Reload => self.reload("apifence reload").map(Reply::Reload),
            Request::Denied(query) => self
                .features
                .denied(&query)
                .map(Reply::Denied)
                .map_err(|message| ErrorReply::new(ErrorKind::Failed, message)),
        };
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(error) => Response::Error(error),
        }
    }

    /// The refusal of a CLI change when etcd owns the desired state.
    fn etcd_owned(&self) -> Result<(), ErrorReply> {
        if self.config().ranges_from == RangesFrom::Etcd {
            return Err(ErrorReply::new(
                ErrorKind::ConfigOwned,
                format!(
                    "the authorized ranges and the mode are owned by the fleet's document in etcd \
                     (ranges_from = \"etcd\" in {}); change them for every host with apifence \
                     fleet set/add/remove (apifence fleet show shows them)",
                    self.config_path.display()
                ),
            ));
        }
        Ok(())
    }

    fn ranges(&mut self, origin: Origin, change: RangesChange) -> Result<Reply, ErrorReply> {
        self.etcd_owned()?;
        if self.config().ranges_from == RangesFrom::Config {
            return Err(ErrorReply::new(
                ErrorKind::ConfigOwned,
                format!(
                    "the authorized ranges are owned by the config file {} (ranges_from = \
                     \"config\"); edit authorized_ranges there (the daemon reloads it), or set \
                     ranges_from = \"state\" to change them with apifence ranges",
                    self.config_path.display()
                ),
            ));
        }
        let now = OffsetDateTime::now_utc();
        if let Some(at) = change.meta.expires
            && at <= now
        {
            // The entries would be dropped at once, and the change would seem to do nothing.
            let now = now.replace_nanosecond(0).unwrap_or(now);
            return Err(ErrorReply::new(
                ErrorKind::Invalid,
                format!(
                    "--expires {} is not in the future (it is {} now); give a later time, such \
                     as {}",
                    rfc3339(at),
                    rfc3339(now),
                    rfc3339(now + time::Duration::hours(8)),
                ),
            ));
        }
        let with_meta = |entry: Entry| RangeEntry {
            entry,
            note: change.meta.note.clone(),
            expires: change.meta.expires,
        };
        let current = &self.desired.authorized;
        let next = match origin {
            Origin::Set => match Authorized::parse(&change.list).map_err(|e| invalid(&e))? {
                Authorized::Entries(entries) => {
                    Authorized::Entries(entries.into_iter().map(|e| with_meta(e.entry)).collect())
                }
                Authorized::Disabled => Authorized::Disabled,
            },
            Origin::Add => {
                let entries = parse_entries(&change.list).map_err(|e| invalid(&e))?;
                current.with_added(&entries.into_iter().map(with_meta).collect::<Vec<_>>())
            }
            _ => {
                let entries = parse_entries(&change.list).map_err(|e| invalid(&e))?;
                current.without(&entries).map_err(|e| invalid(&e))?
            }
        };
        let mut desired = self.desired.clone();
        desired.authorized = next.clone();
        let mut state = self.state.clone();
        state.authorized = Some(next);
        let tags = self.tags.clone();
        self.change(desired, state, origin, change.flags, tags)
            .map(Reply::Change)
            .map_err(|Refused(e)| e)
    }

    fn mode(&mut self, change: ModeChange) -> Result<Reply, ErrorReply> {
        self.etcd_owned()?;
        let mut desired = self.desired.clone();
        desired.mode = change.mode;
        let mut state = self.state.clone();
        state.mode = (change.mode != self.config().mode).then_some(ModeOverride {
            mode: change.mode,
            config_mode: self.config().mode,
        });
        let tags = self.tags.clone();
        self.change(desired, state, Origin::Mode, change.flags, tags)
            .map(Reply::Change)
            .map_err(|Refused(e)| e)
    }

    /// The one path every change takes; see the module docs. On error nothing changed.
    fn change(
        &mut self,
        mut desired: Desired,
        mut state: StateFile,
        origin: Origin,
        flags: ChangeFlags,
        tags: Option<Arc<dyn TagSource>>,
    ) -> Result<ChangeReply, Refused> {
        self.features
            .before_resolve(&mut desired, OffsetDateTime::now_utc());
        if self.config().ranges_from == RangesFrom::State {
            state.authorized = Some(desired.authorized.clone());
        }
        let resolved = resolve(&desired, tags.as_deref()).map_err(|e| invalid(&e))?;
        let filter = Filter::open(&self.layout);
        let capacity = filter
            .as_ref()
            .map(|f| f.capacity())
            .unwrap_or(self.config().capacity);
        let compiled = compile::compile(&resolved.policy, capacity, &BTreeMap::new())
            .map_err(|e| invalid(&e))?;
        let diff = Diff::between(&self.resolved, &resolved);
        let enforced = filter.and_then(|f| f.record()).map(|r| r.policy);
        // What the guard compares with: no filter loaded drops nothing; a filter whose record
        // can't be read is taken to enforce the last applied state (and `apply` below
        // rewrites it).
        let enforced_for_review = match &enforced {
            Ok(policy) => Some(policy),
            Err(FilterError::NotAttached(_)) => None,
            Err(e) => {
                warn!(
                    error = %ErrorChain(e),
                    "reading what the filter enforces failed; the lockout guard compares with \
                     the last applied state"
                );
                Some(&self.resolved.policy)
            }
        };
        let review = self.features.review(&Plan {
            origin,
            before: &self.resolved,
            enforced: enforced_for_review,
            after: &resolved,
            diff: &diff,
            flags,
            config: &self.loaded.config,
        });
        let mut reply = ChangeReply {
            applied: false,
            dry_run: flags.dry_run,
            diff,
            impact: review.impact.clone(),
            given: resolved.given_counts(),
            compiled: compiled.counts,
            apply_ms: 0.0,
        };
        if flags.dry_run {
            return Ok(reply);
        }
        if let Some(refusal) = review.refusal
            && !flags.force
        {
            return Err(Refused(ErrorReply {
                kind: ErrorKind::Refused,
                message: refusal,
                detail: review.impact,
            }));
        }
        let state_changed = state != self.state;
        if state_changed {
            state_file::write(&self.state_layout, &state).map_err(|e| failed(&e))?;
        }
        if enforced.as_ref().ok() != Some(&resolved.policy) {
            match self.apply(&resolved.policy) {
                Ok(report) => {
                    reply.applied = true;
                    reply.apply_ms = report.duration.as_secs_f64() * 1e3;
                    self.features.applied(&resolved, &report);
                }
                Err(e) => {
                    if state_changed
                        && let Err(restore) = state_file::write(&self.state_layout, &self.state)
                    {
                        error!(error = %ErrorChain(&restore), "restoring the state file failed");
                    }
                    return Err(Refused(failed(&e)));
                }
            }
        } else {
            reply.applied = state_changed;
        }
        if !reply.diff.is_empty() {
            info!(
                origin = ?origin,
                added = %reply.diff.added.join(","),
                removed = %reply.diff.removed.join(","),
                filtering = %reply.diff.filtering_after,
                mode = reply.diff.mode_after.as_str(),
                "desired state changed"
            );
        }
        self.desired = desired;
        self.state = state;
        self.resolved = resolved;
        Ok(reply)
    }

    /// Re-reads the config file. An invalid config is rejected (logged, counted) and the last
    /// good state stays enforced.
    fn reload(&mut self, reason: &'static str) -> Result<ReloadReply, ErrorReply> {
        info!(reason, config = %self.config_path.display(), "reloading");
        match self.try_reload() {
            Ok(reply) => {
                self.telemetry.reload_succeeded();
                Ok(reply)
            }
            Err(message) => {
                error!(
                    reason,
                    error = %message,
                    "reload rejected; the last good state stays enforced"
                );
                self.telemetry.reload_failed(message.clone());
                Err(ErrorReply::new(
                    ErrorKind::ReloadFailed,
                    format!("{message}; the last good state stays enforced"),
                ))
            }
        }
    }

    fn try_reload(&mut self) -> Result<ReloadReply, String> {
        let mut loaded = config::load(&self.config_path).map_err(|e| ErrorChain(&e).to_string())?;
        let warnings = self.keep_restart_only_keys(&mut loaded.config);
        let mut all_warnings = loaded.config.warnings();
        all_warnings.extend(warnings);
        for warning in &all_warnings {
            warn!(warning = %warning, "config");
        }
        let tags = self
            .features
            .load_tags(&loaded.config)
            .map_err(|e| format!("service tags: {e}"))?;
        let mut state = self.state.clone();
        let desired = compose(&loaded.config, &mut state);
        let previous = std::mem::replace(&mut self.loaded, loaded);
        match self.change(
            desired,
            state,
            Origin::Reload,
            ChangeFlags::default(),
            tags.clone(),
        ) {
            Ok(change) => {
                self.tags = tags;
                let _ = self
                    .watched
                    .send(self.features.watched_files(&self.loaded.config));
                self.extra_warned.clear();
                self.attach_missing(true);
                Ok(ReloadReply {
                    changed: !change.diff.is_empty(),
                    diff: change.diff,
                    warnings: all_warnings,
                })
            }
            Err(Refused(e)) => {
                self.loaded = previous;
                Err(format!(
                    "config file {}: {}",
                    self.config_path.display(),
                    e.message
                ))
            }
        }
    }

    /// Keys that only take effect at start keep their running value; returns a warning for
    /// each that changed.
    fn keep_restart_only_keys(&self, new: &mut Config) -> Vec<String> {
        let old = self.config();
        let mut warnings = Vec::new();
        let mut keep = |key: &str, changed: bool| {
            if changed {
                warnings.push(format!(
                    "{key} changed; it takes effect when the daemon restarts (the running \
                     daemon keeps the old value)"
                ));
            }
        };
        keep("bpffs", new.bpffs != old.bpffs);
        keep("state_dir", new.state_dir != old.state_dir);
        keep("socket", new.socket != old.socket);
        keep("metrics", new.metrics != old.metrics);
        keep("metrics_ranges", new.metrics_ranges != old.metrics_ranges);
        keep("capacity", new.capacity != old.capacity);
        keep("lookup", new.lookup != old.lookup);
        new.bpffs.clone_from(&old.bpffs);
        new.state_dir.clone_from(&old.state_dir);
        new.socket.clone_from(&old.socket);
        new.metrics = old.metrics;
        new.metrics_ranges = old.metrics_ranges;
        new.capacity = old.capacity;
        new.lookup = old.lookup;
        warnings
    }

    fn show(&self) -> Result<ShowReply, ErrorReply> {
        let filter = Filter::open(&self.layout).map_err(|e| failed(&e))?;
        let record = filter.record().map_err(|e| failed(&e))?;
        let authorized = &self.desired.authorized;
        let mut ranges: Vec<String> = authorized.entries().iter().map(RangeEntry::text).collect();
        if authorized.kind() == "only_always_allowed" {
            ranges.push(crate::policy::language::ONLY_ALWAYS_ALLOWED.to_string());
        }
        Ok(ShowReply {
            enabled: authorized.is_enabled(),
            ranges,
            always_allow: self
                .desired
                .always_allow
                .iter()
                .map(ToString::to_string)
                .collect(),
            ports: self.desired.ports.clone(),
            mode: self.desired.mode,
            interfaces: record
                .attachment
                .interfaces
                .iter()
                .map(|(name, mode)| (name.clone(), mode.as_str().to_string()))
                .collect(),
            stale_interfaces: attach::stale_interfaces(&self.layout)
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
            capacity: filter.capacity(),
            lookup: filter.lookup(),
            source: self.config().ranges_from,
            config: self.config_path.clone(),
            entries: self
                .resolved
                .entries
                .iter()
                .map(|e| ShowEntry {
                    range: e.entry.text(),
                    kind: match e.entry.entry {
                        Entry::Prefix(_) => "prefix".into(),
                        Entry::Name(_) => "name".into(),
                    },
                    meta: EntryMeta {
                        note: e.entry.note.clone(),
                        expires: e.entry.expires,
                    },
                    expanded: e.prefixes.len(),
                    merged: merge(&e.prefixes).len(),
                })
                .collect(),
            given: self.resolved.given_counts(),
            compiled: self.compiled_counts(),
        })
    }

    fn status(&self) -> StatusReply {
        let links = attach::attached_interfaces(&self.layout)
            .into_iter()
            .filter_map(|name| {
                attach::link_ids(&self.layout, &name).map(|(link_id, program_id)| {
                    let live = attach::liveness(&self.layout, &name).is_ok_and(|l| l.is_live());
                    (
                        name,
                        LinkStatus {
                            link_id,
                            program_id,
                            live,
                        },
                    )
                })
            })
            .collect();
        StatusReply {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config_path.clone(),
            ranges_from: self.config().ranges_from,
            state_file: self.state_layout.state_file(),
            bpffs: self.layout.root().to_path_buf(),
            started_at: rfc3339(self.telemetry.started_at()),
            reloads: self.telemetry.reloads(),
            reload_failures: self.telemetry.reload_failures(),
            last_reload_error: self.telemetry.last_reload_error(),
            last_apply: self.telemetry.last_apply(),
            filtering: self.desired.authorized.kind().to_string(),
            mode: self.desired.mode,
            program_id: attach::program_id(&self.layout),
            links,
            stale_interfaces: attach::stale_interfaces(&self.layout)
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
            reattachments: self.telemetry.reattachments(),
            missing_interfaces: self.missing.keys().cloned().collect(),
            source: self.telemetry.source_health().map(Box::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        config::parse(text, std::path::Path::new("/")).unwrap()
    }

    #[test]
    fn compose_takes_the_list_from_its_owner() {
        let from_config = config(r#"authorized_ranges = ["10.0.0.0/8"]"#);
        let mut state = StateFile {
            authorized: Some(Authorized::parse("192.168.0.0/16").unwrap()),
            ..StateFile::default()
        };
        let desired = compose(&from_config, &mut state);
        assert_eq!(desired.authorized, Authorized::parse("10.0.0.0/8").unwrap());

        let from_state = config(
            r#"ranges_from = "state"
authorized_ranges = ["10.0.0.0/8"]"#,
        );
        let desired = compose(&from_state, &mut state);
        assert_eq!(
            desired.authorized,
            Authorized::parse("192.168.0.0/16").unwrap()
        );

        let mut empty = StateFile::default();
        let desired = compose(&from_state, &mut empty);
        assert_eq!(desired.authorized, Authorized::parse("10.0.0.0/8").unwrap());
        assert_eq!(empty.authorized, Some(desired.authorized));
    }

    #[test]
    fn with_etcd_the_last_external_state_wins_over_the_config() {
        let etcd = config(
            r#"ranges_from = "etcd"
authorized_ranges = ["10.0.0.0/8"]
[etcd]
endpoints = ["http://127.0.0.1:2379"]
host = "h""#,
        );
        let mut state = StateFile {
            mode: Some(ModeOverride {
                mode: Mode::Monitor,
                config_mode: Mode::Enforce,
            }),
            ..StateFile::default()
        };
        let desired = compose(&etcd, &mut state);
        assert_eq!(desired.authorized, Authorized::parse("10.0.0.0/8").unwrap());
        assert_eq!(
            desired.mode,
            Mode::Enforce,
            "no CLI mode override with etcd"
        );
        assert_eq!(state.mode, None);
        state.external = Some(ExternalDesired {
            authorized: Authorized::parse("192.168.0.0/16").unwrap(),
            always_allow: vec!["198.51.100.7/32".parse().unwrap()],
            mode: Mode::Monitor,
            source: serde_json::json!({"revision": 7}),
        });
        let desired = compose(&etcd, &mut state);
        assert_eq!(
            desired.authorized,
            Authorized::parse("192.168.0.0/16").unwrap()
        );
        assert_eq!(desired.always_allow.len(), 1);
        assert_eq!(desired.mode, Mode::Monitor);
        assert_eq!(desired.ports, etcd.ports, "ports stay the host's own");
    }

    #[test]
    fn a_mode_override_lasts_until_the_config_mode_changes() {
        let enforce = config("");
        let mut state = StateFile {
            mode: Some(ModeOverride {
                mode: Mode::Monitor,
                config_mode: Mode::Enforce,
            }),
            ..StateFile::default()
        };
        assert_eq!(compose(&enforce, &mut state).mode, Mode::Monitor);
        assert!(state.mode.is_some());
        let monitor = config(r#"mode = "monitor""#);
        assert_eq!(compose(&monitor, &mut state).mode, Mode::Monitor);
        assert_eq!(state.mode, None);
        assert_eq!(compose(&enforce, &mut state).mode, Mode::Enforce);
    }
}
