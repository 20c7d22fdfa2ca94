//! In-process tests of a real manager on 127.0.0.1:0: sessions, expiry, watch with resume,
//! operator actions, topology changes mid-stream, bad input, restart.

use tests::inproc as common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use proto::v1 as pb;
use registry_manager::Tuning;
use tonic::Code;

const TTL: Duration = Duration::from_secs(5);

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_services() -> Result<()> {
    let h = Harness::start(TTL).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    for service in [
        "",
        "fleet.registry.v1.AgentRegistry",
        "fleet.registry.v1.Admin",
    ] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "fleet.registry.v1.AgentRegistry",
        "fleet.registry.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    h.shutdown().await
}

#[tokio::test]
async fn sessions_open_and_refuse_a_second_claim_and_unknown_hosts() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let first = h.open("agent-1", &[CCM]).await?;
    assert!(!first.session_id.is_empty());
    assert_eq!(first.ttl_ms, 5000);
    assert_eq!(first.revision, h.revision().await);

    let err = h
        .open("agent-1", &[CCM])
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("already has a live session"),
        "{}",
        err.message()
    );

    let before = h.revision().await;
    let err = h
        .open("ghost", &[CCM])
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("add it to the topology"),
        "{}",
        err.message()
    );
    assert_eq!(h.revision().await, before, "refusals change nothing");

    let second = h.open("agent-2", &[CCM]).await?;
    assert_eq!(second.revision, before + 1);
    assert_ne!(second.session_id, first.session_id);
    h.shutdown().await
}

#[tokio::test]
async fn a_silent_session_expires_and_every_watcher_is_told() -> Result<()> {
    let mut h = Harness::start(Duration::from_millis(300)).await?;
    let silent = h.open("agent-1", &[CCM]).await?;
    let kept = h.open("agent-2", &[CCM]).await?;
    let mut acks = heartbeat(
        h.agent.clone(),
        "agent-2",
        &kept.session_id,
        Duration::from_millis(100),
    );
    let mut w = h.watch(0).await?;
    let snap = w.next().await?.snapshot()?;
    assert!(host(&snap.hosts, "agent-1").is_some_and(|e| e.alive));

    let seen = w
        .until(|e| matches!(e, Event::Delta(d) if host(&d.upserts, "agent-1").is_some_and(|e| !e.alive)))
        .await?;
    let d = seen.last().cloned().unwrap().delta()?;
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(
        status_of(&d.upserts[0], CCM),
        Some(pb::PackageStatus::Running),
        "packages stay listed"
    );

    // The heartbeating host is still alive, and its acks are ok.
    let ack = tokio::time::timeout(WAIT, acks.recv()).await?.expect("ack");
    assert!(ack.ok, "{ack:?}");
    let export = h.export().await?;
    assert!(alive(&export, "agent-2"), "{export}");
    assert!(!alive(&export, "agent-1"), "{export}");

    // A heartbeat of the lapsed session is refused; the host can open a new session.
    let mut late = heartbeat(
        h.agent.clone(),
        "agent-1",
        &silent.session_id,
        Duration::from_millis(50),
    );
    let ack = tokio::time::timeout(WAIT, late.recv()).await?.expect("ack");
    assert!(
        !ack.ok && ack.reason.contains("open a new session"),
        "{ack:?}"
    );
    h.open("agent-1", &[CCM]).await?;
    h.shutdown().await
}

