//! The agent configuration file (the command-line contract (docs/manager.md, docs/agent.md) `registry-agent run --config FILE`), parsed and
//! validated in one pass: every problem is reported as `FILE:LINE:COL: message`, and a file
//! with any error yields no configuration at all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;
use topology::{HostName, PackageType};

use crate::config_error::{ConfigError, ConfigErrors};

/// Default local API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7401";
/// Default address of the HTTP port (`/metrics`, `/healthz`).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7481";
/// Default directory of the persisted registry copy.
pub const DEFAULT_DATA_DIR: &str = "./agent-data";
/// Largest configuration file accepted.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A parsed, validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The host this agent speaks for; it may only register and report for this host.
    pub host: HostName,
    /// Bootstrap addresses of registry managers, tried in order when the registry copy names
    /// no reachable `registry-manager` package.
    pub managers: Vec<ManagerAddress>,
    /// Name servers asked for the `dns+srv:` entries of `managers` (`dns_servers`: IP
    /// addresses, with `:port` when not 53); empty: the name servers of `/etc/resolv.conf`.
    pub dns_servers: Vec<SocketAddr>,
    /// Where the registry copy is persisted (sled), so the agent answers at once after a restart.
    pub data_dir: PathBuf,
    /// Local API address (gRPC `Agent` service and gRPC health). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The manager packages this host runs, with their local checks.
    pub packages: Vec<PackageConfig>,
    /// How this agent probes the managers it routes to (the light backstop of the performance targets (BENCHMARKS.md)).
    pub health: HealthConfig,
    /// Local TCP ports that always lead to the chosen manager of a type.
    pub forward: Vec<ForwardConfig>,
    /// HTTP port (`/metrics`, `/healthz`); none (`http_listen: none`): no HTTP port. Port 0
    /// picks a free port.
    pub http_listen: Option<SocketAddr>,
    /// Mutual TLS toward the managers (`tls: { cert, key, ca }`): the certificate names this
    /// host, and the managers only let it act for this host. None: plaintext.
    pub tls: Option<proto::tls::TlsFiles>,
    /// The CA's list of revoked certificates (`tls.crl`): a manager whose certificate it names
    /// is refused. Followed while running.
    pub crl: Option<PathBuf>,
}

/// A bootstrap address of a registry manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerAddress {
    /// `host:port` (an IP address or a DNS name).
    HostPort(String),
    /// `dns+srv:NAME`: the SRV records of `NAME`, by priority then weight.
    DnsSrv(String),
}

impl std::fmt::Display for ManagerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManagerAddress::HostPort(a) => f.write_str(a),
            ManagerAddress::DnsSrv(n) => write!(f, "dns+srv:{n}"),
        }
    }
}

/// One manager package run by this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageConfig {
    /// Its type; a host runs at most one package of a type.
    pub package_type: PackageType,
    /// Where clients reach it (`host:port`), as published in the registry.
    pub endpoint: String,
    /// How the agent checks it locally.
    pub check: Check,
    /// Time between two checks.
    pub interval: Duration,
    /// Consecutive failed checks before it is reported `failing` (or `stopped` if it never ran).
    pub fall: u32,
    /// Consecutive successful checks before it is reported `running`.
    pub rise: u32,
}

/// A local package check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// TCP connect to `host:port`.
    Tcp(String),
    /// gRPC health `Check` (service "") at `host:port`; healthy when `SERVING`.
    GrpcHealth(String),
}

/// Active probes of the managers this agent routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between two probe rounds.
    pub interval: Duration,
    /// Connect timeout of one probe.
    pub timeout: Duration,
    /// Consecutive failures before a manager is held down.
    pub fall: u32,
    /// Consecutive successes before a held-down manager is trusted again.
    pub rise: u32,
    /// How a manager is probed: a TCP connect (any protocol), or a gRPC health `Check` (which
    /// also sees a manager whose process hangs while its kernel still accepts connections).
    pub probe: ProbeKind,
}

/// How the agent probes the managers it routes to (`health.probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeKind {
    /// TCP connect within `timeout`.
    #[default]
    Tcp,
    /// gRPC health `Check` (service "") answered `SERVING` within `timeout`, over a reused channel.
    GrpcHealth,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 2,
            rise: 2,
            probe: ProbeKind::Tcp,
        }
    }
}

/// A forwarding port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// The manager type it leads to.
    pub package_type: PackageType,
    /// Local address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
}

