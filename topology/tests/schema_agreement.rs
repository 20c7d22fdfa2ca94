//! The JSON Schema and the parser agree: files are generated (valid ones, and valid ones with
//! one or more mutations an editor could make), and on each the schema's verdict and
//! `Topology::from_yaml`'s verdict must be the same. Names stay unique in every generated file,
//! since uniqueness is the one rule a schema cannot state. The committed schema file is checked
//! to be the one the code generates.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn schema() -> jsonschema::Validator {
    jsonschema::draft7::new(&topology::json_schema()).expect("the schema is valid draft-07")
}

/// A valid file: a root with hosts and up to two levels of subdomains, unique names.
fn valid_file() -> impl Strategy<Value = Value> {
    (
        prop::option::of((
            prop::option::of(any::<bool>()),
            prop::option::of("(0s|5s|500ms|2m|1h|never)"),
        )),
        prop::collection::vec((0usize..4, any::<bool>()), 0..4),
        0usize..4,
    )
        .prop_map(|(routing, subs, root_hosts)| {
            let mut next = 0;
            let mut host = |long: bool| {
                next += 1;
                let name = format!("h{next}");
                if long {
                    json!({"name": name, "address": format!("10.0.0.{next}")})
                } else {
                    json!(name)
                }
            };
            let mut root = Map::new();
            root.insert("version".into(), json!(1));
            if let Some((cross, revert)) = routing {
                let mut r = Map::new();
                if let Some(c) = cross {
                    r.insert("cross_branch".into(), json!(c));
                }
                if let Some(v) = revert {
                    r.insert("revert_after".into(), json!(v));
                }
                root.insert("routing".into(), Value::Object(r));
            }
            root.insert("domain".into(), json!("root"));
            root.insert(
                "hosts".into(),
                Value::Array((0..root_hosts).map(|i| host(i % 2 == 1)).collect()),
            );
            let subdomains: Vec<Value> = subs
                .iter()
                .enumerate()
                .map(|(i, &(n, nested))| {
                    let mut d = json!({
                        "domain": format!("d{i}"),
                        "hosts": (0..n).map(|j| host(j == 0)).collect::<Vec<_>>(),
                    });
                    if nested {
                        d["subdomains"] =
                            json!([{"domain": format!("d{i}x"), "hosts": [host(false)]}]);
                    }
                    d
                })
                .collect();
            root.insert("subdomains".into(), Value::Array(subdomains));
            Value::Object(root)
        })
}

/// Values an editor might put where another was meant.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(false)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(12)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!("1")),
        Just(json!("x")),
        Just(json!("12")),
        Just(json!("true")),
        Just(json!("Upper")),
        Just(json!("-dash")),
        Just(json!("a b")),
        Just(json!("5")),
        Just(json!("5s")),
        Just(json!("never")),
        Just(json!("h99")),
        Just(json!([])),
        Just(json!(["h98"])),
        Just(json!({})),
        Just(json!({"name": "h97"})),
        Just(json!({"domain": "d97"})),
        Just(json!("a".repeat(64))),
        Just(json!("a".repeat(63))),
    ]
}

/// Every place in the document (object keys and array items), as JSON pointers.
fn places(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                places(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                places(c, p, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a place.
    Replace(usize, Value),
    /// Remove a key or item.
    Remove(usize),
    /// Add a key (known or unknown) to an object at a place (or the root).
    AddKey(usize, &'static str, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), odd_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "address",
                "routing",
                "hosts",
                "subdomains",
                "name",
                "domain",
                "version",
                "cross_branch",
                "revert_after",
                "colour",
            ]),
            odd_value()
        )
            .prop_map(|(i, k, v)| Mutation::AddKey(i, k, v)),
    ]
}

