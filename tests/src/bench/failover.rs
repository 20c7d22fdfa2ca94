//! Failover on real processes with the agents' DEFAULT check and health settings and the
//! manager's default `session_ttl` (quick mode uses the test-fast ones): a manager package
//! killed, a manager host silenced, the same on a machine with both cores busy.
//!
//! The fleet is [`failover_topology`]: `agent-3`..`agent-6` choose `agent-3`, `agent-1` is next.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::figure::{Figure, Target};
use super::gen::{failover_topology, CCM};
use super::probe::{false_alarms, wait_all_choose, AgentProbe, Fault, RouteMonitor};
use super::system::Busy;
use super::Mode;
use crate::Fleet;

const AGENTS: [&str; 5] = ["agent-1", "agent-3", "agent-4", "agent-5", "agent-6"];
const NEAR: &str = "agent-3";
const NEXT: &str = "agent-1";
/// How long after `revert_after` a revert may come: the recovery must be seen first.
const REVERT_SLACK_MS: f64 = 2000.0;
/// Connections begun this soon after the SIGKILL met a process whose sockets were still closing.
const AT_KILL: Duration = Duration::from_millis(5);
/// How often the requesters' `resolve` is polled while timing a re-route.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
struct Plan {
    mode: Mode,
    /// Crashes without, then with, client traffic through the forwarders (twice this many in all).
    crash_runs: usize,
    silent_runs: usize,
    /// Time under load with nothing broken, before the loaded silent-stop runs.
    quiet: Duration,
    revert_after: Duration,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                mode,
                crash_runs: 3,
                silent_runs: 3,
                quiet: Duration::from_secs(10),
                revert_after: Duration::from_secs(5),
            },
            Mode::Quick => Plan {
                mode,
                crash_runs: 1,
                silent_runs: 1,
                quiet: Duration::from_millis(300),
                revert_after: Duration::from_millis(300),
            },
        }
    }

    fn settings(&self) -> &'static str {
        match self.mode {
            Mode::Full => {
                "default settings: session_ttl 1s, package check {interval 250ms, fall 3, rise 2}, \
                 health {interval 1s, timeout 500ms, fall 2, rise 2}, revert_after 5s"
            }
            Mode::Quick => "quick mode: test-fast settings (session_ttl 300ms, checks 100ms), revert_after 300ms",
        }
    }
}

/// The failover fleet, started, with every requester routed to `agent-3`.
struct Setup {
    fleet: Fleet,
    probes: BTreeMap<&'static str, AgentProbe>,
}

