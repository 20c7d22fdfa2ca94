//! Persistence of the registry copy in sled under `data_dir`, so a restarted agent answers at
//! once from what it last knew, even with every manager down, and resumes the watch from that
//! revision.
//!
//! Layout (one tree, `copy`): `meta/revision` (u64 big-endian), `meta/topology` (YAML text),
//! `host/<name>` (an encoded `HostEntry`), `meta/history` (the registry's history id),
//! `meta/session` (the session id) with `meta/session_ttl` (the TTL the manager granted it, in
//! milliseconds, u64 big-endian; absent in stores written before it was kept). Every watch event is written as one atomic batch, so
//! the stored copy is always the copy at some revision, never a mix of two.
//!
//! Every value is sealed: an 8-byte xxh3 checksum of the body, then the body (`meta/format`
//! = `2` says so). A value whose checksum does not match is damage: [`CopyStore::load`] fails
//! with [`StoreError::Corrupt`] naming the key, and the agent discards the copy and starts from a
//! fresh snapshot of the registry. A store written before values were sealed (no
//! `meta/format`) is read as it is and rewritten sealed once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use proto::v1 as pb;

use crate::registry_copy::RegistryCopy;

const KEY_REVISION: &[u8] = b"meta/revision";
const KEY_TOPOLOGY: &[u8] = b"meta/topology";
const KEY_SESSION: &[u8] = b"meta/session";
const KEY_SESSION_TTL: &[u8] = b"meta/session_ttl";
const KEY_HISTORY: &[u8] = b"meta/history";
const KEY_FORMAT: &[u8] = b"meta/format";
const HOST_PREFIX: &[u8] = b"host/";
/// `meta/format` of a store whose values are sealed.
const FORMAT_SEALED: &[u8] = b"2";

/// A value as stored: the xxh3 checksum of `body`, then `body`.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a sealed value, or the damage found, naming the key.
fn unseal(key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let damaged = |what: &str| {
        StoreError::Corrupt(format!(
            "value of {:?} {what}",
            String::from_utf8_lossy(key)
        ))
    };
    if value.len() < 8 {
        return Err(damaged("is shorter than its checksum"));
    }
    let (sum, body) = value.split_at(8);
    if xxhash_rust::xxh3::xxh3_64(body).to_be_bytes() != sum {
        return Err(damaged("does not match its checksum"));
    }
    Ok(body.to_vec())
}
/// sled's page cache; the copy itself is small and lives in memory anyway.
const CACHE_BYTES: u64 = 4 << 20;

/// Errors of the persisted copy.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the registry copy in {dir}: {source}; check that the directory is writable and that no other agent uses it")]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// The sled error.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("registry copy storage error: {0}")]
    Io(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("the stored registry copy is damaged ({0})")]
    Corrupt(String),
}

/// The sled-backed store of the registry copy.
#[derive(Debug, Clone)]
pub struct CopyStore {
    db: sled::Db,
    tree: sled::Tree,
}

/// The values of a [`CopyStore`], read through their seals (or as they are, in a store written
/// before values were sealed).
struct Reader<'a> {
    tree: &'a sled::Tree,
    sealed: bool,
}

impl Reader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) if self.sealed => unseal(key, &v).map(Some),
            Some(v) => Ok(Some(v.to_vec())),
        }
    }

    fn hosts(&self) -> Result<Vec<pb::HostEntry>, StoreError> {
        let mut hosts = Vec::new();
        for kv in self.tree.scan_prefix(HOST_PREFIX) {
            let (k, v) = kv?;
            let body = if self.sealed {
                unseal(&k, &v)?
            } else {
                v.to_vec()
            };
            hosts.push(pb::HostEntry::decode(body.as_slice()).map_err(|e| {
                StoreError::Corrupt(format!("{:?}: {e}", String::from_utf8_lossy(&k)))
            })?);
        }
        Ok(hosts)
    }
}

