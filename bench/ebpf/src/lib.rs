//! Empty: this crate is a binary for the BPF target; the library target only lets apifence-bench depend on it so that edits trigger rebuilds.
#![no_std]
