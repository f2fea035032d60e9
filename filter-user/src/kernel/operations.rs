//! The filter as a whole: attach, detach, read and replace the policy, read statistics. Every
//! change goes through [`Filter::apply_unsettled`]: wait for readers of the inactive slot
//! unless the flip state says none are left, compile, write the inactive slot, flip. Then a
//! grace period (readers of the old slot gone) is waited for and recorded: by
//! [`Filter::apply`] before it returns (the CLI), or by [`Unsettled::settle`] later (the
//! daemon, after answering). The CLI and the daemon both drive this module.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use filter_common::{
    COUNTER_DENY_EVENTS_SUPPRESSED, COUNTER_DROPPED, COUNTER_MALFORMED, COUNTER_PASSED_AUTHORIZED,
    COUNTER_PASSED_DISABLED, COUNTER_PASSED_UNPROTECTED, COUNTER_WOULD_DROP, DEFAULT_CAPACITY,
    RuleId,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    kernel::attach::{self, AttachError},
    kernel::bpffs::{self, BpffsError, DirLock},
    kernel::framing::Framing,
    kernel::grace_period::{GracePeriod, GracePeriodError},
    kernel::maps::{FilterMaps, FlipState, MapsError, SlotContents},
    kernel::paths::PinLayout,
    policy::Lookup,
    policy::XdpModeChoice,
    policy::compile::{self, CompileError, FamilyCounts},
    policy::merge::merge,
    policy::{Mode, Policy, RECORD_VERSION, Record},
};

/// Any failure of a filter operation.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The bpffs directory.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// Loading or attaching.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Map access.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The wait for programs still reading the old slot.
    #[error(transparent)]
    GracePeriod(#[from] GracePeriodError),
    /// The policy does not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Nothing is attached under this directory.
    #[error(
        "apifence is not attached (no pins under {0}); run `apifence attach IFACE` first, \
         or pass the --bpffs directory it was attached with"
    )]
    NotAttached(String),
    /// The pinned record can't be read.
    #[error(
        "the policy record pinned under {dir} is unreadable ({reason}); `apifence detach --all` and attach again"
    )]
    BadRecord {
        /// The bpffs directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// A detach named an interface that is not attached.
    #[error("{interface} is not attached; attached: {attached}")]
    NotAttachedInterface {
        /// The interface given.
        interface: String,
        /// The attached ones.
        attached: String,
    },
    /// `--capacity` differs from the pinned maps.
    #[error(
        "the filter under {dir} was attached with --capacity {pinned}; the capacity can't change \
         while attached (apifence detach --all, then attach with --capacity {asked})"
    )]
    CapacityFixed {
        /// The bpffs directory.
        dir: String,
        /// Capacity of the pinned maps.
        pinned: u32,
        /// Capacity asked for.
        asked: u32,
    },
    /// `--lookup` differs from the pinned filter's.
    #[error(
        "the filter under {dir} was attached with --lookup {pinned}; the lookup can't change \
         while attached (apifence detach --all, then attach with --lookup {asked})"
    )]
    LookupFixed {
        /// The bpffs directory.
        dir: String,
        /// Lookup of the pinned filter.
        pinned: &'static str,
        /// Lookup asked for.
        asked: &'static str,
    },
    /// A direct change of a filter the daemon owns, with no daemon answering.
    #[error(
        "the filter under {dir} is managed by the apifence daemon (config {config}), which does not \
         answer on {socket}; start it (systemctl start apifence) and retry, or pass --force to \
         change the pins directly (the daemon's desired state replaces such a change when it starts)"
    )]
    ManagedByDaemon {
        /// The bpffs directory.
        dir: String,
        /// The daemon's config file.
        config: String,
        /// The socket that did not answer.
        socket: String,
    },
    /// Restoring the filter a dead `apifence trace` left.
    #[error(transparent)]
    Trace(#[from] crate::kernel::trace::TraceError),
    /// A capacity of zero.
    #[error(
        "--capacity must be at least 1 (prefixes per address family); the default is {DEFAULT_CAPACITY}"
    )]
    ZeroCapacity,
}

/// Result type of this module.
pub type Result<T, E = FilterError> = std::result::Result<T, E>;

