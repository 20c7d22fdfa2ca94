//! The member's sled database: the raft log (`raft_log`), the raft metadata and the latest
//! snapshot (`raft_meta`). Every record is sealed with a checksum ([`seal`]); [`RaftDb::open`]
//! checks every record before anything is served, and a damaged store is refused with a
//! message naming the file and the remedy.
//!
//! A data directory written before the registry became a group (trees `log` and `meta`: a
//! command log with a checkpoint) is read once, its registry becomes the starting state of a
//! group of one with its revisions intact, and the old trees are removed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use topology::Revision;
use xxhash_rust::xxh3::xxh3_64;

use crate::log_record::LogRecord;
use crate::state::State;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, lock held by another process, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored data is damaged or does not decode.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
}

const LOG_TREE: &[u8] = b"raft_log";
const META_TREE: &[u8] = b"raft_meta";
const BASE_STATE: &[u8] = b"base_state";
const LEGACY_LOG: &[u8] = b"log";
const LEGACY_META: &[u8] = b"meta";

/// Seals a record: an 8-byte xxh3 checksum of the body, then the body.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&xxh3_64(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a sealed record, or what is wrong with it.
pub fn unseal(record: &[u8]) -> Result<&[u8], String> {
    if record.len() < 8 {
        return Err("a record shorter than its checksum".into());
    }
    let (sum, body) = record.split_at(8);
    if xxh3_64(body).to_be_bytes() != sum {
        return Err("a record whose checksum does not match its content".into());
    }
    Ok(body)
}

/// The opened database of one member.
pub struct RaftDb {
    /// The data directory.
    pub path: PathBuf,
    /// The sled database (for flushes).
    pub db: sled::Db,
    /// Raft log entries by big-endian index.
    pub log: sled::Tree,
    /// Vote, committed index, last purged id, snapshot, base state.
    pub meta: sled::Tree,
}

