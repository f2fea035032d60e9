//! The policy layer: what is authorized, as pure data and pure functions (no kernel, no I/O).
//! [`language`] reads the range language, [`merge`] reduces a list to the fewest prefixes,
//! [`authorized`] holds a parsed list with its merged prefixes (parsed and merged once),
//! [`record_format`] is the compact binary form of the record pinned next to each slot,
//! [`compile`] turns a [`Policy`] into one slot's contents, [`lookup_table`] compiles a slot's
//! prefixes into the XDP program's lookup table, [`verdict`] answers "would this source pass?"
//! in userspace, [`bypass`] decides which interfaces traffic could arrive on unfiltered,
//! [`suggest`] finds the name a typo meant, [`echo`] shows input back without
//! its control characters.
pub mod authorized;
pub mod bypass;
pub mod compile;
pub mod echo;
pub mod language;
pub mod lookup_table;
pub mod merge;
mod model;
pub mod record_format;
pub mod suggest;
pub mod timestamp;
pub mod verdict;

pub use authorized::AuthorizedRanges;
pub use model::*;
