//! `registry-agent watch [TYPE]`: every route change of the local agent as it happens, one
//! line each (`--json`: JSON lines), from the agent's `WatchRoute` stream (one per type; with
//! no TYPE, every type the agent knows when it connects).
//!
//! [`RouteLines`] decides what to print (pure): a type's first route, then every change of
//! it; after a reconnection (the agent restarted) the agent sends every route again as
//! "initial", and only those that differ from the last printed are printed. The loop
//! reconnects every 300 ms while the agent is away and ends with exit 0 on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use proto::v1 as pb;
use proto::v1::agent_client::AgentClient;
use serde_json::json;

/// Pause between two connection attempts.
const RETRY: Duration = Duration::from_millis(300);

/// What a printed line showed of a route: chosen, endpoint, route, stale.
type Shown = (Option<String>, Option<String>, Vec<String>, bool);

/// What was printed last for each type.
#[derive(Debug, Default)]
pub struct RouteLines {
    last: BTreeMap<String, Shown>,
}

impl RouteLines {
    /// The line to print for `u`, if it shows something new.
    pub fn line(&mut self, u: &pb::RouteUpdate, json: bool) -> Option<String> {
        let key = (
            u.chosen.clone(),
            u.endpoint.clone(),
            u.route.clone(),
            u.stale,
        );
        if self.last.get(&u.r#type) == Some(&key) {
            return None;
        }
        self.last.insert(u.r#type.clone(), key);
        Some(if json {
            json!({
                "type": u.r#type,
                "chosen": u.chosen,
                "endpoint": u.endpoint,
                "route": u.route,
                "revision": u.revision,
                "stale": u.stale,
                "reason": u.reason,
            })
            .to_string()
        } else {
            let to = match (&u.chosen, &u.endpoint) {
                (Some(h), Some(e)) => format!("{h} ({e})"),
                (Some(h), None) => h.clone(),
                _ => "none".to_owned(),
            };
            format!(
                "{} -> {to}: {} (revision {}{})",
                u.r#type,
                if u.reason.is_empty() {
                    "changed"
                } else {
                    &u.reason
                },
                u.revision,
                if u.stale { ", stale" } else { "" }
            )
        })
    }
}

/// Follows the agent at `addr` (`HOST:PORT`) until the process is stopped; prints lines.
pub async fn follow(addr: &str, package_type: Option<&str>, json: bool) {
    let mut lines = RouteLines::default();
    let mut warned = false;
    loop {
        match watch_once(addr, package_type, json, &mut lines).await {
            Ok(()) => {
                eprintln!(
                    "registry-agent watch: the agent at {addr} closed the stream; reconnecting"
                );
                warned = false;
            }
            Err(e) => {
                if !warned {
                    eprintln!("registry-agent watch: {e}; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn watch_once(
    addr: &str,
    package_type: Option<&str>,
    json: bool,
    lines: &mut RouteLines,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad agent address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the agent at {addr}: {e}"))?;
    let mut client = AgentClient::new(channel);
    let types: Vec<String> = match package_type {
        Some(t) => vec![t.to_owned()],
        None => client
            .routes(pb::RoutesRequest {})
            .await
            .map_err(|s| format!("the agent at {addr} refused: {}", s.message()))?
            .into_inner()
            .routes
            .into_iter()
            .map(|r| r.r#type)
            .collect(),
    };
    if types.is_empty() {
        return Err(format!(
            "the agent at {addr} knows no manager type yet (its registry copy is empty)"
        ));
    }
    let mut streams = Vec::new();
    for t in types {
        let s = client
            .watch_route(pb::ResolveRequest {
                r#type: t.clone(),
                brief: true,
            })
            .await
            .map_err(|s| {
                format!(
                    "the agent at {addr} refused to watch {t:?}: {}",
                    s.message()
                )
            })?
            .into_inner();
        streams.push(s);
    }
    let mut merged = futures::stream::select_all(streams);
    eprintln!("registry-agent watch: watching the agent at {addr}");
    while let Some(u) = merged.next().await {
        let u = u.map_err(|s| format!("the stream from {addr} broke: {}", s.message()))?;
        if let Some(line) = lines.line(&u, json) {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(chosen: &str, reason: &str, revision: u64) -> pb::RouteUpdate {
        pb::RouteUpdate {
            r#type: "command-control-manager".into(),
            chosen: Some(chosen.into()),
            endpoint: Some("127.0.0.1:7001".into()),
            route: vec![chosen.into()],
            revision,
            stale: false,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_change_prints_once_and_a_repeated_initial_after_a_reconnect_prints_nothing() {
        let mut l = RouteLines::default();
        assert_eq!(
            l.line(&update("agent-3", "initial", 4), false).as_deref(),
            Some("command-control-manager -> agent-3 (127.0.0.1:7001): initial (revision 4)")
        );
        let moved = l
            .line(&update("agent-1", "manager failed", 5), true)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&moved).unwrap();
        assert_eq!(v["chosen"], "agent-1");
        assert_eq!(v["reason"], "manager failed");
        // The agent restarted and sends the same route as "initial": nothing new.
        assert_eq!(l.line(&update("agent-1", "initial", 5), false), None);
        // But a route that changed while away is printed.
        assert!(l.line(&update("fm", "initial", 7), false).is_some());
    }
}