#[tokio::test]
async fn sessions_that_lapse_together_are_one_revision() -> Result<()> {
    let mut h = Harness::start(Duration::from_millis(300)).await?;
    let hosts = ["agent-1", "agent-2", "agent-3", "s2-host"];
    for host in hosts {
        h.open(host, &[CCM]).await?;
    }
    // After a restart every session gets the same fresh TTL, so all four fall due together.
    h.restart().await?;
    let head = h.revision().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let export = loop {
        let export = h.export().await?;
        if hosts.iter().all(|host| !alive(&export, host)) {
            break export;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not every session lapsed: {export}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        h.revision().await,
        head + 1,
        "four lapses found by one scan are one revision: {export}"
    );
    h.shutdown().await
}

#[tokio::test]
async fn a_watcher_ahead_of_the_member_waits_for_its_copy_instead_of_going_back() -> Result<()> {
    // An agent that watched a leader which then failed may hold a revision this member has not
    // applied yet: it must not be sent this member's older registry.
    let mut h = Harness::start(TTL).await?;
    h.open("agent-1", &[CCM]).await?;
    let request = |from_revision: u64, history: &str| pb::WatchRequest {
        from_revision,
        host: String::new(),
        history: history.into(),
        status_changes: false,
    };
    let mut first = h.agent.watch(request(0, "")).await?.into_inner();
    let history = first.message().await?.expect("a snapshot").history;
    let head = h.revision().await;
    let ahead = |history: &str| request(head + 1, history);
    let mut watcher = Watcher::from(h.agent.watch(ahead(&history)).await?.into_inner());
    // The revision it has arrives, then one more: the first event it gets is that one's delta.
    let had = h.action("agent-1", CCM, pb::PackageAction::Drain).await?;
    assert_eq!(had, head + 1);
    let next = h.action("agent-1", CCM, pb::PackageAction::Restore).await?;
    let ev = watcher.next().await?;
    assert_eq!(ev.revision(), next, "{ev:?}");
    ev.delta()?;
    // A watcher of another history is sent this registry at once.
    let mut other = Watcher::from(h.agent.watch(ahead("another-history")).await?.into_inner());
    let ev = other.next().await?;
    assert_eq!(ev.revision(), next);
    ev.snapshot()?;
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_session_opens_reaches_watchers_as_a_few_revisions() -> Result<()> {
    // A rack's agents reopening at once: writes that wait for the writer go into one raft
    // entry, which makes one revision and one event to every watcher.
    const OPENS: usize = 40;
    let mut h = Harness::start(TTL).await?;
    let hosts: Vec<String> = (0..OPENS).map(|i| format!("h{i:02}")).collect();
    h.apply(&format!(
        "version: 1\ndomain: root\nhosts: [{}]\n",
        hosts.join(", ")
    ))
    .await?;
    let start = h.revision().await;
    let mut watcher = h.watch(start).await?;
    let engine = h.manager.as_ref().expect("running").engine().clone();
    // Holding the state keeps every write from being applied, so later ones wait in the queue.
    let held = engine.state_lock().read().await;
    let mut opens = tokio::task::JoinSet::new();
    for host in &hosts {
        let mut agent = h.agent.clone();
        let host = host.clone();
        opens.spawn(async move {
            agent
                .open_session(pb::OpenSessionRequest {
                    host,
                    packages: vec![pb::Package {
                        r#type: CCM.into(),
                        endpoint: "127.0.0.1:7001".into(),
                        status: pb::PackageStatus::Running as i32,
                    }],
                })
                .await
        });
    }
    // Until every open has reached the writer: in the few entries it may have in flight, held
    // for its next entry, or waiting in its queue.
    let deadline = tokio::time::Instant::now() + WAIT;
    while engine.proposals_waiting() + engine.proposals_writing() < OPENS {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the opens did not reach the writer: {} waiting, {} being written",
            engine.proposals_waiting(),
            engine.proposals_writing()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(held);
    while let Some(open) = opens.join_next().await {
        open??;
    }
    let end = h.revision().await;
    // The entries in flight make a revision each; everything else went into one more entry.
    assert!(
        end - start <= registry_manager::IN_FLIGHT as u64 + 1,
        "{OPENS} opens made {} revisions",
        end - start
    );
    let events = watcher.until(|ev| ev.revision() == end).await?;
    assert_eq!(events.len() as u64, end - start, "one event per revision");
    let mut alive = std::collections::BTreeSet::new();
    for ev in events {
        for entry in ev.delta()?.upserts {
            assert!(entry.alive, "{entry:?}");
            alive.insert(entry.host);
        }
    }
    assert_eq!(
        alive.into_iter().collect::<Vec<_>>(),
        hosts,
        "every host, alive"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_read_on_a_member_whose_copy_lags_says_it_is_behind_not_cut_off() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    h.open("agent-1", &[CCM]).await?;
    let state = h
        .manager
        .as_ref()
        .expect("running")
        .engine()
        .state_lock()
        .clone();
    // Holding the state keeps the next write from being applied: committed, not yet in the copy.
    let held = state.read().await;
    let mut admin = h.admin.clone();
    let write = tokio::spawn(async move {
        admin
            .package_action(pb::PackageActionRequest {
                host: "agent-1".into(),
                r#type: CCM.into(),
                action: pb::PackageAction::Drain as i32,
            })
            .await
    });
    // Until the write is committed but not applied.
    let engine = h.manager.as_ref().expect("running").engine().clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = engine.metrics();
        if m.cluster_committed.map(|l| l.index) > m.last_applied.map(|l| l.index) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the write was not committed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = h
        .admin
        .list_hosts(pb::ListHostsRequest { stale: false })
        .await
        .expect_err("a current read cannot be answered while the copy lags");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("is in touch with the group but its copy did not catch up")
            && err.message().contains("--stale"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("majority"), "{}", err.message());
    drop(held);
    let done = tokio::time::timeout(WAIT, write).await??;
    assert!(
        done.is_ok(),
        "the write goes through once applied: {done:?}"
    );
    h.admin
        .list_hosts(pb::ListHostsRequest { stale: false })
        .await?;
    h.shutdown().await
}

#[tokio::test]
async fn a_stopped_manager_has_closed_its_store_so_the_next_one_opens_it_at_once() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    h.open("agent-1", &[CCM]).await?;
    let head = h.revision().await;
    // Each restart opens the data directory the moment the previous manager has stopped: its
    // store's lock must be free by then, not a moment later.
    for _ in 0..20 {
        h.restart().await?;
    }
    assert_eq!(h.revision().await, head, "restarts write nothing");
    h.shutdown().await
}

/// The answers (seq, ok) to `seqs` sent on one keep-alive stream, which then ends.
async fn answers(
    h: &Harness,
    host: &str,
    session_id: &str,
    seqs: &[u64],
    sparse_acks: bool,
) -> Result<Vec<(u64, bool)>> {
    let beats: Vec<pb::Heartbeat> = seqs
        .iter()
        .map(|&seq| pb::Heartbeat {
            session_id: session_id.into(),
            host: host.into(),
            seq,
            sparse_acks,
        })
        .collect();
    let mut acks = h
        .agent
        .clone()
        .keep_alive(futures::stream::iter(beats))
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = tokio::time::timeout(WAIT, acks.message()).await?? {
        got.push((a.seq, a.ok));
    }
    Ok(got)
}

#[tokio::test]
async fn sparse_acks_answer_the_first_and_every_second_heartbeat_and_every_refusal() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let s = h.open("agent-1", &[CCM]).await?;
    assert_eq!(
        answers(&h, "agent-1", &s.session_id, &[1, 2, 3, 4, 5], true).await?,
        [(1, true), (3, true), (5, true)],
        "an agent that asks for sparse answers gets every second one"
    );
    assert_eq!(
        answers(&h, "agent-1", &s.session_id, &[1, 2, 3], false).await?,
        [(1, true), (2, true), (3, true)],
        "an older agent gets an answer to every heartbeat"
    );
    assert_eq!(
        answers(&h, "agent-1", "not-the-session", &[1, 2], true).await?,
        [(1, false), (2, false)],
        "every refusal is answered"
    );
    h.shutdown().await
}

#[tokio::test]
async fn watch_sends_a_snapshot_then_every_delta_in_order() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let mut w = h.watch(0).await?;
    let snap = w.next().await?.snapshot()?;
    assert_eq!(snap.revision, h.revision().await);
    assert!(snap.topology_yaml.contains("subdomain-1a"));
    assert!(snap.hosts.is_empty());

    let s1 = h.open("agent-1", &[CCM]).await?;
    h.open("agent-3", &[CCM, "event-manager"]).await?;
    h.report(&s1, "agent-1", CCM, pb::PackageStatus::Failing)
        .await?;
    let last = h.action("agent-3", CCM, pb::PackageAction::Drain).await?;

    let mut expect = snap.revision + 1;
    let mut deltas = Vec::new();
    while expect <= last {
        let d = w.next().await?.delta()?;
        assert_eq!(d.revision, expect, "deltas arrive in order, none missing");
        expect += 1;
        deltas.push(d);
    }
    assert_eq!(deltas[0].upserts[0].host, "agent-1");
    assert_eq!(deltas[1].upserts[0].packages.len(), 2);
    assert_eq!(
        status_of(&deltas[2].upserts[0], CCM),
        Some(pb::PackageStatus::Failing)
    );
    assert_eq!(
        status_of(&deltas[3].upserts[0], CCM),
        Some(pb::PackageStatus::Draining)
    );
    assert_eq!(
        status_of(&deltas[3].upserts[0], "event-manager"),
        Some(pb::PackageStatus::Running)
    );
    h.shutdown().await
}

#[tokio::test]
async fn resuming_from_a_kept_revision_sends_only_the_deltas_after_it() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let from = h.open("agent-1", &[CCM]).await?.revision;
    h.open("agent-2", &[CCM]).await?;
    let last = h
        .action("agent-1", CCM, pb::PackageAction::Withdraw)
        .await?;
    let mut w = h.watch(from).await?;
    for rev in from + 1..=last {
        assert_eq!(w.next().await?.delta()?.revision, rev);
    }
    // Up to date: nothing until the next change, which comes as a delta.
    let mut w2 = h.watch(last).await?;
    let next = h.action("agent-1", CCM, pb::PackageAction::Restore).await?;
    assert_eq!(w2.next().await?.delta()?.revision, next);
    assert_eq!(w.next().await?.delta()?.revision, next);
    // A watcher claiming a revision this manager never reached gets a snapshot.
    let mut ahead = h.watch(next + 100).await?;
    assert_eq!(ahead.next().await?.snapshot()?.revision, next);
    h.shutdown().await
}

