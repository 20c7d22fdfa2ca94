//! The cluster key (`group.key_file`): members sign every `Member` RPC they send with an
//! HMAC-SHA256 over the method, a timestamp, a nonce and a digest of the request body, and a
//! member checks it (in constant time) before anything else. A request whose timestamp is more
//! than [`WINDOW_MS`] away from the receiver's clock is refused, which bounds replay.
//!
//! The key file holds the key a member signs with on its first line and, optionally, one more
//! key it accepts on its second. `ha authkey` rotates the key of a live group in three steps,
//! each carried out on every member before the next begins, so no member ever refuses a peer
//! holding the current or the previous key: **stage** (accept the new key too), **switch**
//! (sign with the new key, still accept the old), **retire** (accept only the new key). Each
//! step is written to the member's key file first, so a restart keeps it. Keys are never
//! logged: a key is named by its id, the first 8 hex digits of its SHA-256.

use std::path::Path;

use ring::{digest, hmac};

/// The gRPC metadata entry carrying the MAC.
pub const METADATA: &str = "x-fleet-cluster-mac";
/// How far a request's timestamp may be from the receiver's clock.
pub const WINDOW_MS: u64 = 30_000;
/// Shortest key accepted.
pub const MIN_KEY_BYTES: usize = 16;

/// One key and its public id.
#[derive(Clone)]
struct Key {
    id: String,
    hmac: hmac::Key,
    /// The key's text, to write the key file again (never logged).
    secret: String,
}

impl Key {
    fn new(secret: &str) -> Key {
        Key {
            id: key_id(secret),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            secret: secret.to_owned(),
        }
    }
}

/// The public id of a key: the first 8 hex digits of its SHA-256.
pub fn key_id(secret: &str) -> String {
    let d = digest::digest(&digest::SHA256, secret.as_bytes());
    hex(&d.as_ref()[..4])
}

/// A step of a key rotation (`ha authkey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Accept this new key too; keep signing with the current one.
    Stage(String),
    /// Sign with the accepted key of this id; keep accepting the other.
    Switch(String),
    /// Accept only the key signed with.
    Retire,
}

