//! A consumer's parking lot: an event it gave up on (the provider refused it for good) is
//! parked in `__parked`, and `uniqlog log replay-parked` re-queues it into
//! `__retry.<consumer>`, which the consumer reads beside its topic. Both records are defined
//! here once, for the consumer that writes and reads them and the CLI in between.

use serde::{Deserialize, Serialize};

use crate::wire::{AppendBody, Event, EventBody};

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
    pub event: Event,
}

/// A parked event put back for its consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Where the event came from.
    pub topic: String,
    pub offset: u64,
    /// The event as served.
    pub event: Event,
}

/// A record of a system topic: its event type, and how it is read back from a served event.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    const TYPE: &'static str;

    /// The record of a served event of its topic, or `None` for another type or data that
    /// does not fit.
    fn of(served: &Event) -> Option<Self> {
        if served.event_type != Self::TYPE {
            return None;
        }
        Self::deserialize(&served.data).ok()
    }

    /// The append body of this record alone, under `idempotency_key` if given.
    fn append_body(&self, idempotency_key: Option<String>) -> AppendBody {
        let mut body = AppendBody::of(vec![EventBody::new(Self::TYPE, None, self)]);
        body.idempotency_key = idempotency_key;
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
        let event = Event {
            topic: "users".into(),
            offset: 3,
            log_index: 8,
            timestamp: 5,
            event_type: "AccountCreated".into(),
            stream: Some("user-1".into()),
            data: serde_json::json!({"email": "a@x.io"}),
            metadata: None,
        };
        let retry = Retry {
            topic: "users".into(),
            offset: 3,
            event,
        };
        let body = retry.append_body(Some("replay:9".into()));
        assert_eq!(body.idempotency_key.as_deref(), Some("replay:9"));
        let sent = &body.events[0];
        let served = Event {
            topic: "__retry.mail".into(),
            offset: 0,
            log_index: 9,
            timestamp: 6,
            event_type: sent.event_type.clone(),
            stream: sent.stream.clone(),
            data: serde_json::from_str(sent.data.get()).unwrap(),
            metadata: None,
        };
        assert_eq!(Retry::of(&served), Some(retry));
        assert_eq!(Parked::of(&served), None);
    }
}
