//! How answers look: the contract JSON of `route explain`, and readable text.

use serde_json::{json, Value};

/// A route explanation in the one form every command prints, whether it was computed offline
/// (from `topology::Explanation`) or answered by a live manager (from the wire type).
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub host: String,
    pub package_type: String,
    pub chosen: Option<String>,
    pub endpoint: Option<String>,
    pub route: Vec<String>,
    pub candidates: Vec<Candidate>,
    /// Registry revision the answer comes from, when known (text output only).
    pub revision: Option<u64>,
}

/// One host running the type, as `candidates` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub host: String,
    pub domain: Option<String>,
    pub tier: Option<String>,
    pub eligible: bool,
    pub reason: Option<String>,
    pub endpoint: String,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Explained {
    pub fn from_topology(
        e: &topology::Explanation,
        revision: Option<u64>,
        _stale: Option<bool>,
    ) -> Self {
        Explained {
            host: e.host.to_string(),
            package_type: e.package_type.to_string(),
            chosen: e.chosen.as_ref().map(ToString::to_string),
            endpoint: e.endpoint.clone(),
            route: e.route.iter().map(ToString::to_string).collect(),
            candidates: e
                .candidates
                .iter()
                .map(|c| Candidate {
                    host: c.host.to_string(),
                    domain: c.domain.as_ref().map(ToString::to_string),
                    tier: c.tier.as_ref().map(|t| t.name().to_string()),
                    eligible: c.eligible,
                    reason: c.reason.clone(),
                    endpoint: c.endpoint.clone(),
                })
                .collect(),
            revision,
        }
    }

    pub fn from_wire(e: &proto::RouteExplanation) -> Self {
        Explained {
            host: e.host.clone(),
            package_type: e.r#type.clone(),
            chosen: e.chosen.clone(),
            endpoint: e.endpoint.clone(),
            route: e.route.clone(),
            candidates: e
                .candidates
                .iter()
                .map(|c| Candidate {
                    host: c.host.clone(),
                    domain: non_empty(&c.domain),
                    tier: non_empty(&c.tier),
                    eligible: c.eligible,
                    reason: non_empty(&c.reason),
                    endpoint: c.endpoint.clone(),
                })
                .collect(),
            revision: Some(e.revision),
        }
    }

    /// The command-line contract (docs/manager.md, docs/agent.md) JSON, key for key.
    pub fn to_json(&self) -> Value {
        json!({
            "host": self.host,
            "type": self.package_type,
            "chosen": self.chosen,
            "endpoint": self.endpoint,
            "route": self.route,
            "candidates": self.candidates.iter().map(|c| json!({
                "host": c.host,
                "domain": c.domain,
                "tier": c.tier,
                "eligible": c.eligible,
                "reason": c.reason,
            })).collect::<Vec<_>>(),
        })
    }

    /// Readable text: the choice, the route, then every candidate with its tier and reason.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match (&self.chosen, &self.endpoint) {
            (Some(c), Some(ep)) => out.push_str(&format!(
                "{} -> {}: {} ({})\n",
                self.host, self.package_type, c, ep
            )),
            (Some(c), None) => {
                out.push_str(&format!("{} -> {}: {}\n", self.host, self.package_type, c))
            }
            _ => out.push_str(&format!(
                "{} -> {}: no eligible manager\n",
                self.host, self.package_type
            )),
        }
        if self.route.is_empty() {
            out.push_str("route: (empty)\n");
        } else {
            out.push_str(&format!("route: {}\n", self.route.join(" > ")));
        }
        if let Some(r) = self.revision {
            out.push_str(&format!("revision: {r}\n"));
        }
        if self.candidates.is_empty() {
            out.push_str("candidates: none: no host runs this type\n");
            return out;
        }
        out.push_str("candidates:\n");
        let w_host = self
            .candidates
            .iter()
            .map(|c| c.host.len())
            .max()
            .unwrap_or(4);
        let w_dom = self
            .candidates
            .iter()
            .map(|c| c.domain.as_deref().unwrap_or("-").len())
            .max()
            .unwrap_or(6);
        for c in &self.candidates {
            let status = if c.eligible {
                "eligible".to_string()
            } else {
                format!("skipped: {}", c.reason.as_deref().unwrap_or("not eligible"))
            };
            out.push_str(&format!(
                "  {:<w_host$}  {:<w_dom$}  {:<8}  {}\n",
                c.host,
                c.domain.as_deref().unwrap_or("-"),
                c.tier.as_deref().unwrap_or("-"),
                status,
            ));
        }
        out
    }
}

/// Prints an explanation as JSON (one line) or text.
pub fn print_explained(e: &Explained, json: bool) {
    if json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.to_text());
    }
}