// ----- raw file form -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: Spanned<String>,
    managers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    #[serde(default)]
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    packages: Vec<Spanned<RawPackage>>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
    #[serde(default)]
    http_listen: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    ca: Spanned<String>,
    #[serde(default)]
    crl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    #[serde(rename = "type")]
    package_type: Spanned<String>,
    endpoint: Spanned<String>,
    check: Spanned<RawCheck>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
    #[serde(default)]
    rise: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default)]
    tcp: Option<Spanned<String>>,
    #[serde(default, alias = "grpc-health")]
    grpc_health: Option<Spanned<String>>,
    // `interval`, `fall` and `rise` are accepted inside `check` too (`check: { tcp: ADDR,
    // interval: 100ms }`), as the documented example places them there.
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
    #[serde(default)]
    rise: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    probe: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
    #[serde(default)]
    rise: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(rename = "type")]
    package_type: Spanned<String>,
    listen: Spanned<String>,
}

/// Collects located errors while the raw form is converted.
struct Checker<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: s.referenced.line() as usize,
            column: s.referenced.column() as usize,
            message: message.into(),
        });
    }

    fn host(&mut self, s: &Spanned<String>) -> Option<HostName> {
        match HostName::new(s.value.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                self.at(s, format!("host: {e}"));
                None
            }
        }
    }

    fn package_type(&mut self, s: &Spanned<String>) -> Option<PackageType> {
        match PackageType::new(s.value.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.at(s, format!("type: {e}"));
                None
            }
        }
    }

    fn host_port(&mut self, key: &str, s: &Spanned<String>) -> Option<String> {
        match check_host_port(&s.value) {
            Ok(()) => Some(s.value.clone()),
            Err(why) => {
                self.at(s, format!("{key}: {why}"));
                None
            }
        }
    }

    fn socket_addr(&mut self, key: &str, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at(
                    s,
                    format!(
                        "{key}: {:?} is not an IP address and port; write it like 127.0.0.1:7401 (port 0 picks a free port)",
                        s.value
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, s: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match topology::parse_duration(&s.value) {
            Ok(d) if d.is_zero() => {
                self.at(s, format!("{key}: must be longer than 0s"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.at(s, format!("{key}: {e}"));
                default
            }
        }
    }

    /// A setting given beside `check` or inside it, not both.
    fn either<'v, T>(
        &mut self,
        key: &str,
        outer: &'v Option<Spanned<T>>,
        inner: &'v Option<Spanned<T>>,
    ) -> &'v Option<Spanned<T>> {
        if let (Some(_), Some(i)) = (outer, inner) {
            self.at(
                i,
                format!("{key}: given both beside `check` and inside it; keep one"),
            );
        }
        if outer.is_some() {
            outer
        } else {
            inner
        }
    }

    fn count(&mut self, key: &str, s: &Option<Spanned<u32>>, default: u32) -> u32 {
        let Some(s) = s else { return default };
        if s.value == 0 || s.value > 1000 {
            self.at(
                s,
                format!(
                    "{key}: {} is out of range; use a count from 1 to 1000",
                    s.value
                ),
            );
            return default;
        }
        s.value
    }
}

/// Checks `host:port` (IPv6 in brackets): a non-empty host and a port from 1 to 65535.
pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let hint = "write it as host:port, like 127.0.0.1:7400 or manager-1.example.org:7400";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port; {hint}"));
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} has no valid host part; {hint}"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{s:?}: put an IPv6 address in brackets, like [::1]:7400"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?} has no valid port (1 to 65535); {hint}")),
    }
}