impl fmt::Debug for RaftDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftDb").field("path", &self.path).finish()
    }
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl RaftDb {
    /// Opens (or creates) the database in `dir`, checks every record, and converts a data
    /// directory of the single-manager format. Blocking: call it from a blocking context.
    pub fn open(dir: &Path) -> Result<RaftDb, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Engine(format!("cannot create the data directory: {e}")))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .map_err(engine)?;
        let log = db.open_tree(LOG_TREE).map_err(engine)?;
        let meta = db.open_tree(META_TREE).map_err(engine)?;
        let raft = RaftDb {
            path: dir.to_owned(),
            db,
            log,
            meta,
        };
        raft.verify()?;
        raft.convert_legacy()?;
        Ok(raft)
    }

    /// An io error for a damaged record, naming the file and the remedy.
    pub fn damaged(&self, tree: &str, key: &[u8], what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            self.damage_text(tree, key, what),
        )
    }

    fn damage_text(&self, tree: &str, key: &[u8], what: &str) -> String {
        format!(
            "{}: tree {tree}, record {}: {what}. This member's store is damaged and is not served. \
             Remedy: stop this manager, move {} aside, and start it again with the same group \
             configuration: a member of a group is rebuilt from the others; a manager alone is \
             restored from a backup (`registry-manager restore`)",
            self.path.join("db").display(),
            String::from_utf8_lossy(key).escape_debug(),
            self.path.display()
        )
    }

    fn verify(&self) -> Result<(), StoreError> {
        for (name, tree) in [("raft_log", &self.log), ("raft_meta", &self.meta)] {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(engine)?;
                if let Err(what) = unseal(&v) {
                    return Err(StoreError::Corrupt(self.damage_text(name, &k, &what)));
                }
            }
        }
        Ok(())
    }

    /// The registry state the raft log starts from: the state converted from a single-manager
    /// data directory, or none (an empty registry).
    pub fn base_state(&self) -> Result<Option<State>, StoreError> {
        let Some(v) = self.meta.get(BASE_STATE).map_err(engine)? else {
            return Ok(None);
        };
        let body = unseal(&v)
            .map_err(|e| StoreError::Corrupt(self.damage_text("raft_meta", BASE_STATE, &e)))?;
        State::from_bytes(body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(self.damage_text("raft_meta", BASE_STATE, &e)))
    }

    /// True when the store holds no registry (no raft log, no vote, no base state).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.log.is_empty() && self.meta.is_empty())
    }

    /// Makes `state` the state the raft log starts from (a restored backup), durably.
    pub fn set_base_state(&self, state: &State) -> Result<(), StoreError> {
        self.meta
            .insert(BASE_STATE, seal(&state.to_bytes()))
            .map_err(engine)?;
        self.db.flush().map_err(engine)?;
        Ok(())
    }

    /// Converts trees `log` + `meta` of the single-manager format into the base state.
    fn convert_legacy(&self) -> Result<(), StoreError> {
        let names = self.db.tree_names();
        if !names.iter().any(|n| n.as_ref() == LEGACY_LOG) {
            return Ok(());
        }
        let legacy_log = self.db.open_tree(LEGACY_LOG).map_err(engine)?;
        let legacy_meta = self.db.open_tree(LEGACY_META).map_err(engine)?;
        if legacy_log.is_empty() && legacy_meta.is_empty() {
            drop((legacy_log, legacy_meta));
            let _ = self.db.drop_tree(LEGACY_LOG);
            let _ = self.db.drop_tree(LEGACY_META);
            return Ok(());
        }
        if !self.log.is_empty() || self.meta.contains_key(BASE_STATE).map_err(engine)? {
            return Err(StoreError::Corrupt(format!(
                "{} holds both the single-manager format and a group's log; move it aside and restore from a backup",
                self.path.display()
            )));
        }
        let mut state = match legacy_meta.get(b"checkpoint").map_err(engine)? {
            Some(v) if v.len() >= 8 => {
                let (rev, bytes) = v.split_at(8);
                let s = State::from_bytes(bytes).map_err(StoreError::Corrupt)?;
                let rev = Revision(u64::from_be_bytes(rev.try_into().expect("8 bytes")));
                if s.revision() != rev {
                    return Err(StoreError::Corrupt(format!(
                        "the old checkpoint at revision {rev} holds a state at revision {}",
                        s.revision()
                    )));
                }
                s
            }
            Some(_) => {
                return Err(StoreError::Corrupt(
                    "the old checkpoint is shorter than its header".into(),
                ))
            }
            None => State::new(),
        };
        for kv in legacy_log.iter() {
            let (k, v) = kv.map_err(engine)?;
            let revision =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt("an old log key that is not 8 bytes".into())
                })?);
            if revision <= state.revision().0 {
                continue;
            }
            let rec = LogRecord::decode(&v).map_err(|e| {
                StoreError::Corrupt(format!("old log entry at revision {revision}: {e}"))
            })?;
            let delta = state.apply(&rec.command);
            if delta.revision.0 != revision {
                return Err(StoreError::Corrupt(format!(
                    "the old log has a gap before revision {revision}"
                )));
            }
        }
        self.meta
            .insert(BASE_STATE, seal(&state.to_bytes()))
            .map_err(engine)?;
        self.db.flush().map_err(engine)?;
        drop((legacy_log, legacy_meta));
        self.db.drop_tree(LEGACY_LOG).map_err(engine)?;
        self.db.drop_tree(LEGACY_META).map_err(engine)?;
        self.db.flush().map_err(engine)?;
        tracing::info!(
            revision = %state.revision(),
            "converted a single-manager data directory: it is now a group of one with its revisions intact"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn a_single_manager_data_directory_opens_as_the_base_of_a_group_with_its_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let topo = "version: 1\ndomain: root\nhosts: [a, b]\n".to_string();
        let cmds = [
            Command::ApplyTopology { yaml: topo.clone() },
            Command::ApplyTopology {
                yaml: "version: 1\ndomain: root\nhosts: [a]\n".into(),
            },
            Command::ApplyTopology { yaml: topo },
        ];
        // The old format: a checkpoint at revision 1, the log from revision 1 to 3.
        {
            let db = sled::open(dir.path()).unwrap();
            let log = db.open_tree(LEGACY_LOG).unwrap();
            let meta = db.open_tree(LEGACY_META).unwrap();
            let mut s = State::new();
            for (i, c) in cmds.iter().enumerate() {
                let delta = s.apply(c);
                let rec = LogRecord {
                    command: c.clone(),
                    delta: crate::wire::encode_delta(&delta),
                };
                log.insert((i as u64 + 1).to_be_bytes(), rec.encode())
                    .unwrap();
                if i == 0 {
                    let mut cp = 1u64.to_be_bytes().to_vec();
                    cp.extend_from_slice(&s.to_bytes());
                    meta.insert(b"checkpoint", cp).unwrap();
                }
            }
            db.flush().unwrap();
        }
        let db = RaftDb::open(dir.path()).unwrap();
        let base = db.base_state().unwrap().expect("converted");
        assert_eq!(base.revision(), Revision(3), "revisions intact");
        assert!(base.topology().unwrap().host("b").is_some());
        assert!(
            !db.db.tree_names().iter().any(|n| n.as_ref() == LEGACY_LOG),
            "the old trees are gone"
        );
        drop(db);
        // Opening again changes nothing.
        let db = RaftDb::open(dir.path()).unwrap();
        assert_eq!(db.base_state().unwrap().unwrap().revision(), Revision(3));
    }
}
