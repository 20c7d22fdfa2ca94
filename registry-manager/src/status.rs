//! The status page's model (`GET /api/status`, drawn by the page at `/`): a pure function of
//! this member's registry state, the group's status and the manager type asked for. Routes,
//! coverage and "who would move" come from the `topology` crate (the routing rule the agents
//! run), never from a rule of this module's own. Also pure: the blast radius of an operator
//! action (the page's confirmation), computed by applying the action to a copy of the state
//! with the state machine's own `check` and `apply`.
//!
//! The types here are views for JSON (`Serialize`), built only in this module.

use std::time::Duration;

use serde::Serialize;
use topology::what_if::{loss_moves, moves_between};
use topology::{DomainId, HostName, PackageType, RouteChange, RouteTable, Topology};

use crate::command::{Command, OperatorAction};
use crate::error::RegistryError;
use crate::state::{HostRecord, State};

/// Everything the page shows, at one revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusModel {
    /// The registry revision of this member's copy.
    pub revision: u64,
    /// The registry's history id.
    pub history: String,
    /// The member that answered (the page may be open on any member).
    pub answered_by: String,
    /// Whether this request may use the admin buttons (see `http::authorize_http_admin`).
    pub admin: bool,
    /// Every manager type some host runs, sorted.
    pub types: Vec<String>,
    /// The type routes and coverage are shown for (`None` when no host runs any).
    #[serde(rename = "type")]
    pub package_type: Option<String>,
    /// The domain tree with every host (`None` before a topology is applied).
    pub tree: Option<DomainView>,
    /// Hosts the registry holds that the topology does not name.
    pub unplaced: Vec<HostRow>,
    /// Coverage and loss lists of `package_type`.
    pub coverage: Option<CoverageView>,
    /// The manager group.
    pub group: GroupView,
}

/// One domain and everything under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainView {
    /// The domain's name.
    pub name: String,
    /// Distance from the root (root = 0).
    pub depth: u32,
    /// Hosts placed directly in it, in file order.
    pub hosts: Vec<HostRow>,
    /// Its subdomains, in file order.
    pub subdomains: Vec<DomainView>,
}

/// One host as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRow {
    /// The host.
    pub name: String,
    /// `alive` (a session holds it), `lost` (its session lapsed) or `unseen` (never opened
    /// a session: routing treats it as alive with no packages).
    pub state: &'static str,
    /// Its packages, by type.
    pub packages: Vec<PackageRow>,
    /// The manager of the shown type this host routes to (`None`: none eligible).
    pub routes_to: Option<String>,
    /// The next in line: where it would go if `routes_to` were lost.
    pub next: Option<String>,
}

/// One package on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageRow {
    /// The package type.
    #[serde(rename = "type")]
    pub package_type: String,
    /// `host:port`.
    pub endpoint: String,
    /// The status routing sees (the operator's override if set).
    pub status: &'static str,
    /// The agent's latest report.
    pub reported: &'static str,
    /// `drain` or `withdraw` while an operator override is in force.
    pub operator: Option<&'static str>,
}

/// Route coverage of one type, with who would move on each manager's loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoverageView {
    /// Hosts with no eligible manager.
    pub no_manager: Vec<String>,
    /// `[host, manager]`: hosts with exactly one eligible manager (single points of failure).
    pub single: Vec<(String, String)>,
    /// Every chosen manager, the most loaded first, with the hosts its loss would move.
    pub managers: Vec<LoadView>,
}

/// The hosts one manager carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadView {
    /// The manager's host.
    pub manager: String,
    /// Every host that would move if it were lost, and where to.
    pub moves: Vec<MoveView>,
}

/// One host's route change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoveView {
    /// The host that moves.
    pub host: String,
    /// The manager type.
    #[serde(rename = "type")]
    pub package_type: String,
    /// Its manager before (`None`: none eligible).
    pub from: Option<String>,
    /// Its manager after (`None`: none eligible).
    pub to: Option<String>,
}

