//! `registry-manager backup FILE` and `restore FILE --data-dir DIR`: a consistent copy of the
//! whole registry in one JSON file (with a checksum of the state), and a new store made from
//! it.
//!
//! A restored store is a **new history**: its history id is derived from the backup (the same
//! for every member restored from the same file, so a group's members agree), and agents whose
//! copies belong to the old history are sent a full snapshot, never deltas of another history.

use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::state::State;
use crate::store::{RaftDb, StoreError};

/// The file's format marker.
const FORMAT: &str = "fleet-registry-backup";

/// A backup file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The registry revision backed up.
    pub revision: u64,
    /// The history the backup was taken from.
    pub history: String,
    /// xxh3-64 of the state's JSON text, in hex.
    pub checksum: String,
    /// The registry state.
    pub state: Box<serde_json::value::RawValue>,
}

impl BackupFile {
    /// A backup of an encoded state.
    pub fn new(revision: u64, history: String, state: &[u8]) -> Result<BackupFile, String> {
        let text = std::str::from_utf8(state).map_err(|e| format!("state is not UTF-8: {e}"))?;
        let raw = serde_json::value::RawValue::from_string(text.to_owned())
            .map_err(|e| format!("state is not JSON: {e}"))?;
        Ok(BackupFile {
            format: FORMAT.into(),
            version: 1,
            revision,
            history,
            checksum: format!("{:016x}", xxh3_64(text.as_bytes())),
            state: raw,
        })
    }

    /// Reads and checks a backup file.
    pub fn read(path: &Path) -> Result<BackupFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let b: BackupFile = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a fleet-registry backup: {e}", path.display()))?;
        if b.format != FORMAT || b.version != 1 {
            return Err(format!(
                "{}: format {:?} version {} is not a fleet-registry backup this build reads ({FORMAT} 1)",
                path.display(),
                b.format,
                b.version
            ));
        }
        let sum = format!("{:016x}", xxh3_64(b.state.get().as_bytes()));
        if sum != b.checksum {
            return Err(format!(
                "{}: the state's checksum {sum} does not match the recorded {}; the file is damaged",
                path.display(),
                b.checksum
            ));
        }
        Ok(b)
    }

    /// The registry of the backup, as the start of a new history.
    pub fn restored_state(&self) -> Result<State, String> {
        let state = State::from_bytes(self.state.get().as_bytes())?;
        if state.revision().0 != self.revision {
            return Err(format!(
                "the backup says revision {} but holds a state at revision {}",
                self.revision,
                state.revision()
            ));
        }
        let id = xxh3_128(
            format!(
                "{}/{}/{}/restored",
                self.history, self.revision, self.checksum
            )
            .as_bytes(),
        );
        let history = uuid::Builder::from_random_bytes(id.to_be_bytes())
            .into_uuid()
            .to_string();
        Ok(state.into_new_history(history))
    }
}

/// Makes a new store in `dir` from `backup`: refuses a directory that already holds a
/// registry. Returns the restored state's revision and new history id.
pub fn restore(backup: &BackupFile, dir: &Path) -> Result<(u64, String), String> {
    let state = backup.restored_state()?;
    let db = RaftDb::open(dir).map_err(|e: StoreError| format!("{}: {e}", dir.display()))?;
    if !db.is_empty().map_err(|e| e.to_string())? {
        return Err(format!(
            "{} already holds a registry; restore into an empty (or new) data directory",
            dir.display()
        ));
    }
    db.set_base_state(&state).map_err(|e| e.to_string())?;
    Ok((state.revision().0, state.history().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn a_backup_round_trips_and_restores_as_a_new_history_into_an_empty_store_only() {
        let mut s = State::new();
        s.apply(&Command::ApplyTopology {
            yaml: "version: 1\ndomain: root\nhosts: [a]\n".into(),
        });
        s.apply(&Command::CreateHistory {
            history: "old-history".into(),
        });
        let b = BackupFile::new(s.revision().0, s.history().into(), &s.to_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.json");
        std::fs::write(&file, serde_json::to_string(&b).unwrap()).unwrap();
        let read = BackupFile::read(&file).unwrap();
        let restored = read.restored_state().unwrap();
        assert_eq!(restored.revision(), s.revision());
        assert_ne!(restored.history(), "old-history");
        assert_eq!(
            restored.history(),
            read.restored_state().unwrap().history(),
            "every member restored from one file agrees"
        );
        let data = dir.path().join("data");
        let (rev, history) = restore(&read, &data).unwrap();
        assert_eq!((rev, history.as_str()), (1, restored.history()));
        // The store opened again at once (it waits for sled to let go of the lock).
        let err = restore(&read, &data).unwrap_err();
        assert!(err.contains("already holds a registry"), "{err}");

        // A damaged file is refused.
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("root", "rooT");
        std::fs::write(&file, text).unwrap();
        let err = BackupFile::read(&file).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
    }
}
