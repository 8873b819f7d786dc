//! The node's `/metrics` (Prometheus text format): what the HTTP layer, the group commit and
//! the storage record as they go, plus Raft's own view, read when scraped.
//!
//! Series that describe the present (term, indexes, replication, the idempotency window) are
//! set from `RaftMetrics` and the applied rules at each scrape, so they cost nothing between
//! scrapes and can never go stale. Counters and histograms are recorded where things happen.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use raft_store::StoreMetrics;

pub use api::metrics::*;

use crate::app::SharedApp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetLabels {
    set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// 10 µs to about 5 s: the stages of one write, from a loopback round trip up to a stall.
fn stage() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// The stages of a write's way through Raft, timed where each happens, so that one append's
/// latency can be taken apart from outside (`bench/breakdown.sh`): the HTTP route's own time
/// holds the leader's Raft write, which holds its log write, the replication round trip and
/// apply; the round trip holds the follower's handling, which holds its log write. What no
/// stage accounts for is the hand-offs between them. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct RaftPathMetrics {
    write: Histogram,
    sent: Family<RpcLabels, Histogram, fn() -> Histogram>,
    handled: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// The series of every kind, created once: recording one is on every RPC, and looking a
    /// label up would allocate its string each time.
    sent_by_kind: Vec<(&'static str, Histogram)>,
    handled_by_kind: Vec<(&'static str, Histogram)>,
}

/// The kinds of peer RPC that [`rpc_kind`] names.
const RPC_KINDS: [&str; 4] = ["append", "heartbeat", "vote", "snapshot"];

impl Default for RaftPathMetrics {
    fn default() -> Self {
        let sent: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage);
        let handled: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage);
        let each = |family: &Family<RpcLabels, Histogram, fn() -> Histogram>| {
            RPC_KINDS
                .iter()
                .map(|kind| {
                    let labels = RpcLabels {
                        rpc: kind.to_string(),
                    };
                    (*kind, family.get_or_create(&labels).clone())
                })
                .collect()
        };
        RaftPathMetrics {
            write: stage(),
            sent_by_kind: each(&sent),
            handled_by_kind: each(&handled),
            sent,
            handled,
        }
    }
}

/// The series of `rpc` among those created up front, else from the family.
fn observe(
    by_kind: &[(&'static str, Histogram)],
    family: &Family<RpcLabels, Histogram, fn() -> Histogram>,
    rpc: &'static str,
    took: Duration,
) {
    match by_kind.iter().find(|(kind, _)| *kind == rpc) {
        Some((_, h)) => h.observe(took.as_secs_f64()),
        None => family
            .get_or_create(&RpcLabels { rpc: rpc.into() })
            .observe(took.as_secs_f64()),
    }
}

/// The label of a peer RPC: an append without entries is a heartbeat, timed apart because
/// it carries no write and would dilute the mean of those that do.
pub fn rpc_kind(rpc: &'static str, entries: usize) -> &'static str {
    match (rpc, entries) {
        ("append", 0) => "heartbeat",
        _ => rpc,
    }
}

impl RaftPathMetrics {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "raft_write",
            "On the leader: one proposed entry, from client_write until it is committed and \
             applied here",
            Unit::Seconds,
            self.write.clone(),
        );
        r.register_with_unit(
            "peer_rpc_sent",
            "Raft RPCs to a peer that got an answer, request to answer, as the sender sees \
             them, by kind",
            Unit::Seconds,
            self.sent.clone(),
        );
        r.register_with_unit(
            "peer_rpc_handled",
            "Raft RPCs from a peer, handed to Raft until it answered (decoding and HTTP \
             excluded), by kind",
            Unit::Seconds,
            self.handled.clone(),
        );
    }

    pub fn wrote(&self, took: Duration) {
        self.write.observe(took.as_secs_f64());
    }

    pub fn sent(&self, rpc: &'static str, took: Duration) {
        observe(&self.sent_by_kind, &self.sent, rpc, took);
    }

    pub fn handled(&self, rpc: &'static str, took: Duration) {
        observe(&self.handled_by_kind, &self.handled, rpc, took);
    }
}

/// How elections start on this node (`crate::prevote`): its PreVote rounds, the elections
/// they led to, and its answers to its peers' questions. A node cut off from the others shows
/// rounds but no granted rounds and no elections; the others show refusals.
#[derive(Clone)]
pub struct ElectionMetrics {
    pub rounds: Counter,
    pub rounds_granted: Counter,
    pub elections: Counter,
    answers: Family<AnswerLabels, Counter>,
}

impl Default for ElectionMetrics {
    fn default() -> Self {
        let m = ElectionMetrics {
            rounds: Counter::default(),
            rounds_granted: Counter::default(),
            elections: Counter::default(),
            answers: Family::default(),
        };
        // Both answers show from the start, at 0.
        for answer in ["granted", "refused"] {
            drop(m.answers.get_or_create(&AnswerLabels { answer }));
        }
        m
    }
}

impl ElectionMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "prevote_rounds",
            "PreVote rounds this node started: it heard from no leader for an election timeout",
            self.rounds.clone(),
        );
        r.register(
            "prevote_rounds_granted",
            "PreVote rounds of this node that a quorum of voters granted",
            self.rounds_granted.clone(),
        );
        r.register(
            "elections_started",
            "Elections this node started (after a granted PreVote, or as the only voter)",
            self.elections.clone(),
        );
        r.register(
            "prevote_answers",
            "This node's answers to its peers' PreVote questions, granted or refused",
            self.answers.clone(),
        );
    }

    /// This node answered a peer's PreVote.
    pub fn answered(&self, granted: bool) {
        let answer = if granted { "granted" } else { "refused" };
        self.answers.get_or_create(&AnswerLabels { answer }).inc();
    }
}

