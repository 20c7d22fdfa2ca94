//! The command-line language of `registry-manager`, on the real binary: exit codes (0 done,
//! 1 failed, 2 bad command line, 3 no eligible manager), errors as one line or, with `--json`,
//! one JSON object on stderr, addresses with or without `http://`, the shared form of a route
//! explanation, completions and man pages.

use std::process::{Command, Output};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-manager"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stderr as the one JSON object of an error.
fn json_error(out: &Output) -> Value {
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(v["error"].is_string(), "{v}");
    v
}

const EXPLAIN: [&str; 8] = [
    "route",
    "explain",
    "--topology",
    "examples/topology.yaml",
    "--host",
    "agent-4",
    "--registry",
    "examples/registry-maintenance.yaml",
];

#[test]
fn route_explain_prints_the_shared_form_and_exits_0_with_a_manager() {
    let mut args = EXPLAIN.to_vec();
    args.extend(["--type", "command-control-manager"]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.starts_with("agent-4 -> command-control-manager: fm (127.0.0.1:7001)\nroute: fm\n"),
        "{t}"
    );
    assert!(t.contains("\ncandidates:\n"), "{t}");
    assert!(
        t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["fm", "framework", "ancestor", "127.0.0.1:7001", "eligible"]),
        "{t}"
    );

    args.push("--json");
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["host", "type", "chosen", "endpoint", "route", "candidates"]
    );
    let ckeys: Vec<_> = v["candidates"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        ckeys,
        ["host", "domain", "tier", "eligible", "reason", "endpoint"]
    );
}

#[test]
fn route_explain_exits_3_with_the_answer_when_no_manager_is_eligible() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("all-withdrawn.yaml");
    let text_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/registry.yaml"
    ))
    .unwrap()
    .replace("status: running", "status: withdrawn");
    std::fs::write(&registry, text_in).unwrap();
    let registry = registry.display().to_string();
    let args = [
        "route",
        "explain",
        "--topology",
        "examples/topology.yaml",
        "--registry",
        &registry,
        "--host",
        "agent-4",
        "--type",
        "command-control-manager",
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("agent-4 -> command-control-manager: no eligible manager\n"),
        "{}",
        text(&out.stdout)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let mut json = args.to_vec();
    json.push("--json");
    let out = run(&json);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["chosen"].is_null(), "{v}");
}

#[test]
fn route_explain_of_a_type_no_host_runs_is_an_error() {
    let mut args = EXPLAIN.to_vec();
    args.extend(["--type", "command-control-managr"]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "registry-manager: no host runs type \"command-control-managr\" in the registry snapshot examples/registry-maintenance.yaml"
        ),
        "{err}"
    );
    args.push("--json");
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let v = json_error(&out);
    assert!(
        v["error"].as_str().unwrap().contains("no host runs type"),
        "{v}"
    );
}

#[test]
fn a_manager_that_cannot_be_reached_is_exit_1_with_or_without_http() {
    for addr in ["127.0.0.1:1", "http://127.0.0.1:1"] {
        let out = run(&["registry", "hosts", "--manager", addr]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("registry-manager: cannot reach a registry manager at "),
            "{err}"
        );
        let out = run(&["registry", "hosts", "--manager", addr, "--json"]);
        assert_eq!(out.status.code(), Some(1));
        let v = json_error(&out);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("cannot reach a registry manager at "),
            "{v}"
        );
    }
    // https:// without a certificate: refused with the flags that give one.
    let out = run(&["registry", "hosts", "--manager", "https://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("asks for TLS") && err.contains("--cert"),
        "{err}"
    );
}

#[test]
fn an_invalid_topology_is_one_json_object_with_every_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\ndomain: framework\nhosts: [fm, fm]\nbogus: 1\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    // Checked before any manager is asked: the address does not matter.
    let out = run(&["topology", "apply", &bad, "--manager", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("{bad}:")), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with(&format!("registry-manager: {bad} has ")),
        "{err}"
    );
    let out = run(&[
        "topology",
        "apply",
        &bad,
        "--manager",
        "127.0.0.1:1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_error(&out);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .ends_with("nothing was applied"),
        "{v}"
    );
    let errors = v["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{v}");
    assert_eq!(errors[0]["file"], bad.as_str());
    assert!(errors[0]["line"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn a_bad_command_line_is_exit_2_and_one_json_object_with_json() {
    let out = run(&["topology", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: registry-manager topology check"));
    let out = run(&["topology", "check", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json_error(&out);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("<FILE>"), "{msg}");
    assert!(
        msg.contains("usage: registry-manager topology check"),
        "{msg}"
    );
    let out = run(&["serve", "--session-ttl", "5 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("completions"));
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let out = run(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    assert!(script.contains("registry-manager"), "{script}");
    assert!(script.contains("explain"), "{script}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(text(&out.stdout).contains("registry-manager"), "{shell}");
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));

    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie"), "roff: {page}");
    assert!(page.contains("registry\\-manager"), "{page}");
    assert!(page.contains("topology"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let out = run(&["man", "--dir", pages.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(listed.lines().count() > 20, "{listed}");
    let explain = std::fs::read_to_string(pages.join("registry-manager-route-explain.1")).unwrap();
    assert!(explain.contains("\\-\\-host"), "{explain}");
}
