//! The benchmark suite behind `fleet-bench` (and `bench/run.sh`): every figure of the performance targets (BENCHMARKS.md),
//! measured the same way every time, on loopback, with the real release binaries.
//!
//! - [`catalog`]: every figure (name, unit, target) and the [`Group`] (one setup) measuring it.
//! - [`figure`]: a measured [`Figure`] (median, min, max of its runs) and its [`Target`].
//! - [`report`]: text table, JSON and Markdown.
//! - [`gen`]: deterministic generated fleets (100,000 hosts for the route table).
//! - [`agents`]: simulated agents inside the benchmark: sessions and watch streams.
//! - [`probe`]: timing re-routes through the agents' `resolve`, spotting false alarms.
//! - [`system`]: the machine, a process's RSS, busy-loop load.
//! - one module per group: [`route`], [`resolve`], [`propagation`], [`storm`] (1,000 session
//!   opens at once under 10,000 watch streams), [`failover`], [`memory`], [`writes`], [`leader`]
//!   (the registry group: leader loss, write throughput), [`fleet_scale`] (10,000 agents on
//!   their own connections at the default heartbeat rate).
//!
//! Benchmarks never run in the test suite; `tests/bench_quick.rs` only checks that `--quick`
//! produces every figure.

pub mod agents;
pub mod catalog;
pub mod failover;
pub mod figure;
pub mod fleet_scale;
pub mod gen;
pub mod leader;
pub mod memory;
pub mod probe;
pub mod propagation;
pub mod report;
pub mod resolve;
pub mod route;
pub mod soak;
pub mod stats;
pub mod storm;
pub mod system;
pub mod writes;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

pub use catalog::{FigureDef, Group, FIGURES};
pub use figure::{Figure, Target};
pub use report::Report;

/// Full sizes (the performance targets (BENCHMARKS.md)) or the quick smoke run of the test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// the performance targets (BENCHMARKS.md) sizes and default settings; about five minutes for everything on 2 cores.
    Full,
    /// Tiny sizes and test-fast settings: every figure in seconds, values meaningless.
    Quick,
}

