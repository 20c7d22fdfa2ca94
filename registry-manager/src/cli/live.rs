//! Commands that talk to a live manager over gRPC (`--manager ADDR`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use proto::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::Channel;

use super::offline::{file_name, read_text};
use super::render::{from_wire, print_explained};
use super::report::InvalidFile;
use super::ManagerAddr;

/// Runs a live command on a small runtime of its own.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    fut: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fut)
}

/// An operator action on a package.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Drain,
    Withdraw,
    Restore,
}

/// A gRPC address as the command line takes it, `HOST:PORT`, `http://HOST:PORT` or
/// `https://HOST:PORT` (a trailing `/` is ignored), without the scheme; the scheme says
/// nothing more: TLS is used when certificates are given.
pub fn host_port(addr: &str) -> anyhow::Result<&str> {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains("://") {
        anyhow::bail!("address {addr:?}: write HOST:PORT (or http://HOST:PORT, https://HOST:PORT)");
    }
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        anyhow::bail!("bad address {addr:?}; expected HOST:PORT or http://HOST:PORT");
    }
    Ok(rest)
}

/// Connects to a manager's Admin service, with a bounded connect time so a dead address fails
/// fast; over mutual TLS when `--ca/--cert/--key` (or their environment variables) are given.
pub async fn connect(manager: &ManagerAddr) -> anyhow::Result<AdminClient<Channel>> {
    let addr = &manager.addr;
    let tls = match manager.tls_files() {
        Some(files) => {
            let material = files.load()?;
            material.check_valid_at(std::time::SystemTime::now())?;
            let crl = match manager.crl() {
                Some(path) => Some((path, proto::crl::read(path)?.0)),
                None => None,
            };
            Some(material.client_tls(crl.as_ref().map(|(p, pem)| (*p, pem.as_slice())))?)
        }
        None => None,
    };
    if tls.is_none() && addr.starts_with("https://") {
        anyhow::bail!(
            "address {addr:?} asks for TLS but no certificate is given; give --ca, --cert and --key (or FLEET_REGISTRY_CA, FLEET_REGISTRY_CERT, FLEET_REGISTRY_KEY)"
        );
    }
    let channel = proto::tls::endpoint(host_port(addr)?, tls.as_ref())
        .map_err(|e| anyhow::anyhow!("bad manager address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach a registry manager at {addr} ({}); is `registry-manager serve` running there? (set --manager ADDR); {}",
                proto::tls::error_chain(&e),
                proto::tls::connect_hint(tls.is_some())
            )
        })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// Turns a gRPC status into a one-line error that keeps the manager's message.
fn status_error(what: &str, addr: &ManagerAddr, status: tonic::Status) -> anyhow::Error {
    // A transport failure (a certificate refused mid-call, say) hides its cause in the source.
    let cause = std::error::Error::source(&status)
        .map(|s| format!(" ({})", proto::tls::error_chain(s)))
        .unwrap_or_default();
    anyhow::anyhow!(
        "{what} refused by the manager at {addr} ({:?}): {}{cause}",
        status.code(),
        status.message()
    )
}

