//! Asking agents how they route, fast and often: timing a re-route from a fault to the moment
//! every agent's `resolve` names the expected manager, and watching for routes that change
//! when nothing broke (false alarms).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use proto::agent_client::AgentClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::Fleet;

/// One agent's local API, with a channel kept open.
#[derive(Debug, Clone)]
pub struct AgentProbe {
    /// The agent's host.
    pub host: String,
    client: AgentClient<Channel>,
}

impl AgentProbe {
    /// Connects to the agent of `host` in `fleet`.
    pub async fn connect(fleet: &mut Fleet, host: &str) -> anyhow::Result<AgentProbe> {
        let api = fleet.agent(host)?.api;
        AgentProbe::connect_addr(host, api).await
    }

    /// Connects to an agent's local API at `api`.
    pub async fn connect_addr(host: &str, api: SocketAddr) -> anyhow::Result<AgentProbe> {
        let channel = crate::fleet::connect(api)
            .await
            .with_context(|| format!("cannot reach agent {host} at {api}"))?;
        Ok(AgentProbe {
            host: host.to_string(),
            client: AgentClient::new(channel),
        })
    }

    /// The full answer of `resolve`, bounded by `timeout`.
    pub async fn resolve(
        &mut self,
        package_type: &str,
        brief: bool,
        timeout: Duration,
    ) -> anyhow::Result<proto::RouteExplanation> {
        let req = proto::ResolveRequest {
            r#type: package_type.to_string(),
            brief,
        };
        let r = tokio::time::timeout(timeout, self.client.resolve(req))
            .await
            .with_context(|| format!("agent {} did not answer within {timeout:?}", self.host))?
            .with_context(|| format!("agent {} refused resolve", self.host))?;
        Ok(r.into_inner())
    }

    /// The manager the agent chooses now (brief `resolve`).
    pub async fn chosen(&mut self, package_type: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .resolve(package_type, true, Duration::from_millis(500))
            .await?
            .chosen)
    }
}

/// Polls every probe every `every` until each one's `resolve` names `expected`; returns, for the
/// slowest agent, the time from `t0` to the answer that first named it. Fails after `deadline`
/// with what each agent still said.
pub async fn wait_all_choose(
    probes: &[AgentProbe],
    package_type: &str,
    expected: Option<&str>,
    t0: Instant,
    every: Duration,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let mut tasks = Vec::new();
    for p in probes {
        let mut p = p.clone();
        let ty = package_type.to_string();
        let expected = expected.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            loop {
                let last = match p.chosen(&ty).await {
                    Ok(c) if c == expected => return Ok(t0.elapsed()),
                    Ok(c) => format!("chose {c:?}"),
                    Err(e) => format!("{e:#}"),
                };
                if t0.elapsed() > deadline {
                    anyhow::bail!(
                        "agent {} did not choose {expected:?} within {deadline:?}; last: {last}",
                        p.host
                    );
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await??);
    }
    Ok(slowest)
}

/// One route change an agent made, as seen by the [`RouteMonitor`].
#[derive(Debug, Clone)]
pub struct RouteChange {
    /// When the monitor saw it.
    pub at: Instant,
    /// The agent.
    pub host: String,
    /// Chosen before.
    pub from: Option<String>,
    /// Chosen after.
    pub to: Option<String>,
}

/// Polls every agent's choice in the background and records every change.
#[derive(Debug)]
pub struct RouteMonitor {
    changes: Arc<Mutex<Vec<RouteChange>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RouteMonitor {
    /// Starts polling each probe every `every`; the first answer of each agent is its baseline.
    pub fn start(probes: &[AgentProbe], package_type: &str, every: Duration) -> RouteMonitor {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let tasks = probes
            .iter()
            .map(|p| {
                let mut p = p.clone();
                let ty = package_type.to_string();
                let changes = changes.clone();
                tokio::spawn(async move {
                    let mut last: Option<Option<String>> = None;
                    loop {
                        // An agent that does not answer (paused) keeps its last known choice.
                        if let Ok(c) = p.chosen(&ty).await {
                            if let Some(prev) = &last {
                                if *prev != c {
                                    changes.lock().expect("monitor lock").push(RouteChange {
                                        at: Instant::now(),
                                        host: p.host.clone(),
                                        from: prev.clone(),
                                        to: c.clone(),
                                    });
                                }
                            }
                            last = Some(c);
                        }
                        tokio::time::sleep(every).await;
                    }
                })
            })
            .collect();
        RouteMonitor { changes, tasks }
    }

    /// Every change seen so far.
    pub fn changes(&self) -> Vec<RouteChange> {
        self.changes.lock().expect("monitor lock").clone()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A period during which `host` was broken on purpose: moving away from it then is expected.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The host broken.
    pub host: String,
    /// When it broke.
    pub from: Instant,
    /// When it was mended (plus a grace period for the news to travel).
    pub until: Instant,
}

/// The changes that are false alarms: an agent moving away from a manager that was not broken
/// at the time, to anything other than its preferred (all-healthy) choice. Moving back to the
/// preferred manager (a revert) is never a false alarm.
pub fn false_alarms(
    changes: &[RouteChange],
    preferred: &BTreeMap<String, Option<String>>,
    faults: &[Fault],
) -> Vec<RouteChange> {
    changes
        .iter()
        .filter(|c| {
            let reverting = preferred.get(&c.host) == Some(&c.to);
            let away_from_broken = faults
                .iter()
                .any(|f| c.from.as_deref() == Some(&f.host) && c.at >= f.from && c.at <= f.until);
            c.from.is_some() && !reverting && !away_from_broken
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: Instant, host: &str, from: &str, to: &str) -> RouteChange {
        RouteChange {
            at,
            host: host.into(),
            from: Some(from.into()),
            to: Some(to.into()),
        }
    }

    #[test]
    fn only_moves_away_from_healthy_managers_are_false_alarms() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let preferred: BTreeMap<_, _> = [("agent-4".to_string(), Some("agent-3".to_string()))]
            .into_iter()
            .collect();
        let faults = vec![Fault {
            host: "agent-3".into(),
            from: t + s,
            until: t + 3 * s,
        }];
        let changes = vec![
            change(t + 2 * s, "agent-4", "agent-3", "agent-1"), // away from the broken one
            change(t + 4 * s, "agent-4", "agent-1", "agent-3"), // revert
            change(t + 5 * s, "agent-4", "agent-3", "agent-1"), // agent-3 healthy again
        ];
        let alarms = false_alarms(&changes, &preferred, &faults);
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].at, t + 5 * s);
    }
}
