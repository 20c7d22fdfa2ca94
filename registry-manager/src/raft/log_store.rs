//! The raft log, vote and committed index in sled (tree `raft_log` keyed by big-endian index,
//! tree `raft_meta` for the rest). Every record carries a checksum ([`crate::store::seal`]); a
//! record that fails it is refused with the file and the remedy, never served.
//!
//! Appends are acknowledged to openraft (its `IOFlushed` callback) only once sled has flushed
//! them to disk; the vote is flushed before `save_vote` returns.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
use crate::store::{seal, unseal, RaftDb};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The raft log store (cheap to clone; clones share the database).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<RaftDb>,
    /// Serialises writers of the log tree (append, truncate, purge) with reads of its tail.
    lock: Arc<Mutex<()>>,
}

impl LogStore {
    /// The log store of an opened database.
    pub fn new(db: Arc<RaftDb>) -> LogStore {
        LogStore {
            db,
            lock: Arc::new(Mutex::new(())),
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.meta.get(key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(v) => {
                let body = unseal(&v).map_err(|e| self.db.damaged("raft_meta", key, &e))?;
                serde_json::from_slice(body)
                    .map(Some)
                    .map_err(|e| self.db.damaged("raft_meta", key, &e.to_string()))
            }
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let body = serde_json::to_vec(value).map_err(io::Error::other)?;
        self.db
            .meta
            .insert(key, seal(&body))
            .map_err(io::Error::other)?;
        Ok(())
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> io::Result<Entry> {
        let body = unseal(value).map_err(|e| self.db.damaged("raft_log", key, &e))?;
        serde_json::from_slice(body).map_err(|e| self.db.damaged("raft_log", key, &e.to_string()))
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        match self.db.log.last().map_err(io::Error::other)? {
            None => Ok(None),
            Some((k, v)) => self.decode_entry(&k, &v).map(Some),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.db.log.range(key(start)..) {
            let (k, v) = kv.map_err(io::Error::other)?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| self.db.damaged("raft_log", &k, "a key that is not 8 bytes"))?,
            );
            if !range.contains(&index) {
                break;
            }
            out.push(self.decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote)?;
        self.db.db.flush_async().await.map_err(io::Error::other)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Flushed with the next append or vote; losing it only means re-applying less at start.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = sled::Batch::default();
            for e in entries {
                let body = serde_json::to_vec(&e).map_err(io::Error::other)?;
                batch.insert(&key(e.log_id.index), seal(&body));
            }
            self.db.log.apply_batch(batch).map_err(io::Error::other)?;
        }
        let flushed = self.db.db.flush_async().await.map_err(io::Error::other);
        match flushed {
            Ok(_) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let start = last_log_id.map_or(0, |l| l.index + 1);
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = sled::Batch::default();
            for k in self.db.log.range(key(start)..).keys() {
                batch.remove(k.map_err(io::Error::other)?);
            }
            self.db.log.apply_batch(batch).map_err(io::Error::other)?;
        }
        self.db.db.flush_async().await.map_err(io::Error::other)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.put_meta(LAST_PURGED, &log_id)?;
            let mut batch = sled::Batch::default();
            for k in self.db.log.range(..=key(log_id.index)).keys() {
                batch.remove(k.map_err(io::Error::other)?);
            }
            self.db.log.apply_batch(batch).map_err(io::Error::other)?;
        }
        self.db.db.flush_async().await.map_err(io::Error::other)?;
        Ok(())
    }
}
