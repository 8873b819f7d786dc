//! The client load of the scenarios: concurrent client tasks on the client node, sending
//! their requests through the HTTP API to every node in turn, and status pollers.
//!
//! - Append clients: each owns one stream in topic [`STREAM_TOPIC`] and appends to it with
//!   `expected_version` (its best knowledge of the stream's version; a 409 tells it the actual
//!   one). Its other appends go to [`PLAIN_TOPIC`], one or two events at a time, each event
//!   with a unique `data.id`. A share of the appends carries an idempotency key; those are
//!   retried with the same key (and the same events) after an unknown outcome or a 503.
//! - Users clients: sign up with addresses from a small pool (so they collide, in different
//!   letter cases), change the address of accounts they created, delete them. Sign-ups may
//!   carry an idempotency key and are then retried like keyed appends.
//! - Status pollers: one per node, asking `GET /v1/cluster/status` one call at a time.
//! - Readers: pages of random topics from random nodes, recorded as served.
//!
//! Every request and its answer is recorded (`crate::history`); nothing is assumed about a
//! request without a definite answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::{ClientError, ReadTopic};
use api::users::commands::{EmailChangeRequest, SignupRequest};
use madsim::rand::Rng;
use serde_json::{json, Value};

use crate::cluster::{node_addr, now_ms, sleep, Client, SimCluster, APPEND_TIMEOUT};
use crate::history::{
    Attempt, History, NodeId, Outcome, ReadSample, StatusSample, UserAttempt, UserOp, UserOutcome,
};

pub const PLAIN_TOPIC: &str = "log";
pub const STREAM_TOPIC: &str = "orders";
pub const USERS_TOPIC: &str = crate::check::USERS_TOPIC;
/// The topics of the append clients.
pub const TOPICS: [&str; 2] = [PLAIN_TOPIC, STREAM_TOPIC];
/// Every topic the workload writes.
pub const ALL_TOPICS: [&str; 3] = [PLAIN_TOPIC, STREAM_TOPIC, USERS_TOPIC];

/// The addresses users sign up with (ASCII, so the checker's normalization is trim and
/// lower-case); clients send them in varied letter case.
pub const EMAILS: [&str; 6] = [
    "ann@example.com",
    "bob@example.com",
    "cat@example.org",
    "dan@example.org",
    "eve@example.net",
    "fay@example.net",
];

/// The `[[uniq]]` rules and `[users]` settings the users clients need in the cluster config.
pub const USERS_CONFIG: &str = r#"
[users]
activation_secret = "a simulated activation secret of 32+ bytes"
password_memory_kib = 64
password_iterations = 1

[[uniq]]
name = "user_email"
topic = "users"
normalize = "email"
[[uniq.rule]]
event = "AccountCreated"
op = "create"
key = "/email"
[[uniq.rule]]
event = "EmailChanged"
op = "update"
old_key = "/old_email"
key = "/new_email"
[[uniq.rule]]
event = "AccountDeleted"
op = "delete"
key = "/email"
"#;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub clients: usize,
    /// Each client stops after this many appends (or when the load is stopped).
    pub appends_per_client: usize,
    /// Random pause between two appends of one client.
    pub think_ms: std::ops::Range<u64>,
    /// Extra random pause after an append that did not succeed, as a client would back off
    /// before its next request while the cluster elects or a node is down.
    pub backoff_ms: std::ops::Range<u64>,
    /// The share of appends (and sign-ups) that carry an idempotency key.
    pub keyed_share: f64,
    /// How often a keyed request is sent again after an unknown outcome or a 503.
    pub retries_max: u32,
    /// Users clients (they need [`USERS_CONFIG`] in the cluster config).
    pub users_clients: usize,
    /// Status pollers' pause between two calls to one node; `None`: no pollers.
    pub status_poll: Option<Duration>,
    /// Readers: each reads pages of random topics from random nodes, with or without
    /// `consistency=linearizable`, and records what it was served (`check::served`).
    pub readers: usize,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            clients: 4,
            appends_per_client: 200,
            think_ms: 5..40,
            backoff_ms: 100..300,
            keyed_share: 0.0,
            retries_max: 0,
            users_clients: 0,
            status_poll: None,
            readers: 0,
        }
    }
}