/// Options of `apifence attach`.
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Protected ports; `None` keeps the current ones (default 443, 6443).
    pub ports: Option<Vec<u16>>,
    /// Native, skb or auto.
    pub xdp_mode: XdpModeChoice,
    /// Switch to monitor mode.
    pub monitor: bool,
    /// Trie capacity per family; only for the first attach.
    pub capacity: Option<u32>,
    /// Which lookup judges sources; only for the first attach (default: compiled).
    pub lookup: Option<Lookup>,
    /// Replace the always-allow list.
    pub always_allow: Option<Vec<IpNet>>,
}

/// What an apply did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    /// Entries as given, per family (authorized ranges plus always-allow).
    pub given: FamilyCounts,
    /// Entries written after merging, per family.
    pub compiled: FamilyCounts,
    /// The slot now active.
    pub slot: u32,
    /// Wall time of the apply, up to the flip (the new policy enforced).
    pub duration: Duration,
    /// The apply waited for a grace period before writing, because the flip state did not say
    /// that the last flip was settled (fresh pins, or a writer that had not waited yet).
    pub waited_before_writing: bool,
}

/// Verdict counters and per-rule hits.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Passed packets (authorized, unprotected, disabled); would-drop packets pass too but are
    /// counted only in `would_drop`, so passed + dropped + would_drop = packets seen.
    pub passed: u64,
    /// Protected traffic from an authorized source.
    pub passed_authorized: u64,
    /// Traffic that is not protected.
    pub passed_unprotected: u64,
    /// Protected traffic passed while filtering is disabled.
    pub passed_disabled: u64,
    /// Dropped packets.
    pub dropped: u64,
    /// Packets counted instead of dropped in monitor mode.
    pub would_drop: u64,
    /// Packets with a malformed IP header (also in dropped / would_drop / passed_disabled).
    pub malformed: u64,
    /// Deny-log events not reported (rate limit or full ring buffer).
    pub deny_events_suppressed: u64,
    /// Hits per compiled prefix of the active slot.
    pub ranges: Vec<RangeHits>,
}

/// Hits of one compiled prefix.
#[derive(Clone, Debug, Serialize)]
pub struct RangeHits {
    /// The prefix as written in the trie (after merging).
    pub range: String,
    /// Packets it authorized.
    pub hits: u64,
    /// It comes from the always-allow list.
    pub always_allow: bool,
}

/// The pinned filter, opened.
pub struct Filter {
    layout: PinLayout,
    maps: FilterMaps,
    /// Created on the first apply that must wait (readers never need it).
    grace: Option<GracePeriod>,
    _lock: Option<DirLock>,
}

/// A flip whose grace period has not been waited for (see [`Filter::apply_unsettled`]).
/// Dropping it is safe: the next apply then waits before writing.
#[derive(Debug)]
#[must_use = "settle it, or the next change waits for the grace period"]
pub struct Unsettled {
    /// The flip state the flip wrote (unsettled).
    state: FlipState,
}

/// What [`Unsettled::settle`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The grace period passed and the flip state says so.
    Recorded,
    /// Another writer holds the lock (it will wait itself if it needs to) or flipped since,
    /// or the pins are gone: nothing recorded, the next writer waits.
    Skipped,
}

impl Unsettled {
    /// Takes the writer lock if it is free (never waits for it), waits for one RCU grace
    /// period, so every program run that read the old slot index has finished, and records in
    /// the flip state that the inactive slot has no readers, if the state is still this
    /// flip's. The lock is held from before the wait, so any flip the state shows was made
    /// before the grace period began, whichever pins these are by then.
    pub fn settle(self, layout: &PinLayout) -> Result<Settled> {
        if !attach::is_loaded(layout) {
            return Ok(Settled::Skipped);
        }
        let Some(_lock) = DirLock::try_acquire(layout.root())? else {
            return Ok(Settled::Skipped);
        };
        let mut maps = FilterMaps::open(layout)?;
        GracePeriod::new()?.wait()?;
        self.mark_settled(&mut maps)
    }

