//! apifence: keeps the Kubernetes API server reachable only from authorized source ranges,
//! enforced by an XDP program.
//!
//! Layers, bottom up: [`program`] (the embedded object), [`paths`] and [`bpffs`] (where pins
//! live, one writer at a time), [`maps`] (aya access to the pinned maps), [`attach`] (program
//! and links), [`ranges`] and [`compile`] (the range language and its compilation, pure),
//! [`policy`] (desired state), [`filter`] (operations), [`cli`] (the command line).
pub mod attach;
pub mod bpffs;
pub mod cli;
pub mod compile;
pub mod filter;
pub mod maps;
pub mod netns;
pub mod paths;
pub mod policy;
pub mod program;
pub mod ranges;
pub mod rcu;
