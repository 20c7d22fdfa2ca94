//! The command line's outer layer: parsing, exit codes, how errors are printed, shell
//! completions and man pages.
//!
//! - 0: done; [`EXIT_FAILURE`] (1): the command could not do its work; [`EXIT_USAGE`] (2): a bad
//!   command line (clap's); [`super::EXIT_NO_MANAGER`] (3): `route explain` answered, no manager is eligible.
//! - An error is one line on stderr, `registry-manager: reason: cause`, or with `--json` one
//!   JSON object, `{"error": "reason: cause"}` (plus `"errors"`, the located errors of an invalid
//!   file). A bad command line that has `--json` in it is reported the same way.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use serde_json::json;

use super::{dispatch, Cli, EXIT_FAILURE};
use cli_kit::write_man_pages;
use cli_kit::{json_requested, usage_error};

const BIN: &str = "registry-manager";

/// A file with located errors (`FILE:LINE:COL: message`, every one of them), and what was not
/// done because of them.
#[derive(Debug)]
pub struct InvalidFile {
    /// One line: `FILE has N error(s); nothing was applied`.
    pub summary: String,
    /// Every error of the file.
    pub errors: Vec<topology::LocatedError>,
}

impl std::fmt::Display for InvalidFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for InvalidFile {}

/// Parses the command line, runs the command and turns its outcome into the exit code.
pub fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let json = json_requested(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e.format(&mut Cli::command())),
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprint!("{}", error_report(&err, json));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// What is printed on stderr for a failed command: one line (after the located errors of an
/// invalid file), or one JSON object.
pub fn error_report(err: &anyhow::Error, json: bool) -> String {
    // One line: the reason, with its causes joined; a cause the line already quotes (an
    // error whose message includes its source) is not repeated.
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    let line = line.replace('\n', "; ");
    let invalid = err.downcast_ref::<InvalidFile>();
    if json {
        let mut v = json!({ "error": line });
        if let Some(f) = invalid {
            v["errors"] = f
                .errors
                .iter()
                .map(|e| {
                    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message })
                })
                .collect();
        }
        return format!("{v}\n");
    }
    let mut out = String::new();
    if let Some(f) = invalid {
        for e in &f.errors {
            out.push_str(&format!("{e}\n"));
        }
    }
    out.push_str(&format!("{BIN}: {line}\n"));
    out
}

/// `completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `man [--dir DIR]`: the top page on stdout, or every page written into DIR (their paths
/// printed, one a line).
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
        }
        Some(dir) => {
            for path in write_man_pages(Cli::command(), dir).map_err(anyhow::Error::msg)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cli_kit::{undocumented, usage_message, EXIT_USAGE};

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("registry data in /d: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let inner = std::io::Error::other("cannot create the data directory");
        let err = anyhow::Error::new(Outer { source: inner }).context("serve");
        assert_eq!(
            error_report(&err, false).trim_end(),
            "registry-manager: serve: registry data in /d: cannot create the data directory"
        );
    }

    #[test]
    fn every_argument_and_subcommand_of_the_command_line_has_help() {
        let missing = undocumented(&mut Cli::command());
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn bash_completions_know_the_subcommands() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            BIN,
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("registry-manager"), "{script}");
        for sub in ["topology", "explain", "coverage", "failover", "completions"] {
            assert!(script.contains(sub), "{sub} missing");
        }
    }

    #[test]
    fn the_man_page_names_the_binary_and_its_subcommands() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains("registry\\-manager"), "{page}");
        assert!(page.contains("topology"), "{page}");
        assert!(page.contains("route"), "{page}");
    }

    #[test]
    fn man_dir_writes_one_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(Cli::command(), dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "registry-manager.1",
            "registry-manager-topology.1",
            "registry-manager-topology-check.1",
            "registry-manager-route-explain.1",
            "registry-manager-ha-failover.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let check =
            std::fs::read_to_string(dir.path().join("registry-manager-topology-check.1")).unwrap();
        assert!(check.contains("FILE"), "{check}");
    }

    #[test]
    fn usage_errors_read_as_one_line_with_the_usage() {
        let err = Cli::command()
            .try_get_matches_from(["registry-manager", "topology", "check", "--bogus"])
            .unwrap_err();
        let msg = usage_message(&err.to_string());
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.starts_with("unexpected argument '--bogus'"), "{msg}");
        assert!(
            msg.contains("usage: registry-manager topology check"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn json_is_found_in_the_running_subcommand() {
        let m = Cli::command()
            .try_get_matches_from(["registry-manager", "registry", "hosts", "--json"])
            .unwrap();
        assert!(json_requested(&m));
        let m = Cli::command()
            .try_get_matches_from(["registry-manager", "topology", "schema"])
            .unwrap();
        assert!(!json_requested(&m));
    }

    #[test]
    fn errors_are_one_line_or_one_json_object() {
        let err = anyhow::anyhow!("cannot reach").context("route explain");
        assert_eq!(
            error_report(&err, false),
            "registry-manager: route explain: cannot reach\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(error_report(&err, true).trim_end()).unwrap();
        assert_eq!(v, json!({ "error": "route explain: cannot reach" }));

        let errors = topology::Topology::from_yaml("t.yaml", "version: 1\nbogus: 1\n")
            .unwrap_err()
            .0;
        let err = anyhow::Error::new(InvalidFile {
            summary: "t.yaml has 1 error(s); nothing was applied".into(),
            errors,
        });
        let text = error_report(&err, false);
        assert!(text.starts_with("t.yaml:"), "{text}");
        assert!(text.ends_with("registry-manager: t.yaml has 1 error(s); nothing was applied\n"));
        let v: serde_json::Value =
            serde_json::from_str(error_report(&err, true).trim_end()).unwrap();
        assert_eq!(v["error"], "t.yaml has 1 error(s); nothing was applied");
        assert_eq!(v["errors"][0]["file"], "t.yaml");
    }
}
