//! The serde types of the topology file, version 1 (the topology file format (docs/topology.md)). They carry the JSON Schema
//! ([`crate::json_schema`]) and the canonical output ([`crate::Topology::to_yaml`]); parsing
//! goes through a located node tree instead (see `parse.rs`) so that every error of a file,
//! not only the first, gets its line and column.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{format_duration, RevertAfter};
use crate::tree::{DomainId, Topology};

/// A topology file, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "fleet-registry topology, version 1")]
pub struct TopologyFile {
    /// Format version; must be 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Routing policy; the defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingSection>,
    /// The root domain's name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub domain: String,
    /// Hosts of the root domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<HostEntry>>")]
    pub hosts: Vec<HostEntry>,
    /// Subdomains of the root domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<DomainEntry>>")]
    pub subdomains: Vec<DomainEntry>,
}

/// The `routing:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// After the chain of ancestors, try other branches of the tree. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub cross_branch: Option<bool>,
    /// Hold-down before moving back to a nearer manager that recovered: `500ms`, `5s`, `2m`,
    /// `1h`, `0s` (at once) or `never`. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^([0-9]+(ms|s|m|h)|never)$"))]
    pub revert_after: Option<String>,
}

/// A subdomain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    /// The domain's name, unique in the tree.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub domain: String,
    /// Hosts of this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<HostEntry>>")]
    pub hosts: Vec<HostEntry>,
    /// Subdomains of this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<DomainEntry>>")]
    pub subdomains: Vec<DomainEntry>,
}

/// A host: its name, or a map with its name and an informational address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HostEntry {
    /// Short form: the host name.
    Name(#[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))] String),
    /// Long form.
    Long(LongHost),
}

/// The long form of a host entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LongHost {
    /// The host name, unique in the tree.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub name: String,
    /// Informational address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub address: Option<String>,
}

/// True when a name can be written as a plain YAML scalar and still read back as a string by
/// any YAML reader (not a number, boolean or null lookalike).
fn plain_ok(s: &str) -> bool {
    let first = s.as_bytes()[0];
    first.is_ascii_lowercase()
        && !matches!(
            s,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "nan" | "inf"
        )
}

fn name(out: &mut String, s: &str) {
    if plain_ok(s) {
        out.push_str(s);
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Writes `s` as a YAML double-quoted scalar. Every character YAML does not allow raw in a
/// file (controls, DEL, C1, BOM, non-characters) or would fold (line breaks) is escaped, so
/// any text reads back unchanged.
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn to_yaml(t: &Topology) -> String {
    let mut out = String::new();
    out.push_str("version: 1\nrouting:\n  cross_branch: ");
    out.push_str(if t.routing.cross_branch {
        "true"
    } else {
        "false"
    });
    out.push_str("\n  revert_after: ");
    match t.routing.revert_after {
        RevertAfter::Never => out.push_str("never"),
        RevertAfter::After(d) => out.push_str(&format_duration(d)),
    }
    out.push('\n');
    write_domain(&mut out, t, t.root(), 0);
    out
}

/// Writes one domain's keys at `indent`; recursion depth is bounded by `MAX_DEPTH`.
fn write_domain(out: &mut String, t: &Topology, id: DomainId, indent: usize) {
    let pad = " ".repeat(indent);
    let d = t.domain(id);
    let _ = write!(out, "domain: ");
    name(out, d.name.as_str());
    out.push('\n');
    if !d.hosts.is_empty() {
        let mut hosts: Vec<_> = d.hosts.iter().collect();
        hosts.sort();
        let _ = writeln!(out, "{pad}hosts:");
        for h in hosts {
            let _ = write!(out, "{pad}  - ");
            match t.host(h.as_str()).and_then(|h| h.address.as_deref()) {
                None => name(out, h.as_str()),
                Some(addr) => {
                    out.push_str("name: ");
                    name(out, h.as_str());
                    let _ = write!(out, "\n{pad}    address: ");
                    quoted(out, addr);
                }
            }
            out.push('\n');
        }
    }
    if !d.children.is_empty() {
        let mut children = d.children.clone();
        children.sort_by(|a, b| t.domain(*a).name.cmp(&t.domain(*b).name));
        let _ = writeln!(out, "{pad}subdomains:");
        for c in children {
            let _ = write!(out, "{pad}  - ");
            write_domain(out, t, c, indent + 4);
        }
    }
}
