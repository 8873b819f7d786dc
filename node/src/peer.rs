//! Peer RPC, both sides: the routes a node serves to its peers (Raft append-entries, vote,
//! PreVote (`crate::prevote`), snapshot chunks, and the forwarding route) and the openraft
//! network that calls them.
//!
//! Raft RPC bodies, both ways, are the binary encoding of the log (`raft_store::codec`): an
//! append-entries request carries entries the follower writes as they are, and decoding it
//! costs a fraction of JSON's. Error answers keep the JSON error shape (a peer of another
//! build must be able to read "peer_protocol_mismatch"), and so does forwarding, whose
//! answers hold client JSON.
//!
//! Every call carries a deadline: openraft's `hard_ttl` for Raft RPCs, the caller's remaining
//! request time for forwarded operations. Peer routes are kept apart from the client routes so
//! client limits never slow heartbeats down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raft_store::{LocalDurable, Node, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::{Forwarded, SharedApp, FORWARD_PATH};
use crate::metrics::{rpc_kind, RaftPathMetrics};
use api::error::ApiError;
use api::link::{FrameLink, Opened};
use api::transport::{HttpRequest, HttpResponse, Transport, TransportError};

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// The content type of Raft RPC bodies (`raft_store::codec`).
pub const RPC_CONTENT_TYPE: &str = "application/x-uniqlog-raft";
/// The CRC-32C of a snapshot chunk's data, in decimal.
pub const CHUNK_CRC_HEADER: &str = "x-uniqlog-chunk-crc32c";

use api::link::PEER_BODY_BYTES_MAX;

/// Append-entries batches above this are split: openraft 0.9 gives each call only the
/// heartbeat interval and retries the same batch on a timeout, so a batch too large to send
/// and fsync in that time would never get through.
pub const APPEND_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;

/// The snapshot being received from the leader: its id, and the bytes written from offset 0
/// without a gap.
pub struct SnapshotReceipt {
    pub id: String,
    pub written: u64,
}

/// Whether `path` is one of the routes peers call.
pub fn is_peer_path(path: &str) -> bool {
    [
        APPEND_PATH,
        VOTE_PATH,
        crate::prevote::PREVOTE_PATH,
        SNAPSHOT_PATH,
        FORWARD_PATH,
        crate::removal::MEMBERSHIP_PATH,
        crate::bootstrap::BOOTSTRAP_PATH,
        crate::routes::ui::STATUS_PATH,
    ]
    .contains(&path)
}

/// The routes peers call. No client limits apply here.
pub fn peer_router(app: SharedApp) -> Router {
    Router::new()
        .route(APPEND_PATH, get(crate::append_link::open))
        .route(VOTE_PATH, post(vote))
        .route(crate::prevote::PREVOTE_PATH, post(prevote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(
            crate::routes::ui::STATUS_PATH,
            post(|State(app): State<SharedApp>| async move {
                crate::routes::cluster::cluster_status(&app)
                    .await
                    .map(json_answer)
            }),
        )
        .route(
            crate::removal::MEMBERSHIP_PATH,
            post(|State(app): State<SharedApp>| async move {
                json_answer(crate::removal::PeerMembership::of(&app))
            }),
        )
        .route(
            crate::bootstrap::BOOTSTRAP_PATH,
            post(|State(app): State<SharedApp>| async move {
                json_answer(crate::bootstrap::BootstrapView::of(&app))
            }),
        )
        // The forwarded client request keeps the id the receiving node gave it.
        .route(
            FORWARD_PATH,
            post(forwarded).layer(axum::middleware::from_fn(api::request_id::middleware)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(PEER_BODY_BYTES_MAX))
        // Inside the secret check: a caller without the secret learns nothing, a peer of
        // another build learns why it is refused.
        .route_layer(axum::middleware::from_fn(crate::peer_protocol::require))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::cluster_secret::require,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app.metrics.http.clone(),
            crate::metrics::track,
        ))
        .with_state(app)
}

/// The answer of a peer route that is not Raft's (status, membership, forwarding): JSON.
fn json_answer<T: Serialize>(r: T) -> Response {
    (StatusCode::OK, Json(r)).into_response()
}

/// A Raft RPC's answer, encoded: the answer in binary, or openraft's error as JSON text
/// inside it. The error nests (`AnyError` has a `source`), and postcard has no depth limit, so
/// a binary one would let whatever answers at a peer's address overflow the caller's stack
/// with a few bytes per level; serde_json stops at 128 levels. The answers themselves do not
/// nest.
fn rpc_answer<T: Serialize, E: Serialize>(r: Result<T, E>) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, RPC_CONTENT_TYPE)],
        rpc_answer_body(r),
    )
        .into_response()
}