impl CopyStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<CopyStore, StoreError> {
        let open_err = |source| StoreError::Open {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("registry-copy"))
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(open_err)?;
        let tree = db.open_tree("copy").map_err(open_err)?;
        if tree.is_empty() {
            tree.insert(KEY_FORMAT, FORMAT_SEALED).map_err(open_err)?;
        }
        Ok(CopyStore { db, tree })
    }

    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let sealed = self
            .tree
            .get(KEY_FORMAT)?
            .is_some_and(|f| f == FORMAT_SEALED);
        Ok(Reader {
            tree: &self.tree,
            sealed,
        })
    }

    /// Forgets everything stored (a damaged copy), keeping the store usable.
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        self.tree.insert(KEY_FORMAT, FORMAT_SEALED)?;
        self.db.flush()?;
        Ok(())
    }

    /// Rewrites a store written before values were sealed, sealed.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k.as_ref() != KEY_FORMAT {
                batch.insert(k, seal(&v));
            }
        }
        batch.insert(KEY_FORMAT, FORMAT_SEALED);
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The persisted copy, or an empty one when nothing was stored yet.
    pub fn load(&self) -> Result<RegistryCopy, StoreError> {
        let r = self.reader()?;
        let copy = self.load_with(&r)?;
        if !r.sealed && copy.revision() > 0 {
            self.migrate()?;
        }
        Ok(copy)
    }

    fn load_with(&self, r: &Reader<'_>) -> Result<RegistryCopy, StoreError> {
        let revision = match r.get(KEY_REVISION)? {
            None => return Ok(RegistryCopy::default()),
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("revision is not 8 bytes".into()))?,
            ),
        };
        let topology_yaml = match r.get(KEY_TOPOLOGY)? {
            Some(v) => String::from_utf8(v)
                .map_err(|_| StoreError::Corrupt("topology is not UTF-8".into()))?,
            None => String::new(),
        };
        let hosts = r.hosts()?;
        let mut copy = RegistryCopy::from_state(&pb::RegistryState {
            revision,
            topology_yaml,
            hosts,
        });
        copy.history = r
            .get(KEY_HISTORY)?
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        Ok(copy)
    }

    /// Replaces the stored copy by a full state.
    pub async fn save_state(&self, state: &pb::RegistryState) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let keep: std::collections::HashSet<Vec<u8>> =
            state.hosts.iter().map(|h| host_key(&h.host)).collect();
        for kv in self.tree.scan_prefix(HOST_PREFIX).keys() {
            let k = kv?;
            if !keep.contains(k.as_ref()) {
                batch.remove(k);
            }
        }
        for h in &state.hosts {
            batch.insert(host_key(&h.host), seal(&h.encode_to_vec()));
        }
        batch.insert(KEY_TOPOLOGY, seal(state.topology_yaml.as_bytes()));
        batch.insert(KEY_REVISION, seal(&state.revision.to_be_bytes()));
        self.tree.apply_batch(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Applies a delta to the stored copy.
    pub async fn save_delta(&self, delta: &pb::Delta) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for h in &delta.removed_hosts {
            batch.remove(host_key(h));
        }
        for h in &delta.upserts {
            batch.insert(host_key(&h.host), seal(&h.encode_to_vec()));
        }
        if let Some(t) = &delta.topology_yaml {
            batch.insert(KEY_TOPOLOGY, seal(t.as_bytes()));
        }
        batch.insert(KEY_REVISION, seal(&delta.revision.to_be_bytes()));
        self.tree.apply_batch(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

/// The last session this agent held, as persisted (to resume it after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    /// The session id.
    pub id: String,
    /// The TTL the manager granted it; `None` in a store written before it was kept.
    pub ttl: Option<Duration>,
}

impl CopyStore {
    /// The last session this agent held (to resume it after a restart).
    pub fn load_session(&self) -> Result<Option<SavedSession>, StoreError> {
        let r = self.reader()?;
        let Some(id) = r
            .get(KEY_SESSION)?
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let ttl = r
            .get(KEY_SESSION_TTL)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Ok(Some(SavedSession { id, ttl }))
    }

    /// Remembers the registry's history id of the copy.
    pub async fn save_history(&self, history: &str) -> Result<(), StoreError> {
        self.tree.insert(KEY_HISTORY, seal(history.as_bytes()))?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Remembers the current session id and the TTL the manager granted it, in one atomic
    /// batch (`None`: forget them).
    pub async fn save_session(&self, session: Option<(&str, Duration)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        match session {
            Some((id, ttl)) => {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                batch.insert(KEY_SESSION, seal(id.as_bytes()));
                batch.insert(KEY_SESSION_TTL, seal(&ms.to_be_bytes()));
            }
            None => {
                batch.remove(KEY_SESSION);
                batch.remove(KEY_SESSION_TTL);
            }
        }
        self.tree.apply_batch(batch)?;
        self.db.flush_async().await?;
        Ok(())
    }
}

fn host_key(host: &str) -> Vec<u8> {
    let mut k = HOST_PREFIX.to_vec();
    k.extend_from_slice(host.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str) -> pb::HostEntry {
        pb::HostEntry {
            host: host.into(),
            alive: true,
            packages: vec![pb::Package {
                r#type: "ccm".into(),
                endpoint: "127.0.0.1:1".into(),
                status: pb::PackageStatus::Running as i32,
            }],
        }
    }

    /// Opens the store again; sled's background flush may hold the directory a moment after
    /// the previous store was dropped.
    async fn reopen(dir: &std::path::Path) -> CopyStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match CopyStore::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn persists_snapshot_and_deltas_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = CopyStore::open(dir.path()).unwrap();
            assert_eq!(s.load().unwrap().revision(), 0);
            let state = pb::RegistryState {
                revision: 4,
                topology_yaml: "version: 1\ndomain: r\nhosts: [a, b]\n".into(),
                hosts: vec![entry("a"), entry("b")],
            };
            s.save_state(&state).await.unwrap();
            s.save_delta(&pb::Delta {
                revision: 5,
                upserts: vec![entry("c")],
                removed_hosts: vec!["a".into()],
                topology_yaml: None,
                status_changes: Vec::new(),
                lapsed_hosts: Vec::new(),
            })
            .await
            .unwrap();
        }
        let s = reopen(dir.path()).await;
        let c = s.load().unwrap();
        assert_eq!(c.revision(), 5);
        assert!(c.topology.is_some());
        let names: Vec<&str> = c.snapshot.hosts.keys().map(|h| h.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        // A new snapshot drops hosts it does not name.
        s.save_state(&pb::RegistryState {
            revision: 9,
            topology_yaml: String::new(),
            hosts: vec![entry("z")],
        })
        .await
        .unwrap();
        let c = s.load().unwrap();
        assert_eq!(c.revision(), 9);
        assert!(c.topology.is_none());
        assert_eq!(
            c.snapshot
                .hosts
                .keys()
                .map(|h| h.as_str())
                .collect::<Vec<_>>(),
            ["z"]
        );
        assert_eq!(s.load_session().unwrap(), None);
        s.save_session(Some(("abc", Duration::from_millis(300))))
            .await
            .unwrap();
        assert_eq!(
            s.load_session().unwrap(),
            Some(SavedSession {
                id: "abc".into(),
                ttl: Some(Duration::from_millis(300))
            })
        );
        s.save_session(None).await.unwrap();
        assert_eq!(s.load_session().unwrap(), None);
    }

    #[tokio::test]
    async fn the_session_ttl_survives_a_reopen_and_an_old_store_has_none() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = CopyStore::open(dir.path()).unwrap();
            s.save_session(Some(("s-1", Duration::from_secs(7))))
                .await
                .unwrap();
        }
        let s = reopen(dir.path()).await;
        let saved = s.load_session().unwrap().unwrap();
        assert_eq!(
            (saved.id.as_str(), saved.ttl),
            ("s-1", Some(Duration::from_secs(7)))
        );
        // A store written before the TTL was kept holds the id alone.
        s.tree.remove(KEY_SESSION_TTL).unwrap();
        assert_eq!(
            s.load_session().unwrap(),
            Some(SavedSession {
                id: "s-1".into(),
                ttl: None
            })
        );
        // A damaged TTL is ignored, not fatal.
        s.tree.insert(KEY_SESSION_TTL, &b"xx"[..]).unwrap();
        assert_eq!(s.load_session().unwrap().unwrap().ttl, None);
    }

    #[tokio::test]
    async fn a_damaged_value_is_refused_naming_its_key_and_clear_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let s = CopyStore::open(dir.path()).unwrap();
        s.save_state(&pb::RegistryState {
            revision: 3,
            topology_yaml: String::new(),
            hosts: vec![entry("a"), entry("b")],
        })
        .await
        .unwrap();
        // One bit of host b's entry flips: protobuf would still decode it, the seal does not.
        let mut v = s.tree.get(host_key("b")).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        s.tree.insert(host_key("b"), v).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("\"host/b\" does not match its checksum"), "{e}");
        s.clear().unwrap();
        assert_eq!(s.load().unwrap().revision(), 0);
        assert_eq!(s.load_session().unwrap(), None);
    }

    #[tokio::test]
    async fn a_store_written_before_values_were_sealed_is_read_and_rewritten_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let s = CopyStore::open(dir.path()).unwrap();
        s.tree.clear().unwrap();
        s.tree.insert(KEY_REVISION, &7u64.to_be_bytes()).unwrap();
        s.tree
            .insert(host_key("a"), entry("a").encode_to_vec())
            .unwrap();
        s.tree.insert(KEY_SESSION, &b"s-9"[..]).unwrap();
        assert_eq!(s.load_session().unwrap().unwrap().id, "s-9");
        let c = s.load().unwrap();
        assert_eq!(c.revision(), 7);
        assert_eq!(c.snapshot.hosts.len(), 1);
        assert_eq!(
            s.tree.get(KEY_FORMAT).unwrap().unwrap().as_ref(),
            FORMAT_SEALED
        );
        assert_eq!(s.load().unwrap().revision(), 7);
        assert_eq!(s.load_session().unwrap().unwrap().id, "s-9");
    }
}
