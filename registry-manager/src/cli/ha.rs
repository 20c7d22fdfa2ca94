//! `registry-manager ha …`: the group's status, leadership moves and membership changes,
//! through any member (`--manager`); changes are carried out by the leader.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::live::connect;
use super::{ManagerAddr, Output};

/// The `ha` subcommands.
#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Every member of the group: role, state, term, applied revision, lag, last contact.
    Status {
        /// Only the asked member's own view (do not ask the other members).
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Move leadership now: to NAME, or to the most up-to-date other voter. Prints the new leader.
    Failover {
        /// The member to move leadership to.
        #[arg(long, value_name = "NAME")]
        to: Option<String>,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Move leadership back to the configured preferred member (group.preferred).
    Failback {
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
    /// Add a non-voting member (a warm spare) that follows the leader's log.
    AddLearner(MemberArgs),
    /// Make a learner a voter (refused when it would leave two voters).
    Promote(NameArgs),
    /// Remove a member (refused when it would leave two voters). A dead member is never removed by itself.
    Remove(NameArgs),
    /// Rotate the cluster key of the whole group without downtime: stage the new key on every member, switch every member to it, then retire the old one (each member's group.key_file is rewritten).
    Authkey {
        /// A file holding the new key (one line, at least 16 bytes); without it, a random key is made. The key is never printed.
        #[arg(long = "new-key", value_name = "FILE")]
        new_key: Option<std::path::PathBuf>,
        #[command(flatten)]
        manager: ManagerAddr,
        #[command(flatten)]
        out: Output,
    },
}

/// A new member: its name and address.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// The member's name (its host name, by convention).
    name: String,
    /// Its gRPC address, HOST:PORT (or http://HOST:PORT), as the other members reach it.
    #[arg(value_name = "ADDR")]
    address: String,
    #[command(flatten)]
    manager: ManagerAddr,
    #[command(flatten)]
    out: Output,
}

/// A member by name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The member's name.
    name: String,
    #[command(flatten)]
    manager: ManagerAddr,
    #[command(flatten)]
    out: Output,
}

fn refused(what: &str, addr: &ManagerAddr, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} refused by the manager at {addr} ({:?}): {}",
        s.code(),
        s.message()
    )
}

