//! Continuous writers for tests of a cluster that changes under load: each write carries an
//! idempotency key and is retried with it (on another node) until it is acknowledged, so an
//! outcome lost in a failover is never written twice and never counted as lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{event_body, try_post_keyed, wait_for, Cluster};

/// An acknowledged append: the event's uid, its offset, when the 201 came.
#[derive(Clone, Debug)]
pub struct Ack {
    pub uid: String,
    pub offset: u64,
    pub at: Instant,
}

pub struct Load {
    topic: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    started: Instant,
}

impl Load {
    /// `writers` threads appending to `topic`, spread over `addrs`.
    pub fn start(addrs: Vec<String>, topic: &str, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let addrs = Arc::new(Mutex::new(addrs));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acks, addrs) = (stop.clone(), acks.clone(), addrs.clone());
                let path = format!("/v1/topics/{topic}/events");
                thread::spawn(move || {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let uid = format!("w{w}-{n}");
                        let body = event_body(&uid, None);
                        let mut attempt = 0usize;
                        // Retried with the same key until acknowledged (or the test stops).
                        while !stop.load(Ordering::Relaxed) {
                            let addr = {
                                let a = addrs.lock().unwrap();
                                a[(w + n + attempt) % a.len()].clone()
                            };
                            attempt += 1;
                            match try_post_keyed(&addr, &path, &body, &uid) {
                                Ok(r) if r.status == 201 => {
                                    acks.lock().unwrap().push(Ack {
                                        uid: uid.clone(),
                                        offset: r.body["first_offset"].as_u64().unwrap(),
                                        at: Instant::now(),
                                    });
                                    break;
                                }
                                Ok(r) => assert!(
                                    matches!(r.status, 429 | 503),
                                    "a write answered {}: {}",
                                    r.status,
                                    r.text
                                ),
                                Err(_) => {}
                            }
                            thread::sleep(Duration::from_millis(20));
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            topic: topic.to_string(),
            stop,
            threads,
            acks,
            started: Instant::now(),
        }
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Wait until `more` writes were acknowledged after now.
    pub fn wait_more(&self, more: usize) {
        let target = self.acked() + more;
        wait_for(
            &format!("{more} more acknowledged writes"),
            Duration::from_secs(60),
            || (self.acked() >= target).then_some(()),
        );
    }

    /// Stop the writers; every acknowledged write, in the order acknowledged.
    pub fn stop(self) -> (Vec<Ack>, Instant) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acks = self.acks.lock().unwrap().clone();
        (acks, self.started)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// The longest time without any acknowledged write between `from` and the last ack.
pub fn longest_gap(acks: &[Ack], from: Instant) -> Duration {
    let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    times.sort();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in times {
        gap = gap.max(t.duration_since(last));
        last = t;
    }
    gap
}

/// Every acknowledged write is where its answer said, on every node of `ids`, and the nodes
/// serve the same topic.
pub fn assert_acked_present(c: &Cluster, ids: &[u64], topic: &str, acks: &[Ack]) {
    c.wait_converged(ids);
    let first = c.read_topic(ids[0], topic);
    for id in &ids[1..] {
        assert!(
            c.read_topic(*id, topic) == first,
            "node {id} serves a different {topic} than node {}",
            ids[0]
        );
    }
    for a in acks {
        let e = first.get(a.offset as usize).unwrap_or_else(|| {
            panic!("acknowledged {a:?} is missing: {topic} has {}", first.len())
        });
        assert_eq!(e["data"]["uid"], a.uid.as_str(), "acknowledged {a:?}");
    }
    // Retries with a key never wrote an event twice.
    let mut uids: Vec<&str> = first
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap())
        .collect();
    let all = uids.len();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), all, "an event was written twice");
}
