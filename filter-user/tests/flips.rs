//! The atomic switch under load: `BPF_PROG_TEST_RUN` keeps judging frames in other threads
//! while the main thread changes the list through the library more than a thousand times
//! (`ranges set`, `add`, `remove` as the CLI does them). Every verdict is checked: an address
//! authorized in every list must never be dropped, and an address a change removed must never
//! pass in a run that started after that change returned. Each change is made by a writer of
//! its own that waits for the grace period after its flip itself, leaves it for later, or never
//! waits (as if killed): the next writer waits before writing exactly in the last case. Plus:
//! the grace period really is an array-of-maps update, the mechanism the kernel guarantees a
//! `synchronize_rcu()` for.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use apifence::{
    kernel::grace_period::GracePeriod,
    kernel::operations::{Filter, Settled},
    kernel::paths::PinLayout,
};
use apifence_tests::{bpffs::Bpffs, frame::Frame, require_privileges};
use aya::maps::{Array, Map, MapData};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use ipnet::IpNet;

mod support;

use support::{XDP_DROP, XDP_PASS, enforcing, load, test_run};

const API: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
/// In every list, but written as a different prefix in each: merged into 10.0.0.0/23 while
/// 10.0.1.0/24 is in the list, 10.0.0.0/24 alone otherwise. Rewriting a slot removes the old
/// prefix before inserting the new one, so a reader left on the rewritten slot would miss it.
const KEEP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
/// Likewise for IPv6: 2001:db8::/47 merged, or 2001:db8:1::/48 alone.
const KEEP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
/// In 10.0.1.0/24, which the changes remove and add back.
const TOGGLED4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// In 2001:db8::/48, removed and added back with 10.0.1.0/24.
const TOGGLED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

const WITH: &str = "10.0.0.0/24, 10.0.1.0/24, 2001:db8:1::/48, 2001:db8::/48";
const WITHOUT: &str = "10.0.0.0/24, 2001:db8:1::/48";
const FLIPS: u64 = 1_000;
const READERS: usize = 2;

fn toggled() -> Vec<IpNet> {
    vec![
        "10.0.1.0/24".parse().expect("prefix"),
        "2001:db8::/48".parse().expect("prefix"),
    ]
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    runs: u64,
    keep_runs: u64,
    /// Runs of a toggled address that started after its removal returned and ended before
    /// the next change began.
    removed_runs: u64,
    wrong: Vec<String>,
}

/// Judges frames until `stop`; `generation` is odd while the toggled ranges are removed and
/// the removing apply has returned, even otherwise (bumped before an apply that adds them).
/// `checked` counts runs of removed addresses (so the writer can wait for one per removal).
fn reader(
    layout: &PinLayout,
    generation: &AtomicU64,
    checked: &AtomicU64,
    stop: &AtomicBool,
) -> Seen {
    let program =
        Xdp::from_pin(layout.program(), XdpAttachType::Interface).expect("open the program");
    let frames = [
        ("kept 10.0.0.5", Frame::tcp4(KEEP4, API, 6443), true),
        ("kept 2001:db8:1::5", Frame::tcp6(KEEP6, API6, 6443), true),
        ("removed 10.0.1.5", Frame::tcp4(TOGGLED4, API, 6443), false),
        (
            "removed 2001:db8::5",
            Frame::tcp6(TOGGLED6, API6, 443),
            false,
        ),
    ];
    let mut seen = Seen::default();
    while !stop.load(Ordering::SeqCst) {
        for (label, frame, keep) in &frames {
            let before = generation.load(Ordering::SeqCst);
            let verdict = test_run(&program, frame, 1);
            let after = generation.load(Ordering::SeqCst);
            seen.runs += 1;
            let wrong = if *keep {
                seen.keep_runs += 1;
                verdict != XDP_PASS
            } else if before % 2 == 1 && before == after {
                seen.removed_runs += 1;
                checked.fetch_add(1, Ordering::SeqCst);
                verdict != XDP_DROP
            } else {
                false
            };
            if wrong && seen.wrong.len() < 10 {
                seen.wrong
                    .push(format!("{label}: verdict {verdict} in generation {before}"));
            }
        }
    }
    seen
}

