//! The lockout guard against real sockets: connections established inside a namespace the test
//! creates are found through `/proc/thread-self/net/tcp{,6}` read inside that namespace, and a
//! policy that drops their sources is refused, naming them.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use apifence::{
    features::lockout::{self, GuardOptions, LockoutError},
    policy::verdict::VerdictModel,
    policy::{Mode, Policy},
};
use apifence_tests::{ApiAndClient, Endpoint, connect_stream, require_privileges};

const API_PORT: u16 = 6443;
const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x251, 0, 0, 0, 0, 0, 2);

#[test]
fn guard_finds_real_connections_inside_a_namespace() {
    if !require_privileges("guard_finds_real_connections_inside_a_namespace") {
        return;
    }
    // The server listens on `::`, which accepts IPv4 too: those connections show up in tcp6
    // as ::ffff:a.b.c.d.
    let ApiAndClient {
        api: server_ns,
        client: client_ns,
        servers,
    } = ApiAndClient::new(
        Endpoint::new("api0", SERVER4, SERVER6),
        Endpoint::new("cli0", CLIENT4, CLIENT6),
        &[],
        &[API_PORT],
    )
    .expect("server and client namespaces");
    let server = &servers[0];
    let timeout = Duration::from_secs(3);
    let v4 = connect_stream(
        &client_ns,
        CLIENT4.into(),
        SocketAddr::new(SERVER4.into(), API_PORT),
        timeout,
    )
    .expect("IPv4 connection");
    let v6 = connect_stream(
        &client_ns,
        CLIENT6.into(),
        SocketAddr::new(SERVER6.into(), API_PORT),
        timeout,
    )
    .expect("IPv6 connection");
    assert!(
        server.wait_for_connections(2, timeout),
        "server saw both connections"
    );
    let client4 = SocketAddr::new(CLIENT4.into(), v4.local_addr().expect("v4 local").port());
    let client6 = SocketAddr::new(CLIENT6.into(), v6.local_addr().expect("v6 local").port());

    let found = server_ns
        .run(|| lockout::established(&[443, API_PORT]))
        .expect("run in the server namespace")
        .expect("read the connection tables");
    let remotes: Vec<SocketAddr> = found.iter().map(|c| c.remote).collect();
    assert!(remotes.contains(&client4), "{client4} not in {remotes:?}");
    assert!(remotes.contains(&client6), "{client6} not in {remotes:?}");
    for c in &found {
        assert_eq!(c.local.port(), API_PORT, "{c}");
    }
    // The client side of the same connections has a non-protected local port.
    let client_side = client_ns
        .run(|| lockout::established(&[API_PORT]))
        .expect("run in the client namespace")
        .expect("read");
    assert!(client_side.is_empty(), "{client_side:?}");
    // This thread's namespace does not see them.
    let here = lockout::established(&[API_PORT]).expect("read here");
    assert!(
        here.iter()
            .all(|c| c.remote != client4 && c.remote != client6),
        "the test's own namespace sees the lab's connections: {here:?}"
    );

    // A list with only the IPv6 client would cut the IPv4 connection, and name it.
    let policy = |ranges: &str| Policy {
        ranges: ranges.parse().expect("test list"),
        mode: Mode::Enforce,
        ..Policy::default()
    };
    let open = VerdictModel::from_policy(&policy(""));
    let only6 = VerdictModel::from_policy(&policy("fd00:251::/64"));
    let refused = server_ns
        .run(|| lockout::check(&open, &only6, &[443, API_PORT], GuardOptions::default()))
        .expect("run");
    match refused {
        Err(LockoutError::WouldCut(cut)) => {
            let remotes: Vec<SocketAddr> = cut.iter().map(|c| c.remote).collect();
            assert_eq!(remotes, [client4]);
            let message = LockoutError::WouldCut(cut).to_string();
            assert!(message.contains(&format!("{client4} -> ")), "{message}");
            assert!(
                message.contains("apifence ranges add 10.251.0.2"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let both = VerdictModel::from_policy(&policy("10.251.0.0/24 fd00:251::/64"));
    server_ns
        .run(|| lockout::check(&open, &both, &[443, API_PORT], GuardOptions::default()))
        .expect("run")
        .expect("nothing to cut when both are authorized");
    drop((v4, v6));
}
