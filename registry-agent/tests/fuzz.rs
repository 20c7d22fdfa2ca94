//! Fuzz-style property tests of the agent's parsers (the security rules): the configuration file
//! (`AgentConfig::from_yaml`) and the wire messages of the watch stream (`RegistryState`,
//! `Delta`, `WatchEvent`) as they enter the registry copy.
//!
//! Contract checked on every input: no panic, no hang (inputs are bounded), configuration
//! errors located as `FILE:LINE:COL` inside the text, a generated valid configuration parses to
//! exactly what was generated, wire entries with names breaking the name rules (docs/topology.md) never reach the copy,
//! and an event that is refused leaves the copy as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use prost::Message;
use proto::v1 as pb;
use registry_agent::config::{ProbeKind, DEFAULT_DATA_DIR, DEFAULT_HTTP_LISTEN};
use registry_agent::registry_copy::{Applied, CopyError, RegistryCopy};
use registry_agent::{
    AgentConfig, Check, ForwardConfig, HealthConfig, ManagerAddress, PackageConfig,
};
use topology::{HostName, PackageType, Topology};

const FILE: &str = "agent.yaml";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are turned into named regression tests, not persisted files.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ----- configuration: checks ---------------------------------------------------------------

/// The configuration parser's contract on any text.
fn check_config(text: &str) -> Option<AgentConfig> {
    match AgentConfig::from_yaml(FILE, text) {
        Ok(c) => {
            // What parsed must parse again, identically, from its own rendering.
            let again =
                AgentConfig::from_yaml("again.yaml", &render_block(&c)).unwrap_or_else(|e| {
                    panic!("rendering of a parsed config does not parse: {e}\ninput: {text:?}")
                });
            assert_eq!(again, c, "input: {text:?}");
            Some(c)
        }
        Err(errors) => {
            let lines = text.bytes().filter(|&b| b == b'\n' || b == b'\r').count() + 1;
            let mut count = 0;
            for e in errors.iter() {
                count += 1;
                let shown = e.to_string();
                assert_eq!(e.file, FILE);
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "line {} outside 1..={lines}: {shown}\ninput: {text:?}",
                    e.line
                );
                assert!(
                    e.column >= 1 && e.column <= text.len() + 1,
                    "column {} outside the text: {shown}\ninput: {text:?}",
                    e.column
                );
                assert!(
                    !e.message.trim().is_empty(),
                    "empty message\ninput: {text:?}"
                );
                assert!(!e.message.contains('\n'), "message spans lines: {shown:?}");
                assert!(shown.starts_with(&format!("{FILE}:{}:{}: ", e.line, e.column)));
            }
            assert!(count > 0, "an error result without errors: {text:?}");
            None
        }
    }
}

/// A YAML double-quoted scalar that reads back as `s` whatever it holds.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' => out.push(c),
            '\u{ff00}'..='\u{fffd}' => out.push(c),
            c if c >= '\u{10000}' => out.push(c),
            c => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The configuration in block style, every value written out (defaults included).
fn render_block(c: &AgentConfig) -> String {
    let mut out = format!("host: {}\nmanagers:\n", q(c.host.as_str()));
    for m in &c.managers {
        out.push_str(&format!("  - {}\n", q(&m.to_string())));
    }
    out.push_str(&format!(
        "data_dir: {}\nlisten: {}\n",
        q(&c.data_dir.to_string_lossy()),
        q(&c.listen.to_string())
    ));
    if !c.packages.is_empty() {
        out.push_str("packages:\n");
    }
    for p in &c.packages {
        let (kind, addr) = match &p.check {
            Check::Tcp(a) => ("tcp", a),
            Check::GrpcHealth(a) => ("grpc_health", a),
        };
        out.push_str(&format!(
            "  - type: {}\n    endpoint: {}\n    check:\n      {kind}: {}\n    interval: {}\n    fall: {}\n    rise: {}\n",
            q(p.package_type.as_str()),
            q(&p.endpoint),
            q(addr),
            ms(p.interval),
            p.fall,
            p.rise
        ));
    }
    let h = &c.health;
    let probe = match h.probe {
        ProbeKind::Tcp => "tcp",
        ProbeKind::GrpcHealth => "grpc-health",
    };
    out.push_str(&format!(
        "health:\n  probe: {probe}\n  interval: {}\n  timeout: {}\n  fall: {}\n  rise: {}\n",
        ms(h.interval),
        ms(h.timeout),
        h.fall,
        h.rise
    ));
    if !c.forward.is_empty() {
        out.push_str("forward:\n");
    }
    for f in &c.forward {
        out.push_str(&format!(
            "  - type: {}\n    listen: {}\n",
            q(f.package_type.as_str()),
            q(&f.listen.to_string())
        ));
    }
    out
}

