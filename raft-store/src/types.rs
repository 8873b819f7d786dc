//! The openraft type config and the commands and answers that travel through the Raft log.
//!
//! These are internal types: the receiving node builds them from a validated HTTP request, and
//! apply turns them into a deterministic [`Outcome`]. The JSON shapes that clients see live in
//! the `api` crate and convert to these explicitly, so the log format and the public API can
//! change independently.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runtime::UniqRuntime;
use crate::snapshot::SnapshotFile;

/// Raft node id, as in `[[node]] id` of the config.
pub type NodeId = u64;

/// The cluster node record that Raft replicates in its membership: where the node listens.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// uniqlog's openraft type configuration.
    pub TypeConfig:
        D = LogCommand,
        R = LogResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = UniqRuntime,
);

/// One Raft log entry's worth of client requests, stamped by the leader that proposed it.
///
/// An entry may carry several requests (group commit); apply decides each on its own and
/// answers each with its own [`Outcome`], in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogCommand {
    /// The proposing leader's wall clock in milliseconds since the Unix epoch. Apply never
    /// reads a clock: it uses `max(timestamp_ms, previous log time)` as the log time.
    pub timestamp_ms: u64,
    /// Shared, not copied: openraft clones an entry for each follower it sends it to and
    /// for apply, and the log keeps one in its cache. Encoded as a plain sequence.
    pub requests: Arc<[Request]>,
}

impl LogCommand {
    /// Roughly the bytes this command holds: bounds batches and the log cache.
    pub fn approx_bytes(&self) -> usize {
        self.requests
            .iter()
            .map(Request::approx_bytes)
            .sum::<usize>()
            + 32
    }

    /// The events this command would append if every request were accepted.
    pub fn event_count(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| match r {
                Request::Append(a) => a.events.len() as u64,
                Request::SetRules(_) => 0,
            })
            .sum()
    }
}

impl Request {
    /// Roughly the bytes this request holds.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Request::Append(a) => {
                a.events
                    .iter()
                    .map(|e| {
                        e.data.len()
                            + e.metadata.as_ref().map_or(0, String::len)
                            + e.secret.as_ref().map_or(0, String::len)
                            + e.stream.as_ref().map_or(0, String::len)
                            + e.event_type.len()
                            + e.claims
                                .iter()
                                .map(|c| c.key.len() + c.set.len() + 16)
                                .sum::<usize>()
                            + 64
                    })
                    .sum::<usize>()
                    + a.topic.len()
                    + 64
            }
            Request::SetRules(s) => {
                s.backfill
                    .iter()
                    .map(|b| b.claims.len() * 96)
                    .sum::<usize>()
                    + 1024
            }
        }
    }
}

/// A single client request inside a [`LogCommand`]. Externally tagged (serde's default): the
/// log's binary encoding cannot read internally tagged enums.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Append(AppendRequest),
    /// Replace the replicated rules (uniq sets and idempotency settings).
    SetRules(SetRules),
}

/// Append events to one topic, all or nothing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub topic: String,
    pub events: Vec<NewEvent>,
    /// Every stream named here is checked, whether or not the request has an event for it.
    #[serde(default)]
    pub expected_version: BTreeMap<String, ExpectedVersion>,
    /// Retries with the same key (per topic) get the stored answer and append nothing.
    #[serde(default)]
    pub idempotency: Option<IdempotencyKey>,
    /// The rules version the events' uniq claims were computed under. Apply refuses claims
    /// computed under other rules ([`Rejection::RulesChanged`]); the receiving node recomputes
    /// and proposes again.
    #[serde(default)]
    pub rules_version: u64,
    /// Opaque text chosen by the receiving node (ids it generated), stored with the answer
    /// and handed back on a replay so a retry sees the first attempt's ids.
    #[serde(default)]
    pub reply: Option<String>,
}

/// An idempotency key and a fingerprint of the client's request, so that the same key with a
/// different request is recognised.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// A uniq claim of one event under one rule, with keys already normalized by the receiving
/// node: apply never runs Unicode tables.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UniqClaim {
    pub set: String,
    pub op: crate::rules::UniqOp,
    pub key: String,
    /// For `update`: the key released.
    #[serde(default)]
    pub old_key: Option<String>,
}

/// Replace the rules. `base_version` must be the version in force when apply sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SetRules {
    pub base_version: u64,
    pub rules: crate::rules::Rules,
    /// For every set that is new or changed: the claims of the topic's existing events,
    /// computed by the proposing node, replayed by apply to build the set.
    #[serde(default)]
    pub backfill: Vec<Backfill>,
}

