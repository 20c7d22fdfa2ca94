//! openraft's own storage conformance suite, run against the registry's sled log store and
//! state machine; and a damaged record refused with the file and the remedy.

use std::sync::Arc;
use std::time::Duration;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use registry_manager::raft::log_store::LogStore;
use registry_manager::raft::state_machine::{Registry, StateMachine};
use registry_manager::raft::types::TypeConfig;
use registry_manager::sessions::SessionTable;
use registry_manager::store::{RaftDb, StoreError};
use registry_manager::watch::WatchHub;
use registry_manager::State;

/// A fresh sled store in a temporary directory per test of the suite.
struct SledBuilder;

fn registry() -> Registry {
    Registry {
        state: Arc::new(tokio::sync::RwLock::new(State::new())),
        sessions: Arc::new(SessionTable::new()),
        hub: Arc::new(WatchHub::new(16, 16)),
        ttl: Duration::from_secs(1),
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let db = Arc::new(RaftDb::open(dir.path()).expect("a fresh store opens"));
        let sm = StateMachine::open(Arc::clone(&db), registry()).expect("a fresh state machine");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(SledBuilder).await
}

#[test]
fn a_damaged_record_is_refused_naming_the_file_and_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = RaftDb::open(dir.path()).unwrap();
        // A record whose checksum no longer matches its content (a flipped byte on disk).
        let mut rec = registry_manager::store::seal(
            b"{\"leader_id\":{\"term\":1,\"node_id\":1},\"committed\":true}",
        );
        let last = rec.len() - 2;
        rec[last] ^= 0x20;
        db.meta.insert(b"vote", rec).unwrap();
        db.db.flush().unwrap();
    }
    let err = RaftDb::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()),
        "names the data directory: {text}"
    );
    assert!(
        text.contains("raft_meta") && text.contains("vote"),
        "names the record: {text}"
    );
    assert!(
        text.contains("rebuilt from the others"),
        "says the remedy: {text}"
    );
}
