//! openraft's network over gRPC: every raft RPC goes to the target member's `Member.Raft` as
//! JSON (openraft's own serde forms). Channels to members are made once and reused
//! ([`Peers`]), also by the engine's own member calls (forwarded writes, heartbeats passed on,
//! read points, status).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use proto::v1 as pb;
use proto::v1::member_client::MemberClient;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::raft::types::{MemberNode, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// Largest member message (a snapshot of a large registry travels in one).
pub const MAX_MEMBER_MESSAGE: usize = 512 << 20;

/// Reused gRPC channels to the other members, by address.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// How this member reaches other members by name, where its configuration says so (behind
    /// NAT, a proxy or a test relay); others are reached at their address in the membership.
    routes: Arc<HashMap<String, String>>,
    /// The channels, and the count of revocations of members' certificates they were made
    /// after ([`proto::crl::ClientTls::revocations`]): after another, they are made again.
    channels: Arc<Mutex<(u64, HashMap<String, Channel>)>>,
    /// This member's TLS client side (its own certificate), when the group serves TLS.
    tls: Option<proto::crl::ClientTls>,
    /// The cluster key every member RPC is signed with (and checked against), if configured,
    /// and the file it is kept in (rewritten at each step of a rotation).
    keys: Option<Arc<std::sync::RwLock<crate::cluster_key::ClusterKeys>>>,
    key_file: Option<std::path::PathBuf>,
    /// Whether the last call to each address got through.
    reachable: Arc<Mutex<HashMap<String, bool>>>,
}

impl Peers {
    /// Peers reached at the configured addresses `routes` (member name -> address), over TLS
    /// with this member's certificate when `tls` is given.
    pub fn new(
        routes: HashMap<String, String>,
        tls: Option<proto::crl::ClientTls>,
        keys: Option<(crate::cluster_key::ClusterKeys, std::path::PathBuf)>,
    ) -> Peers {
        let (keys, key_file) = match keys {
            Some((k, f)) => (Some(Arc::new(std::sync::RwLock::new(k))), Some(f)),
            None => (None, None),
        };
        Peers {
            routes: Arc::new(routes),
            tls,
            keys,
            key_file,
            ..Default::default()
        }
    }

    /// The cluster key, if configured.
    pub fn cluster_keys(&self) -> Option<crate::cluster_key::ClusterKeys> {
        self.keys
            .as_ref()
            .map(|k| k.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// One step of a cluster key rotation: written to the key file first (so a restart keeps
    /// it), then used. Errors name the file, never a key.
    pub fn rotate_key(
        &self,
        step: &crate::cluster_key::Step,
    ) -> Result<crate::cluster_key::ClusterKeys, String> {
        let (Some(keys), Some(file)) = (&self.keys, &self.key_file) else {
            return Err(
                "this member has no cluster key (group.key_file); set one on every member first"
                    .into(),
            );
        };
        let mut keys = keys.write().unwrap_or_else(|p| p.into_inner());
        let next = keys.after(step)?;
        crate::cluster_key::write_key_file(file, &next.file_text())?;
        *keys = next.clone();
        Ok(next)
    }

    /// A `Member` RPC request for `method`, signed with the cluster key when there is one.
    pub fn request<M: prost::Message>(&self, method: &str, message: M) -> tonic::Request<M> {
        let mac = self.keys.as_ref().map(|k| {
            k.read().unwrap_or_else(|p| p.into_inner()).sign(
                method,
                &message.encode_to_vec(),
                crate::cluster_key::now_ms(),
                rand_nonce(),
            )
        });
        let mut request = tonic::Request::new(message);
        if let Some(mac) = mac.and_then(|m| m.parse().ok()) {
            request
                .metadata_mut()
                .insert(crate::cluster_key::METADATA, mac);
        }
        request
    }

    /// The address this member uses to reach `node`.
    pub fn addr_of(&self, node: &MemberNode) -> String {
        self.routes
            .get(&node.name)
            .cloned()
            .unwrap_or_else(|| node.addr.clone())
    }

    /// Records whether a call to `addr` got through.
    pub fn mark(&self, addr: &str, ok: bool) {
        self.reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_owned(), ok);
    }

    /// False when the last call to `addr` did not get through.
    pub fn reachable(&self, addr: &str) -> bool {
        self.reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .copied()
            .unwrap_or(true)
    }

    /// The reused channel to `addr`. When a revocation list read since names a certificate a
    /// member has shown this one, every channel is made again (their handshakes check the
    /// newest list), and connections to a revoked member close once their calls end.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let (made_after, map) = &mut *channels;
        let revocations = self.tls.as_ref().map_or(0, |t| t.revocations());
        if *made_after != revocations {
            *made_after = revocations;
            map.clear();
        }
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| format!("member address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(2));
        let c = endpoint.connect_lazy();
        map.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// A client of `addr`'s `Member` service (the channel connects lazily and is reused).
    pub fn member(&self, addr: &str) -> Result<MemberClient<Channel>, String> {
        Ok(MemberClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MEMBER_MESSAGE)
            .max_encoding_message_size(MAX_MEMBER_MESSAGE))
    }
}

/// A nonce for a MAC (unique enough within the replay window).
fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return NEXT.fetch_add(1, Ordering::Relaxed);
    }
    u64::from_le_bytes(bytes)
}

