//! Security on real processes and real sockets (docs/security.md): fleets run with mutual TLS
//! from certificates made by `registry-manager certs`, and clients that try to break the rules
//! are refused — an agent acting for another host (even holding its session id), a non-admin
//! running admin commands, plaintext, a certificate from another CA, an expired certificate, a
//! non-member calling member RPCs — each with a clear error. Plus the `certs` commands and the
//! safe-by-default refusals of `serve`. The tests of this file run one at a time (a lock), as
//! the group ones would otherwise see false elections on a loaded 2-core machine.

use std::process::{Command, Stdio};
use std::time::Duration;

use proto::agent_registry_client::AgentRegistryClient;
use tests::fleet::{bin_path, free_port, CLUSTER_KEY, OPERATOR};
use tests::worked_example::{self, CCM};
use tests::{wait_until, Fleet};
use tokio::sync::Mutex;
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(20);

/// One test of this file at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small TLS fleet: one manager, agent-4's agent, a package on agent-3 (no agent: the test
/// plays agent-3 itself, with agent-3's certificate).
async fn small_tls_fleet() -> anyhow::Result<Fleet> {
    let fleet = Fleet::from_topology(&worked_example::topology("300ms", false))
        .tls()
        .manager()
        .agent("agent-4")
        .start()
        .await?;
    fleet.issue("agent-3")?;
    Ok(fleet)
}

async fn agent_client(
    fleet: &Fleet,
    identity: Option<&str>,
) -> anyhow::Result<AgentRegistryClient<tonic::transport::Channel>> {
    let ch = fleet
        .endpoint_as(identity, fleet.manager_addr())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(AgentRegistryClient::new(ch))
}