fn apply(doc: &mut Value, m: &Mutation) {
    let mut all = vec![String::new()];
    places(doc, String::new(), &mut all);
    let pick = |i: usize| all[i % all.len()].clone();
    match m {
        Mutation::Replace(i, v) => {
            let p = pick(*i);
            if let Some(slot) = doc.pointer_mut(&p) {
                *slot = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let p = pick(*i);
            let Some((parent, last)) = p.rsplit_once('/') else {
                return;
            };
            match doc.pointer_mut(parent) {
                Some(Value::Object(o)) => {
                    o.remove(last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(k) = last.parse::<usize>() {
                        a.remove(k);
                    }
                }
                _ => {}
            }
        }
        Mutation::AddKey(i, k, v) => {
            let p = pick(*i);
            if let Some(Value::Object(o)) = doc.pointer_mut(&p) {
                o.insert((*k).to_owned(), v.clone());
            }
        }
    }
}

/// True when some name appears twice (hosts and domains share no rule, but each must be
/// unique among its kind): such files are outside what a schema can judge.
fn has_duplicate_names(doc: &Value) -> bool {
    fn walk(v: &Value, hosts: &mut Vec<String>, domains: &mut Vec<String>) {
        let Value::Object(o) = v else { return };
        if let Some(Value::String(d)) = o.get("domain") {
            domains.push(d.clone());
        }
        if let Some(Value::Array(hs)) = o.get("hosts") {
            for h in hs {
                match h {
                    Value::String(n) => hosts.push(n.clone()),
                    Value::Object(l) => {
                        if let Some(Value::String(n)) = l.get("name") {
                            hosts.push(n.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(Value::Array(ss)) = o.get("subdomains") {
            for s in ss {
                walk(s, hosts, domains);
            }
        }
    }
    let (mut hosts, mut domains) = (Vec::new(), Vec::new());
    walk(doc, &mut hosts, &mut domains);
    let dup = |v: &mut Vec<String>| {
        let n = v.len();
        v.sort();
        v.dedup();
        v.len() != n
    };
    dup(&mut hosts) || dup(&mut domains)
}

/// The parser reads the file as an editor would see it: JSON text is YAML, and a block-style
/// rendering of the same document is checked too.
fn verdicts(validator: &jsonschema::Validator, doc: &Value) -> (bool, bool, bool) {
    let by_schema = validator.is_valid(doc);
    let json_text = serde_json::to_string_pretty(doc).unwrap();
    let by_parser_json = topology::Topology::from_yaml("t.yaml", &json_text).is_ok();
    let by_parser_block = topology::Topology::from_yaml("t.yaml", &block_yaml(doc, 0)).is_ok();
    (by_schema, by_parser_json, by_parser_block)
}

/// Block-style YAML for a document: strings are written plain when a YAML 1.2 reader reads
/// them back as the same string, quoted otherwise (as a person would write them).
fn block_yaml(v: &Value, indent: usize) -> String {
    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => String::new(),
            Value::String(s) => {
                let plain_ok = !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && s.as_bytes()[0].is_ascii_alphabetic()
                    && !matches!(s.as_str(), "true" | "false" | "null");
                if plain_ok {
                    s.clone()
                } else {
                    serde_json::to_string(s).unwrap()
                }
            }
            other => other.to_string(),
        }
    }
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            let mut out = String::new();
            for (k, c) in o {
                match c {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n{}", block_yaml(c, indent + 2)))
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n{}", block_yaml(c, indent + 2)))
                    }
                    Value::Object(_) => out.push_str(&format!("{pad}{k}: {{}}\n")),
                    Value::Array(_) => out.push_str(&format!("{pad}{k}: []\n")),
                    s => out.push_str(&format!("{pad}{k}: {}\n", scalar(s)).replace(": \n", ":\n")),
                }
            }
            out
        }
        Value::Array(a) if !a.is_empty() => {
            let mut out = String::new();
            for c in a {
                let inner = match c {
                    Value::Object(m) if !m.is_empty() => block_yaml(c, indent + 2),
                    Value::Array(x) if !x.is_empty() => block_yaml(c, indent + 2),
                    Value::Object(_) => format!("{}{{}}\n", " ".repeat(indent + 2)),
                    Value::Array(_) => format!("{}[]\n", " ".repeat(indent + 2)),
                    s => format!("{}{}\n", " ".repeat(indent + 2), scalar(s)),
                };
                // "- " takes the place of the first line's indentation.
                out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
            }
            out
        }
        Value::Object(_) => format!("{pad}{{}}\n"),
        Value::Array(_) => format!("{pad}[]\n"),
        s => format!("{pad}{}\n", scalar(s)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn valid_files_pass_both(doc in valid_file()) {
        let v = schema();
        let (s, pj, pb) = verdicts(&v, &doc);
        prop_assert!(s && pj && pb, "schema {s}, parser (json) {pj}, parser (block) {pb}:\n{}", block_yaml(&doc, 0));
    }

    #[test]
    fn schema_and_parser_agree_on_edited_files(
        doc in valid_file(),
        edits in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut doc = doc;
        for m in &edits {
            apply(&mut doc, m);
        }
        prop_assume!(!has_duplicate_names(&doc));
        let v = schema();
        let (s, pj, pb) = verdicts(&v, &doc);
        prop_assert!(s == pj && pj == pb,
            "schema {s}, parser (json) {pj}, parser (block) {pb} after {edits:?}:\n{}\n{}",
            serde_json::to_string(&doc).unwrap(), block_yaml(&doc, 0));
    }
}

#[test]
fn known_disagreements_of_the_past_now_agree() {
    let v = schema();
    for (text, ok) in [
        (
            "version: 1\ndomain: a\nrouting:\n  cross_branch: ~\n",
            false,
        ),
        ("version: 1\ndomain: a\nhosts:\n", true),
        ("version: 1\ndomain: a\nsubdomains:\n", true),
        ("version: 1\ndomain: a\nrouting:\n", true),
        ("version: 1\ndomain: a\nhosts: [12]\n", false),
        ("version: 1\ndomain: a\nhosts: [\"12\"]\n", true),
        (
            "version: 1\ndomain: a\nhosts: [{name: x, address: ~}]\n",
            false,
        ),
    ] {
        let doc: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(v.is_valid(&doc), ok, "schema on {text:?}");
        assert_eq!(
            topology::Topology::from_yaml("t.yaml", text).is_ok(),
            ok,
            "parser on {text:?}"
        );
    }
}

#[test]
fn the_committed_schema_file_is_the_generated_one() {
    let committed: Value =
        serde_json::from_str(include_str!("../../schema/topology.schema.json")).unwrap();
    assert_eq!(
        committed,
        topology::json_schema(),
        "schema/topology.schema.json is stale: run `registry-manager topology schema > schema/topology.schema.json`"
    );
}