/// Makes a [`Connection`] per target member.
#[derive(Debug, Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// The network over `peers`.
    pub fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, _target: u64, node: &MemberNode) -> Self::Network {
        Connection {
            peers: self.peers.clone(),
            addr: self.peers.addr_of(node),
            name: node.name.clone(),
        }
    }
}

/// The raft client of one member.
#[derive(Debug)]
pub struct Connection {
    peers: Peers,
    addr: String,
    name: String,
}

/// The wire form of a snapshot: JSON of the vote and the meta, then the data.
#[derive(Serialize, serde::Deserialize)]
struct SnapshotHeader {
    vote: Vote,
    meta: SnapshotMeta,
}

/// Encodes a snapshot message: a big-endian u32 header length, the header JSON, the data.
pub fn encode_snapshot_message(vote: &Vote, snapshot: &Snapshot) -> Vec<u8> {
    let header = serde_json::to_vec(&SnapshotHeader {
        vote: *vote,
        meta: snapshot.meta.clone(),
    })
    .expect("snapshot header serialises");
    let mut out = Vec::with_capacity(4 + header.len() + snapshot.snapshot.len());
    out.extend_from_slice(
        &u32::try_from(header.len())
            .expect("small header")
            .to_be_bytes(),
    );
    out.extend_from_slice(&header);
    out.extend_from_slice(&snapshot.snapshot);
    out
}

/// Decodes [`encode_snapshot_message`].
pub fn decode_snapshot_message(bytes: &[u8]) -> Result<(Vote, Snapshot), String> {
    if bytes.len() < 4 {
        return Err("snapshot message shorter than its header".into());
    }
    let (len, rest) = bytes.split_at(4);
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if rest.len() < len {
        return Err("snapshot message shorter than its header".into());
    }
    let (header, data) = rest.split_at(len);
    let h: SnapshotHeader =
        serde_json::from_slice(header).map_err(|e| format!("snapshot header: {e}"))?;
    Ok((
        h.vote,
        Snapshot {
            meta: h.meta,
            snapshot: data.to_vec(),
        },
    ))
}

impl Connection {
    /// Sends one raft RPC and decodes openraft's `Result<Resp, E>` from the reply.
    async fn call<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::fmt::Display,
    >(
        &self,
        kind: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(kind, payload, timeout).await.and_then(|bytes| {
            let result: Result<Resp, E> = serde_json::from_slice(&bytes)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            result.map_err(|e| {
                RPCError::Network(NetworkError::from_string(format!(
                    "member {} answered with an error: {e}",
                    self.name
                )))
            })
        })
    }

    async fn send(
        &self,
        kind: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        let mut client = self
            .peers
            .member(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let mut request = self.peers.request(
            "Raft",
            pb::RaftMessage {
                kind: kind.to_owned(),
                payload,
            },
        );
        request.set_timeout(timeout);
        let result = client.raft(request).await;
        self.peers.mark(&self.addr, result.is_ok());
        match result {
            Ok(reply) => Ok(reply.into_inner().payload),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "member {} at {}: {}",
                    self.name,
                    self.addr,
                    status.message()
                ))))
            }
            Err(status) => Err(RPCError::Network(NetworkError::from_string(format!(
                "member {} at {}: {}",
                self.name,
                self.addr,
                status.message()
            )))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call::<_, _, openraft::errors::RaftError<TypeConfig>>(
            "append_entries",
            &rpc,
            option.soft_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call::<_, _, openraft::errors::RaftError<TypeConfig>>("vote", &rpc, option.soft_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let payload = encode_snapshot_message(&vote, &snapshot);
        // A snapshot may be large: give it far longer than one heartbeat RPC.
        let timeout = option.hard_ttl().max(Duration::from_secs(30));
        let bytes = self.send("snapshot", payload, timeout).await?;
        let result: Result<SnapshotResponse<TypeConfig>, openraft::errors::Fatal<TypeConfig>> =
            serde_json::from_slice(&bytes)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            StreamingError::Network(NetworkError::from_string(format!(
                "member {} could not install the snapshot: {e}",
                self.name
            )))
        })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call::<_, _, openraft::errors::Fatal<TypeConfig>>(
            "transfer_leader",
            &req,
            option.soft_ttl(),
        )
        .await
    }
}
