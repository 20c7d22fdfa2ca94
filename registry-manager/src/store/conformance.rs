//! The conformance suite every [`RegistryStore`] implementation must pass. Each check takes a
//! factory that opens the same storage again ("reopen"), so durability is part of the contract.

use topology::Revision;

use super::{Checkpoint, LogEntry, MemoryStore, RegistryStore, SledStore, StoreError, StoredLog};

fn entry(rev: u64) -> LogEntry {
    LogEntry {
        revision: Revision(rev),
        record: format!("record {rev}").into_bytes(),
    }
}

fn entries(revs: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
    revs.map(entry).collect()
}

/// Runs every check against stores made by `open` (each call reopens the same storage, after
/// the previous handle was dropped).
async fn suite<S: RegistryStore>(fresh: &mut dyn FnMut() -> Box<dyn FnMut() -> S>) {
    empty_store_loads_nothing(&mut fresh()).await;
    appended_entries_load_in_order(&mut fresh()).await;
    out_of_order_appends_are_refused_and_change_nothing(&mut fresh()).await;
    entries_survive_reopen(&mut fresh()).await;
    checkpoint_trims_below_and_keeps_the_window(&mut fresh()).await;
    revisions_continue_after_a_full_trim_and_reopen(&mut fresh()).await;
    bad_checkpoints_are_refused(&mut fresh()).await;
}

async fn empty_store_loads_nothing<S: RegistryStore>(open: &mut dyn FnMut() -> S) {
    let s = open();
    assert_eq!(s.load().unwrap(), StoredLog::default());
    assert_eq!(s.load().unwrap().last_revision(), Revision(0));
}

async fn appended_entries_load_in_order<S: RegistryStore>(open: &mut dyn FnMut() -> S) {
    let s = open();
    s.append(&entries(1..=3)).await.unwrap();
    s.append(&entries(4..=4)).await.unwrap();
    s.append(&[]).await.unwrap();
    let log = s.load().unwrap();
    assert_eq!(log.entries, entries(1..=4));
    assert_eq!(log.last_revision(), Revision(4));
}

async fn out_of_order_appends_are_refused_and_change_nothing<S: RegistryStore>(
    open: &mut dyn FnMut() -> S,
) {
    let s = open();
    s.append(&entries(1..=2)).await.unwrap();
    for bad in [entries(2..=3), entries(4..=4), vec![entry(3), entry(5)]] {
        let err = s.append(&bad).await.unwrap_err();
        assert!(matches!(err, StoreError::OutOfOrder { .. }), "{err}");
    }
    assert_eq!(s.load().unwrap().entries, entries(1..=2));
}

async fn entries_survive_reopen<S: RegistryStore>(open: &mut dyn FnMut() -> S) {
    {
        let s = open();
        s.append(&entries(1..=5)).await.unwrap();
    }
    let s = open();
    assert_eq!(s.load().unwrap().entries, entries(1..=5));
    s.append(&entries(6..=6)).await.unwrap();
    assert_eq!(s.load().unwrap().last_revision(), Revision(6));
}

async fn checkpoint_trims_below_and_keeps_the_window<S: RegistryStore>(
    open: &mut dyn FnMut() -> S,
) {
    let cp = Checkpoint {
        revision: Revision(8),
        state: b"state at 8".to_vec(),
    };
    {
        let s = open();
        s.append(&entries(1..=10)).await.unwrap();
        s.checkpoint(&cp, Revision(6)).await.unwrap();
        let log = s.load().unwrap();
        assert_eq!(log.checkpoint.as_ref(), Some(&cp));
        assert_eq!(log.entries, entries(6..=10));
    }
    let s = open();
    let log = s.load().unwrap();
    assert_eq!(log.checkpoint, Some(cp));
    assert_eq!(log.entries, entries(6..=10));
    // A newer checkpoint replaces the old one.
    let cp2 = Checkpoint {
        revision: Revision(10),
        state: b"state at 10".to_vec(),
    };
    s.checkpoint(&cp2, Revision(9)).await.unwrap();
    let log = s.load().unwrap();
    assert_eq!(log.checkpoint, Some(cp2));
    assert_eq!(log.entries, entries(9..=10));
}

async fn revisions_continue_after_a_full_trim_and_reopen<S: RegistryStore>(
    open: &mut dyn FnMut() -> S,
) {
    {
        let s = open();
        s.append(&entries(1..=4)).await.unwrap();
        let cp = Checkpoint {
            revision: Revision(4),
            state: b"s4".to_vec(),
        };
        s.checkpoint(&cp, Revision(5)).await.unwrap();
        assert!(s.load().unwrap().entries.is_empty());
    }
    let s = open();
    assert_eq!(s.load().unwrap().last_revision(), Revision(4));
    let err = s.append(&entries(1..=1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: Revision(5),
                ..
            }
        ),
        "{err}"
    );
    s.append(&entries(5..=5)).await.unwrap();
    assert_eq!(s.load().unwrap().entries, entries(5..=5));
}

async fn bad_checkpoints_are_refused<S: RegistryStore>(open: &mut dyn FnMut() -> S) {
    let s = open();
    s.append(&entries(1..=3)).await.unwrap();
    let beyond = Checkpoint {
        revision: Revision(4),
        state: vec![],
    };
    assert!(matches!(
        s.checkpoint(&beyond, Revision(1)).await,
        Err(StoreError::BadCheckpoint { .. })
    ));
    let cp = Checkpoint {
        revision: Revision(2),
        state: vec![],
    };
    assert!(matches!(
        s.checkpoint(&cp, Revision(4)).await,
        Err(StoreError::BadCheckpoint { .. })
    ));
    let log = s.load().unwrap();
    assert_eq!(log.checkpoint, None);
    assert_eq!(log.entries, entries(1..=3));
}

#[tokio::test]
async fn sled_store_conforms() {
    let dirs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut fresh = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data");
        dirs.lock().unwrap().push(dir);
        Box::new(move || SledStore::open(&path).expect("open sled"))
            as Box<dyn FnMut() -> SledStore>
    };
    suite(&mut fresh).await;
}

#[tokio::test]
async fn memory_store_conforms() {
    let mut fresh = || {
        let store = MemoryStore::new();
        Box::new(move || store.clone()) as Box<dyn FnMut() -> MemoryStore>
    };
    suite(&mut fresh).await;
}
