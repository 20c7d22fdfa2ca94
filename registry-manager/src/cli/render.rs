//! How a route explanation is printed: the one form shared with `registry-agent resolve`
//! ([`topology::Explained`]), and the exit code of an answer.

use std::process::ExitCode;

use topology::{Explained, ExplainedCandidate};

use super::EXIT_NO_MANAGER;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A live manager's answer in the printed form (the revision is shown in the text only).
pub fn from_wire(e: &proto::RouteExplanation) -> Explained {
    Explained {
        host: e.host.clone(),
        package_type: e.r#type.clone(),
        chosen: e.chosen.clone(),
        endpoint: e.endpoint.clone(),
        route: e.route.clone(),
        candidates: e
            .candidates
            .iter()
            .map(|c| ExplainedCandidate {
                host: c.host.clone(),
                domain: non_empty(&c.domain),
                tier: non_empty(&c.tier),
                eligible: c.eligible,
                reason: non_empty(&c.reason),
                endpoint: c.endpoint.clone(),
            })
            .collect(),
        revision: Some(e.revision),
        stale: None,
    }
}

/// Prints an explanation as JSON (one line) or text and gives the exit code of the answer:
/// 0 with a chosen manager, [`EXIT_NO_MANAGER`] with none eligible (the answer is still
/// printed). A type no host runs in `source` (the registry the answer comes from) is an
/// error: nothing is printed on stdout.
pub fn print_explained(e: &Explained, json: bool, source: &str) -> anyhow::Result<ExitCode> {
    if e.type_unknown() {
        let revision = e
            .revision
            .map(|r| format!(" (revision {r})"))
            .unwrap_or_default();
        anyhow::bail!(
            "no host runs type {:?} in {source}{revision}; check the spelling (`registry-manager registry hosts` lists every host's packages)",
            e.package_type
        );
    }
    if json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.to_text());
    }
    Ok(if e.chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_MANAGER)
    })
}