/// The same configuration as one JSON line (JSON is YAML), settings placed inside `check` and
/// the `grpc-health` alias used: a second spelling that must give the same value.
fn render_flow(c: &AgentConfig) -> String {
    use serde_json::json;
    let packages: Vec<_> = c
        .packages
        .iter()
        .map(|p| {
            let check = match &p.check {
                Check::Tcp(a) => json!({ "tcp": a, "interval": ms(p.interval), "fall": p.fall }),
                Check::GrpcHealth(a) => {
                    json!({ "grpc-health": a, "interval": ms(p.interval), "fall": p.fall })
                }
            };
            json!({ "type": p.package_type.as_str(), "endpoint": p.endpoint, "check": check, "rise": p.rise })
        })
        .collect();
    let forward: Vec<_> = c
        .forward
        .iter()
        .map(|f| json!({ "type": f.package_type.as_str(), "listen": f.listen.to_string() }))
        .collect();
    let v = json!({
        "host": c.host.as_str(),
        "managers": c.managers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "data_dir": c.data_dir.to_string_lossy(),
        "listen": c.listen.to_string(),
        "packages": packages,
        "health": {
            "probe": match c.health.probe { ProbeKind::Tcp => "tcp", ProbeKind::GrpcHealth => "grpc_health" },
            "interval": ms(c.health.interval), "timeout": ms(c.health.timeout),
            "fall": c.health.fall, "rise": c.health.rise,
        },
        "forward": forward,
    });
    // JSON leaves some characters raw that YAML refuses; escape them.
    serde_json::to_string(&v)
        .unwrap()
        .chars()
        .map(|c| match c {
            '\u{7f}'..='\u{9f}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                format!("\\u{:04x}", c as u32)
            }
            c => c.to_string(),
        })
        .collect()
}

// ----- configuration: generators -----------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9][a-z0-9._-]{0,12}",
        2 => prop::sample::select(vec!["10", "1e3", "true", "null", "no", "y", "0x1f", "1.5", "inf"])
            .prop_map(String::from),
        1 => "[a-z0-9][a-z0-9._-]{50,62}",
    ]
}

fn host_port() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}", 1u16..)
            .prop_map(|(h, p)| format!("{h}:{p}")),
        ("[a-z][a-z0-9.-]{0,20}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
        (1u16..).prop_map(|p| format!("[::1]:{p}")),
        ("[^\\s:]{1,10}", 1u16..).prop_map(|(h, p)| format!("{h}:{p}")),
    ]
}

