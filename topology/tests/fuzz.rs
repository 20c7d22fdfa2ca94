//! Fuzz-style property tests of the two parsers of this crate (the security rules): the topology file
//! (`Topology::from_yaml`) and the registry snapshot (`RegistrySnapshot::parse`).
//!
//! Every input, however broken, must give either a value or located errors — never a panic and
//! never a hang (inputs are bounded). Errors carry `FILE:LINE:COL` with a line and column inside
//! the text, and a one-line message. Every generated valid input round-trips through the
//! canonical writers (`to_yaml`, `to_json`).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use topology::{
    DomainId, DomainName, HostName, HostState, PackageState, PackageStatus, PackageType,
    RegistrySnapshot, RevertAfter, Revision, RoutingPolicy, Topology, TopologyBuilder,
};

const FILE: &str = "fuzz.yaml";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are turned into named regression tests below, not persisted files.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ----- checks ------------------------------------------------------------------------------

/// Upper bounds for a location inside `text`: lines (counting CR, LF and CRLF generously) and
/// characters.
fn bounds(text: &str) -> (usize, usize) {
    let lines = text.bytes().filter(|&b| b == b'\n' || b == b'\r').count() + 1;
    // Columns count characters (YAML) or bytes (JSON): bound by bytes.
    (lines, text.len() + 1)
}

fn assert_located(file: &str, line: usize, column: usize, message: &str, shown: &str, text: &str) {
    let (max_line, max_col) = bounds(text);
    assert!(
        line >= 1 && line <= max_line,
        "line {line} outside 1..={max_line}: {shown}\ninput: {text:?}"
    );
    assert!(
        column >= 1 && column <= max_col,
        "column {column} outside 1..={max_col}: {shown}\ninput: {text:?}"
    );
    assert!(
        !message.trim().is_empty(),
        "empty message: {shown}\ninput: {text:?}"
    );
    assert!(
        !message.contains('\n'),
        "message spans lines: {shown:?}\ninput: {text:?}"
    );
    let prefix = format!("{file}:{line}:{column}: ");
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} does not start with {prefix:?}"
    );
}

/// The topology parser's contract on any text.
fn check_topology(text: &str) -> Option<Topology> {
    match Topology::from_yaml(FILE, text) {
        Ok(t) => {
            assert_round_trip(&t);
            Some(t)
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "an error result without errors: {text:?}"
            );
            for e in errors.iter() {
                assert_eq!(e.file, FILE);
                assert_located(FILE, e.line, e.column, &e.message, &e.to_string(), text);
            }
            // Display: one error per line.
            assert_eq!(errors.to_string().lines().count(), errors.len());
            None
        }
    }
}

/// `from_yaml(to_yaml(t)) == t`, and the canonical form is a fixed point.
fn assert_round_trip(t: &Topology) {
    let text = t.to_yaml();
    let again = match Topology::from_yaml("canonical.yaml", &text) {
        Ok(a) => a,
        Err(e) => panic!("canonical YAML does not parse:\n{e}\n---\n{text}"),
    };
    assert!(again == *t, "round trip changed the topology:\n{text}");
    assert_eq!(again.to_yaml(), text, "to_yaml is not a fixed point");
}

/// The snapshot parser's contract on any text.
fn check_snapshot(text: &str) -> Option<RegistrySnapshot> {
    match RegistrySnapshot::parse(FILE, text) {
        Ok(s) => {
            assert_snapshot_round_trip(&s);
            Some(s)
        }
        Err(e) => {
            assert_eq!(e.file, FILE);
            assert_located(FILE, e.line, e.column, &e.message, &e.to_string(), text);
            None
        }
    }
}

fn assert_snapshot_round_trip(s: &RegistrySnapshot) {
    let y = s.to_yaml();
    match RegistrySnapshot::parse("canonical.yaml", &y) {
        Ok(a) => assert_eq!(&a, s, "YAML round trip changed the snapshot:\n{y}"),
        Err(e) => panic!("canonical snapshot YAML does not parse: {e}\n---\n{y}"),
    }
    let j = s.to_json();
    match RegistrySnapshot::parse("canonical.json", &j) {
        Ok(a) => assert_eq!(&a, s, "JSON round trip changed the snapshot:\n{j}"),
        Err(e) => panic!("canonical snapshot JSON does not parse: {e}\n---\n{j}"),
    }
}

