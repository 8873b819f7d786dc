//! `uniqlog mail`: one activation email per `AccountCreated` and `ActivationRequested`,
//! through the configured provider. Resumes from its checkpoint after a crash (resends
//! possible, skips never); pauses on an event behind a circuit breaker while the provider
//! fails transiently; parks an event the provider refuses for good and moves on.

pub mod config;
mod provider;
#[cfg(not(madsim))]
mod smtp;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::{Client, ClientError, ReadStream};
use api::users::config::UsersConfig;
use api::wire::{AppendBody, Event};
use api::Transport;
use serde::Serialize;
use tokio::time::Instant;

pub use self::config::MailConfig;
pub use self::provider::{Delivery, Outgoing, Webhook};
use crate::backoff::Backoff;
use crate::breaker::Breaker;
use crate::checkpoint::CheckpointReporter;
use crate::tail::Tailer;
use api::parking::{retry_topic, Parked, Record, Retry};
use api::users::state::TOPIC as USERS;

pub const NAME: &str = "mail";
pub use api::parking::PARKED_TOPIC;

/// The configured provider.
enum Provider {
    Webhook(Webhook),
    #[cfg(not(madsim))]
    Smtp(smtp::Smtp),
}

impl Provider {
    async fn send(&self, m: &Outgoing) -> Delivery {
        match self {
            Provider::Webhook(w) => w.send(m).await,
            #[cfg(not(madsim))]
            Provider::Smtp(s) => s.send(m).await,
        }
    }
}

/// What `/health` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailStats {
    pub checkpoint: u64,
    pub head: u64,
    pub lag_events: u64,
    pub lag_seconds: u64,
    pub breaker: &'static str,
    pub sent: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub parked: u64,
}

pub type SharedStats = Arc<Mutex<MailStats>>;

impl MailStats {
    /// Prometheus text of these stats.
    pub fn metrics(&self) -> String {
        let breaker = match self.breaker {
            "open" => 2,
            "half_open" => 1,
            _ => 0,
        };
        crate::metrics::render(
            "uniqlog_mail",
            &[
                (
                    "checkpoint",
                    "Next offset of users to handle",
                    self.checkpoint as i64,
                ),
                (
                    "lag_events",
                    "Events of users not yet handled",
                    self.lag_events as i64,
                ),
                (
                    "lag_seconds",
                    "Age of the event being handled",
                    self.lag_seconds as i64,
                ),
                (
                    "breaker_state",
                    "Circuit breaker: 0 closed, 1 half-open, 2 open",
                    breaker,
                ),
            ],
            &[
                ("sent", "Emails the provider accepted", self.sent),
                (
                    "retries",
                    "Failed provider calls that were retried",
                    self.retries,
                ),
                (
                    "timeouts",
                    "Provider calls that timed out (possible resends)",
                    self.timeouts,
                ),
                (
                    "parked",
                    "Events parked after a permanent refusal",
                    self.parked,
                ),
            ],
            None,
        )
    }
}

/// Everything the consumer needs, so it runs the same in production and in the simulator.
pub struct MailConsumer {
    pub config: MailConfig,
    pub users: UsersConfig,
    pub nodes: Vec<String>,
    /// To the nodes (with the consumer's token, over TLS when the cluster speaks it).
    pub transport: Arc<dyn Transport>,
    /// To the webhook provider: its own connection, never carrying the cluster's token (over
    /// TLS for an `https://` webhook).
    pub provider_transport: Arc<dyn Transport>,
    pub stale_after: Duration,
    pub stats: SharedStats,
}

fn now_s() -> u64 {
    api::runtime::now_ms() / 1000
}

