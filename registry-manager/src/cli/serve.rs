//! `registry-manager serve`: flags, the config file, and the daemon's lifetime (SIGINT/SIGTERM).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Flags of `serve`; each wins over the same key of the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (YAML) with the keys listen, data_dir, topology, session_ttl, http_listen and group.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC address to listen on [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Where the registry is stored (sled) [default: ./registry-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Topology file applied at start; the manager refuses to start if it is invalid.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// A host whose agent does not renew its session within this long is marked not alive [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    session_ttl: Option<Duration>,
    /// HTTP address of /metrics and /healthz, or `none` for no HTTP port [default: 127.0.0.1:7480].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<registry_manager::HttpListen>,
    /// Serve plaintext gRPC on an address other than loopback (without TLS anyone who reaches it can act as any host).
    #[arg(long)]
    insecure: bool,
    /// Log lines on stderr as text (colour only on a terminal) or as one JSON object per line; RUST_LOG filters them (default info,openraft=warn).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How the daemon writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Sets up logging on stderr: `RUST_LOG` or `default_filter`, in `format`.
fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    topology::parse_duration(s)
}

/// The config file of `serve`. Relative paths are taken from the current directory, like flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    topology: Option<PathBuf>,
    session_ttl: Option<String>,
    group: Option<GroupFile>,
    http_listen: Option<String>,
    tls: Option<TlsFile>,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    insecure: bool,
}

/// The `tls:` section: this manager's certificate and key, the fleet's CA, and optionally the
/// CA's list of revoked certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    crl: Option<PathBuf>,
}

/// The `group:` section: this member, every voter, optional learners, failback target, hook.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: String,
    members: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    learners: std::collections::BTreeMap<String, String>,
    preferred: Option<String>,
    #[serde(default)]
    dial: std::collections::BTreeMap<String, String>,
    hook: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

fn group_config(file: GroupFile, path: &str) -> anyhow::Result<registry_manager::GroupConfig> {
    let name = |what: &str, n: &str| {
        topology::HostName::new(n).map_err(|e| anyhow::anyhow!("{path}: {what}: {e}"))
    };
    let list = |what: &str, m: std::collections::BTreeMap<String, String>| {
        m.into_iter()
            .map(|(n, a)| {
                let n = name(what, &n)?;
                if !a.contains(':')
                    || a.rsplit_once(':')
                        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    anyhow::bail!("{path}: {what}.{n}: address {a:?} is not host:port");
                }
                Ok((n, a))
            })
            .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()
    };
    let group = registry_manager::GroupConfig {
        name: name("group.name", &file.name)?,
        members: list("group.members", file.members)?,
        learners: list("group.learners", file.learners)?,
        preferred: file
            .preferred
            .as_deref()
            .map(|p| name("group.preferred", p))
            .transpose()?,
        dial: list("group.dial", file.dial)?,
        hook: file.hook,
    };
    group
        .validate()
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok(group)
}

fn load_file(path: &PathBuf) -> anyhow::Result<ServeFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: ServeFile = serde_saphyr::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}; allowed keys: listen, data_dir, topology, session_ttl, http_listen, tls (cert, key, ca), admins, insecure, group (name, members, learners, preferred, dial, hook, key_file)",
            path.display(),
            e.to_string().replace('\n', " ")
        )
    })?;
    Ok(file)
}