fn manager() -> impl Strategy<Value = ManagerAddress> {
    prop_oneof![
        3 => host_port().prop_map(ManagerAddress::HostPort),
        1 => "[_a-z0-9.-]{1,30}".prop_map(ManagerAddress::DnsSrv),
        1 => "[^\\s]{1,12}".prop_map(ManagerAddress::DnsSrv),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        3 => any::<u16>().prop_map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        1 => (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
        1 => (any::<[u16; 8]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..100_000).prop_map(Duration::from_millis),
        (1u64..1_000).prop_map(Duration::from_secs),
        Just(Duration::from_millis(u64::MAX)),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=1000, Just(1), Just(1000)]
}

fn package() -> impl Strategy<Value = PackageConfig> {
    (
        name(),
        host_port(),
        any::<bool>(),
        host_port(),
        duration(),
        count(),
        count(),
    )
        .prop_map(
            |(t, endpoint, tcp, addr, interval, fall, rise)| PackageConfig {
                package_type: PackageType::new(t).unwrap(),
                endpoint,
                check: if tcp {
                    Check::Tcp(addr)
                } else {
                    Check::GrpcHealth(addr)
                },
                interval,
                fall,
                rise,
            },
        )
}

fn agent_config() -> impl Strategy<Value = AgentConfig> {
    (
        name(),
        prop::collection::vec(manager(), 1..4),
        prop::option::of("[^\\s\\x00][^\\x00]{0,20}"),
        socket_addr(),
        prop::collection::vec(package(), 0..4),
        (duration(), duration(), count(), count(), any::<bool>()),
        prop::collection::vec((name(), socket_addr()), 0..4),
    )
        .prop_map(|(host, managers, data_dir, listen, packages, h, forward)| {
            let mut seen = BTreeSet::new();
            let packages = packages
                .into_iter()
                .filter(|p| seen.insert(p.package_type.clone()))
                .collect();
            let mut types = BTreeSet::new();
            let mut ports = BTreeSet::from([listen]);
            let forward = forward
                .into_iter()
                .filter(|(t, a)| types.insert(t.clone()) && (a.port() == 0 || ports.insert(*a)))
                .map(|(t, listen)| ForwardConfig {
                    package_type: PackageType::new(t).unwrap(),
                    listen,
                })
                .collect();
            AgentConfig {
                host: HostName::new(host).unwrap(),
                managers,
                // Not rendered: the default.
                dns_servers: Vec::new(),
                data_dir: PathBuf::from(data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())),
                listen,
                packages,
                health: HealthConfig {
                    interval: h.0,
                    timeout: h.1,
                    fall: h.2,
                    rise: h.3,
                    probe: if h.4 {
                        ProbeKind::GrpcHealth
                    } else {
                        ProbeKind::Tcp
                    },
                },
                forward,
                // Not rendered: the default.
                http_listen: Some(DEFAULT_HTTP_LISTEN.parse().unwrap()),
                tls: None,
                crl: None,
            }
        })
}