    /// Records that the flip is settled, if the flip state and the active slot are still the
    /// flip's. The caller holds the writer lock and has waited for a grace period that began
    /// after it took the lock or after the flip.
    fn mark_settled(self, maps: &mut FilterMaps) -> Result<Settled> {
        if maps.flip_state()? != Some(self.state) || maps.active_slot()? != self.state.active {
            return Ok(Settled::Skipped);
        }
        maps.set_flip_state(FlipState {
            settled: true,
            ..self.state
        })?;
        Ok(Settled::Recorded)
    }
}

fn dir_name(layout: &PinLayout) -> String {
    layout.root().display().to_string()
}

impl Filter {
    /// Opens the pinned filter for reading.
    pub fn open(layout: &PinLayout) -> Result<Self> {
        if !attach::is_loaded(layout) {
            return Err(FilterError::NotAttached(dir_name(layout)));
        }
        Ok(Self {
            layout: layout.clone(),
            maps: FilterMaps::open(layout)?,
            grace: None,
            _lock: None,
        })
    }

    /// Opens the pinned filter for writing, holding the writer lock until dropped.
    pub fn open_for_write(layout: &PinLayout) -> Result<Self> {
        if !attach::is_loaded(layout) {
            return Err(FilterError::NotAttached(dir_name(layout)));
        }
        let lock = DirLock::acquire(layout.root())?;
        Ok(Self {
            layout: layout.clone(),
            maps: FilterMaps::open(layout)?,
            grace: None,
            _lock: Some(lock),
        })
    }

    /// The record of the active slot (what is enforced now).
    pub fn record(&self) -> Result<Record> {
        let slot = self.maps.active_slot()?;
        let bad = |reason: String| FilterError::BadRecord {
            dir: dir_name(&self.layout),
            reason,
        };
        let bytes = self
            .maps
            .read_record(slot)?
            .ok_or_else(|| bad("no record in the active slot".into()))?;
        Record::decode(&bytes).map_err(|e| bad(e.to_string()))
    }

    /// What `slot` holds according to its record; `None` when unknown (no record, an
    /// interrupted write, or a record that does not decode), in which case the tries must be
    /// read or rewritten whole. A failing map read is an error, not "unknown".
    fn slot_contents(&self, slot: u32) -> Result<Option<SlotContents>> {
        let Some(bytes) = self.maps.read_record(slot)? else {
            return Ok(None);
        };
        let Ok(record) = Record::decode(&bytes) else {
            return Ok(None);
        };
        let prefixes = compile::slot_prefixes(&record.policy);
        if prefixes.len() != record.rule_ids.len() {
            return Ok(None);
        }
        Ok(Some(SlotContents {
            entries: prefixes.into_iter().zip(record.rule_ids).collect(),
            port_words: compile::port_bitmap(&record.policy.ports),
        }))
    }

    /// The compiled prefixes of `slot` with their rule ids.
    pub fn rules(&self, slot: u32) -> Result<std::collections::BTreeMap<IpNet, RuleId>> {
        Ok(match self.slot_contents(slot)? {
            Some(contents) => contents.entries,
            None => self.maps.rule_ids(slot)?,
        })
    }

    /// The lookup the program uses.
    pub fn lookup(&self) -> Lookup {
        self.maps.lookup()
    }

    /// Prefixes per family the tries hold.
    pub fn capacity(&self) -> u32 {
        self.maps.trie_capacity()
    }

    /// Compiles `record` and makes it the enforced policy, atomically: once this returns, every
    /// packet is judged against it; no packet was judged against a mix of old and new. Before
    /// returning it waits for the programs that read the old slot before the flip and records
    /// that in the flip state (as [`Unsettled::settle`] does, with the lock this writer holds),
    /// so the next change can write that slot at once.
    /// On error nothing changed, except when the grace period after the flip fails
    /// ([`FilterError::GracePeriod`]): then the new policy is live, and the next apply waits
    /// before writing.
    pub fn apply(&mut self, record: &Record) -> Result<ApplyReport> {
        let (report, unsettled) = self.apply_unsettled(record)?;
        // This writer holds the lock already: wait and record it here. The new policy is live
        // whatever happens now; a state that can't be recorded only makes the next writer
        // wait, so only the wait's failure is an error.
        self.wait_for_readers()?;
        let _ = unsettled.mark_settled(&mut self.maps);
        Ok(report)
    }

