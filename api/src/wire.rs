//! The JSON shapes clients send and receive. Their checks and conversion to the internal
//! command types are the node's (`node::wire`), kept apart from `raft-store` so the log
//! format and the API can change independently.
//!
//! Answers the node once built as JSON maps keep their top-level fields in alphabetical order,
//! the order those maps wrote them (README's walkthrough compares answers as text). Nested
//! shapes are in their own types' order: JSON objects are unordered, and clients read by
//! name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A node's id in the cluster.
pub type NodeId = u64;

/// `POST /v1/topics/{topic}/events`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    pub events: Vec<EventBody>,
    /// Per stream: a number of events, `"no_stream"` or `"any"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected_version: BTreeMap<String, ExpectedVersion>,
    /// Alternative to the `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl AppendBody {
    /// An append of `events`, with no version check and no idempotency key.
    pub fn of(events: Vec<EventBody>) -> AppendBody {
        AppendBody {
            events,
            expected_version: BTreeMap::new(),
            idempotency_key: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// A JSON object, stored as sent.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
}

impl EventBody {
    /// An event of `event_type` on `stream` with `data`, which must serialize to an object.
    pub fn new(event_type: &str, stream: Option<&str>, data: &impl Serialize) -> EventBody {
        EventBody {
            event_type: event_type.to_string(),
            stream: stream.map(str::to_string),
            data: serde_json::value::to_raw_value(data).expect("event data serializes"),
            metadata: None,
        }
    }
}

/// One stored event as readers get it (pages, streams, the event stream's frames). Read
/// leniently: a field a newer node adds must not stop an older reader (a rolling upgrade
/// runs both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub topic: String,
    pub offset: u64,
    pub log_index: u64,
    /// Log time in milliseconds since the Unix epoch.
    pub timestamp: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A page of a topic or a stream. The node writes it by hand from events rendered once
/// (`node::routes::log`); a test holds that text to this type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page {
    pub events: Vec<Event>,
    /// Where the next read starts: a topic offset, or for a stream the number of its events
    /// already returned.
    pub next_offset: u64,
    /// The topic's length (a stream's: its number of events) in the state the page was read
    /// from: a full page ends before it. Lag is `head - next_offset`; a
    /// `consistency=linearizable` page's head covers every write acknowledged before the
    /// read was sent. Absent from nodes older than 2026-12 (read as 0).
    #[serde(default)]
    pub head: u64,
}

/// `GET /v1/topics`: the topics the caller may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Topics {
    pub topics: Vec<Topic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Topic {
    /// Its number of events: the offset its next event gets.
    pub length: u64,
    pub name: String,
}

/// `GET /ready`, when the node is ready (else a 503 error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ready {
    pub applied_index: u64,
    pub leader: Option<NodeId>,
    /// `ready`.
    pub status: String,
}

/// `GET /v1/auth/whoami`: the role and topics of the presented token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Whoami {
    pub auth_enabled: bool,
    pub role: crate::auth::Role,
    /// The topic patterns the token is limited to, or null for every topic.
    pub topics: Option<Vec<String>>,
}

/// Optimistic concurrency on a stream, as in EventStoreDB. In JSON: a number of events,
/// `"no_stream"` or `"any"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no event yet (version 0).
    NoStream,
    /// The stream has exactly this many events.
    Exact(u64),
}

impl Serialize for ExpectedVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Any => s.serialize_str("any"),
            ExpectedVersion::NoStream => s.serialize_str("no_stream"),
            ExpectedVersion::Exact(v) => s.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
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

impl utoipa::PartialSchema for ExpectedVersion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["no_stream", "any"])),
            )
            .into()
    }
}

impl utoipa::ToSchema for ExpectedVersion {}

/// 201 answer of an append.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AppendCreated {
    pub first_offset: u64,
    pub last_offset: u64,
    pub log_index: u64,
}

/// `GET /v1/cluster/state-hash`: what this node's replicated state holds, table by table, as
/// of an applied index. Members that applied the same entries answer the same (etcd's
/// `hashkv`): an operator compares them to know the replicas agree, and the simulator does at
/// the end of every run.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct StateHash {
    /// The last log index applied to the state hashed.
    pub applied_index: u64,
    /// By table name: its rows and their SHA-256 in the canonical record form (the one
    /// snapshots hold). `events` is every event, rendered as readers see it.
    pub tables: std::collections::BTreeMap<String, TableHash>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct TableHash {
    pub rows: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// `GET /v1/cluster/status`. Fields added after its first release default when absent, so a
/// CLI of one build reads the status of a node of another (a rolling upgrade runs both).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Highest log index removed from this node's log (covered by a snapshot).
    pub purged_index: Option<u64>,
    /// Last log index covered by this node's current snapshot.
    pub snapshot_index: Option<u64>,
    pub members: Vec<Member>,
    /// On the leader only: the highest log index known replicated on each other member
    /// (voters and learners), `null` while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<std::collections::BTreeMap<NodeId, Option<u64>>>,
    /// How long this node's process has been serving.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Version of the replicated rules this node has applied.
    #[serde(default)]
    #[schema(required = true)]
    pub rules_version: u64,
    /// The idempotency window in force and the records held.
    #[serde(default)]
    #[schema(required = true)]
    pub idempotency: IdempotencyStatus,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct IdempotencyStatus {
    pub window_ms: u64,
    pub records_max: u64,
    pub records: u64,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// `POST /v1/cluster/learners`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerBody {
    pub id: NodeId,
    pub addr: String,
}

/// `POST /v1/cluster/membership`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipBody {
    pub voters: Vec<NodeId>,
}

/// `POST /v1/cluster/init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Initialized {
    /// False when the cluster already was.
    pub initialized: bool,
    pub message: String,
    /// The version of the uniq rules in force: the config's, proposed at initialization.
    pub rules_version: u64,
}

/// The answer of a membership change: the log index of its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogIndex {
    pub log_index: u64,
}

/// `GET /health`: `ok`, or `failed` with the error that stopped Raft (a 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub status: String,
}

/// `POST /v1/auth/stream-token`: a short-lived read token for
/// `GET /v1/topics/{topic}/stream?access_token=...` (EventSource cannot send headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamToken {
    pub access_token: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: u64,
}

/// `GET /v1/conflicts/recent`: the latest 409s a node answered, newest first (in memory, at
/// most 50).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentConflicts {
    pub conflicts: Vec<RecentConflict>,
}

/// One 409: when, on which route, and its error body's code, message and details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentConflict {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub error: String,
    pub message: String,
    /// The matched route, as the route table names it.
    pub route: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// `GET /v1/cluster/nodes`: every member's status as it answers it, or why it did not.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Nodes {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub id: NodeId,
    /// The member's status as it sent it: a member of another build may hold other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ClusterStatus>)]
    pub status: Option<Box<RawValue>>,
}
