//! The `registry-agent` command line: `run --config FILE`, `resolve TYPE`, `routes`,
//! `watch [TYPE]`, `completions SHELL`, `man [--dir DIR]`.
//!
//! The same language as `registry-manager`'s:
//! - exit 0: done; [`EXIT_FAILURE`] (1): the command could not do its work (an invalid
//!   configuration file, an agent that cannot be reached or refused, a type no host runs);
//!   [`EXIT_USAGE`] (2): a bad command line (clap's); [`EXIT_NO_MANAGER`] (3): `resolve`
//!   answered, no manager is eligible (the answer is printed).
//! - an error is one line on stderr, `registry-agent: reason`, or with `--json` one JSON
//!   object, `{"error": "reason"}`; a bad command line with `--json` in it too.
//! - addresses are `HOST:PORT` or `http://HOST:PORT`.
//! - an explanation is printed in the one form of [`topology::Explained`] (the JSON of
//!   `registry-manager route explain` plus `revision` and `stale`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use proto::v1 as pb;
use proto::v1::agent_client::AgentClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use topology::Explained;

use crate::config::{AgentConfig, DEFAULT_LISTEN};

const BIN: &str = "registry-agent";

/// Exit code of a command that could not do its work.
pub use cli_kit::EXIT_FAILURE;
/// Exit code of a bad command line (clap's).
pub use cli_kit::EXIT_USAGE;
use cli_kit::{json_requested, usage_error, write_man_pages};
/// Exit code of `resolve` when no manager of the type is eligible; the answer is printed.
pub const EXIT_NO_MANAGER: u8 = 3;

