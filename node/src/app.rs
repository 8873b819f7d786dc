//! The node as the HTTP layer sees it, and the leader-side operations that a follower
//! forwards: writes, read-index for linearizable reads, and membership changes.
//!
//! Forwarding is one hop with what is left of the caller's deadline: the leader executes
//! locally or answers 503, it never forwards again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, Raft};
use raft_store::rules::Rules;
use raft_store::{
    Answer, AppendRequest, Node, NodeId, Outcome, Rejection, Request, RulesState, StateReader,
    TypeConfig,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::limits::Limits;
use api::error::{ApiError, ErrorBody};
use api::transport::Transport;

pub type SharedApp = Arc<App>;

/// The node as the routes see it: its place in the Raft group (the fields here), what the
/// config says ([`Settings`]), and what it keeps while it serves ([`Runtime`]). Built by
/// [`App::new`], the one constructor.
pub struct App {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub reader: StateReader,
    /// Whether this node's log still takes writes (a failed fsync ends it).
    pub log_durable: raft_store::LocalDurable,
    /// The free space writes need on this node's data disk.
    pub disk: raft_store::DiskSpace,
    /// To the other nodes (forwarding, membership checks, the dashboard's peers).
    pub transport: Arc<dyn Transport>,
    /// Group commit of client requests into Raft entries.
    pub proposer: crate::propose::Proposer,
    /// What `/metrics` reports ([`crate::metrics`]).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    pub settings: Settings,
    pub runtime: Runtime,
}

/// What the config says, fixed while the node runs.
pub struct Settings {
    pub limits: Limits,
    /// The config's node list: what `cluster init` bootstraps.
    pub initial_members: BTreeMap<NodeId, Node>,
    /// The config's rules: what `cluster init` proposes as the first rules entry.
    pub config_rules: Rules,
    /// `[users]`: password hashing cost, activation tokens.
    pub users: crate::users::config::UsersConfig,
    /// Required on every peer RPC when set (`[auth] cluster_secret`).
    pub cluster_secret: Option<String>,
    /// Client tokens and roles (`[auth]`); off when no token is listed.
    pub auth: crate::auth::Auth,
    /// Every listener is loopback and auth is off: answer only requests addressed to a
    /// loopback name ([`api::host_check`]).
    pub loopback_hosts_only: bool,
}

/// What the node keeps while it serves, each part for the module named beside it.
pub struct Runtime {
    /// Password hashes running at once, at most ([`password_hashing_slots`]); `users`.
    pub password_hashing: tokio::sync::Semaphore,
    /// The snapshot being received from the leader (`peer::snapshot`).
    pub snapshot_received: tokio::sync::Mutex<Option<crate::peer::SnapshotReceipt>>,
    /// When a leader's snapshot chunk was last accepted (`crate::prevote`).
    pub snapshot_contact: crate::prevote::SnapshotContact,
    /// Set when this node finds it was removed from the cluster ([`crate::removal`]).
    pub removed: std::sync::OnceLock<String>,
    /// When this process started serving: `uptime_ms` in the status, by which a rolling
    /// restart sees that a node came back.
    pub started: Instant,
    /// One backup at a time (`routes::backup`).
    pub backup_slot: Arc<tokio::sync::Semaphore>,
    /// The latest 409s this node answered, for the dashboard (`crate::conflicts`).
    pub recent_conflicts: crate::conflicts::ConflictRing,
    /// The last count of owned keys per uniq set (`routes::uniq`).
    pub uniq_counts: tokio::sync::Mutex<Option<crate::routes::uniq::UniqCounts>>,
    /// Anonymous sign-up flow requests, per client ([`crate::rate_limit`]).
    pub anonymous_limiter: crate::rate_limit::RateLimiter,
    /// Event streams and long-polls open at once, at most `limits.streams_max`.
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl Runtime {
    fn new(limits: &Limits) -> Runtime {
        Runtime {
            password_hashing: tokio::sync::Semaphore::new(password_hashing_slots()),
            snapshot_received: tokio::sync::Mutex::new(None),
            snapshot_contact: Default::default(),
            removed: std::sync::OnceLock::new(),
            started: Instant::now(),
            backup_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            recent_conflicts: Default::default(),
            uniq_counts: Default::default(),
            anonymous_limiter: crate::rate_limit::RateLimiter::new(
                limits.anonymous_requests_per_minute,
            ),
            streams: Arc::new(tokio::sync::Semaphore::new(limits.streams_max)),
        }
    }
}

/// The node's place in the Raft group, as [`App::new`] takes it.
pub struct Core {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    pub reader: StateReader,
    pub log_durable: raft_store::LocalDurable,
    pub disk: raft_store::DiskSpace,
    pub transport: Arc<dyn Transport>,
    pub proposer: crate::propose::Proposer,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
}

impl App {
    pub fn new(core: Core, settings: Settings) -> SharedApp {
        let Core {
            id,
            raft,
            reader,
            log_durable,
            disk,
            transport,
            proposer,
            metrics,
        } = core;
        Arc::new(App {
            id,
            raft,
            reader,
            log_durable,
            disk,
            transport,
            proposer,
            metrics,
            runtime: Runtime::new(&settings.limits),
            settings,
        })
    }
}

/// How many password hashes a node runs at once: one per core, at most 8 (each takes
/// `password_memory_kib`). Two in the simulation, where the host's cores must not matter.
pub fn password_hashing_slots() -> usize {
    #[cfg(madsim)]
    {
        2
    }
    #[cfg(not(madsim))]
    {
        std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
    }
}

/// An operation only the leader can carry out. Forwarded in the log's binary encoding
/// (`raft_store::codec`), so externally tagged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderOp {
    Write { request: Request },
    ReadIndex,
    AddLearner { id: NodeId, addr: String },
    ChangeMembership { voters: BTreeSet<NodeId> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LeaderReply {
    Written {
        answer: Answer,
        /// The entry that carried the write (absent from builds before it was sent).
        #[serde(default)]
        log_index: u64,
    },
    ReadIndex {
        index: u64,
    },
    Membership {
        log_index: u64,
    },
}

/// Body of the internal forwarding route.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub op: LeaderOp,
    pub timeout_ms: u64,
    /// The term in which the forwarding node saw the receiver lead: the receiver runs the
    /// operation only as that term's leader (`App::leads_term`).
    pub term: u64,
}

pub const FORWARD_PATH: &str = "/internal/v1/leader";

/// What `decide` makes of `rx`'s value, as soon as it makes something of it: `None` if
/// `deadline` passes first; 503 if the sender is gone (Raft stopped: this node is shutting
/// down, and nothing more will run on it).
async fn watch_until<V, T>(
    rx: &mut tokio::sync::watch::Receiver<V>,
    deadline: Instant,
    mut decide: impl FnMut(&V) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    loop {
        if let Some(found) = decide(&rx.borrow_and_update()) {
            return Ok(Some(found));
        }
        // madsim's tokio has no `timeout_at`: wait for what is left until the deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(ApiError::unavailable("this node is shutting down")),
            Err(_) => return Ok(None),
        }
    }
}

/// How many times a request is prepared again when the rules change under it.
const RULES_RETRIES_MAX: usize = 5;

impl api::extract::BodyLimit for App {
    fn body_bytes_max(&self) -> usize {
        self.settings.limits.body_bytes_max
    }
}

impl App {
    /// A place among the open event streams and long-polls, or 429.
    pub fn stream_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.runtime
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::overloaded(format!(
                "this node already serves {} event streams and long-polls (limits.streams_max); \
                 retry later or ask another node",
                self.settings.limits.streams_max
            ))
            })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.limits.request_timeout_ms)
    }

    /// Run `op` on the leader, here or one hop away.
    pub async fn execute(&self, op: LeaderOp, timeout: Duration) -> Result<LeaderReply, ApiError> {
        let deadline = Instant::now() + timeout;
        let (leader, addr, term) = self.wait_for_leader(deadline).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if leader == self.id {
            return self.execute_local(op, left).await;
        }
        self.forward(&addr, term, op, left).await
    }

    /// Wait (bounded) until this node knows a leader and its address; returns them with the
    /// term it leads.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<(NodeId, String, u64), ApiError> {
        let known = watch_until(&mut self.raft.metrics(), deadline, |m| {
            let leader = m.current_leader?;
            let node = m.membership_config.membership().get_node(&leader)?;
            Some((leader, node.addr.clone(), m.current_term))
        })
        .await?;
        known.ok_or_else(|| {
            ApiError::unavailable(
                "no leader is known: the cluster is electing, not initialized, or this node is cut off",
            )
        })
    }

    /// Whether this node leads `term`, in which a forwarding node saw it lead: wait (bounded)
    /// until its own view reaches that term, then answer. Refusing means it has moved past
    /// that term for good (terms only grow), so a copy of the same forwarded request arriving
    /// later is refused too: an answer of "not applied" stays true. Without the term, a node
    /// that refused a request as a follower could run a late copy of it once leader again
    /// (found by the simulation at 7499e2f, five nodes, forwarded requests delivered twice;
    /// `node/tests/cluster.rs` keeps the case).
    pub(crate) async fn leads_term(&self, term: u64, wait: Duration) -> Result<(), ApiError> {
        let leads = watch_until(&mut self.raft.metrics(), Instant::now() + wait, |m| {
            let reached =
                m.current_term > term || (m.current_term == term && m.current_leader.is_some());
            reached.then(|| m.current_term == term && m.current_leader == Some(self.id))
        })
        .await?;
        match leads {
            Some(true) => Ok(()),
            Some(false) => Err(ApiError::unavailable(
                "the forwarded-to node is no longer the leader",
            )),
            // It may still reach that term as its leader and then run a late copy.
            None => Err(ApiError::outcome_unknown(format!(
                "the forwarded-to node did not reach term {term} in time"
            ))),
        }
    }

    async fn forward(
        &self,
        addr: &str,
        term: u64,
        op: LeaderOp,
        left: Duration,
    ) -> Result<LeaderReply, ApiError> {
        let is_write = matches!(op, LeaderOp::Write { .. });
        if is_write {
            self.check_disk()?;
        }
        // Binary, like the entry the leader will make of it: the events are parsed and
        // validated once, here, and not encoded as JSON again (issue 25).
        let body = raft_store::codec::encode(&Forwarded {
            op,
            timeout_ms: left.as_millis() as u64,
            term,
        });
        // A little slack so the leader's own timeout answers first. Fault points: a slow
        // forward, and one that gives up before any answer can come.
        if api::runtime::buggify(0.05) {
            tokio::time::sleep(api::runtime::buggify_delay()).await;
        }
        let wait = if api::runtime::buggify(0.02) {
            Duration::from_millis(1)
        } else {
            left + Duration::from_millis(200)
        };
        // The leader serves this on its peer router, which requires the cluster secret.
        let mut req =
            crate::peer::peer_request(FORWARD_PATH, body, self.settings.cluster_secret.as_deref());
        if let Some(id) = api::request_id::current() {
            req.headers
                .push((http::HeaderName::from_static(api::request_id::HEADER), id));
        }
        match self.transport.send(addr, req, wait).await {
            Ok(resp) if resp.status == 200 => {
                let reply: LeaderReply = serde_json::from_slice(&resp.body)
                    .map_err(|e| ApiError::internal(format!("bad answer from the leader: {e}")))?;
                if let LeaderReply::Written { log_index, .. } = &reply {
                    tracing::debug!(
                        target: api::request_id::TARGET,
                        leader = addr,
                        log_index,
                        "committed by the leader"
                    );
                }
                Ok(reply)
            }
            Ok(resp) => match serde_json::from_slice::<ErrorBody>(&resp.body) {
                Ok(body) => Err(ApiError::Forwarded {
                    status: resp.status,
                    body,
                }),
                Err(_) if is_write => Err(ApiError::outcome_unknown(format!(
                    "the leader answered {} without an error body",
                    resp.status
                ))),
                Err(_) => Err(ApiError::unavailable(format!(
                    "the leader answered {}",
                    resp.status
                ))),
            },
            Err(e) if e.nothing_sent() || !is_write => Err(ApiError::unavailable(format!(
                "forwarding to the leader failed: {e}"
            ))),
            Err(e) => Err(ApiError::outcome_unknown(format!(
                "forwarded to the leader but got no answer: {e}"
            ))),
        }
    }

    /// Run `op` on this node, which must be the leader.
    pub async fn execute_local(
        &self,
        op: LeaderOp,
        timeout: Duration,
    ) -> Result<LeaderReply, ApiError> {
        match op {
            LeaderOp::Write { request } => self.propose(request, timeout).await,
            LeaderOp::ReadIndex => {
                let res = tokio::time::timeout(timeout, self.raft.ensure_linearizable())
                    .await
                    .map_err(|_| ApiError::unavailable("could not confirm leadership in time"))?;
                let log_id =
                    res.map_err(|e| ApiError::unavailable(format!("not the leader: {e}")))?;
                // openraft's read index is max(committed, this leader's first entry). A leader
                // re-established at start-up from its committed vote knows only the commit
                // index it had made durable, which can be behind what its previous life
                // committed and acknowledged (found by the simulation at 556fade: a full
                // power cut right after an ack). Every acknowledged write is in the leader's log, so its last
                // index is a safe read index; it costs waiting for entries in flight.
                let last_log = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
                Ok(LeaderReply::ReadIndex {
                    index: log_id.map_or(0, |l| l.index).max(last_log),
                })
            }
            LeaderOp::AddLearner { id, addr } => {
                let fut = self.raft.add_learner(id, Node::new(addr), false);
                membership_change(fut, timeout).await
            }
            LeaderOp::ChangeMembership { voters } => {
                let change = ChangeMembers::ReplaceAllVoters(voters);
                membership_change(self.raft.change_membership(change, false), timeout).await
            }
        }
    }

    /// Propose one request and wait for its own outcome: committed on a quorum and applied
    /// here. Concurrent requests share entries ([`crate::propose`]).
    #[tracing::instrument(level = "debug", skip_all)]
    async fn propose(&self, request: Request, timeout: Duration) -> Result<LeaderReply, ApiError> {
        self.check_disk()?;
        let (answer, log_index) = self.proposer.propose(request, timeout).await?;
        // In the request's span: with the request id, this joins the receiving node's log to
        // the leader's, and both to the entry every node applies.
        tracing::debug!(target: api::request_id::TARGET, log_index, "committed");
        Ok(LeaderReply::Written { answer, log_index })
    }

    /// The replicated rules as this node has applied them.
    pub async fn rules(&self) -> Result<RulesState, ApiError> {
        Ok(RulesState::clone(&*self.rules_shared().await?))
    }

    /// The rules as [`App::rules`], shared: from memory unless they changed since last read.
    pub async fn rules_shared(&self) -> Result<Arc<RulesState>, ApiError> {
        if let Some(rules) = self.reader.cached_rules() {
            return Ok(rules);
        }
        let reader = self.reader.clone();
        raft_store::blocking(move || reader.rules())
            .await
            .map_err(crate::errors::api_error)
    }

    /// Refuse a write while this node's disk is nearly full: better a 503 now than a commit
    /// that fails half way and stops the node.
    fn check_disk(&self) -> Result<(), ApiError> {
        self.disk
            .check(self.settings.limits.disk_free_min_bytes)
            .map_err(|low| ApiError::unavailable(format!("node {}: {low}", self.id)))
    }

    /// Propose one request and return its answer. Both this node and the leader must have
    /// room for it: the leader checks in `propose`, a follower before it forwards.
    pub async fn write(&self, request: Request, timeout: Duration) -> Result<Answer, ApiError> {
        match self.execute(LeaderOp::Write { request }, timeout).await? {
            LeaderReply::Written { answer, .. } => Ok(answer),
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Prepare an append under the rules in force (uniq keys are computed here, on the
    /// receiving node) and propose it. If the rules changed between preparing and applying,
    /// apply refuses it unapplied; it is prepared again under the new rules.
    pub async fn append(
        &self,
        prepare: impl Fn(&RulesState) -> Result<AppendRequest, ApiError>,
    ) -> Result<Answer, ApiError> {
        let timeout = self.request_timeout();
        let deadline = Instant::now() + timeout;
        for _ in 0..RULES_RETRIES_MAX {
            let rules = self.rules_shared().await?;
            let request = prepare(&rules)?;
            // Planted bug (simulation builds only, `raft_store::planted`): uniqueness decided
            // here, from this node's own state, instead of in apply.
            #[cfg(madsim)]
            if raft_store::planted::is(raft_store::planted::Bug::UniqInHandler) {
                if let Some(conflict) = self.planted_uniq_check(&request).await? {
                    return Ok(Answer {
                        outcome: Outcome::Conflict(conflict),
                        reply: request.reply.clone(),
                        replayed: false,
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::unavailable(
                    "no time left to propose the request; retry",
                ));
            }
            let answer = self.write(Request::Append(request), left).await?;
            match answer.outcome {
                Outcome::Rejected(Rejection::RulesChanged { .. }) => {
                    // Our applied rules are behind the leader's: catch up, then prepare again.
                    self.linearize().await?;
                }
                _ => return Ok(answer),
            }
        }
        Err(ApiError::unavailable(
            "the uniq rules kept changing while the request was prepared",
        ))
    }

    /// [`raft_store::planted::Bug::UniqInHandler`]: a taken key in this node's applied state.
    #[cfg(madsim)]
    async fn planted_uniq_check(
        &self,
        request: &AppendRequest,
    ) -> Result<Option<raft_store::Conflict>, ApiError> {
        let (reader, request) = (self.reader.clone(), request.clone());
        raft_store::blocking(move || raft_store::planted::uniq_conflict_here(&reader, &request))
            .await
            .map_err(crate::errors::api_error)
    }

    /// Wait (bounded) until this node has applied `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ApiError> {
        let applied = watch_until(&mut self.reader.applied_watch(), deadline, |a| {
            (*a >= index).then_some(())
        })
        .await?;
        applied.ok_or_else(|| ApiError::NotYetApplied {
            message: format!("this node has not applied log index {index} yet"),
        })
    }

    /// Why this node must stop, if it must: damaged data found while serving, or a fatal
    /// Raft error, such as a failed storage write or fsync. Such a node must not serve; a
    /// restart recovers it from a failed write, only a rebuild from damage.
    pub fn fatal(&self) -> Option<String> {
        if let Some(damage) = self.reader.damage() {
            return Some(damage.to_string());
        }
        if let Some(removed) = self.runtime.removed.get() {
            return Some(removed.clone());
        }
        // A leader learns of its own failed fsync only here: it reported the append flushed
        // before (`raft_store::LocalDurable`).
        if self.log_durable.has_failed() {
            return Some("writing the Raft log failed; restart the node".into());
        }
        // A failed checkpoint reaches openraft only with the next apply, which a follower may
        // not have for a while.
        if let Some(failed) = self.reader.state_file_failed() {
            return Some(failed);
        }
        self.raft
            .metrics()
            .borrow()
            .running_state
            .as_ref()
            .err()
            .map(ToString::to_string)
    }

    /// For `?consistency=linearizable`: make this node's state at least as new as any write
    /// acknowledged before the call.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        // Planted bug (simulation builds only, `raft_store::planted`): no read index.
        #[cfg(madsim)]
        if raft_store::planted::is(raft_store::planted::Bug::StaleLinearizableRead) {
            return Ok(());
        }
        let timeout = self.request_timeout();
        let deadline = Instant::now() + timeout;
        match self.execute(LeaderOp::ReadIndex, timeout).await? {
            LeaderReply::ReadIndex { index } => self.wait_applied(index, deadline).await,
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }
}

type MembershipResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Node>>>;

/// Wait (bounded) for a membership change entry to commit.
async fn membership_change(
    change: impl std::future::Future<Output = MembershipResult>,
    timeout: Duration,
) -> Result<LeaderReply, ApiError> {
    let res = tokio::time::timeout(timeout, change)
        .await
        .map_err(|_| ApiError::outcome_unknown("membership change timed out"))?;
    match res {
        Ok(resp) => Ok(LeaderReply::Membership {
            log_index: resp.log_id.index,
        }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(
            ApiError::outcome_unknown("leadership moved during the membership change"),
        ),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(
            ApiError::bad_request(format!("membership change refused: {e}")),
        ),
        Err(RaftError::Fatal(e)) => Err(ApiError::outcome_unknown(format!("raft stopped: {e}"))),
    }
}
