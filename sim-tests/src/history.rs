//! What the simulated clients did and saw, what the nodes hold at the end, and the verdict of
//! the checkers (`crate::check`, one module per invariant) on them.
//!
//! The rules of judgement:
//! - a 201 (or a users command's 200) is a promise: its events are present exactly once on
//!   every node, at the offsets it named;
//! - a 409 is a definite "nothing written";
//! - anything else (a 503, a timeout, a broken connection, a refused connection) is not a
//!   promise either way: its events may be present (once) or absent;
//! - every event present belongs to a request that was sent (no phantom), and no request's
//!   events are present twice, however often it was retried under its idempotency key;
//! - every node holds identical topics;
//! - no uniq key has two owners, the owners the nodes serve are those the users topic implies,
//!   and every `email_taken` is explained by an owner at the time;
//! - Raft state seen by status polls is monotonic;
//! - no answer is a 5xx other than 503: faults make the cluster unavailable, never broken.
//!
//! Checkers read only recorded data: they draw no randomness and send nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A node's id in the cluster (1-based).
pub type NodeId = u64;

/// The offsets a 201 promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Created {
    pub first_offset: u64,
    pub last_offset: u64,
    pub log_index: u64,
}

impl Created {
    pub fn from_json(v: &Value) -> Option<Created> {
        Some(Created {
            first_offset: v.get("first_offset")?.as_u64()?,
            last_offset: v.get("last_offset")?.as_u64()?,
            log_index: v.get("log_index")?.as_u64()?,
        })
    }
}

/// What one append got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// 201 with its body.
    Ok(Created),
    /// 409 with its body: nothing was written.
    Conflict(Value),
    /// A definite answer that is not a success: 503 `unavailable` (not applied, retry is safe),
    /// another 4xx/5xx, or status 0 when the connection was refused (nothing was sent).
    Failed(u16, String),
    /// No definite answer: 503 `outcome_unknown`, a timeout, a broken connection.
    Unknown(String),
}

/// A short reason for a failed or unknown answer: the HTTP status and error code, or the kind
/// of transport error.
fn reason_of(failed: Option<(u16, &str)>, unknown: Option<&str>) -> Option<String> {
    fn code(text: &str) -> String {
        if text.starts_with("no answer") {
            return "timeout".into();
        }
        if text.starts_with("connection to") {
            return "connection broken".into();
        }
        let json = text.find('{').map_or(text, |i| &text[i..]);
        serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.split(':').next().unwrap_or(text).to_string())
    }
    match (failed, unknown) {
        (Some((0, _)), _) => Some("failed: cannot connect".into()),
        (Some((status, body)), _) => Some(format!("failed: {status} {}", code(body))),
        (None, Some(why)) => Some(format!("unknown: {}", code(why))),
        (None, None) => None,
    }
}

impl Outcome {
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Conflict(_) => "conflict",
            Outcome::Failed(..) => "failed",
            Outcome::Unknown(_) => "unknown",
        }
    }

    /// A short reason for a failed or unknown outcome.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Ok(_) | Outcome::Conflict(_) => None,
            Outcome::Failed(status, body) => reason_of(Some((*status, body)), None),
            Outcome::Unknown(why) => reason_of(None, Some(why)),
        }
    }

    /// A stable one-line rendering (for trace hashes and digests).
    pub fn render(&self) -> String {
        match self {
            Outcome::Ok(c) => format!(
                "201 {}..={} @{}",
                c.first_offset, c.last_offset, c.log_index
            ),
            Outcome::Conflict(b) => format!("409 {b}"),
            Outcome::Failed(s, b) => format!("{s} {b}"),
            Outcome::Unknown(why) => format!("unknown {why}"),
        }
    }
}

/// One append request as the client sent it. A retry under an idempotency key is another
/// `Attempt` with the same `id` (the same events) and the same `key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// Unique per logical append; event `j` of it carries `data.id = "{id}.{j}"`.
    pub id: String,
    pub client: usize,
    pub node: NodeId,
    pub topic: String,
    pub events: usize,
    /// The stream and the version it expected, for appends with `expected_version`.
    pub stream: Option<(String, u64)>,
    /// The idempotency key, if the append carried one.
    pub key: Option<String>,
    /// 0 for the first try, 1 for the first retry, ….
    pub retry: u32,
    pub outcome: Outcome,
    /// Simulated milliseconds since the start of the scenario.
    pub sent_ms: u64,
    pub answered_ms: u64,
}

impl Attempt {
    pub fn event_id(&self, j: usize) -> String {
        format!("{}.{j}", self.id)
    }
}

/// A users command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserOp {
    /// `POST /v1/users`; `username` is unique per logical sign-up (retries reuse it).
    SignUp {
        username: String,
        email: String,
        key: Option<String>,
    },
    /// `PATCH /v1/users/{user}`.
    ChangeEmail { user: String, email: String },
    /// `DELETE /v1/users/{user}`.
    Delete { user: String },
}

