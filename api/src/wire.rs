//! The JSON shapes clients send and receive, and their explicit conversion to the internal
//! command types. Kept apart from `raft-store` so the log format and the API can change
//! independently.

use std::collections::BTreeMap;

use crate::claims::{claims_for, KeyError};
use raft_store::{AppendRequest, ExpectedVersion, IdempotencyKey, NewEvent, NodeId, RulesState};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::limits::Limits;

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
    /// Check names, sizes and counts against the limits; all field errors at once.
    pub fn validate(&self, topic: &str, limits: &Limits) -> Result<(), ApiError> {
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
            // Whether the JSON is unambiguous (no duplicate keys, representable numbers) was
            // checked on the whole body before it was decoded (`extract::JsonBody`).
            let objects = std::iter::once(("data", Some(&e.data)))
                .chain(std::iter::once(("metadata", e.metadata.as_ref())));
            for (name, raw) in objects {
                let Some(raw) = raw else { continue };
                if !raw.get().starts_with('{') {
                    fields.insert(
                        format!("events[{i}].{name}"),
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
        if let Some(k) = &self.idempotency_key {
            check_name(&mut fields, "idempotency_key".into(), k, limits);
        }
        if !fields.is_empty() {
            return Err(ApiError::Validation { fields });
        }
        Ok(())
    }

    /// A digest of what the client asked for, so a reused idempotency key with a different
    /// request is recognised. JSON objects are canonical (sorted keys), so formatting and
    /// key order do not matter.
    pub fn fingerprint(&self, topic: &str) -> String {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| {
                json!({
                    "type": e.event_type,
                    "stream": e.stream,
                    "data": serde_json::from_str::<Value>(e.data.get()).unwrap_or(Value::Null),
                    "metadata": e.metadata.as_ref().map(|m| serde_json::from_str::<Value>(m.get()).unwrap_or(Value::Null)),
                })
            })
            .collect();
        fingerprint(
            &json!({ "topic": topic, "events": events, "expected_version": self.expected_version }),
        )
    }

    /// The internal request under `rules`: uniq keys extracted and normalized here, on the
    /// receiving node. Missing or invalid keys are field errors.
    pub fn prepare(
        &self,
        topic: &str,
        rules: &RulesState,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<AppendRequest, ApiError> {
        let mut fields = BTreeMap::new();
        let mut events = Vec::with_capacity(self.events.len());
        for (i, e) in self.events.iter().enumerate() {
            let mut claims = Vec::new();
            if rules.rules.rules_for(topic, &e.event_type).next().is_some() {
                match claims_for(
                    &rules.rules,
                    topic,
                    &e.event_type,
                    &*e.data,
                    &format!("events[{i}].data"),
                ) {
                    Ok(c) => claims = c,
                    Err(KeyError { field, message }) => {
                        fields.insert(field, message);
                    }
                }
                if e.stream.is_none() {
                    fields.insert(
                        format!("events[{i}].stream"),
                        "is required: this event type is under a uniq rule and the stream owns the key".into(),
                    );
                }
            }
            events.push(NewEvent {
                event_type: e.event_type.clone(),
                stream: e.stream.clone(),
                data: e.data.get().to_string(),
                metadata: e.metadata.as_ref().map(|m| m.get().to_string()),
                claims,
                secret: None,
            });
        }
        if !fields.is_empty() {
            return Err(ApiError::Validation { fields });
        }
        Ok(AppendRequest {
            topic: topic.to_string(),
            events,
            expected_version: self.expected_version.clone(),
            idempotency,
            rules_version: rules.version,
            reply: None,
        })
    }
}

/// Hex SHA-256 of a JSON value's canonical text.
pub fn fingerprint(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(
        serde_json::to_string(v)
            .expect("JSON values serialize")
            .as_bytes(),
    );
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key of a request: the `Idempotency-Key` header or the body field (they
/// must agree when both are given).
pub fn idempotency_key(
    header: Option<&str>,
    field: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match (header, field) {
        (Some(h), Some(f)) if h != f => Err(ApiError::bad_request(
            "the Idempotency-Key header and the idempotency_key field differ",
        )),
        (Some(k), _) | (None, Some(k)) => {
            if k.is_empty() || k.len() > 255 || k.chars().any(char::is_control) {
                return Err(ApiError::bad_request(
                    "an idempotency key is 1 to 255 bytes without control characters",
                ));
            }
            Ok(Some(k.to_string()))
        }
        (None, None) => Ok(None),
    }
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
