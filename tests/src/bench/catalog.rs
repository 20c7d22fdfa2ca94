//! Every figure of the performance targets (BENCHMARKS.md) the command measures: its name, unit, target and the group (one
//! setup of processes) that measures it.

use super::figure::Target;

/// A group of figures measured on one setup (one fleet, one manager, or in process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// `topology::RouteTable` in process: lookup and full rebuild.
    Route,
    /// The agent's local gRPC `Resolve`.
    Resolve,
    /// One change fanned out to 1,000 watch streams.
    Propagation1k,
    /// One change fanned out to 10,000 watch streams.
    Propagation10k,
    /// 1,000 session opens at once, followed by 10,000 watch streams.
    Storm,
    /// A manager package killed (SIGKILL): re-route, forwarder, revert.
    Crash,
    /// A manager host silenced (SIGSTOP).
    Silent,
    /// The same with both cores busy, and false alarms counted.
    SilentLoaded,
    /// Resident memory of an agent and of the manager at 10,000 hosts.
    Memory,
    /// Acknowledged durable writes per second.
    Writes,
    /// A group of three managers losing its leader (SIGKILL), again and again.
    Leader,
    /// Acknowledged durable writes per second on one and on three members.
    GroupWrites,
    /// One change fanned out to 1,000 watch streams spread over three members.
    PropagationGroup,
    /// 10,000 agents on their own connections at the default heartbeat rate, one manager.
    Heartbeat,
    /// The same spread over a group of three.
    HeartbeatGroup,
    /// The one-manager setup with mutual TLS on every connection.
    HeartbeatTls,
    /// The capacity model checked beyond the 10,000 it was measured at: 15,000 agents on their
    /// own connections at `session_ttl: 1500ms` (the same 30,000 heartbeats a second), one
    /// manager.
    HeartbeatModel,
    /// 10,000 agents on their own connections at `session_ttl: 30s` (1,000 heartbeats a second),
    /// one manager: what the fan-out costs without the heartbeat load sharing the two cores.
    HeartbeatLight,
    /// 1,000 agents on their own connections at the default heartbeat rate, one manager: the
    /// 1,000-agent propagation target measured as a fleet connects.
    Heartbeat1k,
}

impl Group {
    /// Every group, in the order `all` runs them.
    pub const ALL: [Group; 19] = [
        Group::Route,
        Group::Resolve,
        Group::Propagation1k,
        Group::Propagation10k,
        Group::Storm,
        Group::Crash,
        Group::Silent,
        Group::SilentLoaded,
        Group::Memory,
        Group::Writes,
        Group::Leader,
        Group::GroupWrites,
        Group::PropagationGroup,
        Group::Heartbeat,
        Group::HeartbeatGroup,
        Group::HeartbeatTls,
        Group::HeartbeatModel,
        Group::HeartbeatLight,
        Group::Heartbeat1k,
    ];

    /// The name accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Route => "route",
            Group::Resolve => "resolve",
            Group::Propagation1k => "propagation_1k",
            Group::Propagation10k => "propagation_10k",
            Group::Storm => "storm",
            Group::Crash => "crash",
            Group::Silent => "silent",
            Group::SilentLoaded => "silent_loaded",
            Group::Memory => "memory",
            Group::Writes => "writes",
            Group::Leader => "leader",
            Group::GroupWrites => "group_writes",
            Group::PropagationGroup => "propagation_group",
            Group::Heartbeat => "heartbeat",
            Group::HeartbeatGroup => "heartbeat_group",
            Group::HeartbeatTls => "heartbeat_tls",
            Group::HeartbeatModel => "heartbeat_model",
            Group::HeartbeatLight => "heartbeat_light",
            Group::Heartbeat1k => "heartbeat_1k",
        }
    }
}

