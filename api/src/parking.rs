//! A consumer's parking lot: an event it gave up on (the provider refused it for good) is
//! parked in `__parked`, and `uniqlog log replay-parked` re-queues it into
//! `__retry.<consumer>`, which the consumer reads beside its topic. Both records are defined
//! here once, for the consumer that writes and reads them and the CLI in between.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The topic of parked events, all consumers together.
pub const PARKED_TOPIC: &str = "__parked";

/// The topic a consumer reads re-queued events from.
pub fn retry_topic(consumer: &str) -> String {
    format!("__retry.{consumer}")
}

/// An event a consumer gave up on, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub consumer: String,
    pub reason: String,
    /// The key the consumer sent it under: a replay keeps it, so a provider that did take
    /// it after all does not send it twice.
    pub idempotency_key: String,
    /// The event as served.
    pub event: Value,
}

/// A parked event put back for its consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Where the event came from.
    pub topic: String,
    pub offset: u64,
    /// The event as served.
    pub event: Value,
}

/// A record of a system topic: its event type, and how it is read back from a served event.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    const TYPE: &'static str;

    /// The record of a served event of its topic, or `None` for another type or data that
    /// does not fit.
    fn of(served: &Value) -> Option<Self> {
        if served["type"] != Self::TYPE {
            return None;
        }
        Self::deserialize(&served["data"]).ok()
    }

    /// The append body of this record alone, under `idempotency_key` if given.
    fn append_body(&self, idempotency_key: Option<String>) -> Value {
        let mut body = json!({ "events": [{ "type": Self::TYPE, "data": self }] });
        if let Some(key) = idempotency_key {
            body["idempotency_key"] = key.into();
        }
        body
    }
}

impl Record for Parked {
    const TYPE: &'static str = "Parked";
}

impl Record for Retry {
    const TYPE: &'static str = "Retry";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_from_what_their_append_serves() {
        let event = json!({"topic": "users", "offset": 3, "type": "AccountCreated"});
        let retry = Retry {
            topic: "users".into(),
            offset: 3,
            event,
        };
        let body = retry.append_body(Some("replay:9".into()));
        assert_eq!(body["idempotency_key"], "replay:9");
        let mut served = body["events"][0].clone();
        served["offset"] = 0.into();
        assert_eq!(Retry::of(&served), Some(retry));
        assert_eq!(Parked::of(&served), None);
    }
}
