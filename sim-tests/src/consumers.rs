//! The consumers in the simulation: the query consumer, the mail consumer and the provider
//! (the mail-sink router) as madsim nodes of their own, built from the production code
//! (`consumers::query::follow`, `consumers::mail::MailConsumer::run`,
//! `consumers::mail_sink::MailSink`) over simulated TCP, and the consumer nemesis that kills
//! them and makes the provider fail, hang and go down.
//!
//! - The query store lives on a [`SimDisk`]: a kill loses what was not synced, like a node's.
//! - The mail consumer's stats and the provider's records live outside the nodes, so they
//!   survive kills: `sent`, `timeouts` and the provider's duplicates count over the whole run.
//! - The nemesis runs next to the cluster's (`nemesis::run`) during the safety phase: one loop
//!   kills and restarts a consumer at random times (short and long down times, anywhere in its
//!   work, between a provider call and the checkpoint report too), another gives the provider
//!   episodes of failures, hangs past the consumer's timeout and long outages (longer than the
//!   breaker's cool-down), and now and then refuses one address for good (its emails are
//!   parked). Every fault is undone when the safety phase ends.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumers::mail::{MailConsumer, MailStats, SharedStats};
use consumers::mail_sink::{Faults, MailSink};
use consumers::query::{follow, router, QueryState, QueryStore};
use madsim::rand::seq::SliceRandom;
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};
use uniqlog_node::Config;

use crate::check::consumers::ConsumerState;
use crate::cluster::{now_ms, sleep, SimCluster, SIM_CLIENT_TOKEN};
use crate::disk::SimDisk;
use crate::nemesis::FaultLog;
use crate::workload::EMAILS;

pub const QUERY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 110);
pub const MAIL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 111);
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 112);
pub const SINK_PORT: u16 = 7201;

/// `[query]` and `[mail]` for the simulation: checkpoints every few events or a few hundred
/// ms, a provider timeout of 500 ms, a breaker that opens after 3 failures for 1 s, so kills,
/// hangs and outages of a few seconds exercise every path many times per run.
pub const SIM_CONSUMERS: &str = r#"
[query]
listen = "10.0.0.110:7101"
checkpoint_every_events = 5
checkpoint_every_ms = 500
min_offset_wait_ms_max = 2000

[mail]
listen = "10.0.0.111:7102"
webhook_url = "http://10.0.0.112:7201/send"
timeout_ms = 500
checkpoint_every_events = 3
checkpoint_every_ms = 300
retry_base_ms = 50
retry_max_ms = 1000
breaker_failures = 3
breaker_cool_down_ms = 1000
"#;

/// The consumer fault kinds, as they appear in the fault counts.
pub const CONSUMER_CRASH: &str = "consumer_crash";
pub const PROVIDER_FLAKY: &str = "provider_flaky";
pub const PROVIDER_HANG: &str = "provider_hang";
pub const PROVIDER_DOWN: &str = "provider_down";

/// Where the query consumer is, shared with the node's tasks (survives kills).
#[derive(Default)]
struct QueryPos {
    applied: AtomicU64,
    head: AtomicU64,
    /// `follow` returned: the read model refused a page (never expected).
    stopped: AtomicBool,
}

/// Figures of the consumers over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerFigures {
    pub sent: u64,
    pub resent: u64,
    pub parked: u64,
    pub timeouts: u64,
    pub max_lag: u64,
    pub kills: u64,
    pub provider_episodes: u64,
}

/// The consumers and the provider of one run.
pub struct SimConsumers {
    runtime: Handle,
    config: Arc<Config>,
    query: NodeHandle,
    query_disk: SimDisk,
    query_up: bool,
    query_pos: Arc<QueryPos>,
    mail: NodeHandle,
    mail_up: bool,
    mail_stats: SharedStats,
    sink: MailSink,
    _sink_node: NodeHandle,
    mail_kills: u64,
    /// Per restart of the mail consumer: the provider's request count when it restarted, and
    /// the checkpoint committed before it was killed (`None`: no node answered).
    mail_restarts: Vec<(u64, Option<u64>)>,
    mail_checkpoint: Box<dyn Fn() -> madsim::task::JoinHandle<Option<u64>> + Send + Sync>,
    query_kills: u64,
    provider_episodes: u64,
    max_lag: Arc<AtomicU64>,
    lag_monitor: Option<madsim::task::JoinHandle<()>>,
}