// ----- mutations ---------------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            ":", ": ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: *a", "!!str ", "!!int ",
            "!!binary ", "? ", "|", ">", "#", "\"", "'", "\t", "\0", "\r", "\n", "---\n", "...",
            "%YAML 1.2\n", "\u{feff}", "\\", "~", "null", "true", "-1", "0", "1001", "4294967296",
            "1e9", "0x10", "0o7", ".inf", "99999999999999999999999", "host: x", "managers: []",
            "listen: 127.0.0.1:0", "type: t", "tcp: a:1", "grpc_health: a:1", "interval: 0s",
            "fall: 0", "rise: 5000", "health:", "probe: udp", "forward:", "packages:", "dns+srv:", "[::1]:",
            ":0", ":65536", " ", "é", "\u{1F600}",
        ])
        .prop_map(String::from),
        2 => "[ -~]{1,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, u8),
    Dedent(usize, u8),
    TabIndent(usize),
    Insert(usize, String),
    Truncate(usize),
    FlipByte(usize, u8),
    RandomBytes(usize, Vec<u8>),
    Nest(usize, u16, u8),
    HugeScalar(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<usize>();
    prop_oneof![
        3 => i.prop_map(Mutation::DeleteLine),
        3 => i.prop_map(Mutation::DuplicateLine),
        3 => (i, any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (i, 1u8..6).prop_map(|(a, n)| Mutation::Indent(a, n)),
        2 => (i, 1u8..6).prop_map(|(a, n)| Mutation::Dedent(a, n)),
        1 => i.prop_map(Mutation::TabIndent),
        6 => (i, token()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        1 => i.prop_map(Mutation::Truncate),
        2 => (i, any::<u8>()).prop_map(|(a, b)| Mutation::FlipByte(a, b)),
        2 => (i, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Mutation::RandomBytes(a, b)),
        1 => (i, 1u16..400, 0u8..4).prop_map(|(a, n, k)| Mutation::Nest(a, n, k)),
        1 => (i, 1u32..200_000).prop_map(|(a, n)| Mutation::HugeScalar(a, n)),
    ]
}

fn char_boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    let insert = |at: usize, what: &str| {
        let mut s = text.to_owned();
        s.insert_str(char_boundary(text, at), what);
        s
    };
    match m {
        Mutation::DeleteLine(a) => {
            lines.remove(a % n);
        }
        Mutation::DuplicateLine(a) => {
            let l = lines[a % n].clone();
            lines.insert(a % n, l);
        }
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::Indent(a, k) => lines[a % n].insert_str(0, &" ".repeat(*k as usize)),
        Mutation::Dedent(a, k) => {
            let l = &mut lines[a % n];
            let cut = l.len() - l.trim_start_matches(' ').len();
            l.drain(..cut.min(*k as usize));
        }
        Mutation::TabIndent(a) => {
            let l = &mut lines[a % n];
            let cut = l.len() - l.trim_start_matches(' ').len();
            l.replace_range(..cut, &"\t".repeat(cut.div_ceil(2).max(1)));
        }
        Mutation::Insert(a, t) => return insert(*a, t),
        Mutation::Truncate(a) => return text[..char_boundary(text, *a)].to_owned(),
        Mutation::FlipByte(a, b) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = a % bytes.len();
                bytes[i] ^= b | 1;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::RandomBytes(a, r) => {
            let mut bytes = text.as_bytes().to_vec();
            let i = a % (bytes.len() + 1);
            bytes.splice(i..i, r.iter().copied());
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Nest(a, depth, kind) => {
            let d = *depth as usize;
            let nest = match kind {
                0 => format!("{}{}", "[".repeat(d), "]".repeat(d)),
                1 => format!("{}{}", "{a: ".repeat(d), "}".repeat(d)),
                2 => "- ".repeat(d),
                _ => (0..d)
                    .map(|i| format!("\n{}k:", " ".repeat(i + 1)))
                    .collect(),
            };
            return insert(*a, &nest);
        }
        Mutation::HugeScalar(a, len) => return insert(*a, &"z".repeat(*len as usize)),
    }
    lines.join("\n")
}

const DOC_CONFIG: &str = r#"host: agent-4
managers: ["127.0.0.1:7400", "dns+srv:_registry._tcp.example.org"]
data_dir: ./agent-data
listen: 127.0.0.1:7401
packages:
  - type: command-control-manager
    endpoint: 127.0.0.1:7001
    check: { tcp: 127.0.0.1:7001 }
  - type: event-manager
    endpoint: 127.0.0.1:7002
    check: { grpc-health: 127.0.0.1:7002, interval: 100ms }
    fall: 5
    rise: 1
health: { interval: 1s, timeout: 500ms, fall: 2, rise: 2 }
forward:
  - type: command-control-manager
    listen: 127.0.0.1:7500
"#;

fn config_corpus() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(DOC_CONFIG.to_owned()),
        3 => agent_config().prop_map(|c| render_block(&c)),
        1 => agent_config().prop_map(|c| render_flow(&c)),
    ]
}

// ----- configuration: properties -----------------------------------------------------------

#[test]
fn spec_config_parses() {
    let c = check_config(DOC_CONFIG).expect("the documented example parses");
    assert_eq!(c.packages.len(), 2);
    assert_eq!(c.packages[1].interval, Duration::from_millis(100));
}

