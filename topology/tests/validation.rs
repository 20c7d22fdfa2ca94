//! Every validation error class of the topology file, with its exact line and column.

use topology::{Topology, MAX_DEPTH, MAX_FILE_BYTES};

fn errors(text: &str) -> Vec<String> {
    match Topology::from_yaml("topology.yaml", text) {
        Ok(t) => panic!("expected errors, got a topology {:?}", t.summary()),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn one(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn duplicate_host_across_domains_names_both_places() {
    let text = "\
version: 1
domain: root
subdomains:
  - domain: a
    hosts:
      - h1
  - domain: b
    hosts: [h2, h1]
";
    assert_eq!(
        one(text),
        "topology.yaml:8:17: host \"h1\" is already in domain \"a\" (line 6); a host belongs to exactly one domain"
    );
}

#[test]
fn duplicate_domain() {
    let text = "version: 1\ndomain: root\nsubdomains:\n  - domain: a\n  - domain: root\n";
    assert_eq!(
        one(text),
        "topology.yaml:5:13: domain \"root\" is already defined (line 2); domain names are unique in the tree, rename one"
    );
}

#[test]
fn unknown_key_lists_the_allowed_ones() {
    let e = one("version: 1\ndomain: root\nsubdomains:\n  - domain: a\n    host: [x]\n");
    assert!(e.starts_with("topology.yaml:5:5: unknown key \"host\" in a subdomain entry of domain \"root\" (did you mean `hosts`?); allowed keys are domain, hosts, subdomains"), "{e}");
    let e = one("version: 1\ndomain: root\ncolour: blue\n");
    assert!(e.starts_with("topology.yaml:3:1: unknown key \"colour\" at the top level; allowed keys are version, routing, domain, hosts, subdomains"), "{e}");
    let e = one("version: 1\ndomain: root\nhosts:\n  - {name: h, adress: 1.2.3.4}\n");
    assert!(
        e.starts_with(
            "topology.yaml:4:15: unknown key \"adress\" in a host entry (did you mean `address`?)"
        ),
        "{e}"
    );
    let e = one("version: 1\nrouting: {revert: 5s}\ndomain: root\n");
    assert!(
        e.starts_with("topology.yaml:2:11: unknown key \"revert\" in `routing`"),
        "{e}"
    );
}

#[test]
fn duplicate_key() {
    let e = one("version: 1\ndomain: root\nhosts: [a]\nhosts: [b]\n");
    assert_eq!(e, "topology.yaml:4:1: duplicate key \"hosts\" at the top level (first at line 3); a key may appear once per map, merge the two entries");
}

#[test]
fn bad_names_quote_the_name_and_the_rule() {
    let e = errors("version: 1\ndomain: Root\nhosts: [\"agent 1\", -x]\n");
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("topology.yaml:2:9: domain name \"Root\" is invalid: a name is 1 to 63 characters of a-z 0-9 . _ -, starting with a letter or digit"), "{}", e[0]);
    assert!(
        e[1].starts_with("topology.yaml:3:9: host name \"agent 1\" is invalid"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("topology.yaml:3:20: host name \"-x\" is invalid"),
        "{}",
        e[2]
    );
    let long = "x".repeat(64);
    let e = one(&format!("version: 1\ndomain: {long}\n"));
    assert!(
        e.starts_with("topology.yaml:2:9: domain name \"xxxx"),
        "{e}"
    );
}

#[test]
fn names_made_of_digits_keep_their_spelling_when_quoted() {
    let t = Topology::from_yaml(
        "t.yaml",
        "version: 1\ndomain: \"2024\"\nhosts: [\"10\", '1.50', \"true\", \"007\"]\n",
    )
    .unwrap();
    let names: Vec<_> = t.hosts().map(|h| h.name.to_string()).collect();
    assert_eq!(names, ["007", "1.50", "10", "true"]);
    assert_eq!(t.domain(t.root()).name.as_str(), "2024");
}

#[test]
fn names_written_as_plain_numbers_or_booleans_are_refused_with_the_fix() {
    // YAML tools (and the JSON Schema) read these as numbers and booleans, not names.
    for (plain, kind) in [
        ("10", "a number"),
        ("1.50", "a number"),
        ("007", "a number"),
        ("0x1f", "a number"),
        ("true", "true/false"),
    ] {
        let e = one(&format!("version: 1\ndomain: root\nhosts: [{plain}]\n"));
        assert_eq!(
            e,
            format!("topology.yaml:3:9: a host entry must be a name, found {kind}; quote it if it is meant as a name: \"{plain}\""),
        );
    }
}

#[test]
fn missing_or_wrong_version() {
    assert_eq!(
        one("domain: root\n"),
        "topology.yaml:1:1: missing `version`; add `version: 1` at the top of the file"
    );
    assert_eq!(
        one("version: 2\ndomain: root\n"),
        "topology.yaml:1:10: unsupported version 2; this program reads topology files of version 1, write `version: 1`"
    );
    let e = one("version: \"1\"\ndomain: root\n");
    assert!(
        e.starts_with("topology.yaml:1:10: `version` must be the number 1, found a string \"1\""),
        "{e}"
    );
}

#[test]
fn missing_domain() {
    assert_eq!(
        one("version: 1\n"),
        "topology.yaml:1:1: missing `domain`: the root domain's name; add `domain: NAME`"
    );
    let e = one("version: 1\ndomain: r\nsubdomains:\n  - hosts: [a]\n");
    assert_eq!(e, "topology.yaml:4:5: subdomain entry of domain \"r\" has no `domain` key; add `domain: NAME`");
}

#[test]
fn bad_durations() {
    let e = one("version: 1\nrouting:\n  revert_after: 5 seconds\ndomain: r\n");
    assert!(
        e.starts_with(
            "topology.yaml:3:17: `revert_after`: duration \"5 seconds\" has an unknown unit"
        ),
        "{e}"
    );
    assert!(e.contains("500ms, 5s, 2m"), "{e}");
    let e = one("version: 1\nrouting:\n  revert_after: 5\ndomain: r\n");
    assert!(
        e.starts_with("topology.yaml:3:17: `revert_after`: duration \"5\" has no unit"),
        "{e}"
    );
    for ok in ["500ms", "5s", "2m", "0s", "never"] {
        Topology::from_yaml(
            "t",
            &format!("version: 1\nrouting: {{revert_after: {ok}}}\ndomain: r\n"),
        )
        .unwrap();
    }
}

#[test]
fn wrong_types() {
    let e = errors("version: 1\nrouting: {cross_branch: yes}\ndomain: [r]\nhosts: a\nsubdomains: {domain: x}\n");
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with(
            "topology.yaml:2:25: `cross_branch` must be true or false, found a string"
        ),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("topology.yaml:3:9: `domain` must be a name, found a list"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("topology.yaml:4:8: `hosts` of this domain must be a list"),
        "{}",
        e[2]
    );
    assert!(
        e[3].starts_with("topology.yaml:5:13: `subdomains` of this domain must be a list"),
        "{}",
        e[3]
    );
    let e = one("version: 1\ndomain: r\nhosts:\n  - [a]\n");
    assert!(
        e.starts_with(
            "topology.yaml:4:5: a host entry must be a name or a map {name, address}, found a list"
        ),
        "{e}"
    );
}

#[test]
fn empty_and_garbage_files() {
    for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
        assert_eq!(one(empty), "topology.yaml:1:1: file is empty; a topology needs at least `version: 1` and `domain: NAME`", "{empty:?}");
    }
    let e = one("just some words\n");
    assert!(e.starts_with("topology.yaml:1:1: expected a map with the keys version, routing, domain, hosts, subdomains at the top of the file, found a string"), "{e}");
    let e = one("version: 1\ndomain: [r\n");
    assert!(e.starts_with("topology.yaml:"), "{e}");
    assert!(e.contains("fix the YAML syntax here"), "{e}");
    let e = one("\u{0}\u{1}\u{2}binary");
    assert!(e.starts_with("topology.yaml:1:"), "{e}");
    let e = one("a: 1\n---\nb: 2\n");
    assert!(
        e.starts_with("topology.yaml:2:1: a second YAML document"),
        "{e}"
    );
    let e = one("version: 1\ndomain: &d r\nhosts: [*d]\n");
    assert!(
        e.starts_with("topology.yaml:3:9: aliases (`*name`) are not supported"),
        "{e}"
    );
}

#[test]
fn all_semantic_errors_are_reported_in_file_order() {
    let text = "\
version: 3
domain: root
hosts: [Bad, ok]
subdomains:
  - domain: a
    hosts: [ok]
    extra: 1
  - domain: a
";
    let e = errors(text);
    let where_: Vec<_> = e
        .iter()
        .map(|e| e.split(": ").next().unwrap().to_owned())
        .collect();
    assert_eq!(
        where_,
        [
            "topology.yaml:1:10",
            "topology.yaml:3:9",
            "topology.yaml:6:13",
            "topology.yaml:7:5",
            "topology.yaml:8:13"
        ],
        "{e:#?}"
    );
}

fn nested(levels: usize) -> String {
    let mut deep = String::from("version: 1\ndomain: r\nsubdomains:\n");
    for i in 0..levels {
        let pad = "    ".repeat(i);
        deep.push_str(&format!("{pad}  - domain: d{i}\n{pad}    subdomains:\n"));
    }
    deep
}

#[test]
fn depth_up_to_the_limit_is_fine_and_beyond_is_a_clear_error() {
    let t = Topology::from_yaml("deep.yaml", &nested(MAX_DEPTH)).unwrap();
    assert_eq!(t.summary().depth, MAX_DEPTH);
    let e = one(&nested(MAX_DEPTH + 1));
    assert!(
        e.contains(&format!(
            "is nested {} levels below the root; the limit is {MAX_DEPTH} (MAX_DEPTH)",
            MAX_DEPTH + 1
        )),
        "{e}"
    );
    let e = one(&nested(MAX_DEPTH + 5));
    assert!(e.contains("MAX_DEPTH"), "{e}");
}

#[test]
fn ten_thousand_levels_of_nesting_do_not_crash() {
    // Run on a small stack: reading must not recurse per level.
    let run = |text: String| {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                Topology::from_yaml("deep.yaml", &text)
                    .map(|_| ())
                    .unwrap_err()
                    .to_string()
            })
            .unwrap()
            .join()
            .expect("no stack overflow")
    };
    let flow = format!(
        "version: 1\ndomain: r\nhosts: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(run(flow).contains("MAX_DEPTH"));
    let flow_maps = format!(
        "version: 1\ndomain: r\nhosts: {}{}\n",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    assert!(run(flow_maps).contains("MAX_DEPTH"));
    let mut block = String::from("version: 1\ndomain: r\nhosts:\n");
    for i in 0..3_000 {
        block.push_str(&" ".repeat(i));
        block.push_str("-\n");
    }
    assert!(run(block).contains("MAX_DEPTH"));
    assert!(run(nested(1_500)).contains("MAX_DEPTH"));
}

#[test]
fn oversized_file_is_refused_up_front() {
    let big = format!("version: 1\ndomain: r\n#{}\n", "x".repeat(MAX_FILE_BYTES));
    let e = one(&big);
    assert!(e.starts_with("topology.yaml:1:1: file is"), "{e}");
    assert!(e.contains("MAX_FILE_BYTES"), "{e}");
}

#[test]
fn a_file_with_errors_yields_no_topology() {
    assert!(Topology::from_yaml("t", "version: 1\ndomain: r\nhosts: [a, a]\n").is_err());
}

#[test]
fn long_form_hosts_and_defaults() {
    let t = Topology::from_yaml(
        "t",
        "version: 1\ndomain: r\nhosts:\n  - a\n  - name: b\n    address: 10.0.4.4\nsubdomains:\n",
    )
    .unwrap();
    assert_eq!(t.host("b").unwrap().address.as_deref(), Some("10.0.4.4"));
    assert!(t.routing().cross_branch);
    assert_eq!(
        t.routing().revert_after,
        topology::RevertAfter::After(std::time::Duration::from_secs(5))
    );
    assert_eq!(t.summary().to_string(), "1 domains, 2 hosts, depth 0");
}
