//! [`RegistryStore`] on sled 0.34: tree `log` keyed by big-endian revision (so key order is
//! revision order), tree `meta` holding the checkpoint. A write is acknowledged only after
//! `flush_async` (fsync) returned.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::BoxFuture;
use topology::Revision;

use super::{
    check_checkpoint, check_order, Checkpoint, LogEntry, RegistryStore, StoreError, StoredLog,
};

const LOG_TREE: &[u8] = b"log";
const META_TREE: &[u8] = b"meta";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// Registry storage in a sled database directory.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Last revision written; appends must continue it.
    last: Mutex<Revision>,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. Blocking: call it from a blocking context.
    /// Fails when another process holds the directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Engine(format!("cannot create the data directory: {e}")))?;
        // The page cache is bounded explicitly: the registry itself lives in memory already.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .map_err(engine)?;
        let log = db.open_tree(LOG_TREE).map_err(engine)?;
        let meta = db.open_tree(META_TREE).map_err(engine)?;
        let store = SledStore {
            path: dir.to_owned(),
            db,
            log,
            meta,
            last: Mutex::new(Revision(0)),
        };
        let last = store.load()?.last_revision();
        *store.last.lock().expect("sled store lock") = last;
        Ok(store)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let Some(v) = self.meta.get(CHECKPOINT_KEY).map_err(engine)? else {
            return Ok(None);
        };
        if v.len() < 8 {
            return Err(StoreError::Corrupt(
                "checkpoint record shorter than its header".into(),
            ));
        }
        let (rev, state) = v.split_at(8);
        let revision = Revision(u64::from_be_bytes(rev.try_into().expect("8 bytes")));
        Ok(Some(Checkpoint {
            revision,
            state: state.to_vec(),
        }))
    }
}

fn revision_of(key: &[u8]) -> Result<Revision, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(Revision(u64::from_be_bytes(bytes)))
}

impl RegistryStore for SledStore {
    fn load(&self) -> Result<StoredLog, StoreError> {
        let checkpoint = self.read_checkpoint()?;
        let mut entries = Vec::new();
        for kv in self.log.iter() {
            let (k, v) = kv.map_err(engine)?;
            entries.push(LogEntry {
                revision: revision_of(&k)?,
                record: v.to_vec(),
            });
        }
        // The log must be contiguous and reach back to the checkpoint (or to revision 1).
        if let Some(first) = entries.first() {
            let earliest_allowed = checkpoint.as_ref().map_or(1, |c| c.revision.0 + 1);
            if first.revision.0 > earliest_allowed {
                return Err(StoreError::Corrupt(format!(
                    "log starts at revision {} but the state before it is missing (expected at most {earliest_allowed})",
                    first.revision
                )));
            }
        }
        for w in entries.windows(2) {
            if w[1].revision.0 != w[0].revision.0 + 1 {
                return Err(StoreError::Corrupt(format!(
                    "log has a gap between revisions {} and {}",
                    w[0].revision, w[1].revision
                )));
            }
        }
        Ok(StoredLog {
            checkpoint,
            entries,
        })
    }

    fn append<'a>(&'a self, entries: &'a [LogEntry]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            {
                let mut last = self.last.lock().expect("sled store lock");
                check_order(*last, entries)?;
                let mut batch = sled::Batch::default();
                for e in entries {
                    batch.insert(&e.revision.0.to_be_bytes(), e.record.as_slice());
                }
                self.log.apply_batch(batch).map_err(engine)?;
                if let Some(e) = entries.last() {
                    *last = e.revision;
                }
            }
            self.db.flush_async().await.map_err(engine)?;
            Ok(())
        })
    }

    fn checkpoint<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
        trim_below: Revision,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            {
                let last = self.last.lock().expect("sled store lock");
                check_checkpoint(*last, checkpoint, trim_below)?;
                let mut value = Vec::with_capacity(8 + checkpoint.state.len());
                value.extend_from_slice(&checkpoint.revision.0.to_be_bytes());
                value.extend_from_slice(&checkpoint.state);
                self.meta.insert(CHECKPOINT_KEY, value).map_err(engine)?;
            }
            self.db.flush_async().await.map_err(engine)?;
            // Trim only once the checkpoint is durable; a crash before the trim leaves extra
            // old entries, which load tolerates.
            let mut batch = sled::Batch::default();
            for k in self.log.range(..trim_below.0.to_be_bytes()).keys() {
                batch.remove(k.map_err(engine)?);
            }
            self.log.apply_batch(batch).map_err(engine)?;
            Ok(())
        })
    }
}
