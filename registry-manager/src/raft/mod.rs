//! The registry manager group on openraft: type configuration, the sled log store, the
//! replicated state machine and the gRPC network between members.
//!
//! Dependency direction: `types` ← `log_store`, `state_machine`, `network`; the engine
//! (`crate::engine`) owns the raft handle and is the only user of this module.

pub mod core_thread;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::time::Duration;

/// Raft heartbeat period.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// Shortest election timeout: a follower that heard no leader for this long may stand.
pub const ELECTION_MIN: Duration = Duration::from_millis(200);
/// Longest election timeout; also the leader's lease.
pub const ELECTION_MAX: Duration = Duration::from_millis(400);
/// A member without a leader for this long is cut off from the majority: it closes its
/// agents' streams so they move to a member of the majority (longer than an election, so an
/// ordinary failover does not send every agent moving).
pub const CUT_OFF: Duration = Duration::from_millis(1_000);

/// openraft's configuration for the registry group.
pub fn config(cluster: &str) -> openraft::Config {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    openraft::Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: ms(HEARTBEAT),
        election_timeout_min: ms(ELECTION_MIN),
        election_timeout_max: ms(ELECTION_MAX),
        install_snapshot_timeout: 30_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2_000),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        // The state machine is in memory: a restarted leader stands for election again.
        enable_leader_restore: Some(false),
        // A member that lost its store (set aside as damaged, or emptied) is rebuilt from the
        // others: the leader starts its replication over instead of stopping. Such a member
        // votes again only once it has caught up (`crate::rebuild`).
        allow_log_reversion: Some(true),
        ..Default::default()
    }
}