#[test]
fn no_wrong_verdict_during_a_thousand_flips() {
    if !require_privileges("no_wrong_verdict_during_a_thousand_flips") {
        return;
    }
    let bpffs = Bpffs::new().expect("mount a private bpffs");
    let layout = PinLayout::new(bpffs.path());
    drop(load(&layout, enforcing(WITH)));
    let generation = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (layout, generation, checked, stop) = (
                layout.clone(),
                generation.clone(),
                checked.clone(),
                stop.clone(),
            );
            thread::spawn(move || reader(&layout, &generation, &checked, &stop))
        })
        .collect();

    let mut flips = 0;
    let mut removals = 0;
    // Whether the last flip was left unsettled (its token dropped), so the next apply must wait.
    let mut left_unsettled = false;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while flips < FLIPS {
            // A writer per change, as separate CLI runs and daemon changes are.
            let mut filter = Filter::open_for_write(&layout).expect("open for write");
            let mut record = filter.record().expect("record");
            let list = record.policy.ranges.list().clone();
            let has_toggled = list.entries().contains(&toggled()[0]);
            // Alternate between `ranges set` and `ranges add`/`remove`, as the CLI does them.
            let by_text = flips % 4 < 2;
            let next = if has_toggled {
                if by_text {
                    WITHOUT.to_owned()
                } else {
                    list.remove(&toggled()).expect("remove").to_text()
                }
            } else {
                // Before the change starts: from now on the toggled addresses may pass.
                generation.fetch_add(1, Ordering::SeqCst);
                if by_text {
                    WITH.to_owned()
                } else {
                    list.add(&toggled()).to_text()
                }
            };
            record.policy = enforcing(&next);
            // Three ways a writer finishes: waits itself (CLI), leaves the wait until after it
            // answered (daemon), or never waits (a writer killed right after its flip).
            let report = match flips % 3 {
                0 => filter.apply(&record).expect("apply"),
                style => {
                    let (report, unsettled) = filter.apply_unsettled(&record).expect("apply");
                    drop(filter);
                    if style == 1 {
                        // No other writer: the lock is free and the state still this flip's.
                        assert_eq!(
                            unsettled.settle(&layout).expect("settle"),
                            Settled::Recorded
                        );
                    }
                    report
                }
            };
            // Only a writer after one that never waited has to wait before writing (`load`
            // waited after its flip).
            assert_eq!(
                report.waited_before_writing, left_unsettled,
                "change {flips}: waited before writing"
            );
            left_unsettled = flips % 3 == 2;
            flips += 1;
            if has_toggled {
                // The removal returned: from now on the toggled addresses must be dropped.
                let before = checked.load(Ordering::SeqCst);
                generation.fetch_add(1, Ordering::SeqCst);
                // Let the readers judge a removed address at least once (bounded wait).
                let deadline = Instant::now() + Duration::from_secs(2);
                while checked.load(Ordering::SeqCst) == before && Instant::now() < deadline {
                    thread::yield_now();
                }
                removals += 1;
            }
        }
    }));
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = readers
        .into_iter()
        .map(|r| r.join().expect("reader thread"))
        .collect();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let runs: u64 = seen.iter().map(|s| s.runs).sum();
    let keep_runs: u64 = seen.iter().map(|s| s.keep_runs).sum();
    let removed_runs: u64 = seen.iter().map(|s| s.removed_runs).sum();
    let wrong: Vec<&String> = seen.iter().flat_map(|s| &s.wrong).collect();
    println!(
        "{flips} flips, {runs} runs: {keep_runs} of kept addresses, {removed_runs} of removed ones"
    );
    assert_eq!(flips, FLIPS);
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:#?}");
    // The check was not vacuous: both kinds of address were judged while the list changed.
    assert!(
        keep_runs >= FLIPS,
        "only {keep_runs} runs of kept addresses"
    );
    assert!(
        removed_runs >= removals,
        "{removed_runs} runs of removed addresses for {removals} removals"
    );
}

#[test]
fn grace_period_is_an_array_of_maps_update() {
    if !require_privileges("grace_period_is_an_array_of_maps_update") {
        return;
    }
    let grace = GracePeriod::new().expect("create the grace-period maps");
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", grace.outer_fd()))
        .expect("fdinfo of the outer map");
    // BPF_MAP_TYPE_ARRAY_OF_MAPS = 12: an update of it makes the kernel wait for a grace period.
    assert!(
        fdinfo
            .lines()
            .any(|l| l.split_whitespace().eq(["map_type:", "12"])),
        "outer map is not an array of maps:\n{fdinfo}"
    );
    for _ in 0..3 {
        grace.wait().expect("map-in-map update");
    }
}

/// The flip state is trusted only for its own flip: a settle that can't take the lock records
/// nothing, and a flip made behind the state's back (as a build from before it would) makes the
/// next writer wait.
#[test]
fn flip_state_is_trusted_only_for_its_own_flip() {
    if !require_privileges("flip_state_is_trusted_only_for_its_own_flip") {
        return;
    }
    let bpffs = Bpffs::new().expect("mount a private bpffs");
    let layout = PinLayout::new(bpffs.path());
    drop(load(&layout, enforcing(WITH)));
    let apply = |ranges: &str| {
        Filter::open_for_write(&layout)
            .expect("open for write")
            .apply_policy(enforcing(ranges))
            .expect("apply")
    };
    // `load` settled its flip.
    assert!(!apply(WITHOUT).waited_before_writing);

    // A writer still holds the lock: the settle skips, and the next writer waits.
    let mut holder = Filter::open_for_write(&layout).expect("open for write");
    let mut record = holder.record().expect("record");
    record.policy = enforcing(WITH);
    let (_, unsettled) = holder.apply_unsettled(&record).expect("apply");
    assert_eq!(unsettled.settle(&layout).expect("settle"), Settled::Skipped);
    drop(holder);
    assert!(apply(WITHOUT).waited_before_writing);
    assert!(!apply(WITH).waited_before_writing);

    // ACTIVE_SLOT flipped without the state: the state says "settled", but not for this slot.
    let active_pin = layout.map(filter_common::MAP_ACTIVE_SLOT);
    let mut active: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(&active_pin).expect("open ACTIVE_SLOT"),
    ))
    .expect("an array");
    let slot = active.get(&0, 0).expect("read ACTIVE_SLOT");
    active
        .set(0, 1 - slot, 0)
        .expect("flip behind the state's back");
    assert!(apply(WITHOUT).waited_before_writing);
    assert!(!apply(WITH).waited_before_writing);
}
