//! `registry-manager route coverage` offline, on the worked example: it names the single points
//! of failure before they fail.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_registry-manager"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn coverage_of_the_worked_example_names_who_moves_and_who_has_one_manager() {
    let (ok, out, err) = run(&[
        "route",
        "coverage",
        "--topology",
        "examples/topology.yaml",
        "--registry",
        "examples/registry-maintenance.yaml",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ccm = &v["types"][0];
    assert_eq!(ccm["type"], "command-control-manager", "{v}");
    assert_eq!(ccm["hosts"], 5, "{v}");
    // Every host has a manager; the one chosen by the most hosts is named first.
    assert_eq!(ccm["no_manager"].as_array().unwrap().len(), 0, "{v}");
    let by: Vec<(String, u64)> = ccm["by_manager"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_owned(),
                e["hosts"].as_u64().unwrap(),
            )
        })
        .collect();
    // agent-3 drained and agent-1 lost: fm is everyone's only manager.
    assert_eq!(by, vec![("fm".to_string(), 5)], "{v}");
    let single = ccm["single"].as_array().unwrap();
    assert_eq!(single.len(), 5, "{v}");
    assert!(single.iter().all(|e| e["manager"] == "fm"), "{v}");

    let (ok, text, err) = run(&[
        "route",
        "coverage",
        "--topology",
        "examples/topology.yaml",
        "--registry",
        "examples/registry-maintenance.yaml",
        "--type",
        "command-control-manager",
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("most moved by a loss:"), "{text}");

    let (ok, _, err) = run(&[
        "route",
        "coverage",
        "--topology",
        "examples/topology.yaml",
        "--registry",
        "examples/registry.yaml",
        "--type",
        "Bad Type",
    ]);
    assert!(!ok, "a bad type name is refused");
    assert!(err.contains("--type"), "{err}");
}