    /// [`Filter::apply`] up to and including the flip: the new policy is enforced for every
    /// program run that starts from now on. The grace period after the flip is left to the
    /// caller ([`Unsettled::settle`], for example after answering a client); until it is
    /// waited for, the next apply (in any process) waits before writing.
    pub fn apply_unsettled(&mut self, record: &Record) -> Result<(ApplyReport, Unsettled)> {
        let started = Instant::now();
        // A writer that crashed, or has not yet waited, after an earlier flip could leave
        // readers on the inactive slot: wait unless the flip state says a grace period passed.
        let state = self.maps.flip_state()?;
        let active = self.maps.active_slot()?;
        let waited_before_writing = !state.is_some_and(|s| s.settled && s.active == active);
        if waited_before_writing {
            self.wait_for_readers()?;
        }
        let target = 1 - active;
        let ids = match self.slot_contents(active)? {
            Some(contents) => contents.entries,
            None => self.maps.rule_ids(active)?,
        };
        let compiled = compile::compile(&record.policy, self.maps.trie_capacity(), &ids)?;
        let mut record = record.clone();
        record.rule_ids = compiled.entries.iter().map(|(_, id)| *id).collect();
        let bytes = record.encode();
        let previous = self.slot_contents(target)?;
        self.maps.zero_hits(&compiled.fresh_ids)?;
        self.maps
            .write_slot(target, &compiled, &bytes, previous.as_ref())?;
        // The state says "unsettled" before the flip, so no later writer trusts an old
        // "settled".
        let unsettled = FlipState {
            flips: state.map_or(0, |s| s.flips).wrapping_add(1),
            active: target,
            settled: false,
        };
        self.maps.set_flip_state(unsettled)?;
        self.maps.flip(target)?;
        let report = ApplyReport {
            given: given_counts(&record.policy),
            compiled: compiled.counts,
            slot: target,
            duration: started.elapsed(),
            waited_before_writing,
        };
        Ok((report, Unsettled { state: unsettled }))
    }

    /// One RCU grace period (see [`GracePeriod`]).
    fn wait_for_readers(&mut self) -> Result<()> {
        let grace = match &self.grace {
            Some(grace) => grace,
            None => self.grace.insert(GracePeriod::new()?),
        };
        grace.wait()?;
        Ok(())
    }

    /// Replaces the policy, keeping the attachment facts.
    pub fn apply_policy(&mut self, policy: Policy) -> Result<ApplyReport> {
        let mut record = self.record()?;
        record.policy = policy;
        self.apply(&record)
    }

    /// Replaces the policy on behalf of the daemon configured by `config`, stamping the record
    /// with it (see [`Record::managed_by`]). Returns once the new policy is enforced, before
    /// the grace period after the flip, which the daemon waits for after answering.
    pub fn apply_policy_managed(
        &mut self,
        policy: Policy,
        config: &std::path::Path,
    ) -> Result<(ApplyReport, Unsettled)> {
        let mut record = self.record()?;
        record.policy = policy;
        record.managed_by = Some(config.to_path_buf());
        self.apply_unsettled(&record)
    }

