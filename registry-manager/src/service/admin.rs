//! The `Admin` gRPC service: topology apply / diff / show, package actions, registry export,
//! live route explain and the host listing. Thin: validation at the edge, writes through the
//! engine, reads under the state's read lock.

use proto::v1 as pb;
use tonic::{Request, Response, Status};
use topology::{HostName, PackageType, Topology};

use crate::command::Command;
use crate::engine::Engine;
use crate::error::RegistryError;
use crate::wire;

/// File name quoted in errors when a request names none.
const UNNAMED_FILE: &str = "<request>";

/// Serves `fleet.registry.v1.Admin` on an [`Engine`].
#[derive(Debug, Clone)]
pub struct AdminService {
    engine: Engine,
    access: std::sync::Arc<crate::access::Access>,
}

impl AdminService {
    /// The service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self::with_access(engine, std::sync::Arc::new(crate::access::Access::open()))
    }

    /// The service over `engine`, every call authorized by `access`.
    pub fn with_access(engine: Engine, access: std::sync::Arc<crate::access::Access>) -> Self {
        AdminService { engine, access }
    }

    /// The caller's identity, once `access` allows it this Admin RPC.
    fn check<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
    ) -> Result<crate::access::Identity, Status> {
        let who = crate::access::identity_of(&self.access, request);
        crate::service::agent_registry::authorize(
            &self.access,
            &self.engine,
            &who,
            crate::access::Rpc::Admin(rpc),
        )?;
        Ok(who)
    }
}

/// Parses a topology request; errors name the request's file.
pub fn parse_topology(file_name: &str, yaml: &str) -> Result<Topology, RegistryError> {
    // Errors are one `FILE:LINE:COL: message` per line: a name with control characters
    // (a newline, say) is quoted with `?` in their place.
    let file_name: String = if file_name.is_empty() {
        UNNAMED_FILE.into()
    } else {
        file_name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    Topology::from_yaml(&file_name, yaml).map_err(RegistryError::InvalidTopology)
}

/// Work that grows with the registry (diff, explain, export) runs on the blocking pool, at
/// most this many at a time, never on the threads that serve heartbeats and watches.
const HEAVY_AT_ONCE: usize = 2;

static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HEAVY_AT_ONCE);

/// Runs `f` off the async threads, bounded by [`HEAVY_AT_ONCE`].
async fn offload<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    let _permit = HEAVY
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the manager is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("a registry computation failed: {e}")))
}

