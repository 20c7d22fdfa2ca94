//! The `Member` gRPC service, spoken among the members of a group: openraft's RPCs (as
//! JSON), writes a follower forwards to the leader, heartbeats passed on to the leader, the
//! leader's read point for current reads on followers, and each member's own status.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use proto::v1 as pb;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::command::Proposed;
use crate::engine::Engine;
use crate::raft::network::decode_snapshot_message;
use crate::raft::types::TypeConfig;

/// Serves `fleet.registry.v1.Member` on an [`Engine`].
#[derive(Debug, Clone)]
pub struct MemberService {
    engine: Engine,
    access: std::sync::Arc<crate::access::Access>,
}

impl MemberService {
    /// The service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self::with_access(engine, std::sync::Arc::new(crate::access::Access::open()))
    }

    /// The service over `engine`, every call authorized by `access`.
    pub fn with_access(engine: Engine, access: std::sync::Arc<crate::access::Access>) -> Self {
        MemberService { engine, access }
    }

    /// The caller's identity, once `access` allows it this Member RPC.
    fn check<T: prost::Message>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
    ) -> Result<crate::access::Identity, Status> {
        let who = crate::access::identity_of(&self.access, request);
        crate::service::agent_registry::authorize(
            &self.access,
            &self.engine,
            &who,
            crate::access::Rpc::Member(rpc),
        )?;
        if let Some(keys) = self.engine.peers().cluster_keys() {
            let mac = request
                .metadata()
                .get(crate::cluster_key::METADATA)
                .and_then(|v| v.to_str().ok());
            let body = request.get_ref().encode_to_vec();
            if let Err(why) = keys.verify(rpc, &body, mac, crate::cluster_key::now_ms()) {
                tracing::warn!(target: "audit", who = %who, rpc, refused = %why, "member request refused: cluster key");
                return Err(Status::unauthenticated(format!(
                    "{rpc} refused by member {}: {why}; every member needs the same group.key_file",
                    self.engine.name()
                )));
            }
        }
        Ok(who)
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("encoding a raft reply: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, payload: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(payload)
        .map_err(|e| Status::invalid_argument(format!("raft {kind} request does not decode: {e}")))
}

#[tonic::async_trait]
impl pb::member_server::Member for MemberService {
    async fn raft(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        self.check(&request, "Raft")?;
        let msg = request.into_inner();
        let raft = self.engine.raft();
        let payload = match msg.kind.as_str() {
            "append_entries" => {
                let req: AppendEntriesRequest<TypeConfig> = decode(&msg.kind, &msg.payload)?;
                let result = raft.append_entries(req).await;
                if matches!(
                    result,
                    Ok(AppendEntriesResponse::Success
                        | AppendEntriesResponse::PartialSuccess(_)
                        | AppendEntriesResponse::Conflict)
                ) {
                    self.engine.note_leader_contact();
                }
                json(&result)?
            }
            "vote" => {
                if self.engine.is_rebuilding() {
                    // Its log was lost with the damaged store: a vote now could elect a leader
                    // missing acknowledged writes. No vote until it has caught up.
                    return Err(Status::unavailable(format!(
                        "{} is being rebuilt from the group and votes once it has caught up",
                        self.engine.name()
                    )));
                }
                let req: VoteRequest<TypeConfig> = decode(&msg.kind, &msg.payload)?;
                json(&raft.vote(req).await)?
            }
            "snapshot" => {
                let (vote, snapshot) =
                    decode_snapshot_message(&msg.payload).map_err(Status::invalid_argument)?;
                let result = raft.install_full_snapshot(vote, snapshot).await;
                if result.is_ok() {
                    self.engine.note_leader_contact();
                }
                json(&result)?
            }
            "transfer_leader" => {
                let req: TransferLeaderRequest<TypeConfig> = decode(&msg.kind, &msg.payload)?;
                self.engine.note_transfer();
                json(&raft.handle_transfer_leader(req).await)?
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown raft message kind {other:?}"
                )))
            }
        };
        Ok(Response::new(pb::RaftMessage {
            kind: msg.kind,
            payload,
        }))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.check(&request, "Propose")?;
        if !self.engine.is_leader() {
            // The sender retries on the leader it learns next.
            return Err(Status::failed_precondition(format!(
                "{} is not the leader",
                self.engine.name()
            )));
        }
        let items: Vec<Proposed> =
            serde_json::from_slice(&request.into_inner().batch).map_err(|e| {
                Status::invalid_argument(format!("forwarded batch does not decode: {e}"))
            })?;
        let outcomes = self.engine.propose_many(items).await;
        Ok(Response::new(pb::ProposeResponse {
            outcomes: json(&outcomes)?,
        }))
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        self.check(&request, "Touch")?;
        let sessions = self.engine.sessions();
        let req = request.into_inner();
        let via = crate::group::node_id(&req.member);
        for hb in req.sessions {
            sessions.touch_remote(&hb.host, &hb.session_id, via);
        }
        Ok(Response::new(pb::TouchResponse {}))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check(&request, "ReadIndex")?;
        let log_id = self.engine.leader_read_point().await?;
        Ok(Response::new(pb::ReadIndexResponse {
            read_log_id: json(&log_id)?,
        }))
    }

    async fn member_status(
        &self,
        request: Request<pb::HaStatusRequest>,
    ) -> Result<Response<pb::HaMember>, Status> {
        self.check(&request, "MemberStatus")?;
        Ok(Response::new(self.engine.member_status().await))
    }
}