impl Mode {
    /// `full` or `quick`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
        }
    }

    /// The most a group may take before it is cut off and reported as not measured.
    fn group_budget(self, group: Group) -> Duration {
        let secs = match (self, group) {
            (Mode::Quick, _) => 60,
            (Mode::Full, Group::Route) => 90,
            (Mode::Full, Group::Memory) => 240,
            (Mode::Full, Group::Propagation10k | Group::Storm) => 120,
            (Mode::Full, Group::Crash | Group::Silent | Group::SilentLoaded) => 120,
            (Mode::Full, Group::Leader) => 180,
            (
                Mode::Full,
                Group::Heartbeat
                | Group::HeartbeatGroup
                | Group::HeartbeatTls
                | Group::HeartbeatModel
                | Group::HeartbeatLight,
            ) => 360,
            (Mode::Full, Group::Heartbeat1k) => 120,
            (Mode::Full, _) => 60,
        };
        Duration::from_secs(secs)
    }

    /// The most the whole invocation may take; groups not started by then are skipped.
    fn total_budget(self) -> Duration {
        match self {
            Mode::Full => Duration::from_secs(1500),
            Mode::Quick => Duration::from_secs(180),
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Figures to report, in catalog order.
    pub figures: Vec<&'static FigureDef>,
}

impl Selection {
    /// From command-line words: `all`, group names (see [`Group::name`]) or figure names.
    pub fn parse(words: &[String]) -> Result<Selection, String> {
        let mut names = BTreeSet::new();
        let words: Vec<&str> = if words.is_empty() {
            vec!["all"]
        } else {
            words.iter().map(String::as_str).collect()
        };
        for w in words {
            if w == "all" {
                names.extend(FIGURES.iter().map(|d| d.name));
            } else if let Some(g) = Group::ALL.iter().find(|g| g.name() == w) {
                names.extend(catalog::figures_of(*g).map(|d| d.name));
            } else if let Some(d) = catalog::def(w) {
                names.insert(d.name);
            } else {
                return Err(format!(
                    "unknown figure or group {w:?}; `fleet-bench --list` shows them all"
                ));
            }
        }
        Ok(Selection {
            figures: FIGURES.iter().filter(|d| names.contains(d.name)).collect(),
        })
    }

    fn groups(&self) -> Vec<Group> {
        let set: BTreeSet<Group> = self.figures.iter().map(|d| d.group).collect();
        Group::ALL.into_iter().filter(|g| set.contains(g)).collect()
    }
}

/// The `--list` text: every group and its figures.
pub fn list() -> String {
    let mut s = String::new();
    for g in Group::ALL {
        s.push_str(&format!("{}\n", g.name()));
        for d in catalog::figures_of(g) {
            s.push_str(&format!(
                "  {:<28} {:<9} target {:<12} {}\n",
                d.name,
                d.unit,
                d.target.to_string(),
                d.what
            ));
        }
    }
    s
}

async fn run_group(mode: Mode, group: Group) -> anyhow::Result<Vec<Figure>> {
    match group {
        Group::Route => tokio::task::spawn_blocking(move || route::run(mode)).await?,
        Group::Resolve => resolve::run(mode).await,
        Group::Propagation1k => propagation::run(mode, false).await,
        Group::Propagation10k => propagation::run(mode, true).await,
        Group::Storm => storm::run(mode).await,
        Group::Crash => failover::crash(mode).await,
        Group::Silent => failover::silent(mode, false).await,
        Group::SilentLoaded => failover::silent(mode, true).await,
        Group::Memory => memory::run(mode).await,
        Group::Writes => writes::run(mode).await,
        Group::Leader => leader::run(mode).await,
        Group::GroupWrites => leader::throughput(mode).await,
        Group::PropagationGroup => propagation::run_group(mode).await,
        Group::Heartbeat => fleet_scale::run(mode, 1, false).await,
        Group::HeartbeatGroup => fleet_scale::run(mode, 3, false).await,
        Group::HeartbeatTls => fleet_scale::run(mode, 1, true).await,
        Group::HeartbeatModel => fleet_scale::run_model(mode).await,
        Group::HeartbeatLight => fleet_scale::run_light(mode).await,
        Group::Heartbeat1k => fleet_scale::run_1k(mode).await,
    }
}

/// Runs the selected figures group by group, each bounded in time; a group that fails or runs
/// out of time yields its figures as not measured, with the reason. Progress goes to stderr.
pub async fn run(mode: Mode, selection: &Selection, command: String) -> Report {
    let started_at = system::utc_now();
    let machine = system::Machine::describe();
    let start = Instant::now();
    let mut measured: Vec<Figure> = Vec::new();
    for group in selection.groups() {
        let t = Instant::now();
        let figures = if start.elapsed() > mode.total_budget() {
            Err(format!(
                "skipped: the whole run passed its time budget of {:?}",
                mode.total_budget()
            ))
        } else {
            eprintln!("fleet-bench: measuring {} ...", group.name());
            let budget = mode.group_budget(group);
            match tokio::time::timeout(budget, run_group(mode, group)).await {
                Ok(Ok(f)) => Ok(f),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!("cut off after its time budget of {budget:?}")),
            }
        };
        eprintln!(
            "fleet-bench: {} done in {:.1} s{}",
            group.name(),
            t.elapsed().as_secs_f64(),
            match &figures {
                Ok(_) => String::new(),
                Err(e) => format!(": {}", e.lines().next().unwrap_or_default()),
            }
        );
        match figures {
            Ok(f) => measured.extend(f),
            Err(e) => measured
                .extend(catalog::figures_of(group).map(|d| Figure::failed(d.name, e.clone()))),
        }
    }
    let figures = selection
        .figures
        .iter()
        .map(|d| {
            measured
                .iter()
                .find(|f| f.name == d.name)
                .cloned()
                .unwrap_or_else(|| Figure::failed(d.name, "the group did not report it"))
        })
        .collect();
    Report {
        mode,
        started: started_at,
        seconds: start.elapsed().as_secs_f64(),
        command,
        machine,
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_all_group_and_figure() {
        let all = Selection::parse(&["all".into()]).expect("all");
        assert_eq!(all.figures.len(), FIGURES.len());
        let g = Selection::parse(&["crash".into()]).expect("group");
        assert_eq!(g.figures.len(), 4);
        let f = Selection::parse(&["route_lookup".into()]).expect("figure");
        assert_eq!(f.groups(), vec![Group::Route]);
        assert!(Selection::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn every_figure_has_a_distinct_name_and_a_group_name_differs() {
        let names: BTreeSet<_> = FIGURES.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), FIGURES.len());
        for g in Group::ALL {
            assert!(!names.contains(g.name()), "{} is both", g.name());
            assert!(catalog::figures_of(g).count() > 0);
        }
    }
}
