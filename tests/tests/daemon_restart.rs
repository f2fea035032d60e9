//! End to end: the real daemon killed with `kill -9` and restarted, and restarted with a new
//! program, while a client streams to the API port from an authorized address: the filter keeps
//! enforcing throughout, the restart adopts program, maps and links, the program is replaced on
//! the live link, and not one packet of the stream is dropped.

mod daemon_support;

use std::{net::SocketAddr, thread, time::Duration};

use apifence_tests::{StreamOptions, require_privileges, stream_chunks};
use daemon_support::*;

/// A stream of about ten seconds, long enough to span a restart.
fn long_stream() -> StreamOptions {
    StreamOptions {
        chunks: 4000,
        chunk_size: 512,
        interval: Duration::from_millis(2),
        time_limit: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(10),
        ..StreamOptions::default()
    }
}

fn program_and_link(lab: &DaemonLab) -> (u64, u64, u64) {
    let status = lab.status();
    let program = status["program_id"].as_u64().expect("program id");
    let link = &status["links"]["api0"];
    (
        program,
        link["link_id"].as_u64().expect("link id"),
        link["program_id"].as_u64().expect("link program id"),
    )
}

/// Streams from the authorized address while `during` runs; returns after both are done,
/// failing unless every chunk arrived.
fn stream_while(lab: &DaemonLab, during: impl FnOnce()) {
    let options = long_stream();
    let report = thread::scope(|scope| {
        let streaming = scope.spawn(|| {
            stream_chunks(
                &lab.client,
                v4(GOOD4),
                SocketAddr::new(v4(API4), API_PORT),
                lab.api_server(),
                &options,
            )
        });
        during();
        assert!(
            !streaming.is_finished(),
            "the stream ended before the restart was done; make it longer"
        );
        streaming.join().expect("stream thread")
    })
    .expect("the stream connects");
    assert!(report.complete(&options), "{report:?}\n{}", lab.logs());
}

#[test]
fn kill_9_and_restart_under_a_stream_drops_nothing() {
    if !require_privileges("kill_9_and_restart_under_a_stream_drops_nothing") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!("authorized_ranges = [\"{GOOD4}\", \"{GOOD6}\"]"));
    lab.start(&[]);
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");
    let before = program_and_link(&lab);
    let dropped = lab.dropped();

    stream_while(&lab, || {
        thread::sleep(Duration::from_millis(700));
        lab.kill9();
        // No daemon now, and the filter enforces on its own.
        assert!(!lab.cli(&["status"]).status.success());
        thread::sleep(Duration::from_millis(500));
        lab.start(&[]);
    });
    assert_eq!(
        lab.dropped(),
        dropped,
        "packets were dropped during the restart"
    );
    assert_eq!(
        program_and_link(&lab),
        before,
        "the restart adopted program and link"
    );
    let logs = lab.logs();
    assert!(logs.contains("adopting the pinned program"), "{logs}");
    assert!(
        logs.contains("the enforced policy already matches"),
        "{logs}"
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "still enforcing after the restart");

    // SIGTERM: the daemon exits, the filter stays (fail-static) until `apifence detach`.
    assert!(lab.stop().success(), "{}", lab.logs());
    lab.assert_dropped(v4(BAD4), API_PORT, "enforcing without the daemon");
    lab.assert_connects(v4(GOOD4), API_PORT, "enforcing without the daemon");
    lab.ok(&["detach", "--all"]);
    lab.assert_connects(v4(BAD4), API_PORT, "detached");
}

#[test]
fn a_new_program_replaces_the_old_one_on_the_live_link() {
    if !require_privileges("a_new_program_replaces_the_old_one_on_the_live_link") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!("authorized_ranges = [\"{GOOD4}\"]"));
    lab.start(&[]);
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");
    let (old_program, old_link, _) = program_and_link(&lab);
    let dropped = lab.dropped();

    stream_while(&lab, || {
        thread::sleep(Duration::from_millis(700));
        assert!(lab.stop().success(), "{}", lab.logs());
        lab.start(&["--replace-program"]);
    });
    let (program, link, link_program) = program_and_link(&lab);
    assert_ne!(program, old_program, "a new program is pinned");
    assert_eq!(link, old_link, "the same link: never detached");
    assert_eq!(link_program, program, "the link runs the new program");
    assert_eq!(
        lab.dropped(),
        dropped,
        "packets were dropped during the swap"
    );
    assert!(
        lab.logs()
            .contains("replaced the program on the existing links"),
        "{}",
        lab.logs()
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "the new program enforces");
    lab.assert_connects(v4(GOOD4), API_PORT, "the new program authorizes");
}