/// The group as `ha status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// The leader's name, when one is known.
    pub leader: Option<String>,
    /// The current raft term.
    pub term: u64,
    /// Every member, as it answers for itself.
    pub members: Vec<MemberView>,
}

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Its name.
    pub name: String,
    /// Its gRPC address.
    pub address: String,
    /// Voter or learner.
    pub voter: bool,
    /// `leader`, `follower`, `learner`, `candidate` or `unreachable`.
    pub role: String,
    /// The HA state name (`Primary Active`, `Secondary Syncing`, ...).
    pub state: String,
    /// The registry revision it has applied.
    pub applied_revision: u64,
    /// Log entries behind the leader.
    pub lag: u64,
}

/// Builds the page's model. `package_type`: the type asked for; an unknown or missing one
/// falls back to the first type some host runs.
pub fn status_model(
    state: &State,
    group: GroupView,
    answered_by: &str,
    package_type: Option<&str>,
) -> StatusModel {
    let snapshot = state.to_snapshot();
    let types = snapshot.package_types();
    let chosen: Option<PackageType> = package_type
        .and_then(|t| types.iter().find(|x| x.as_str() == t).cloned())
        .or_else(|| types.first().cloned());
    let table = state.topology().map(|t| RouteTable::build(t, &snapshot));
    let tree = state
        .topology()
        .map(|t| domain_view(t, t.root(), state, table.as_ref().zip(chosen.as_ref())));
    let unplaced = state
        .hosts()
        .iter()
        .filter(|(h, _)| {
            state
                .topology()
                .is_none_or(|t| t.host(h.as_str()).is_none())
        })
        .map(|(h, rec)| host_row(h, Some(rec), None))
        .collect();
    let coverage = table
        .as_ref()
        .zip(chosen.as_ref())
        .map(|(table, ty)| coverage_view(table, ty));
    StatusModel {
        revision: state.revision().0,
        history: state.history().to_owned(),
        answered_by: answered_by.to_owned(),
        admin: false,
        types: types.iter().map(ToString::to_string).collect(),
        package_type: chosen.map(|t| t.to_string()),
        tree,
        unplaced,
        coverage,
        group,
    }
}

fn domain_view(
    t: &Topology,
    id: DomainId,
    state: &State,
    routes: Option<(&RouteTable, &PackageType)>,
) -> DomainView {
    let d = t.domain(id);
    DomainView {
        name: d.name.to_string(),
        depth: d.depth,
        hosts: d
            .hosts
            .iter()
            .map(|h| host_row(h, state.host(h.as_str()), routes))
            .collect(),
        subdomains: d
            .children
            .iter()
            .map(|c| domain_view(t, *c, state, routes))
            .collect(),
    }
}

