//! `registry-manager`: the registry manager daemon and the operator's command line.
//!
//! Thin: the command line (`cli/`) parses, runs the library (`registry_manager::run`) or an
//! operator command, and turns the outcome into the exit code: 0 done, 1 failed (one line on
//! stderr, or one JSON object with `--json`), 2 bad command line, 3 `route explain` found no
//! eligible manager.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
