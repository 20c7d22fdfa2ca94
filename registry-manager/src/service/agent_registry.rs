//! The `AgentRegistry` gRPC service: sessions, heartbeats, status reports and watch streams.
//!
//! **Re-opening after an agent restart**: while the old session is alive, `OpenSession` for
//! the same host is refused with ALREADY_EXISTS (a second agent must not steal a host). A
//! restarted agent retries; the old session lapses after `session_ttl` without heartbeats, and
//! the retry then succeeds. An agent that still has its session id simply keeps heartbeating.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};
use topology::{HostName, PackageType};

use crate::access::{identity_of, Access, Identity, Rpc};
use crate::command::Command;
use crate::engine::Engine;
use crate::error::RegistryError;
use crate::session_id::SessionId;
use crate::sessions::{answers_heartbeat, LiveSession};
use crate::wire;

/// Serves `fleet.registry.v1.AgentRegistry` on an [`Engine`].
#[derive(Debug, Clone)]
pub struct AgentRegistryService {
    engine: Engine,
    access: Arc<Access>,
}

impl AgentRegistryService {
    /// The service over `engine`, without TLS (every caller is `local`).
    pub fn new(engine: Engine) -> Self {
        Self::with_access(engine, Arc::new(Access::open()))
    }

    /// The service over `engine`, every call authorized by `access`.
    pub fn with_access(engine: Engine, access: Arc<Access>) -> Self {
        AgentRegistryService { engine, access }
    }

    fn authorize(&self, who: &Identity, rpc: Rpc<'_>) -> Result<(), Status> {
        authorize(&self.access, &self.engine, who, rpc)
    }
}

/// [`Access::authorize`] with the group's current membership; a refusal is logged.
pub(crate) fn authorize(
    access: &Access,
    engine: &Engine,
    who: &Identity,
    rpc: Rpc<'_>,
) -> Result<(), Status> {
    let member = |name: &str| {
        engine
            .node(crate::group::node_id(name))
            .is_some_and(|n| n.name == name)
    };
    access.authorize(who, rpc, &member).map_err(|refusal| {
        tracing::warn!(target: "audit", who = %who, refused = %refusal, "request refused");
        Status::from(refusal)
    })
}