impl AgentConfig {
    /// Parses and validates a configuration file's text; `file_name` is quoted in errors.
    pub fn from_yaml(file_name: &str, text: &str) -> Result<AgentConfig, ConfigErrors> {
        let one = |line: usize, column: usize, message: String| {
            ConfigErrors(vec![ConfigError {
                file: file_name.to_owned(),
                line,
                column,
                message,
            }])
        };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(one(
                1,
                1,
                format!(
                    "the file is {} bytes, more than the {MAX_CONFIG_BYTES} allowed; an agent configuration is a few lines",
                    text.len()
                ),
            ));
        }
        if text.trim().is_empty() {
            return Err(one(
                1,
                1,
                "the file is empty; it needs at least `host:` and `managers:`".into(),
            ));
        }
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((0, 0));
            one(line, column, yaml_message(&e))
        })?;
        let mut c = Checker {
            file: file_name,
            errors: Vec::new(),
        };

        let host = c.host(&raw.host);

        let mut managers = Vec::new();
        if raw.managers.value.is_empty() {
            c.at(
                &raw.managers,
                "managers: the list is empty; name at least one registry manager, like [\"127.0.0.1:7400\"] or [\"dns+srv:_registry._tcp.example.org\"]",
            );
        }
        for m in &raw.managers.value {
            if let Some(name) = m.value.strip_prefix("dns+srv:") {
                if name.is_empty() || name.contains(char::is_whitespace) {
                    c.at(
                        m,
                        format!(
                            "managers: {:?} has no valid DNS name after dns+srv:",
                            m.value
                        ),
                    );
                } else {
                    managers.push(ManagerAddress::DnsSrv(name.to_owned()));
                }
            } else if let Some(a) = c.host_port("managers", m) {
                managers.push(ManagerAddress::HostPort(a));
            }
        }

        let mut dns_servers = Vec::new();
        for d in &raw.dns_servers {
            let text = d.value.trim();
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => dns_servers.push(a),
                None => c.at(
                    d,
                    format!(
                        "dns_servers: {:?} is not an IP address; write a name server as an IP address, with a port when not 53, like \"10.0.0.2\" or \"127.0.0.1:5353\"",
                        d.value
                    ),
                ),
            }
        }

        let data_dir = match &raw.data_dir {
            Some(d) if d.value.trim().is_empty() => {
                c.at(
                    d,
                    "data_dir: is empty; give a directory such as ./agent-data",
                );
                PathBuf::from(DEFAULT_DATA_DIR)
            }
            Some(d) => PathBuf::from(&d.value),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };

        let listen = match &raw.listen {
            Some(l) => c.socket_addr("listen", l),
            None => Some(DEFAULT_LISTEN.parse().expect("default listen address")),
        };

        let http_listen = match &raw.http_listen {
            Some(h) if h.value.trim() == "none" => None,
            Some(h) => match h.value.trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.at(
                        h,
                        format!(
                            "http_listen: {:?} is neither an IP address and port (like {DEFAULT_HTTP_LISTEN}; port 0 picks a free port) nor `none`",
                            h.value
                        ),
                    );
                    None
                }
            },
            None => Some(DEFAULT_HTTP_LISTEN.parse().expect("default HTTP address")),
        };

        let mut packages: Vec<PackageConfig> = Vec::new();
        for p in &raw.packages {
            let pv = &p.value;
            let package_type = c.package_type(&pv.package_type);
            if let Some(t) = &package_type {
                if packages.iter().any(|q| &q.package_type == t) {
                    c.at(
                        &pv.package_type,
                        format!(
                            "type: {t} is listed twice; a host runs at most one package of a type"
                        ),
                    );
                }
            }
            let endpoint = c.host_port("endpoint", &pv.endpoint);
            let check = match (&pv.check.value.tcp, &pv.check.value.grpc_health) {
                (Some(t), None) => c.host_port("check.tcp", t).map(Check::Tcp),
                (None, Some(g)) => c.host_port("check.grpc_health", g).map(Check::GrpcHealth),
                _ => {
                    c.at(
                        &pv.check,
                        "check: give exactly one of `tcp: HOST:PORT` or `grpc_health: HOST:PORT`",
                    );
                    None
                }
            };
            let cv = &pv.check.value;
            let interval = c.either("interval", &pv.interval, &cv.interval).clone();
            let fall = c.either("fall", &pv.fall, &cv.fall).clone();
            let rise = c.either("rise", &pv.rise, &cv.rise).clone();
            let interval = c.duration("interval", &interval, Duration::from_millis(250));
            let fall = c.count("fall", &fall, 3);
            let rise = c.count("rise", &rise, 2);
            if let (Some(package_type), Some(endpoint), Some(check)) =
                (package_type, endpoint, check)
            {
                packages.push(PackageConfig {
                    package_type,
                    endpoint,
                    check,
                    interval,
                    fall,
                    rise,
                });
            }
        }

        let health = match &raw.health {
            None => HealthConfig::default(),
            Some(h) => {
                let d = HealthConfig::default();
                HealthConfig {
                    interval: c.duration("health.interval", &h.interval, d.interval),
                    timeout: c.duration("health.timeout", &h.timeout, d.timeout),
                    fall: c.count("health.fall", &h.fall, d.fall),
                    rise: c.count("health.rise", &h.rise, d.rise),
                    probe: match h.probe.as_ref().map(|p| (p, p.value.as_str())) {
                        None => d.probe,
                        Some((_, "tcp")) => ProbeKind::Tcp,
                        Some((_, "grpc-health" | "grpc_health")) => ProbeKind::GrpcHealth,
                        Some((p, other)) => {
                            c.at(
                                p,
                                format!(
                                    "health.probe: unknown probe {other:?}; use `tcp` or `grpc-health`"
                                ),
                            );
                            d.probe
                        }
                    },
                }
            }
        };

        let mut forward: Vec<ForwardConfig> = Vec::new();
        for f in &raw.forward {
            let package_type = c.package_type(&f.value.package_type);
            let listen_addr = c.socket_addr("forward.listen", &f.value.listen);
            if let Some(t) = &package_type {
                if forward.iter().any(|g| &g.package_type == t) {
                    c.at(
                        &f.value.package_type,
                        format!("type: {t} already has a forward port; keep one"),
                    );
                }
            }
            if let Some(a) = listen_addr {
                let clash = forward.iter().any(|g| g.listen == a && a.port() != 0)
                    || (listen == Some(a) && a.port() != 0);
                if clash {
                    c.at(
                        &f.value.listen,
                        format!("forward.listen: {a} is already used; give each port once"),
                    );
                }
            }
            if let (Some(package_type), Some(listen)) = (package_type, listen_addr) {
                forward.push(ForwardConfig {
                    package_type,
                    listen,
                });
            }
        }

        let (tls, crl) = match raw.tls.as_ref() {
            Some(t) => {
                let t = &t.value;
                let mut path = |key: &str, s: &Spanned<String>| {
                    if s.value.trim().is_empty() {
                        c.at(
                            s,
                            format!("tls.{key}: is empty; give a PEM file (see docs/security.md)"),
                        );
                        None
                    } else {
                        Some(PathBuf::from(&s.value))
                    }
                };
                let (cert, key, ca) = (
                    path("cert", &t.cert),
                    path("key", &t.key),
                    path("ca", &t.ca),
                );
                let crl = t.crl.as_ref().and_then(|s| path("crl", s));
                let files = (|| {
                    Some(proto::tls::TlsFiles {
                        cert: cert?,
                        key: key?,
                        ca: ca?,
                    })
                })();
                (files, crl)
            }
            None => (None, None),
        };

        if !c.errors.is_empty() {
            c.errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(c.errors));
        }
        Ok(AgentConfig {
            host: host.expect("checked"),
            managers,
            dns_servers,
            data_dir,
            listen: listen.expect("checked"),
            packages,
            health,
            forward,
            http_listen,
            tls,
            crl,
        })
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &std::path::Path) -> Result<AgentConfig, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: name.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration file: {e}"),
            }])
        })?;
        AgentConfig::from_yaml(&name, &text)
    }

    /// The configured package of a type, if this host runs one.
    pub fn package(&self, package_type: &str) -> Option<&PackageConfig> {
        self.packages
            .iter()
            .find(|p| p.package_type.as_str() == package_type)
    }
}

