//! The benchmark command starts and its quick mode produces every figure of the performance targets (BENCHMARKS.md) with a
//! number. Speed is never checked here: benchmarks are for `bench/run.sh`, not the test suite.

use std::process::{Command, Stdio};
use std::time::Duration;

use tests::bench::FIGURES;

/// Runs `fleet-bench` with `args`, killing it if it outlives `limit`.
fn fleet_bench(args: &[&str], limit: Duration) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "fleet-bench {} did not finish within {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn list_names_every_figure() -> anyhow::Result<()> {
    let out = fleet_bench(&["--list"], Duration::from_secs(20))?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    for f in FIGURES {
        assert!(text.contains(f.name), "--list does not name {}", f.name);
    }
    Ok(())
}

#[test]
fn an_unknown_figure_is_refused_with_a_hint() -> anyhow::Result<()> {
    let out = fleet_bench(&["no_such_figure", "--quick"], Duration::from_secs(20))?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("no_such_figure") && err.contains("--list"),
        "{err}"
    );
    Ok(())
}

#[test]
fn quick_mode_produces_every_figure_with_a_number() -> anyhow::Result<()> {
    let out = fleet_bench(&["all", "--quick", "--json"], Duration::from_secs(150))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!("fleet-bench --json printed no JSON ({e}); stderr:\n{stderr}")
    })?;
    assert_eq!(doc["mode"], "quick");
    let figures = doc["figures"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no `figures` array in {doc}"))?;
    let mut problems = Vec::new();
    for def in FIGURES {
        match figures.iter().find(|f| f["name"] == def.name) {
            None => problems.push(format!("{}: missing", def.name)),
            Some(f) => {
                if !f["value"].is_number() {
                    problems.push(format!("{}: no value ({})", def.name, f["error"]));
                }
                for key in ["unit", "target", "met", "min", "max", "runs"] {
                    if f.get(key).is_none() {
                        problems.push(format!("{}: no `{key}`", def.name));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "fleet-bench --quick:\n{}\nstderr:\n{stderr}",
        problems.join("\n")
    );
    assert!(out.status.success(), "exit status {:?}", out.status);
    Ok(())
}
