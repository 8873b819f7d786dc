//! The openraft type config and the commands and answers that travel through the Raft log.
//!
//! These are internal types: the receiving node builds them from a validated HTTP request, and
//! apply turns them into a deterministic [`Outcome`]. The JSON shapes that clients see live in
//! the `api` crate and convert to these explicitly, so the log format and the public API can
//! change independently.

use std::collections::BTreeMap;
use std::fmt;

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
    pub requests: Vec<Request>,
}

/// A single client request inside a [`LogCommand`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Append(AppendRequest),
}

/// Append events to one topic, all or nothing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub topic: String,
    pub events: Vec<NewEvent>,
    /// Every stream named here is checked, whether or not the request has an event for it.
    #[serde(default)]
    pub expected_version: BTreeMap<String, ExpectedVersion>,
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

/// On the wire: a number, `"no_stream"` or `"any"`.
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

/// What apply returns for one log entry: one outcome per request, in order. Blank and
/// membership entries have none.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LogResponse {
    pub outcomes: Vec<Outcome>,
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
}

/// A 400 that only the state machine can decide (it depends on replicated state).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    /// The stream already belongs to another topic.
    StreamInOtherTopic { stream: String, topic: String },
    /// An event's data or metadata is not a JSON object. The receiving node validates this,
    /// so it only happens if a faulty node proposed it; apply still decides it the same way
    /// everywhere instead of failing.
    InvalidEvent { index: usize, reason: String },
}
