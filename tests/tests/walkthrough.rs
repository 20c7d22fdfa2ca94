//! The operator's walk-through (`scripts/walkthrough.sh`, shown in docs/walkthrough.md) runs
//! twice in a row with the same outcome: it keeps its state in a directory it makes and
//! removes, and restores the drain it makes. The script checks every step's answer itself
//! (with deadlines) and exits non-zero when one does not come.

use std::process::Command;

fn run_once() -> anyhow::Result<String> {
    let bin_dir = tests::fleet::bin_path("registry-manager")?
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/walkthrough.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("B", &bin_dir)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "walk-through failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The lines that say what happened, without timings and temporary names.
fn outcome(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("-> command-control-manager:") || l.starts_with("# "))
        .map(|l| {
            l.split(" in /")
                .next()
                .unwrap_or(l)
                .split(" $W")
                .next()
                .unwrap_or(l)
                .to_owned()
        })
        .filter(|l| !l.starts_with("# done") && !l.starts_with("# 1."))
        .collect()
}

#[test]
fn the_walkthrough_runs_twice_with_the_same_outcome() -> anyhow::Result<()> {
    let first = run_once()?;
    let second = run_once()?;
    let steps = outcome(&first);
    for want in [
        "agent-4 -> command-control-manager: agent-3 (127.0.0.1:7031)",
        "agent-4 -> command-control-manager: agent-1 (127.0.0.1:7011)",
        "agent-4 -> command-control-manager: no eligible manager",
    ] {
        assert!(
            steps.iter().any(|l| l == want),
            "{want} missing from\n{first}"
        );
    }
    assert_eq!(steps, outcome(&second), "second run differs:\n{second}");
    // Nothing is left behind.
    let dir = first
        .lines()
        .find_map(|l| l.strip_prefix("# done: stopping every process and removing "))
        .expect("the script names its directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} left behind"
    );
    Ok(())
}