/// Runs an `ha` command.
pub async fn run(cmd: HaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HaCommand::Status {
            local,
            manager,
            out,
        } => {
            let mut client = connect(&manager).await?;
            let resp = client
                .ha_status(proto::HaStatusRequest { local_only: local })
                .await
                .map_err(|s| refused("ha status", &manager, s))?
                .into_inner();
            print_status(&resp, out.json);
        }
        HaCommand::Failover { to, manager, out } => {
            failover(&manager, to.unwrap_or_default(), false, out.json).await?
        }
        HaCommand::Failback { manager, out } => {
            failover(&manager, String::new(), true, out.json).await?
        }
        HaCommand::AddLearner(a) => {
            let mut client = connect(&a.manager).await?;
            let resp = client
                .ha_add_learner(proto::HaMemberRequest {
                    name: a.name,
                    address: super::live::host_port(&a.address)?.to_string(),
                })
                .await
                .map_err(|s| refused("ha add-learner", &a.manager, s))?
                .into_inner();
            print_status(&resp, a.out.json);
        }
        HaCommand::Promote(a) => {
            let mut client = connect(&a.manager).await?;
            let resp = client
                .ha_promote(proto::HaMemberRequest {
                    name: a.name,
                    address: String::new(),
                })
                .await
                .map_err(|s| refused("ha promote", &a.manager, s))?
                .into_inner();
            print_status(&resp, a.out.json);
        }
        HaCommand::Authkey {
            new_key,
            manager,
            out,
        } => authkey(&manager, new_key.as_deref(), out.json).await?,
        HaCommand::Remove(a) => {
            let mut client = connect(&a.manager).await?;
            let resp = client
                .ha_remove(proto::HaMemberRequest {
                    name: a.name,
                    address: String::new(),
                })
                .await
                .map_err(|s| refused("ha remove", &a.manager, s))?
                .into_inner();
            print_status(&resp, a.out.json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn failover(
    addr: &ManagerAddr,
    to: String,
    failback: bool,
    json: bool,
) -> anyhow::Result<()> {
    let what = if failback {
        "ha failback"
    } else {
        "ha failover"
    };
    let mut client = connect(addr).await?;
    let resp = client
        .ha_failover(proto::HaFailoverRequest { to, failback })
        .await
        .map_err(|s| refused(what, addr, s))?
        .into_inner();
    if json {
        println!("{}", json!({ "leader": resp.leader, "term": resp.term }));
    } else {
        println!("leader: {} (term {})", resp.leader, resp.term);
    }
    Ok(())
}

/// `ha authkey`: each step on every member before the next, so that no member ever refuses a
/// peer holding the current or the previous key. Refused before any change when a member is
/// unreachable (it would miss the rotation and be refused afterwards); a run cut short is
/// finished by running it again with the same key.
async fn authkey(
    manager: &ManagerAddr,
    new_key: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let key = match new_key {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the new key from {}", path.display()))?
            .trim()
            .to_owned(),
        None => {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for a new key"))?;
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    registry_manager::cluster_key::ClusterKeys::parse(&key)
        .map_err(|e| anyhow::anyhow!("the new key: {e}"))?;
    let new_id = registry_manager::cluster_key::key_id(&key);
    let status = connect(manager)
        .await?
        .ha_status(proto::HaStatusRequest { local_only: false })
        .await
        .map_err(|s| refused("ha authkey", manager, s))?
        .into_inner();
    if let Some(m) = status.members.iter().find(|m| m.role == "unreachable") {
        anyhow::bail!(
            "member {} ({}) is unreachable; a rotation needs every member (one that missed it would be refused afterwards). Bring it back, or remove it with `ha remove`, then run again",
            m.name,
            m.address
        );
    }
    let steps = [
        ("stage", key.as_str(), ""),
        ("switch", "", new_id.as_str()),
        ("retire", "", ""),
    ];
    let mut last = Vec::new();
    for (step, k, id) in steps {
        last.clear();
        for m in &status.members {
            let at = manager.at(&m.address);
            let answer = connect(&at)
                .await?
                .ha_cluster_key(proto::HaClusterKeyRequest {
                    step: step.to_owned(),
                    key: k.to_owned(),
                    key_id: id.to_owned(),
                })
                .await
                .map_err(|s| {
                    anyhow::anyhow!(
                        "ha authkey: {step} refused by member {} at {} ({:?}): {}. No member refuses a peer yet; run `ha authkey` again with the same --new-key to finish",
                        m.name,
                        m.address,
                        s.code(),
                        s.message()
                    )
                })?
                .into_inner();
            if !json {
                eprintln!(
                    "{step}: {} signs with {}, accepts {}",
                    answer.member,
                    answer.signing_id,
                    answer.accepted_ids.join(", ")
                );
            }
            last.push(answer);
        }
    }
    if json {
        println!(
            "{}",
            json!({
                "key_id": new_id,
                "members": last.iter().map(|a| json!({
                    "name": a.member, "signing_id": a.signing_id, "accepted_ids": a.accepted_ids,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "cluster key rotated to {new_id} on {} member(s); the old key is refused everywhere",
            last.len()
        );
    }
    Ok(())
}

/// The `ha status` answer as JSON.
pub fn status_json(resp: &proto::HaStatusResponse) -> serde_json::Value {
    json!({
        "leader": resp.leader,
        "term": resp.term,
        "revision": resp.revision,
        "members": resp.members.iter().map(|m| json!({
            "name": m.name,
            "address": m.address,
            "voter": m.voter,
            "role": m.role,
            "state": m.state,
            "term": m.term,
            "applied_revision": m.applied_revision,
            "lag": m.lag,
            "last_contact_ms": m.last_contact_ms,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(resp: &proto::HaStatusResponse, json: bool) {
    if json {
        println!("{}", status_json(resp));
        return;
    }
    println!(
        "leader {} term {} revision {} (answered by {})",
        resp.leader.as_deref().unwrap_or("none"),
        resp.term,
        resp.revision,
        resp.answered_by
    );
    for m in &resp.members {
        let contact = m
            .last_contact_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms}ms"));
        println!(
            "{:<12} {:<21} {:<6} {:<11} {:<32} term {:<4} revision {:<8} lag {:<6} contact {}",
            m.name,
            m.address,
            if m.voter { "voter" } else { "-" },
            m.role,
            m.state,
            m.term,
            m.applied_revision,
            m.lag,
            contact
        );
    }
}
