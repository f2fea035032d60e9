//! The `apifence` binary: parse the command line, run it, print the whole error chain.
//!
//! Exit codes: 0 done; 1 failed, nothing changed; 2 bad usage (clap); 3 a change was applied
//! but its report could not be written (`cli::output`). A closed stdout pipe ends quietly.

use std::process::ExitCode;

use apifence::{
    cli::{Cli, output},
    errln,
    policy::echo::escape_keeping_lines,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Err(error) = apifence::cli::run(cli) else {
        return ExitCode::SUCCESS;
    };
    let output_error = error.downcast_ref::<output::OutputError>();
    if output_error.is_some_and(output::OutputError::is_closed_pipe) {
        return ExitCode::SUCCESS;
    }
    // Control characters from echoed input never reach the terminal as they are.
    let message = escape_keeping_lines(&format!("{error:#}"));
    if output_error.is_some() && output::applied() {
        errln!("error: the change was applied, but its report could not be written: {message}");
        return ExitCode::from(output::EXIT_APPLIED_UNREPORTED);
    }
    errln!("error: {message}");
    ExitCode::FAILURE
}
