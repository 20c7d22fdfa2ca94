//! What `registry-manager` and `registry-agent` share on the command line, so both speak one
//! language: exit codes, a bad command line reported as clap prints it or as one JSON object
//! under `--json`, man pages from the clap definitions, and the check that every argument and
//! subcommand has help text.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ArgMatches;

/// The command could not do its work.
pub const EXIT_FAILURE: u8 = 1;
/// A bad command line (clap's own code for usage errors).
pub const EXIT_USAGE: u8 = 2;

/// Whether `--json` was given to the command that runs (at any depth of subcommands).
pub fn json_requested(m: &ArgMatches) -> bool {
    let here = m
        .try_get_one::<bool>("json")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    here || m.subcommand().is_some_and(|(_, sub)| json_requested(sub))
}

/// A bad command line (exit 2), or `--help` / `--version` (exit 0), as clap prints it; as one
/// JSON object on stderr when the command line asks for `--json`.
pub fn usage_error(e: clap::Error) -> ExitCode {
    let code = u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if e.use_stderr() && json {
        eprintln!(
            "{}",
            serde_json::json!({ "error": usage_message(&e.to_string()) })
        );
    } else {
        let _ = e.print();
    }
    ExitCode::from(code)
}

/// clap's error text in one line: its first paragraph without `error: `, and the usage.
pub fn usage_message(text: &str) -> String {
    let first = text.split("\n\n").next().unwrap_or_default();
    let mut msg = first
        .trim()
        .trim_start_matches("error: ")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(usage) = text.lines().find_map(|l| l.trim().strip_prefix("Usage: ")) {
        msg.push_str("; usage: ");
        msg.push_str(usage.trim());
    }
    msg
}

/// Writes one man page per command and subcommand (`NAME-SUB.1`) into `dir`, creating it.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        out.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, dir, &mut pages)
        .map_err(|e| format!("cannot write a man page into {}: {e}", dir.display()))?;
    Ok(pages)
}

/// Every argument and subcommand of `cmd`'s tree that has no help text, as `command path: id`.
pub fn undocumented(cmd: &mut clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path}: argument {}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(format!("{sub_path}: no description"));
            }
            walk(sub, &sub_path, out);
        }
    }
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, cmd.get_name(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_one_line_with_the_usage() {
        let text = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: x check <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_message(text),
            "unexpected argument '--bogus' found; usage: x check <FILE>"
        );
    }

    #[test]
    fn the_help_check_finds_what_lacks_help_however_deep() {
        let mut bare = clap::Command::new("x")
            .about("x")
            .disable_help_subcommand(true)
            .subcommand(clap::Command::new("y").arg(clap::Arg::new("z")));
        assert_eq!(
            undocumented(&mut bare),
            ["x y: no description", "x y: argument z"]
        );
    }

    #[test]
    fn json_is_found_on_the_subcommand_that_runs() {
        let cmd = clap::Command::new("x").subcommand(
            clap::Command::new("y").arg(
                clap::Arg::new("json")
                    .long("json")
                    .action(clap::ArgAction::SetTrue),
            ),
        );
        let m = cmd
            .clone()
            .try_get_matches_from(["x", "y", "--json"])
            .unwrap();
        assert!(json_requested(&m));
        let m = cmd.try_get_matches_from(["x", "y"]).unwrap();
        assert!(!json_requested(&m));
    }
}