/// The keys of a member: the one it signs with and the one it still accepts.
#[derive(Clone)]
pub struct ClusterKeys {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The bytes a MAC covers.
fn signed_text(method: &str, ts_ms: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let body_digest = digest::digest(&digest::SHA256, body);
    let mut text = format!("fleet-registry member v1\n{method}\n{ts_ms}\n{nonce}\n").into_bytes();
    text.extend_from_slice(body_digest.as_ref());
    text
}

impl ClusterKeys {
    /// Keys from the text of a key file: the current key on the first non-empty line, the
    /// previous one (still accepted) on the second.
    pub fn parse(text: &str) -> Result<ClusterKeys, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let current = lines
            .next()
            .ok_or("it holds no key; write a long random one on its first line")?;
        let previous = lines.next();
        if lines.next().is_some() {
            return Err("it holds more than two keys; the first line is the current key, the second (optional) the previous one".into());
        }
        for k in [Some(current), previous].into_iter().flatten() {
            if k.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "a key is shorter than {MIN_KEY_BYTES} bytes; write a long random one (`head -c 32 /dev/urandom | base64`)"
                ));
            }
        }
        Ok(ClusterKeys {
            current: Key::new(current),
            previous: previous.map(Key::new),
        })
    }

    /// Reads a key file; errors name the file (never its contents).
    pub fn load(path: &Path) -> Result<ClusterKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("group.key_file {}: cannot read it: {e}", path.display()))?;
        ClusterKeys::parse(&text).map_err(|e| format!("group.key_file {}: {e}", path.display()))
    }

    /// The id of the key this member signs with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// The ids of every key this member accepts, the one it signs with first.
    pub fn accepted_ids(&self) -> Vec<String> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|k| k.id.clone())
            .collect()
    }

    /// The keys after one rotation step (pure: the caller writes the file, then swaps).
    /// Repeating a step is harmless, so an interrupted `ha authkey` can be run again.
    pub fn after(&self, step: &Step) -> Result<ClusterKeys, String> {
        match step {
            Step::Stage(secret) => {
                let secret = secret.trim();
                let new = ClusterKeys::parse(secret)?.current;
                if new.id == self.current.id {
                    return Ok(self.clone()); // already switched to it: nothing to stage
                }
                if let Some(p) = &self.previous {
                    if p.id != new.id {
                        return Err(format!(
                            "this member already accepts another key ({}) besides the one it signs with; finish or undo that rotation first",
                            p.id
                        ));
                    }
                }
                Ok(ClusterKeys {
                    current: self.current.clone(),
                    previous: Some(new),
                })
            }
            Step::Switch(id) => {
                if *id == self.current.id {
                    return Ok(self.clone());
                }
                match &self.previous {
                    Some(p) if p.id == *id => Ok(ClusterKeys {
                        current: p.clone(),
                        previous: Some(self.current.clone()),
                    }),
                    _ => Err(format!(
                        "this member does not hold key {id} (it holds {}); stage it first",
                        self.accepted_ids().join(" and ")
                    )),
                }
            }
            Step::Retire => Ok(ClusterKeys {
                current: self.current.clone(),
                previous: None,
            }),
        }
    }

    /// The key file's text for these keys (the one signed with first).
    pub fn file_text(&self) -> String {
        let mut text = format!("{}\n", self.current.secret);
        if let Some(p) = &self.previous {
            text.push_str(&p.secret);
            text.push('\n');
        }
        text
    }

    /// The MAC of a request: `v1:KEYID:TS:NONCE:TAG`.
    pub fn sign(&self, method: &str, body: &[u8], now_ms: u64, nonce: u64) -> String {
        let tag = hmac::sign(
            &self.current.hmac,
            &signed_text(method, now_ms, nonce, body),
        );
        format!(
            "v1:{}:{now_ms}:{nonce}:{}",
            self.current.id,
            hex(tag.as_ref())
        )
    }

    /// Checks a request's MAC (`None`: the request carried none) at `now_ms`.
    pub fn verify(
        &self,
        method: &str,
        body: &[u8],
        mac: Option<&str>,
        now_ms: u64,
    ) -> Result<(), String> {
        let mac = mac.ok_or("it carries no cluster key MAC")?;
        let parts: Vec<&str> = mac.split(':').collect();
        let [version, key_id, ts, nonce, tag] = parts[..] else {
            return Err("its cluster key MAC is malformed".into());
        };
        if version != "v1" {
            return Err(format!(
                "its cluster key MAC has unknown version {version:?}"
            ));
        }
        let (Ok(ts), Ok(nonce), Some(tag)) = (ts.parse::<u64>(), nonce.parse::<u64>(), unhex(tag))
        else {
            return Err("its cluster key MAC is malformed".into());
        };
        let skew = now_ms.abs_diff(ts);
        if skew > WINDOW_MS {
            return Err(format!(
                "its cluster key MAC is {}s old or ahead (more than {}s): a replay, or clocks apart",
                skew / 1000,
                WINDOW_MS / 1000
            ));
        }
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == key_id)
            .ok_or_else(|| {
                format!(
                    "it is signed with cluster key {key_id}, which this member does not hold (it holds {}{})",
                    self.current.id,
                    self.previous
                        .as_ref()
                        .map(|p| format!(" and {}", p.id))
                        .unwrap_or_default()
                )
            })?;
        hmac::verify(&key.hmac, &signed_text(method, ts, nonce, body), &tag)
            .map_err(|_| format!("its MAC with cluster key {key_id} does not match"))
    }
}

