//! The JSON shapes clients send and receive, and their explicit conversion to the internal
//! command types. Kept apart from `raft-store` so the log format and the API can change
//! independently.

use std::collections::BTreeMap;

use raft_store::{AppendRequest, ExpectedVersion, NewEvent, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::limits::Limits;

/// `POST /v1/topics/{topic}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    pub events: Vec<EventBody>,
    #[serde(default)]
    pub expected_version: BTreeMap<String, ExpectedVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub stream: Option<String>,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub metadata: Option<Box<RawValue>>,
}

/// 201 answer of an append.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppendCreated {
    pub first_offset: u64,
    pub last_offset: u64,
    pub log_index: u64,
}

/// Topic names: what fits in a URL path segment and a file name without escaping.
pub fn validate_topic(topic: &str, limits: &Limits) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > limits.name_bytes_max || !topic.chars().all(ok_char) {
        return Err(ApiError::bad_request(format!(
            "topic names are 1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            limits.name_bytes_max
        )));
    }
    Ok(())
}

fn check_name(fields: &mut BTreeMap<String, String>, key: String, value: &str, limits: &Limits) {
    if value.trim().is_empty() {
        fields.insert(key, "must not be blank".into());
    } else if value.len() > limits.name_bytes_max {
        fields.insert(
            key,
            format!("must be at most {} bytes", limits.name_bytes_max),
        );
    } else if value.chars().any(char::is_control) {
        fields.insert(key, "must not contain control characters".into());
    }
}

impl AppendBody {
    /// Validate against the limits and build the internal request. All field errors at once.
    pub fn into_request(self, topic: &str, limits: &Limits) -> Result<AppendRequest, ApiError> {
        validate_topic(topic, limits)?;
        let mut fields = BTreeMap::new();
        if self.events.is_empty() {
            fields.insert("events".into(), "must contain at least one event".into());
        }
        if self.events.len() > limits.events_per_append_max {
            fields.insert(
                "events".into(),
                format!("at most {} events per append", limits.events_per_append_max),
            );
        }
        for (i, e) in self.events.iter().enumerate() {
            check_name(
                &mut fields,
                format!("events[{i}].type"),
                &e.event_type,
                limits,
            );
            if let Some(s) = &e.stream {
                check_name(&mut fields, format!("events[{i}].stream"), s, limits);
            }
            if !e.data.get().starts_with('{') {
                fields.insert(format!("events[{i}].data"), "must be a JSON object".into());
            }
            if let Some(m) = &e.metadata {
                if !m.get().starts_with('{') {
                    fields.insert(
                        format!("events[{i}].metadata"),
                        "must be a JSON object".into(),
                    );
                }
            }
            let size = e.event_type.len()
                + e.stream.as_ref().map_or(0, String::len)
                + e.data.get().len()
                + e.metadata.as_ref().map_or(0, |m| m.get().len());
            if size > limits.event_bytes_max {
                fields.insert(
                    format!("events[{i}]"),
                    format!(
                        "event is {size} bytes, at most {} allowed",
                        limits.event_bytes_max
                    ),
                );
            }
        }
        for stream in self.expected_version.keys() {
            check_name(
                &mut fields,
                format!("expected_version.{stream}"),
                stream,
                limits,
            );
        }
        if !fields.is_empty() {
            return Err(ApiError::Validation { fields });
        }
        Ok(AppendRequest {
            topic: topic.to_string(),
            events: self
                .events
                .into_iter()
                .map(|e| NewEvent {
                    event_type: e.event_type,
                    stream: e.stream,
                    data: e.data.get().to_string(),
                    metadata: e.metadata.map(|m| m.get().to_string()),
                })
                .collect(),
            expected_version: self.expected_version,
        })
    }
}

/// `GET /v1/cluster/status`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
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
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
}

/// `POST /v1/cluster/learners`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerBody {
    pub id: NodeId,
    pub addr: String,
}

/// `POST /v1/cluster/membership`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipBody {
    pub voters: Vec<NodeId>,
}