proptest! {
    #![proptest_config(config(400))]

    /// Generated configurations parse to exactly themselves, in block and in flow style.
    #[test]
    fn generated_configs_round_trip(c in agent_config()) {
        for text in [render_block(&c), render_flow(&c)] {
            match AgentConfig::from_yaml(FILE, &text) {
                Ok(parsed) => prop_assert_eq!(&parsed, &c, "{}", text),
                Err(e) => panic!("a valid configuration is refused:\n{e}\n---\n{text}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(800))]

    #[test]
    fn mutated_configs_never_panic(base in config_corpus(), edits in prop::collection::vec(mutation(), 1..6)) {
        let mut text = base;
        for m in &edits {
            text = mutate(&text, m);
        }
        check_config(&text);
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn random_config_text_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..512), tokens in prop::collection::vec(token(), 0..40)) {
        check_config(&text);
        check_config(&String::from_utf8_lossy(&bytes));
        check_config(&tokens.concat());
        check_config(&format!("host: fm\nmanagers: [\"a:1\"]\n{}", tokens.concat()));
    }
}

#[test]
fn config_edge_cases_are_located_errors() {
    let long = "a".repeat(200_000);
    let base = "host: fm\nmanagers: [\"127.0.0.1:7400\"]\n";
    let mut bomb = String::from(base);
    bomb.push_str("x0: &a0 [lol, lol]\n");
    for i in 1..30 {
        let p = i - 1;
        bomb.push_str(&format!("x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let mut managers_bomb = String::from("host: fm\nm0: &a0 [\"a:1\", \"a:1\"]\n");
    for i in 1..25 {
        let p = i - 1;
        managers_bomb.push_str(&format!("m{i}: &a{i} [*a{p}, *a{p}]\n"));
    }
    managers_bomb.push_str("managers: *a24\n");
    let cases = [
        format!("host: {long}\nmanagers: [\"a:1\"]\n"),
        format!("{base}listen: {long}\n"),
        format!("{base}{long}: 1\n"),
        format!("{base}health: {{fall: {}}}\n", "9".repeat(10_000)),
        format!("{base}health: {{interval: {}s}}\n", "9".repeat(10_000)),
        format!(
            "{base}packages: {}{}\n",
            "[".repeat(20_000),
            "]".repeat(20_000)
        ),
        format!("{base}packages: {}\n", "{a: ".repeat(20_000)),
        format!("{base}packages: {}a\n", "- ".repeat(20_000)),
        format!("{base}health: {}\n", "? ".repeat(20_000)),
        "[".repeat(20_000),
        format!("{base}health: {{fall: -1}}\n"),
        format!("{base}health: {{fall: 4294967296}}\n"),
        format!("{base}health: {{fall: 1.5}}\n"),
        format!("{base}health: {{interval: 18446744073709551616ms}}\n"),
        format!("{base}health: {{interval: 18446744073709551615h}}\n"),
        format!("{base}host: fm\n"),
        format!("{base}---\n{base}"),
        format!("{base}listen: 127.0.0.1:7401\nforward: [{{type: a, listen: 127.0.0.1:7401}}]\n"),
        "host: fm\0\nmanagers: [\"a:1\"]\n".to_owned(),
        "host: fm\nmanagers: \"a:1\"\n".to_owned(),
        "host: [fm]\nmanagers: [\"a:1\"]\n".to_owned(),
        "host: fm\nmanagers: [[\"a:1\"]]\n".to_owned(),
        "host: fm\nmanagers: [\"dns+srv:\"]\n".to_owned(),
        "host: fm\nmanagers: [\"[::1:7400\"]\n".to_owned(),
        "host: fm\nmanagers: [\"a:1\"]\npackages: [{type: t}]\n".to_owned(),
        "host: fm\nmanagers: [\"a:1\"]\npackages: [{type: t, endpoint: \"a:1\", check: {}}]\n"
            .to_owned(),
        "managers: [\"a:1\"]\n".to_owned(),
        "host: fm\n".to_owned(),
        "[]".to_owned(),
        "42".to_owned(),
        "~".to_owned(),
        "---\n...\n".to_owned(),
        "# only a comment\n".to_owned(),
        bomb,
        managers_bomb,
    ];
    for text in &cases {
        if let Some(c) = check_config(text) {
            panic!("accepted {:?} as {c:?}", &text[..text.len().min(200)]);
        }
    }
}

// ----- wire messages -----------------------------------------------------------------------

const TOPO: &str = "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2]\n";

/// Host and package names as they may come off the wire: mostly valid, often not.
fn wire_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        1 => Just(String::new()),
        1 => prop::sample::select(vec!["Agent-1", "a b", "-x", ".x", "a/b", "é", "a\0", "x:y", "A"])
            .prop_map(String::from),
        1 => "[a-z0-9]{64,70}",
        1 => any::<String>().prop_map(|s| s.chars().take(10).collect()),
    ]
}

fn wire_package() -> impl Strategy<Value = pb::Package> {
    (
        wire_name(),
        any::<String>(),
        prop_oneof![0i32..8, any::<i32>()],
    )
        .prop_map(|(t, endpoint, status)| pb::Package {
            r#type: t,
            endpoint: endpoint.chars().take(20).collect(),
            status,
        })
}

fn wire_host() -> impl Strategy<Value = pb::HostEntry> {
    (
        wire_name(),
        any::<bool>(),
        prop::collection::vec(wire_package(), 0..4),
    )
        .prop_map(|(host, alive, packages)| pb::HostEntry {
            host,
            alive,
            packages,
        })
}

fn wire_topology() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(TOPO.to_owned()),
        1 => Just(String::new()),
        1 => Just("version: 1\ndomain: Bad\n".to_owned()),
        1 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
    ]
}

fn wire_state() -> impl Strategy<Value = pb::RegistryState> {
    (
        any::<u64>(),
        wire_topology(),
        prop::collection::vec(wire_host(), 0..8),
    )
        .prop_map(|(revision, topology_yaml, hosts)| pb::RegistryState {
            revision,
            topology_yaml,
            hosts,
        })
}

fn wire_status_change() -> impl Strategy<Value = pb::StatusChange> {
    (wire_name(), wire_name(), -2i32..9).prop_map(|(host, r#type, status)| pb::StatusChange {
        host,
        r#type,
        status,
    })
}

fn wire_delta() -> impl Strategy<Value = pb::Delta> {
    (
        0u64..12,
        prop::collection::vec(wire_host(), 0..6),
        prop::collection::vec(wire_name(), 0..4),
        prop::option::of(wire_topology()),
        prop::collection::vec(wire_status_change(), 0..3),
        prop::collection::vec(wire_name(), 0..2),
    )
        .prop_map(
            |(revision, upserts, removed_hosts, topology_yaml, status_changes, lapsed_hosts)| {
                pb::Delta {
                    revision,
                    upserts,
                    removed_hosts,
                    topology_yaml,
                    status_changes,
                    lapsed_hosts,
                }
            },
        )
}

/// Byte-level damage to an encoding.
fn damage(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, value, kind) in edits {
        let i = at % (bytes.len() + 1);
        match kind % 4 {
            0 if i < bytes.len() => bytes[i] ^= value | 1,
            1 => bytes.insert(i, value),
            2 if i < bytes.len() => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
    }
    bytes
}

/// What the copy must hold after taking in these wire entries: the valid names, the last entry
/// of each, with only its validly named packages.
fn expected_hosts(entries: &[pb::HostEntry]) -> BTreeMap<String, (bool, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for e in entries {
        if HostName::new(e.host.as_str()).is_ok() {
            let types = e
                .packages
                .iter()
                .filter(|p| PackageType::new(p.r#type.as_str()).is_ok())
                .map(|p| p.r#type.clone())
                .collect();
            out.insert(e.host.clone(), (e.alive, types));
        }
    }
    out
}

fn copy_hosts(c: &RegistryCopy) -> BTreeMap<String, (bool, BTreeSet<String>)> {
    c.snapshot
        .hosts
        .iter()
        .map(|(h, s)| {
            (
                h.to_string(),
                (
                    s.alive,
                    s.packages.keys().map(ToString::to_string).collect(),
                ),
            )
        })
        .collect()
}

/// Checks a copy built from a state against the state.
fn check_from_state(state: &pb::RegistryState) -> RegistryCopy {
    let copy = RegistryCopy::from_state(state);
    assert_eq!(copy.revision(), state.revision);
    assert_eq!(copy_hosts(&copy), expected_hosts(&state.hosts));
    let parses = !state.topology_yaml.trim().is_empty()
        && Topology::from_yaml("t", &state.topology_yaml).is_ok();
    assert_eq!(copy.topology.is_some(), parses);
    // The copy's own wire form reads back to the same copy.
    let again = RegistryCopy::from_state(&copy.to_state());
    assert_eq!(again.snapshot, copy.snapshot);
    assert_eq!(again.topology_yaml, copy.topology_yaml);
    copy
}

/// Applies a delta and checks the outcome against the rule of `apply_delta`.
fn check_delta(copy: &mut RegistryCopy, delta: &pb::Delta) {
    let before = copy.clone();
    let have = before.revision();
    match copy.apply_delta(delta) {
        Ok(Applied::Ignored) => {
            assert!(delta.revision <= have);
            assert_eq!(copy.to_state(), before.to_state());
        }
        Ok(Applied::Delta) => {
            assert_eq!(delta.revision, have + 1);
            assert_eq!(copy.revision(), delta.revision);
            let upserted = expected_hosts(&delta.upserts);
            let now = copy_hosts(copy);
            for (h, v) in &upserted {
                assert_eq!(now.get(h), Some(v), "upsert of {h:?} missing");
            }
            for h in &delta.removed_hosts {
                if !upserted.contains_key(h) {
                    assert!(!now.contains_key(h), "{h:?} was removed");
                }
            }
            for h in now.keys() {
                assert!(HostName::new(h.as_str()).is_ok());
            }
            // Each status change (the last one of a package wins) is what the copy now holds.
            let mut last = std::collections::BTreeMap::new();
            for c in &delta.status_changes {
                last.insert((c.host.clone(), c.r#type.clone()), c.status);
            }
            let whole = |h: &str| delta.upserts.iter().any(|u| u.host == h);
            for h in delta.lapsed_hosts.iter().filter(|h| !whole(h)) {
                if let Some(e) = copy.snapshot.hosts.get(h.as_str()) {
                    assert!(!e.alive, "{h:?} lapsed");
                }
            }
            for ((h, t), status) in last.into_iter().filter(|((h, _), _)| !whole(h)) {
                let held = copy
                    .snapshot
                    .hosts
                    .get(h.as_str())
                    .and_then(|e| e.packages.get(t.as_str()));
                if let Some(p) = held {
                    assert_eq!(
                        p.status,
                        registry_agent::registry_copy::status_from_wire(status)
                    );
                }
            }
        }
        Ok(Applied::Snapshot) => panic!("a delta replaced the copy"),
        Err(CopyError::Gap { have: h, got }) => {
            assert_eq!((h, got), (have, delta.revision));
            // A revision skipped, or a status change of a package the copy does not hold.
            let whole = |h: &str| delta.upserts.iter().any(|u| u.host == h);
            let unknown = delta.status_changes.iter().any(|c| {
                !whole(&c.host)
                    && !before
                        .snapshot
                        .hosts
                        .get(c.host.as_str())
                        .is_some_and(|e| e.packages.contains_key(c.r#type.as_str()))
            }) || delta
                .lapsed_hosts
                .iter()
                .any(|h| !whole(h) && !before.snapshot.hosts.contains_key(h.as_str()));
            assert!(got > have + 1 || unknown);
            assert_eq!(
                copy.to_state(),
                before.to_state(),
                "a refused delta changed the copy"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Feeds one watch event; a refused event must leave the copy as it was.
fn check_event(copy: &mut RegistryCopy, event: &pb::WatchEvent) {
    let before = copy.to_state();
    if let Err(e) = copy.apply_event(event) {
        assert!(!e.to_string().is_empty());
        assert_eq!(
            copy.to_state(),
            before,
            "a refused event ({e}) changed the copy"
        );
    }
    for h in copy.snapshot.hosts.keys() {
        assert!(HostName::new(h.as_str()).is_ok());
    }
}

fn base_copy() -> RegistryCopy {
    RegistryCopy::from_state(&pb::RegistryState {
        revision: 5,
        topology_yaml: TOPO.to_owned(),
        hosts: vec![pb::HostEntry {
            host: "fm".into(),
            alive: true,
            packages: vec![pb::Package {
                r#type: "ccm".into(),
                endpoint: "127.0.0.1:7001".into(),
                status: pb::PackageStatus::Running as i32,
            }],
        }],
    })
}

proptest! {
    #![proptest_config(config(400))]

    /// Structured wire messages with bad names, unknown statuses and broken topologies.
    #[test]
    fn wire_states_and_deltas_convert_safely(state in wire_state(), deltas in prop::collection::vec(wire_delta(), 0..6)) {
        let decoded = pb::RegistryState::decode(state.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(&decoded, &state);
        let mut copy = check_from_state(&state);
        let mut from_base = base_copy();
        for d in &deltas {
            check_delta(&mut copy, d);
            check_delta(&mut from_base, d);
        }
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    /// Random and damaged bytes as watch payloads and events.
    #[test]
    fn random_wire_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        state in wire_state(),
        delta in wire_delta(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let damaged_state = damage(state.encode_to_vec(), &edits);
        let damaged_delta = damage(delta.encode_to_vec(), &edits);
        for b in [&bytes, &damaged_state, &damaged_delta] {
            if let Ok(s) = pb::RegistryState::decode(b.as_slice()) {
                check_from_state(&s);
            }
            if let Ok(d) = pb::Delta::decode(b.as_slice()) {
                check_delta(&mut base_copy(), &d);
            }
            let mut copy = base_copy();
            for payload in [
                pb::watch_event::Payload::Snapshot(b.clone().into()),
                pb::watch_event::Payload::Delta(b.clone().into()),
            ] {
                check_event(&mut copy, &pb::WatchEvent { revision: 6, payload: Some(payload), more: false, history: String::new() });
            }
            if let Ok(ev) = pb::WatchEvent::decode(b.as_slice()) {
                check_event(&mut base_copy(), &ev);
            }
        }
    }
}

#[test]
fn hostile_encodings_are_decode_errors() {
    let mut copy = base_copy();
    let mut cases: Vec<Vec<u8>> = vec![
        // Field 3 (hosts), length-delimited, with a length far past the end.
        vec![
            0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        // An over-long varint.
        vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        // Wire type 7 does not exist.
        vec![0x0f],
        // Field number 0.
        vec![0x00, 0x01],
        // A string that is not UTF-8.
        vec![0x12, 0x02, 0xff, 0xfe],
        // A host entry whose name is not UTF-8.
        vec![0x1a, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        // An end-group without a start.
        vec![0x0c],
    ];
    // Unknown groups nested far beyond any recursion limit.
    cases.push([vec![0x5b; 100_000], vec![0x5c; 100_000]].concat());
    cases.push(vec![0x5b; 100_000]);
    // Unknown length-delimited fields nested in the host entry, deeply.
    let mut nested = vec![0x0a, 0x01, b'a'];
    for _ in 0..2_000 {
        let mut outer = vec![0x1a];
        prost::encoding::encode_varint(nested.len() as u64, &mut outer);
        outer.extend_from_slice(&nested);
        nested = outer;
    }
    cases.push(nested);
    for b in &cases {
        let _ = pb::RegistryState::decode(b.as_slice());
        let _ = pb::Delta::decode(b.as_slice());
        let _ = pb::WatchEvent::decode(b.as_slice());
        check_event(
            &mut copy,
            &pb::WatchEvent {
                revision: 6,
                payload: Some(pb::watch_event::Payload::Snapshot(b.clone().into())),
                more: false,
                history: String::new(),
            },
        );
    }
    for b in &cases[..7] {
        assert!(pb::RegistryState::decode(b.as_slice()).is_err(), "{b:x?}");
    }
}

#[test]
fn bad_names_on_the_wire_never_reach_the_copy() {
    let state = pb::RegistryState {
        revision: 9,
        topology_yaml: TOPO.to_owned(),
        hosts: ["Agent-1", "", "a b", &"a".repeat(64), "ok-1"]
            .into_iter()
            .map(|h| pb::HostEntry {
                host: h.to_owned(),
                alive: true,
                packages: vec![
                    pb::Package {
                        r#type: "Bad Type".into(),
                        endpoint: "x:1".into(),
                        status: 2,
                    },
                    pb::Package {
                        r#type: "good".into(),
                        endpoint: "x:1".into(),
                        status: 99,
                    },
                ],
            })
            .collect(),
    };
    let copy = check_from_state(&state);
    assert_eq!(copy.snapshot.hosts.len(), 1);
    let ok = &copy.snapshot.hosts["ok-1"];
    assert_eq!(ok.packages.len(), 1);
    // An unknown status number is never routable.
    assert_eq!(ok.packages["good"].status, topology::PackageStatus::Stopped);
}