// ----- generators --------------------------------------------------------------------------

/// Valid names, with a bias towards the ones YAML would type as something else if unquoted.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9][a-z0-9._-]{0,12}",
        2 => prop::sample::select(vec![
            "10", "007", "1e3", "0x1f", "0o17", "1.5", "1_000", "1-2", "true", "false", "null",
            "no", "yes", "y", "n", "on", "off", "nan", "inf", "e", "a.", "x..y", "a-", "0",
            "9.9.9", "1.0e-5", "t", "f", "tilde", "a_b",
        ])
        .prop_map(String::from),
        1 => "[a-z0-9][a-z0-9._-]{50,62}",
    ]
}

/// Informational addresses: any text, including characters YAML treats specially.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        3 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        3 => prop::collection::vec(
            prop::sample::select(vec![
                "", " ", "\t", "\n", "\r", "\r\n", "\0", "\u{7}", "\u{1b}", "\u{7f}", "\u{85}",
                "\u{a0}", "\u{feff}", "\u{fffe}", "\u{2028}", "\u{2029}", "\u{1F600}", "#", ": ",
                "- ", "&a", "*a", "!", "%", "@", "`", "'", "\"", "\\", "{", "}", "[", "]", ",",
                "?", "|", ">", "---", "...", "~", "null", "true", "10", "é", "x",
            ]),
            0..8,
        )
        .prop_map(|v| v.concat()),
    ]
}

fn routing() -> impl Strategy<Value = RoutingPolicy> {
    let revert = prop_oneof![
        Just(RevertAfter::Never),
        Just(RevertAfter::After(Duration::ZERO)),
        (0u64..10_000_000).prop_map(|ms| RevertAfter::After(Duration::from_millis(ms))),
        (0u64..100_000).prop_map(|h| RevertAfter::After(Duration::from_secs(h * 3_600))),
        Just(RevertAfter::After(Duration::from_millis(u64::MAX))),
    ];
    (any::<bool>(), revert).prop_map(|(cross_branch, revert_after)| RoutingPolicy {
        cross_branch,
        revert_after,
    })
}

/// A plan for a tree: domain names with parent picks, hosts with domain picks.
#[derive(Debug, Clone)]
struct TreePlan {
    routing: RoutingPolicy,
    domains: Vec<(String, usize)>,
    chain: bool,
    hosts: Vec<(String, usize, Option<String>)>,
}

fn tree_plan() -> impl Strategy<Value = TreePlan> {
    (
        routing(),
        prop::collection::vec((name(), any::<usize>()), 1..14),
        prop::bool::weighted(0.15),
        prop::collection::vec(
            (
                name(),
                any::<usize>(),
                prop::option::weighted(0.3, address()),
            ),
            0..24,
        ),
    )
        .prop_map(|(routing, domains, chain, hosts)| TreePlan {
            routing,
            domains,
            chain,
            hosts,
        })
}

/// Builds the planned tree, skipping duplicate names.
fn build(plan: &TreePlan) -> Topology {
    let root = DomainName::new(plan.domains[0].0.as_str()).unwrap();
    let mut b = TopologyBuilder::new(root.clone());
    b.routing(plan.routing);
    let mut ids = vec![b.domain_id(root.as_str()).unwrap()];
    for (n, pick) in plan.domains.iter().skip(1) {
        let parent = if plan.chain {
            ids[ids.len() - 1]
        } else {
            ids[pick % ids.len()]
        };
        if let Ok(id) = b.add_domain(DomainName::new(n.as_str()).unwrap(), parent) {
            ids.push(id);
        }
    }
    for (n, pick, addr) in &plan.hosts {
        let _ = b.add_host(
            HostName::new(n.as_str()).unwrap(),
            ids[pick % ids.len()],
            addr.clone(),
        );
    }
    b.build()
}

