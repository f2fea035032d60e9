//! The deny log against the real program: frames run through `BPF_PROG_TEST_RUN` are dropped,
//! the kernel reports them through the pinned ring buffer, and [`DenyReader`] aggregates them.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use apifence::{
    features::deny_log::{DenyLog, DenyReader, interface_name},
    kernel::operations,
    policy::{Mode, Policy},
};
use apifence_tests::{frame::Frame, require_privileges};
use filter_common::DENY_EVENTS_PER_SEC_PER_CPU;
use time::OffsetDateTime;

mod support;

use support::{Lab, XDP_DROP, XDP_PASS};

const API: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
const AUTHORIZED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);

/// The policy of every test here: `AUTHORIZED` is in, in `mode`.
fn policy(mode: Mode) -> Policy {
    Policy {
        ranges: "198.51.100.0/24".parse().expect("test list"),
        mode,
        ..Policy::default()
    }
}

/// Runs the daemon's deny-log task on `lab`'s ring buffer while `during` runs (given the log
/// the task feeds), then stops it and checks that it ends, without error, within 5s.
fn with_reader_task<F: Future<Output = ()>>(
    lab: &Lab,
    during: impl FnOnce(Arc<Mutex<DenyLog>>) -> F,
) {
    let reader = DenyReader::open(&lab.layout).expect("open the ring buffer");
    let log = Arc::new(Mutex::new(DenyLog::default()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reader.run(log.clone(), async {
            let _ = stopped.await;
        }));
        during(log).await;
        stop.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .expect("join")
            .expect("no error");
    });
}

#[test]
fn deny_log_aggregates_the_dropped_sources() {
    if !require_privileges("deny_log_aggregates_the_dropped_sources") {
        return;
    }
    let lab = Lab::new(policy(Mode::Enforce));
    let mut reader = DenyReader::open(&lab.layout).expect("open the ring buffer");
    let before = OffsetDateTime::now_utc();
    for _ in 0..3 {
        assert_eq!(lab.run(&Frame::tcp4(STRANGER, API, 6443)), XDP_DROP);
    }
    assert_eq!(lab.run(&Frame::tcp4(OTHER, API, 443)), XDP_DROP);
    assert_eq!(lab.run(&Frame::tcp6(STRANGER6, API6, 6443)), XDP_DROP);
    // Neither an authorized source nor an unprotected port is reported.
    assert_eq!(lab.run(&Frame::tcp4(AUTHORIZED, API, 6443)), XDP_PASS);
    assert_eq!(lab.run(&Frame::tcp4(STRANGER, API, 8080)), XDP_PASS);

    assert!(
        reader.wait(Duration::from_secs(2)).expect("poll"),
        "no deny event within 2s"
    );
    let mut log = DenyLog::default();
    assert_eq!(reader.drain(&mut log), 5);
    let after = OffsetDateTime::now_utc();

    let top = log.top(10);
    let rows: Vec<(IpAddr, u64, u16)> = top.iter().map(|r| (r.source, r.count, r.port)).collect();
    assert_eq!(
        rows[0],
        (IpAddr::V4(STRANGER), 3, 6443),
        "the most frequent source first: {rows:?}"
    );
    let mut rest = rows[1..].to_vec();
    rest.sort();
    assert_eq!(
        rest,
        [
            (IpAddr::V4(OTHER), 1, 443),
            (IpAddr::V6(STRANGER6), 1, 6443)
        ]
    );
    let slack = time::Duration::seconds(1);
    for row in &top {
        assert!(row.first_seen <= row.last_seen, "{row:?}");
        assert!(
            row.first_seen >= before - slack && row.last_seen <= after + slack,
            "{row:?} outside [{before}, {after}]: the monotonic-to-wall conversion is off"
        );
        let expected =
            interface_name(row.ifindex).unwrap_or_else(|| format!("ifindex {}", row.ifindex));
        assert_eq!(row.interface, expected);
    }
    let json = serde_json::to_value(&top).expect("json");
    let first = json[0].as_object().expect("object");
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "count",
            "first_seen",
            "interface",
            "last_seen",
            "port",
            "source"
        ]
    );
    assert_eq!(first["source"], "192.0.2.1");
    assert_eq!(log.top(1).len(), 1);
    // Nothing left over.
    assert_eq!(reader.drain(&mut log), 0);
}

#[test]
fn deny_events_are_rate_limited_and_the_rest_counted() {
    if !require_privileges("deny_events_are_rate_limited_and_the_rest_counted") {
        return;
    }
    let lab = Lab::new(policy(Mode::Monitor));
    let mut reader = DenyReader::open(&lab.layout).expect("open the ring buffer");
    let suppressed_before = lab.stats().deny_events_suppressed;
    // One syscall, one CPU, 1500 would-drops in well under a second.
    assert_eq!(
        lab.run_repeated(&Frame::tcp4(STRANGER, API, 6443), 1500),
        XDP_PASS
    );
    let stats = lab.stats();
    assert_eq!(stats.would_drop, 1500);
    let suppressed = stats.deny_events_suppressed - suppressed_before;

    let mut log = DenyLog::default();
    reader.wait(Duration::from_secs(2)).expect("poll");
    let events = reader.drain(&mut log) as u64;
    // A one-second window may start in the middle of the run, allowing two windows' worth.
    let limit = DENY_EVENTS_PER_SEC_PER_CPU;
    assert!(suppressed > 0, "nothing suppressed ({events} events)");
    assert!(events <= 2 * limit, "{events} events, limit {limit}/s");
    assert!(events >= limit.min(1500) / 2, "only {events} events");
    assert_eq!(
        events + suppressed,
        1500,
        "every packet reported or counted"
    );
    let top = log.top(5);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].count, events);
    assert!(top[0].would_drop);
}

#[test]
fn the_daemon_task_feeds_the_log_until_shutdown() {
    if !require_privileges("the_daemon_task_feeds_the_log_until_shutdown") {
        return;
    }
    let lab = &Lab::new(policy(Mode::Enforce));
    with_reader_task(lab, |log| async move {
        // Packets after the task started are picked up through epoll.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..4 {
            assert_eq!(lab.run(&Frame::tcp4(STRANGER, API, 6443)), XDP_DROP);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let count = log.lock().unwrap().top(1).first().map_or(0, |r| r.count);
            if count == 4 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task saw {count} of 4 events in 5s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn the_daemon_task_follows_a_filter_loaded_again() {
    if !require_privileges("the_daemon_task_follows_a_filter_loaded_again") {
        return;
    }
    let lab = &Lab::new(policy(Mode::Enforce));
    with_reader_task(lab, |log| async move {
        assert_eq!(lab.run(&Frame::tcp4(STRANGER, API, 6443)), XDP_DROP);

        // The filter is removed and loaded again (as the daemon does when its pins are gone).
        operations::detach(&lab.layout, &operations::DetachTarget::All).expect("detach");
        let program = support::load(&lab.layout, policy(Mode::Enforce));
        let run = |source| support::test_run(&program, &Frame::tcp4(source, API, 6443), 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Keep sending until the task has switched to the new ring buffer.
            assert_eq!(run(OTHER), XDP_DROP);
            let seen = log
                .lock()
                .unwrap()
                .all()
                .iter()
                .any(|r| r.source == IpAddr::V4(OTHER));
            if seen {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the task never read the new ring buffer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let first = log.lock().unwrap().all();
        assert!(
            first.iter().any(|r| r.source == IpAddr::V4(STRANGER)),
            "{first:?}"
        );
    });
}