/// The nodes clients send to: a list shared with the cluster, which updates it as the
/// membership changes.
#[derive(Clone, Debug)]
pub struct Targets(Arc<Mutex<Vec<NodeId>>>);

impl Targets {
    pub fn new(ids: Vec<NodeId>) -> Targets {
        assert!(!ids.is_empty(), "clients need a node to send to");
        Targets(Arc::new(Mutex::new(ids)))
    }

    pub fn set(&self, ids: Vec<NodeId>) {
        if !ids.is_empty() {
            *self.0.lock().unwrap() = ids;
        }
    }

    /// The `n`-th node, round robin.
    pub fn pick(&self, n: usize) -> NodeId {
        let ids = self.0.lock().unwrap();
        ids[n % ids.len()]
    }
}

/// Running client tasks.
pub struct Load {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    tasks: Vec<madsim::task::JoinHandle<()>>,
}

impl Load {
    /// Start the clients and pollers of `spec` against the nodes `targets`.
    pub fn start(cluster: &SimCluster, spec: &LoadSpec, targets: Vec<NodeId>) -> Load {
        Self::start_on(cluster, spec, Targets::new(targets))
    }

    /// Start the clients against the cluster's members as they change
    /// ([`SimCluster::targets`]): a client's next request goes to a current member.
    pub fn start_following(cluster: &SimCluster, spec: &LoadSpec) -> Load {
        Self::start_on(cluster, spec, cluster.targets())
    }

