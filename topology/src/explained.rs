//! The one printed form of a route explanation, shared by `registry-manager route explain`
//! (offline or live) and `registry-agent resolve`: the JSON answer and the readable text.
//!
//! Each command line converts what it has (an [`Explanation`] computed here, or the wire
//! answer of a manager or an agent) into an [`Explained`] and prints it with
//! [`Explained::to_json`] or [`Explained::to_text`]; nothing else formats an explanation.

use serde_json::{json, Value};

use crate::route::Explanation;

/// A route explanation as the command lines print it: names as text, absent values as `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Explained {
    /// The requester.
    pub host: String,
    /// The manager type.
    pub package_type: String,
    /// The first host of the route.
    pub chosen: Option<String>,
    /// The chosen host's endpoint for this type.
    pub endpoint: Option<String>,
    /// Eligible hosts, nearest first.
    pub route: Vec<String>,
    /// Every host running the type, ranked.
    pub candidates: Vec<ExplainedCandidate>,
    /// The registry revision the answer comes from, when known. Printed in the text; in the
    /// JSON only for an agent's answer (see `stale`).
    pub revision: Option<u64>,
    /// Set for an agent's answer: whether its copy is stale (no live registry session). The
    /// JSON of an agent's answer ends with `revision` and `stale`.
    pub stale: Option<bool>,
}

/// One host running the type, as `candidates` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExplainedCandidate {
    /// The host running the package.
    pub host: String,
    /// Its domain; `None` when the topology does not name the host.
    pub domain: Option<String>,
    /// Its tier (`self`, `domain`, `ancestor`, `branch`); `None` when the topology does not
    /// name the host.
    pub tier: Option<String>,
    /// True when it is on the route.
    pub eligible: bool,
    /// Why it is not eligible (or, for an eligible one, a remark such as a hold-down).
    pub reason: Option<String>,
    /// The package's endpoint.
    pub endpoint: String,
}

impl From<&Explanation> for Explained {
    fn from(e: &Explanation) -> Self {
        Explained {
            host: e.host.to_string(),
            package_type: e.package_type.to_string(),
            chosen: e.chosen.as_ref().map(ToString::to_string),
            endpoint: e.endpoint.clone(),
            route: e.route.iter().map(ToString::to_string).collect(),
            candidates: e
                .candidates
                .iter()
                .map(|c| ExplainedCandidate {
                    host: c.host.to_string(),
                    domain: c.domain.as_ref().map(ToString::to_string),
                    tier: c.tier.as_ref().map(|t| t.name().to_string()),
                    eligible: c.eligible,
                    reason: c.reason.clone(),
                    endpoint: c.endpoint.clone(),
                })
                .collect(),
            revision: None,
            stale: None,
        }
    }
}

