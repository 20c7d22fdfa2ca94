//! Commands that work without a manager: `topology check`, `topology schema`, and
//! `route explain --topology F --registry F`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use topology::{RegistrySnapshot, Topology};

use super::render;

/// Reads a file as UTF-8 text, naming the file when it cannot.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The name a file is quoted by in error messages: the path as given.
pub fn file_name(path: &Path) -> String {
    path.display().to_string()
}

/// `topology check FILE`: a one-line summary, or every error as `FILE:LINE:COL: message`.
pub fn check(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = read_text(path)?;
    match Topology::from_yaml(&file_name(path), &text) {
        Ok(topology) => {
            let s = topology.summary();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": file_name(path), "valid": true,
                        "domains": s.domains, "hosts": s.hosts, "depth": s.depth,
                    })
                );
            } else {
                println!(
                    "{}: ok: {} domains, {} hosts, depth {}",
                    file_name(path),
                    s.domains,
                    s.hosts,
                    s.depth
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            if json {
                let list: Vec<_> = errors
                    .0
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "file": e.file, "line": e.line, "column": e.column, "message": e.message,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "file": file_name(path), "valid": false, "errors": list })
                );
            } else {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `topology schema`: the JSON Schema of the topology file.
pub fn schema() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&topology::json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}

/// `route explain` from a topology file and a registry snapshot file.
pub fn explain(
    topology_path: &Path,
    registry_path: &Path,
    host: &str,
    package_type: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let topology = Topology::from_yaml(&file_name(topology_path), &read_text(topology_path)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = RegistrySnapshot::parse(&file_name(registry_path), &read_text(registry_path)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let explanation = topology::explain(&topology, &snapshot, host, package_type, &|_| false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut answer = topology::Explained::from(&explanation);
    answer.revision = Some(snapshot.revision.0);
    render::print_explained(
        &answer,
        json,
        &format!("the registry snapshot {}", file_name(registry_path)),
    )
}

/// `route coverage`: for every type (or one), the hosts with no eligible manager, the hosts
/// with exactly one (a single point of failure), and the managers whose loss would move the
/// most hosts.
pub fn coverage(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    package_type: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ty = package_type
        .map(topology::PackageType::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--type: {e}"))?;
    let c = topology::coverage(topology, snapshot, ty.as_ref());
    if json {
        let types: Vec<_> = c
            .types
            .iter()
            .map(|t| {
                serde_json::json!({
                    "type": t.package_type.as_str(),
                    "hosts": t.hosts_total,
                    "no_manager": t.no_manager.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                    "single": t.single.iter().map(|(h, m)| serde_json::json!({"host": h.as_str(), "manager": m.as_str()})).collect::<Vec<_>>(),
                    "by_manager": t.by_manager.iter().map(|(m, n)| serde_json::json!({"manager": m.as_str(), "hosts": n})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "revision": snapshot.revision.0, "types": types })
        );
        return Ok(ExitCode::SUCCESS);
    }
    for t in &c.types {
        println!("{} ({} hosts)", t.package_type, t.hosts_total);
        let names =
            |v: &[topology::HostName]| v.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ");
        println!(
            "  no manager:        {}",
            if t.no_manager.is_empty() {
                "-".to_string()
            } else {
                names(&t.no_manager)
            }
        );
        if t.single.is_empty() {
            println!("  only one manager:  -");
        } else {
            let list: Vec<String> = t
                .single
                .iter()
                .map(|(h, m)| format!("{h} (on {m})"))
                .collect();
            println!("  only one manager:  {}", list.join(", "));
        }
        match &t.worst {
            Some((m, n)) => println!("  most moved by a loss: {m} ({n} hosts would move)"),
            None => println!("  most moved by a loss: -"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `route coverage --topology F --registry F`.
pub fn coverage_files(
    topology_path: &Path,
    registry_path: &Path,
    package_type: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let topology = Topology::from_yaml(&file_name(topology_path), &read_text(topology_path)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = RegistrySnapshot::parse(&file_name(registry_path), &read_text(registry_path)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    coverage(&topology, &snapshot, package_type, json)
}

/// `restore FILE --data-dir DIR`.
pub fn restore(file: &Path, data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let backup = registry_manager::backup::BackupFile::read(file).map_err(anyhow::Error::msg)?;
    let (revision, history) =
        registry_manager::backup::restore(&backup, data_dir).map_err(anyhow::Error::msg)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "data_dir": data_dir.display().to_string(), "revision": revision, "history": history })
        );
    } else {
        println!(
            "restored revision {revision} into {} as a new history ({history}); start the manager(s) on it",
            data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