    fn start_on(cluster: &SimCluster, spec: &LoadSpec, targets: Targets) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let mut tasks = Vec::new();
        for k in 0..spec.clients {
            let ctx = ClientCtx {
                k,
                client: cluster.client(),
                targets: targets.clone(),
                stop: stop.clone(),
                history: history.clone(),
                spec: spec.clone(),
            };
            tasks.push(cluster.spawn_client(ctx.run()));
        }
        for k in 0..spec.users_clients {
            let ctx = ClientCtx {
                k: spec.clients + k,
                client: cluster.client(),
                targets: targets.clone(),
                stop: stop.clone(),
                history: history.clone(),
                spec: spec.clone(),
            };
            tasks.push(cluster.spawn_client(ctx.run_users()));
        }
        for reader in 0..spec.readers {
            tasks.push(cluster.spawn_client(read_pages(
                reader,
                cluster.client(),
                (targets.clone(), cluster.epochs()),
                stop.clone(),
                history.clone(),
            )));
        }
        if let Some(every) = spec.status_poll {
            for id in cluster.ids() {
                tasks.push(cluster.spawn_client(poll_status(
                    cluster.client(),
                    id,
                    cluster.epoch(id),
                    every,
                    stop.clone(),
                    history.clone(),
                )));
            }
        }
        Load {
            stop,
            history,
            tasks,
        }
    }

    /// Writes answered so far (appends and users commands).
    pub fn answered(&self) -> usize {
        let h = self.history.lock().unwrap();
        h.appends.len() + h.users.len()
    }

    /// Appends acknowledged (201) so far.
    pub fn acknowledged(&self) -> usize {
        self.history
            .lock()
            .unwrap()
            .appends
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Ok(_)))
            .count()
    }

    /// Wait until `n` more appends were answered (bounded by `within` of simulated time).
    pub async fn wait_answered(&self, n: usize, within: Duration) {
        self.keep_going(Duration::ZERO, n, within).await;
    }

    /// Wait until `n` more appends were acknowledged (201), bounded by `within` of simulated
    /// time: progress after a fault, however long the election it takes.
    pub async fn wait_acknowledged(&self, n: usize, within: Duration) {
        let start = now_ms();
        let target = self.acknowledged() + n;
        while self.acknowledged() < target && now_ms() - start < within.as_millis() as u64 {
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Let the load run for at least `at_least` and until `n` more appends were answered,
    /// but no longer than `at_most` (simulated time).
    pub async fn keep_going(&self, at_least: Duration, n: usize, at_most: Duration) {
        let start = now_ms();
        let target = self.answered() + n;
        let (min, max) = (at_least.as_millis() as u64, at_most.as_millis() as u64);
        while (self.answered() < target || now_ms() - start < min) && now_ms() - start < max {
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ask every client to stop, wait for their last answers, return the append history in
    /// the order the answers arrived.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop_all().await.appends
    }

    /// Ask every client and poller to stop, wait for them, return everything recorded.
    pub async fn stop_all(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a client task failed");
        }
        let history = self.history.lock().unwrap();
        history.clone()
    }
}

struct ClientCtx {
    k: usize,
    client: Client,
    targets: Targets,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    spec: ClientSpec,
}

type ClientSpec = LoadSpec;

/// Worth sending again under the same key: no definite answer, or a 503 (not applied).
fn retryable(o: &Outcome) -> bool {
    matches!(o, Outcome::Unknown(_) | Outcome::Failed(0 | 503, _))
}

fn user_retryable(o: &UserOutcome) -> bool {
    matches!(o, UserOutcome::Unknown(_) | UserOutcome::Failed(0 | 503, _))
}

impl ClientCtx {
    async fn pause(&self, succeeded: bool) {
        let mut rng = madsim::rand::thread_rng();
        let mut pause = rng.gen_range(self.spec.think_ms.clone());
        if !succeeded {
            pause += rng.gen_range(self.spec.backoff_ms.clone());
        }
        drop(rng);
        sleep(Duration::from_millis(pause)).await;
    }

    fn keyed(&self) -> bool {
        self.spec.keyed_share > 0.0 && madsim::rand::thread_rng().gen_bool(self.spec.keyed_share)
    }

    async fn run(self) {
        let k = self.k;
        let stream = format!("order-c{k}");
        // What this client believes the stream's version is.
        let mut version: u64 = 0;
        for n in 0..self.spec.appends_per_client {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let id = format!("c{k}-{n}");
            let (topic, events, mut body, expected) = if n % 3 == 0 {
                let expected = if version == 0 {
                    json!("no_stream")
                } else {
                    json!(version)
                };
                let body = json!({
                    "events": [{
                        "type": "OrderEvent",
                        "stream": stream,
                        "data": {"id": format!("{id}.0"), "expected_version": version},
                    }],
                    "expected_version": {stream.clone(): expected},
                });
                (STREAM_TOPIC, 1, body, Some((stream.clone(), version)))
            } else {
                let events = 1 + n % 2;
                let list: Vec<Value> = (0..events)
                    .map(|j| {
                        json!({
                            "type": "Logged",
                            "data": {"id": format!("{id}.{j}"), "client": k},
                            "metadata": {"n": n},
                        })
                    })
                    .collect();
                (PLAIN_TOPIC, events, json!({ "events": list }), None)
            };
            let key = self.keyed().then(|| format!("key-{id}"));
            if let Some(key) = &key {
                body["idempotency_key"] = json!(key);
            }
            let mut retry = 0;
            let outcome = loop {
                let node = self.targets.pick(k + n + retry as usize);
                let sent_ms = now_ms();
                let outcome = self.client.append(node, topic, &body).await;
                let answered_ms = now_ms();
                self.history.lock().unwrap().appends.push(Attempt {
                    id: id.clone(),
                    client: k,
                    node,
                    topic: topic.to_string(),
                    events,
                    stream: expected.clone(),
                    key: key.clone(),
                    retry,
                    outcome: outcome.clone(),
                    sent_ms,
                    answered_ms,
                });
                if key.is_none()
                    || !retryable(&outcome)
                    || retry >= self.spec.retries_max
                    || self.stop.load(Ordering::Relaxed)
                {
                    break outcome;
                }
                retry += 1;
                self.pause(false).await;
            };
            if expected.is_some() {
                match &outcome {
                    Outcome::Ok(_) => version += 1,
                    Outcome::Conflict(body) => {
                        if let Some(actual) = body.get("actual").and_then(Value::as_u64) {
                            version = actual;
                        }
                    }
                    Outcome::Failed(..) | Outcome::Unknown(_) => {}
                }
            }
            self.pause(matches!(outcome, Outcome::Ok(_) | Outcome::Conflict(_)))
                .await;
        }
    }

    /// A pool address in a random letter case, sometimes with blanks around it.
    fn email(&self) -> String {
        let mut rng = madsim::rand::thread_rng();
        let base = EMAILS[rng.gen_range(0..EMAILS.len())];
        let (local, domain) = base.split_once('@').expect("pool addresses have an @");
        let local = if rng.gen_bool(0.3) {
            local.to_ascii_uppercase()
        } else {
            local.to_string()
        };
        let domain = if rng.gen_bool(0.3) {
            let mut d = domain.to_string();
            d[..1].make_ascii_uppercase();
            d
        } else {
            domain.to_string()
        };
        let pad = if rng.gen_bool(0.1) { " " } else { "" };
        format!("{pad}{local}@{domain}{pad}")
    }

    async fn run_users(self) {
        let k = self.k;
        // Accounts this client created and believes alive: (id, email).
        let mut mine: Vec<(String, String)> = Vec::new();
        for n in 0..self.spec.appends_per_client {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let action = madsim::rand::thread_rng().gen_range(0..10);
            let op = if mine.is_empty() || action < 5 {
                let key = self.keyed().then(|| format!("signup-u{k}-{n}"));
                UserOp::SignUp {
                    username: format!("u{k}-{n}"),
                    email: self.email(),
                    key,
                }
            } else {
                let i = madsim::rand::thread_rng().gen_range(0..mine.len());
                let user = mine[i].0.clone();
                if action < 8 {
                    UserOp::ChangeEmail {
                        user,
                        email: self.email(),
                    }
                } else {
                    UserOp::Delete { user }
                }
            };
            let mut retry = 0;
            let outcome = loop {
                let draw = madsim::rand::thread_rng().gen_range(0..usize::MAX);
                let node = self.targets.pick(draw);
                let sent_ms = now_ms();
                let outcome = self.client.user_command(node, &op).await;
                let answered_ms = now_ms();
                self.history.lock().unwrap().users.push(UserAttempt {
                    client: k,
                    node,
                    op: op.clone(),
                    retry,
                    outcome: outcome.clone(),
                    sent_ms,
                    answered_ms,
                });
                let keyed = matches!(&op, UserOp::SignUp { key: Some(_), .. });
                if !keyed
                    || !user_retryable(&outcome)
                    || retry >= self.spec.retries_max
                    || self.stop.load(Ordering::Relaxed)
                {
                    break outcome;
                }
                retry += 1;
                self.pause(false).await;
            };
            match (&op, &outcome) {
                (UserOp::SignUp { email, .. }, UserOutcome::Done { user, .. }) => {
                    mine.push((user.clone(), email.clone()))
                }
                (UserOp::ChangeEmail { user, email }, UserOutcome::Done { .. }) => {
                    for m in mine.iter_mut().filter(|m| &m.0 == user) {
                        m.1 = email.clone();
                    }
                }
                (UserOp::Delete { user }, UserOutcome::Done { .. } | UserOutcome::NotFound)
                | (UserOp::ChangeEmail { user, .. }, UserOutcome::NotFound) => {
                    mine.retain(|m| &m.0 != user)
                }
                _ => {}
            }
            self.pause(matches!(
                outcome,
                UserOutcome::Done { .. } | UserOutcome::Conflict { .. } | UserOutcome::NotFound
            ))
            .await;
        }
    }
}

/// Read pages of random topics from random nodes until stopped, mostly near the end of what
/// was seen so far (where an entry that is not committed yet would show).
async fn read_pages(
    reader: usize,
    client: Client,
    (targets, epochs): (Targets, crate::cluster::Epochs),
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut seen = [0u64; ALL_TOPICS.len()];
    while !stop.load(Ordering::Relaxed) {
        let (t, node, from, linearizable, pause) = {
            let mut rng = madsim::rand::thread_rng();
            let t = rng.gen_range(0..ALL_TOPICS.len());
            let from = if rng.gen_bool(0.8) {
                seen[t].saturating_sub(rng.gen_range(0..5))
            } else {
                rng.gen_range(0..=seen[t])
            };
            (
                t,
                targets.pick(rng.gen_range(0..usize::MAX)),
                from,
                rng.gen_bool(0.3),
                rng.gen_range(50..300),
            )
        };
        let topic = ALL_TOPICS[t];
        let read = ReadTopic {
            from,
            limit: crate::check::served::PAGE_LIMIT,
            wait_ms: 0,
            linearizable,
        };
        let sent_ms = now_ms();
        let epoch = epochs.get(node);
        let page = client
            .api()
            .read_topic(&node_addr(node), topic, read, Duration::from_secs(3))
            .await;
        if let (Ok(page), true) = (page, epochs.get(node) == epoch) {
            let head = page.head;
            // As JSON, as the checkers read events.
            let events: Vec<Value> = page
                .events
                .into_iter()
                .map(|e| serde_json::to_value(e).expect("an event serializes"))
                .collect();
            seen[t] = seen[t].max(from + events.len() as u64);
            history.lock().unwrap().reads.push(ReadSample {
                reader,
                node,
                epoch,
                topic: topic.to_string(),
                from,
                linearizable,
                events,
                head,
                sent_ms,
                answered_ms: now_ms(),
            });
        }
        sleep(Duration::from_millis(pause)).await;
    }
}

/// Ask `node` for its status, one call at a time, until stopped; keep the answers whose node
/// was not killed while the call was in flight.
async fn poll_status(
    client: Client,
    node: NodeId,
    epoch: Arc<AtomicU64>,
    every: Duration,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let before = epoch.load(Ordering::SeqCst);
        let r = client.status(node).await;
        let after = epoch.load(Ordering::SeqCst);
        if let (Ok(s), true) = (r, before == after) {
            history.lock().unwrap().status.push(StatusSample {
                node,
                epoch: after,
                at_ms: now_ms(),
                role: s.role,
                term: s.term,
                leader: s.leader,
                commit_index: s.commit_index,
                applied_index: s.applied_index,
                last_log_index: s.last_log_index,
            });
        }
        sleep(every).await;
    }
}

