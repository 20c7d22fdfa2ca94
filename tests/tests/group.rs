//! The registry manager group on real processes: three managers, agents of the worked example,
//! and the faults a group must survive — the leader SIGKILLed (in a loop), SIGSTOPped, a member
//! cut off with a minority — plus the `ha` commands. Safety is asserted strictly (no
//! acknowledged write lost, no session lapsed, no forwarded connection failed); liveness with
//! generous deadlines. The tests of this file run one at a time (a lock), so a loaded 2-core
//! machine does not cause false elections.

use std::time::Duration;

use proto::admin_client::AdminClient;
use tests::load::{ForwardLoad, WriteLoad};
use tests::worked_example::{self, CCM};
use tests::{wait_until, Fleet};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

const SETTLE: Duration = Duration::from_secs(20);
/// The type toggled by the write loads (nobody routes to it).
const SPARE: &str = "event-manager";

/// One group test at a time in this binary.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn group(n: usize) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet::from_topology(&worked_example::topology("200ms", false))
        .managers(n)
        .agent("fm")
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .package("fm", SPARE)
        .forward(CCM)
        .start()
        .await?;
    // Every agent has opened its session with its packages.
    let addr = fleet.members()[0].addr;
    wait_until("every agent's session", SETTLE, || async move {
        let mut c = admin(addr).await.map_err(|e| e.to_string())?;
        let e = c
            .export_registry(proto::ExportRegistryRequest { stale: false })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let v: serde_json::Value =
            serde_json::from_str(&e.snapshot_json).map_err(|e| e.to_string())?;
        let ok = v["hosts"]["fm"]["packages"][SPARE].is_object()
            && v["hosts"]["agent-4"].is_object()
            && v["hosts"]["agent-1"]["packages"][CCM].is_object()
            && v["hosts"]["agent-3"]["packages"][CCM].is_object();
        if ok {
            Ok(())
        } else {
            Err(format!("not yet: {v}"))
        }
    })
    .await?;
    Ok(fleet)
}

async fn admin(addr: std::net::SocketAddr) -> anyhow::Result<AdminClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(8))
        .connect_lazy();
    Ok(AdminClient::new(ch))
}

/// The spare package's status in a member's registry (current read).
async fn spare_status(fleet: &mut Fleet, i: usize) -> anyhow::Result<String> {
    let mut c = admin(fleet.members()[i].addr).await?;
    let e = c
        .export_registry(proto::ExportRegistryRequest { stale: false })
        .await?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&e.snapshot_json)?;
    Ok(v["hosts"]["fm"]["packages"][SPARE]["status"]
        .as_str()
        .unwrap_or("none")
        .to_owned())
}

