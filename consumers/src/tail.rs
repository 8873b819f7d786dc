//! Tailing a topic over HTTP from any node of the cluster, through the transport seam (so a
//! consumer runs inside the simulator as well).

use std::sync::Arc;
use std::time::Duration;

use api::client::{Client, ClientError, ReadTopic};
use api::error::ErrorBody;
use api::wire::Event;
use api::Transport;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("no node answered: {0}")]
    NoNode(String),
    #[error("bad answer from {addr}: {reason}")]
    BadAnswer { addr: String, reason: String },
}

/// Reads pages of one topic from a position, long-polling when caught up. Sticks to one node
/// while it answers and has a leader; moves on when it fails or has reported no leader for
/// longer than `stale_after` (a partitioned follower is alive but stale).
pub struct Tailer {
    nodes: Vec<String>,
    current: usize,
    client: Client,
    topic: String,
    /// The next offset to read.
    pub next_offset: u64,
    page_events_max: usize,
    wait: Duration,
    stale_after: Duration,
    leaderless_since: Option<Instant>,
    /// The longest the topic was in a page's `head`: a consumer catching up must report how
    /// far behind it is, not the end of the page it just read.
    head: u64,
}

impl Tailer {
    pub fn new(
        nodes: Vec<String>,
        transport: Arc<dyn Transport>,
        topic: &str,
        from: u64,
        stale_after: Duration,
    ) -> Self {
        assert!(!nodes.is_empty(), "a consumer needs at least one node");
        Tailer {
            nodes,
            current: 0,
            client: Client::new(transport),
            topic: topic.to_string(),
            next_offset: from,
            page_events_max: 500,
            wait: Duration::from_secs(2),
            stale_after,
            leaderless_since: None,
            head: 0,
        }
    }

    /// How long one read waits for new events when caught up.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub fn node(&self) -> &str {
        &self.nodes[self.current]
    }

    fn switch(&mut self, why: &str) {
        let from = self.node().to_string();
        self.current = (self.current + 1) % self.nodes.len();
        self.leaderless_since = None;
        tracing::info!(from = %from, to = %self.node(), why, "consumer moves to another node");
    }

    /// The next events (possibly none after a long-poll ran out). Transport failures move to
    /// the next node and are retried here, with a short pause after a full round.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, TailError> {
        let mut failures = 0;
        loop {
            let read = ReadTopic {
                from: self.next_offset,
                limit: self.page_events_max,
                wait_ms: self.wait.as_millis() as u64,
                linearizable: false,
            };
            let addr = self.node().to_string();
            let slack = Duration::from_secs(5);
            match self
                .client
                .read_topic(&addr, &self.topic, read, slack)
                .await
            {
                // Fault point: an answer taken for a failure (a read retried on another node).
                Ok(_) if api::runtime::buggify(0.02) => {
                    tracing::debug!(addr = %addr, "fault point: the page is read again");
                }
                Ok(page) => {
                    if page.events.is_empty() {
                        self.check_leader().await;
                    } else {
                        self.leaderless_since = None;
                    }
                    self.next_offset = page.next_offset.max(self.next_offset);
                    self.head = self.head.max(page.head);
                    return Ok(page.events);
                }
                Err(ClientError::BadAnswer {
                    status: 200,
                    reason,
                    ..
                }) => return Err(TailError::BadAnswer { addr, reason }),
                // A node with a smaller `read_events_max` or `wait_ms_max` refuses the page size
                // or the wait, and says which and its limit: ask again within it.
                Err(e) if e.status() == Some(400) => {
                    if e.body().is_some_and(|body| self.fit_limit(body)) {
                        tracing::info!(addr = %addr, page_events = self.page_events_max,
                            wait_ms = self.wait.as_millis() as u64, "read refused; asking within the node's limits");
                        continue;
                    }
                    tracing::warn!(addr = %addr, error = %e, "read refused");
                }
                Err(e) => tracing::warn!(addr = %addr, error = %e, "read failed"),
            }
            self.switch("read failed");
            failures += 1;
            if failures % self.nodes.len() == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Lower the page size or the wait to the limit a 400 names (`{"param", "max"}`). False
    /// when the answer names no limit this tailer exceeds: asking again would not help.
    fn fit_limit(&mut self, err: &ErrorBody) -> bool {
        let Some(max) = err.details.get("max").and_then(|m| m.as_u64()) else {
            return false;
        };
        match err.details.get("param").and_then(|p| p.as_str()) {
            Some("limit") if (self.page_events_max as u64) > max && max >= 1 => {
                self.page_events_max = max as usize;
                true
            }
            Some("wait_ms") if self.wait.as_millis() as u64 > max => {
                self.wait = Duration::from_millis(max);
                true
            }
            _ => false,
        }
    }

    /// While idle, make sure the node still knows a leader; leave it if it has not for longer
    /// than `stale_after`.
    async fn check_leader(&mut self) {
        let addr = self.node().to_string();
        let ready = self
            .client
            .ready(&addr, Duration::from_secs(2))
            .await
            .is_ok();
        if ready {
            self.leaderless_since = None;
            return;
        }
        let since = *self.leaderless_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.stale_after {
            self.switch("no leader for longer than an election timeout");
        }
    }

    /// The topic's length as far as the pages read so far showed it (a node older than
    /// `head` in pages: the next offset to read).
    pub fn head(&self) -> u64 {
        self.head.max(self.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{HttpRequest, HttpResponse, TransportError};
    use futures::future::BoxFuture;

    /// A node whose topic `t` holds 100 events and that serves them one per page, saying the
    /// topic's length in each page (`head`) or not (a node from before `head`).
    struct LongTopic {
        says_head: bool,
    }

    impl Transport for LongTopic {
        fn send(
            &self,
            _addr: &str,
            req: HttpRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
            let body = {
                let from: u64 = req
                    .path
                    .split("from=")
                    .nth(1)
                    .unwrap()
                    .split('&')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let head = if self.says_head { r#","head":100"# } else { "" };
                format!(
                    r#"{{"events":[{{"topic":"t","offset":{from},"log_index":1,"timestamp":1,"type":"T","data":{{}}}}],"next_offset":{}{head}}}"#,
                    from + 1
                )
            };
            Box::pin(async move {
                Ok(HttpResponse {
                    status: 200,
                    body: body.into(),
                })
            })
        }

        fn open_link(
            &self,
            _addr: &str,
            _req: HttpRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<api::link::Opened, TransportError>> {
            unreachable!("a tailer opens no link")
        }
    }

    #[tokio::test]
    async fn a_tailer_catching_up_knows_how_far_behind_it_is() {
        for (says_head, want) in [(true, 100), (false, 1)] {
            let mut tail = Tailer::new(
                vec!["n1".into()],
                Arc::new(LongTopic { says_head }),
                "t",
                0,
                Duration::from_secs(5),
            );
            let events = tail.next_batch().await.unwrap();
            assert_eq!((events.len(), tail.next_offset), (1, 1));
            assert_eq!(
                tail.head(),
                want,
                "the topic's length, not the end of the page (says_head={says_head})"
            );
        }
    }
}
