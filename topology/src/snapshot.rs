//! The registry snapshot of the registry snapshot format (docs/topology.md): which host is alive and which packages run where, at
//! one revision. YAML or JSON with the same shape; the format is detected by content.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::names::{HostName, PackageType, Revision};

/// Largest snapshot accepted, in bytes.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// The status of one package on one host (the registry snapshot format (docs/topology.md)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageStatus {
    /// Deployed, not yet passing its local check.
    Starting,
    /// Passing its local check: the only status that can be routed to.
    Running,
    /// Its local check is failing.
    Failing,
    /// Stopped on its host.
    Stopped,
    /// Maintenance: takes no new requests (operator action).
    Draining,
    /// Removed by an operator.
    Withdrawn,
}

impl PackageStatus {
    /// Every status, in declaration order.
    pub const ALL: [PackageStatus; 6] = [
        PackageStatus::Starting,
        PackageStatus::Running,
        PackageStatus::Failing,
        PackageStatus::Stopped,
        PackageStatus::Draining,
        PackageStatus::Withdrawn,
    ];

    /// The lowercase name used in files and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageStatus::Starting => "starting",
            PackageStatus::Running => "running",
            PackageStatus::Failing => "failing",
            PackageStatus::Stopped => "stopped",
            PackageStatus::Draining => "draining",
            PackageStatus::Withdrawn => "withdrawn",
        }
    }
}

impl fmt::Display for PackageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PackageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PackageStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            format!(
                "unknown package status {s:?}; use one of starting, running, failing, stopped, draining, withdrawn"
            )
        })
    }
}

/// One package deployed on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageState {
    /// Where clients reach it (`host:port`).
    pub endpoint: String,
    /// Its current status.
    pub status: PackageStatus,
}

fn default_alive() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// What the registry knows about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostState {
    /// False once the host's agent stopped renewing its session. Default true.
    #[serde(default = "default_alive", skip_serializing_if = "is_true")]
    pub alive: bool,
    /// Packages by type; a host runs at most one package of a type.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_packages"
    )]
    pub packages: BTreeMap<PackageType, PackageState>,
}

impl Default for HostState {
    fn default() -> Self {
        HostState {
            alive: true,
            packages: BTreeMap::new(),
        }
    }
}

/// The registry at one revision, beyond the topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySnapshot {
    /// The registry revision this snapshot was taken at.
    #[serde(default)]
    pub revision: Revision,
    /// Hosts by name. Hosts missing here are alive with no packages.
    #[serde(default, deserialize_with = "unique_hosts")]
    pub hosts: BTreeMap<HostName, HostState>,
}

/// A map whose keys must be unique: JSON readers keep the last of two equal keys silently,
/// which would drop a host or a package without a word.
fn unique_map<'de, D, K, V>(
    d: D,
    what: &'static str,
    rule: &'static str,
) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    struct Unique<K, V> {
        what: &'static str,
        rule: &'static str,
        marker: std::marker::PhantomData<(K, V)>,
    }
    impl<'de, K, V> Visitor<'de> for Unique<K, V>
    where
        K: Deserialize<'de> + Ord + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a map of {}s", self.what)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<K>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{} {:?} is listed twice; {}",
                        self.what,
                        k.to_string(),
                        self.rule
                    )));
                }
                let v = map.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique {
        what,
        rule,
        marker: std::marker::PhantomData,
    })
}

fn unique_hosts<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<HostName, HostState>, D::Error> {
    unique_map(
        d,
        "host",
        "a snapshot names each host once, merge the two entries",
    )
}

fn unique_packages<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<PackageType, PackageState>, D::Error> {
    unique_map(
        d,
        "package type",
        "a host runs at most one package of a type, keep one",
    )
}

/// serde_json counts columns from 1 but reports column 0 for a position on a line break, and
/// line 0 when it has no position: map both into the text, 1-based.
fn json_location(text: &str, line: usize, column: usize) -> (usize, usize) {
    match (line, column) {
        (0, _) => (1, 1),
        (l, 0) if l > 1 => {
            let previous = text.split('\n').nth(l - 2).unwrap_or("");
            (l - 1, previous.len() + 1)
        }
        (l, c) => (l, c.max(1)),
    }
}

/// A snapshot file that could not be read: `FILE:LINE:COL: message`.
pub use crate::error::LocatedError as SnapshotError;

impl RegistrySnapshot {
    /// Parses a snapshot: JSON when the first non-blank character is `{`, YAML otherwise.
    pub fn parse(file_name: &str, text: &str) -> Result<Self, SnapshotError> {
        // One line per error: a value quoted in the message (an unknown status, say) may hold
        // line breaks, which are written escaped.
        let err = |line: usize, column: usize, message: String| SnapshotError {
            file: file_name.to_owned(),
            line,
            column,
            message: message.replace('\r', "\\r").replace('\n', "\\n"),
        };
        if text.len() > MAX_SNAPSHOT_BYTES {
            return Err(err(
                1,
                1,
                format!(
                    "snapshot is {} bytes, over the limit of {MAX_SNAPSHOT_BYTES}",
                    text.len()
                ),
            ));
        }
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(err(
                1,
                1,
                "snapshot is empty; expected a map with `revision` and `hosts`".into(),
            ));
        }
        if trimmed.starts_with('{') {
            // serde_json has its own recursion limit (128), so deep input cannot overflow.
            serde_json::from_str(text).map_err(|e| {
                let msg = e.to_string();
                let msg = match msg.rfind(" at line ") {
                    Some(i) => msg[..i].to_owned(),
                    None => msg,
                };
                let (line, column) = json_location(text, e.line(), e.column());
                err(line, column, msg)
            })
        } else {
            let opts = crate::yaml::snapshot_options();
            serde_saphyr::from_str_with_options(text, opts).map_err(|e| {
                let (line, column, message) = crate::yaml::describe(&e);
                err(line, column, message)
            })
        }
    }

    /// YAML in the shape of the registry snapshot format (docs/topology.md).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a snapshot always serializes")
    }

    /// JSON in the shape of the registry snapshot format (docs/topology.md).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a snapshot always serializes")
    }

    /// The state of a host, if the snapshot names it.
    pub fn host(&self, name: &str) -> Option<&HostState> {
        self.hosts.get(name)
    }

    /// Sets (or adds) one package's state; a convenience for tests and generators.
    pub fn set_package(
        &mut self,
        host: HostName,
        package_type: PackageType,
        endpoint: impl Into<String>,
        status: PackageStatus,
    ) {
        self.hosts.entry(host).or_default().packages.insert(
            package_type,
            PackageState {
                endpoint: endpoint.into(),
                status,
            },
        );
    }

    /// Sets a host's liveness (adding the host when missing).
    pub fn set_alive(&mut self, host: HostName, alive: bool) {
        self.hosts.entry(host).or_default().alive = alive;
    }

    /// Every package type any host runs, sorted.
    pub fn package_types(&self) -> Vec<PackageType> {
        let mut v: Vec<PackageType> = self
            .hosts
            .values()
            .flat_map(|h| h.packages.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
