//! End to end: the CLI talks to the real daemon over its socket; the daemon persists what it is
//! told and enforces it; with the config file as the owner of the list the CLI is refused; with
//! no daemon the CLI works on the pins directly.

mod daemon_support;

use std::{os::unix::fs::MetadataExt, os::unix::process::CommandExt, process::Command};

use apifence_tests::{apifence_bin, cmd::output_with_timeout, require_privileges};
use daemon_support::*;

#[test]
fn cli_changes_go_through_the_daemon_and_survive_a_restart() {
    if !require_privileges("cli_changes_go_through_the_daemon_and_survive_a_restart") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!(
        "ranges_from = \"state\"\nauthorized_ranges = [\"{GOOD4}\", \"{GOOD6}\"]"
    ));
    lab.start(&[]);

    // Only root can open the socket.
    let meta = std::fs::metadata(lab.socket()).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");
    let mut as_nobody = Command::new(apifence_bin().expect("binary"));
    as_nobody
        .arg("--socket")
        .arg(lab.socket())
        .arg("status")
        .uid(65534)
        .gid(65534);
    let out = output_with_timeout(&mut as_nobody, CLI_WAIT).expect("run as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody got in: {stderr}");
    assert!(
        stderr.contains("only root can talk to the apifence daemon"),
        "{stderr}"
    );

    // The CLI finds the daemon through APIFENCE_SOCKET as well as --socket.
    let mut by_env = Command::new(apifence_bin().expect("binary"));
    by_env
        .env("APIFENCE_SOCKET", lab.socket())
        .args(["status", "--json"]);
    let out = output_with_timeout(&mut by_env, CLI_WAIT).expect("run with APIFENCE_SOCKET");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second daemon on the same state refuses to start, naming the first.
    let mut second = lab.spawn(&[]);
    let status = apifence_tests::cmd::wait_with_timeout(&mut second, START_WAIT)
        .expect("wait")
        .expect("second daemon exits");
    assert!(!status.success());
    let logs = lab.logs();
    assert!(
        logs.contains("another apifence daemon is running"),
        "{logs}"
    );

    lab.assert_connects(v4(GOOD4), API_PORT, "authorized by the config seed");
    lab.assert_connects(v6(GOOD6), API_PORT, "authorized by the config seed");
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");
    lab.assert_connects(v4(BAD4), OTHER_PORT, "other ports are not protected");

    let out = lab.ok(&[
        "ranges",
        "add",
        &format!("{BAD4} {BAD6}"),
        "--note",
        "test vm",
    ]);
    assert!(out.contains("enforced"), "{out}");
    lab.assert_connects(v4(BAD4), API_PORT, "added through the daemon");
    lab.assert_connects(v6(BAD6), API_PORT, "added through the daemon");
    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["source"], "state");
    assert_eq!(
        shown["ranges"],
        serde_json::json!([
            format!("{GOOD4}/32"),
            format!("{GOOD6}/128"),
            format!("{BAD4}/32"),
            format!("{BAD6}/128")
        ])
    );
    assert_eq!(shown["entries"][2]["note"], "test vm");
    let state = std::fs::read_to_string(lab.state_dir().join("state.json")).expect("state file");
    assert!(state.contains(&format!("{BAD4}/32")), "{state}");

    // A dry run prints the diff and changes nothing.
    let out = lab.ok(&["ranges", "remove", &format!("{BAD4}/32"), "--dry-run"]);
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains(&format!("remove  {BAD4}/32")), "{out}");
    lab.assert_connects(v4(BAD4), API_PORT, "a dry run changes nothing");
    assert_eq!(lab.shown_ranges().len(), 4);

    lab.ok(&["ranges", "remove", &format!("{BAD4}/32,{BAD6}/128")]);
    lab.assert_dropped(v4(BAD4), API_PORT, "removed");
    lab.assert_dropped(v6(BAD6), API_PORT, "removed");

    // A bad entry is refused with the fix, and nothing changes.
    let err = lab.fails(&["ranges", "add", "198.18.1.9/24"]);
    assert!(err.contains("did you mean 198.18.1.0/24?"), "{err}");
    assert_eq!(lab.shown_ranges().len(), 2);

    lab.ok(&["mode", "monitor"]);
    lab.assert_connects(v4(BAD4), API_PORT, "monitor mode drops nothing");
    lab.ok(&["mode", "enforce"]);
    lab.assert_dropped(v4(BAD4), API_PORT, "enforcing again");
    lab.ok(&["mode", "monitor"]);

    // SIGTERM: the daemon exits cleanly and the filter keeps enforcing what it was told.
    assert!(lab.stop().success(), "{}", lab.logs());
    assert!(!lab.socket().exists(), "socket left behind");
    lab.assert_connects(
        v4(BAD4),
        API_PORT,
        "still in monitor mode without the daemon",
    );

    // Restart: the state file (not the config seed) decides, the mode too.
    lab.start(&[]);
    assert_eq!(
        lab.shown_ranges(),
        [format!("{GOOD4}/32"), format!("{GOOD6}/128")]
    );
    let status = lab.status();
    assert_eq!(status["mode"], "monitor", "{status}");
    lab.ok(&["mode", "enforce"]);
    lab.assert_dropped(v4(BAD4), API_PORT, "enforcing after the restart");
    lab.assert_connects(v4(GOOD4), API_PORT, "authorized after the restart");
}