/// The same tree written as JSON (which is YAML): every scalar quoted, keys in another order,
/// flow style throughout — a second spelling the parser must read to the same tree.
fn as_json(t: &Topology) -> String {
    fn domain(t: &Topology, id: DomainId) -> serde_json::Value {
        let d = t.domain(id);
        let hosts: Vec<serde_json::Value> = d
            .hosts
            .iter()
            .map(|h| match &t.host(h.as_str()).unwrap().address {
                None => serde_json::json!(h.as_str()),
                Some(a) => serde_json::json!({ "name": h.as_str(), "address": a }),
            })
            .collect();
        let subs: Vec<serde_json::Value> = d.children.iter().map(|c| domain(t, *c)).collect();
        serde_json::json!({ "domain": d.name.as_str(), "hosts": hosts, "subdomains": subs })
    }
    let mut root = domain(t, t.root());
    let revert = t.routing().revert_after.to_string();
    root["version"] = serde_json::json!(1);
    root["routing"] = serde_json::json!({
        "cross_branch": t.routing().cross_branch,
        "revert_after": revert,
    });
    // JSON allows raw characters YAML does not (DEL, C1 controls, U+FFFE, ...): escape them.
    let mut out = String::new();
    for c in serde_json::to_string(&root).unwrap().chars() {
        let printable = matches!(c, '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}';
        if printable && c != '\u{feff}' {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04x}", c as u32));
        }
    }
    out
}

/// Tokens that stress a YAML reader when dropped anywhere.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            ":", ": ", "- ", "-", "[", "]", "{", "}", ",", "&a ", "*a", "&anchor ", "*anchor",
            "<<: *a", "!!str ", "!!int ", "!tag ", "!<x> ", "? ", "|", "|-", ">", ">+", "#",
            "\"", "'", "\t", "\0", "\r", "\n", "\r\n", "---", "...", "---\n", "\n...\n",
            "%YAML 1.2\n", "%TAG ! x\n", "\u{feff}", "\u{85}", "\u{2028}", "\\", "\\x", "\\u12",
            "~", "null", "true", "1e999", "-1", "99999999999999999999999999999999999999999",
            "version: 1", "version: 2", "domain: x", "hosts: []", "subdomains:", "name: h",
            "address: a", "routing: {}", "cross_branch: maybe", "revert_after: 5q", " ", "    ",
            "@", "`", "%", "é", "\u{1F600}",
        ])
        .prop_map(String::from),
        2 => "[ -~]{1,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// One edit of a text; indices are taken modulo the text's size.
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

/// Applies one mutation. Byte-level edits go through `from_utf8_lossy`, as a file read with a
/// lossy decoder would.
fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    let join = |lines: Vec<String>| lines.join("\n");
    match m {
        Mutation::DeleteLine(a) => {
            lines.remove(a % n);
            join(lines)
        }
        Mutation::DuplicateLine(a) => {
            let l = lines[a % n].clone();
            lines.insert(a % n, l);
            join(lines)
        }
        Mutation::SwapLines(a, b) => {
            lines.swap(a % n, b % n);
            join(lines)
        }
        Mutation::Indent(a, k) => {
            lines[a % n].insert_str(0, &" ".repeat(*k as usize));
            join(lines)
        }
        Mutation::Dedent(a, k) => {
            let l = &mut lines[a % n];
            let cut = l.len() - l.trim_start_matches(' ').len();
            l.drain(..cut.min(*k as usize));
            join(lines)
        }
        Mutation::TabIndent(a) => {
            let l = &mut lines[a % n];
            let cut = l.len() - l.trim_start_matches(' ').len();
            l.replace_range(..cut, &"\t".repeat(cut.div_ceil(2).max(1)));
            join(lines)
        }
        Mutation::Insert(a, t) => {
            let mut s = text.to_owned();
            s.insert_str(char_boundary(text, *a), t);
            s
        }
        Mutation::Truncate(a) => text[..char_boundary(text, *a)].to_owned(),
        Mutation::FlipByte(a, b) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = a % bytes.len();
                bytes[i] ^= b | 1;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::RandomBytes(a, r) => {
            let mut bytes = text.as_bytes().to_vec();
            let i = a % (bytes.len() + 1);
            bytes.splice(i..i, r.iter().copied());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::Nest(a, depth, kind) => {
            let d = *depth as usize;
            let (open, close) = match kind {
                0 => ("[".repeat(d), "]".repeat(d)),
                1 => ("{a: ".repeat(d), "}".repeat(d)),
                2 => ("- ".repeat(d), String::new()),
                _ => (
                    (0..d)
                        .map(|i| format!("\n{}k:", " ".repeat(i + 1)))
                        .collect(),
                    String::new(),
                ),
            };
            let mut s = text.to_owned();
            s.insert_str(char_boundary(text, *a), &format!("{open}{close}"));
            s
        }
        Mutation::HugeScalar(a, len) => {
            let mut s = text.to_owned();
            s.insert_str(char_boundary(text, *a), &"z".repeat(*len as usize));
            s
        }
    }
}

