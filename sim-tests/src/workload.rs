//! The client load of the scenarios: concurrent client tasks on the client node, each
//! appending events with unique ids through the HTTP API, to every node in turn.
//!
//! Each client owns one stream in topic [`STREAM_TOPIC`] and appends to it with
//! `expected_version` (its best knowledge of the stream's version; a 409 tells it the actual
//! one). Its other appends go to [`PLAIN_TOPIC`], one or two events at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use serde_json::{json, Value};

use crate::cluster::{now_ms, sleep, Client, SimCluster};
use crate::history::{Attempt, NodeId, Outcome};

pub const PLAIN_TOPIC: &str = "log";
pub const STREAM_TOPIC: &str = "orders";
pub const TOPICS: [&str; 2] = [PLAIN_TOPIC, STREAM_TOPIC];

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
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            clients: 4,
            appends_per_client: 200,
            think_ms: 5..40,
            backoff_ms: 100..300,
        }
    }
}

/// Running client tasks.
pub struct Load {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Attempt>>>,
    tasks: Vec<madsim::task::JoinHandle<()>>,
}

impl Load {
    /// Start `spec.clients` client tasks against the nodes `targets`.
    pub fn start(cluster: &SimCluster, spec: &LoadSpec, targets: Vec<NodeId>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..spec.clients)
            .map(|k| {
                let ctx = ClientCtx {
                    k,
                    client: cluster.client(),
                    targets: targets.clone(),
                    stop: stop.clone(),
                    history: history.clone(),
                    spec: spec.clone(),
                };
                cluster.spawn_client(ctx.run())
            })
            .collect();
        Load {
            stop,
            history,
            tasks,
        }
    }

    /// Appends answered so far.
    pub fn answered(&self) -> usize {
        self.history.lock().unwrap().len()
    }

    /// Appends acknowledged (201) so far.
    pub fn acknowledged(&self) -> usize {
        self.history
            .lock()
            .unwrap()
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Ok(_)))
            .count()
    }

    /// Wait until `n` more appends were answered (bounded by `within` of simulated time).
    pub async fn wait_answered(&self, n: usize, within: Duration) {
        self.keep_going(Duration::ZERO, n, within).await;
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

    /// Ask every client to stop, wait for their last answers, return the history in the order
    /// the answers arrived.
    pub async fn stop(self) -> Vec<Attempt> {
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
    targets: Vec<NodeId>,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Attempt>>>,
    spec: LoadSpec,
}

impl ClientCtx {
    async fn run(self) {
        let k = self.k;
        let stream = format!("order-c{k}");
        // What this client believes the stream's version is.
        let mut version: u64 = 0;
        for n in 0..self.spec.appends_per_client {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let node = self.targets[(k + n) % self.targets.len()];
            let id = format!("c{k}-{n}");
            let (topic, events, body, expected) = if n % 3 == 0 {
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
            let sent_ms = now_ms();
            let outcome = self.client.append(node, topic, &body).await;
            let answered_ms = now_ms();
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
            if let Outcome::Failed(status, body) = &outcome {
                // A 4xx other than 409 means the workload sent something the API refuses:
                // a bug of the test, not a fault of the cluster.
                assert!(
                    !(400..500).contains(status),
                    "append {id} to node {node} was refused with {status}: {body}"
                );
            }
            let succeeded = matches!(outcome, Outcome::Ok(_) | Outcome::Conflict(_));
            self.history.lock().unwrap().push(Attempt {
                id,
                client: k,
                node,
                topic: topic.to_string(),
                events,
                stream: expected,
                outcome,
                sent_ms,
                answered_ms,
            });
            let mut rng = madsim::rand::thread_rng();
            let mut pause = rng.gen_range(self.spec.think_ms.clone());
            if !succeeded {
                pause += rng.gen_range(self.spec.backoff_ms.clone());
            }
            sleep(Duration::from_millis(pause)).await;
        }
    }
}
