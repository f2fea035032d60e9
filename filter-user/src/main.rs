//! The `apifence` binary: parse the command line, run it, print the whole error chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = apifence::cli::Cli::parse();
    match apifence::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