/// Number of session lapses the members logged.
fn lapses(fleet: &Fleet) -> usize {
    fleet.logs_all().matches("session lapsed").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_forms_and_ha_status_names_every_member() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let status = fleet.ha_status(0)?;
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    let leader_name = fleet.members()[leader].name.clone();
    assert_eq!(status["leader"], leader_name.as_str(), "{status}");
    for m in members {
        let role = m["role"].as_str().unwrap();
        assert!(role == "leader" || role == "follower", "{status}");
        assert!(m["voter"].as_bool().unwrap());
        assert_eq!(
            m["applied_revision"].as_u64(),
            status["revision"]
                .as_u64()
                .map(|r| r.min(m["applied_revision"].as_u64().unwrap()))
        );
    }
    let leader_entry = members.iter().find(|m| m["role"] == "leader").unwrap();
    let state = leader_entry["state"].as_str().unwrap();
    assert!(
        state == "Primary Active" || state == "Secondary Active",
        "{status}"
    );
    // Agents keep routing through the group as through one manager.
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_again_and_again_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    let forward = *fleet.agent("agent-4")?.forwards.get(CCM).unwrap();
    let forwards = ForwardLoad::start(forward);
    let lapses_before = lapses(&fleet);
    let kills = std::env::var("FLEET_GROUP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize);
    let mut total_writes = 0;
    for round in 0..kills {
        let leader = fleet.wait_leader(None, SETTLE).await?;
        let addrs: Vec<_> = fleet.members().iter().map(|m| m.addr).collect();
        let writes = WriteLoad::start(addrs, "fm", SPARE);
        // Let some writes be acknowledged, then kill the leader in the middle of them.
        writes.wait_acknowledged(5, SETTLE).await?;
        fleet.members()[leader].proc.kill();
        let next = fleet.wait_leader(Some(leader), SETTLE).await?;
        assert_ne!(next, leader, "round {round}");
        // Writes go on through the survivors.
        let before = writes.acknowledged();
        writes.wait_acknowledged(before + 3, SETTLE).await?;
        let out = writes.finish().await;
        total_writes += out.acknowledged;
        let (revision, expected) = out.last.expect("writes were acknowledged");
        // Every acknowledged write is there: the last one's effect, at or after its revision.
        let status = fleet.ha_status(next)?;
        assert!(
            status["revision"].as_u64().unwrap() >= revision,
            "round {round}: revision {revision} acknowledged, group at {status}"
        );
        if !out.uncertain_after {
            assert_eq!(
                spare_status(&mut fleet, next).await?,
                expected,
                "round {round}"
            );
        }
        fleet.restart_member(leader).await?;
    }
    let (ok, failed) = forwards.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} forwarded connections failed",
        ok + failed
    );
    assert_eq!(
        lapses(&fleet),
        lapses_before,
        "no agent session lapsed through {kills} leader kills ({total_writes} writes)\n{}",
        fleet.logs()
    );
    // Every member converges on the same registry.
    let last = fleet.wait_leader(None, SETTLE).await?;
    let want = fleet.ha_status(last)?["revision"].as_u64().unwrap();
    for i in 0..3 {
        wait_until("every member to apply the last revision", SETTLE, || {
            let s = fleet.ha_status(i);
            async move {
                let s = s.map_err(|e| e.to_string())?;
                let me = s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["last_contact_ms"].is_number() || m["role"] == "leader")
                    .is_some();
                if me && s["revision"].as_u64().unwrap_or(0) >= want {
                    Ok(())
                } else {
                    Err(format!("{s}"))
                }
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_replaced_and_rejoins_as_follower() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    fleet.members()[leader].proc.pause();
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    let next = fleet.wait_leader_among(&others, SETTLE).await;
    fleet.members()[leader].proc.resume();
    let next = next?;
    fleet.operator(&["package", "drain", "--host", "fm", "--type", SPARE])?;
    assert_eq!(spare_status(&mut fleet, next).await?, "draining");
    // The old leader follows the new one and serves the change.
    let old_name = fleet.members()[leader].name.clone();
    wait_until("the old leader to follow", SETTLE, || {
        let s = fleet.ha_status(leader);
        let old_name = old_name.clone();
        async move {
            let s = s.map_err(|e| e.to_string())?;
            let me = s["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == old_name.as_str())
                .cloned()
                .unwrap_or_default();
            if me["role"] == "follower" {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        }
    })
    .await?;
    assert_eq!(spare_status(&mut fleet, leader).await?, "draining");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_refuses_writes_naming_whom_it_cannot_reach_and_heals(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let cut = (leader + 1) % 3;
    let cut_addr = fleet.members()[cut].addr;
    let lapses_before = lapses(&fleet);
    let forwards = ForwardLoad::start(*fleet.agent("agent-4")?.forwards.get(CCM).unwrap());
    fleet.cut_member(cut);
    // The majority elects or keeps a leader and takes writes.
    let majority = fleet
        .wait_leader_among(&[(cut + 1) % 3, (cut + 2) % 3], SETTLE)
        .await?;
    let majority_addr = fleet.members()[majority].addr;
    let out = fleet.member_cli(
        majority_addr,
        &["package", "drain", "--host", "fm", "--type", SPARE],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cut-off member refuses, naming the members it cannot reach.
    let out = fleet.member_cli(
        cut_addr,
        &["package", "withdraw", "--host", "fm", "--type", SPARE],
    )?;
    assert!(
        !out.status.success(),
        "a minority member must refuse writes"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    // Its stale read still answers from its own copy.
    let out = fleet.member_cli(cut_addr, &["registry", "export", "--stale", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its agents moved to the majority: after a few session TTLs, no session lapsed and no
    // forwarded connection failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lapses(&fleet), lapses_before, "{}", fleet.logs());
    let (ok, failed) = forwards.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} forwarded connections failed",
        ok + failed
    );
    fleet.heal_member(cut);
    fleet.wait_member(cut).await?;
    assert_eq!(
        spare_status(&mut fleet, cut).await?,
        "draining",
        "it caught up"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_member_then_failback_to_the_preferred_one() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = group(3).await?;
    fleet.wait_leader(None, SETTLE).await?;
    let out = fleet.operator(&["ha", "failover", "--to", "m3", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["leader"], "m3", "{out}");
    assert_eq!(fleet.wait_leader(None, SETTLE).await?, 2);
    let status = fleet.ha_status(0)?;
    let m3 = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m3")
        .unwrap()
        .clone();
    assert_eq!(
        m3["state"], "Secondary Active",
        "a leader that is not the preferred member: {status}"
    );
    let out = fleet.operator(&["ha", "failback", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["leader"], "m1", "{out}");
    assert_eq!(fleet.wait_leader(None, SETTLE).await?, 0);
    // A move to a non-member is refused with the voters named.
    let out = fleet.manager_cli(&["ha", "failover", "--to", "m9"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("voters"));
    // Removing a voter of three would leave two: refused with the reason.
    let out = fleet.manager_cli(&["ha", "remove", "m3"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("two voters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_catches_up_after_restart() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let follower = (leader + 1) % 3;
    fleet.members()[follower].proc.kill();
    for action in ["drain", "withdraw", "restore", "drain"] {
        fleet.operator(&["package", action, "--host", "fm", "--type", SPARE])?;
    }
    fleet.restart_member(follower).await?;
    assert_eq!(spare_status(&mut fleet, follower).await?, "draining");
    Ok(())
}

/// A member whose store was damaged while it was down (one raft log record no longer matches
/// its checksum) says so when started again, sets the damaged files aside and is rebuilt from the
/// others; once caught up it counts like any other member: with the leader then killed, it and
/// the third member elect a new leader, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_damaged_store_is_rebuilt_from_the_others() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let damaged = (leader + 1) % 3;
    for action in ["drain", "withdraw", "restore"] {
        fleet.operator(&["package", action, "--host", "fm", "--type", SPARE])?;
    }
    fleet.members()[damaged].proc.kill();
    let dir = fleet.member_data_dir(damaged);
    {
        let db = sled::open(&dir)?;
        let log = db.open_tree("raft_log")?;
        let (k, v) = log
            .last()?
            .ok_or_else(|| anyhow::anyhow!("member {damaged} has no raft log"))?;
        let mut v = v.to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        log.insert(k, v)?;
        db.flush()?;
    }
    // Written while it is down: it learns this from the others only.
    fleet.operator(&["package", "withdraw", "--host", "fm", "--type", SPARE])?;
    fleet.restart_member(damaged).await?;
    let caught_up = rebuilt_log(&mut fleet, damaged).await?;
    assert!(
        caught_up.contains("store is damaged and is not served")
            && caught_up.contains("raft_log")
            && caught_up.contains("does not match its content"),
        "it says what was damaged:\n{caught_up}"
    );
    let kept = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
        .count();
    assert_eq!(kept, 1, "the damaged files are kept aside");
    counts_like_any_other(&mut fleet, damaged, leader).await
}

/// Waits until member `rebuilt` says it has caught up; its log.
async fn rebuilt_log(fleet: &mut Fleet, rebuilt: usize) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let logs = fleet.members()[rebuilt].proc.log_tail(400);
        if logs.contains("rebuilt from the group: this member has caught up") {
            return Ok(logs);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "member {rebuilt} was not rebuilt:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rebuilt member is a follower that serves what the group holds, and votes: with the
/// `leader` killed, it and the third member elect a new one and take writes.
async fn counts_like_any_other(
    fleet: &mut Fleet,
    rebuilt: usize,
    leader: usize,
) -> anyhow::Result<()> {
    let name = fleet.member_name(rebuilt).to_owned();
    let status = fleet.ha_status(rebuilt)?;
    let me = status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["role"], "follower", "{status}");
    assert_ne!(me["state"], "HA Initializing", "{status}");
    assert_eq!(spare_status(fleet, rebuilt).await?, "withdrawn");

    fleet.members()[leader].proc.kill();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    fleet.wait_leader_among(&rest, SETTLE).await?;
    fleet.operator(&["package", "drain", "--host", "fm", "--type", SPARE])?;
    for i in rest {
        assert_eq!(spare_status(fleet, i).await?, "draining");
    }
    Ok(())
}

/// A member whose data directory was emptied while it was down (a replaced disk) finds its
/// group formed when started again, is rebuilt from the others instead of forming a group of
/// its own, and votes only once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_an_emptied_data_directory_is_rebuilt_from_the_others() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    let leader = fleet.wait_leader(None, SETTLE).await?;
    let emptied = (leader + 2) % 3;
    fleet.operator(&["package", "drain", "--host", "fm", "--type", SPARE])?;
    fleet.members()[emptied].proc.kill();
    std::fs::remove_dir_all(fleet.member_data_dir(emptied))?;
    fleet.operator(&["package", "withdraw", "--host", "fm", "--type", SPARE])?;
    fleet.restart_member(emptied).await?;
    let logs = rebuilt_log(&mut fleet, emptied).await?;
    assert!(
        logs.contains("store is empty and its group is already formed"),
        "it says why it is rebuilt:\n{logs}"
    );
    counts_like_any_other(&mut fleet, emptied, leader).await
}

/// A group restored from a backup starts from the backup's state, which is not in any raft
/// log: a member rebuilt afterwards (its data directory emptied) must still get it. It does:
/// the members fold the restored state into a snapshot, and the rebuilt member answers what the
/// others answer (the topology included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rebuilt_after_a_group_restore_gets_the_restored_state() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    fleet.wait_leader(None, SETTLE).await?;
    fleet.operator(&["package", "withdraw", "--host", "fm", "--type", SPARE])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("registry.backup.json");
    let file_arg = file.display().to_string();
    fleet.operator(&["backup", &file_arg])?;
    for i in 0..3 {
        fleet.members()[i].proc.kill();
    }
    for i in 0..3 {
        let data = fleet.member_data_dir(i);
        std::fs::remove_dir_all(&data)?;
        let out = tests::fleet::restore_cli(&file_arg, &data, &[])?;
        anyhow::ensure!(
            out.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..3 {
        fleet.members()[i].proc.spawn()?;
    }
    let leader = fleet.wait_leader(None, SETTLE).await?;
    for i in 0..3 {
        fleet.wait_member(i).await?;
    }
    let emptied = (leader + 1) % 3;
    // Wait until the members have folded the restored state into a snapshot.
    let deadline = std::time::Instant::now() + SETTLE;
    while !(0..3).all(|i| {
        fleet.members()[i]
            .proc
            .log_tail(400)
            .contains("the base state is in a snapshot")
    }) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the restored state was not folded into a snapshot:\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.members()[emptied].proc.kill();
    std::fs::remove_dir_all(fleet.member_data_dir(emptied))?;
    fleet.restart_member(emptied).await?;
    rebuilt_log(&mut fleet, emptied).await?;
    let stale = |i: usize| {
        fleet
            .member_cli(
                fleet.member_addr(i),
                &["registry", "export", "--stale", "--json"],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let rebuilt = stale(emptied)?;
    let hosts = |text: &str| -> anyhow::Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        Ok(v["hosts"]["fm"]["packages"][SPARE]["status"].clone())
    };
    assert_eq!(hosts(&rebuilt)?, "withdrawn", "{rebuilt}");
    let topology = |i: usize| -> anyhow::Result<String> {
        let out = fleet.member_cli(fleet.member_addr(i), &["topology", "show", "--stale"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let shown = topology(emptied)?;
    assert!(shown.contains("agent-4"), "the restored topology: {shown}");
    assert_eq!(shown, topology(leader)?);
    Ok(())
}

/// One operation of the linearizability history: the spare package's status as a register.
fn status_of_action(action: proto::PackageAction) -> &'static str {
    match action {
        proto::PackageAction::Drain => "draining",
        proto::PackageAction::Withdraw => "withdrawn",
        _ => "running",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_current_reads_through_leader_kills_are_linearizable(
) -> anyhow::Result<()> {
    use consistency_model::{
        ConsistencyTester, LinearizabilityTester, Register, RegisterOp, RegisterRet,
    };
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    // Start from a known value.
    fleet.operator(&["package", "restore", "--host", "fm", "--type", SPARE])?;
    let addrs: Vec<_> = fleet.members().iter().map(|m| m.addr).collect();
    type Tester = LinearizabilityTester<u64, Register<&'static str>>;
    let tester: std::sync::Arc<std::sync::Mutex<Tester>> = std::sync::Arc::new(
        std::sync::Mutex::new(LinearizabilityTester::new(Register::new("running"))),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Two writers and two readers; a client whose operation has an unknown outcome leaves it
    // pending for ever (it may or may not have happened) and goes on under a new id. The
    // clients pace themselves so that their operations span both leader kills, and stop at
    // OPS each: the checker's search grows exponentially with the history (pending writes
    // above all), so the history is kept small.
    const OPS: usize = 25;
    for client in 0..4u64 {
        let (tester, stop, addrs) = (tester.clone(), stop.clone(), addrs.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = client * 1_000_000;
            let mut k = 0usize;
            let mut ops = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && ops < OPS {
                if ops > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                k += 1;
                let addr = addrs[(k + client as usize) % addrs.len()];
                let Ok(mut c) = admin(addr).await else {
                    continue;
                };
                if client < 2 {
                    let action = [
                        proto::PackageAction::Drain,
                        proto::PackageAction::Withdraw,
                        proto::PackageAction::Restore,
                    ][(k + client as usize) % 3];
                    let value = status_of_action(action);
                    tester
                        .lock()
                        .unwrap()
                        .on_invoke(id, RegisterOp::Write(value))
                        .map_err(anyhow::Error::msg)?;
                    let r = c
                        .package_action(proto::PackageActionRequest {
                            host: "fm".into(),
                            r#type: SPARE.into(),
                            action: action as i32,
                        })
                        .await;
                    match r {
                        Ok(_) => {
                            tester
                                .lock()
                                .unwrap()
                                .on_return(id, RegisterRet::WriteOk)
                                .map_err(anyhow::Error::msg)?;
                        }
                        Err(_) => id += 1,
                    }
                } else {
                    tester
                        .lock()
                        .unwrap()
                        .on_invoke(id, RegisterOp::Read)
                        .map_err(anyhow::Error::msg)?;
                    let r = c
                        .export_registry(proto::ExportRegistryRequest { stale: false })
                        .await;
                    let value = r.ok().and_then(|e| {
                        let v: serde_json::Value =
                            serde_json::from_str(&e.into_inner().snapshot_json).ok()?;
                        let s = v["hosts"]["fm"]["packages"][SPARE]["status"].as_str()?;
                        ["draining", "withdrawn", "running"]
                            .into_iter()
                            .find(|x| *x == s)
                    });
                    match value {
                        Some(v) => {
                            tester
                                .lock()
                                .unwrap()
                                .on_return(id, RegisterRet::ReadOk(v))
                                .map_err(anyhow::Error::msg)?;
                        }
                        None => id += 1,
                    }
                }
                ops += 1;
            }
            anyhow::Ok(())
        }));
    }
    // Two leader kills while the clients run.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = fleet.wait_leader(None, SETTLE).await?;
        fleet.members()[leader].proc.kill();
        fleet.wait_leader(Some(leader), SETTLE).await?;
        fleet.restart_member(leader).await?;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let tester = std::sync::Arc::try_unwrap(tester)
        .map_err(|_| anyhow::anyhow!("a client still holds the history"))?
        .into_inner()
        .unwrap();
    let len = tester.len();
    assert!(
        len >= 40,
        "too short a history to mean anything: {len} operations"
    );
    // Checked off the runtime, with a deadline: a checker that does not finish fails the test
    // instead of holding every other group test behind it.
    let check = tokio::task::spawn_blocking(move || tester.is_consistent());
    let consistent = tokio::time::timeout(Duration::from_secs(120), check)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the linearizability check of {len} operations did not finish in 120 s")
        })??;
    assert!(
        consistent,
        "the history of {len} operations is not linearizable"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_is_promoted_and_removed() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = group(3).await?;
    fleet.wait_leader(None, SETTLE).await?;
    for action in ["drain", "withdraw"] {
        fleet.operator(&["package", action, "--host", "fm", "--type", SPARE])?;
    }
    let m4 = fleet.start_learner("m4").await?;
    let m4_addr = fleet.member_addr(m4).to_string();
    let out = fleet.operator(&["ha", "add-learner", "m4", &m4_addr, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let entry = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m4")
        .cloned()
        .expect("m4 listed");
    assert_eq!(entry["voter"], false, "{v}");
    assert_eq!(entry["role"], "learner", "{v}");
    // The learner serves the registry it caught up with.
    fleet.wait_member(m4).await?;
    assert_eq!(spare_status(&mut fleet, m4).await?, "withdrawn");
    let out = fleet.operator(&["ha", "promote", "m4", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let voters = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{v}");
    let out = fleet.operator(&["ha", "remove", "m4", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != "m4"),
        "{v}"
    );
    Ok(())
}

/// Agents that know the group only by a DNS SRV name (`managers: ["dns+srv:…"]`, asking a real
/// DNS server on loopback through `dns_servers`) find the member the record names, and when
/// that member dies and the record is changed to another member, they resolve it again and move
/// there; the session stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_bootstrap_from_dns_srv_and_follow_a_changed_record() -> anyhow::Result<()> {
    use tests::dns::{DnsServer, SrvRecord};
    let _serial = SERIAL.lock().await;
    const NAME: &str = "_registry._tcp.fleet.test";
    let dns = DnsServer::start()?;
    // The name does not exist yet: the agent starts, finds no manager and keeps asking.
    let mut fleet = Fleet::from_topology(&worked_example::topology("200ms", false))
        .managers(3)
        .srv_bootstrap(NAME, dns.addr())
        .agent("agent-4")
        .start()
        .await?;
    let srv_to = |port: u16| {
        vec![SrvRecord {
            priority: 10,
            weight: 10,
            port,
            target: "localhost".into(),
        }]
    };
    let (first, second) = (0, 1);
    dns.set_srv(NAME, srv_to(fleet.member_addr(first).port()));
    let connected_to = |fleet: &Fleet, port: u16| -> Result<(), String> {
        let needle = format!("localhost:{port}");
        let seen = fleet
            .agent_logs()
            .lines()
            .any(|l| l.contains("connected to registry manager") && l.contains(&needle));
        seen.then_some(())
            .ok_or_else(|| format!("not connected to {needle} yet"))
    };
    let p0 = fleet.member_addr(first).port();
    wait_until(
        "agent-4 connects to the member the SRV record names",
        SETTLE,
        || {
            let r = connected_to(&fleet, p0);
            async move { r }
        },
    )
    .await?;
    let live = |fleet: &Fleet, member: usize| -> Result<(), String> {
        let out = fleet
            .member_cli(fleet.member_addr(member), &["registry", "hosts", "--json"])
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let host = v["hosts"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["host"] == "agent-4"))
            .cloned()
            .unwrap_or_default();
        if host["session_live"] == true {
            Ok(())
        } else {
            Err(format!("agent-4 is {host}"))
        }
    };

    // The record moves to member 1 and member 0 dies: the agent resolves again and moves.
    let p1 = fleet.member_addr(second).port();
    dns.set_srv(NAME, srv_to(p1));
    fleet.members()[first].proc.kill();
    wait_until(
        "agent-4 moves to the member the changed record names",
        SETTLE,
        || {
            let r = connected_to(&fleet, p1);
            async move { r }
        },
    )
    .await?;
    wait_until("agent-4's session is live through member 1", SETTLE, || {
        let r = live(&fleet, second);
        async move { r }
    })
    .await?;
    Ok(())
}