pub async fn apply(
    addr: &ManagerAddr,
    path: &Path,
    yes: bool,
    max_move: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let yaml = read_text(path)?;
    // Check locally first: the same validation the manager runs, with every error printed.
    if let Err(errors) = topology::Topology::from_yaml(&file_name(path), &yaml) {
        return Err(InvalidFile {
            summary: format!(
                "{} has {} error(s); nothing was applied",
                file_name(path),
                errors.0.len()
            ),
            errors: errors.0,
        }
        .into());
    }
    let mut client = connect(addr).await?;
    // Who moves before anyone does: the diff and the live sessions of the hosts it removes.
    let d = client
        .diff_topology(proto::TopologyRequest {
            yaml: yaml.clone(),
            file_name: file_name(path),
        })
        .await
        .map_err(|s| status_error("topology apply", addr, s))?
        .into_inner();
    let hosts = client
        .list_hosts(proto::ListHostsRequest { stale: false })
        .await
        .map_err(|s| status_error("topology apply", addr, s))?
        .into_inner();
    let blast = BlastRadius::of(&d, &hosts);
    if !json {
        eprintln!("{}", blast.summary(&d));
    }
    if let Some(why) = blast.needs_confirmation(max_move) {
        if !yes {
            anyhow::bail!(
                "{why}; nothing was applied. See `registry-manager topology diff {}` and run again with --yes to apply",
                file_name(path)
            );
        }
    }
    let resp = client
        .apply_topology(proto::TopologyRequest {
            yaml,
            file_name: file_name(path),
        })
        .await
        .map_err(|s| status_error("topology apply", addr, s))?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({
                "revision": resp.revision,
                "hosts_removed": d.hosts_removed,
                "live_hosts_removed": blast.live_removed,
                "hosts_moving": blast.moving,
                "hosts": blast.total,
            })
        );
    } else {
        println!("applied {} at revision {}", file_name(path), resp.revision);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(addr: &ManagerAddr, path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let yaml = read_text(path)?;
    if let Err(errors) = topology::Topology::from_yaml(&file_name(path), &yaml) {
        return Err(InvalidFile {
            summary: format!("{} has {} error(s)", file_name(path), errors.0.len()),
            errors: errors.0,
        }
        .into());
    }
    let mut client = connect(addr).await?;
    let d = client
        .diff_topology(proto::TopologyRequest {
            yaml,
            file_name: file_name(path),
        })
        .await
        .map_err(|s| status_error("topology diff", addr, s))?
        .into_inner();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if json {
        println!(
            "{}",
            json!({
                "domains_added": d.domains_added,
                "domains_removed": d.domains_removed,
                "domains_moved": d.domains_moved.iter().map(|m| json!({
                    "domain": m.domain, "from_parent": m.from_parent, "to_parent": m.to_parent,
                })).collect::<Vec<_>>(),
                "hosts_added": d.hosts_added,
                "hosts_removed": d.hosts_removed,
                "hosts_moved": d.hosts_moved.iter().map(|m| json!({
                    "host": m.host, "from": m.from_domain, "to": m.to_domain,
                })).collect::<Vec<_>>(),
                "route_changes": d.route_changes.iter().map(|c| json!({
                    "host": c.host, "type": c.r#type,
                    "old": opt(&c.old_chosen), "new": opt(&c.new_chosen),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("domains added:   {}", list(&d.domains_added));
    println!("domains removed: {}", list(&d.domains_removed));
    for m in &d.domains_moved {
        println!(
            "domain moved:    {} from under {} to under {}",
            m.domain, m.from_parent, m.to_parent
        );
    }
    println!("hosts added:     {}", list(&d.hosts_added));
    println!("hosts removed:   {}", list(&d.hosts_removed));
    for m in &d.hosts_moved {
        println!(
            "host moved:      {} from {} to {}",
            m.host, m.from_domain, m.to_domain
        );
    }
    if d.route_changes.is_empty() {
        println!("blast radius:    no host changes manager");
    } else {
        println!(
            "blast radius:    {} (host, type) pairs change manager:",
            d.route_changes.len()
        );
        for c in &d.route_changes {
            println!(
                "  {} {}: {} -> {}",
                c.host,
                c.r#type,
                opt(&c.old_chosen).unwrap_or_else(|| "none".into()),
                opt(&c.new_chosen).unwrap_or_else(|| "none".into()),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(addr: &ManagerAddr, stale: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let resp = client
        .show_topology(proto::ShowTopologyRequest { stale })
        .await
        .map_err(|s| status_error("topology show", addr, s))?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({ "revision": resp.revision, "yaml": resp.yaml })
        );
    } else if resp.yaml.is_empty() {
        println!("# no topology applied (revision {})", resp.revision);
    } else {
        println!("# revision {}", resp.revision);
        print!("{}", resp.yaml);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn explain(
    addr: &ManagerAddr,
    host: &str,
    package_type: &str,
    stale: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let resp = client
        .explain_route(proto::ExplainRouteRequest {
            host: host.to_string(),
            r#type: package_type.to_string(),
            stale,
        })
        .await
        .map_err(|s| status_error("route explain", addr, s))?
        .into_inner();
    print_explained(&from_wire(&resp), json, &format!("the registry at {addr}"))
}

pub async fn export(addr: &ManagerAddr, stale: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let resp = client
        .export_registry(proto::ExportRegistryRequest { stale })
        .await
        .map_err(|s| status_error("registry export", addr, s))?
        .into_inner();
    if json {
        println!("{}", resp.snapshot_json);
    } else {
        let snapshot = topology::RegistrySnapshot::parse("<manager>", &resp.snapshot_json)
            .map_err(|e| anyhow::anyhow!("the manager sent an unreadable snapshot: {e}"))?;
        print!("{}", snapshot.to_yaml());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn hosts(addr: &ManagerAddr, stale: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let resp = client
        .list_hosts(proto::ListHostsRequest { stale })
        .await
        .map_err(|s| status_error("host listing", addr, s))?
        .into_inner();
    if json {
        let hosts: Vec<_> = resp
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "host": h.host, "domain": h.domain, "alive": h.alive,
                    "session_live": h.session_live,
                    "last_heartbeat_ms": h.session_live.then_some(h.last_heartbeat_ms),
                    "packages": h.packages.iter().map(|p| json!({
                        "type": p.r#type, "endpoint": p.endpoint, "status": status_name(p.status),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({ "revision": resp.revision, "hosts": hosts }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("revision {}", resp.revision);
    for h in &resp.hosts {
        let pkgs: Vec<String> = h
            .packages
            .iter()
            .map(|p| format!("{}={}", p.r#type, status_name(p.status)))
            .collect();
        println!(
            "{:<24} {:<20} {:<6} {:<10} {}",
            h.host,
            h.domain,
            if h.alive { "alive" } else { "down" },
            if !h.session_live {
                "no-session".to_string()
            } else {
                format!("{}ms", h.last_heartbeat_ms)
            },
            pkgs.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn status_name(status: i32) -> &'static str {
    match proto::PackageStatus::try_from(status) {
        Ok(proto::PackageStatus::Starting) => "starting",
        Ok(proto::PackageStatus::Running) => "running",
        Ok(proto::PackageStatus::Failing) => "failing",
        Ok(proto::PackageStatus::Stopped) => "stopped",
        Ok(proto::PackageStatus::Draining) => "draining",
        Ok(proto::PackageStatus::Withdrawn) => "withdrawn",
        _ => "unknown",
    }
}

pub async fn package(
    addr: &ManagerAddr,
    action: Action,
    host: &str,
    package_type: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (wire, verb) = match action {
        Action::Drain => (proto::PackageAction::Drain, "drained"),
        Action::Withdraw => (proto::PackageAction::Withdraw, "withdrawn"),
        Action::Restore => (proto::PackageAction::Restore, "restored"),
    };
    let mut client = connect(addr).await?;
    let resp = client
        .package_action(proto::PackageActionRequest {
            host: host.to_string(),
            r#type: package_type.to_string(),
            action: wire as i32,
        })
        .await
        .map_err(|s| status_error("package action", addr, s))?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({ "host": host, "type": package_type, "action": verb, "revision": resp.revision })
        );
    } else {
        println!(
            "{package_type} on {host} {verb} at revision {}",
            resp.revision
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `route coverage` against the live registry (its current topology and registry).
pub async fn coverage(
    addr: &ManagerAddr,
    package_type: Option<&str>,
    stale: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let export = client
        .export_registry(proto::ExportRegistryRequest { stale })
        .await
        .map_err(|s| status_error("route coverage", addr, s))?
        .into_inner();
    let shown = client
        .show_topology(proto::ShowTopologyRequest { stale })
        .await
        .map_err(|s| status_error("route coverage", addr, s))?
        .into_inner();
    anyhow::ensure!(
        !shown.yaml.is_empty(),
        "the registry at {addr} has no topology yet; apply one with `registry-manager topology apply FILE`"
    );
    let topology = topology::Topology::from_yaml("<manager>", &shown.yaml)
        .map_err(|e| anyhow::anyhow!("the manager sent an unreadable topology: {e}"))?;
    let snapshot = topology::RegistrySnapshot::parse("<manager>", &export.snapshot_json)
        .map_err(|e| anyhow::anyhow!("the manager sent an unreadable snapshot: {e}"))?;
    super::offline::coverage(&topology, &snapshot, package_type, json)
}

/// `backup FILE`: a consistent copy of the live registry.
pub async fn backup(addr: &ManagerAddr, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = connect(addr).await?;
    let resp = client
        .backup(proto::BackupRequest {})
        .await
        .map_err(|s| status_error("backup", addr, s))?
        .into_inner();
    let b = registry_manager::backup::BackupFile::new(resp.revision, resp.history, &resp.state)
        .map_err(|e| anyhow::anyhow!("the manager sent an unreadable state: {e}"))?;
    let text = serde_json::to_string(&b)?;
    // Written next to the target, then renamed: a crash never leaves half a backup.
    let tmp = file.with_extension("partial");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    if json {
        println!(
            "{}",
            json!({ "file": file.display().to_string(), "revision": b.revision, "history": b.history })
        );
    } else {
        println!("backed up revision {} to {}", b.revision, file.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn addresses_are_taken_with_or_without_http() {
        assert_eq!(host_port("127.0.0.1:7400").unwrap(), "127.0.0.1:7400");
        assert_eq!(
            host_port("http://127.0.0.1:7400").unwrap(),
            "127.0.0.1:7400"
        );
        assert_eq!(host_port("http://m1:7400/").unwrap(), "m1:7400");
        assert_eq!(host_port("[::1]:7400").unwrap(), "[::1]:7400");
        assert_eq!(host_port("https://m1:7400").unwrap(), "m1:7400");
        assert!(host_port("ftp://m1:7400").is_err());
        assert!(host_port("m1").is_err());
        assert!(host_port("http://").is_err());
    }
}

/// What a topology change does to the live fleet, before it is applied.
#[derive(Debug)]
struct BlastRadius {
    /// Hosts the change removes that hold a live session now.
    live_removed: Vec<String>,
    /// Hosts whose chosen manager of some type would change.
    moving: usize,
    /// Hosts of the live registry.
    total: usize,
}

impl BlastRadius {
    fn of(d: &proto::DiffTopologyResponse, hosts: &proto::ListHostsResponse) -> BlastRadius {
        let live_removed = d
            .hosts_removed
            .iter()
            .filter(|h| hosts.hosts.iter().any(|x| &x.host == *h && x.session_live))
            .cloned()
            .collect();
        let moving = d
            .route_changes
            .iter()
            .map(|c| c.host.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        BlastRadius {
            live_removed,
            moving,
            total: hosts.hosts.len(),
        }
    }

    /// Why the change needs `--yes`, if it does.
    fn needs_confirmation(&self, max_move_percent: f64) -> Option<String> {
        if !self.live_removed.is_empty() {
            return Some(format!(
                "the change removes {} host(s) that hold a live session ({})",
                self.live_removed.len(),
                self.live_removed.join(", ")
            ));
        }
        let share = 100.0 * self.moving as f64 / self.total.max(1) as f64;
        (share > max_move_percent).then(|| {
            format!(
                "the change moves the routes of {} of {} hosts ({share:.0}%, more than --max-move {max_move_percent}%)",
                self.moving, self.total
            )
        })
    }

    fn summary(&self, d: &proto::DiffTopologyResponse) -> String {
        let mut out = format!(
            "domains +{} -{} moved {}; hosts +{} -{} moved {}; {} of {} hosts would change a chosen manager",
            d.domains_added.len(),
            d.domains_removed.len(),
            d.domains_moved.len(),
            d.hosts_added.len(),
            d.hosts_removed.len(),
            d.hosts_moved.len(),
            self.moving,
            self.total
        );
        for c in d.route_changes.iter().take(20) {
            let or_none = |s: &str| {
                if s.is_empty() {
                    "none".to_string()
                } else {
                    s.to_string()
                }
            };
            out.push_str(&format!(
                "\n  {} {}: {} -> {}",
                c.host,
                c.r#type,
                or_none(&c.old_chosen),
                or_none(&c.new_chosen)
            ));
        }
        if d.route_changes.len() > 20 {
            out.push_str(&format!("\n  ... and {} more", d.route_changes.len() - 20));
        }
        out
    }
}
