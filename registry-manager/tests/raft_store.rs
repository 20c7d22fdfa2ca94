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
        text.contains("rebuilds itself from the others") && text.contains("restore"),
        "says the remedy: {text}"
    );
}

/// Writes a store with an intact vote, one log record whose checksum no longer matches, and a
/// file of the operator's beside it.
fn damaged_store(dir: &std::path::Path) -> Vec<u8> {
    let db = RaftDb::open(dir).unwrap();
    let vote = registry_manager::store::seal(
        b"{\"leader_id\":{\"term\":4,\"node_id\":7},\"committed\":true}",
    );
    db.meta.insert(b"vote", vote.clone()).unwrap();
    let mut rec = registry_manager::store::seal(b"{\"log_id\":{}}");
    rec[9] ^= 0x01;
    db.log.insert(3u64.to_be_bytes(), rec).unwrap();
    db.db.flush().unwrap();
    std::fs::write(dir.join("notes.txt"), "the operator's").unwrap();
    vote
}

#[test]
fn a_damaged_member_store_is_set_aside_and_restarted_empty_marked_for_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let vote = damaged_store(dir.path());

    // Without others to learn from (a manager alone) nothing is touched.
    let err = RaftDb::open_or_rebuild(dir.path(), false).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(RaftDb::open(dir.path()).is_err(), "still the damaged store");

    let (db, aside) = RaftDb::open_or_rebuild(dir.path(), true).unwrap();
    let aside = aside.expect("set aside");
    assert!(aside.damage.contains("raft_log"), "{}", aside.damage);
    assert!(aside.vote_kept);
    assert!(aside.kept_in.starts_with(dir.path()));
    assert!(
        aside.kept_in.join("db").exists(),
        "the damaged files are kept"
    );
    assert!(dir.path().join("notes.txt").exists(), "other files stay");
    assert!(db.log.is_empty(), "the log starts empty");
    assert_eq!(
        db.meta.get(b"vote").unwrap().unwrap().to_vec(),
        vote,
        "the intact vote is carried over"
    );
    assert!(db.is_rebuilding().unwrap());
    drop(db);

    // A restart before it caught up: still being rebuilt, nothing set aside again.
    let (db, again) = RaftDb::open_or_rebuild(dir.path(), true).unwrap();
    assert!(again.is_none());
    assert!(db.is_rebuilding().unwrap());
    db.finish_rebuilding().unwrap();
    drop(db);
    let (db, _) = RaftDb::open_or_rebuild(dir.path(), true).unwrap();
    assert!(
        !db.is_rebuilding().unwrap(),
        "caught up: a member like any other"
    );
    drop(db);

    // Damaged again: only the latest damaged files are kept.
    damaged_store(dir.path());
    let (_db, aside2) = RaftDb::open_or_rebuild(dir.path(), true).unwrap();
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "one set-aside directory");
    assert!(aside2.unwrap().kept_in.join("db").exists());
}
