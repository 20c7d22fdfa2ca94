//! In-process figures: `topology::RouteTable` lookup (ns) and full rebuild (ms) on the topology
//! crate's own generated fleet (`topology::gen::FleetSpec::large`: 100,000 hosts in 5,000
//! domains, 4 manager types), the same fleet its criterion benchmarks use; tiny in quick mode.

use std::hint::black_box;
use std::time::{Duration, Instant};

use topology::gen::{fleet, type_name, FleetSpec};
use topology::RouteTable;

use super::figure::Figure;
use super::stats::fmt_num;
use super::Mode;

/// Seed of the generated fleet: fixed, so every run measures the same fleet.
const SEED: u64 = 42;

/// Sizes and repetitions of the route group.
#[derive(Debug, Clone, Copy)]
struct Plan {
    domains: usize,
    hosts: usize,
    rebuild_runs: usize,
    lookup_runs: usize,
    lookups_per_run: usize,
    /// Stop repeating rebuilds after this long (at least one run is always made).
    budget: Duration,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                domains: 5_000,
                hosts: 100_000,
                rebuild_runs: 7,
                lookup_runs: 7,
                lookups_per_run: 1_000_000,
                budget: Duration::from_secs(40),
            },
            Mode::Quick => Plan {
                domains: 50,
                hosts: 1_000,
                rebuild_runs: 3,
                lookup_runs: 3,
                lookups_per_run: 20_000,
                budget: Duration::from_secs(5),
            },
        }
    }
}

/// Measures `route_lookup`, `route_rebuild_100k` and `route_update_type_100k`. Blocking: call
/// from a blocking thread.
pub fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let spec = match mode {
        Mode::Full => FleetSpec::large(SEED),
        Mode::Quick => FleetSpec::small(SEED, plan.hosts, plan.domains),
    };
    let (topology, snapshot) = fleet(&spec);
    let packages: usize = snapshot.hosts.values().map(|h| h.packages.len()).sum();
    let summary = topology.summary();

    let mut rebuild = Figure::new("route_rebuild_100k");
    rebuild.note(format!(
        "topology::gen {} hosts, {} domains, depth {}, {packages} manager packages of {} types \
         (seed {SEED}); every route of every host for every type, on {} cores",
        fmt_num(summary.hosts as f64),
        summary.domains,
        summary.depth,
        spec.types,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    ));
    let started = Instant::now();
    let mut table = RouteTable::default();
    for _ in 0..plan.rebuild_runs {
        let t = Instant::now();
        table = black_box(RouteTable::build(&topology, &snapshot));
        rebuild.push(t.elapsed().as_secs_f64() * 1e3);
        if started.elapsed() > plan.budget {
            rebuild.note(format!(
                "stopped after {} runs: time budget {:?}",
                rebuild.samples.len(),
                plan.budget
            ));
            break;
        }
    }

    // After one package's status changes, only its type needs recomputing.
    let mut update = Figure::new("route_update_type_100k");
    update.note(format!(
        "RouteTable::update_type for {} after one package of it went draining, on the same fleet",
        type_name(0)
    ));
    let mut changed = snapshot.clone();
    if let Some((host, state)) = changed
        .hosts
        .iter_mut()
        .find(|(_, h)| h.packages.contains_key(type_name(0).as_str()))
    {
        if let Some(p) = state.packages.get_mut(type_name(0).as_str()) {
            p.status = topology::PackageStatus::Draining;
        }
        update.note(format!("the package drained is on {host}"));
    }
    let started = Instant::now();
    for _ in 0..plan.rebuild_runs {
        let mut t2 = table.clone();
        let t = Instant::now();
        t2.update_type(&topology, &changed, type_name(0).as_str());
        update.push(t.elapsed().as_secs_f64() * 1e3);
        black_box(t2);
        if started.elapsed() > plan.budget {
            break;
        }
    }

    // Look up hosts in a scrambled but fixed order, so the table's memory is not walked in
    // sequence.
    let names: Vec<&str> = topology.hosts().map(|h| h.name.as_str()).collect();
    let ty = type_name(0);
    let ty = ty.as_str();
    let mut order = Vec::with_capacity(names.len());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..names.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.push(names[(x % names.len() as u64) as usize]);
    }
    let mut lookup = Figure::new("route_lookup");
    lookup.note(format!(
        "RouteTable::chosen(host, type) by name on the {}-host table, {} lookups per run",
        fmt_num(summary.hosts as f64),
        fmt_num(plan.lookups_per_run as f64)
    ));
    let mut found = 0usize;
    for _ in 0..plan.lookup_runs {
        let t = Instant::now();
        for i in 0..plan.lookups_per_run {
            let host = order[i % order.len()];
            if black_box(table.chosen(black_box(host), black_box(ty))).is_some() {
                found += 1;
            }
        }
        lookup.push(t.elapsed().as_nanos() as f64 / plan.lookups_per_run as f64);
    }
    if found == 0 {
        lookup.note("no lookup found a route: the table is empty (RouteTable::build incomplete?)");
    }

    // The topology diff (what `topology diff`/`apply` compute) at two sizes: linear growth
    // means ten times the hosts cost about ten times the time.
    let small_spec = match mode {
        Mode::Full => FleetSpec::small(SEED, 10_000, 500),
        Mode::Quick => FleetSpec::small(SEED, 100, 5),
    };
    let (small_topology, small_snapshot) = fleet(&small_spec);
    let mut diffs = Vec::new();
    for (name, t, snap) in [
        ("topology_diff_10k", &small_topology, &small_snapshot),
        ("topology_diff_100k", &topology, &snapshot),
    ] {
        let mut f = Figure::new(name);
        f.note(format!(
            "topology::diff of the generated {}-host fleet against the same topology (what \
             applying the live topology computes): both route tables and every host and type \
             compared",
            fmt_num(t.summary().hosts as f64)
        ));
        for _ in 0..plan.rebuild_runs.min(5) {
            let t0 = Instant::now();
            let d = black_box(topology::diff(t, t, snap));
            f.push(t0.elapsed().as_secs_f64() * 1e3);
            if !d.route_changes.is_empty() {
                f.note("a topology diffed against itself reported route changes");
                break;
            }
        }
        diffs.push(f);
    }
    if let (Some(a), Some(b)) = (diffs[0].value(), diffs[1].value()) {
        let ratio = b / a.max(1e-9);
        let hosts_ratio =
            topology.summary().hosts as f64 / small_topology.summary().hosts.max(1) as f64;
        diffs[1].note(format!(
            "{hosts_ratio:.0}x the hosts of topology_diff_10k took {ratio:.1}x the time"
        ));
    }
    let mut out = vec![lookup, rebuild, update];
    out.extend(diffs);
    Ok(out)
}
