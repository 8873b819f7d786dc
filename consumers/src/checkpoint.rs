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
        // Fault point: a report lost on its way (tried again at the next call).
        if api::runtime::buggify(0.05) {
            self.last_report = Some(Instant::now());
            return;
        }
        let stream = api::checkpoints::stream_of(&self.consumer);
        let (mut offset, mut node, mut conflicts) = (offset, 0, 0);
        while let Some(addr) = self.nodes.get(node) {
            let expected = self.version.unwrap_or(0);
            let body = self.report_body(&stream, offset, expected);
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
                // The stream moved since this reporter looked: at its start, or a report whose
                // answer was lost (its own, or the previous life's) landed after all.
                Err(ClientError::Refused {
                    status: 409,
                    body: e,
                    ..
                }) if e.error == "version_conflict" && conflicts < 3 => {
                    conflicts += 1;
                    let actual = e.details.get("actual").and_then(serde_json::Value::as_u64);
                    match self.committed(addr).await {
                        Ok(committed) => {
                            // Follow the stream, never below what it holds: the previous life
                            // may have committed a position past the one this life resumed
                            // from, and writing ours over it would send the next life back to
                            // events already handled (sim seed 1728 of c5a886c).
                            offset = offset.max(committed);
                            self.version = actual;
                        }
                        Err(e) => {
                            tracing::debug!(addr = %addr, error = %e, "reading the checkpoint after a conflict failed");
                            node += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(addr = %addr, error = %e, "checkpoint report failed");
                    node += 1;
                }
            }
        }
        self.last_report = Some(Instant::now());
    }

    fn report_body(&self, stream: &str, offset: u64, expected: u64) -> AppendBody {
        let report = Report {
            consumer: self.consumer.clone(),
            topic: Some(self.topic.clone()),
            offset,
            breaker: self.breaker.map(str::to_string),
        };
        let mut body = AppendBody::of(vec![EventBody::new(
            api::checkpoints::EVENT,
            Some(stream),
            &report,
        )]);
        body.expected_version = [(stream.to_string(), ExpectedVersion::Exact(expected))].into();
        body
    }

    /// The position the stream holds, read linearizably: after a conflict, so at least as new
    /// as the version the conflict named (a newer one only makes the next write conflict
    /// again).
    async fn committed(&self, addr: &str) -> Result<u64, ClientError> {
        let c = self
            .client
            .checkpoint(addr, &self.consumer, true, Duration::from_secs(5))
            .await?;
        Ok(c.map_or(0, |c| c.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{HttpRequest, HttpResponse, TransportError};
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// One node holding one consumer's checkpoint stream: the offsets reported, in order.
    /// Appends check `expected_version` as the state machine does.
    #[derive(Default)]
    struct Stream(Mutex<Vec<u64>>);

    struct Node(Arc<Stream>);

    fn answer(status: u16, body: serde_json::Value) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse {
            status,
            body: body.to_string().into(),
        })
    }

    impl Transport for Node {
        fn send(
            &self,
            _addr: &str,
            req: HttpRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
            let mut held = self.0 .0.lock().unwrap();
            let reply = if req.path.starts_with("/v1/consumers/c/checkpoint") {
                match held.last() {
                    Some(o) => answer(
                        200,
                        serde_json::json!({"consumer": "c", "offset": o, "reported_at": 1}),
                    ),
                    None => answer(
                        404,
                        serde_json::json!({"error": "not_found", "message": "none", "retryable": false}),
                    ),
                }
            } else {
                let body: serde_json::Value =
                    serde_json::from_slice(req.body.as_deref().unwrap()).unwrap();
                let expected = body["expected_version"]["checkpoint-c"].as_u64().unwrap();
                if expected == held.len() as u64 {
                    held.push(body["events"][0]["data"]["offset"].as_u64().unwrap());
                    let at = held.len() as u64 - 1;
                    answer(
                        201,
                        serde_json::json!({"first_offset": at, "last_offset": at, "log_index": 1}),
                    )
                } else {
                    answer(
                        409,
                        serde_json::json!({"error": "version_conflict", "message": "moved",
                            "retryable": false, "stream": "checkpoint-c",
                            "expected": expected.to_string(), "actual": held.len()}),
                    )
                }
            };
            Box::pin(async move { reply })
        }

        fn open_link(
            &self,
            _addr: &str,
            _req: HttpRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<api::link::Opened, TransportError>> {
            unreachable!("a reporter opens no link")
        }
    }

    fn reporter(stream: &Arc<Stream>) -> CheckpointReporter {
        let node = Arc::new(Node(stream.clone()));
        CheckpointReporter::new(
            "c",
            "t",
            vec!["n1".into()],
            node,
            3,
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_new_life_never_writes_its_position_over_a_later_one() {
        // The previous life's last report (11) landed after this life resumed from 8.
        let stream = Arc::new(Stream::default());
        stream.0.lock().unwrap().extend([4, 8, 11]);
        let mut r = reporter(&stream);
        r.maybe_report(10).await;
        assert_eq!(*stream.0.lock().unwrap(), vec![4, 8, 11, 11]);
        assert_eq!(r.reported, Some(11));
        // Its next reports go on from there, with the version it followed.
        r.maybe_report(14).await;
        assert_eq!(stream.0.lock().unwrap().last(), Some(&14));
    }

    #[tokio::test]
    async fn a_new_life_ahead_of_the_stream_follows_its_version_and_reports_its_own() {
        let stream = Arc::new(Stream::default());
        stream.0.lock().unwrap().extend([4, 8]);
        let mut r = reporter(&stream);
        r.maybe_report(10).await;
        assert_eq!(*stream.0.lock().unwrap(), vec![4, 8, 10]);
        assert_eq!(r.reported, Some(10));
    }
}