impl Setup {
    async fn start(plan: &Plan, forward: bool) -> anyhow::Result<Setup> {
        let revert = match plan.mode {
            Mode::Full => None, // the default, 5s
            Mode::Quick => Some("300ms"),
        };
        let mut b = Fleet::from_topology(&failover_topology(revert)).manager();
        for a in AGENTS {
            b = b.agent(a);
        }
        b = b.package(NEXT, CCM).package(NEAR, CCM);
        if forward {
            b = b.forward(CCM);
        }
        b = match plan.mode {
            Mode::Full => b.default_checks(),
            Mode::Quick => b.session_ttl("300ms"),
        };
        let mut fleet = b.start().await?;
        let mut probes = BTreeMap::new();
        for a in AGENTS {
            probes.insert(a, AgentProbe::connect(&mut fleet, a).await?);
        }
        let s = Setup { fleet, probes };
        let all = s.probes(&["agent-3", "agent-4", "agent-5", "agent-6"]);
        wait_all_choose(
            &all,
            CCM,
            Some(NEAR),
            Instant::now(),
            Duration::from_millis(20),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", s.fleet.logs()))?;
        let own = s.probes(&[NEXT]);
        wait_all_choose(
            &own,
            CCM,
            Some(NEXT),
            Instant::now(),
            Duration::from_millis(20),
            Duration::from_secs(30),
        )
        .await?;
        Ok(s)
    }

    fn probes(&self, hosts: &[&str]) -> Vec<AgentProbe> {
        hosts
            .iter()
            .filter_map(|h| self.probes.get(h).cloned())
            .collect()
    }

    fn preferred(&self) -> BTreeMap<String, Option<String>> {
        AGENTS
            .iter()
            .map(|a| {
                let p = if *a == NEXT { NEXT } else { NEAR };
                (a.to_string(), Some(p.to_string()))
            })
            .collect()
    }
}

/// Measures `failover_crash`, `forward_failed_connections` and `revert_after_recovery`.
pub async fn crash(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let mut s = Setup::start(&plan, true).await?;
    let requesters = s.probes(&["agent-3", "agent-4", "agent-5", "agent-6"]);
    let mut forwards = Vec::new();
    for a in ["agent-3", "agent-4", "agent-5", "agent-6"] {
        let addr = *s
            .fleet
            .agent(a)?
            .forwards
            .get(CCM)
            .ok_or_else(|| anyhow::anyhow!("agent {a} has no forward port"))?;
        forwards.push(addr);
    }

    let mut crash = Figure::new("failover_crash");
    let mut busy_crash = Figure::new("failover_crash_with_traffic");
    let mut failed = Figure::new("forward_failed_connections");
    failed.sum_of_runs = true;
    let mut revert = Figure::new("revert_after_recovery");
    let ra = plan.revert_after.as_secs_f64() * 1e3;
    revert.target = Target::Between(ra, ra + REVERT_SLACK_MS);
    crash.note(format!(
        "SIGKILL of agent-3's package, no client traffic (seen by agent-3's own package check, pushed \
         by the registry), until agent-3..6 all resolve agent-1; {}",
        plan.settings()
    ));
    busy_crash.note(
        "the same while 4 client loops connect through the forwarding ports of agent-3..6 \
         (a refused connection is seen at once)",
    );
    revert.note(format!(
        "restarted package listening until agent-3..6 all resolve agent-3 again; revert_after {ra} ms; \
         target revert_after .. revert_after + {REVERT_SLACK_MS} ms (the recovery must first be seen: \
         package check rise 2 x 250 ms, or the agents' own probes rise 2 x 1 s when they held it down)"
    ));
    let mut attempts_total = 0;
    let (mut in_flight, mut at_kill, mut later) = (0, 0, 0);
    let mut examples: Vec<String> = Vec::new();
    let mut reverts = (Vec::new(), Vec::new());
    for run in 0..2 * plan.crash_runs {
        let traffic = run % 2 == 1;
        let clients = if traffic {
            let c = ForwardClients::start(&forwards);
            c.wait_traffic(Duration::from_secs(10)).await?;
            Some(c)
        } else {
            None
        };
        let t0 = Instant::now();
        s.fleet.package(NEAR, CCM)?.kill();
        let took = wait_all_choose(
            &requesters,
            CCM,
            Some(NEXT),
            t0,
            POLL,
            Duration::from_secs(15),
        )
        .await?;
        if let Some(clients) = clients {
            busy_crash.push(took.as_secs_f64() * 1e3);
            // Keep connecting a little longer: failures right after the switch count too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (attempts, failures, errs) = clients.stop().await;
            attempts_total += attempts;
            failed.push(failures as f64);
            for (at, _) in &errs {
                match at.checked_duration_since(t0) {
                    None => in_flight += 1,
                    Some(d) if d < AT_KILL => at_kill += 1,
                    Some(_) => later += 1,
                }
            }
            examples.extend(errs.into_iter().take(3).map(|(at, e)| {
                let ms = if at >= t0 {
                    (at - t0).as_secs_f64() * 1e3
                } else {
                    -(t0 - at).as_secs_f64() * 1e3
                };
                format!("connection begun {ms:+.1} ms from the kill: {e}")
            }));
        } else {
            crash.push(took.as_secs_f64() * 1e3);
        }

        s.fleet.restart_package(NEAR, CCM).await?;
        let tr = Instant::now();
        let back = wait_all_choose(
            &requesters,
            CCM,
            Some(NEAR),
            tr,
            Duration::from_millis(10),
            plan.revert_after + Duration::from_secs(20),
        )
        .await?;
        let ms = back.as_secs_f64() * 1e3;
        revert.push(ms);
        let list = if traffic {
            &mut reverts.1
        } else {
            &mut reverts.0
        };
        list.push(format!("{ms:.0}"));
    }
    revert.note(format!(
        "after a crash without traffic: {} ms; with traffic through the forwarders: {} ms",
        reverts.0.join(", "),
        reverts.1.join(", ")
    ));
    failed.note(format!(
        "{attempts_total} connections (connect, read the greeting) through the forwarding ports of \
         agent-3..6, from before the kill until 300 ms after every agent re-routed; value = sum over runs"
    ));
    let total_failed: f64 = failed.samples.iter().sum();
    if total_failed > 0.0 {
        failed.note(format!(
            "of the {total_failed} failed connections, {in_flight} were begun before the kill (in \
             flight when the package died), {at_kill} within {AT_KILL:?} after it (while the dying \
             process's sockets closed), {later} later"
        ));
    }
    if !examples.is_empty() {
        examples.truncate(5);
        failed.note(format!("failures seen: {}", examples.join("; ")));
    }
    Ok(vec![crash, busy_crash, failed, revert])
}

/// Measures `failover_silent` (`loaded` false) or `failover_silent_loaded` and
/// `false_alarms_loaded` (`loaded` true, with both cores busy).
pub async fn silent(mode: Mode, loaded: bool) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let mut s = Setup::start(&plan, false).await?;
    let requesters = s.probes(&["agent-4", "agent-5", "agent-6"]);
    let everyone = s.probes(&AGENTS);
    let monitor = RouteMonitor::start(&everyone, CCM, Duration::from_millis(50));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let busy = loaded.then(|| Busy::start(cores));
    if loaded {
        // Nothing broken for a while: every route change now is a false alarm.
        tokio::time::sleep(plan.quiet).await;
    }