fn assert_denied(status: &tonic::Status, seen: &str, needs: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let m = status.message();
    assert!(
        m.contains(&format!("\"{seen}\"")) && m.contains(needs),
        "the refusal names the identity seen ({seen}) and what it needs ({needs}): {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_acts_only_for_its_own_host_even_with_another_hosts_session_id(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = small_tls_fleet().await?;

    // agent-3 (played by the test, with agent-3's certificate) opens its session.
    let mut as3 = agent_client(&fleet, Some("agent-3")).await?;
    let opened = as3
        .open_session(proto::OpenSessionRequest {
            host: "agent-3".into(),
            packages: vec![proto::Package {
                r#type: CCM.into(),
                endpoint: "127.0.0.1:1".into(),
                status: proto::PackageStatus::Running as i32,
            }],
        })
        .await?
        .into_inner();
    let sid = opened.session_id;

    let mut as4 = agent_client(&fleet, Some("agent-4")).await?;
    // Open a session for agent-3: refused.
    let err = as4
        .open_session(proto::OpenSessionRequest {
            host: "agent-3".into(),
            packages: vec![],
        })
        .await
        .unwrap_err();
    assert_denied(&err, "agent-4", "agent-3");

    // Keep agent-3's session alive with its id: refused.
    let beats = futures::stream::iter(vec![proto::Heartbeat {
        session_id: sid.clone(),
        host: "agent-3".into(),
        ..Default::default()
    }]);
    let refused = match as4.keep_alive(beats).await {
        Err(s) => s,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            match stream.message().await {
                Err(s) => s,
                Ok(ack) => panic!(
                    "a heartbeat for agent-3 with agent-4's certificate was answered {ack:?}"
                ),
            }
        }
    };
    assert_denied(&refused, "agent-4", "agent-3");

    // Report agent-3's package failing with its id: refused, and the registry is unchanged.
    let err = as4
        .report_status(proto::ReportStatusRequest {
            session_id: sid.clone(),
            host: "agent-3".into(),
            r#type: CCM.into(),
            status: proto::PackageStatus::Failing as i32,
        })
        .await
        .unwrap_err();
    assert_denied(&err, "agent-4", "agent-3");
    // Naming its own host with agent-3's session id is refused too.
    let err = as4
        .report_status(proto::ReportStatusRequest {
            session_id: sid.clone(),
            host: "agent-4".into(),
            r#type: CCM.into(),
            status: proto::PackageStatus::Failing as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        !err.message().contains(&sid),
        "a refusal never quotes a session id: {}",
        err.message()
    );
    let export = fleet.operator(&["registry", "export", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&export)?;
    assert_eq!(
        v["hosts"]["agent-3"]["packages"][CCM]["status"], "running",
        "agent-3's package is as agent-3 reported it: {v}"
    );

    // agent-3's own certificate keeps its session alive.
    let beats = futures::stream::iter(vec![proto::Heartbeat {
        session_id: sid.clone(),
        host: "agent-3".into(),
        ..Default::default()
    }]);
    let ack = as3
        .keep_alive(beats)
        .await?
        .into_inner()
        .message()
        .await?
        .expect("an ack");
    assert!(ack.ok, "{ack:?}");

    // The listing shows that a session is live, never its id.
    let hosts = fleet.operator(&["registry", "hosts", "--json"])?;
    assert!(
        !hosts.contains(&sid),
        "the host listing carries no session id"
    );
    let v: serde_json::Value = serde_json::from_str(&hosts)?;
    let h3 = v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == "agent-3"))
        .cloned()
        .expect("agent-3 listed");
    assert_eq!(h3["session_live"], true, "{h3}");
    // ... nor does any log line.
    assert!(
        !fleet.logs_all().contains(&sid),
        "no log line carries a session id"
    );
    assert!(!fleet.agent_logs().contains(&sid));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_need_an_admin_certificate_and_every_admin_write_is_audited(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = small_tls_fleet().await?;
    let addr = fleet.manager_addr();
    let topology = fleet.certs_dir().join("../topology.yaml");
    let topology = topology.display().to_string();

    // agent-4's certificate (a valid fleet certificate, not an admin's): refused.
    for args in [
        vec!["package", "drain", "--host", "agent-3", "--type", CCM],
        vec!["topology", "apply", topology.as_str(), "--yes"],
        vec!["registry", "export"],
    ] {
        let out = fleet.cli_as(Some("agent-4"), addr, &args)?;
        assert!(
            !out.status.success(),
            "{args:?} ran with agent-4's certificate"
        );
        let err = stderr(&out);
        assert!(
            err.contains("PermissionDenied")
                && err.contains("\"agent-4\"")
                && err.contains("admins"),
            "{args:?}: {err}"
        );
    }

    // The admin's certificate: done, and audited with who, what and the revision.
    let applied = fleet.cli_as(
        Some(OPERATOR),
        addr,
        &["topology", "apply", topology.as_str(), "--yes", "--json"],
    )?;
    assert!(applied.status.success(), "{}", stderr(&applied));
    let v: serde_json::Value = serde_json::from_slice(&applied.stdout)?;
    let revision = v["revision"].as_u64().expect("a revision");
    let logs = fleet.logs_all();
    let line = logs
        .lines()
        .find(|l| l.contains("audit") && l.contains("topology apply") && l.contains("who=ops"))
        .unwrap_or_else(|| panic!("no audit line for the apply:\n{logs}"));
    assert!(line.contains(&format!("revision={revision}")), "{line}");
    // The refused attempts are in the audit trail too, with the identity seen.
    assert!(
        logs.lines().any(|l| l.contains("audit")
            && l.contains("request refused")
            && l.contains("who=agent-4")),
        "{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_another_cas_certificate_and_an_expired_certificate_are_refused(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = small_tls_fleet().await?;
    let addr = fleet.manager_addr();

    // Plaintext: the command line says TLS is required and how to give a certificate.
    let out = fleet.cli_as(None, addr, &["topology", "show"])?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Unauthenticated") && err.contains("TLS only") && err.contains("--cert"),
        "{err}"
    );
    // A plaintext gRPC client gets the same answer on every service.
    let mut plain = agent_client(&fleet, None).await?;
    let s = plain
        .open_session(proto::OpenSessionRequest {
            host: "agent-3".into(),
            packages: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("TLS only"), "{s:?}");

    // A certificate named `ops` (an admin's name) from another CA: refused at the handshake.
    let other = fleet.certs_dir().join("../other-ca");
    let dir = other.display().to_string();
    for args in [
        vec!["certs", "init", "--dir", dir.as_str()],
        vec!["certs", "issue", "--dir", dir.as_str(), OPERATOR],
    ] {
        let out = Command::new(bin_path("registry-manager")?)
            .args(&args)
            .stdin(Stdio::null())
            .output()?;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let foreign = Command::new(bin_path("registry-manager")?)
        .args(["topology", "show", "--manager", &addr.to_string()])
        .env("FLEET_REGISTRY_CA", fleet.certs_dir().join("ca.crt"))
        .env("FLEET_REGISTRY_CERT", other.join("ops.crt"))
        .env("FLEET_REGISTRY_KEY", other.join("ops.key"))
        .stdin(Stdio::null())
        .output()?;
    assert!(
        !foreign.status.success(),
        "a foreign CA's certificate was accepted"
    );
    let err = stderr(&foreign);
    assert!(
        err.contains("refused by the manager") || err.contains("cannot reach"),
        "{err}"
    );
    wait_until(
        "the manager to log the refused handshake",
        SETTLE,
        || async {
            let logs = fleet.logs_all();
            if logs.lines().any(|l| {
                // Not signed by the fleet's CA: UnknownIssuer, or BadSignature when the other
                // CA bears the same name.
                l.contains("refused a TLS connection")
                    && (l.contains("UnknownIssuer") || l.contains("BadSignature"))
            }) {
                Ok(())
            } else {
                Err(fleet.logs())
            }
        },
    )
    .await?;

    // An expired certificate of the fleet's own CA, named `ops`.
    let (cert, key) = tests::pki::issue_expired(&fleet.certs_dir(), "ops-expired", OPERATOR, 1)?;
    // The command line says so before it dials.
    let out = Command::new(bin_path("registry-manager")?)
        .args(["topology", "show", "--manager", &addr.to_string()])
        .args([
            "--ca",
            &fleet.certs_dir().join("ca.crt").display().to_string(),
        ])
        .args(["--cert", &cert.display().to_string()])
        .args(["--key", &key.display().to_string()])
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("expired") && err.contains("certs issue"),
        "{err}"
    );
    // A client that dials with it anyway is refused by the manager, which logs why.
    let files = proto::tls::TlsFiles {
        cert,
        key,
        ca: fleet.certs_dir().join("ca.crt"),
    };
    let tls = files.load()?.client_tls(None)?;
    let call = async {
        let ch = proto::tls::endpoint(&addr.to_string(), Some(&tls))
            .map_err(|e| anyhow::anyhow!(e))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        AgentRegistryClient::new(ch)
            .open_session(proto::OpenSessionRequest {
                host: "agent-3".into(),
                packages: vec![],
            })
            .await?;
        anyhow::Ok(())
    };
    let result = call.await;
    assert!(result.is_err(), "an expired certificate was accepted");
    wait_until(
        "the manager to log the expired certificate",
        SETTLE,
        || async {
            let logs = fleet.logs_all();
            if logs.lines().any(|l| {
                l.contains("refused a TLS connection") && l.contains("certificate expired")
            }) {
                Ok(())
            } else {
                Err(fleet.logs())
            }
        },
    )
    .await?;
    Ok(())
}

/// Watches the registry as `who`, over a new connection with `who`'s certificate, until the
/// first event.
/// A watch stream from revision 0, over a new connection showing `who`'s certificate.
async fn watch_stream(
    fleet: &Fleet,
    who: &str,
) -> anyhow::Result<tonic::Streaming<proto::WatchEvent>> {
    Ok(agent_client(fleet, Some(who))
        .await?
        .watch(proto::WatchRequest {
            from_revision: 0,
            host: String::new(),
            history: String::new(),
            status_changes: true,
        })
        .await?
        .into_inner())
}

async fn watch_as(fleet: &Fleet, who: &str) -> Result<(), String> {
    let mut events = watch_stream(fleet, who)
        .await
        .map_err(|e| format!("{e:#}"))?;
    match events.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the stream ended".into()),
        Err(s) => Err(format!("{s:?}")),
    }
}

/// One manager and agent-4's agent over TLS, both following the CA's revocation list.
async fn revoking_fleet() -> anyhow::Result<Fleet> {
    Fleet::from_topology(&worked_example::topology("300ms", false))
        .tls()
        .revocation_list()
        .manager()
        .agent("agent-4")
        .start()
        .await
}

/// Waits (up to [`SETTLE`]) until `seen` holds for the text `log` reads; fails with the tails
/// of every log.
async fn wait_logged(
    fleet: &Fleet,
    what: &str,
    log: impl Fn() -> String,
    seen: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    wait_until(what, SETTLE, || async {
        if seen(&log()) {
            Ok(())
        } else {
            Err(fleet.logs())
        }
    })
    .await
}

/// The part of `log` after the first `mark` (empty without one).
fn after<'a>(log: &'a str, mark: &str) -> &'a str {
    log.split_once(mark).map_or("", |(_, rest)| rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_its_open_connections_cut_within_seconds_and_no_other(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = revoking_fleet().await?;
    fleet.issue("agent-3")?;
    // Before: agent-3's certificate is let in. One watch stream stays open across the
    // revocation: its connection is cut when the manager reads the changed list.
    watch_as(&fleet, "agent-3")
        .await
        .map_err(|e| anyhow::anyhow!("agent-3 before revocation: {e}"))?;
    let mut open_before = watch_stream(&fleet, "agent-3").await?;
    anyhow::ensure!(open_before.message().await?.is_some(), "no first event");
    let ended = tokio::spawn(async move {
        // Events until the connection is cut (an error) or the stream ends.
        while let Ok(Some(_)) = open_before.message().await {}
    });

    let out = fleet.revoke("agent-3")?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("revoked the certificate of agent-3") && said.contains("2 revoked"),
        "{said}"
    );
    // The manager reads the changed list by itself and refuses agent-3's new connections.
    wait_until("agent-3's certificate to be refused", SETTLE, || async {
        match watch_as(&fleet, "agent-3").await {
            Err(_) => Ok(()),
            Ok(()) => Err("agent-3 was still let in".to_string()),
        }
    })
    .await?;
    wait_until(
        "the manager to log the revoked certificate it refused",
        SETTLE,
        || async {
            // A new connection each time: the refusal above may have been the cut of a
            // connection opened just before the list was read again, which is no handshake.
            let _ = watch_as(&fleet, "agent-3").await;
            let logs = fleet.logs_all();
            if logs
                .lines()
                .any(|l| l.contains("refused a TLS connection") && l.contains("Revoked"))
            {
                Ok(())
            } else {
                Err(fleet.logs())
            }
        },
    )
    .await?;
    tokio::time::timeout(SETTLE, ended).await.map_err(|_| {
        anyhow::anyhow!("agent-3's connection opened before the revocation was not cut")
    })??;
    // Everyone else still gets in on new connections: the operator, and agent-4's agent.
    let out = fleet.manager_cli(&["topology", "show"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    watch_as(&fleet, "agent-4")
        .await
        .map_err(|e| anyhow::anyhow!("agent-4 after agent-3's revocation: {e}"))?;

    // A changed list that cannot be used is reported, and the one read before stays in force.
    std::fs::write(fleet.revocation_list(), "not a revocation list")?;
    wait_until(
        "the manager to report the unusable list",
        SETTLE,
        || async {
            if fleet
                .logs_all()
                .contains("the list read before stays in force")
            {
                Ok(())
            } else {
                Err(fleet.logs())
            }
        },
    )
    .await?;
    assert!(
        watch_as(&fleet, "agent-3").await.is_err(),
        "agent-3 let in after the list was damaged"
    );
    watch_as(&fleet, "agent-4")
        .await
        .map_err(|e| anyhow::anyhow!("agent-4 after the list was damaged: {e}"))?;
    // An operator command given the damaged list (`--crl`) says so before dialing.
    let out = fleet.manager_cli(&["topology", "show"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("revoked.crl") && stderr(&out).contains("certs revoke"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_operators_refuse_a_manager_whose_certificate_is_revoked() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let fleet = revoking_fleet().await?;
    // The agent is connected, and an operator given the list gets in.
    wait_logged(
        &fleet,
        "agent-4's session",
        || fleet.agent_logs(),
        |log| log.contains("connected to registry manager"),
    )
    .await?;
    let out = fleet.manager_cli(&["topology", "show"])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // The manager's own certificate is revoked (its key was stolen, say). The manager keeps
    // the list it had (a list naming itself cannot be its own); the agent, which was shown
    // that certificate, drops its connection and is refused when it dials again.
    fleet.revoke("m1")?;
    const DROPPED: &str = "names the certificate this manager showed";
    wait_logged(
        &fleet,
        "the agent to drop its connection to the revoked manager",
        || fleet.agent_logs(),
        |log| log.contains(DROPPED),
    )
    .await?;
    wait_logged(
        &fleet,
        "the agent's new handshakes to refuse the revoked manager",
        || fleet.agent_logs(),
        |log| after(log, DROPPED).contains("Revoked"),
    )
    .await?;
    let logs = fleet.agent_logs();
    let since = after(&logs, DROPPED);
    assert!(
        !since.contains("connected to registry manager"),
        "the agent connected to the revoked manager again:\n{since}"
    );
    let manager_log = fleet.logs_all();
    assert!(
        manager_log.lines().any(|l| l.contains("registry_manager")
            && l.contains("revokes this party's own certificate")),
        "the manager did not report the list naming itself: {}",
        fleet.logs()
    );

    // An operator given the list refuses the manager; one without it still gets in (the
    // list is the client's own check).
    let out = fleet.manager_cli(&["topology", "show"])?;
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("Revoked"), "{}", stderr(&out));
    let (cert, key, ca) = fleet.cert_files(OPERATOR);
    let out = Command::new(bin_path("registry-manager")?)
        .args([
            "topology",
            "show",
            "--manager",
            &fleet.manager_addr().to_string(),
        ])
        .args(["--ca", &ca.display().to_string()])
        .args(["--cert", &cert.display().to_string()])
        .args(["--key", &key.display().to_string()])
        .stdin(Stdio::null())
        .output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_fleet_runs_with_mutual_tls_forwarding_included() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms").tls().start().await?;
    for (hosts, expected) in [
        (&["agent-1", "agent-2"][..], "agent-1"),
        (&["agent-3", "agent-4"][..], "agent-3"),
    ] {
        for h in hosts {
            fleet.wait_chosen(h, CCM, Some(expected), SETTLE).await?;
            assert_eq!(fleet.through_forward(h, CCM).await?, expected);
        }
    }
    // An operator action over TLS moves agent-4 as in the plaintext fleet.
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    for h in ["agent-3", "agent-4"] {
        fleet.wait_chosen(h, CCM, Some("agent-1"), SETTLE).await?;
        assert_eq!(fleet.through_forward(h, CCM).await?, "agent-1");
    }
    // A lost host is noticed over TLS sessions as over plaintext ones.
    fleet.agent("agent-1")?.proc.kill();
    fleet.package("agent-1", CCM)?.kill();
    for h in ["agent-2", "agent-3", "agent-4"] {
        fleet.wait_chosen(h, CCM, Some("fm"), SETTLE).await?;
        assert_eq!(fleet.through_forward(h, CCM).await?, "fm");
    }
    let manager_logs = fleet.logs_all();
    assert!(
        !manager_logs.contains("refused"),
        "no agent of the fleet was refused:\n{manager_logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_over_tls_and_member_rpcs_need_a_member_certificate() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::from_topology(&worked_example::topology("300ms", false))
        .tls()
        .managers(3)
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-3", CCM)
        .forward(CCM)
        .start()
        .await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let addr = fleet.member_addr(leader);
    // A write through a follower is forwarded to the leader over TLS between members.
    let follower = (leader + 1) % 3;
    // (Once agent-3's agent has registered its package over TLS.)
    wait_until("a drain through a follower", SETTLE, || async {
        let out = fleet
            .cli_as(
                Some(OPERATOR),
                fleet.member_addr(follower),
                &["package", "drain", "--host", "agent-3", "--type", CCM],
            )
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    })
    .await?;
    // Member RPCs with an agent's or the operator's certificate: refused.
    for who in ["agent-4", OPERATOR] {
        let ch = fleet
            .endpoint_as(Some(who), addr)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let err = proto::member_client::MemberClient::new(ch)
            .member_status(proto::HaStatusRequest { local_only: true })
            .await
            .unwrap_err();
        assert_denied(&err, who, "member");
    }
    // A member's certificate may.
    let ch = fleet
        .endpoint_as(Some("m2"), addr)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    proto::member_client::MemberClient::new(ch)
        .member_status(proto::HaStatusRequest { local_only: true })
        .await?;
    // `ha failover` runs over TLS from any member.
    let out = fleet.cli_as(
        Some(OPERATOR),
        fleet.member_addr(follower),
        &["ha", "failover", "--json"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    fleet.wait_leader(Some(leader), SETTLE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_is_shut_out_by_the_others_and_its_agents_move_to_them(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::from_topology(&worked_example::topology("300ms", false))
        .tls()
        .revocation_list()
        .managers(3)
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-3", CCM)
        .start()
        .await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    // The leader's certificate is revoked (its key was stolen, say): the other members shut
    // it out both ways and elect one of themselves; agents refuse it too.
    let revoked = fleet.member_name(leader).to_owned();
    let revoked_addr = fleet.member_addr(leader).to_string();
    fleet.revoke(&revoked)?;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = fleet.wait_leader_among(&others, SETTLE * 2).await?;
    assert_ne!(new_leader, leader);
    // A write through the others is acknowledged, and reaches the agents through them.
    let out = fleet.cli_as(
        Some(OPERATOR),
        fleet.member_addr(others[0]),
        &["package", "drain", "--host", "agent-3", "--type", CCM],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    for host in ["agent-3", "agent-4"] {
        fleet.wait_chosen(host, CCM, None, SETTLE).await?;
    }
    // Every agent's latest connection is to a member that was not revoked.
    wait_until("the agents to leave the revoked member", SETTLE, || async {
        for host in ["agent-3", "agent-4"] {
            let log = fleet.agent_log(host);
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("connected to registry manager"))
                .unwrap_or_default();
            if last.is_empty() || last.contains(&revoked_addr) {
                return Err(format!("{host}'s last connection: {last}"));
            }
        }
        Ok(())
    })
    .await?;
    // The others refuse the revoked member's connections: it cannot take part any more.
    for i in &others {
        wait_logged(
            &fleet,
            "the others to refuse the revoked member",
            || fleet.member_log(*i),
            |log| {
                log.lines()
                    .any(|l| l.contains("refused a TLS connection") && l.contains("Revoked"))
            },
        )
        .await?;
    }
    // Nor does it accept them as its leader: with nobody to talk to, it is cut off from the
    // majority, and would close any agent's stream.
    const CUT: &str = "cut off from the group's majority";
    wait_logged(
        &fleet,
        "the revoked member to be cut off",
        || fleet.member_log(leader),
        |log| {
            let since = after(log, "the revocation list changed but cannot be used");
            since.contains(CUT)
                && !since
                    .rsplit(CUT)
                    .next()
                    .unwrap_or_default()
                    .contains("back in touch")
        },
    )
    .await?;
    Ok(())
}

/// The applied revision member `i` reports of itself.
fn applied_revision(fleet: &Fleet, i: usize) -> Result<u64, String> {
    let out = fleet
        .member_cli(fleet.member_addr(i), &["ha", "status", "--local", "--json"])
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == fleet.member_name(i)))
        .and_then(|m| m["applied_revision"].as_u64())
        .ok_or_else(|| format!("no applied revision in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_cluster_key_is_refused_and_rejoins_with_the_right_one(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::from_topology(&worked_example::topology("300ms", false))
        .tls()
        .cluster_key()
        .managers(3)
        .start()
        .await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let odd = (leader + 1) % 3;
    let name = fleet.member_name(odd).to_owned();
    // `odd` restarts with another key.
    std::fs::write(
        fleet.cluster_key_file(&name),
        "another-cluster-key-fedcba9876543210\n",
    )?;
    fleet.members()[odd].proc.spawn()?;
    // The majority goes on writing without it: the topology with and without subdomain-2.
    let dir = fleet.certs_dir().join("..");
    let mut revision = 0;
    for (i, with_s2) in [true, false, true].into_iter().enumerate() {
        let path = dir.join(format!("apply-{i}.yaml"));
        std::fs::write(&path, worked_example::topology("300ms", with_s2))?;
        let out = fleet.cli_as(
            Some(OPERATOR),
            fleet.member_addr(leader),
            &[
                "topology",
                "apply",
                &path.display().to_string(),
                "--yes",
                "--json",
            ],
        )?;
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        revision = v["revision"].as_u64().expect("a revision");
    }
    // Its RPCs and the group's to it are refused for the key, named by id only.
    wait_until("a refusal for the cluster key", SETTLE, || async {
        let logs = fleet.logs_all();
        if logs
            .lines()
            .any(|l| l.contains("member request refused: cluster key"))
        {
            Ok(())
        } else {
            Err(fleet.logs())
        }
    })
    .await?;
    let logs = fleet.logs_all();
    assert!(
        !logs.contains(CLUSTER_KEY) && !logs.contains("another-cluster-key"),
        "no key is logged"
    );
    let seen = applied_revision(&fleet, odd).unwrap_or(0);
    assert!(
        seen < revision,
        "{name} with another key applied revision {seen} of {revision}"
    );
    // With the group's key it catches up.
    std::fs::write(fleet.cluster_key_file(&name), format!("{CLUSTER_KEY}\n"))?;
    fleet.members()[odd].proc.spawn()?;
    wait_until("the member to catch up", SETTLE, || async {
        match applied_revision(&fleet, odd) {
            Ok(r) if r >= revision => Ok(()),
            Ok(r) => Err(format!("at {r} of {revision}")),
            Err(e) => Err(e),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_authkey_rotates_the_cluster_key_under_a_steady_write_load_and_the_old_key_is_refused(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    const SPARE: &str = "event-manager";
    let mut fleet = Fleet::from_topology(&worked_example::topology("300ms", false))
        .cluster_key()
        .managers(3)
        .agent("fm")
        .package("fm", SPARE)
        .start()
        .await?;
    wait_until("fm's package in the registry", SETTLE, || async {
        let out = fleet
            .operator(&["registry", "export", "--json"])
            .map_err(|e| e.to_string())?;
        if out.contains(SPARE) {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await?;
    let members: Vec<_> = (0..3).map(|i| fleet.member_addr(i)).collect();
    let load = tests::load::WriteLoad::start(members, "fm", SPARE);
    load.wait_acknowledged(20, SETTLE).await?;

    let new_key = "rotated-cluster-key-0123456789abcdef";
    let key_path = fleet.cluster_key_file("new-for-rotation");
    std::fs::write(&key_path, format!("{new_key}\n"))?;
    let out = fleet.operator(&[
        "ha",
        "authkey",
        "--new-key",
        &key_path.display().to_string(),
        "--json",
    ])?;
    let answer: serde_json::Value = serde_json::from_str(&out)?;
    let id = answer["key_id"].as_str().expect("a key id").to_owned();
    assert!(!out.contains(new_key), "the key is never printed: {out}");
    let during = load.acknowledged();
    load.wait_acknowledged(during + 20, SETTLE).await?;
    let outcome = load.finish().await;

    // No member refused a peer at any point, and every write went on.
    let logs = fleet.logs_all();
    assert!(
        !logs.contains("member request refused"),
        "a member refused a peer during the rotation:\n{logs}"
    );
    assert!(
        !logs.contains(new_key) && !logs.contains(CLUSTER_KEY),
        "no key is logged"
    );
    assert!(outcome.acknowledged > during, "{outcome:?}");
    // Every member signs with and accepts only the new key, and keeps it on disk.
    for m in answer["members"].as_array().expect("members") {
        assert_eq!(m["signing_id"], id.as_str(), "{m}");
        assert_eq!(m["accepted_ids"], serde_json::json!([id]), "{m}");
    }
    for i in 0..3 {
        let name = fleet.member_name(i).to_owned();
        assert_eq!(
            std::fs::read_to_string(fleet.cluster_key_file(&name))?,
            format!("{new_key}\n"),
            "{name}'s key file holds the new key only"
        );
    }

    // A member that comes back with the old key is refused everywhere.
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let odd = (leader + 1) % 3;
    let name = fleet.member_name(odd).to_owned();
    std::fs::write(fleet.cluster_key_file(&name), format!("{CLUSTER_KEY}\n"))?;
    fleet.members()[odd].proc.spawn()?;
    wait_until("the old key refused", SETTLE, || async {
        if fleet
            .logs_all()
            .lines()
            .any(|l| l.contains("member request refused: cluster key"))
        {
            Ok(())
        } else {
            Err(fleet.logs())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_commands_make_a_ca_and_certificates_with_private_keys() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    let d = dir.display().to_string();
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin_path("registry-manager")?)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    };
    // issue before init: says how to make the CA.
    let out = run(&["certs", "issue", "--dir", &d, "m1"])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certs init --dir"),
        "{}",
        stderr(&out)
    );
    let out = run(&["certs", "init", "--dir", &d, "--json"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let ca_key = std::fs::read(dir.join("ca.key"))?;
    // init again: refused, nothing overwritten.
    let out = run(&["certs", "init", "--dir", &d])?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing to overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(dir.join("ca.key"))?, ca_key);
    let out = run(&[
        "certs",
        "issue",
        "--dir",
        &d,
        "m1",
        "--ip",
        "127.0.0.1",
        "--ip",
        "10.0.0.1",
        "--dns",
        "m1.example.org",
    ])?;
    assert!(out.status.success(), "{}", stderr(&out));
    for key in ["ca.key", "m1.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} is its owner's only");
    }
    let m1 = proto::tls::TlsFiles {
        cert: dir.join("m1.crt"),
        key: dir.join("m1.key"),
        ca: dir.join("ca.crt"),
    }
    .load()?;
    assert_eq!(m1.name(), "m1");
    // A bad name: refused with the rule.
    let out = run(&["certs", "issue", "--dir", &d, "bad name"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad name"), "{}", stderr(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_plaintext_beyond_loopback_and_a_member_without_a_cluster_key(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let port = free_port()?;
    // The refusals come before any socket is bound.
    let out = Command::new(bin_path("registry-manager")?)
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--http-listen",
            "none",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("0.0.0.0:{port}"))
            && err.contains("tls:")
            && err.contains("--insecure"),
        "{err}"
    );
    // A TLS member beyond loopback without group.key_file.
    let pki = tmp.path().join("pki");
    let d = pki.display().to_string();
    for args in [
        vec!["certs", "init", "--dir", &d],
        vec!["certs", "issue", "--dir", &d, "m1"],
    ] {
        let out = Command::new(bin_path("registry-manager")?)
            .args(&args)
            .output()?;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let config = tmp.path().join("m1.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"0.0.0.0:{port}\"\nhttp_listen: none\ndata_dir: \"{}\"\ntls: {{ cert: \"{d}/m1.crt\", key: \"{d}/m1.key\", ca: \"{d}/ca.crt\" }}\ngroup:\n  name: m1\n  members: {{ m1: \"10.0.0.1:7400\", m2: \"10.0.0.2:7400\", m3: \"10.0.0.3:7400\" }}\n",
            tmp.path().join("m1-data").display()
        ),
    )?;
    let out = Command::new(bin_path("registry-manager")?)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("group.key_file"), "{err}");
    Ok(())
}