const DOC_EXAMPLE: &str = "\
version: 1
routing:                    # optional; the defaults are shown
  cross_branch: true
  revert_after: 5s
domain: framework           # the root domain
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
    subdomains:
      - domain: subdomain-1a
        hosts:
          - agent-3
          - name: agent-4       # long form; address is informational
            address: 10.0.4.4
";

const FLOW_EXAMPLE: &str = "{version: 1, domain: r, hosts: [a, {name: b, address: \"10.0.0.2\"}], subdomains: [{domain: s, hosts: [c], subdomains: [{domain: t}]}], routing: {cross_branch: false, revert_after: never}}\n";

const ODD_EXAMPLE: &str = "\
%YAML 1.2
---
version: 1
domain: &root \"10\"
hosts:
  - ? name
    : \"007\"
    address: |
      multi
      line
  - 'true'
subdomains:
- domain: '1e3'
  hosts: !!seq [x, y]
  subdomains: ~
...
";

fn corpus() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(DOC_EXAMPLE.to_owned()),
        1 => Just(FLOW_EXAMPLE.to_owned()),
        1 => Just(ODD_EXAMPLE.to_owned()),
        3 => tree_plan().prop_map(|p| build(&p).to_yaml()),
        1 => tree_plan().prop_map(|p| as_json(&build(&p))),
    ]
}

// ----- topology ----------------------------------------------------------------------------

#[test]
fn corpus_files_parse() {
    for text in [DOC_EXAMPLE, FLOW_EXAMPLE, ODD_EXAMPLE] {
        let t = check_topology(text).unwrap_or_else(|| panic!("does not parse:\n{text}"));
        assert!(t.summary().hosts >= 3);
    }
    let odd = Topology::from_yaml(FILE, ODD_EXAMPLE).unwrap();
    assert_eq!(
        odd.host("007").unwrap().address.as_deref(),
        Some("multi\nline\n")
    );
    assert_eq!(odd.host_domain("x").unwrap().as_str(), "1e3");
}