/// Writes a key file whole or not at all (a temporary file renamed over it), readable by its
/// owner only.
pub fn write_key_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("rotating");
    let failed =
        |e: std::io::Error| format!("group.key_file {}: cannot write it: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(failed)?;
    f.write_all(text.as_bytes()).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// Milliseconds since the Unix epoch (the MAC's timestamp).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused() {
        let k = ClusterKeys::parse(A).unwrap();
        let mac = k.sign("Raft", b"body", 1_000_000, 7);
        assert_eq!(k.verify("Raft", b"body", Some(&mac), 1_000_000), Ok(()));
        assert!(k.verify("Raft", b"bodY", Some(&mac), 1_000_000).is_err());
        assert!(k.verify("Propose", b"body", Some(&mac), 1_000_000).is_err());
        let forged = mac.replace(":7:", ":8:");
        assert!(k.verify("Raft", b"body", Some(&forged), 1_000_000).is_err());
        let err = k.verify("Raft", b"body", None, 1_000_000).unwrap_err();
        assert!(err.contains("no cluster key MAC"), "{err}");
    }

    #[test]
    fn another_key_is_refused_and_named_by_id_only() {
        let a = ClusterKeys::parse(A).unwrap();
        let b = ClusterKeys::parse(B).unwrap();
        let mac = b.sign("Raft", b"x", 5_000_000, 1);
        let err = a.verify("Raft", b"x", Some(&mac), 5_000_000).unwrap_err();
        assert!(err.contains(b.current_id()) && !err.contains(B), "{err}");
        // Same id claimed with another key: the MAC does not match.
        let claimed = mac.replacen(b.current_id(), a.current_id(), 1);
        let err = a
            .verify("Raft", b"x", Some(&claimed), 5_000_000)
            .unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn replay_is_bounded_by_the_window() {
        let k = ClusterKeys::parse(A).unwrap();
        let mac = k.sign("Touch", b"", 1_000_000, 3);
        assert_eq!(
            k.verify("Touch", b"", Some(&mac), 1_000_000 + WINDOW_MS),
            Ok(())
        );
        let err = k
            .verify("Touch", b"", Some(&mac), 1_000_000 + WINDOW_MS + 1)
            .unwrap_err();
        assert!(err.contains("replay"), "{err}");
        assert!(k
            .verify("Touch", b"", Some(&mac), 1_000_000 - WINDOW_MS - 1)
            .is_err());
    }

    #[test]
    fn during_a_rotation_the_previous_key_is_accepted_and_after_it_refused() {
        let old = ClusterKeys::parse(A).unwrap();
        let rotating = ClusterKeys::parse(&format!("{B}\n{A}\n")).unwrap();
        let done = ClusterKeys::parse(B).unwrap();
        let by_old = old.sign("Raft", b"x", 9_000_000, 1);
        let by_new = rotating.sign("Raft", b"x", 9_000_000, 2);
        assert_eq!(
            rotating.verify("Raft", b"x", Some(&by_old), 9_000_000),
            Ok(())
        );
        assert_eq!(done.verify("Raft", b"x", Some(&by_new), 9_000_000), Ok(()));
        assert!(done.verify("Raft", b"x", Some(&by_old), 9_000_000).is_err());
    }

    #[test]
    fn a_rotation_stages_switches_and_retires_and_each_step_may_be_repeated() {
        let old = ClusterKeys::parse(A).unwrap();
        let staged = old.after(&Step::Stage(B.into())).unwrap();
        assert_eq!(
            staged.current_id(),
            old.current_id(),
            "still signs with the old key"
        );
        assert_eq!(staged.accepted_ids().len(), 2);
        assert_eq!(
            staged.after(&Step::Stage(B.into())).unwrap().file_text(),
            staged.file_text()
        );
        let new_id = key_id(B);
        let switched = staged.after(&Step::Switch(new_id.clone())).unwrap();
        assert_eq!(switched.current_id(), new_id);
        assert_eq!(switched.file_text(), format!("{B}\n{A}\n"));
        let retired = switched.after(&Step::Retire).unwrap();
        assert_eq!(retired.file_text(), format!("{B}\n"));
        // The file written at each step reads back as the same keys.
        for k in [&staged, &switched, &retired] {
            let again = ClusterKeys::parse(&k.file_text()).unwrap();
            assert_eq!(again.accepted_ids(), k.accepted_ids());
        }
        // Switching to a key never staged, or staging a third key, is refused.
        assert!(old.after(&Step::Switch(new_id)).is_err());
        let c = "cccccccccccccccccccccccccccccccc";
        assert!(staged.after(&Step::Stage(c.into())).is_err());
        assert!(old.after(&Step::Stage("short".into())).is_err());
    }

    #[test]
    fn key_files_are_checked() {
        assert!(ClusterKeys::parse("").is_err());
        assert!(ClusterKeys::parse("short")
            .unwrap_err()
            .contains("16 bytes"));
        assert!(ClusterKeys::parse(&format!("{A}\n{B}\n{A}")).is_err());
        let k = ClusterKeys::parse(&format!("\n  {A}  \n")).unwrap();
        assert!(!format!("{k:?}").contains(A), "Debug never shows a key");
    }
}