    let name = if loaded {
        "failover_silent_loaded"
    } else {
        "failover_silent"
    };
    let mut fig = Figure::new(name);
    fig.note(format!(
        "SIGSTOP of agent-3's agent and package (no RST) until agent-4..6 all resolve agent-1{}; {}",
        if loaded {
            format!(", with {cores} busy-loop threads on {cores} cores")
        } else {
            String::new()
        },
        plan.settings()
    ));
    let mut faults = Vec::new();
    let mut backs = Vec::new();
    for _ in 0..plan.silent_runs {
        let t0 = Instant::now();
        s.fleet.agent(NEAR)?.proc.pause();
        s.fleet.package(NEAR, CCM)?.pause();
        let took = wait_all_choose(
            &requesters,
            CCM,
            Some(NEXT),
            t0,
            POLL,
            Duration::from_secs(20),
        )
        .await;
        let tc = Instant::now();
        s.fleet.agent(NEAR)?.proc.resume();
        s.fleet.package(NEAR, CCM)?.resume();
        let took = took?;
        fig.push(took.as_secs_f64() * 1e3);
        let all_back = s.probes(&["agent-3", "agent-4", "agent-5", "agent-6"]);
        let back = wait_all_choose(
            &all_back,
            CCM,
            Some(NEAR),
            tc,
            Duration::from_millis(20),
            plan.revert_after + Duration::from_secs(30),
        )
        .await?;
        backs.push(format!("{:.0}", back.as_secs_f64() * 1e3));
        faults.push(Fault {
            host: NEAR.into(),
            from: t0,
            until: tc + Duration::from_secs(2),
        });
    }
    fig.note(format!(
        "after SIGCONT, every agent was back on agent-3 after {} ms (hold-down included)",
        backs.join(", ")
    ));
    if loaded {
        // A last quiet stretch under load after the faults.
        tokio::time::sleep(plan.quiet / 2).await;
    }
    drop(busy);
    let alarms = false_alarms(&monitor.changes(), &s.preferred(), &faults);
    drop(monitor);
    let alarm_text: Vec<String> = alarms
        .iter()
        .take(5)
        .map(|c| format!("{}: {:?} -> {:?}", c.host, c.from, c.to))
        .collect();
    let mut out = vec![fig];
    if loaded {
        let mut fa = Figure::new("false_alarms_loaded");
        fa.sum_of_runs = true;
        fa.push(alarms.len() as f64);
        fa.note(format!(
            "route changes of the 5 agents (polled every 50 ms) away from a manager that was not \
             stopped at the time, over {:?} quiet under load plus the {} silent-stop runs",
            plan.quiet + plan.quiet / 2,
            plan.silent_runs
        ));
        if !alarm_text.is_empty() {
            fa.note(format!("false alarms: {}", alarm_text.join("; ")));
        }
        out.push(fa);
    } else if !alarms.is_empty() {
        out[0].note(format!(
            "{} false alarms on an idle machine: {}",
            alarms.len(),
            alarm_text.join("; ")
        ));
    }
    Ok(out)
}

/// Client loops connecting through forwarding ports: connect, read the greeting, close, again.
struct ForwardClients {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    /// When each failure was seen (at its end) and what it was.
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ForwardClients {
    fn start(addrs: &[SocketAddr]) -> ForwardClients {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let tasks = addrs
            .iter()
            .map(|&addr| {
                let (stop, attempts, failures, errors) = (
                    stop.clone(),
                    attempts.clone(),
                    failures.clone(),
                    errors.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let began = Instant::now();
                        if let Err(e) = crate::standin::greeting(addr).await {
                            failures.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .expect("errors lock")
                                .push((began, format!("{addr}: {e}")));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        ForwardClients {
            stop,
            attempts,
            failures,
            errors,
            tasks,
        }
    }

    /// Waits until every loop has made a few good connections (the forwarders work).
    async fn wait_traffic(&self, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let want = self.tasks.len() * 5;
        while self.attempts.load(Ordering::Relaxed) < want {
            anyhow::ensure!(
                start.elapsed() < deadline,
                "connections through the forwarding ports did not get going within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::ensure!(
            self.failures.load(Ordering::Relaxed) == 0,
            "connections through the forwarding ports fail before any fault: {:?}",
            self.errors.lock().expect("errors lock").first()
        );
        Ok(())
    }

    /// Stops the loops: (attempts, failures, when each failed connection began and why).
    async fn stop(mut self) -> (usize, usize, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let errors = self.errors.lock().expect("errors lock").clone();
        (
            self.attempts.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            errors,
        )
    }
}

impl Drop for ForwardClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}