proptest! {
    #![proptest_config(config(400))]

    /// Generated trees round-trip through the canonical YAML and parse the same from JSON.
    #[test]
    fn generated_topologies_round_trip(plan in tree_plan()) {
        let t = build(&plan);
        assert_round_trip(&t);
        let json = as_json(&t);
        match Topology::from_yaml("json.yaml", &json) {
            Ok(j) => prop_assert!(j == t, "JSON spelling differs:\n{}", json),
            Err(e) => panic!("JSON spelling does not parse:\n{e}\n---\n{json}"),
        }
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    /// Mutated valid files: a topology that round-trips, or located errors.
    #[test]
    fn mutated_topologies_never_panic(base in corpus(), edits in prop::collection::vec(mutation(), 1..6)) {
        let mut text = base;
        for m in &edits {
            text = mutate(&text, m);
        }
        check_topology(&text);
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// Arbitrary text and arbitrary bytes (decoded lossily).
    #[test]
    fn random_text_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_topology(&text);
        check_topology(&String::from_utf8_lossy(&bytes));
        check_topology(&format!("version: 1\ndomain: r\nhosts: {text}"));
    }

    /// Text made of YAML punctuation, names and keys: far likelier to reach deep parser states.
    #[test]
    fn yaml_token_soup_never_panics(tokens in prop::collection::vec(token(), 0..60)) {
        check_topology(&tokens.concat());
        check_topology(&format!("version: 1\ndomain: r\n{}", tokens.concat()));
    }
}

#[test]
fn anchors_and_aliases_are_refused_with_a_location() {
    let text = "version: 1\ndomain: r\nhosts: &h [a]\nsubdomains:\n  - domain: s\n    hosts: *h\n";
    let e = Topology::from_yaml(FILE, text).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert!(e.to_string().starts_with("fuzz.yaml:6:12: aliases"), "{e}");
    // A billion-laughs bomb is refused at its first alias, not expanded.
    let mut bomb = String::from("version: 1\ndomain: r\nx0: &a0 [lol, lol]\n");
    for i in 1..30 {
        let p = i - 1;
        bomb.push_str(&format!("x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let e = check_topology(&bomb);
    assert!(e.is_none());
}

#[test]
fn huge_scalars_are_refused_with_a_location() {
    let long = "a".repeat(1 << 20);
    for text in [
        format!("version: 1\ndomain: {long}\n"),
        format!("version: 1\ndomain: r\nhosts: [{long}]\n"),
        format!("version: 1\ndomain: r\n{long}: 1\n"),
        format!(
            "version: 1\ndomain: r\nrouting: {{revert_after: {}s}}\n",
            "9".repeat(100_000)
        ),
        format!("version: {}\ndomain: r\n", "9".repeat(100_000)),
    ] {
        assert!(check_topology(&text).is_none());
    }
    // A huge informational address is only text: accepted and round-tripped.
    let t = check_topology(&format!(
        "version: 1\ndomain: r\nhosts: [{{name: h, address: \"{long}\"}}]\n"
    ))
    .unwrap();
    assert_eq!(
        t.host("h").unwrap().address.as_ref().unwrap().len(),
        long.len()
    );
}

#[test]
fn nul_tabs_and_non_utf8_are_located_errors() {
    let cases = [
        "version: 1\ndomain: r\0\n".to_owned(),
        "version: 1\n\tdomain: r\n".to_owned(),
        "version: 1\ndomain: r\nhosts:\n\t- a\n".to_owned(),
        String::from_utf8_lossy(b"version: 1\ndomain: r\xff\xfe\n").into_owned(),
        "\u{feff}version: 1\ndomain: r\n".to_owned(),
        "version: 1\rdomain: r\rhosts: [Bad]\r".to_owned(),
    ];
    for text in &cases {
        check_topology(text);
    }
}

#[test]
fn deep_nesting_of_every_kind_is_a_located_error() {
    for d in [100, 1_000, 20_000] {
        for text in [
            format!(
                "version: 1\ndomain: r\nhosts: {}{}\n",
                "[".repeat(d),
                "]".repeat(d)
            ),
            format!("version: 1\ndomain: r\nhosts: {}\n", "{a: ".repeat(d)),
            format!("version: 1\ndomain: r\nhosts: {}a\n", "- ".repeat(d)),
            format!("{}version: 1", "[".repeat(d)),
            format!("version: 1\ndomain: r\nhosts: {}", "? ".repeat(d)),
        ] {
            assert!(check_topology(&text).is_none());
        }
    }
}

// ----- snapshot ----------------------------------------------------------------------------

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.]{1,20}:[0-9]{1,5}",
        2 => address(),
    ]
}

fn status() -> impl Strategy<Value = PackageStatus> {
    prop::sample::select(PackageStatus::ALL.to_vec())
}

fn snapshot() -> impl Strategy<Value = RegistrySnapshot> {
    let package =
        (endpoint(), status()).prop_map(|(endpoint, status)| PackageState { endpoint, status });
    let host = (
        any::<bool>(),
        prop::collection::btree_map(name(), package, 0..4),
    )
        .prop_map(|(alive, packages)| HostState {
            alive,
            packages: packages
                .into_iter()
                .map(|(t, p)| (PackageType::new(t).unwrap(), p))
                .collect(),
        });
    (
        prop_oneof![Just(0u64), any::<u64>(), Just(u64::MAX)],
        prop::collection::btree_map(name(), host, 0..8),
    )
        .prop_map(|(revision, hosts)| RegistrySnapshot {
            revision: Revision(revision),
            hosts: hosts
                .into_iter()
                .map(|(h, s)| (HostName::new(h).unwrap(), s))
                .collect::<BTreeMap<_, _>>(),
        })
}

const SNAPSHOT_YAML: &str = "\
revision: 42
hosts:
  fm:
    alive: true
    packages:
      command-control-manager: { endpoint: \"127.0.0.1:7001\", status: running }
  agent-1:
    alive: false                       # its agent stopped keeping its session alive
    packages:
      command-control-manager: { endpoint: \"127.0.0.1:7011\", status: running }
  \"10\": {}
";

fn snapshot_corpus() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(SNAPSHOT_YAML.to_owned()),
        2 => snapshot().prop_map(|s| s.to_yaml()),
        2 => snapshot().prop_map(|s| s.to_json()),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn generated_snapshots_round_trip(s in snapshot()) {
        assert_snapshot_round_trip(&s);
        let compact = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(RegistrySnapshot::parse("compact.json", &compact).unwrap(), s);
    }
}

proptest! {
    #![proptest_config(config(800))]

    #[test]
    fn mutated_snapshots_never_panic(base in snapshot_corpus(), edits in prop::collection::vec(mutation(), 1..6)) {
        let mut text = base;
        for m in &edits {
            text = mutate(&text, m);
        }
        check_snapshot(&text);
    }

    #[test]
    fn random_snapshot_text_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..512), tokens in prop::collection::vec(token(), 0..40)) {
        check_snapshot(&text);
        check_snapshot(&String::from_utf8_lossy(&bytes));
        check_snapshot(&format!("{{{text}"));
        check_snapshot(&tokens.concat());
        check_snapshot(&format!("{{\"hosts\": {{{}", tokens.concat()));
    }
}