impl AgentRegistryService {
    /// A member cut off from the group's majority serves no streams: its agents must move
    /// to a member of the majority.
    fn refuse_if_cut_off(&self) -> Result<(), Status> {
        if self.engine.is_rebuilding() {
            return Err(Status::unavailable(format!(
                "registry manager {} is being rebuilt from its group (its store was damaged); use another member",
                self.engine.name()
            )));
        }
        if self.engine.is_cut_off() {
            return Err(Status::unavailable(format!(
                "registry manager {} is cut off from its group's majority; use another member",
                self.engine.name()
            )));
        }
        Ok(())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn session_id(text: String) -> Result<SessionId, RegistryError> {
    if text.is_empty() || text.len() > 128 {
        return Err(RegistryError::InvalidArgument {
            field: "session_id",
            reason: "a session id is the 1 to 128 characters OpenSession returned".into(),
        });
    }
    Ok(SessionId::new(text))
}

/// Answers one heartbeat; `cached` is the stream's session, looked up once.
///
/// A session this member does not know may be one it has not applied yet (it was just opened
/// through the leader, or this member restarted): the member first catches up with the leader,
/// and only then tells the agent its session is gone. A member that cannot catch up ends the
/// stream, so the agent keeps its session and tries another member.
/// One keep-alive stream's state, carried from one heartbeat to the next: nothing is cloned
/// per heartbeat.
struct KeepAlive {
    inbound: Streaming<pb::Heartbeat>,
    engine: Engine,
    access: Arc<Access>,
    who: Identity,
    /// The live session this stream's heartbeats last touched.
    cached: Option<Arc<LiveSession>>,
    /// The (host, session id) refused on this stream after the barrier: never live again
    /// (session ids are not reused), so its later heartbeats are refused without asking the
    /// group again.
    refused: Option<(String, String)>,
    /// Heartbeats heard on this stream, for [`answers_heartbeat`].
    heard: u64,
}

impl KeepAlive {
    /// The next answer to send; `None` once the agent ended the stream.
    async fn next_answer(&mut self) -> Option<Result<pb::HeartbeatAck, Status>> {
        loop {
            let hb = match self.inbound.next().await? {
                Ok(hb) => hb,
                Err(e) => return Some(Err(e)),
            };
            self.heard += 1;
            // Every heartbeat, not just the first: the stream may name any host.
            let rpc = Rpc::ForHost {
                rpc: "KeepAlive",
                host: &hb.host,
            };
            if let Err(refused) = authorize(&self.access, &self.engine, &self.who, rpc) {
                return Some(Err(refused));
            }
            match self.heartbeat(&hb).await {
                Ok(ack) if !answers_heartbeat(self.heard, hb.sparse_acks, ack.ok) => continue,
                answer => return Some(answer),
            }
        }
    }

    /// Touches the heartbeat's session, or refuses it.
    async fn heartbeat(&mut self, hb: &pb::Heartbeat) -> Result<pb::HeartbeatAck, Status> {
        if self
            .refused
            .as_ref()
            .is_some_and(|(host, id)| *host == hb.host && *id == hb.session_id)
        {
            return Ok(refusal(hb));
        }
        let fresh = |s: &Arc<LiveSession>| {
            s.id.as_str() == hb.session_id && s.host.as_str() == hb.host && !s.is_ended()
        };
        let sessions = self.engine.sessions();
        if !self.cached.as_ref().is_some_and(fresh) {
            self.cached = sessions.by_host(&hb.host).filter(fresh);
            if self.cached.is_none() {
                if self.engine.read_barrier(false).await.is_err() {
                    return Err(Status::unavailable(format!(
                        "registry manager {} cannot confirm its copy with the group; try another member",
                        self.engine.name()
                    )));
                }
                self.cached = sessions.by_host(&hb.host).filter(fresh);
            }
        }
        match &self.cached {
            Some(session) => {
                sessions.touch(session);
                Ok(pb::HeartbeatAck {
                    ok: true,
                    reason: String::new(),
                    seq: hb.seq,
                })
            }
            None => {
                self.refused = Some((hb.host.clone(), hb.session_id.clone()));
                Ok(refusal(hb))
            }
        }
    }
}

/// The answer to a heartbeat of a session that is not live.
fn refusal(hb: &pb::Heartbeat) -> pb::HeartbeatAck {
    pb::HeartbeatAck {
        ok: false,
        reason: format!(
            "the session given is not the live session of host {:?} (expired, ended or unknown); open a new session",
            hb.host
        ),
        seq: hb.seq,
    }
}

#[tonic::async_trait]
impl pb::agent_registry_server::AgentRegistry for AgentRegistryService {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let who = identity_of(&self.access, &request);
        let req = request.into_inner();
        self.authorize(
            &who,
            Rpc::ForHost {
                rpc: "OpenSession",
                host: &req.host,
            },
        )?;
        let host = HostName::new(req.host).map_err(RegistryError::from)?;
        let packages = wire::registrations_from_proto(req.packages)?;
        let id = SessionId::random();
        let command = Command::OpenSession {
            host,
            session_id: id.clone(),
            packages,
        };
        let revision = self.engine.propose(command, None).await?;
        Ok(Response::new(pb::OpenSessionResponse {
            session_id: id.to_string(),
            ttl_ms: u64::try_from(self.engine.ttl().as_millis()).unwrap_or(u64::MAX),
            revision: revision.0,
        }))
    }

    type KeepAliveStream = BoxStream<pb::HeartbeatAck>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::Heartbeat>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let who = identity_of(&self.access, &request);
        self.authorize(&who, Rpc::Read("KeepAlive"))?;
        self.refuse_if_cut_off()?;
        let engine = self.engine.clone();
        let cancel = engine.cancel_token().clone();
        let closing = engine.hub().closing();
        let state = KeepAlive {
            inbound: request.into_inner(),
            engine,
            access: Arc::clone(&self.access),
            who,
            cached: None,
            refused: None,
            heard: 0,
        };
        let acks = futures::stream::unfold(state, |mut state| async move {
            let answer = state.next_answer().await?;
            Some((answer, state))
        })
        .take_until(cancel.cancelled_owned())
        .take_until(closing.cancelled_owned());
        Ok(Response::new(Box::pin(acks)))
    }

