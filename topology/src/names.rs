//! Names of the name rules (docs/topology.md): host names, domain names and package types, plus the registry revision.
//!
//! A name is 1 to 63 characters of `a-z 0-9 . _ -`, starting with a letter or digit. The
//! newtypes can only be built through [`HostName::new`] (or `FromStr`, serde), so every name
//! that reaches the routing rule has been checked once at the edge.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The rule every name obeys, quoted in every name error.
pub const NAME_RULE: &str =
    "a name is 1 to 63 characters of a-z 0-9 . _ -, starting with a letter or digit";

/// Longest name allowed.
pub const MAX_NAME_LEN: usize = 63;

/// Which kind of name was rejected (it prefixes the error message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A host name.
    Host,
    /// A domain name.
    Domain,
    /// A package (manager) type.
    PackageType,
}

impl NameKind {
    /// `host name`, `domain name` or `package type`.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Host => "host name",
            NameKind::Domain => "domain name",
            NameKind::PackageType => "package type",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that breaks the name rules (docs/topology.md). Its message quotes the name and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?} is invalid: {NAME_RULE}")]
pub struct NameError {
    /// What the name was meant to be.
    pub kind: NameKind,
    /// The rejected text, verbatim.
    pub name: String,
}

/// True when `s` obeys the name rules (docs/topology.md).
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return false;
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return false;
    }
    b.iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

fn check(kind: NameKind, s: &str) -> Result<(), NameError> {
    if is_valid_name(s) {
        Ok(())
    } else {
        Err(NameError {
            kind,
            name: s.to_owned(),
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (shared string), ordered and hashed like its text.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `s` against the name rules (docs/topology.md).
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s: String = s.into();
                check($kind, &s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A host name (the name rules (docs/topology.md)); unique in the tree.
    HostName,
    NameKind::Host
);
name_type!(
    /// A domain name (the name rules (docs/topology.md)); unique in the tree.
    DomainName,
    NameKind::Domain
);
name_type!(
    /// A manager package type, such as `command-control-manager` (the name rules (docs/topology.md)).
    PackageType,
    NameKind::PackageType
);

/// A registry revision: grows by one with every applied change.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_the_rule() {
        for ok in ["a", "0", "agent-1", "a.b_c-d", "9lives", &"x".repeat(63)] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_outside_the_rule() {
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "Agent",
            "a b",
            "a/b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(DomainName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_quotes_name_and_rule() {
        let e = HostName::new("Agent 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "host name \"Agent 1\" is invalid: a name is 1 to 63 characters of a-z 0-9 . _ -, starting with a letter or digit"
        );
        let e = PackageType::new("X").unwrap_err();
        assert!(e.to_string().starts_with("package type \"X\" is invalid"));
    }

    #[test]
    fn borrow_lookup_works() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(HostName::new("fm").unwrap(), 1);
        assert_eq!(m.get("fm"), Some(&1));
    }
}