/// Every address a node of the run may have: membership churn adds nodes under new ids and
/// retires old ones, and a consumer must still find the cluster.
fn nodes_of(config: &Config) -> Vec<String> {
    crate::cluster::all_node_addrs(config.nodes.len())
}

fn stale_after(config: &Config) -> Duration {
    Duration::from_millis(config.raft.election_timeout_ms_max)
}

async fn run_query(config: Arc<Config>, disk: SimDisk, pos: Arc<QueryPos>) {
    let store = QueryStore::open_with_backend(disk.open())
        .unwrap_or_else(|e| panic!("query: opening its store failed: {e}"));
    let start = store.next_offset().expect("query: reading its checkpoint");
    pos.applied.store(start, Ordering::SeqCst);
    let (applied_tx, applied) = tokio::sync::watch::channel(start);
    let (head_tx, head) = tokio::sync::watch::channel(start);
    let state = Arc::new(QueryState {
        store,
        applied: applied.clone(),
        head: head.clone(),
        config: config.query.clone(),
        auth: config.client_auth(),
        http: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(&config.query.listen)
        .await
        .expect("query: bind");
    tokio::spawn(api::server::serve(
        listener,
        router(state.clone()),
        Duration::from_secs(10),
    ));
    // Copy the positions out of the node, for the lag monitor and the liveness wait.
    tokio::spawn({
        let pos = pos.clone();
        let (mut applied, mut head) = (applied, head);
        async move {
            loop {
                pos.applied
                    .store(*applied.borrow_and_update(), Ordering::SeqCst);
                pos.head.store(*head.borrow_and_update(), Ordering::SeqCst);
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    r = head.changed() => if r.is_err() { return },
                }
            }
        }
    });
    let transport = api::client_transport(Some(SIM_CLIENT_TOKEN.to_string()));
    follow(
        state,
        applied_tx,
        head_tx,
        nodes_of(&config),
        transport,
        stale_after(&config),
    )
    .await;
    pos.stopped.store(true, Ordering::SeqCst);
    std::future::pending::<()>().await;
}

async fn run_mail(config: Arc<Config>, stats: SharedStats) {
    MailConsumer {
        config: config.mail.clone(),
        users: config.users.clone(),
        nodes: nodes_of(&config),
        transport: api::client_transport(Some(SIM_CLIENT_TOKEN.to_string())),
        // The provider gets no token, as in production.
        provider_transport: api::client_transport(None),
        stale_after: stale_after(&config),
        stats,
    }
    .run()
    .await;
}

impl SimConsumers {
    /// Start the provider, the query consumer and the mail consumer against `cluster`.
    pub fn start(cluster: &SimCluster) -> SimConsumers {
        let runtime = Handle::current();
        let config = cluster.config.clone();
        let sink = MailSink::default();
        let sink_node = runtime
            .create_node()
            .name("mail-sink")
            .ip(IpAddr::V4(SINK_IP))
            .init({
                let sink = sink.clone();
                move || {
                    let sink = sink.clone();
                    async move {
                        let listener =
                            tokio::net::TcpListener::bind((SINK_IP.to_string(), SINK_PORT))
                                .await
                                .expect("mail-sink: bind");
                        api::server::serve(listener, sink.router(), Duration::from_secs(10)).await;
                    }
                }
            })
            .build();
        let query_disk = SimDisk::new("query");
        let query_pos = Arc::new(QueryPos::default());
        let query = runtime
            .create_node()
            .name("query")
            .ip(IpAddr::V4(QUERY_IP))
            .init({
                let (config, disk, pos) = (config.clone(), query_disk.clone(), query_pos.clone());
                move || run_query(config.clone(), disk.clone(), pos.clone())
            })
            .build();
        let mail_stats: SharedStats = Arc::new(Mutex::new(MailStats::default()));
        let mail = runtime
            .create_node()
            .name("mail")
            .ip(IpAddr::V4(MAIL_IP))
            .init({
                let (config, stats) = (config.clone(), mail_stats.clone());
                move || run_mail(config.clone(), stats.clone())
            })
            .build();
        let max_lag = Arc::new(AtomicU64::new(0));
        let lag_monitor = Some(madsim::task::spawn({
            let (pos, stats, max_lag) = (query_pos.clone(), mail_stats.clone(), max_lag.clone());
            async move {
                loop {
                    let query_lag = pos
                        .head
                        .load(Ordering::SeqCst)
                        .saturating_sub(pos.applied.load(Ordering::SeqCst));
                    let mail_lag = stats.lock().expect("stats").lag_events;
                    max_lag.fetch_max(query_lag.max(mail_lag), Ordering::SeqCst);
                    sleep(Duration::from_millis(250)).await;
                }
            }
        }));
        SimConsumers {
            runtime,
            config,
            query,
            query_disk,
            query_up: true,
            query_pos,
            mail,
            mail_up: true,
            mail_stats,
            sink,
            _sink_node: sink_node,
            mail_kills: 0,
            mail_restarts: Vec::new(),
            mail_checkpoint: Box::new(cluster.mail_checkpoint_probe()),
            query_kills: 0,
            provider_episodes: 0,
            max_lag,
            lag_monitor,
        }
    }

    fn kill_query(&mut self) {
        assert!(self.query_up);
        // The disk first: the dying store must not write after the cut.
        self.query_disk.crash();
        self.runtime.kill(self.query.id());
        self.query_up = false;
        self.query_kills += 1;
    }

    fn kill_mail(&mut self) {
        assert!(self.mail_up);
        self.runtime.kill(self.mail.id());
        self.mail_up = false;
        self.mail_kills += 1;
    }

    fn restart_query(&mut self) {
        assert!(!self.query_up);
        self.runtime.restart(self.query.id());
        self.query_up = true;
    }

    /// Restart the mail consumer, noting where the provider's arrivals stood and what
    /// checkpoint was committed before the kill (`before`): from here on, no email of an event
    /// before that checkpoint may be sent again.
    fn restart_mail(&mut self, before: Option<u64>) {
        assert!(!self.mail_up);
        self.mail_restarts.push((self.sink.requests(), before));
        self.runtime.restart(self.mail.id());
        self.mail_up = true;
    }

    /// The consumer nemesis for `duration` of simulated time: kills on one loop, provider
    /// episodes on another, both drawn from the seed. Leaves both consumers up and the
    /// provider healthy; the episodes go into `log`.
    pub async fn nemesis(&mut self, duration: Duration, log: &mut FaultLog) {
        let until = now_ms() + duration.as_millis() as u64;
        let sink = self.sink.clone();
        let mut kill_lines = Vec::new();
        let mut provider_lines = Vec::new();
        let kills = async {
            while now_ms() < until {
                sleep(ms(100..1500)).await;
                let mail = madsim::rand::thread_rng().gen_bool(0.7);
                let down = if madsim::rand::thread_rng().gen_bool(0.6) {
                    ms(20..500)
                } else {
                    ms(1000..4000)
                };
                let who = if mail { "mail" } else { "query" };
                kill_lines.push((
                    CONSUMER_CRASH,
                    format!(
                        "{:>7} ms {CONSUMER_CRASH}: {who} down for {} ms",
                        now_ms(),
                        down.as_millis()
                    ),
                ));
                let mut checkpoint = None;
                if mail {
                    // Bounded: under a partition no node may answer (then nothing is checked).
                    checkpoint =
                        madsim::time::timeout(Duration::from_secs(3), (self.mail_checkpoint)())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                    self.kill_mail();
                } else {
                    self.kill_query();
                }
                sleep(down).await;
                if mail {
                    self.restart_mail(checkpoint);
                } else {
                    self.restart_query();
                }
            }
        };
        let provider = async {
            while now_ms() < until {
                sleep(ms(300..2500)).await;
                let (kind, faults, hold) = match madsim::rand::thread_rng().gen_range(0..3) {
                    0 => {
                        let rate = madsim::rand::thread_rng().gen_range(0.2..0.9);
                        // Now and then one address is refused for good: its emails are parked.
                        let reject = if madsim::rand::thread_rng().gen_bool(0.3) {
                            vec![EMAILS
                                .choose(&mut madsim::rand::thread_rng())
                                .expect("emails")
                                .to_string()]
                        } else {
                            Vec::new()
                        };
                        let faults = Faults {
                            fail_rate: rate,
                            reject,
                            ..Faults::default()
                        };
                        (PROVIDER_FLAKY, faults, ms(1000..5000))
                    }
                    1 => {
                        let faults = Faults {
                            delay_ms: madsim::rand::thread_rng().gen_range(600..2000),
                            ..Faults::default()
                        };
                        (PROVIDER_HANG, faults, ms(1000..4000))
                    }
                    _ => {
                        let hold = ms(2000..8000);
                        let faults = Faults {
                            down_for_ms: hold.as_millis() as u64,
                            ..Faults::default()
                        };
                        (PROVIDER_DOWN, faults, hold)
                    }
                };
                provider_lines.push((
                    kind,
                    format!(
                        "{:>7} ms {kind}: {faults:?} for {} ms",
                        now_ms(),
                        hold.as_millis()
                    ),
                ));
                sink.set_faults(faults);
                sleep(hold).await;
                sink.set_faults(Faults::default());
            }
        };
        futures::join!(kills, provider);
        for (kind, l) in kill_lines.into_iter().chain(provider_lines) {
            *log.counts.entry(kind).or_default() += 1;
            if kind != CONSUMER_CRASH {
                self.provider_episodes += 1;
            }
            tracing::info!("consumer nemesis {l}");
            log.lines.push(l);
        }
    }

    /// Wait (bounded) until both consumers have caught up with `head` events of `users` and
    /// the breaker is closed; then stop the query consumer and read what everything holds.
    pub async fn finish(
        &mut self,
        cluster: &SimCluster,
        head: u64,
        within: Duration,
    ) -> ConsumerState {
        let deadline = now_ms() + within.as_millis() as u64;
        let mut mail_checkpoint = None;
        loop {
            mail_checkpoint = mail_checkpoint_now(cluster).await.or(mail_checkpoint);
            let query_done = self.query_pos.applied.load(Ordering::SeqCst) >= head;
            let breaker_closed = self.mail_stats.lock().expect("stats").breaker == "closed";
            let stopped = self.query_pos.stopped.load(Ordering::SeqCst);
            if (query_done && breaker_closed && mail_checkpoint == Some(head)) || stopped {
                break;
            }
            if now_ms() >= deadline {
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
        if let Some(m) = self.lag_monitor.take() {
            m.abort();
        }
        let query_applied = self.query_pos.applied.load(Ordering::SeqCst);
        // Stop the query consumer and read its store from its disk (what survived the cut).
        self.kill_query();
        self.query_kills -= 1;
        let store = QueryStore::open_with_backend(self.query_disk.open())
            .unwrap_or_else(|e| panic!("query: reopening its store failed: {e}"));
        // As JSON: the checker replays `users` on its own and compares what it would serve.
        let docs = store
            .all_docs()
            .expect("query: reading the documents")
            .into_iter()
            .map(|d| serde_json::to_value(d).expect("a document serializes"))
            .collect();
        let query_next = store.next_offset().expect("query: reading the checkpoint");
        drop(store);
        let (messages, duplicates) = self.sink.recorded();
        let stats = self.mail_stats.lock().expect("stats").clone();
        ConsumerState {
            docs,
            query_applied,
            query_next,
            mail_checkpoint,
            breaker: stats.breaker.to_string(),
            messages: messages
                .into_iter()
                .map(|m| (m.idempotency_key, m.to))
                .collect(),
            duplicates,
            parked: parked_keys(cluster).await,
            mail_kills: self.mail_kills,
            mail_restarts: self.mail_restarts.clone(),
            resent: self.sink.resent(),
            checkpoint_every_events: self.config.mail.checkpoint_every_events,
            timeouts: stats.timeouts,
        }
    }

    /// The run's figures (after [`SimConsumers::finish`]).
    pub fn figures(&self, state: Option<&ConsumerState>) -> ConsumerFigures {
        let stats = self.mail_stats.lock().expect("stats");
        ConsumerFigures {
            sent: stats.sent,
            resent: state.map_or(0, |s| s.duplicates),
            parked: stats.parked,
            timeouts: stats.timeouts,
            max_lag: self.max_lag.load(Ordering::SeqCst),
            kills: self.mail_kills + self.query_kills,
            provider_episodes: self.provider_episodes,
        }
    }
}

fn ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(range))
}

/// The mail consumer's checkpoint as `__checkpoints` holds it (a node's applied state).
async fn mail_checkpoint_now(cluster: &SimCluster) -> Option<u64> {
    let client = cluster.client();
    let ids = cluster.ids();
    cluster
        .spawn_client(async move {
            for id in ids {
                if let Ok(Some(c)) = client.checkpoint(id, "mail").await {
                    return Some(c.offset);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
}

/// The idempotency keys of the parked events (`__parked`).
async fn parked_keys(cluster: &SimCluster) -> BTreeSet<String> {
    for id in cluster.ids() {
        if let Ok(events) = cluster.read_topic(id, consumers::mail::PARKED_TOPIC).await {
            return events
                .iter()
                .filter_map(|e| e["data"]["idempotency_key"].as_str().map(str::to_string))
                .collect();
        }
    }
    BTreeSet::new()
}