/// One registry per node; every handle is shared, so recording needs no lock.
pub struct NodeMetrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub raft_path: RaftPathMetrics,
    pub elections: ElectionMetrics,
    batch_requests: Histogram,
    uniq_conflicts: Family<SetLabels, Counter>,
    term: Gauge,
    leader: Gauge,
    state: Family<StateLabels, Gauge>,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    matched_index: Family<FollowerLabels, Gauge>,
    replication_lag: Family<FollowerLabels, Gauge>,
    idempotency_window: Gauge<f64, std::sync::atomic::AtomicU64>,
    idempotency_records_max: Gauge,
    idempotency_records: Gauge,
    /// One scrape at a time: a scrape clears and refills the per-follower families.
    scrape: tokio::sync::Mutex<()>,
}

impl NodeMetrics {
    pub fn new(store: &StoreMetrics) -> Self {
        let mut m = NodeMetrics {
            registry: Registry::with_prefix("uniqlog"),
            http: HttpMetrics::default(),
            raft_path: RaftPathMetrics::default(),
            elections: ElectionMetrics::default(),
            batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            uniq_conflicts: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            state: Family::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            matched_index: Family::default(),
            replication_lag: Family::default(),
            idempotency_window: Gauge::default(),
            idempotency_records_max: Gauge::default(),
            idempotency_records: Gauge::default(),
            scrape: tokio::sync::Mutex::new(()),
        };
        let r = &mut m.registry;
        m.http.register(r);
        m.raft_path.register(r);
        m.elections.register(r);
        r.register(
            "append_batch_requests",
            "Client requests proposed together in one Raft entry (group commit)",
            m.batch_requests.clone(),
        );
        r.register(
            "uniq_conflicts",
            "409s this node answered because a uniq key had another owner, by set (the same \
             answers GET /v1/conflicts/recent lists)",
            m.uniq_conflicts.clone(),
        );
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register(
            "raft_leader",
            "Id of the leader this node knows, 0 when none",
            m.leader.clone(),
        );
        r.register(
            "raft_state",
            "1 for this node's Raft state (leader, follower, candidate, learner, shutdown).",
            m.state.clone(),
        );
        r.register(
            "raft_commit_index",
            "Highest log index this node knows committed",
            m.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Highest log index applied to this node's state machine",
            m.applied_index.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Highest index in this node's log",
            m.last_log_index.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Last index covered by this node's current snapshot, 0 when none",
            m.snapshot_index.clone(),
        );
        r.register(
            "raft_purged_index",
            "Highest index removed from this node's log, 0 when none",
            m.purged_index.clone(),
        );
        r.register(
            "raft_replication_matched_index",
            "On the leader: highest index known replicated on each follower and learner",
            m.matched_index.clone(),
        );
        r.register(
            "raft_replication_lag",
            "On the leader: entries each follower and learner is behind the leader's log",
            m.replication_lag.clone(),
        );
        r.register_with_unit(
            "idempotency_window",
            "Idempotency window in force (replicated rules)",
            Unit::Seconds,
            m.idempotency_window.clone(),
        );
        r.register(
            "idempotency_records_max",
            "Idempotency records kept at most (replicated rules)",
            m.idempotency_records_max.clone(),
        );
        r.register(
            "idempotency_records",
            "Idempotency records held by this node's state machine",
            m.idempotency_records.clone(),
        );
        store.register(&mut m.registry);
        m
    }