    async fn report_status(
        &self,
        request: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let who = identity_of(&self.access, &request);
        let req = request.into_inner();
        self.authorize(
            &who,
            Rpc::ForHost {
                rpc: "ReportStatus",
                host: &req.host,
            },
        )?;
        let host = HostName::new(req.host).map_err(RegistryError::from)?;
        let package_type = PackageType::new(req.r#type).map_err(RegistryError::from)?;
        let status = wire::agent_status_from_proto(req.status, None)?;
        let session = session_id(req.session_id)?;
        if let Some(owner) = self.engine.sessions().host_of(&session) {
            if owner != host {
                return Err(RegistryError::WrongHost {
                    host,
                    session_host: owner,
                    session_id: session,
                }
                .into());
            }
        }
        if let Some(live) = self.engine.sessions().by_host(host.as_str()) {
            if live.id == session && !live.is_ended() {
                self.engine.sessions().touch(&live);
            }
        }
        let command = Command::ReportStatus {
            host,
            package_type,
            status,
        };
        let revision = self.engine.propose(command, Some(session)).await?;
        Ok(Response::new(pb::ReportStatusResponse {
            revision: revision.0,
        }))
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&identity_of(&self.access, &request), Rpc::Read("Watch"))?;
        let req = request.into_inner();
        if !req.host.is_empty() {
            HostName::new(req.host.as_str()).map_err(RegistryError::from)?;
        }
        self.refuse_if_cut_off()?;
        let cancel = self.engine.cancel_token().clone();
        let hub = Arc::clone(self.engine.hub());
        let closing = hub.closing();
        let engine = self.engine.clone();
        // The stream is answered at once; its first event waits for this copy to catch up.
        let events = futures::stream::once(async move {
            catch_up(&engine, req.from_revision, &req.history).await;
            hub.watch(
                Arc::clone(engine.state_lock()),
                req.from_revision,
                &req.history,
                req.status_changes,
            )
            .await
        })
        .flatten()
        .take_until(cancel.cancelled_owned())
        .take_until(closing.cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }
}

/// Longest a watch stream waits for this member's copy to reach the revision its watcher has.
pub const CATCH_UP: Duration = Duration::from_secs(2);

/// A watcher that has a newer revision of this registry than this member's copy got it from a
/// member further ahead: typically a leader that just failed, whose last writes this follower
/// has not applied yet. Sending it this copy now would take it back to an older registry (a
/// drain it saw, undone for a moment); instead the stream waits, at most [`CATCH_UP`], until
/// this copy has that revision. After that (a copy that never gets there: another history, a
/// registry restored from an older backup) the watcher gets this copy's snapshot as before.
async fn catch_up(engine: &Engine, from: u64, history: &str) {
    if from == 0 {
        return;
    }
    // Subscribed before the state is read: no revision applied in between is missed.
    let mut applied = engine.hub().subscribe();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        {
            let state = engine.state().await;
            let other_history = !history.is_empty() && history != state.history();
            if from <= state.revision().0 || other_history {
                return;
            }
        }
        match tokio::time::timeout_at(deadline, applied.recv()).await {
            Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            // A revision applied (or several): look again.
            Ok(_) => {}
        }
    }
}