/// Resolves flags over the config file over the defaults.
fn resolve(args: ServeArgs) -> anyhow::Result<registry_manager::ServeConfig> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => ServeFile::default(),
    };
    let defaults = registry_manager::ServeConfig::default();
    let file_ttl = match &file.session_ttl {
        Some(s) => Some(topology::parse_duration(s).map_err(|e| {
            anyhow::anyhow!(
                "{}: session_ttl {s:?}: {e}",
                args.config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })?),
        None => None,
    };
    let session_ttl = args
        .session_ttl
        .or(file_ttl)
        .unwrap_or(defaults.session_ttl);
    if session_ttl < Duration::from_millis(30) {
        anyhow::bail!(
            "session_ttl {session_ttl:?} is too short: heartbeats are sent every third of it; use 30ms or more"
        );
    }
    let topology = match args.topology.or(file.topology) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read topology file {}", path.display()))?;
            // Validate here so every error is printed, one per line, before refusing to start.
            if let Err(errors) = topology::Topology::from_yaml(&path.display().to_string(), &text) {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                anyhow::bail!(
                    "{} has {} error(s); the manager did not start",
                    path.display(),
                    errors.0.len()
                );
            }
            Some((path.display().to_string(), text))
        }
        None => None,
    };
    let config_name = args
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let key_file = file.group.as_ref().and_then(|g| g.key_file.clone());
    let group = file
        .group
        .map(|g| group_config(g, &config_name))
        .transpose()?;
    for a in &file.admins {
        registry_manager::certs::check_name(a)
            .map_err(|e| anyhow::anyhow!("{config_name}: admins: {e}"))?;
    }
    let crl = file.tls.as_ref().and_then(|t| t.crl.clone());
    let security = registry_manager::Security {
        tls: file.tls.map(|t| proto::tls::TlsFiles {
            cert: t.cert,
            key: t.key,
            ca: t.ca,
        }),
        crl,
        admins: file.admins,
        insecure: args.insecure || file.insecure,
        key_file,
    };
    if !security.admins.is_empty() && security.tls.is_none() {
        anyhow::bail!(
            "{config_name}: admins is set but tls is not; admins are certificate names, so configure `tls: {{ cert, key, ca }}` too (see docs/security.md)"
        );
    }
    let listen = args.listen.or(file.listen).or_else(|| {
        // A member listens on its own address in the group unless told otherwise.
        group
            .as_ref()
            .and_then(|g| g.own_address())
            .and_then(|a| a.parse().ok())
    });
    let http_listen = match (args.http_listen, &file.http_listen) {
        (Some(h), _) => h.0,
        (None, Some(s)) => {
            s.parse::<registry_manager::HttpListen>()
                .map_err(|e| anyhow::anyhow!("{config_name}: http_listen: {e}"))?
                .0
        }
        (None, None) => defaults.http_listen,
    };
    Ok(registry_manager::ServeConfig {
        http_listen,
        listen: listen.unwrap_or(defaults.listen),
        group,
        data_dir: args.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
        topology,
        session_ttl,
        security,
    })
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, "info,openraft=warn");
    let config = resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(registry_manager::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: &str) -> ServeArgs {
        ServeArgs {
            config: Some(PathBuf::from(config)),
            listen: None,
            data_dir: None,
            topology: None,
            session_ttl: None,
            http_listen: None,
            log_format: LogFormat::Text,
            insecure: false,
        }
    }

    #[test]
    fn the_shipped_member_configuration_resolves_to_a_group_of_three() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/manager-m1.yaml"
        );
        // Its topology path is absolute (/etc/...): read the rest without it.
        let text = std::fs::read_to_string(dir).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("m1.yaml");
        std::fs::write(
            &file,
            text.replace("topology: /etc/fleet-registry/topology.yaml", ""),
        )
        .unwrap();
        let config = resolve(args(file.to_str().unwrap())).unwrap();
        let group = config.group.expect("a group");
        assert_eq!(group.name.as_str(), "m1");
        assert_eq!(group.members.len(), 3);
        assert_eq!(config.listen.to_string(), "10.0.0.1:7400");
    }

    #[test]
    fn a_group_of_two_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("m1.yaml");
        std::fs::write(
            &file,
            "group:\n  name: m1\n  members: { m1: \"127.0.0.1:7400\", m2: \"127.0.0.1:7410\" }\n",
        )
        .unwrap();
        let err = resolve(args(file.to_str().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("two voters"), "{err}");
        assert!(err.contains("m1.yaml"), "names the file: {err}");
    }
}
