//! apifence: keeps the Kubernetes API server reachable only from authorized source ranges,
//! enforced by an XDP program.
//!
//! Layers, bottom up; each imports only from the layers below it:
//! - [`policy`]: pure, no kernel access: the range language, merging, compilation into slot
//!   contents, the userspace model of the XDP verdict, "did you mean" suggestions.
//! - [`kernel`]: the embedded program, pins and bpffs, maps, links, the grace period after a
//!   flip, and the filter operations (attach, apply, detach, stats) built from them.
//! - [`daemon`]: the core of `apifence daemon`: config, desired state, the engine that owns it,
//!   the state file, the socket and its protocol, reload, telemetry, and the [`daemon::hooks`]
//!   trait through which features plug in.
//! - [`features`]: service tags, expiry, the deny log, metrics, the lockout guard and a
//!   change's impact, and [`features::standard`], their implementation of the hooks.
//! - [`cli`]: the command line, one module per command.
pub mod cli;
pub mod daemon;
pub mod features;
pub mod kernel;
pub mod policy;
