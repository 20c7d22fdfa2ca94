//! Session identifiers: opaque text chosen by the manager that accepted the session.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The id of one agent session. Opaque to agents; a fresh UUID v4 for every opened session.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Wraps an id received from the wire or the log.
    pub fn new(s: impl Into<String>) -> Self {
        SessionId(s.into())
    }

    /// A fresh random id.
    pub fn random() -> Self {
        SessionId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Redacted: a session id is a credential, and debug output ends up in logs.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