fn host_row(
    host: &HostName,
    rec: Option<&HostRecord>,
    routes: Option<(&RouteTable, &PackageType)>,
) -> HostRow {
    let mut route = routes
        .map(|(table, ty)| table.route_hosts(host.as_str(), ty.as_str()))
        .into_iter()
        .flatten();
    let routes_to = route.next().map(ToString::to_string);
    let next = route.next().map(ToString::to_string);
    HostRow {
        name: host.to_string(),
        state: match rec {
            None => "unseen",
            Some(r) if r.alive() => "alive",
            Some(_) => "lost",
        },
        packages: rec
            .map(|r| {
                r.packages
                    .iter()
                    .map(|(ty, p)| PackageRow {
                        package_type: ty.to_string(),
                        endpoint: p.endpoint.clone(),
                        status: p.effective().as_str(),
                        reported: p.reported.to_status().as_str(),
                        operator: p.operator.map(|o| match o {
                            crate::command::Override::Drain => "drain",
                            crate::command::Override::Withdraw => "withdraw",
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        routes_to,
        next,
    }
}

fn coverage_view(table: &RouteTable, ty: &PackageType) -> CoverageView {
    let c = topology::coverage_from_table(table, Some(ty));
    let tc = c.types.into_iter().next();
    CoverageView {
        no_manager: tc
            .as_ref()
            .map(|tc| tc.no_manager.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        single: tc
            .as_ref()
            .map(|tc| {
                tc.single
                    .iter()
                    .map(|(h, m)| (h.to_string(), m.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        managers: loss_moves(table, ty)
            .into_iter()
            .map(|load| LoadView {
                moves: load
                    .hosts
                    .into_iter()
                    .map(|(host, to)| MoveView {
                        host: host.to_string(),
                        package_type: ty.to_string(),
                        from: Some(load.manager.to_string()),
                        to: to.map(|t| t.to_string()),
                    })
                    .collect(),
                manager: load.manager.to_string(),
            })
            .collect(),
    }
}

/// The blast radius of an operator action: every (host, type) whose chosen manager would
/// change, computed on a copy of `state` with the action checked and applied as the state
/// machine would. An action the registry would refuse is refused here with the same error; an
/// action that changes nothing moves nobody.
pub fn action_blast_radius(
    state: &State,
    host: &HostName,
    package_type: &PackageType,
    action: OperatorAction,
    ttl: Duration,
) -> Result<Vec<MoveView>, RegistryError> {
    let command = Command::OperatorAction {
        host: host.clone(),
        package_type: package_type.clone(),
        action,
    };
    state.check(&command, None, ttl)?;
    let Some(topology) = state.topology() else {
        return Ok(Vec::new());
    };
    let mut after = state.clone();
    after.apply(&command);
    let before = RouteTable::build(topology, &state.to_snapshot());
    let after = RouteTable::build(topology, &after.to_snapshot());
    Ok(moves_between(&before, &after, Some(package_type))
        .into_iter()
        .map(move_view)
        .collect())
}

fn move_view(c: RouteChange) -> MoveView {
    MoveView {
        host: c.host.to_string(),
        package_type: c.package_type.to_string(),
        from: c.old.map(|h| h.to_string()),
        to: c.new.map(|h| h.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{AgentStatus, Registration};
    use crate::session_id::SessionId;

    const TTL: Duration = Duration::from_secs(1);
    const CCM: &str = "command-control-manager";
    use topology::fixtures::TREE;

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn run(state: &mut State, cmd: Command) {
        let p = crate::command::Proposed {
            command: cmd,
            session: None,
        };
        let (outcome, _) = state.execute(&p, TTL);
        outcome.expect("applied");
    }

    /// The worked example: every host with a session, managers on fm, agent-1 and agent-3.
    fn worked_example() -> State {
        let mut s = State::new();
        run(
            &mut s,
            Command::ApplyTopology {
                yaml: TREE.to_owned(),
            },
        );
        for host in ["fm", "agent-1", "agent-2", "agent-3", "agent-4"] {
            let packages = if ["fm", "agent-1", "agent-3"].contains(&host) {
                vec![Registration {
                    package_type: PackageType::new(CCM).unwrap(),
                    endpoint: format!("{host}:7001"),
                    status: AgentStatus::Running,
                }]
            } else {
                Vec::new()
            };
            run(
                &mut s,
                Command::OpenSession {
                    host: h(host),
                    session_id: SessionId::new(format!("s-{host}")),
                    packages,
                },
            );
        }
        s
    }

    fn all_hosts(d: &DomainView, out: &mut Vec<HostRow>) {
        out.extend(d.hosts.iter().cloned());
        for s in &d.subdomains {
            all_hosts(s, out);
        }
    }

    #[test]
    fn the_model_shows_every_host_with_its_route_and_the_loss_lists() {
        let s = worked_example();
        let m = status_model(&s, GroupView::default(), "m1", None);
        assert_eq!(m.package_type.as_deref(), Some(CCM));
        assert_eq!(m.types, vec![CCM.to_owned()]);
        let tree = m.tree.as_ref().expect("a topology");
        assert_eq!(tree.name, "framework");
        let mut hosts = Vec::new();
        all_hosts(tree, &mut hosts);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["fm", "agent-1", "agent-2", "agent-3", "agent-4"]);
        let route = |name: &str| {
            let r = hosts.iter().find(|h| h.name == name).unwrap();
            (r.routes_to.as_deref(), r.state)
        };
        assert_eq!(route("agent-2"), (Some("agent-1"), "alive"));
        assert_eq!(route("agent-4"), (Some("agent-3"), "alive"));
        let agent_4 = hosts.iter().find(|h| h.name == "agent-4").unwrap();
        assert_eq!(agent_4.next.as_deref(), Some("agent-1"));
        let cov = m.coverage.as_ref().expect("coverage");
        assert!(cov.no_manager.is_empty());
        let agent_3 = cov
            .managers
            .iter()
            .find(|l| l.manager == "agent-3")
            .expect("agent-3 carries hosts");
        assert_eq!(agent_3.moves.len(), 1);
        assert_eq!(agent_3.moves[0].host, "agent-4");
        assert_eq!(agent_3.moves[0].to.as_deref(), Some("agent-1"));
        // Serialises with the documented keys.
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], CCM);
        assert_eq!(json["tree"]["hosts"][0]["packages"][0]["status"], "running");
    }

    #[test]
    fn a_drained_package_and_a_lost_host_show_as_such() {
        let mut s = worked_example();
        run(
            &mut s,
            Command::OperatorAction {
                host: h("agent-3"),
                package_type: PackageType::new(CCM).unwrap(),
                action: OperatorAction::Drain,
            },
        );
        run(
            &mut s,
            Command::SessionExpired {
                host: h("agent-2"),
                session_id: SessionId::new("s-agent-2"),
            },
        );
        let m = status_model(&s, GroupView::default(), "m1", Some(CCM));
        let mut hosts = Vec::new();
        all_hosts(m.tree.as_ref().unwrap(), &mut hosts);
        let a3 = hosts.iter().find(|h| h.name == "agent-3").unwrap();
        assert_eq!(a3.packages[0].status, "draining");
        assert_eq!(a3.packages[0].reported, "running");
        assert_eq!(a3.packages[0].operator, Some("drain"));
        assert_eq!(a3.routes_to.as_deref(), Some("agent-1"));
        let a2 = hosts.iter().find(|h| h.name == "agent-2").unwrap();
        assert_eq!(a2.state, "lost");
    }

    #[test]
    fn an_unknown_type_falls_back_to_the_first_and_no_topology_shows_no_tree() {
        let s = worked_example();
        let m = status_model(&s, GroupView::default(), "m1", Some("nope"));
        assert_eq!(m.package_type.as_deref(), Some(CCM));
        let empty = status_model(&State::new(), GroupView::default(), "m1", None);
        assert!(empty.tree.is_none());
        assert!(empty.package_type.is_none());
        assert!(empty.coverage.is_none());
    }

    #[test]
    fn drain_blast_radius_names_who_moves_and_restore_moves_them_back() {
        let mut s = worked_example();
        let ccm = PackageType::new(CCM).unwrap();
        let drain =
            action_blast_radius(&s, &h("agent-3"), &ccm, OperatorAction::Drain, TTL).unwrap();
        let got: Vec<(&str, Option<&str>, Option<&str>)> = drain
            .iter()
            .map(|m| (m.host.as_str(), m.from.as_deref(), m.to.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("agent-3", Some("agent-3"), Some("agent-1")),
                ("agent-4", Some("agent-3"), Some("agent-1")),
            ]
        );
        // The state itself is untouched.
        assert!(
            action_blast_radius(&s, &h("agent-3"), &ccm, OperatorAction::Restore, TTL)
                .unwrap()
                .is_empty()
        );
        run(
            &mut s,
            Command::OperatorAction {
                host: h("agent-3"),
                package_type: ccm.clone(),
                action: OperatorAction::Drain,
            },
        );
        let restore =
            action_blast_radius(&s, &h("agent-3"), &ccm, OperatorAction::Restore, TTL).unwrap();
        assert_eq!(restore.len(), 2);
        assert!(restore.iter().all(|m| m.to.as_deref() == Some("agent-3")));
        // A package that does not exist is refused as the registry would refuse it.
        assert!(action_blast_radius(&s, &h("agent-2"), &ccm, OperatorAction::Drain, TTL).is_err());
    }
}
