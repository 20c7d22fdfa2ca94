//! `registry-agent`: thin binary over the library's command line.

fn main() -> std::process::ExitCode {
    registry_agent::cli::main()
}
