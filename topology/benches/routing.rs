//! The routing figures of the performance targets (BENCHMARKS.md): route lookup, full table rebuild for 100,000 hosts in 5,000
//! domains, the incremental update after one status change, and route coverage.
//!
//! Run: `cargo bench -p topology --bench routing`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use topology::gen::{fleet, type_name, FleetSpec};
use topology::{PackageStatus, RouteTable};

fn routing(c: &mut Criterion) {
    let (t, s) = fleet(&FleetSpec::large(1));
    let table = RouteTable::build(&t, &s);
    let ty = type_name(0);
    let hosts: Vec<String> = t.hosts().map(|h| h.name.to_string()).collect();

    let mut g = c.benchmark_group("routing");
    let mut i = 0usize;
    g.bench_function("lookup_chosen", |b| {
        b.iter(|| {
            i = (i + 7919) % hosts.len();
            black_box(table.chosen(black_box(&hosts[i]), ty.as_str()))
        })
    });
    g.bench_function("lookup_route", |b| {
        b.iter(|| {
            i = (i + 7919) % hosts.len();
            black_box(
                table
                    .route(black_box(&hosts[i]), ty.as_str())
                    .map(|r| r.len()),
            )
        })
    });
    g.sample_size(20);
    g.bench_function("full_rebuild_100k_hosts_5k_domains_4_types", |b| {
        b.iter(|| black_box(RouteTable::build(&t, &s)))
    });
    // One status change: the root's first manager of type-0 stops; only type-0 is recomputed.
    let mut s2 = s.clone();
    let root_mgr = t
        .domain(t.root())
        .hosts
        .iter()
        .find(|h| {
            s2.hosts
                .get(*h)
                .is_some_and(|st| st.packages.contains_key(&ty))
        })
        .cloned()
        .expect("the root holds a manager of every type");
    s2.hosts
        .get_mut(&root_mgr)
        .unwrap()
        .packages
        .get_mut(&ty)
        .unwrap()
        .status = PackageStatus::Stopped;
    let mut table2 = table.clone();
    g.bench_function("incremental_update_one_status_change", |b| {
        b.iter(|| {
            table2.update_type(&t, &s2, ty.as_str());
            black_box(table2.chosen(&hosts[0], ty.as_str()));
        })
    });
    // Route coverage of every type: from the table at hand, and with the table build.
    g.bench_function("coverage_from_table_100k_hosts_4_types", |b| {
        b.iter(|| black_box(topology::coverage_from_table(&table, None)))
    });
    g.bench_function("coverage_100k_hosts_5k_domains_4_types", |b| {
        b.iter(|| black_box(topology::coverage(&t, &s, None)))
    });
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
