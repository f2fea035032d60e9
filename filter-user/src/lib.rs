//! apifence: keeps the Kubernetes API server reachable only from authorized source ranges,
//! enforced by an XDP program.
//!
//! Layers, bottom up: [`program`] (the embedded object), [`paths`] and [`bpffs`] (where pins
//! live, one writer at a time), [`maps`] (aya access to the pinned maps), [`attach`] (program
//! and links), [`ranges`] and [`compile`] (the range language and its compilation, pure),
//! [`policy`] (desired state), [`filter`] (operations), [`daemon`] (the long-running owner of
//! the desired state), [`cli`] (the command line). The daemon's features, one job each:
//! [`service_tags`], [`expiry`], [`deny_log`], [`metrics`], [`lockout`] (with [`gate`], a policy's
//! verdict per source, and [`diff`], a change's impact), plugged in by [`daemon_features`].
pub mod attach;
pub mod bpffs;
pub mod cli;
pub mod compile;
pub mod daemon;
pub mod daemon_features;
pub mod deny_log;
pub mod diff;
pub mod expiry;
pub mod filter;
pub mod gate;
pub mod lockout;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod paths;
pub mod policy;
pub mod program;
pub mod ranges;
pub mod rcu;
pub mod remote;
pub mod service_tags;
pub mod suggest;