    /// Refuses a direct change of a filter a daemon owns, unless `force`.
    pub fn check_direct_change(&self, socket: &std::path::Path, force: bool) -> Result<()> {
        match self.record()?.managed_by {
            Some(config) if !force => Err(FilterError::ManagedByDaemon {
                dir: dir_name(&self.layout),
                config: config.display().to_string(),
                socket: socket.display().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Counters and per-prefix hits of the active slot.
    pub fn stats(&self) -> Result<Stats> {
        let verdicts = self.maps.verdicts()?;
        let slot = self.maps.active_slot()?;
        let record = self.record()?;
        let always: BTreeSet<IpNet> = merge(&record.policy.always_allow).into_iter().collect();
        let granted = record.policy.ranges.merged();
        let mut ranges = Vec::new();
        for (prefix, id) in self.rules(slot)? {
            ranges.push(RangeHits {
                range: prefix.to_string(),
                hits: self.maps.hits(id)?,
                always_allow: always.contains(&prefix) && granted.binary_search(&prefix).is_err(),
            });
        }
        let at = |index: u32| verdicts[index as usize];
        Ok(Stats {
            passed: at(COUNTER_PASSED_AUTHORIZED)
                + at(COUNTER_PASSED_UNPROTECTED)
                + at(COUNTER_PASSED_DISABLED),
            passed_authorized: at(COUNTER_PASSED_AUTHORIZED),
            passed_unprotected: at(COUNTER_PASSED_UNPROTECTED),
            passed_disabled: at(COUNTER_PASSED_DISABLED),
            dropped: at(COUNTER_DROPPED),
            would_drop: at(COUNTER_WOULD_DROP),
            malformed: at(COUNTER_MALFORMED),
            deny_events_suppressed: at(COUNTER_DENY_EVENTS_SUPPRESSED),
            ranges,
        })
    }
}

fn given_counts(policy: &Policy) -> FamilyCounts {
    let all = policy
        .ranges
        .list()
        .entries()
        .iter()
        .chain(&policy.always_allow);
    let mut counts = FamilyCounts::default();
    for prefix in all {
        match prefix {
            IpNet::V4(_) => counts.v4 += 1,
            IpNet::V6(_) => counts.v6 += 1,
        }
    }
    counts
}

/// What `attach` did.
#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    /// The program was loaded now (not reused from pins).
    pub loaded: bool,
    /// Interfaces attached now, with their mode.
    pub attached: Vec<(String, crate::policy::AttachedMode)>,
    /// Interfaces that were already attached (and live).
    pub already: Vec<String>,
    /// Interfaces whose attachment was stale (the interface was deleted and created again)
    /// and that were attached again now (also in `attached`).
    pub repaired: Vec<String>,
    /// Interfaces that still ran the trace program of an `apifence trace` that ended without
    /// putting the filter back, and run the filter again now.
    pub trace_restored: Vec<String>,
    /// Interfaces of `attached` that are L3 devices (tun, WireGuard), given the program
    /// instance that parses frames from the IP header.
    pub ip_framed: Vec<String>,
}

/// Attaches the filter to `options.interfaces`, loading and pinning it first when nothing is
/// pinned under `layout`. All or nothing: if one interface fails, the ones attached by this
/// call are detached again (and a fresh load is removed).
pub fn attach(layout: &PinLayout, options: &AttachOptions) -> Result<AttachReport> {
    if options.capacity == Some(0) {
        return Err(FilterError::ZeroCapacity);
    }
    let mounted = bpffs::ensure_bpffs_dir(layout.root())?;
    let _lock = DirLock::acquire(layout.root())?;
    let mut report = AttachReport {
        trace_restored: crate::kernel::trace::restore_abandoned(layout)?.restored,
        ..AttachReport::default()
    };
    if !attach::is_loaded(layout) {
        attach::load_and_pin(
            layout,
            options.capacity.unwrap_or(DEFAULT_CAPACITY),
            options.lookup.unwrap_or_default(),
        )?;
        report.loaded = true;
    }
    let result = attach_locked(layout, options, mounted, &mut report);
    if result.is_err() {
        for (interface, _) in &report.attached {
            let _ = attach::detach_interface(layout, interface);
        }
        if report.loaded {
            let _ = attach::remove_all_pins(layout);
            if mounted {
                let _ = bpffs::unmount_bpffs(layout.root());
            } else {
                // As `detach` leaves it: no empty pin directory behind a refused first attach.
                let _ = std::fs::remove_dir(layout.root());
            }
        }
    }
    result.map(|()| report)
}

fn attach_locked(
    layout: &PinLayout,
    options: &AttachOptions,
    mounted: bool,
    report: &mut AttachReport,
) -> Result<()> {
    let mut filter = Filter {
        layout: layout.clone(),
        maps: FilterMaps::open(layout)?,
        grace: None,
        _lock: None,
    };
    if let Some(asked) = options.capacity
        && !report.loaded
        && asked != filter.capacity()
    {
        return Err(FilterError::CapacityFixed {
            dir: dir_name(layout),
            pinned: filter.capacity(),
            asked,
        });
    }
    if let Some(asked) = options.lookup
        && !report.loaded
        && asked != filter.lookup()
    {
        return Err(FilterError::LookupFixed {
            dir: dir_name(layout),
            pinned: filter.lookup().name(),
            asked: asked.name(),
        });
    }
    let (mut record, original) = match filter.record() {
        Ok(record) => (record.clone(), Some(record)),
        // A fresh load (or maps left by an interrupted attach without a record).
        Err(FilterError::BadRecord { .. }) => (
            Record {
                version: RECORD_VERSION,
                policy: Policy::default(),
                ..Record::default()
            },
            None,
        ),
        Err(e) => return Err(e),
    };
    record.attachment.mounted_bpffs |= mounted;
    if let Some(ports) = &options.ports {
        record.policy.ports = ports.clone();
    }
    if let Some(always) = &options.always_allow {
        record.policy.always_allow = always.clone();
    }
    if options.monitor {
        record.policy.mode = Mode::Monitor;
    }
    // The policy goes live before any interface sees the program.
    filter.apply(&record)?;
    let mut attach_all = || {
        for interface in &options.interfaces {
            if layout.link(interface).exists() {
                if attach::liveness(layout, interface)?.is_live() {
                    report.already.push(interface.clone());
                    continue;
                }
                // The link points at an interface that is gone: replace it.
                attach::detach_interface(layout, interface)?;
                report.repaired.push(interface.clone());
            }
            let (mode, framing) = attach::attach_interface(layout, interface, options.xdp_mode)?;
            report.attached.push((interface.clone(), mode));
            if framing == Framing::Ip {
                report.ip_framed.push(interface.clone());
            }
            record.attachment.interfaces.insert(interface.clone(), mode);
        }
        filter.apply(&record).map(drop)
    };
    let result = attach_all();
    if result.is_err()
        && let Some(original) = original
    {
        // Nothing changed: the policy as it was (the caller detaches what was attached).
        let _ = filter.apply(&original);
    }
    result
}

/// Which interfaces `detach` removes.
#[derive(Clone, Debug)]
pub enum DetachTarget {
    /// These interfaces; when none remain, everything is removed.
    Interfaces(Vec<String>),
    /// Every interface, the program and the maps.
    All,
}

/// What `detach` did.
#[derive(Clone, Debug, Default)]
pub struct DetachReport {
    /// Interfaces detached.
    pub detached: Vec<String>,
    /// Program, maps and pins were removed (nothing left attached).
    pub removed_everything: bool,
}

/// Detaches interfaces; removes program, maps, pins (and a bpffs apifence mounted) when no
/// interface remains attached.
pub fn detach(layout: &PinLayout, target: &DetachTarget) -> Result<DetachReport> {
    if !attach::is_loaded(layout) {
        return match target {
            DetachTarget::All => Ok(DetachReport::default()),
            DetachTarget::Interfaces(_) => Err(FilterError::NotAttached(dir_name(layout))),
        };
    }
    let mut filter = Filter::open_for_write(layout)?;
    let attached = attach::attached_interfaces(layout);
    let wanted = match target {
        DetachTarget::All => attached.clone(),
        DetachTarget::Interfaces(names) => names.clone(),
    };
    for interface in &wanted {
        if !attached.contains(interface) {
            return Err(FilterError::NotAttachedInterface {
                interface: interface.clone(),
                attached: if attached.is_empty() {
                    "none".into()
                } else {
                    attached.join(", ")
                },
            });
        }
    }
    let record = filter.record().ok();
    let mut report = DetachReport::default();
    for interface in &wanted {
        attach::detach_interface(layout, interface)?;
        report.detached.push(interface.clone());
    }
    if attach::attached_interfaces(layout).is_empty() {
        drop(filter);
        attach::remove_all_pins(layout)?;
        if record.as_ref().is_some_and(|r| r.attachment.mounted_bpffs) {
            bpffs::unmount_bpffs(layout.root())?;
        } else {
            let _ = std::fs::remove_dir(layout.root());
        }
        report.removed_everything = true;
    } else if let Some(mut record) = record {
        for interface in &wanted {
            record.attachment.interfaces.remove(interface);
        }
        filter.apply(&record)?;
    }
    Ok(report)
}