impl MailConsumer {
    /// Where `users` and `__retry.mail` were left, from `__checkpoints` (0 when never written).
    async fn resume_offset(&self, name: &str) -> u64 {
        let client = Client::new(self.transport.clone());
        loop {
            for addr in &self.nodes {
                match client
                    .checkpoint(addr, name, true, Duration::from_secs(5))
                    .await
                {
                    Ok(checkpoint) => {
                        let offset = checkpoint.map_or(0, |c| c.offset);
                        #[cfg(madsim)]
                        if crate::planted::is(crate::planted::Bug::MailResumesBehind) {
                            return offset.saturating_sub(self.config.checkpoint_every_events);
                        }
                        return offset;
                    }
                    Err(e) => {
                        tracing::debug!(addr = %addr, error = %e, "reading a checkpoint failed")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The email an event asks for, or `None` for events that send nothing. It goes to the
    /// address of the account as of that event (its stream folded up to it), never to one the
    /// event itself names: an event is not proof of a mailbox, and an appended
    /// `ActivationRequested` must not be able to send a valid link elsewhere. The link's
    /// token is bound to that address ([`api::users::token`]).
    pub async fn message_for(&self, topic: &str, event: &Event) -> Option<Outgoing> {
        if !api::users::events::UserEvent::of(event)?.asks_for_mail() {
            return None;
        }
        let stream = event.stream.as_deref()?;
        let id = stream.strip_prefix("user-")?.parse().ok()?;
        let offset = event.offset;
        let account = self.account_at(stream, id, offset).await?;
        let token = api::users::token::make_token(
            self.users.activation_secret.expose(),
            id,
            &account.email,
            now_s() + self.users.activation_ttl_s,
        );
        let link = format!(
            "{}/v1/users/activate?token={token}",
            self.users.public_base_url.trim_end_matches('/')
        );
        let username = if account.username.is_empty() {
            "there"
        } else {
            account.username.as_str()
        };
        Some(Outgoing {
            to: account.email,
            subject: "Activate your account".into(),
            text: format!("Hello {username},\n\nplease activate your account: {link}\n"),
            idempotency_key: format!("{topic}:{offset}"),
        })
    }

    /// The account of `stream` folded up to and including its event at `offset` (which must
    /// be in it). Asks any node, for as long as it takes: an email must not be skipped because
    /// a node was down. A node that has not applied `offset` yet is asked again with a
    /// linearizable read.
    async fn account_at(
        &self,
        stream: &str,
        id: uuid::Uuid,
        offset: u64,
    ) -> Option<api::users::state::UserState> {
        let mut linearizable = false;
        loop {
            for addr in &self.nodes {
                match self.stream_upto(addr, stream, offset, linearizable).await {
                    Ok(Some(events)) => return api::users::state::fold(id, &events),
                    // The event is not in this node's view of the stream yet.
                    Ok(None) => linearizable = true,
                    Err(e) => {
                        tracing::debug!(node = %addr, error = %e, "reading a user's stream failed")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The events of `stream` up to the one at `offset`, or `None` when the node does not
    /// hold that one.
    async fn stream_upto(
        &self,
        addr: &str,
        stream: &str,
        offset: u64,
        linearizable: bool,
    ) -> Result<Option<Vec<Event>>, ClientError> {
        let client = Client::new(self.transport.clone());
        let mut events: Vec<Event> = Vec::new();
        loop {
            let read = ReadStream {
                from: events.len() as u64,
                limit: None,
                linearizable,
            };
            let page = client
                .read_stream(addr, stream, read, Duration::from_secs(10))
                .await?;
            if page.events.is_empty() {
                return Ok(None);
            }
            for e in page.events {
                let at = e.offset;
                if at > offset {
                    return Ok(None);
                }
                events.push(e);
                if at == offset {
                    return Ok(Some(events));
                }
            }
        }
    }

    /// Append `body` to `topic` on any node, retrying until it is acknowledged: parking must
    /// not be skipped.
    async fn append_until_done(&self, topic: &str, body: AppendBody) {
        let client = Client::new(self.transport.clone());
        loop {
            for addr in &self.nodes {
                match client
                    .append(addr, topic, &body, Duration::from_secs(10))
                    .await
                {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(addr = %addr, error = %e, "append failed"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deliver one message: retry transient failures behind the breaker until it is sent or
    /// refused for good (then park it). While the breaker is open, its state is reported
    /// with the checkpoint `at` (where the consumer stands), so `GET /v1/consumers` shows
    /// why it does not move.
    async fn deliver(
        &self,
        provider: &Provider,
        breaker: &mut Breaker,
        backoff: &Backoff,
        msg: &Outgoing,
        source: &Event,
        (cp, at): (&mut CheckpointReporter, u64),
    ) {
        let mut attempt = 0;
        loop {
            let now = Instant::now();
            if !breaker.allow(now) {
                self.stats.lock().expect("stats").breaker = breaker.name();
                cp.note_breaker(breaker.name());
                cp.maybe_report(at).await;
                tokio::time::sleep_until(breaker.ready_at(now)).await;
                continue;
            }
            let result = provider.send(msg).await;
            match &result {
                Delivery::Sent | Delivery::Permanent(_) => breaker.on_success(),
                Delivery::Transient { .. } => breaker.on_failure(Instant::now()),
            }
            cp.note_breaker(breaker.name());
            self.count(&result, breaker);
            match result {
                Delivery::Sent => return,
                Delivery::Permanent(reason) => {
                    tracing::warn!(key = %msg.idempotency_key, reason = %reason, "parking an email the provider refused");
                    let parked = Parked {
                        consumer: NAME.into(),
                        reason,
                        idempotency_key: msg.idempotency_key.clone(),
                        event: source.clone(),
                    };
                    self.append_until_done(PARKED_TOPIC, parked.append_body(None))
                        .await;
                    return;
                }
                Delivery::Transient { reason, .. } => {
                    tracing::debug!(key = %msg.idempotency_key, reason = %reason, attempt, "provider failed; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    fn count(&self, result: &Delivery, breaker: &Breaker) {
        let mut s = self.stats.lock().expect("stats");
        match result {
            Delivery::Sent => s.sent += 1,
            Delivery::Permanent(_) => s.parked += 1,
            Delivery::Transient { timed_out, .. } => {
                s.retries += 1;
                if *timed_out {
                    s.timeouts += 1;
                }
            }
        }
        s.breaker = breaker.name();
    }

    /// The provider the config names.
    fn provider(&self) -> Result<Provider, String> {
        if self.config.provider == "smtp" {
            #[cfg(not(madsim))]
            return smtp::Smtp::new(&self.config).map(Provider::Smtp);
            #[cfg(madsim)]
            return Err("the SMTP provider does not run in the simulator".into());
        }
        let target = self.config.webhook_target()?;
        Ok(Provider::Webhook(Webhook {
            transport: self.provider_transport.clone(),
            addr: target.addr,
            path: target.path,
            authorization: self.config.webhook_authorization.clone(),
            timeout: Duration::from_millis(self.config.timeout_ms),
        }))
    }

    /// Run for ever.
    pub async fn run(self) {
        let provider = match self.provider() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "bad mail config");
                return;
            }
        };
        let mut breaker = Breaker::new(
            self.config.breaker_failures,
            Duration::from_millis(self.config.breaker_cool_down_ms),
        );
        let backoff = Backoff {
            base: Duration::from_millis(self.config.retry_base_ms),
            max: Duration::from_millis(self.config.retry_max_ms),
        };
        let retry_name = format!("{NAME}.retry");
        let mut main = Tailer::new(
            self.nodes.clone(),
            self.transport.clone(),
            USERS,
            self.resume_offset(NAME).await,
            self.stale_after,
        )
        .with_wait(Duration::from_millis(500));
        let mut retry = Tailer::new(
            self.nodes.clone(),
            self.transport.clone(),
            &retry_topic(NAME),
            self.resume_offset(&retry_name).await,
            self.stale_after,
        )
        .with_wait(Duration::from_millis(100));
        let every = Duration::from_millis(self.config.checkpoint_every_ms);
        let mut main_cp = CheckpointReporter::new(
            NAME,
            USERS,
            self.nodes.clone(),
            self.transport.clone(),
            self.config.checkpoint_every_events,
            every,
        )
        .with_heartbeat(Duration::from_millis(api::users::MAIL_HEARTBEAT_MS));
        let mut retry_cp = CheckpointReporter::new(
            &retry_name,
            &retry_topic(NAME),
            self.nodes.clone(),
            self.transport.clone(),
            self.config.checkpoint_every_events,
            every,
        );
        {
            let mut s = self.stats.lock().expect("stats");
            s.checkpoint = main.next_offset;
            s.breaker = breaker.name();
        }
        main_cp.note_breaker(breaker.name());
        loop {
            let events = main.next_batch().await.unwrap_or_default();
            let mut offset = main.next_offset - events.len() as u64;
            for e in &events {
                #[cfg(madsim)]
                if crate::planted::is(crate::planted::Bug::MailCheckpointBeforeSend) {
                    main_cp.maybe_report(e.offset + 1).await;
                }
                if let Some(msg) = self.message_for(USERS, e).await {
                    let at = (&mut main_cp, offset);
                    self.deliver(&provider, &mut breaker, &backoff, &msg, e, at)
                        .await;
                }
                offset = e.offset + 1;
                // The checkpoint is the next offset to read: only past fully handled events.
                main_cp.maybe_report(offset).await;
                self.note_position(offset, Some(e.timestamp));
            }
            main_cp.maybe_report(main.next_offset).await;
            self.note_head(main.head(), main.next_offset);
            // Replayed parked events keep their original idempotency key.
            let retried = retry.next_batch().await.unwrap_or_default();
            for r in &retried {
                if let Some(Retry { topic, event, .. }) = Retry::of(r) {
                    if let Some(msg) = self.message_for(&topic, &event).await {
                        let at = (&mut main_cp, main.next_offset);
                        self.deliver(&provider, &mut breaker, &backoff, &msg, &event, at)
                            .await;
                    }
                }
                retry_cp.maybe_report(r.offset + 1).await;
            }
            retry_cp.maybe_report(retry.next_offset).await;
        }
    }

    fn note_position(&self, checkpoint: u64, event_ms: Option<u64>) {
        let mut s = self.stats.lock().expect("stats");
        s.checkpoint = checkpoint;
        s.head = s.head.max(checkpoint);
        s.lag_events = s.head - checkpoint;
        s.lag_seconds = event_ms.map_or(0, |t| api::runtime::now_ms().saturating_sub(t) / 1000);
    }

    fn note_head(&self, head: u64, checkpoint: u64) {
        let mut s = self.stats.lock().expect("stats");
        s.head = head.max(checkpoint);
        s.checkpoint = checkpoint;
        s.lag_events = s.head - checkpoint;
        if s.lag_events == 0 {
            s.lag_seconds = 0;
        }
    }
}