/// The YAML error's message without the location suffix the library appends (we print the
/// location in front, `FILE:LINE:COL:`), plus a hint for the common mistakes.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let opts = serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
    };
    let mut msg = e.render_with_options(opts);
    if let Some(l) = e.location() {
        for suffix in [
            format!(" at line {}, column {}", l.line(), l.column()),
            format!(" at {}:{}", l.line(), l.column()),
        ] {
            if let Some(i) = msg.find(&suffix) {
                msg.replace_range(i..i + suffix.len(), "");
            }
        }
    }
    let msg = msg.lines().next().unwrap_or("").trim().to_owned();
    if msg.contains("unknown field") && !msg.contains("expected") {
        format!(
            "{msg}; the keys are host, managers, dns_servers, data_dir, listen, http_listen, packages (type, endpoint, check (tcp or grpc_health), interval, fall, rise), health (probe, interval, timeout, fall, rise), forward (type, listen)"
        )
    } else if msg.starts_with("invalid u32") || msg.starts_with("invalid u64") {
        format!("{msg}: fall and rise are whole numbers of checks, from 1 to 1000")
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"host: agent-4
managers: ["127.0.0.1:7400", "dns+srv:_registry._tcp.example.org"]
data_dir: ./agent-data
listen: 127.0.0.1:7401
packages:
  - type: command-control-manager
    endpoint: 127.0.0.1:7001
    check: { tcp: 127.0.0.1:7001 }
  - type: event-manager
    endpoint: 127.0.0.1:7002
    check: { grpc-health: 127.0.0.1:7002 }
    interval: 100ms
    fall: 5
    rise: 1
health: { interval: 1s, timeout: 500ms, fall: 2, rise: 2 }
forward:
  - type: command-control-manager
    listen: 127.0.0.1:7500
"#;

    #[test]
    fn parses_the_spec_example_with_defaults() {
        let c = AgentConfig::from_yaml("agent.yaml", FULL).unwrap();
        assert_eq!(c.host.as_str(), "agent-4");
        assert_eq!(
            c.managers,
            vec![
                ManagerAddress::HostPort("127.0.0.1:7400".into()),
                ManagerAddress::DnsSrv("_registry._tcp.example.org".into())
            ]
        );
        assert_eq!(c.packages[0].check, Check::Tcp("127.0.0.1:7001".into()));
        assert_eq!(c.packages[0].interval, Duration::from_millis(250));
        assert_eq!((c.packages[0].fall, c.packages[0].rise), (3, 2));
        assert_eq!(
            c.packages[1].check,
            Check::GrpcHealth("127.0.0.1:7002".into())
        );
        assert_eq!(c.packages[1].interval, Duration::from_millis(100));
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.forward[0].listen, "127.0.0.1:7500".parse().unwrap());
    }

    #[test]
    fn tls_takes_an_optional_revocation_list_and_an_empty_one_is_located() {
        let base = "host: a\nmanagers: [\"127.0.0.1:7400\"]\n";
        let tls = "tls: { cert: a.crt, key: a.key, ca: ca.crt";
        let c = AgentConfig::from_yaml("agent.yaml", &format!("{base}{tls} }}\n")).unwrap();
        assert!(c.tls.is_some());
        assert_eq!(c.crl, None);
        let c =
            AgentConfig::from_yaml("agent.yaml", &format!("{base}{tls}, crl: revoked.crl }}\n"))
                .unwrap();
        assert_eq!(c.crl, Some(PathBuf::from("revoked.crl")));
        let e = err(&format!("{base}{tls}, crl: \"\" }}\n"));
        assert!(
            e.starts_with("agent.yaml:3:") && e.contains("tls.crl: is empty"),
            "{e}"
        );
    }

    #[test]
    fn http_listen_is_an_address_or_none() {
        let base = "host: a\nmanagers: [\"127.0.0.1:7400\"]\n";
        let c = AgentConfig::from_yaml("agent.yaml", base).unwrap();
        assert_eq!(c.http_listen, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        let c =
            AgentConfig::from_yaml("agent.yaml", &format!("{base}http_listen: none\n")).unwrap();
        assert_eq!(c.http_listen, None);
        let c = AgentConfig::from_yaml("agent.yaml", &format!("{base}http_listen: 0.0.0.0:9100\n"))
            .unwrap();
        assert_eq!(c.http_listen, Some("0.0.0.0:9100".parse().unwrap()));
        let e = err(&format!("{base}http_listen: metrics.local:80\n"));
        assert!(
            e.starts_with("agent.yaml:3:14: http_listen: \"metrics.local:80\" is neither"),
            "{e}"
        );
    }

    #[test]
    fn dns_servers_take_a_default_port_and_refuse_names() {
        let base = "host: a\nmanagers: [\"dns+srv:_r._tcp.example.org\"]\n";
        let c = AgentConfig::from_yaml("agent.yaml", base).unwrap();
        assert!(c.dns_servers.is_empty());
        let c = AgentConfig::from_yaml(
            "agent.yaml",
            &format!("{base}dns_servers: [\"10.0.0.2\", \"127.0.0.1:5353\", \"[::1]:53\"]\n"),
        )
        .unwrap();
        assert_eq!(
            c.dns_servers,
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        let e = err(&format!("{base}dns_servers: [\"ns1.example.org\"]\n"));
        assert!(
            e.starts_with("agent.yaml:3:15: dns_servers: \"ns1.example.org\" is not an IP address"),
            "{e}"
        );
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let c =
            AgentConfig::from_yaml("a.yaml", "host: fm\nmanagers: [\"127.0.0.1:7400\"]\n").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.packages.is_empty() && c.forward.is_empty());
        let c = AgentConfig::from_yaml(
            "a.yaml",
            "host: fm\nmanagers: [\"127.0.0.1:7400\"]\npackages:\n  - type: x\n    endpoint: a:1\n    check: { grpc_health: a:1 }\n",
        )
        .unwrap();
        assert_eq!(c.packages[0].check, Check::GrpcHealth("a:1".into()));
    }

    fn err(text: &str) -> String {
        AgentConfig::from_yaml("agent.yaml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_key_is_located() {
        let e = err("host: fm\nmanagers: [\"127.0.0.1:7400\"]\nlisen: 127.0.0.1:1\n");
        assert!(e.starts_with("agent.yaml:3:"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_host_name_quotes_name_and_rule() {
        let e = err("host: Agent_4\nmanagers: [\"127.0.0.1:7400\"]\n");
        assert!(
            e.starts_with("agent.yaml:1:7: host: host name \"Agent_4\" is invalid"),
            "{e}"
        );
    }

    #[test]
    fn every_error_is_reported_with_its_place() {
        let e = err(concat!(
            "host: fm\n",
            "managers: [\"nope\"]\n",
            "listen: localhost\n",
            "packages:\n",
            "  - type: Bad\n",
            "    endpoint: 127.0.0.1:7001\n",
            "    check: { tcp: 127.0.0.1:7001, grpc_health: 127.0.0.1:7001 }\n",
            "    interval: 5 seconds\n",
            "    fall: 0\n",
        ));
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        assert!(
            lines[0].starts_with("agent.yaml:2:12: managers: \"nope\" has no port"),
            "{e}"
        );
        assert!(lines[1].starts_with("agent.yaml:3:9: listen:"), "{e}");
        assert!(
            lines[2].starts_with("agent.yaml:5:11: type: package type \"Bad\""),
            "{e}"
        );
        assert!(
            lines[3].starts_with("agent.yaml:7:12: check: give exactly one"),
            "{e}"
        );
        assert!(lines[4].starts_with("agent.yaml:8:15: interval:"), "{e}");
        assert!(
            lines[5].starts_with("agent.yaml:9:11: fall: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn missing_keys_and_empty_file() {
        assert!(err("").contains("the file is empty"));
        let e = err("host: fm\n");
        assert!(e.contains("managers"), "{e}");
        let e = err("host: fm\nmanagers: []\n");
        assert!(
            e.starts_with("agent.yaml:2:11: managers: the list is empty"),
            "{e}"
        );
    }

    #[test]
    fn check_settings_may_sit_inside_check() {
        let c = AgentConfig::from_yaml(
            "a.yaml",
            "host: fm\nmanagers: [\"127.0.0.1:7400\"]\npackages:\n  - type: x\n    endpoint: a:1\n    check: { tcp: \"a:1\", interval: 100ms, fall: 2, rise: 1 }\n",
        )
        .unwrap();
        let p = &c.packages[0];
        assert_eq!(
            (p.interval, p.fall, p.rise),
            (Duration::from_millis(100), 2, 1)
        );
        let e = err("host: fm\nmanagers: [\"127.0.0.1:7400\"]\npackages:\n  - type: x\n    endpoint: a:1\n    check: { tcp: \"a:1\", fall: 2 }\n    fall: 3\n");
        assert!(
            e.contains("agent.yaml:6:") && e.contains("fall: given both"),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let e = err(concat!(
            "host: fm\nmanagers: [\"127.0.0.1:7400\"]\n",
            "packages:\n",
            "  - { type: a, endpoint: \"h:1\", check: { tcp: \"h:1\" } }\n",
            "  - { type: a, endpoint: \"h:2\", check: { tcp: \"h:2\" } }\n",
            "forward:\n",
            "  - { type: a, listen: 127.0.0.1:7500 }\n",
            "  - { type: b, listen: 127.0.0.1:7500 }\n",
        ));
        assert!(
            e.contains("agent.yaml:5:") && e.contains("listed twice"),
            "{e}"
        );
        assert!(
            e.contains("agent.yaml:8:") && e.contains("already used"),
            "{e}"
        );
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let e = err("host: fm\nmanagers: [\"127.0.0.1:7400\"\n");
        assert!(e.starts_with("agent.yaml:"), "{e}");
        assert!(!e.starts_with("agent.yaml:0:0"), "{e}");
    }

    #[test]
    fn host_port_rule() {
        assert!(check_host_port("127.0.0.1:1").is_ok());
        assert!(check_host_port("[::1]:7400").is_ok());
        assert!(check_host_port("m.example.org:7400").is_ok());
        assert!(check_host_port("::1:7400").is_err());
        assert!(check_host_port("h:0").is_err());
        assert!(check_host_port(":80").is_err());
    }
}