#[tokio::test]
async fn resuming_from_a_trimmed_revision_sends_a_snapshot_also_after_restart() -> Result<()> {
    let tuning = Tuning {
        delta_window: 4,
        ..Tuning::default()
    };
    let mut h = Harness::start_tuned(TTL, tuning).await?;
    let early = h.open("agent-1", &[CCM]).await?.revision;
    for _ in 0..4 {
        h.action("agent-1", CCM, pb::PackageAction::Drain).await?;
        h.action("agent-1", CCM, pb::PackageAction::Restore).await?;
    }
    let head = h.revision().await;
    let mut w = h.watch(early).await?;
    let snap = w.next().await?.snapshot()?;
    assert_eq!(snap.revision, head);
    assert_eq!(
        status_of(host(&snap.hosts, "agent-1").unwrap(), CCM),
        Some(pb::PackageStatus::Running)
    );
    // Within the window: deltas.
    let mut w = h.watch(head - 2).await?;
    assert_eq!(w.next().await?.delta()?.revision, head - 1);
    assert_eq!(w.next().await?.delta()?.revision, head);

    h.restart().await?;
    assert_eq!(h.revision().await, head, "revision survives the restart");
    let mut w = h.watch(head - 2).await?;
    assert_eq!(
        w.next().await?.delta()?.revision,
        head - 1,
        "window survives the restart"
    );
    assert_eq!(w.next().await?.delta()?.revision, head);
    let mut w = h.watch(early).await?;
    assert_eq!(w.next().await?.snapshot()?.revision, head);
    let next = h.action("agent-1", CCM, pb::PackageAction::Drain).await?;
    assert_eq!(next, head + 1, "numbering continues");
    h.shutdown().await
}

