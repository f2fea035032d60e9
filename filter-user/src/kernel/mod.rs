//! The kernel layer: everything that touches the XDP program and its pinned objects.
//! [`program`] is the embedded object, [`paths`] names every file, [`bpffs`] mounts and locks
//! the pin directory, [`maps`] reads and writes the pinned maps, [`attach`] loads the program
//! and links it to interfaces, [`grace_period`] waits until no packet still reads an old slot,
//! [`netns`] enters a named network namespace, [`names`] checks interface and namespace names,
//! [`interfaces`] lists the namespace's interfaces for the bypass report, [`framing`] picks the
//! program instance (Ethernet or IP-first) an interface's link type needs, [`trace`] swaps the
//! verdict-trace program in and out and reads its records,
//! and [`operations`] is the filter as a whole, which the CLI and the daemon drive.
pub mod attach;
pub mod bpffs;
pub mod framing;
pub mod grace_period;
pub mod interfaces;
pub mod mapped;
pub mod maps;
pub mod names;
pub mod netns;
pub mod operations;
pub mod paths;
pub mod program;
pub mod table_maps;
pub mod trace;