#[test]
fn a_config_owned_list_refuses_cli_changes_and_the_cli_works_alone_without_daemon() {
    if !require_privileges(
        "a_config_owned_list_refuses_cli_changes_and_the_cli_works_alone_without_daemon",
    ) {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!(
        "ranges_from = \"config\"\nauthorized_ranges = [\"{GOOD4}\"]"
    ));
    lab.start(&[]);
    let err = lab.fails(&["ranges", "add", &BAD4.to_string()]);
    assert!(err.contains("owned by the config file"), "{err}");
    assert!(
        err.contains(&lab.config().display().to_string()),
        "the refusal names the file: {err}"
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "the refused change did nothing");

    // Nor can `attach` change the policy behind the daemon's back.
    let err = lab.fails(&["attach", "api0", "--monitor"]);
    assert!(err.contains("owns the policy"), "{err}");
    assert!(err.contains(&lab.config().display().to_string()), "{err}");
    lab.assert_dropped(v4(BAD4), API_PORT, "the refused attach did nothing");

    // The mode is not part of the list: it can be switched live.
    lab.ok(&["mode", "monitor"]);
    lab.assert_connects(v4(BAD4), API_PORT, "monitor");
    lab.ok(&["mode", "enforce"]);

    // `apifence detach` under a running daemon removes the filter, with a note; the daemon
    // attaches it again on its next change or reload.
    let out = lab.cli(&["detach", "--all"]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("attaches the filter again"), "{note}");
    lab.assert_connects(v4(BAD4), API_PORT, "detached");
    lab.ok(&["reload"]);
    lab.assert_dropped(v4(BAD4), API_PORT, "attached again by the reload");
    lab.assert_connects(v4(GOOD4), API_PORT, "attached again by the reload");

    // With no daemon answering, the CLI refuses to change pins the daemon owns (its change would
    // be replaced when the daemon starts) unless forced; then it changes them itself (and says
    // so in --help).
    assert!(lab.stop().success());
    let err = lab.fails(&["ranges", "add", &BAD4.to_string()]);
    assert!(err.contains("managed by the apifence daemon"), "{err}");
    assert!(err.contains("--force"), "{err}");
    lab.assert_dropped(v4(BAD4), API_PORT, "the refused direct change did nothing");
    let err = lab.fails(&["mode", "monitor"]);
    assert!(err.contains("managed by the apifence daemon"), "{err}");
    lab.ok(&["ranges", "add", &BAD4.to_string(), "--force"]);
    lab.assert_connects(v4(BAD4), API_PORT, "added directly");
    let help = String::from_utf8_lossy(&lab.cli(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("When no daemon answers on the socket"),
        "{help}"
    );

    // The daemon restarts from its config: the config owns the list, and it says it replaced
    // the direct change.
    lab.start(&[]);
    assert_eq!(lab.shown_ranges(), [format!("{GOOD4}/32")]);
    assert!(
        lab.logs().contains("enforcing the desired state"),
        "{}",
        lab.logs()
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "the config owns the list again");
}

/// Listens on `path` as uid `uid` (only the calling thread changes its effective uid, with the
/// raw syscall, so the rest of the test process stays root), answers one request with a
/// plausible status reply, and returns what it was sent.
fn impostor(path: std::path::PathBuf, uid: u32) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, Write};
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        // SAFETY: setresuid on this thread only (the raw syscall, not glibc's process-wide
        // wrapper); it keeps the real and saved uid root.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        // SO_PEERCRED reports the credentials of `listen`, which std's bind already called:
        // listen again as the impostor to record them.
        // SAFETY: a valid listening socket.
        let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 8) };
        assert_eq!(rc, 0);
        listener.set_nonblocking(false).expect("blocking");
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut line = String::new();
        let _ = std::io::BufReader::new(&stream).read_line(&mut line);
        let _ = (&stream).write_all(b"{\"version\":1,\"ok\":{\"type\":\"reload\",\"changed\":false,\"diff\":{},\"warnings\":[]}}\n");
        line
    })
}

