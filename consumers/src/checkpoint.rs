//! Reporting a consumer's position to `__checkpoints`: one stream per consumer
//! (`checkpoint-<name>`), an event `{consumer, topic, offset}` whenever it advanced and the
//! interval passed. `offset` is the next offset the consumer will read in `topic` (named so
//! that operators can see its lag: `uniqlog consumers`).

use std::sync::Arc;
use std::time::Duration;

use api::checkpoints::Report;
use api::client::{Client, ClientError};
use api::wire::{AppendBody, EventBody, ExpectedVersion};
use api::Transport;
use tokio::time::Instant;

pub use api::checkpoints::TOPIC;

pub struct CheckpointReporter {
    consumer: String,
    topic: String,
    nodes: Vec<String>,
    client: Client,
    every_events: u64,
    every: Duration,
    reported: Option<u64>,
    last_report: Option<Instant>,
    /// Off when the token may not write to `__checkpoints`.
    enabled: bool,
    /// The breaker state to report with the position (consumers with a breaker), and the
    /// one last reported.
    breaker: Option<&'static str>,
    reported_breaker: Option<&'static str>,
    /// Report the position again after this long without a report, moved or not: a sign of
    /// life (the nodes refuse to queue an activation email when the mail consumer is silent).
    heartbeat: Option<Duration>,
    /// The length of this consumer's stream in `__checkpoints` as last seen (`None`: not
    /// known yet). Every report expects it, so a report that arrives late (a slow forward, or
    /// one whose answer was lost and that was sent again elsewhere) is refused instead of
    /// landing after a newer one and moving the checkpoint back: a consumer resuming from it
    /// would send again what it had handled.
    version: Option<u64>,
}

impl CheckpointReporter {
    pub fn new(
        consumer: &str,
        topic: &str,
        nodes: Vec<String>,
        transport: Arc<dyn Transport>,
        every_events: u64,
        every: Duration,
    ) -> Self {
        CheckpointReporter {
            consumer: consumer.to_string(),
            topic: topic.to_string(),
            nodes,
            client: Client::new(transport),
            every_events,
            every,
            reported: None,
            last_report: None,
            enabled: true,
            breaker: None,
            reported_breaker: None,
            heartbeat: None,
            version: None,
        }
    }

    /// Report at least every `every`, even when nothing moved.
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// A reporter that reports nothing: for a consumer whose position is only informative and
    /// whose token may not write to `__checkpoints`.
    pub fn off(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// The circuit breaker's state, reported with the next position: a change is reported
    /// even when the position has not moved (an open breaker holds the position still).
    pub fn note_breaker(&mut self, state: &'static str) {
        self.breaker = Some(state);
    }

    /// Report `offset` if it advanced by `every_events` or `every` passed since the last
    /// report, or the breaker changed. Best effort: a failure is logged and tried again at
    /// the next call.
    pub async fn maybe_report(&mut self, offset: u64) {
        // Never back: a breaker report names where the consumer stands, which may be behind
        // a position already reported.
        let offset = self.reported.map_or(offset, |r| r.max(offset));
        let breaker_changed = self.breaker != self.reported_breaker;
        let heartbeat_due = self
            .heartbeat
            .is_some_and(|every| self.last_report.is_none_or(|t| t.elapsed() >= every));
        if !self.enabled || (self.reported == Some(offset) && !breaker_changed && !heartbeat_due) {
            return;
        }
        let due_by_count = self
            .reported
            .is_none_or(|r| offset >= r + self.every_events);
        let due_by_time = self.last_report.is_none_or(|t| t.elapsed() >= self.every);
        if !(due_by_count || due_by_time || breaker_changed || heartbeat_due) {
            return;
        }
        let report = Report {
            consumer: self.consumer.clone(),
            topic: Some(self.topic.clone()),
            offset,
            breaker: self.breaker.map(str::to_string),
        };
        // Fault point: a report lost on its way (tried again at the next call).
        if api::runtime::buggify(0.05) {
            self.last_report = Some(Instant::now());
            return;
        }
        let stream = api::checkpoints::stream_of(&self.consumer);
        let mut body = AppendBody::of(vec![EventBody::new(
            api::checkpoints::EVENT,
            Some(&stream),
            &report,
        )]);
        let (mut node, mut conflicts) = (0, 0);
        while let Some(addr) = self.nodes.get(node) {
            let expected = self.version.unwrap_or(0);
            body.expected_version = [(stream.clone(), ExpectedVersion::Exact(expected))].into();
            match self
                .client
                .append(addr, TOPIC, &body, Duration::from_secs(5))
                .await
            {
                Ok(_) => {
                    self.version = Some(expected + 1);
                    self.reported = Some(offset);
                    self.reported_breaker = self.breaker;
                    self.last_report = Some(Instant::now());
                    return;
                }
                // The stream moved since this reporter looked (at its start; or a report of
                // its own whose answer was lost landed after all): follow it and send again.
                Err(ClientError::Refused {
                    status: 409,
                    body: e,
                    ..
                }) if e.error == "version_conflict" && conflicts < 3 => {
                    conflicts += 1;
                    self.version = e.details.get("actual").and_then(serde_json::Value::as_u64);
                }
                Err(e) => {
                    tracing::debug!(addr = %addr, error = %e, "checkpoint report failed");
                    node += 1;
                }
            }
        }
        self.last_report = Some(Instant::now());
    }
}