impl Client {
    /// Send one users command and classify the answer. Bodies go into the history as JSON,
    /// as the checkers read them.
    pub async fn user_command(&self, node: NodeId, op: &UserOp) -> UserOutcome {
        let api = self.api();
        let addr = node_addr(node);
        let done = match op {
            UserOp::SignUp {
                username,
                email,
                key,
            } => {
                let body = SignupRequest {
                    username: username.clone(),
                    email: email.clone(),
                    password: "correct horse".into(),
                };
                api.signup(&addr, &body, key.as_deref(), APPEND_TIMEOUT)
                    .await
                    .map(|a| (a.id, a.offset))
            }
            UserOp::ChangeEmail { user, email } => {
                let body = EmailChangeRequest {
                    email: email.clone(),
                };
                api.change_email(&addr, user, &body, APPEND_TIMEOUT)
                    .await
                    .map(|a| (a.id, a.offset))
            }
            UserOp::Delete { user } => api
                .delete_user(&addr, user, APPEND_TIMEOUT)
                .await
                .map(|a| (a.id, a.offset)),
        };
        match done {
            Ok((user, offset)) => UserOutcome::Done { user, offset },
            Err(ClientError::Refused { status: 404, .. })
            | Err(ClientError::BadAnswer { status: 404, .. }) => UserOutcome::NotFound,
            Err(ClientError::Refused { status, body, .. }) => {
                let code = body.error.clone();
                let body = serde_json::to_value(body).expect("an error body serializes");
                match status {
                    409 => UserOutcome::Conflict { code, body },
                    503 if code == "outcome_unknown" => UserOutcome::Unknown(format!("503 {body}")),
                    status => UserOutcome::Failed(status, body.to_string()),
                }
            }
            Err(ClientError::BadAnswer { status, reason, .. })
                if status == 200 || status == 201 =>
            {
                UserOutcome::Unknown(format!("{status} with an unexpected body: {reason}"))
            }
            Err(ClientError::BadAnswer { status, reason, .. }) => {
                UserOutcome::Failed(status, reason)
            }
            Err(e) if e.nothing_sent() => UserOutcome::Failed(0, e.to_string()),
            Err(e) => UserOutcome::Unknown(e.to_string()),
        }
    }
}
