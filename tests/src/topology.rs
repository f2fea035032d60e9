//! The network most end-to-end tests use: an API server namespace and a client namespace
//! joined by a veth pair, extra client addresses, and TCP servers in the API server namespace.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::{
    link::{Endpoint, VethPair, add_address},
    netns::Netns,
    tcp::TcpServer,
};

/// An API server namespace and a client namespace joined by a veth pair, with TCP servers
/// listening in the API server namespace. Dropping it stops the servers and deletes the
/// namespaces (and with them the pair).
pub struct ApiAndClient {
    /// The API server's namespace, holding `api`'s end of the pair.
    pub api: Netns,
    /// The client's namespace.
    pub client: Netns,
    /// One server per port asked for, in that order, accepting on every address.
    pub servers: Vec<TcpServer>,
}

impl ApiAndClient {
    /// Creates both namespaces and the pair `api` ~ `client`, adds `extra_client` addresses
    /// (with their prefix lengths) to the client's end, and starts a TCP server on each of
    /// `ports` in the API server namespace, on every address of both families.
    pub fn new(
        api: Endpoint,
        client: Endpoint,
        extra_client: &[(IpAddr, u8)],
        ports: &[u16],
    ) -> Result<ApiAndClient> {
        let api_ns = Netns::new().context("api namespace")?;
        let client_ns = Netns::new().context("client namespace")?;
        let client_if = client.ifname.clone();
        VethPair::create(&api_ns, api, &client_ns, client).context("veth pair")?;
        for &(ip, prefix) in extra_client {
            add_address(&client_ns, &client_if, ip, prefix)
                .with_context(|| format!("client address {ip}/{prefix}"))?;
        }
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let servers = ports
            .iter()
            .map(|&port| {
                TcpServer::start(&api_ns, any, port).with_context(|| format!("server on {port}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ApiAndClient {
            api: api_ns,
            client: client_ns,
            servers,
        })
    }
}
