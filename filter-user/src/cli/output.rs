//! Where the command line writes, without panicking: `println!` panics when stdout is a closed
//! pipe (`apifence stats --json | head`) or a full device (`> /dev/full`). [`outln!`] and
//! [`out!`] return an [`OutputError`] through `?` instead; `main` ends quietly on a closed pipe
//! and otherwise says what failed, with exit code [`EXIT_APPLIED_UNREPORTED`] when a change had
//! already been applied, so the exit code always says whether something changed.

use std::{
    fmt,
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

/// Exit code when a change was applied but its report could not be written.
pub const EXIT_APPLIED_UNREPORTED: u8 = 3;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct OutputError(#[source] pub io::Error);

impl OutputError {
    /// Whether the reader went away (a closed pipe): not worth a message.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

/// Set once this process has changed the filter or the daemon's state.
static APPLIED: AtomicBool = AtomicBool::new(false);

/// Records that a change was applied; from now on a failed write exits with
/// [`EXIT_APPLIED_UNREPORTED`].
pub fn mark_applied() {
    APPLIED.store(true, Ordering::SeqCst);
}

/// Whether [`mark_applied`] was called.
pub fn applied() -> bool {
    APPLIED.load(Ordering::SeqCst)
}

/// Writes `args` to stdout.
pub fn write(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(OutputError)
}

/// Writes `args` and a newline to stderr; a failure there has nowhere left to be reported.
pub fn note(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// `println!` that returns an [`OutputError`] through `?` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` that returns an [`OutputError`] through `?` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))?
    };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::note(format_args!($($arg)*))
    };
}