/// The agent of a fleet-registry host: local registry copy, nearest-manager routing, health
/// checks and forwarding.
#[derive(Debug, Parser)]
#[command(name = "registry-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon until SIGINT or SIGTERM.
    Run {
        /// The agent configuration file (YAML; every key is described in docs/agent.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log lines on stderr as text (colour only on a terminal) or as one JSON object per line; RUST_LOG filters them (default info).
        #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Ask the running agent for the route it uses now to a manager type, and why.
    Resolve {
        /// The manager type, e.g. command-control-manager.
        #[arg(value_name = "TYPE")]
        package_type: String,
        /// The agent's local API address: HOST:PORT or http://HOST:PORT.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        agent: String,
        /// Print the JSON answer of `registry-manager route explain` plus "revision" and
        /// "stale"; an error as one JSON object, {"error": "..."}, on stderr.
        #[arg(long)]
        json: bool,
    },
    /// The chosen manager of every type the agent knows, one line each.
    Routes {
        /// The agent's local API address: HOST:PORT or http://HOST:PORT.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        agent: String,
        /// Print JSON; an error as one JSON object, {"error": "..."}, on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Print every route change of the agent as it happens, one line each, until Ctrl-C; reconnects after an agent restart.
    Watch {
        /// Only this manager type (default: every type the agent knows when it connects).
        #[arg(value_name = "TYPE")]
        package_type: Option<String>,
        /// The agent's local API address: HOST:PORT or http://HOST:PORT.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        agent: String,
        /// One JSON object per line: {"type", "chosen", "endpoint", "route", "revision", "stale", "reason"}.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, or write one page per command into DIR.
    Man {
        /// Write registry-agent.1 and one page per subcommand (registry-agent-resolve.1, ...) into DIR (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How the daemon writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Why a command failed: its one-line reason (located errors of a file are printed before it).
#[derive(Debug)]
struct Failure {
    reason: String,
    located: Vec<topology::LocatedError>,
}

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(reason: T) -> Self {
        Failure {
            reason: reason.to_string(),
            located: Vec::new(),
        }
    }
}

/// Parses the command line, runs it and turns its outcome into the exit code.
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
        Err(f) => {
            eprint!("{}", error_report(&f.reason, &f.located, json));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Run { config, log_format } => run_daemon(config, log_format),
        Command::Resolve {
            package_type,
            agent,
            json,
        } => client_command(&agent, |c, addr| resolve(c, addr, package_type, json)),
        Command::Routes { agent, json } => client_command(&agent, |c, _| routes(c, json)),
        Command::Watch {
            package_type,
            agent,
            json,
        } => watch(&agent, package_type.as_deref(), json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            for path in write_man_pages(Cli::command(), &dir)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What is printed on stderr for a failed command: the located errors of a file then one line,
/// or one JSON object (`{"error": ..., "errors": [...]}` for a file's errors).
pub fn error_report(reason: &str, located: &[topology::LocatedError], json: bool) -> String {
    let reason = reason.replace('\n', "; ");
    if json {
        let mut v = json!({ "error": reason });
        if !located.is_empty() {
            v["errors"] = located
                .iter()
                .map(|e| {
                    json!({ "file": e.file, "line": e.line, "column": e.column, "message": e.message })
                })
                .collect();
        }
        return format!("{v}\n");
    }
    let mut out = String::new();
    for e in located {
        out.push_str(&format!("{e}\n"));
    }
    out.push_str(&format!("{BIN}: {reason}\n"));
    out
}

fn run_daemon(config_path: PathBuf, log_format: LogFormat) -> Result<ExitCode, Failure> {
    let config = match AgentConfig::load(&config_path) {
        Ok(c) => c,
        Err(errors) => {
            return Err(Failure {
                reason: format!(
                    "{} has {} error(s); the agent did not start",
                    config_path.display(),
                    errors.0.len()
                ),
                located: errors.0,
            })
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    {
        use std::io::IsTerminal;
        match log_format {
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        crate::agent::run(config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A gRPC address as the command line takes it, `HOST:PORT` or `http://HOST:PORT` (a trailing
/// `/` is ignored), without the scheme. Every port is plaintext: other schemes are refused.
pub fn host_port(addr: &str) -> Result<&str, String> {
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains("://") {
        return Err(format!(
            "address {addr:?}: only plaintext gRPC is served (TLS is not built yet); write HOST:PORT or http://HOST:PORT"
        ));
    }
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(format!(
            "bad address {addr:?}; expected HOST:PORT or http://HOST:PORT, like 127.0.0.1:7401"
        ));
    }
    Ok(rest)
}

/// `watch`: follows the agent until Ctrl-C or SIGTERM (exit 0).
fn watch(agent: &str, package_type: Option<&str>, json: bool) -> Result<ExitCode, Failure> {
    let addr = host_port(agent)?.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        tokio::select! {
            _ = crate::route_watch::follow(&addr, package_type, json) => {}
            _ = wait_for_signal() => {}
        }
    });
    Ok(ExitCode::SUCCESS)
}

type Client = AgentClient<tonic::transport::Channel>;

/// What a client command prints on stdout, and its exit code.
type Answer = Result<(String, ExitCode), Failure>;

fn client_command<F, Fut>(agent: &str, f: F) -> Result<ExitCode, Failure>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (out, code) = runtime.block_on(async {
        let addr = host_port(agent)?.to_owned();
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("--agent {agent:?} is not a valid address ({e}); write it like 127.0.0.1:7401"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|e| {
            format!("cannot reach the agent at {addr}: {e}; is `registry-agent run` running there? (--agent ADDR)")
        })?;
        f(AgentClient::new(channel), addr).await
    })?;
    print!("{out}");
    Ok(code)
}

fn status_line(s: tonic::Status) -> String {
    if s.message().is_empty() {
        format!("the agent answered {}", s.code())
    } else {
        s.message().to_owned()
    }
}

/// An agent's answer in the one printed form of an explanation (with `revision` and `stale`).
pub fn explained(e: &pb::RouteExplanation) -> Explained {
    proto::explained(e, true)
}

/// The JSON answer of `resolve --json`: `registry-manager route explain`'s, plus `revision`
/// and `stale`.
pub fn explanation_json(e: &pb::RouteExplanation) -> Value {
    explained(e).to_json()
}

fn route_line(t: &str, chosen: Option<&str>, endpoint: Option<&str>) -> String {
    match (chosen, endpoint) {
        (Some(h), Some(e)) => format!("{t} -> {h} ({e})"),
        (Some(h), None) => format!("{t} -> {h}"),
        _ => format!("{t} -> none"),
    }
}

async fn resolve(mut c: Client, addr: String, package_type: String, as_json: bool) -> Answer {
    let e = c
        .resolve(pb::ResolveRequest {
            r#type: package_type.clone(),
            brief: false,
        })
        .await
        .map_err(status_line)?
        .into_inner();
    let answer = explained(&e);
    if answer.type_unknown() {
        return Err(Failure::from(format!(
            "no host runs type {package_type:?} in the registry copy of the agent at {addr} (revision {}{}); check the spelling (`registry-agent routes` lists the types it knows)",
            e.revision,
            if e.stale { ", stale" } else { "" },
        )));
    }
    let out = if as_json {
        format!("{}\n", answer.to_json())
    } else {
        answer.to_text()
    };
    let code = if answer.chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_MANAGER)
    };
    Ok((out, code))
}

async fn routes(mut c: Client, as_json: bool) -> Answer {
    let r = c
        .routes(pb::RoutesRequest {})
        .await
        .map_err(status_line)?
        .into_inner();
    if as_json {
        let v = json!({
            "revision": r.revision,
            "stale": r.stale,
            "routes": r.routes.iter().map(|u| json!({
                "type": u.r#type,
                "chosen": u.chosen,
                "endpoint": u.endpoint,
                "route": u.route,
                "reason": u.reason,
            })).collect::<Vec<_>>(),
        });
        return Ok((format!("{v}\n"), ExitCode::SUCCESS));
    }
    let mut out = String::new();
    for u in &r.routes {
        out.push_str(&route_line(
            &u.r#type,
            u.chosen.as_deref(),
            u.endpoint.as_deref(),
        ));
        out.push('\n');
    }
    Ok((out, ExitCode::SUCCESS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cli_kit::{undocumented, usage_message};

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
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
        assert!(script.contains("registry-agent"), "{script}");
        for sub in ["resolve", "routes", "run", "completions"] {
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
        assert!(page.contains("registry\\-agent"), "{page}");
        assert!(page.contains("resolve"), "{page}");
    }

    #[test]
    fn man_dir_writes_one_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(Cli::command(), dir.path()).unwrap();
        let mut names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "registry-agent-completions.1",
                "registry-agent-man.1",
                "registry-agent-resolve.1",
                "registry-agent-routes.1",
                "registry-agent-run.1",
                "registry-agent-watch.1",
                "registry-agent.1",
            ]
        );
    }

    #[test]
    fn addresses_are_taken_with_or_without_http() {
        assert_eq!(host_port("127.0.0.1:7401").unwrap(), "127.0.0.1:7401");
        assert_eq!(
            host_port("http://127.0.0.1:7401").unwrap(),
            "127.0.0.1:7401"
        );
        assert_eq!(host_port("http://[::1]:7401/").unwrap(), "[::1]:7401");
        assert!(host_port("https://127.0.0.1:7401")
            .unwrap_err()
            .contains("TLS is not built"));
        assert!(host_port("localhost").is_err());
    }

    #[test]
    fn usage_errors_read_as_one_line_with_the_usage() {
        let err = Cli::command()
            .try_get_matches_from(["registry-agent", "resolve"])
            .unwrap_err();
        let msg = usage_message(&err.to_string());
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("<TYPE>"), "{msg}");
        assert!(msg.contains("usage: registry-agent resolve"), "{msg}");
        assert_eq!(err.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn errors_are_one_line_or_one_json_object() {
        assert_eq!(
            error_report("cannot reach the agent\nat x", &[], false),
            "registry-agent: cannot reach the agent; at x\n"
        );
        let v: Value =
            serde_json::from_str(error_report("cannot reach", &[], true).trim_end()).unwrap();
        assert_eq!(v, json!({ "error": "cannot reach" }));
        let m = Cli::command()
            .try_get_matches_from(["registry-agent", "routes", "--json"])
            .unwrap();
        assert!(json_requested(&m));
    }

    #[test]
    fn the_agents_answer_is_the_managers_form_plus_revision_and_stale() {
        let wire = pb::RouteExplanation {
            host: "agent-2".into(),
            r#type: "ccm".into(),
            chosen: Some("fm".into()),
            endpoint: Some("10.0.0.1:7001".into()),
            route: vec!["fm".into()],
            candidates: vec![pb::RouteCandidate {
                host: "fm".into(),
                domain: "framework".into(),
                tier: "ancestor".into(),
                eligible: true,
                reason: String::new(),
                endpoint: "10.0.0.1:7001".into(),
            }],
            revision: 7,
            stale: true,
        };
        let v = explanation_json(&wire);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "host",
                "type",
                "chosen",
                "endpoint",
                "route",
                "candidates",
                "revision",
                "stale"
            ]
        );
        assert!(v["candidates"][0]["reason"].is_null());
        assert_eq!(v["stale"], true);
        let text = explained(&wire).to_text();
        assert!(
            text.starts_with("agent-2 -> ccm: fm (10.0.0.1:7001)\n"),
            "{text}"
        );
        assert!(
            text.contains("revision: 7 (stale: no live registry session)\n"),
            "{text}"
        );
    }
}
