//! apifence: keeps the Kubernetes API server reachable only from authorized source ranges,
//! enforced by an XDP program.
pub mod program;