#[tokio::test]
async fn restart_keeps_sessions_for_one_ttl_of_grace() -> Result<()> {
    let mut h = Harness::start(Duration::from_millis(500)).await?;
    let s = h.open("agent-1", &[CCM]).await?;
    let head = h.revision().await;
    h.restart().await?;
    assert_eq!(h.revision().await, head, "a restart writes nothing");
    // The agent resumes heartbeating with its old session: accepted, and it stays alive.
    let mut acks = heartbeat(
        h.agent.clone(),
        "agent-1",
        &s.session_id,
        Duration::from_millis(100),
    );
    for _ in 0..10 {
        let ack = tokio::time::timeout(WAIT, acks.recv()).await?.expect("ack");
        assert!(ack.ok, "{ack:?}");
    }
    let export = h.export().await?;
    assert!(alive(&export, "agent-1"), "{export}");
    assert_eq!(h.revision().await, head, "heartbeats write nothing");
    h.shutdown().await
}

#[tokio::test]
async fn operator_overrides_beat_agent_reports_until_restore() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let s = h.open("agent-3", &[CCM]).await?;
    h.action("agent-3", CCM, pb::PackageAction::Drain).await?;
    h.report(&s, "agent-3", CCM, pb::PackageStatus::Failing)
        .await?;
    let export = h.export().await?;
    assert_eq!(
        export["hosts"]["agent-3"]["packages"][CCM]["status"], "draining",
        "{export}"
    );
    h.action("agent-3", CCM, pb::PackageAction::Withdraw)
        .await?;
    let export = h.export().await?;
    assert_eq!(
        export["hosts"]["agent-3"]["packages"][CCM]["status"],
        "withdrawn"
    );
    h.report(&s, "agent-3", CCM, pb::PackageStatus::Running)
        .await?;
    let export = h.export().await?;
    assert_eq!(
        export["hosts"]["agent-3"]["packages"][CCM]["status"],
        "withdrawn"
    );
    h.action("agent-3", CCM, pb::PackageAction::Restore).await?;
    let export = h.export().await?;
    assert_eq!(
        export["hosts"]["agent-3"]["packages"][CCM]["status"], "running",
        "latest report counts"
    );
    assert_eq!(export["revision"], h.revision().await);

    // The same action again writes nothing.
    let head = h.revision().await;
    assert_eq!(
        h.action("agent-3", CCM, pb::PackageAction::Restore).await?,
        head
    );
    h.shutdown().await
}