#[test]
fn the_cli_refuses_a_socket_owned_by_another_user() {
    if !require_privileges("the_cli_refuses_a_socket_owned_by_another_user") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("apifence-impostor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("apifence.sock");
    let listener = impostor(socket.clone(), 65534);
    let mut cli = Command::new(apifence_bin().expect("binary"));
    cli.arg("--socket").arg(&socket).args(["reload"]);
    let out = output_with_timeout(&mut cli, CLI_WAIT).expect("run the CLI");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the CLI trusted the impostor: {stderr}"
    );
    assert!(
        stderr.contains("runs as uid 65534, neither root nor you: refusing to trust it"),
        "{stderr}"
    );
    // The CLI hung up before sending its request.
    assert_eq!(listener.join().expect("impostor thread"), "");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Sends `bytes` on a fresh connection to the daemon and returns its one-line answer.
fn raw_exchange(lab: &DaemonLab, bytes: &[u8]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(lab.socket()).expect("connect");
    stream.set_read_timeout(Some(CLI_WAIT)).expect("timeout");
    stream.set_write_timeout(Some(CLI_WAIT)).expect("timeout");
    // The daemon may answer and close before an oversized line is fully written.
    let _ = stream.write_all(bytes);
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .expect("an answer line");
    answer
}

#[test]
fn malformed_socket_lines_are_answered_with_an_error_and_the_daemon_keeps_serving() {
    if !require_privileges(
        "malformed_socket_lines_are_answered_with_an_error_and_the_daemon_keeps_serving",
    ) {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!("authorized_ranges = [\"{GOOD4}\"]"));
    lab.start(&[]);

    let answer = raw_exchange(&lab, b"\xff\xfe not text\n");
    assert!(answer.contains("not UTF-8"), "{answer}");
    let answer = raw_exchange(&lab, b"{\"version\":1,\"op\":\"explode\"}\n");
    assert!(answer.contains("not a request"), "{answer}");
    let mut huge = vec![b'a'; 64 * 1024 * 1024 + 16];
    huge.push(b'\n');
    let answer = raw_exchange(&lab, &huge);
    assert!(answer.contains("request longer than"), "{answer}");

    // Still serving.
    let status = lab.ok(&["status", "--json"]);
    assert!(status.contains("\"pid\""), "{status}");
}
