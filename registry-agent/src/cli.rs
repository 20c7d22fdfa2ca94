//! The `registry-agent` command line: `run --config FILE`, `resolve TYPE`, `routes`.
//! Exit status 0 on success; otherwise non-zero with a one-line reason on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use proto::v1 as pb;
use proto::v1::agent_client::AgentClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, DEFAULT_LISTEN};

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
    /// Run the agent daemon.
    Run {
        /// The agent configuration file (YAML; every key is described in docs/agent.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running agent for the route to a manager type.
    Resolve {
        /// The manager type, e.g. command-control-manager.
        #[arg(value_name = "TYPE")]
        package_type: String,
        /// The agent's local API address.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        agent: String,
        /// Print the JSON answer of `route explain` (plus "revision" and "stale").
        #[arg(long)]
        json: bool,
    },
    /// The chosen manager of every type, one line each.
    Routes {
        /// The agent's local API address.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        agent: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let line = msg.to_string().replace('\n', "; ");
    eprintln!("registry-agent: {line}");
    ExitCode::FAILURE
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run_daemon(config),
        Command::Resolve {
            package_type,
            agent,
            json,
        } => client_command(&agent, |c| resolve(c, package_type, json)),
        Command::Routes { agent, json } => client_command(&agent, |c| routes(c, json)),
    }
}

fn run_daemon(config_path: PathBuf) -> ExitCode {
    let config = match AgentConfig::load(&config_path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        match crate::agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
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

type Client = AgentClient<tonic::transport::Channel>;

fn client_command<F, Fut>(agent: &str, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{agent}"))
            .map_err(|e| format!("--agent {agent:?} is not a valid address ({e}); write it like 127.0.0.1:7401"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|e| {
            format!("cannot reach the agent at {agent}: {e}; is `registry-agent run` running there? (--agent ADDR)")
        })?;
        f(AgentClient::new(channel)).await
    });
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn status_line(s: tonic::Status) -> String {
    if s.message().is_empty() {
        format!("the agent answered {}", s.code())
    } else {
        s.message().to_owned()
    }
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// The command-line contract (docs/manager.md, docs/agent.md) `route explain` JSON, plus `revision` and `stale`.
pub fn explanation_json(e: &pb::RouteExplanation) -> Value {
    json!({
        "host": e.host,
        "type": e.r#type,
        "chosen": e.chosen,
        "endpoint": e.endpoint,
        "route": e.route,
        "candidates": e.candidates.iter().map(|c| json!({
            "host": c.host,
            "domain": opt(&c.domain),
            "tier": opt(&c.tier),
            "eligible": c.eligible,
            "reason": opt(&c.reason),
            "endpoint": c.endpoint,
        })).collect::<Vec<_>>(),
        "revision": e.revision,
        "stale": e.stale,
    })
}

fn route_line(t: &str, chosen: Option<&str>, endpoint: Option<&str>) -> String {
    match (chosen, endpoint) {
        (Some(h), Some(e)) => format!("{t} -> {h} ({e})"),
        (Some(h), None) => format!("{t} -> {h}"),
        _ => format!("{t} -> none"),
    }
}

async fn resolve(mut c: Client, package_type: String, as_json: bool) -> Result<String, String> {
    let e = c
        .resolve(pb::ResolveRequest {
            r#type: package_type.clone(),
            brief: false,
        })
        .await
        .map_err(status_line)?
        .into_inner();
    if as_json {
        return Ok(format!("{}\n", explanation_json(&e)));
    }
    let mut out = route_line(&package_type, e.chosen.as_deref(), e.endpoint.as_deref());
    out.push('\n');
    out.push_str(&format!(
        "route: {}\n",
        if e.route.is_empty() {
            "(empty)".to_owned()
        } else {
            e.route.join(", ")
        }
    ));
    out.push_str(&format!(
        "revision: {}{}\n",
        e.revision,
        if e.stale {
            " (stale: no live registry session)"
        } else {
            ""
        }
    ));
    for cand in &e.candidates {
        let state = if cand.eligible && cand.reason.is_empty() {
            "eligible".to_owned()
        } else if cand.eligible {
            format!("eligible ({})", cand.reason)
        } else {
            format!("skipped: {}", cand.reason)
        };
        out.push_str(&format!(
            "  {} {} {} {} {}\n",
            cand.host,
            opt(&cand.domain).as_str().unwrap_or("-"),
            opt(&cand.tier).as_str().unwrap_or("-"),
            cand.endpoint,
            state
        ));
    }
    Ok(out)
}

async fn routes(mut c: Client, as_json: bool) -> Result<String, String> {
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
        return Ok(format!("{v}\n"));
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
    Ok(out)
}
