//! The JSON shapes clients send and receive. Their checks and conversion to the internal
//! command types are the node's (`node::wire`), kept apart from `raft-store` so the log
//! format and the API can change independently.

use std::collections::BTreeMap;

use raft_store::{ExpectedVersion, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST /v1/topics/{topic}/events`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    pub events: Vec<EventBody>,
    /// Per stream: a number of events, `"no_stream"` or `"any"`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, ExpectedVersionDoc>)]
    pub expected_version: BTreeMap<String, ExpectedVersion>,
    /// Alternative to the `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub stream: Option<String>,
    /// A JSON object, stored as sent.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
}

/// How `expected_version` is written (the type itself lives in `raft-store`).
#[derive(utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ExpectedVersionDoc {
    Exact(u64),
    Named(NamedVersion),
}

#[derive(utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum NamedVersion {
    NoStream,
    Any,
}

/// 201 answer of an append.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AppendCreated {
    pub first_offset: u64,
    pub last_offset: u64,
    pub log_index: u64,
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