#[tokio::test]
async fn topology_apply_mid_stream_ends_removed_sessions_and_keeps_moved_ones() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let removed = h.open("s2-host", &[CCM]).await?;
    let moved = h.open("agent-4", &[CCM]).await?;
    let mut w = h.watch(0).await?;
    w.next().await?.snapshot()?;
    let mut removed_acks = heartbeat(
        h.agent.clone(),
        "s2-host",
        &removed.session_id,
        Duration::from_millis(100),
    );
    let first = tokio::time::timeout(WAIT, removed_acks.recv())
        .await?
        .expect("ack");
    assert!(first.ok);

    let rev = h.apply(TREE_CHANGED).await?;
    let d = w.next().await?.delta()?;
    assert_eq!(d.revision, rev);
    assert_eq!(d.removed_hosts, vec!["s2-host".to_string()]);
    assert!(d.upserts.is_empty());
    assert!(d
        .topology_yaml
        .as_deref()
        .is_some_and(|y| !y.contains("s2-host")));

    // The removed host's heartbeats are now refused; the moved host's session lives on.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ack = tokio::time::timeout_at(deadline, removed_acks.recv())
            .await?
            .expect("ack");
        if !ack.ok {
            break;
        }
    }
    let mut moved_acks = heartbeat(
        h.agent.clone(),
        "agent-4",
        &moved.session_id,
        Duration::from_millis(50),
    );
    assert!(
        tokio::time::timeout(WAIT, moved_acks.recv())
            .await?
            .expect("ack")
            .ok
    );
    let hosts = h
        .admin
        .list_hosts(pb::ListHostsRequest { stale: false })
        .await?
        .into_inner();
    let a4 = hosts
        .hosts
        .iter()
        .find(|x| x.host == "agent-4")
        .expect("agent-4 listed");
    assert_eq!(a4.domain, "subdomain-1");
    // Live; the listing has no field for a session id at all (the proto reserves it).
    assert!(a4.session_live, "live");
    assert!(hosts.hosts.iter().all(|x| x.host != "s2-host"));
    let show = h
        .admin
        .show_topology(pb::ShowTopologyRequest { stale: false })
        .await?
        .into_inner();
    assert_eq!(show.revision, rev);
    assert!(!show.yaml.contains("s2-host"));
    h.shutdown().await
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_changes_nothing() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let s = h.open("agent-1", &[CCM]).await?;
    let head = h.revision().await;

    let err = h
        .open("Agent 1", &[CCM])
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("host name \"Agent 1\" is invalid"),
        "{}",
        err.message()
    );
    let err = h
        .open("agent-2", &["Bad Type"])
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = h
        .apply("version: 1\ndomain: root\nhosts: [a]\nbogus: 1\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("fleet.yaml:4:"),
        "file:line:col first: {}",
        err.message()
    );
    let err = h.apply("version: 2\ndomain: root\n").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("fleet.yaml:1:"), "{}", err.message());

    let err = h
        .report(&s, "agent-1", "event-manager", pb::PackageStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = h
        .report(&s, "agent-2", CCM, pb::PackageStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = h
        .report(&s, "agent-1", CCM, pb::PackageStatus::Draining)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let stale = pb::OpenSessionResponse {
        session_id: "not-a-session".into(),
        ..s.clone()
    };
    let err = h
        .report(&stale, "agent-1", CCM, pb::PackageStatus::Failing)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let err = h
        .action("ghost", CCM, pb::PackageAction::Drain)
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .action("agent-2", CCM, pb::PackageAction::Drain)
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::NotFound);
    let err = h
        .action("agent-1", CCM, pb::PackageAction::Unspecified)
        .await
        .unwrap_err()
        .downcast::<tonic::Status>()?;
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = h
        .admin
        .explain_route(pb::ExplainRouteRequest {
            host: "ghost".into(),
            r#type: CCM.into(),
            stale: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Oversized requests are refused by the transport.
    let big = "x".repeat(5 << 20);
    let req = pb::OpenSessionRequest {
        host: "agent-2".into(),
        packages: vec![pb::Package {
            r#type: CCM.into(),
            endpoint: big,
            status: 2,
        }],
    };
    let err = h.agent.open_session(req).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    assert_eq!(h.revision().await, head, "nothing changed");
    let show = h
        .admin
        .show_topology(pb::ShowTopologyRequest { stale: false })
        .await?
        .into_inner();
    assert!(show.yaml.contains("subdomain-1a"));
    h.shutdown().await
}

#[tokio::test]
async fn explain_diff_and_list_answer_from_the_live_registry() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    for host in ["fm", "agent-1", "agent-3"] {
        h.open(host, &[CCM]).await?;
    }
    let e = h
        .admin
        .explain_route(pb::ExplainRouteRequest {
            host: "agent-4".into(),
            r#type: CCM.into(),
            stale: false,
        })
        .await?
        .into_inner();
    assert_eq!(e.chosen.as_deref(), Some("agent-3"));
    assert_eq!(e.route, vec!["agent-3", "agent-1", "fm"]);
    assert_eq!(e.revision, h.revision().await);
    h.action("agent-3", CCM, pb::PackageAction::Drain).await?;
    let e = h
        .admin
        .explain_route(pb::ExplainRouteRequest {
            host: "agent-4".into(),
            r#type: CCM.into(),
            stale: false,
        })
        .await?
        .into_inner();
    assert_eq!(e.chosen.as_deref(), Some("agent-1"));
    let c3 = e
        .candidates
        .iter()
        .find(|c| c.host == "agent-3")
        .expect("candidate");
    assert!(!c3.eligible && !c3.reason.is_empty(), "{c3:?}");
    assert_eq!(c3.tier, "domain");

    let diff = h
        .admin
        .diff_topology(pb::TopologyRequest {
            yaml: TREE_CHANGED.into(),
            file_name: "new.yaml".into(),
        })
        .await?
        .into_inner();
    assert_eq!(diff.hosts_removed, vec!["s2-host"]);
    assert_eq!(diff.hosts_moved.len(), 1);
    assert_eq!(diff.hosts_moved[0].host, "agent-4");
    // agent-4 already routes to agent-1 (agent-3 drains); only the removed host loses its route.
    assert_eq!(diff.route_changes.len(), 1, "{diff:?}");
    assert_eq!(diff.route_changes[0].host, "s2-host");
    assert_eq!(diff.route_changes[0].old_chosen, "fm");
    assert_eq!(diff.route_changes[0].new_chosen, "");

    let hosts = h
        .admin
        .list_hosts(pb::ListHostsRequest { stale: false })
        .await?
        .into_inner();
    assert_eq!(hosts.hosts.len(), 6, "every topology host is listed");
    let a2 = hosts.hosts.iter().find(|x| x.host == "agent-2").unwrap();
    assert!(
        a2.alive && !a2.session_live && a2.packages.is_empty(),
        "{a2:?}"
    );
    let a1 = hosts.hosts.iter().find(|x| x.host == "agent-1").unwrap();
    assert!(a1.session_live && a1.packages.len() == 1, "{a1:?}");
    h.shutdown().await
}

#[tokio::test]
async fn an_invalid_topology_at_start_refuses_to_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(&dir, TTL, Some("version: 1\ndomain: Root\n"));
    let err = registry_manager::start(config).await.unwrap_err();
    assert!(
        matches!(err, registry_manager::ServeError::InvalidTopology(_)),
        "{err}"
    );
    assert!(err.to_string().contains("fleet.yaml:2:"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_each_receive_every_change_in_order() -> Result<()> {
    let mut h = Harness::start(TTL).await?;
    let addr = h.manager.as_ref().unwrap().local_addr();
    let channels = [
        h.channel.clone(),
        connect(addr).await?,
        connect(addr).await?,
    ];
    let mut watchers = Vec::new();
    for i in 0..300 {
        let channel = channels[i % channels.len()].clone();
        let mut client = proto::v1::agent_registry_client::AgentRegistryClient::new(channel);
        let req = pb::WatchRequest {
            from_revision: 0,
            host: format!("watcher-{i}"),
            history: String::new(),
            status_changes: false,
        };
        watchers.push(Watcher::from(client.watch(req).await?.into_inner()));
    }
    let start = h.revision().await;
    for w in &mut watchers {
        assert_eq!(w.next().await?.snapshot()?.revision, start);
    }
    assert_eq!(h.manager.as_ref().unwrap().watchers(), 300);
    h.open("agent-1", &[CCM]).await?;
    h.action("agent-1", CCM, pb::PackageAction::Drain).await?;
    let last = h.action("agent-1", CCM, pb::PackageAction::Restore).await?;
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut revs = Vec::new();
                while revs.last() != Some(&last) {
                    revs.push(w.next().await?.delta()?.revision);
                }
                anyhow::Ok(revs)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await??, (start + 1..=last).collect::<Vec<_>>());
    }
    h.shutdown().await
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused_with_its_path() -> Result<()> {
    let h = Harness::start(TTL).await?;
    let config = config(&h.dir, TTL, None);
    let err = registry_manager::start(config).await.unwrap_err();
    assert!(
        matches!(err, registry_manager::ServeError::Store { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&h.dir.path().display().to_string()),
        "{err}"
    );
    h.shutdown().await
}

#[tokio::test]
async fn run_stops_when_its_shutdown_future_resolves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(&dir, TTL, Some(TREE));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(registry_manager::run(config, async move {
        let _ = rx.await;
    }));
    tx.send(()).ok();
    tokio::time::timeout(WAIT, task).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_diffs_of_a_large_fleet_stall_no_heartbeat() -> Result<()> {
    let ttl = Duration::from_millis(800);
    let mut h = Harness::start(ttl).await?;
    let s = h.open("agent-1", &[CCM]).await?;
    let before = h.revision().await;
    let mut acks = heartbeat(h.agent.clone(), "agent-1", &s.session_id, ttl / 4);
    // A fleet of 20,000 hosts in 200 domains, the test hosts kept.
    let mut big = String::from(
        "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2]\n",
    );
    for d in 0..200 {
        big.push_str(&format!("  - domain: d{d}\n    hosts: ["));
        let hosts: Vec<String> = (0..100).map(|i| format!("h{d}-{i}")).collect();
        big.push_str(&hosts.join(", "));
        big.push_str("]\n");
    }
    let mut diffs = Vec::new();
    for _ in 0..6 {
        let mut admin = h.admin.clone();
        let yaml = big.clone();
        diffs.push(tokio::spawn(async move {
            admin
                .diff_topology(pb::TopologyRequest {
                    yaml,
                    file_name: "big.yaml".into(),
                })
                .await
                .map(|r| r.into_inner().hosts_added.len())
        }));
    }
    // While the diffs run, every heartbeat is answered and the session never lapses.
    let mut answered = 0usize;
    while !diffs.iter().all(|d| d.is_finished()) {
        let ack = tokio::time::timeout(WAIT, acks.recv())
            .await?
            .expect("the keep-alive stream stays open");
        assert!(ack.ok, "{ack:?}");
        answered += 1;
    }
    for d in diffs {
        assert!(d.await?? >= 20_000, "each diff saw the new hosts");
    }
    assert!(answered > 0);
    let export = h.export().await?;
    assert!(alive(&export, "agent-1"), "the session held: {export}");
    assert_eq!(
        h.revision().await,
        before,
        "diffs write nothing, nothing lapsed"
    );
    h.shutdown().await
}

/// What the server did with a raw connection that sent the HTTP/2 preface.
#[derive(Debug, PartialEq)]
enum Fate {
    /// It answered (its SETTINGS).
    Served,
    /// It closed the connection (end of stream, or a reset).
    Closed,
    /// Neither within five seconds.
    Held,
}

async fn fate(stream: &mut tokio::net::TcpStream) -> Fate {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .is_err()
    {
        return Fate::Closed;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Fate::Closed,
        Ok(Ok(_)) => Fate::Served,
        Err(_) => Fate::Held,
    }
}

#[tokio::test]
async fn past_its_share_of_connections_the_port_closes_new_ones_at_once_and_keeps_serving(
) -> Result<()> {
    let tuning = Tuning {
        max_connections: 4,
        ..Tuning::default()
    };
    let h = Harness::start_tuned(TTL, tuning).await?;
    let addr = h.manager.as_ref().expect("running").local_addr();
    // The harness holds one connection; three more fill the port.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let f = fate(&mut s).await;
        anyhow::ensure!(f == Fate::Served, "connection {}: {f:?}", i + 2);
        held.push(s);
    }
    // The next one is closed at once (not held), and so is every one after it.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let f = fate(&mut s).await;
        anyhow::ensure!(f == Fate::Closed, "a connection past the share: {f:?}");
    }
    // Those it holds are served as before.
    h.revision().await;
    let mut c = h.agent.clone();
    c.open_session(pb::OpenSessionRequest {
        host: "agent-1".into(),
        packages: vec![],
    })
    .await?;
    // A place given back is taken by the next connection.
    drop(held.pop());
    tests::wait_until(
        "a freed place to be taken",
        Duration::from_secs(10),
        || async {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            match fate(&mut s).await {
                Fate::Served => Ok(()),
                f => Err(format!("{f:?}")),
            }
        },
    )
    .await?;
    drop(held);
    h.shutdown().await
}
