//! Consumer checkpoints: what a consumer reports to `__checkpoints` (one stream per consumer,
//! `checkpoint-<name>`, a `ConsumerCheckpoint` event whenever it advanced), and the latest
//! report as the nodes serve it (`GET /v1/consumers`, `GET /v1/consumers/{name}/checkpoint`),
//! so operators see each consumer's lag.

use serde::{Deserialize, Serialize};

/// The topic checkpoints are reported to (admin-only, like every `__` topic).
pub const TOPIC: &str = "__checkpoints";

/// The type of a checkpoint event.
pub const EVENT: &str = "ConsumerCheckpoint";

/// The prefix of a consumer's stream in [`TOPIC`].
pub const STREAM_PREFIX: &str = "checkpoint-";

/// The stream consumer `name` reports to.
pub fn stream_of(name: &str) -> String {
    format!("{STREAM_PREFIX}{name}")
}

/// The data of a checkpoint event. `__checkpoints` takes appends from any admin token: an
/// event without a consumer name or an offset is not a checkpoint, and an optional field
/// that is not a string reads as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub consumer: String,
    /// The topic the consumer follows. Absent from checkpoints reported before it was named.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub topic: Option<String>,
    /// The next offset the consumer will handle in that topic.
    pub offset: u64,
    /// The state of the consumer's circuit breaker, for consumers that have one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "text_or_none"
    )]
    pub breaker: Option<String>,
}

fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A consumer's latest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// `closed`, `open` or `half_open`, for a consumer with a circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    pub consumer: String,
    /// The next offset the consumer will handle in that topic.
    pub offset: u64,
    /// Log time of the report, in milliseconds since the Unix epoch.
    pub reported_at: u64,
    /// The topic the consumer follows (absent from checkpoints reported before it was named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `GET /v1/consumers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consumers {
    pub consumers: Vec<Checkpoint>,
}
