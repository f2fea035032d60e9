//! The lab itself, end to end: namespaces, a veth pair, a server, source-bound connects, a
//! stream, and cleanup on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use apifence_tests::link::add_address;
use apifence_tests::{
    ConnectError, Endpoint, Netns, StreamOptions, TcpServer, VethPair, cmd, connect,
    require_privileges, stream_chunks,
};

const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT4_EXTRA: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 2);

fn netns_list() -> String {
    cmd::ip(&["netns", "list"]).unwrap()
}

#[test]
fn lab_connects_counts_and_cleans_up() {
    if !require_privileges("lab_connects_counts_and_cleans_up") {
        return;
    }
    let (server_name, client_name, mut sleeper);
    {
        let server_ns = Netns::new().unwrap();
        let client_ns = Netns::new().unwrap();
        server_name = server_ns.name().to_owned();
        client_name = client_ns.name().to_owned();
        let listed = netns_list();
        assert!(listed.contains(&server_name) && listed.contains(&client_name));

        let pair = VethPair::create(
            &server_ns,
            Endpoint::new("api0", SERVER4, SERVER6),
            &client_ns,
            Endpoint::new("cli0", CLIENT4, CLIENT6),
        )
        .unwrap();
        add_address(&client_ns, &pair.b.ifname, CLIENT4_EXTRA.into(), 24).unwrap();

        let server = TcpServer::start(&server_ns, IpAddr::V6(Ipv6Addr::UNSPECIFIED), 6443).unwrap();
        let timeout = Duration::from_secs(1);
        let dst4 = SocketAddr::new(SERVER4.into(), 6443);
        connect(&client_ns, CLIENT4.into(), dst4, timeout).unwrap();
        connect(&client_ns, CLIENT4_EXTRA.into(), dst4, timeout).unwrap();
        connect(
            &client_ns,
            CLIENT6.into(),
            SocketAddr::new(SERVER6.into(), 6443),
            timeout,
        )
        .unwrap();
        assert!(server.wait_for_connections(3, Duration::from_secs(5)));
        let peers: Vec<IpAddr> = server.peers().iter().map(SocketAddr::ip).collect();
        assert_eq!(
            peers,
            [IpAddr::from(CLIENT4), CLIENT4_EXTRA.into(), CLIENT6.into()]
        );

        // Nothing listens on 8080: a reset, not a timeout.
        let refused = connect(
            &client_ns,
            CLIENT4.into(),
            SocketAddr::new(SERVER4.into(), 8080),
            timeout,
        );
        assert!(matches!(refused, Err(ConnectError::Refused)), "{refused:?}");

        // An address nobody answers for: a timeout (ARP goes unanswered), bounded.
        let start = std::time::Instant::now();
        let lost = connect(
            &client_ns,
            CLIENT4.into(),
            SocketAddr::new(Ipv4Addr::new(198, 18, 0, 99).into(), 6443),
            Duration::from_millis(300),
        );
        assert!(matches!(lost, Err(ConnectError::TimedOut)), "{lost:?}");
        assert!(start.elapsed() < Duration::from_secs(2));

        let opts = StreamOptions {
            chunks: 200,
            chunk_size: 512,
            interval: Duration::ZERO,
            ..StreamOptions::default()
        };
        let report = stream_chunks(&client_ns, CLIENT4.into(), dst4, &server, &opts).unwrap();
        assert!(report.complete(&opts), "{report:?}");
        assert_eq!(server.bytes_received(), 200 * 512);

        // Code run inside the namespace sees its interfaces.
        let ifaces = client_ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
            .unwrap();
        assert!(ifaces.contains("cli0"), "{ifaces}");
        // A process spawned inside is killed when the namespace goes.
        sleeper = client_ns.spawn("sleep", &["30"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while client_ns.pids().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!client_ns.pids().is_empty());
    }
    let status = cmd::wait_with_timeout(&mut sleeper, Duration::from_secs(5)).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let listed = netns_list();
    assert!(!listed.contains(&server_name), "{listed}");
    assert!(!listed.contains(&client_name), "{listed}");
}

#[test]
fn exec_runs_inside_the_namespace() {
    if !require_privileges("exec_runs_inside_the_namespace") {
        return;
    }
    let ns = Netns::new().unwrap();
    let out = ns.exec_ok("ip", &["-o", "link", "show"]).unwrap();
    assert!(out.contains("lo:"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let failed = ns.exec("false", &[]).unwrap();
    assert!(!failed.status.success());
}