#[test]
fn snapshot_edge_cases_are_located_errors() {
    let long = "a".repeat(1 << 20);
    let mut bomb = String::from("revision: 1\nx0: &a0 [lol, lol]\n");
    for i in 1..30 {
        let p = i - 1;
        bomb.push_str(&format!("x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let mut bomb_in_hosts = String::from("revision: 1\nhosts:\n  a: &a0 {}\n");
    for i in 1..25 {
        let p = i - 1;
        bomb_in_hosts.push_str(&format!("  b{i}: &a{i} {{packages: {{t: *a{p}}}}}\n"));
    }
    let cases = [
        format!("revision: 1\nhosts:\n  {long}: {{}}\n"),
        format!("revision: {}\n", "9".repeat(100_000)),
        "revision: -1\n".to_owned(),
        "revision: 18446744073709551616\n".to_owned(),
        "{\"revision\": 18446744073709551616}".to_owned(),
        "{\"revision\": 1.5}".to_owned(),
        "{\"revision\": 1, \"revision\": 2}".to_owned(),
        "revision: 1\nrevision: 2\n".to_owned(),
        "hosts:\n  a: {}\n  a: {}\n".to_owned(),
        "{\"hosts\": {\"a\": {}, \"a\": {}}}".to_owned(),
        "hosts:\n  a:\n    packages:\n      t: {endpoint: x, status: running}\n      t: {endpoint: y, status: running}\n".to_owned(),
        "hosts: {a: {packages: {Bad: {endpoint: x, status: running}}}}\n".to_owned(),
        "hosts: {a: {packages: {t: {endpoint: x}}}}\n".to_owned(),
        "{\"hosts\": {\"a\": {\"packages\": {\"t\": {\"endpoint\": 5, \"status\": \"running\"}}}}}".to_owned(),
        "revision: 1\0\n".to_owned(),
        "---\nrevision: 1\n---\nrevision: 2\n".to_owned(),
        "[1, 2]".to_owned(),
        "\"text\"".to_owned(),
        "{} trailing".to_owned(),
        "{\"revision\": 1}\n{\"revision\": 2}".to_owned(),
        bomb,
        bomb_in_hosts,
        format!("hosts: {}", "{a: ".repeat(50_000)),
        format!("{{\"hosts\": {}", "{\"a\": ".repeat(50_000)),
    ];
    for text in &cases {
        if let Some(s) = check_snapshot(text) {
            panic!("accepted {:?} as {s:?}", &text[..text.len().min(200)]);
        }
    }
    // Valid but unusual spellings are accepted.
    for text in [
        "hosts: {a: {alive: yes}}\n",
        "hosts: {}\n",
        "revision: 0\n",
        "{}",
        "hosts:\n",
        "revision: 0x10\n",
    ] {
        check_snapshot(text);
    }
}

// ----- regressions of bugs the fuzzing found -----------------------------------------------

/// `to_yaml` wrote addresses as JSON strings, which leave DEL, C1 controls, U+FFFE and friends
/// raw: YAML refuses them, so the canonical file of a valid topology did not parse.
/// Found with an address of `"\u{7f}"`.
#[test]
fn regression_address_with_characters_yaml_refuses_raw_round_trips() {
    for address in [
        "\u{7f}",
        "\u{85}",
        "\u{9f}",
        "\u{feff}",
        "\u{fffe}",
        "\u{ffff}",
        "\u{2028}",
        "\0",
        "a\u{1b}[0mb",
        "\r\n\t\"\\",
        "x\u{7f}y\u{2029}z",
    ] {
        let text = format!(
            "version: 1\ndomain: r\nhosts: [{{name: h, address: {}}}]\n",
            serde_json::to_string(address)
                .unwrap()
                .replace('\u{7f}', "\\u007f")
                .replace('\u{85}', "\\u0085")
                .replace('\u{9f}', "\\u009f")
                .replace('\u{feff}', "\\ufeff")
                .replace('\u{fffe}', "\\ufffe")
                .replace('\u{ffff}', "\\uffff")
        );
        let t = Topology::from_yaml(FILE, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(t.host("h").unwrap().address.as_deref(), Some(address));
        assert_round_trip(&t);
    }
}

/// serde_json reports column 0 for an error on a line break (an unterminated object at the end
/// of a line, a raw newline inside a string): the snapshot error said `FILE:2:0`.
/// Found with `{"hosts": {` followed by a newline.
#[test]
fn regression_json_errors_at_a_line_break_have_a_column() {
    for (text, at) in [
        ("{\"hosts\": {\n", "fuzz.yaml:1:12: "),
        ("{\"hosts\": {\"a\n\": {}}}", "fuzz.yaml:1:14: "),
        ("{\n\n", "fuzz.yaml:2:1: "),
    ] {
        let e = RegistrySnapshot::parse(FILE, text).unwrap_err();
        assert!(e.to_string().starts_with(at), "{e} (wanted {at})");
    }
}

/// A JSON snapshot naming a host (or a host's package type) twice was accepted, silently
/// keeping the last entry; the YAML form already refused it.
/// Found with `{"hosts": {"a": {}, "a": {}}}`.
#[test]
fn regression_duplicate_hosts_and_packages_in_json_are_refused() {
    let e = RegistrySnapshot::parse(FILE, "{\"hosts\": {\"a\": {},\n \"a\": {}}}").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fuzz.yaml:2:4: host \"a\" is listed twice"),
        "{e}"
    );
    let e = RegistrySnapshot::parse(
        FILE,
        "{\"hosts\": {\"a\": {\"packages\": {\n\"t\": {\"endpoint\": \"x:1\", \"status\": \"running\"},\n\"t\": {\"endpoint\": \"y:1\", \"status\": \"stopped\"}}}}}",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fuzz.yaml:3:3: package type \"t\" is listed twice"),
        "{e}"
    );
    let e = RegistrySnapshot::parse(FILE, "hosts:\n  a: {}\n  a: {}\n").unwrap_err();
    assert!(e.to_string().starts_with("fuzz.yaml:3:"), "{e}");
}

/// An unknown status holding a line break (`"drain\ng"` in JSON) made an error message of two
/// lines: every message is one line, with line breaks written escaped.
/// Found by `mutated_snapshots_never_panic`.
#[test]
fn regression_a_value_with_a_line_break_gives_a_one_line_error() {
    let text = "{\"hosts\": {\"a\": {\"packages\": {\"t\": {\"endpoint\": \"x:1\", \"status\": \"drain\\ng\"}}}}}";
    let e = RegistrySnapshot::parse(FILE, text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("drain\\ng"), "{e}");
}