impl Explained {
    /// True when no host runs the type at all (no candidate): the type is unknown to the
    /// registry this answer comes from, which usually means a misspelt type.
    pub fn type_unknown(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The JSON answer, key for key (docs/routing.md): `host`, `type`, `chosen`, `endpoint`,
    /// `route`, `candidates` (`host`, `domain`, `tier`, `eligible`, `reason`, `endpoint`),
    /// then, for an agent's answer only, `revision` and `stale`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
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
                "endpoint": c.endpoint,
            })).collect::<Vec<_>>(),
        });
        if let (Some(stale), Value::Object(map)) = (self.stale, &mut v) {
            map.insert("revision".into(), json!(self.revision.unwrap_or(0)));
            map.insert("stale".into(), json!(stale));
        }
        v
    }

    /// Readable text: the choice, the route, the revision, then every candidate with its
    /// domain, tier, endpoint and why it is skipped.
    ///
    /// ```text
    /// agent-4 -> command-control-manager: fm (127.0.0.1:7001)
    /// route: fm
    /// revision: 3
    /// candidates:
    ///   agent-3  subdomain-1a  domain    127.0.0.1:7003  skipped: package status is draining
    ///   fm       framework     ancestor  127.0.0.1:7001  eligible
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let head = format!("{} -> {}", self.host, self.package_type);
        match (&self.chosen, &self.endpoint) {
            (Some(c), Some(ep)) => out.push_str(&format!("{head}: {c} ({ep})\n")),
            (Some(c), None) => out.push_str(&format!("{head}: {c}\n")),
            _ => out.push_str(&format!("{head}: no eligible manager\n")),
        }
        if self.route.is_empty() {
            out.push_str("route: (empty)\n");
        } else {
            out.push_str(&format!("route: {}\n", self.route.join(" > ")));
        }
        if let Some(r) = self.revision {
            let stale = if self.stale == Some(true) {
                " (stale: no live registry session)"
            } else {
                ""
            };
            out.push_str(&format!("revision: {r}{stale}\n"));
        }
        if self.candidates.is_empty() {
            out.push_str("candidates: none: no host runs this type\n");
            return out;
        }
        out.push_str("candidates:\n");
        let width = |f: &dyn Fn(&ExplainedCandidate) -> usize| {
            self.candidates.iter().map(f).max().unwrap_or(1)
        };
        let w_host = width(&|c| c.host.len());
        let w_dom = width(&|c| c.domain.as_deref().map_or(1, str::len));
        let w_tier = width(&|c| c.tier.as_deref().map_or(1, str::len)).max(8);
        let w_ep = width(&|c| c.endpoint.len().max(1));
        for c in &self.candidates {
            let status = match (c.eligible, c.reason.as_deref()) {
                (true, None | Some("")) => "eligible".to_string(),
                (true, Some(r)) => format!("eligible ({r})"),
                (false, r) => format!(
                    "skipped: {}",
                    r.filter(|r| !r.is_empty()).unwrap_or("not eligible")
                ),
            };
            let endpoint = if c.endpoint.is_empty() {
                "-"
            } else {
                &c.endpoint
            };
            out.push_str(&format!(
                "  {:<w_host$}  {:<w_dom$}  {:<w_tier$}  {:<w_ep$}  {}\n",
                c.host,
                c.domain.as_deref().unwrap_or("-"),
                c.tier.as_deref().unwrap_or("-"),
                endpoint,
                status,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Explained {
        Explained {
            host: "agent-4".into(),
            package_type: "ccm".into(),
            chosen: Some("fm".into()),
            endpoint: Some("127.0.0.1:7001".into()),
            route: vec!["fm".into()],
            candidates: vec![
                ExplainedCandidate {
                    host: "agent-3".into(),
                    domain: Some("subdomain-1a".into()),
                    tier: Some("domain".into()),
                    eligible: false,
                    reason: Some("package status is draining".into()),
                    endpoint: "127.0.0.1:7003".into(),
                },
                ExplainedCandidate {
                    host: "fm".into(),
                    domain: Some("framework".into()),
                    tier: Some("ancestor".into()),
                    eligible: true,
                    reason: None,
                    endpoint: "127.0.0.1:7001".into(),
                },
            ],
            revision: Some(3),
            stale: None,
        }
    }

    #[test]
    fn the_text_form_lists_the_choice_the_route_and_every_candidate() {
        assert_eq!(
            sample().to_text(),
            "agent-4 -> ccm: fm (127.0.0.1:7001)\n\
             route: fm\n\
             revision: 3\n\
             candidates:\n  \
             agent-3  subdomain-1a  domain    127.0.0.1:7003  skipped: package status is draining\n  \
             fm       framework     ancestor  127.0.0.1:7001  eligible\n"
        );
        let mut stale = sample();
        stale.stale = Some(true);
        assert!(stale
            .to_text()
            .contains("revision: 3 (stale: no live registry session)\n"));
    }

    #[test]
    fn an_agents_json_is_the_managers_plus_revision_and_stale() {
        let manager = sample().to_json();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&manager),
            ["host", "type", "chosen", "endpoint", "route", "candidates"]
        );
        assert_eq!(
            keys(&manager["candidates"][0]),
            ["host", "domain", "tier", "eligible", "reason", "endpoint"]
        );
        let mut agent = sample();
        agent.stale = Some(false);
        let agent = agent.to_json();
        assert_eq!(
            keys(&agent),
            [
                "host",
                "type",
                "chosen",
                "endpoint",
                "route",
                "candidates",
                "revision",
                "stale"
            ]
        );
        let mut trimmed = agent.clone();
        let map = trimmed.as_object_mut().unwrap();
        map.remove("revision");
        map.remove("stale");
        assert_eq!(trimmed, manager);
        assert_eq!(agent["revision"], 3);
        assert_eq!(agent["stale"], false);
    }
}