/// The existing events' claims for one set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    pub set: String,
    /// The topic length the claims were computed at; apply refuses a stale backfill.
    pub topic_len: u64,
    pub claims: Vec<BackfillClaim>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackfillClaim {
    pub offset: u64,
    pub stream: String,
    pub claim: UniqClaim,
}

/// An event as proposed, before it has an offset.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream: Option<String>,
    /// The event's `data`, a JSON object as text. Kept as text so apply never re-encodes it
    /// and the log codec need not understand arbitrary JSON.
    pub data: String,
    /// Optional `metadata`, a JSON object as text.
    pub metadata: Option<String>,
    /// One claim per uniq rule that applies to this event, in rule order.
    #[serde(default)]
    pub claims: Vec<UniqClaim>,
    /// Secret fields (a password hash), a JSON object as text: kept with the event but never
    /// part of what readers are served.
    #[serde(default)]
    pub secret: Option<String>,
}

/// Optimistic concurrency on a stream, as in EventStoreDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no event yet (version 0).
    NoStream,
    /// The stream has exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// [`ExpectedVersion`] in a binary format, which cannot tell a number from a string without
/// being told which to expect.
#[derive(Serialize, Deserialize)]
enum BinaryVersion {
    Any,
    NoStream,
    Exact(u64),
}

/// In JSON: a number, `"no_stream"` or `"any"`. In the log's binary encoding: an enum.
impl Serialize for ExpectedVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return match *self {
                ExpectedVersion::Any => BinaryVersion::Any,
                ExpectedVersion::NoStream => BinaryVersion::NoStream,
                ExpectedVersion::Exact(v) => BinaryVersion::Exact(v),
            }
            .serialize(s);
        }
        match self {
            ExpectedVersion::Any => s.serialize_str("any"),
            ExpectedVersion::NoStream => s.serialize_str("no_stream"),
            ExpectedVersion::Exact(v) => s.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return Ok(match BinaryVersion::deserialize(d)? {
                BinaryVersion::Any => ExpectedVersion::Any,
                BinaryVersion::NoStream => ExpectedVersion::NoStream,
                BinaryVersion::Exact(v) => ExpectedVersion::Exact(v),
            });
        }
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a non-negative integer, "no_stream" or "any""#)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedVersion::Exact(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// What apply returns for one log entry: one answer per request, in order. Blank and
/// membership entries have none.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LogResponse {
    pub outcomes: Vec<Answer>,
}

/// The answer to one request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The request's `reply` text, as stored with the first attempt.
    #[serde(default)]
    pub reply: Option<String>,
    /// True when this is the stored answer of an earlier attempt with the same idempotency
    /// key: nothing was appended this time.
    #[serde(default)]
    pub replayed: bool,
}

impl Answer {
    pub fn new(outcome: Outcome) -> Self {
        Answer {
            outcome,
            reply: None,
            replayed: false,
        }
    }
}

/// The decision on one request. A conflict or rejection is an ordinary replicated outcome,
/// identical on every node, and leaves nothing behind.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Appended {
        first_offset: u64,
        last_offset: u64,
        log_index: u64,
    },
    /// New rules are in force.
    RulesSet {
        version: u64,
    },
    Conflict(Conflict),
    Rejected(Rejection),
}

/// A 409: the request was well formed but the state forbids it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "conflict", rename_all = "snake_case")]
pub enum Conflict {
    Version {
        stream: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// The key is owned by another stream.
    Uniq {
        set: String,
        key: String,
        owner: String,
    },
    /// The stream tried to release or move a key it does not own.
    UniqNotOwner {
        set: String,
        key: String,
        owner: Option<String>,
    },
    /// New rules would be violated by events already in the topic.
    RulesViolated { set: String, key: String },
}

/// A 400 (or a retry) that only the state machine can decide: it depends on replicated state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    /// The stream already belongs to another topic.
    StreamInOtherTopic { stream: String, topic: String },
    /// An event's data or metadata is not a JSON object, or its claims do not fit the rules.
    /// The receiving node validates this, so it only happens if a faulty node proposed it;
    /// apply still decides it the same way everywhere instead of failing.
    InvalidEvent { index: usize, reason: String },
    /// The same idempotency key was used for a different request in this topic.
    IdempotencyKeyReused { key: String },
    /// The request was prepared under rules that are no longer in force: prepare it again.
    RulesChanged { current_version: u64 },
}
