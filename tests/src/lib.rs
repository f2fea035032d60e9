//! Shared test lab for apifence: everything an end-to-end test or the demo needs to build a small
//! network out of namespaces and probe it, plus pure frame builders for `BPF_PROG_TEST_RUN`.
//!
//! One job per module:
//! - [`privileges`]: skip or fail tests that need root;
//! - [`cmd`]: run external commands with a time bound;
//! - [`netns`]: network namespaces (RAII) and running Rust code inside one;
//! - [`link`]: veth pairs, addresses and routes;
//! - [`bpffs`]: a private bpffs mount (RAII) for the CLI's pins;
//! - [`tcp`]: a counting TCP server and a source-bound TCP connect probe;
//! - [`stream`]: a numbered-chunk streaming client (loss checks across policy changes);
//! - [`topology`]: an API server namespace and a client namespace, joined, with servers;
//! - [`etcd`]: a real etcd cluster in its own namespace (members killed and restarted at will);
//! - [`tun`]: tun devices (L3, no Ethernet header) and two of them joined by a packet relay;
//! - [`wait`]: bounded polling;
//! - [`frame`]: Ethernet/VLAN/IPv4/IPv6/TCP/UDP frame builders;
//! - [`oracle`]: frames written with `etherparse` and a naive model of the README's rules, the
//!   independent side of the differential test and fuzz target.
//!
//! Privileged tests start with `if !require_privileges("name") { return; }`.
#![warn(missing_docs)]

pub mod bpffs;
pub mod cmd;
pub mod etcd;
pub mod frame;
pub mod link;
pub mod netns;
pub mod oracle;
pub mod privileges;
pub mod stream;
pub mod tcp;
pub mod topology;
pub mod tun;
pub mod wait;

pub use bpffs::Bpffs;
pub use frame::{ExtHeader, Frame};
pub use link::{Endpoint, VethPair};
pub use netns::{Netns, delete_netns};
pub use privileges::{REQUIRE_ENV, apifence_bin, require_file, require_privileges};
pub use stream::{StreamOptions, StreamReport, stream_chunks};
pub use tcp::{ConnectError, TcpServer, connect, connect_stream};
pub use topology::ApiAndClient;
pub use tun::{TunDevice, TunWire};
