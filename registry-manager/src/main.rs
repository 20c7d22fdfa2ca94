//! `registry-manager`: the registry manager daemon and the operator's command line.
//!
//! Thin: parses the command line and calls the library (`registry_manager::run`) or the
//! command modules under `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            // One line: the reason, with its causes joined.
            let mut line = err.to_string();
            for cause in err.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("registry-manager: {}", line.replace('\n', "; "));
            ExitCode::FAILURE
        }
    }
}