/// The body of [`rpc_answer`], which is also what a link answers an append with.
pub(crate) fn rpc_answer_body<T: Serialize, E: Serialize>(r: Result<T, E>) -> Vec<u8> {
    // An error that does not serialize (none of openraft's should) reaches the caller as an
    // answer it cannot decode: a network error, never a panic here.
    let wire: Result<T, String> = r.map_err(|e| serde_json::to_string(&e).unwrap_or_default());
    raft_store::codec::encode(&wire)
}

/// The answer of [`rpc_answer`], decoded.
fn decode_rpc_answer<T: DeserializeOwned, E: DeserializeOwned>(
    body: &[u8],
) -> Result<Result<T, E>, String> {
    match raft_store::codec::decode::<Result<T, String>>(body)? {
        Ok(answer) => Ok(Ok(answer)),
        Err(json) => serde_json::from_str(&json)
            .map(Err)
            .map_err(|e| format!("a peer's error that does not decode: {e}")),
    }
}

/// A Raft RPC request, decoded; a body that is not one is a 400 and reaches nothing.
fn parse_rpc<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    raft_store::codec::decode(body)
        .map_err(|e| ApiError::bad_request(format!("not a peer request of this build: {e}")))
}

async fn vote(State(app): State<SharedApp>, body: Bytes) -> Result<Response, ApiError> {
    let req: VoteRequest<NodeId> = parse_rpc(&body)?;
    let started = Instant::now();
    let answer = app.raft.vote(req).await;
    app.metrics.raft_path.handled("vote", started.elapsed());
    Ok(rpc_answer(answer))
}

/// A PreVote question (`crate::prevote`): answered from this node's state, which it leaves
/// as it is. A node whose Raft stopped answers 503, which the asker takes for a no.
async fn prevote(State(app): State<SharedApp>, body: Bytes) -> Result<Response, ApiError> {
    let req: crate::prevote::PreVoteRequest = parse_rpc(&body)?;
    let answer = crate::prevote::answer(&app, &req)
        .await
        .map_err(|e| ApiError::unavailable(format!("Raft stopped: {e}")))?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, RPC_CONTENT_TYPE)],
        raft_store::codec::encode(&answer),
    )
        .into_response())
}

/// A snapshot chunk from the leader. openraft 0.9 writes a chunk at whatever offset it names
/// within the stream of the same snapshot id, even past the bytes received so far. A chunk
/// delayed in the network from an earlier attempt (say the last one, retried before this node
/// restarted) can then land after a new attempt's first chunks, leave a hole of zeros and
/// complete the snapshot: this node would install garbage. So a chunk that would leave a hole
/// is refused as a mismatch, and the leader starts the stream again from offset 0
/// (found by the simulation at de64f83).
///
/// Each chunk carries the CRC-32C of its data (`x-uniqlog-chunk-crc32c`); a chunk damaged on
/// the way is refused before it is written, and the leader sends it again.
async fn snapshot(
    State(app): State<SharedApp>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: InstallSnapshotRequest<TypeConfig> = parse_rpc(&body)?;
    let sent_crc = headers
        .get(CHUNK_CRC_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if sent_crc != Some(crc32c::crc32c(&req.data)) {
        tracing::warn!(snapshot = %req.meta.snapshot_id, offset = req.offset, "refused a snapshot chunk whose checksum does not match its data");
        return Err(ApiError::bad_request(
            "snapshot chunk without its checksum, or damaged on the way",
        ));
    }
    let mut received = app.runtime.snapshot_received.lock().await;
    let id = req.meta.snapshot_id.clone();
    let written = match &*received {
        Some(r) if r.id == id => r.written,
        _ => 0,
    };
    if req.offset > written {
        tracing::warn!(snapshot = %id, offset = req.offset, written, "refused a snapshot chunk that would leave a hole");
        let mismatch = openraft::error::SnapshotMismatch {
            expect: openraft::SnapshotSegmentId {
                id: id.clone(),
                offset: written,
            },
            got: openraft::SnapshotSegmentId {
                id,
                offset: req.offset,
            },
        };
        let refused: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
            mismatch,
        )));
        return Ok(rpc_answer(refused));
    }
    let end = req.offset + req.data.len() as u64;
    let done = req.done;
    let vote = req.vote;
    let started = Instant::now();
    let res = app.raft.install_snapshot(req).await;
    app.metrics.raft_path.handled("snapshot", started.elapsed());
    // A leader's chunk accepted: contact, which openraft records only at the last chunk.
    if matches!(&res, Ok(r) if vote.committed && vote >= r.vote) {
        app.runtime.snapshot_contact.heard();
    }
    *received = match (&res, done) {
        (Ok(_), false) => Some(SnapshotReceipt {
            id,
            written: written.max(end),
        }),
        (Ok(_), true) => None,
        // openraft refused it: its stream did not take this chunk.
        (Err(_), _) => received.take().filter(|r| r.id == id),
    };
    Ok(rpc_answer(res))
}