impl UserOp {
    /// The event type the command appends.
    pub fn event_type(&self) -> &'static str {
        match self {
            UserOp::SignUp { .. } => "AccountCreated",
            UserOp::ChangeEmail { .. } => "EmailChanged",
            UserOp::Delete { .. } => "AccountDeleted",
        }
    }

    pub fn render(&self) -> String {
        match self {
            UserOp::SignUp {
                username,
                email,
                key,
            } => format!("signup {username} {email} key={key:?}"),
            UserOp::ChangeEmail { user, email } => format!("patch {user} {email}"),
            UserOp::Delete { user } => format!("delete {user}"),
        }
    }
}

/// What a users command got back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserOutcome {
    /// 201 (sign-up) or 200: the user's id and the offset of the event in `users`.
    Done { user: String, offset: u64 },
    /// 409 with its error code (`email_taken`, `version_conflict`, …): nothing was written.
    Conflict { code: String, body: Value },
    /// 404: no such user (or deleted).
    NotFound,
    /// As [`Outcome::Failed`].
    Failed(u16, String),
    /// As [`Outcome::Unknown`].
    Unknown(String),
}

impl UserOutcome {
    pub fn reason(&self) -> Option<String> {
        match self {
            UserOutcome::Failed(status, body) => reason_of(Some((*status, body)), None),
            UserOutcome::Unknown(why) => reason_of(None, Some(why)),
            _ => None,
        }
    }

    pub fn render(&self) -> String {
        match self {
            UserOutcome::Done { user, offset } => format!("done {user} @{offset}"),
            UserOutcome::Conflict { body, .. } => format!("409 {body}"),
            UserOutcome::NotFound => "404".into(),
            UserOutcome::Failed(s, b) => format!("{s} {b}"),
            UserOutcome::Unknown(why) => format!("unknown {why}"),
        }
    }
}

/// One users command as a client sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserAttempt {
    pub client: usize,
    pub node: NodeId,
    pub op: UserOp,
    pub retry: u32,
    pub outcome: UserOutcome,
    pub sent_ms: u64,
    pub answered_ms: u64,
}

/// One `GET /v1/cluster/status` answer, taken by a poller that asks one node at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSample {
    pub node: NodeId,
    /// The node's restart epoch (bumped by every kill) when the answer arrived; samples whose
    /// epoch changed in flight are not recorded.
    pub epoch: u64,
    pub at_ms: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// One page of a topic a node served to a reader (`GET /v1/topics/{topic}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadSample {
    /// Which reader asked (each asks one page at a time).
    pub reader: usize,
    pub node: NodeId,
    /// The node's restart epoch; pages whose node was killed while they were in flight are
    /// not recorded.
    pub epoch: u64,
    pub topic: String,
    pub from: u64,
    /// Asked with `consistency=linearizable` (else the node's applied state).
    pub linearizable: bool,
    pub events: Vec<Value>,
    /// The topic's length in the state the page was read from (the page's `head`).
    pub head: u64,
    pub sent_ms: u64,
    pub answered_ms: u64,
}

/// Everything the clients recorded, each list in the order the answers arrived.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub appends: Vec<Attempt>,
    pub users: Vec<UserAttempt>,
    pub status: Vec<StatusSample>,
    pub reads: Vec<ReadSample>,
}

/// The owner of a uniq key as a node serves it (`GET /v1/uniq/{set}/{key}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub owner: String,
    pub since_offset: u64,
}

/// The final state read from the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FinalState {
    pub applied_index: u64,
    /// Per node, per topic, the events in offset order.
    pub topics: BTreeMap<NodeId, BTreeMap<String, Vec<Value>>>,
    /// Per node, per uniq key asked (`user_email`, normalized), its owner or `None` (404).
    pub uniq: BTreeMap<NodeId, BTreeMap<String, Option<Owner>>>,
    /// What the consumers (query, mail) and the provider hold, when the run had them (not in
    /// a saved history: `check-history` judges the cluster only).
    #[serde(skip)]
    pub consumers: Option<crate::check::consumers::ConsumerState>,
    /// Per node, its replicated state table by table (`GET /v1/cluster/state-hash`), taken
    /// at the same applied index as `topics`.
    pub state_hashes: BTreeMap<NodeId, api::wire::StateHash>,
}