    /// The number of client requests one proposed entry carries.
    pub fn batch_proposed(&self, requests: usize) {
        self.batch_requests.observe(requests as f64);
    }

    /// A 409 this node answered for a key of `set` taken by another owner.
    pub fn uniq_conflict(&self, set: &str) {
        self.uniq_conflicts
            .get_or_create(&SetLabels {
                set: set.to_owned(),
            })
            .inc();
    }
}

/// `GET /metrics`: set the present-tense gauges, then encode everything.
pub async fn scrape(State(app): State<SharedApp>) -> Result<Response, api::ApiError> {
    use axum::response::IntoResponse;
    let m = &app.metrics;
    // One scrape at a time, status read inside: a scrape that waited must not write older
    // values over a newer one's.
    let _one_at_a_time = m.scrape.lock().await;
    // A node whose Raft stopped keeps its last gauges and still shows its counters: that is
    // when an operator looks at them.
    if let Ok(status) = crate::routes::cluster::cluster_status(&app).await {
        if let Ok(rules) = app.rules_shared().await {
            // Every set of the rules in force shows, at 0 until its first conflict: an alert
            // on the rate of a series that does not exist yet would never fire.
            for set in &rules.rules.uniq {
                drop(m.uniq_conflicts.get_or_create(&SetLabels {
                    set: set.name.clone(),
                }));
            }
        }
        m.set_present(&status);
    }
    let mut text = String::new();
    encode(&mut text, &m.registry).map_err(api::ApiError::internal)?;
    Ok(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

impl NodeMetrics {
    fn set_present(&self, status: &crate::wire::ClusterStatus) {
        let m = self;
        let g = |v: u64| v.min(i64::MAX as u64) as i64;
        m.term.set(g(status.term));
        m.leader.set(g(status.leader.unwrap_or(0)));
        m.state.clear();
        m.state
            .get_or_create(&StateLabels {
                state: status.role.clone(),
            })
            .set(1);
        m.commit_index.set(g(status.commit_index));
        m.applied_index.set(g(status.applied_index));
        m.last_log_index.set(g(status.last_log_index));
        m.snapshot_index.set(g(status.snapshot_index.unwrap_or(0)));
        m.purged_index.set(g(status.purged_index.unwrap_or(0)));
        m.matched_index.clear();
        m.replication_lag.clear();
        for (follower, matched) in status.replication.iter().flatten() {
            let labels = FollowerLabels {
                follower: *follower,
            };
            let matched = matched.unwrap_or(0);
            m.matched_index.get_or_create(&labels).set(g(matched));
            m.replication_lag
                .get_or_create(&labels)
                .set(g(status.last_log_index.saturating_sub(matched)));
        }
        m.idempotency_window
            .set(status.idempotency.window_ms as f64 / 1000.0);
        m.idempotency_records_max
            .set(g(status.idempotency.records_max));
        m.idempotency_records.set(g(status.idempotency.records));
    }
}