/// The catalog entry of one figure.
#[derive(Debug, Clone, Copy)]
pub struct FigureDef {
    /// Stable name (command line, JSON).
    pub name: &'static str,
    /// Unit of its value.
    pub unit: &'static str,
    /// The performance targets (BENCHMARKS.md) target.
    pub target: Target,
    /// The setup that measures it.
    pub group: Group,
    /// One line for `--list`.
    pub what: &'static str,
}

const fn entry(
    name: &'static str,
    unit: &'static str,
    target: Target,
    group: Group,
    what: &'static str,
) -> FigureDef {
    FigureDef {
        name,
        unit,
        target,
        group,
        what,
    }
}

/// Every figure, in report order.
pub const FIGURES: &[FigureDef] = &[
    entry(
        "route_lookup",
        "ns",
        Target::Below(1000.0),
        Group::Route,
        "RouteTable::chosen in process, 100,000-host table",
    ),
    entry(
        "route_rebuild_100k",
        "ms",
        Target::Below(20.0),
        Group::Route,
        "RouteTable::build, 100,000 hosts in 5,000 domains, every manager type (4)",
    ),
    entry(
        "route_update_type_100k",
        "ms",
        Target::None,
        Group::Route,
        "RouteTable::update_type: the routes of one manager type, 100,000 hosts (after a status change)",
    ),
    entry(
        "topology_diff_10k",
        "ms",
        Target::None,
        Group::Route,
        "topology::diff of a 10,000-host fleet (what topology diff/apply compute)",
    ),
    entry(
        "topology_diff_100k",
        "ms",
        Target::None,
        Group::Route,
        "topology::diff of a 100,000-host fleet: linear growth is 10x topology_diff_10k",
    ),
    entry(
        "resolve_rps_c1",
        "req/s",
        Target::None,
        Group::Resolve,
        "agent local gRPC Resolve (brief), 1 client",
    ),
    entry(
        "resolve_rps_c32",
        "req/s",
        Target::AtLeast(40_000.0),
        Group::Resolve,
        "agent local gRPC Resolve (brief), 32 concurrent clients",
    ),
    entry(
        "resolve_p99_c1",
        "us",
        Target::None,
        Group::Resolve,
        "latency p99 of Resolve, 1 client",
    ),
    entry(
        "resolve_p99_c32",
        "us",
        Target::None,
        Group::Resolve,
        "latency p99 of Resolve, 32 concurrent clients",
    ),
    entry(
        "propagation_1k_p50",
        "ms",
        Target::None,
        Group::Propagation1k,
        "one change to 1,000 watch streams: p50 over streams",
    ),
    entry(
        "propagation_1k_p99",
        "ms",
        Target::Below(25.0),
        Group::Propagation1k,
        "one change to 1,000 watch streams: p99 over streams",
    ),
    entry(
        "propagation_1k_max",
        "ms",
        Target::None,
        Group::Propagation1k,
        "one change to 1,000 watch streams: slowest stream",
    ),
    entry(
        "propagation_10k_p50",
        "ms",
        Target::None,
        Group::Propagation10k,
        "one change to 10,000 watch streams: p50 over streams",
    ),
    entry(
        "propagation_10k_p99",
        "ms",
        Target::Below(250.0),
        Group::Propagation10k,
        "one change to 10,000 watch streams: p99 over streams",
    ),
    entry(
        "propagation_10k_max",
        "ms",
        Target::None,
        Group::Propagation10k,
        "one change to 10,000 watch streams: slowest stream",
    ),
    entry(
        "storm_1k_opens_revisions",
        "count",
        Target::None,
        Group::Storm,
        "1,000 session opens sent at once, 10,000 watch streams: revisions made (one event to every stream each)",
    ),
    entry(
        "storm_1k_opens_settle_10k",
        "ms",
        Target::None,
        Group::Storm,
        "the same: from sending the opens until every stream holds the last revision",
    ),
    entry(
        "storm_1k_opens_manager_cpu",
        "s",
        Target::None,
        Group::Storm,
        "the same: manager CPU seconds the storm cost, until the last stream held the last revision",
    ),
    entry(
        "failover_crash",
        "ms",
        Target::Below(1000.0),
        Group::Crash,
        "SIGKILL of the chosen manager package until every agent's resolve names the next",
    ),
    entry(
        "failover_crash_with_traffic",
        "ms",
        Target::Below(1000.0),
        Group::Crash,
        "the same while clients connect through the forwarding ports (refusals seen at once)",
    ),
    entry(
        "forward_failed_connections",
        "count",
        Target::AtMost(0.0),
        Group::Crash,
        "client connections through the forwarding ports that failed during the crash",
    ),
    entry(
        "revert_after_recovery",
        "ms",
        Target::Between(5000.0, 6000.0),
        Group::Crash,
        "restarted package listening until every agent moved back (vs routing.revert_after)",
    ),
    entry(
        "failover_silent",
        "ms",
        Target::Below(1200.0),
        Group::Silent,
        "SIGSTOP of the chosen manager's host (agent + package) until every agent re-routed",
    ),
    entry(
        "failover_silent_loaded",
        "ms",
        Target::Below(1200.0),
        Group::SilentLoaded,
        "the same with both cores busy (2 busy-loop threads)",
    ),
    entry(
        "false_alarms_loaded",
        "count",
        Target::AtMost(0.0),
        Group::SilentLoaded,
        "agents re-routing away from a healthy manager while both cores are busy",
    ),
    entry(
        "agent_rss_10k",
        "MB",
        Target::Below(30.0),
        Group::Memory,
        "agent VmRSS with a 10,000-host registry copy",
    ),
    entry(
        "manager_rss_10k_sessions",
        "MB",
        Target::Below(1024.0),
        Group::Memory,
        "manager VmRSS with 10,000 live sessions and 10,000 watch streams",
    ),
    entry(
        "manager_write_throughput",
        "writes/s",
        Target::None,
        Group::Writes,
        "acknowledged durable writes (drain/restore) from 8 concurrent clients",
    ),
    entry(
        "leader_kill_to_write",
        "ms",
        Target::Below(1000.0),
        Group::Leader,
        "3 managers: SIGKILL of the leader until the next acknowledged write",
    ),
    entry(
        "leader_kill_lapsed_sessions",
        "count",
        Target::AtMost(0.0),
        Group::Leader,
        "agent sessions lapsed through one leader kill",
    ),
    entry(
        "leader_kill_failed_forwards",
        "count",
        Target::AtMost(0.0),
        Group::Leader,
        "connections through a forwarding port that failed through one leader kill",
    ),
    entry(
        "leader_kill_snapshot_resumes",
        "count",
        Target::None,
        Group::Leader,
        "agents that resumed their watch with a full snapshot instead of deltas, per leader kill",
    ),
    entry(
        "group_write_throughput_1",
        "writes/s",
        Target::None,
        Group::GroupWrites,
        "acknowledged durable writes per second, a group of one, 64 concurrent clients",
    ),
    entry(
        "group_write_throughput_3",
        "writes/s",
        Target::AtLeast(5000.0),
        Group::GroupWrites,
        "acknowledged durable writes per second, a group of three, 64 clients over all members",
    ),
    entry(
        "propagation_group_1k_p50",
        "ms",
        Target::None,
        Group::PropagationGroup,
        "one change to 1,000 watch streams spread over 3 members: p50 over streams",
    ),
    entry(
        "propagation_group_1k_p99",
        "ms",
        Target::Below(25.0),
        Group::PropagationGroup,
        "one change to 1,000 watch streams spread over 3 members: p99 over streams",
    ),
    entry(
        "heartbeat_manager_cpu_10k",
        "cores",
        Target::Below(0.5),
        Group::Heartbeat,
        "manager CPU, 10,000 agents on own connections at the default heartbeat rate, one manager",
    ),
    entry(
        "heartbeat_manager_rss_10k",
        "MB",
        Target::Below(1024.0),
        Group::Heartbeat,
        "manager VmRSS under that load",
    ),
    entry(
        "heartbeat_rtt_p99_10k",
        "ms",
        Target::None,
        Group::Heartbeat,
        "heartbeat round trip p99 under that load",
    ),
    entry(
        "heartbeat_false_expiries_10k",
        "count",
        Target::AtMost(0.0),
        Group::Heartbeat,
        "sessions lapsed that were kept alive, under that load",
    ),
    entry(
        "heartbeat_silent_detect_10k",
        "ms",
        Target::Below(1200.0),
        Group::Heartbeat,
        "a host falls silent under that load until every agent's watch hears it (p99 over agents)",
    ),
    entry(
        "propagation_10k_own_connections_p99",
        "ms",
        Target::Below(100.0),
        Group::Heartbeat,
        "one change to 10,000 agents on their own connections (one manager): p99 over agents",
    ),
    entry(
        "heartbeat_group_cpu_10k",
        "cores",
        Target::Below(0.5),
        Group::HeartbeatGroup,
        "manager CPU (busiest member), 10,000 agents on own connections at the default heartbeat rate, 3 members",
    ),
    entry(
        "heartbeat_group_rss_10k",
        "MB",
        Target::Below(1024.0),
        Group::HeartbeatGroup,
        "manager VmRSS (busiest member) under that load",
    ),
    entry(
        "heartbeat_group_rtt_p99_10k",
        "ms",
        Target::None,
        Group::HeartbeatGroup,
        "heartbeat round trip p99 under that load",
    ),
    entry(
        "heartbeat_group_false_expiries_10k",
        "count",
        Target::AtMost(0.0),
        Group::HeartbeatGroup,
        "sessions lapsed that were kept alive, under that load",
    ),
    entry(
        "heartbeat_group_silent_detect_10k",
        "ms",
        Target::Below(1200.0),
        Group::HeartbeatGroup,
        "a host falls silent under that load until every agent's watch hears it (p99 over agents)",
    ),
    entry(
        "propagation_group_10k_own_connections_p99",
        "ms",
        Target::Below(100.0),
        Group::HeartbeatGroup,
        "one change to 10,000 agents on their own connections (3 members): p99 over agents",
    ),
    entry(
        "heartbeat_tls_manager_cpu_10k",
        "cores",
        Target::None,
        Group::HeartbeatTls,
        "heartbeat_manager_cpu_10k with mutual TLS on every connection (against: TLS off)",
    ),
    entry(
        "heartbeat_tls_manager_rss_10k",
        "MB",
        Target::Below(1024.0),
        Group::HeartbeatTls,
        "manager VmRSS under that load, TLS on",
    ),
    entry(
        "heartbeat_tls_rtt_p99_10k",
        "ms",
        Target::None,
        Group::HeartbeatTls,
        "heartbeat round trip p99 under that load, TLS on",
    ),
    entry(
        "heartbeat_tls_false_expiries_10k",
        "count",
        Target::AtMost(0.0),
        Group::HeartbeatTls,
        "sessions lapsed that were kept alive, TLS on",
    ),
    entry(
        "heartbeat_tls_silent_detect_10k",
        "ms",
        Target::Below(1200.0),
        Group::HeartbeatTls,
        "a host falls silent until every agent's watch hears it (p99 over agents), TLS on",
    ),
    entry(
        "propagation_10k_tls_own_connections_p99",
        "ms",
        Target::Below(100.0),
        Group::HeartbeatTls,
        "one change to 10,000 agents on their own TLS connections: p99 over agents",
    ),
    entry(
        "heartbeat_model_manager_cpu_15k",
        "cores",
        Target::None,
        Group::HeartbeatModel,
        "manager CPU, 15,000 agents on own connections at session_ttl 1500ms (30,000 heartbeats/s), one manager: the capacity model's check",
    ),
    entry(
        "heartbeat_model_manager_rss_15k",
        "MB",
        Target::None,
        Group::HeartbeatModel,
        "manager VmRSS under that load",
    ),
    entry(
        "heartbeat_model_rtt_p99_15k",
        "ms",
        Target::None,
        Group::HeartbeatModel,
        "heartbeat round trip p99 under that load",
    ),
    entry(
        "heartbeat_model_false_expiries_15k",
        "count",
        Target::AtMost(0.0),
        Group::HeartbeatModel,
        "sessions lapsed that were kept alive, under that load",
    ),
    entry(
        "heartbeat_model_silent_detect_15k",
        "ms",
        Target::None,
        Group::HeartbeatModel,
        "a host falls silent under that load until every agent's watch hears it (p99 over agents; TTL 1500ms)",
    ),
    entry(
        "propagation_model_15k_own_connections_p99",
        "ms",
        Target::None,
        Group::HeartbeatModel,
        "one change to 15,000 agents on their own connections (one manager): p99 over agents",
    ),
    entry(
        "heartbeat_light_manager_cpu_10k",
        "cores",
        Target::None,
        Group::HeartbeatLight,
        "manager CPU, 10,000 agents on own connections at session_ttl 30s (1,000 heartbeats/s), one manager",
    ),
    entry(
        "heartbeat_light_manager_rss_10k",
        "MB",
        Target::Below(1024.0),
        Group::HeartbeatLight,
        "manager VmRSS under that load",
    ),
    entry(
        "heartbeat_light_rtt_p99_10k",
        "ms",
        Target::None,
        Group::HeartbeatLight,
        "heartbeat round trip p99 under that load",
    ),
    entry(
        "heartbeat_light_false_expiries_10k",
        "count",
        Target::AtMost(0.0),
        Group::HeartbeatLight,
        "sessions lapsed that were kept alive, under that load",
    ),
    entry(
        "heartbeat_light_silent_detect_10k",
        "ms",
        Target::None,
        Group::HeartbeatLight,
        "a host falls silent under that load until every agent's watch hears it (p99 over agents; TTL 30s)",
    ),
    entry(
        "propagation_10k_own_connections_light_p99",
        "ms",
        Target::Below(100.0),
        Group::HeartbeatLight,
        "one change to 10,000 agents on their own connections (one manager, 1,000 heartbeats/s): p99 over agents",
    ),
    entry(
        "heartbeat_manager_cpu_1k",
        "cores",
        Target::None,
        Group::Heartbeat1k,
        "manager CPU, 1,000 agents on own connections at the default heartbeat rate, one manager",
    ),
    entry(
        "heartbeat_manager_rss_1k",
        "MB",
        Target::None,
        Group::Heartbeat1k,
        "manager VmRSS under that load",
    ),
    entry(
        "heartbeat_rtt_p99_1k",
        "ms",
        Target::None,
        Group::Heartbeat1k,
        "heartbeat round trip p99 under that load",
    ),
    entry(
        "heartbeat_false_expiries_1k",
        "count",
        Target::AtMost(0.0),
        Group::Heartbeat1k,
        "sessions lapsed that were kept alive, under that load",
    ),
    entry(
        "heartbeat_silent_detect_1k",
        "ms",
        Target::Below(1200.0),
        Group::Heartbeat1k,
        "a host falls silent under that load until every agent's watch hears it (p99 over agents)",
    ),
    entry(
        "propagation_1k_own_connections_p99",
        "ms",
        Target::Below(25.0),
        Group::Heartbeat1k,
        "one change to 1,000 agents on their own connections (one manager, default heartbeat rate): p99 over agents",
    ),
];

/// The catalog entry of a figure.
pub fn def(name: &str) -> Option<&'static FigureDef> {
    FIGURES.iter().find(|d| d.name == name)
}

/// The figures a group measures.
pub fn figures_of(group: Group) -> impl Iterator<Item = &'static FigureDef> {
    FIGURES.iter().filter(move |d| d.group == group)
}