fn name_list<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn ha_cluster_key(
        &self,
        request: Request<pb::HaClusterKeyRequest>,
    ) -> Result<Response<pb::HaClusterKeyResponse>, Status> {
        let who = self.check(&request, "HaClusterKey")?;
        Ok(Response::new(
            self.cluster_key_step(who, request.into_inner()).await?,
        ))
    }

    async fn apply_topology(
        &self,
        request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::ApplyTopologyResponse>, Status> {
        let who = self.check(&request, "ApplyTopology")?;
        let req = request.into_inner();
        let topology = parse_topology(&req.file_name, &req.yaml)?;
        let command = Command::ApplyTopology {
            yaml: topology.to_yaml(),
        };
        let topology = &topology;
        let revision = self.engine.propose(command, None).await?;
        tracing::info!(
            target: "audit",
            who = %who,
            what = "topology apply",
            file = %req.file_name.escape_debug(),
            hosts = topology.hosts().count(),
            %revision,
            "admin write"
        );
        Ok(Response::new(pb::ApplyTopologyResponse {
            revision: revision.0,
        }))
    }

    async fn diff_topology(
        &self,
        request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::DiffTopologyResponse>, Status> {
        self.check(&request, "DiffTopology")?;
        let req = request.into_inner();
        let new = parse_topology(&req.file_name, &req.yaml)?;
        self.engine.read_barrier(false).await?;
        let (old, snapshot) = {
            let state = self.engine.state().await;
            (state.topology().cloned(), state.to_snapshot())
        };
        let Some(old) = old else {
            // Nothing applied yet: everything is new, nobody routes yet, so nobody moves.
            return Ok(Response::new(pb::DiffTopologyResponse {
                domains_added: new.domains().map(|(_, d)| d.name.to_string()).collect(),
                hosts_added: new.hosts().map(|h| h.name.to_string()).collect(),
                ..Default::default()
            }));
        };
        let d = offload(move || topology::diff(&old, &new, &snapshot)).await?;
        Ok(Response::new(pb::DiffTopologyResponse {
            domains_added: name_list(&d.domains_added),
            domains_removed: name_list(&d.domains_removed),
            domains_moved: d
                .domains_moved
                .iter()
                .map(|(domain, from, to)| pb::MovedDomain {
                    domain: domain.to_string(),
                    from_parent: from.to_string(),
                    to_parent: to.to_string(),
                })
                .collect(),
            hosts_added: name_list(&d.hosts_added),
            hosts_removed: name_list(&d.hosts_removed),
            hosts_moved: d
                .hosts_moved
                .iter()
                .map(|(host, from, to)| pb::MovedHost {
                    host: host.to_string(),
                    from_domain: from.to_string(),
                    to_domain: to.to_string(),
                })
                .collect(),
            route_changes: d
                .route_changes
                .iter()
                .map(|c| pb::RouteChange {
                    host: c.host.to_string(),
                    r#type: c.package_type.to_string(),
                    old_chosen: c.old.as_ref().map(ToString::to_string).unwrap_or_default(),
                    new_chosen: c.new.as_ref().map(ToString::to_string).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn show_topology(
        &self,
        request: Request<pb::ShowTopologyRequest>,
    ) -> Result<Response<pb::ShowTopologyResponse>, Status> {
        self.check(&request, "ShowTopology")?;
        self.engine.read_barrier(request.get_ref().stale).await?;
        let state = self.engine.state().await;
        Ok(Response::new(pb::ShowTopologyResponse {
            revision: state.revision().0,
            yaml: state.topology_yaml().to_owned(),
        }))
    }

    async fn package_action(
        &self,
        request: Request<pb::PackageActionRequest>,
    ) -> Result<Response<pb::PackageActionResponse>, Status> {
        let who = self.check(&request, "PackageAction")?;
        let req = request.into_inner();
        let host = HostName::new(req.host).map_err(RegistryError::from)?;
        let package_type = PackageType::new(req.r#type).map_err(RegistryError::from)?;
        let action = wire::action_from_proto(req.action)?;
        let what = format!("package {action:?}").to_lowercase();
        let (audit_host, audit_type) = (host.to_string(), package_type.to_string());
        let command = Command::OperatorAction {
            host,
            package_type,
            action,
        };
        let revision = self.engine.propose(command, None).await?;
        tracing::info!(
            target: "audit",
            who = %who,
            what,
            host = audit_host,
            r#type = audit_type,
            %revision,
            "admin write"
        );
        Ok(Response::new(pb::PackageActionResponse {
            revision: revision.0,
        }))
    }

    async fn export_registry(
        &self,
        request: Request<pb::ExportRegistryRequest>,
    ) -> Result<Response<pb::ExportRegistryResponse>, Status> {
        self.check(&request, "ExportRegistry")?;
        self.engine.read_barrier(request.get_ref().stale).await?;
        let snapshot = self.engine.state().await.to_snapshot();
        let (revision, snapshot_json) =
            offload(move || (snapshot.revision.0, snapshot.to_json())).await?;
        Ok(Response::new(pb::ExportRegistryResponse {
            revision,
            snapshot_json,
        }))
    }

    async fn explain_route(
        &self,
        request: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::RouteExplanation>, Status> {
        self.check(&request, "ExplainRoute")?;
        let req = request.into_inner();
        HostName::new(req.host.as_str()).map_err(RegistryError::from)?;
        PackageType::new(req.r#type.as_str()).map_err(RegistryError::from)?;
        self.engine.read_barrier(req.stale).await?;
        let (topology, snapshot) = {
            let state = self.engine.state().await;
            (state.topology().cloned(), state.to_snapshot())
        };
        let topology = topology.ok_or(RegistryError::NoTopology)?;
        let answer = offload(move || {
            topology::explain(&topology, &snapshot, &req.host, &req.r#type, &|_| false)
                .map(|e| wire::explanation_to_proto(&e, snapshot.revision))
        })
        .await?
        .map_err(RegistryError::from)?;
        Ok(Response::new(answer))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.check(&request, "ListHosts")?;
        self.engine.read_barrier(request.get_ref().stale).await?;
        let state = self.engine.state().await;
        let sessions = self.engine.sessions();
        let now = sessions.now_ms();
        let entry = |host: &HostName, domain: String| {
            let rec = state.host(host.as_str());
            let live = rec.and_then(|r| r.session.as_ref());
            let last_heartbeat_ms = sessions
                .by_host(host.as_str())
                .filter(|s| Some(&s.id) == live)
                .map_or(0, |s| now.saturating_sub(s.last_seen_ms()));
            pb::HostSession {
                host: host.to_string(),
                domain,
                alive: rec.is_none_or(|r| r.alive()),
                session_live: live.is_some(),
                last_heartbeat_ms,
                packages: rec
                    .map(|r| wire::packages_to_proto(&r.packages))
                    .unwrap_or_default(),
            }
        };
        let mut hosts = Vec::new();
        if let Some(topology) = state.topology() {
            for h in topology.hosts() {
                let domain = topology.domain(h.domain).name.to_string();
                hosts.push(entry(&h.name, domain));
            }
        }
        for host in state.hosts().keys() {
            if state
                .topology()
                .is_none_or(|t| t.host(host.as_str()).is_none())
            {
                hosts.push(entry(host, String::new()));
            }
        }
        Ok(Response::new(pb::ListHostsResponse {
            revision: state.revision().0,
            hosts,
        }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        self.check(&request, "Backup")?;
        self.engine.read_barrier(false).await?;
        let state = self.engine.state().await;
        Ok(Response::new(pb::BackupResponse {
            revision: state.revision().0,
            history: state.history().to_owned(),
            state: state.to_bytes(),
        }))
    }

    async fn ha_status(
        &self,
        request: Request<pb::HaStatusRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        self.check(&request, "HaStatus")?;
        Ok(Response::new(
            self.engine.ha_status(request.get_ref().local_only).await,
        ))
    }

    async fn ha_failover(
        &self,
        request: Request<pb::HaFailoverRequest>,
    ) -> Result<Response<pb::HaFailoverResponse>, Status> {
        let who = self.check(&request, "HaFailover")?;
        let req = request.into_inner();
        let what = if req.failback {
            "ha failback"
        } else {
            "ha failover"
        };
        let answer = if let Some(mut leader) = self.leader_admin()? {
            leader.ha_failover(req).await?.into_inner()
        } else {
            let to = (!req.to.is_empty()).then_some(req.to);
            let (leader, term) = self.engine.move_leadership(to, req.failback).await?;
            pb::HaFailoverResponse { leader, term }
        };
        tracing::info!(target: "audit", who = %who, what, leader = %answer.leader, term = answer.term, "admin write");
        Ok(Response::new(answer))
    }

    async fn ha_add_learner(
        &self,
        request: Request<pb::HaMemberRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        let who = self.check(&request, "HaAddLearner")?;
        let req = request.into_inner();
        let name = req.name.clone();
        let answer = if let Some(mut leader) = self.leader_admin()? {
            leader.ha_add_learner(req).await?.into_inner()
        } else {
            self.engine.add_learner(&req.name, &req.address).await?;
            self.engine.ha_status(false).await
        };
        tracing::info!(target: "audit", who = %who, what = "ha add-learner", member = %name.escape_debug(), revision = answer.revision, "admin write");
        Ok(Response::new(answer))
    }

    async fn ha_promote(
        &self,
        request: Request<pb::HaMemberRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        let who = self.check(&request, "HaPromote")?;
        let req = request.into_inner();
        let name = req.name.clone();
        let answer = if let Some(mut leader) = self.leader_admin()? {
            leader.ha_promote(req).await?.into_inner()
        } else {
            self.engine.change_voters(&req.name, true).await?;
            self.engine.ha_status(false).await
        };
        tracing::info!(target: "audit", who = %who, what = "ha promote", member = %name.escape_debug(), revision = answer.revision, "admin write");
        Ok(Response::new(answer))
    }

    async fn ha_remove(
        &self,
        request: Request<pb::HaMemberRequest>,
    ) -> Result<Response<pb::HaStatusResponse>, Status> {
        let who = self.check(&request, "HaRemove")?;
        let req = request.into_inner();
        let name = req.name.clone();
        let answer = if let Some(mut leader) = self.leader_admin()? {
            leader.ha_remove(req).await?.into_inner()
        } else {
            self.engine.change_voters(&req.name, false).await?;
            self.engine.ha_status(false).await
        };
        tracing::info!(target: "audit", who = %who, what = "ha remove", member = %name.escape_debug(), revision = answer.revision, "admin write");
        Ok(Response::new(answer))
    }
}

impl AdminService {
    async fn cluster_key_step(
        &self,
        who: crate::access::Identity,
        req: pb::HaClusterKeyRequest,
    ) -> Result<pb::HaClusterKeyResponse, Status> {
        use crate::cluster_key::Step;
        let step = match req.step.as_str() {
            "show" => None,
            "stage" => Some(Step::Stage(req.key)),
            "switch" => Some(Step::Switch(req.key_id)),
            "retire" => Some(Step::Retire),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown cluster key step {other:?}; use stage, switch, retire or show"
                )))
            }
        };
        let peers = self.engine.peers();
        let keys = match &step {
            None => peers.cluster_keys().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "member {} has no cluster key (group.key_file)",
                    self.engine.name()
                ))
            })?,
            Some(step) => {
                let keys = peers.rotate_key(step).map_err(|e| {
                    Status::failed_precondition(format!("member {}: {e}", self.engine.name()))
                })?;
                let what = match step {
                    Step::Stage(_) => "ha authkey stage",
                    Step::Switch(_) => "ha authkey switch",
                    Step::Retire => "ha authkey retire",
                };
                tracing::info!(target: "audit", who = %who, what, signing = keys.current_id(), accepted = ?keys.accepted_ids(), "admin write");
                keys
            }
        };
        Ok(pb::HaClusterKeyResponse {
            member: self.engine.name().to_owned(),
            signing_id: keys.current_id().to_owned(),
            accepted_ids: keys.accepted_ids(),
        })
    }

    /// The leader's `Admin` client when another member leads (group changes run there).
    fn leader_admin(
        &self,
    ) -> Result<Option<pb::admin_client::AdminClient<tonic::transport::Channel>>, Status> {
        if self.engine.is_leader() {
            return Ok(None);
        }
        let Some((_, leader)) = self.engine.leader() else {
            return Err(Status::unavailable(format!(
                "no leader is known to {}; the group cannot change now. See `registry-manager ha status`",
                self.engine.name()
            )));
        };
        let channel = self
            .engine
            .peers()
            .channel(&self.engine.peers().addr_of(&leader))
            .map_err(Status::internal)?;
        Ok(Some(pb::admin_client::AdminClient::new(channel)))
    }
}
