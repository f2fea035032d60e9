//! The `apifence` binary: parse the command line, run it, print the whole error chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = apifence::cli::Cli::parse();
    match apifence::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Control characters from echoed input never reach the terminal as they are.
            let message = apifence::policy::echo::escape_keeping_lines(&format!("{error:#}"));
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