/// The kinds of violation, one per checker (`crate::check::*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An acknowledged write is missing or not where its answer said.
    Lost,
    /// An event is present that no client sent.
    Phantom,
    /// Nodes hold different topics, or a topic's offsets or stream versions are wrong.
    Divergent,
    /// A request's events are present twice, or one key got two different answers.
    Duplicate,
    /// A uniq key with two owners, a wrong owner served, an unexplained 409.
    Uniq,
    /// Raft state or a node's leader id went backwards, or a leader named another node.
    Raft,
    /// An answer that breaks the API's promises: a 409 that wrote, a partial append, a 500.
    Answer,
    /// No leader, no convergence or no progress after the faults stopped.
    Liveness,
    /// A node served an event that is not the committed one at its offset.
    Served,
    /// The query read model differs from a replay of `users`.
    Projection,
    /// The provider holds a message too few or too many, or too many resends.
    Mail,
    /// A node found its own files damaged although no fault flipped a bit in them: its disk
    /// lost what it had acknowledged as synced, or a node wrote damage itself.
    Damage,
    /// The log's order disagrees with real time: a write ordered before one that completed
    /// earlier, a stale linearizable page, a page from the future, reads going back.
    Linearizable,
    /// A node kept serving after an fsync failed (seen by the nemesis as it injected it).
    Durability,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Lost,
        Kind::Phantom,
        Kind::Divergent,
        Kind::Duplicate,
        Kind::Uniq,
        Kind::Raft,
        Kind::Answer,
        Kind::Served,
        Kind::Liveness,
        Kind::Projection,
        Kind::Mail,
        Kind::Damage,
        Kind::Linearizable,
        Kind::Durability,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Lost => "lost",
            Kind::Phantom => "phantom",
            Kind::Divergent => "divergent",
            Kind::Duplicate => "duplicate",
            Kind::Uniq => "uniq_violation",
            Kind::Raft => "raft_violation",
            Kind::Answer => "bad_answer",
            Kind::Liveness => "liveness",
            Kind::Served => "bad_read",
            Kind::Projection => "projection",
            Kind::Mail => "mail",
            Kind::Damage => "damage",
            Kind::Linearizable => "linearizability",
            Kind::Durability => "durability",
        }
    }

    /// The checker that reports this kind: a module of `crate::check`, or `liveness` and
    /// `damage` for the end of a run (`run.rs`).
    pub fn checker(self) -> &'static str {
        match self {
            Kind::Lost => "lost",
            Kind::Phantom => "phantom",
            Kind::Divergent => "agreement",
            Kind::Duplicate => "idempotency",
            Kind::Uniq => "uniq",
            Kind::Raft => "raft_state",
            Kind::Answer => "answers",
            Kind::Liveness => "liveness",
            Kind::Served => "served",
            Kind::Projection => "projection",
            Kind::Mail => "mail",
            Kind::Damage => "damage",
            Kind::Linearizable => "linearizable",
            Kind::Durability => "nemesis",
        }
    }
}

/// One broken promise, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name().to_uppercase(), self.detail)
    }
}

/// Counts for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Append requests sent (retries included).
    pub attempted: usize,
    pub acknowledged: usize,
    pub conflicts: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Append requests that were retries under an idempotency key.
    pub retries: usize,
    /// Users commands sent (retries included), and their answers.
    pub user_ops: usize,
    pub user_done: usize,
    pub user_conflicts: usize,
    pub user_not_found: usize,
    pub user_failed: usize,
    pub user_unknown: usize,
    /// Pages readers were served (and `check::served` compared with the committed topics).
    pub reads: usize,
    /// Events in those pages.
    pub events_read: usize,
    /// Violations by kind (all must be 0).
    pub violations: BTreeMap<Kind, usize>,
    /// Failed (definite non-success) appends whose events are present anyway.
    pub failed_present: usize,
    /// Unknown appends whose events are present.
    pub unknown_present: usize,
    pub events: usize,
    pub applied_index: u64,
    /// Failed and unknown answers by reason (status and error code, or transport error).
    pub reasons: BTreeMap<String, usize>,
}

impl Report {
    pub fn count(&self, kind: Kind) -> usize {
        self.violations.get(&kind).copied().unwrap_or(0)
    }
    /// Acknowledged appends with an event missing or misplaced.
    pub fn lost(&self) -> usize {
        self.count(Kind::Lost)
    }
    pub fn divergent(&self) -> usize {
        self.count(Kind::Divergent)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "appends attempted={} acknowledged={} conflict={} failed={} unknown={} retries={} \
             users ops={} done={} conflict={} not_found={} failed={} unknown={}",
            self.attempted,
            self.acknowledged,
            self.conflicts,
            self.failed,
            self.unknown,
            self.retries,
            self.user_ops,
            self.user_done,
            self.user_conflicts,
            self.user_not_found,
            self.user_failed,
            self.user_unknown,
        )?;
        for k in Kind::ALL {
            write!(f, " {}={}", k.name(), self.count(k))?;
        }
        write!(
            f,
            " (present: failed={} unknown={}; events={} applied_index={})",
            self.failed_present, self.unknown_present, self.events, self.applied_index,
        )?;
        if !self.reasons.is_empty() {
            let reasons: Vec<String> = self
                .reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " [{}]", reasons.join(", "))?;
        }
        Ok(())
    }
}

/// The checkers' answer: the counts, and every violation found (none when all is well).
#[derive(Debug, Clone)]
pub struct Verdict {
    pub report: Report,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judge appends only (the scenarios of `tests/basic.rs`).
pub fn check(history: &[Attempt], state: &FinalState) -> Verdict {
    crate::check::check_all(
        &History {
            appends: history.to_vec(),
            ..History::default()
        },
        state,
    )
}

/// Judge everything recorded.
pub fn check_all(history: &History, state: &FinalState) -> Verdict {
    crate::check::check_all(history, state)
}
