//! The authorized-range language and its compilation to a minimal prefix set.
pub mod language;
pub mod merge;