/// A follower hands an operation to this node, which must be the leader: one hop only.
async fn forwarded(State(app): State<SharedApp>, body: Bytes) -> Result<Response, ApiError> {
    let f: Forwarded = parse_rpc(&body)?;
    let timeout = Duration::from_millis(f.timeout_ms.min(app.settings.limits.request_timeout_ms));
    let started = Instant::now();
    app.leads_term(f.term, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    let reply = app.execute_local(f.op, left).await?;
    Ok(json_answer(reply))
}

/// openraft's network: one [`PeerClient`] per target.
pub struct PeerNetwork {
    pub transport: Arc<dyn Transport>,
    pub cluster_secret: Option<String>,
    /// Which peers answer, shared by every client of this node.
    pub reachability: Arc<Reachability>,
    pub metrics: RaftPathMetrics,
    /// This node's own log's durable mark, which every follower's answer to an append waits
    /// for (`raft_store::LocalDurable`).
    pub durable: LocalDurable,
}

impl PeerNetwork {
    /// `durable` comes from `LogStore::overlap_leader_fsync`: the leader reports its own
    /// appends flushed before its fsync, and this network keeps that from counting by
    /// holding each follower's answer until the leader's log is durable as far.
    pub fn new(
        transport: Arc<dyn Transport>,
        cluster_secret: Option<String>,
        metrics: RaftPathMetrics,
        durable: LocalDurable,
    ) -> Self {
        PeerNetwork {
            transport,
            cluster_secret,
            reachability: Arc::default(),
            metrics,
            durable,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            cluster_secret: self.cluster_secret.clone(),
            reachability: self.reachability.clone(),
            metrics: self.metrics.clone(),
            durable: self.durable.clone(),
            link: Default::default(),
        }
    }
}

/// Peers this node cannot reach, with how many calls to each failed in a row. openraft logs
/// every failed call (heartbeats: ten a second); the operator needs to know when a peer went
/// away and when it came back. So a peer that stops answering is one WARN, and its return
/// one INFO with the count of failed calls; openraft's own lines stay off by default.
#[derive(Default)]
pub struct Reachability {
    failures: std::sync::Mutex<std::collections::BTreeMap<NodeId, u64>>,
}

impl Reachability {
    fn failed(&self, target: NodeId, addr: &str, error: &dyn std::fmt::Display) {
        let mut f = self.failures.lock().expect("reachability lock");
        let n = f.entry(target).or_insert(0);
        if *n == 0 {
            tracing::warn!(peer = target, addr, %error, "peer unreachable");
        }
        *n += 1;
    }

    fn answered(&self, target: NodeId, addr: &str) {
        let mut f = self.failures.lock().expect("reachability lock");
        if let Some(n) = f.remove(&target) {
            tracing::info!(
                peer = target,
                addr,
                failed_calls = n,
                "peer reachable again"
            );
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    transport: Arc<dyn Transport>,
    cluster_secret: Option<String>,
    reachability: Arc<Reachability>,
    metrics: RaftPathMetrics,
    durable: LocalDurable,
    /// The link appends travel on (`api::link`), opened at the first append and again after
    /// any call on it failed. In a mutex only to make the client `Sync` as openraft wants (an
    /// upgraded connection is not); it is reached through `&mut self`, never locked.
    link: std::sync::Mutex<Option<Box<dyn FrameLink>>>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.send(path, raft_store::codec::encode(req), option)
            .await
    }

    async fn send<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.send_request(self.request(path, body), option).await
    }

    async fn send_request<Resp, E>(
        &self,
        req: HttpRequest,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let resp = match self
            .transport
            .send(&self.addr, req, option.hard_ttl())
            .await
        {
            Ok(resp) => resp,
            Err(e) => return Err(self.lost(e)),
        };
        self.reachability.answered(self.target, &self.addr);
        if resp.status != 200 {
            return Err(self.refused(resp));
        }
        self.decode(&resp.body)
    }

    /// An append over the link, opened first if there is none. The link is put back only
    /// after a whole call: a call that failed, or that openraft gave up on before it ended,
    /// leaves the link's bytes in an unknown state, and the link goes with it.
    async fn append_over_link<Resp, E>(
        &mut self,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let started = Instant::now();
        let held = self
            .link
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut link = match held {
            Some(link) => link,
            None => {
                let req = link_request(self.cluster_secret.as_deref());
                match self
                    .transport
                    .open_link(&self.addr, req, option.hard_ttl())
                    .await
                {
                    Ok(Opened::Link(link)) => link,
                    Ok(Opened::Refused(resp)) => {
                        self.reachability.answered(self.target, &self.addr);
                        return Err(self.refused(resp));
                    }
                    Err(e) => return Err(self.lost(e)),
                }
            }
        };
        let left = option.hard_ttl().saturating_sub(started.elapsed());
        match link.call(body, left).await {
            Ok(answer) => {
                *self.link.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(link);
                self.reachability.answered(self.target, &self.addr);
                self.decode(&answer)
            }
            Err(e) => Err(self.lost(e)),
        }
    }

    /// A call that got no answer: unreachable if nothing was sent, a network error otherwise.
    fn lost<E>(&self, e: TransportError) -> RPCError<NodeId, Node, RaftError<NodeId, E>>
    where
        E: std::error::Error,
    {
        self.reachability.failed(self.target, &self.addr, &e);
        if e.nothing_sent() {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }

    /// A peer's HTTP answer other than 200, with a line for the operator when it names a
    /// wrong cluster secret or another peer protocol.
    fn refused<E: std::error::Error>(
        &self,
        resp: HttpResponse,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        if resp.status == 401 {
            tracing::error!(
                peer = self.target,
                "peer refused our cluster secret: check [auth] cluster_secret on both"
            );
        }
        if resp.status == 400
            && resp
                .body
                .windows(22)
                .any(|w| w == b"peer_protocol_mismatch")
        {
            tracing::error!(
                peer = self.target,
                ours = crate::peer_protocol::VERSION,
                "peer refused our peer protocol version: run the same uniqlog build on every node"
            );
        }
        let e = std::io::Error::other(format!(
            "peer {} answered {}: {}",
            self.target,
            resp.status,
            String::from_utf8_lossy(&resp.body)
        ));
        RPCError::Network(NetworkError::new(&e))
    }

    /// A Raft answer's body, decoded ([`rpc_answer_body`]).
    fn decode<Resp, E>(&self, body: &[u8]) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = decode_rpc_answer(body)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The last log id of `rpc` (its entries, or the entry before them) below `end`, the end of
/// what this leader's log holds durably: what a follower's answer may confirm to openraft
/// when the leader's own fsync lags. None when not even `rpc`'s first position is durable.
fn durable_prefix(
    rpc: &AppendEntriesRequest<TypeConfig>,
    end: u64,
) -> Option<openraft::LogId<NodeId>> {
    rpc.entries
        .iter()
        .map(|e| e.log_id)
        .rev()
        .chain(rpc.prev_log_id)
        .find(|id| id.index < end)
}

/// A binary peer request to `path`: the content type, the cluster secret's signature and this
/// build's protocol version, as every peer route requires them.
pub(crate) fn peer_request(path: &str, body: Vec<u8>, cluster_secret: Option<&str>) -> HttpRequest {
    let mut req = HttpRequest::post(path, body);
    req.headers.push((
        axum::http::header::CONTENT_TYPE,
        RPC_CONTENT_TYPE.to_string(),
    ));
    crate::cluster_secret::sign(&mut req, cluster_secret);
    crate::peer_protocol::stamp(&mut req);
    req
}

/// The upgrade that opens an append link: a peer request like any other, without a body.
fn link_request(cluster_secret: Option<&str>) -> HttpRequest {
    let mut req = HttpRequest::get(APPEND_PATH);
    crate::cluster_secret::sign(&mut req, cluster_secret);
    crate::peer_protocol::stamp(&mut req);
    req
}

impl PeerClient {
    fn request(&self, path: &str, body: Vec<u8>) -> HttpRequest {
        peer_request(path, body, self.cluster_secret.as_deref())
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let body = raft_store::codec::encode(&rpc);
        if body.len() > APPEND_BATCH_BYTES_MAX && rpc.entries.len() > 1 {
            let hint = (rpc.entries.len() / 2) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let kind = rpc_kind("append", rpc.entries.len());
        let last = rpc
            .entries
            .last()
            .map(|e| e.log_id)
            .or(rpc.prev_log_id)
            .map(|l| l.index);
        let unreachable = |e: raft_store::StoreError| RPCError::Unreachable(Unreachable::new(&e));
        let started = Instant::now();
        // No follower or learner hears of a commit this leader's log does not hold durably:
        // a single voter commits on its own early report, before its fsync ends.
        if let Some(c) = rpc.leader_commit {
            self.durable.through(c.index).await.map_err(unreachable)?;
        }
        let sent = Instant::now();
        let answer = self.append_over_link(body, &option).await?;
        // Only answers: a refused connection (near 0) or a timeout (the deadline) would
        // skew the mean that `bench/breakdown.sh` reads as the round trip.
        self.metrics.sent(kind, sent.elapsed());
        // What the answer tells openraft the follower holds counts toward a quorum that
        // includes this leader, which reported its own appends flushed before its fsync
        // ended: so it reaches openraft only once this log is durable as far.
        let confirmed = match &answer {
            AppendEntriesResponse::Success => last,
            AppendEntriesResponse::PartialSuccess(matching) => matching.map(|l| l.index),
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        };
        let Some(index) = confirmed else {
            return Ok(answer);
        };
        // openraft drops the whole answer if this call outlives its deadline; a leader whose
        // fsync is slower than that would then never commit under steady load. So wait at
        // most until the soft deadline, then confirm only what this log holds by then.
        let budget = option.soft_ttl().saturating_sub(started.elapsed());
        match tokio::time::timeout(budget, self.durable.through(index)).await {
            Ok(done) => done.map_err(unreachable).map(|()| answer),
            Err(_) => match durable_prefix(&rpc, self.durable.end()) {
                Some(held) => Ok(AppendEntriesResponse::PartialSuccess(Some(held))),
                None => Err(unreachable(raft_store::StoreError::Stopped)),
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let crc = crc32c::crc32c(&rpc.data);
        let body = raft_store::codec::encode(&rpc);
        let mut req = self.request(SNAPSHOT_PATH, body);
        req.headers.push((
            axum::http::HeaderName::from_static(CHUNK_CRC_HEADER),
            crc.to_string(),
        ));
        let started = Instant::now();
        let answer = self.send_request(req, &option).await;
        // Only answers: a refused connection (near 0) or a timeout (the deadline) would
        // skew the mean that `bench/breakdown.sh` reads as the round trip.
        if answer.is_ok() {
            self.metrics.sent("snapshot", started.elapsed());
        }
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let started = Instant::now();
        let answer = self.call(VOTE_PATH, &rpc, &option).await;
        // Only answers: a refused connection (near 0) or a timeout (the deadline) would
        // skew the mean that `bench/breakdown.sh` reads as the round trip.
        if answer.is_ok() {
            self.metrics.sent("vote", started.elapsed());
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::VoteResponse;

    /// An error answer nested far deeper than any real one (what a rogue process at a peer's
    /// address could send in a few bytes per level) is refused, not decoded until the stack
    /// overflows; a real error and a real answer decode.
    #[test]
    fn a_peer_error_nested_without_end_is_refused_not_followed() {
        type Answer = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        let body = raft_store::codec::encode(&Err::<VoteResponse<NodeId>, String>(deep));
        assert!(decode_rpc_answer::<VoteResponse<NodeId>, RaftError<NodeId>>(&body).is_err());

        let real: Answer = Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let body = rpc_answer(real.clone()).into_body();
        let bytes = futures_bytes(body);
        let back: Answer = decode_rpc_answer(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{real:?}"));

        let ok: Answer = Ok(VoteResponse::new(openraft::Vote::new(3, 1), None, true));
        let bytes = futures_bytes(rpc_answer(ok.clone()).into_body());
        let back: Answer = decode_rpc_answer(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ok:?}"));
    }

    /// A follower's answer is confirmed to openraft only as far as the leader's own log is
    /// durable: the last position of the request below the durable end.
    #[test]
    fn an_answer_confirms_no_more_than_the_leader_holds_durably() {
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
        let id = |i| LogId::new(CommittedLeaderId::new(2, 1), i);
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(id(4)),
            entries: (5..=8)
                .map(|i| Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        };
        assert_eq!(durable_prefix(&rpc, 100), Some(id(8)));
        assert_eq!(durable_prefix(&rpc, 7), Some(id(6)));
        assert_eq!(durable_prefix(&rpc, 5), Some(id(4)), "only the match point");
        assert_eq!(durable_prefix(&rpc, 4), None);
        let from_start = AppendEntriesRequest::<TypeConfig> {
            prev_log_id: None,
            entries: Vec::new(),
            ..rpc
        };
        assert_eq!(durable_prefix(&from_start, 0), None);
    }

    fn futures_bytes(body: axum::body::Body) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(body, usize::MAX))
            .unwrap()
    }
}
