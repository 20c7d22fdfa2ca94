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
    match e {
        // sled's own files fail their checks: the store is damaged, not busy or unwritable.
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        e => StoreError::Engine(e.to_string()),
    }
}

/// The record that marks a store being rebuilt from the group (see [`RaftDb::open_or_rebuild`]).
const REBUILDING: &[u8] = b"rebuilding";
/// The vote record (the same key the log store uses).
const VOTE: &[u8] = b"vote";
/// Where a damaged store is set aside, inside the data directory.
pub const DAMAGED_PREFIX: &str = "damaged-";

/// A store found damaged at start and set aside; the member starts empty and is rebuilt.
#[derive(Debug, Clone)]
pub struct SetAside {
    /// What was damaged (the message naming the file and record).
    pub damage: String,
    /// Where the damaged files are kept.
    pub kept_in: PathBuf,
    /// Whether the last vote could be carried over (its record was intact).
    pub vote_kept: bool,
}

impl RaftDb {
    /// Opens (or creates) the database in `dir`, checks every record, and converts a data
    /// directory of the single-manager format. Blocking: call it from a blocking context.
    pub fn open(dir: &Path) -> Result<RaftDb, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Engine(format!("cannot create the data directory: {e}")))?;
        let db =
            open_sled(sled::Config::new().path(dir).cache_capacity(64 << 20)).map_err(engine)?;
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

    /// Opens the store in `dir` like [`RaftDb::open`]; when it is damaged and `rebuild` is set
    /// (a member of a group with others to learn from), sets the damaged files aside in
    /// `dir/damaged-<seconds since 1970>` (keeping only the latest such directory), carries the
    /// last vote over when its record is intact, and starts an empty store marked as being
    /// rebuilt: such a member does not stand for election nor grant votes until it has caught up
    /// with the group ([`RaftDb::finish_rebuilding`]). A store already being rebuilt (a restart
    /// before it caught up) stays marked. Blocking.
    pub fn open_or_rebuild(
        dir: &Path,
        rebuild: bool,
    ) -> Result<(RaftDb, Option<SetAside>), StoreError> {
        let damage = match RaftDb::open(dir) {
            Ok(db) => return Ok((db, None)),
            Err(StoreError::Corrupt(damage)) if rebuild => damage,
            Err(e) => return Err(e),
        };
        let vote = intact_vote(dir);
        let kept_in = set_aside(dir)?;
        let db = RaftDb::open(dir)?;
        if let Some(v) = &vote {
            db.meta.insert(VOTE, v.clone()).map_err(engine)?;
        }
        db.mark_rebuilding()?;
        Ok((
            db,
            Some(SetAside {
                damage,
                kept_in,
                vote_kept: vote.is_some(),
            }),
        ))
    }

    /// Marks the store as being rebuilt from the group. Durable.
    pub fn mark_rebuilding(&self) -> Result<(), StoreError> {
        self.meta.insert(REBUILDING, seal(b"1")).map_err(engine)?;
        self.db.flush().map_err(engine)?;
        Ok(())
    }

    /// True while the store is being rebuilt from the group.
    pub fn is_rebuilding(&self) -> Result<bool, StoreError> {
        self.meta.contains_key(REBUILDING).map_err(engine)
    }

    /// Ends the rebuild: the member has caught up with the group and votes again. Durable.
    pub fn finish_rebuilding(&self) -> Result<(), StoreError> {
        self.meta.remove(REBUILDING).map_err(engine)?;
        self.db.flush().map_err(engine)?;
        Ok(())
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
             Remedy: a member of a group sets the damaged files aside and rebuilds itself from \
             the others when it is started again; a manager alone is restored from a backup \
             (`registry-manager restore FILE --data-dir DIR` into an empty DIR)",
            self.path.join("db").display(),
            String::from_utf8_lossy(key).escape_debug(),
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

/// How long opening a store waits for its directory's lock. sled's background threads let go
/// of it a moment after the last handle in this process is dropped, so a store opened again
/// at once (after an open found it damaged, to read its vote) can find it still held; a
/// manager started on a directory another running manager holds is told so after this long.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_sled(config: sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled says so only in the text of an I/O error.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            outcome => return outcome,
        }
    }
}

/// The sealed vote record of the store in `dir` when it opens and the record is intact.
fn intact_vote(dir: &Path) -> Option<Vec<u8>> {
    let db = open_sled(sled::Config::new().path(dir)).ok()?;
    let v = db.open_tree(META_TREE).ok()?.get(VOTE).ok()??;
    unseal(&v).ok()?;
    Some(v.to_vec())
}

/// Moves the store's files in `dir` into a new
/// `dir/damaged-<seconds>`, and removes the earlier ones (the latest damage is kept).
fn set_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let io = |what: &str, p: &Path, e: io::Error| {
        StoreError::Engine(format!(
            "setting the damaged store aside: {what} {}: {e}",
            p.display()
        ))
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept_in = dir.join(format!("{DAMAGED_PREFIX}{secs}"));
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io("reading", dir, e))? {
        let e = e.map_err(|e| io("reading", dir, e))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(DAMAGED_PREFIX) {
            std::fs::remove_dir_all(&path).map_err(|e| io("removing", &path, e))?;
        } else if matches!(name.as_str(), "conf" | "db" | "blobs") || name.starts_with("snap.") {
            // sled's files; anything else an operator keeps here stays where it is.
            entries.push((e.file_name(), path));
        }
    }
    std::fs::create_dir_all(&kept_in).map_err(|e| io("creating", &kept_in, e))?;
    for (name, path) in entries {
        std::fs::rename(&path, kept_in.join(&name)).map_err(|e| io("moving", &path, e))?;
    }
    Ok(kept_in)
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
                    delta: crate::wire::encode_delta(&delta).full,
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
