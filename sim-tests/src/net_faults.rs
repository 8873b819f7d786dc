//! Message faults that madsim's TCP cannot make: a [`Transport`] wrapper around
//! `api::HyperTransport` that loses requests or answers, delays and duplicates them, with the
//! odds drawn from madsim's seeded generator.
//!
//! Every node of a [`crate::cluster::SimCluster`] sends its peer RPC (`/raft/*`) and its
//! forwarded operations (`/internal/v1/leader`) through a [`FaultyTransport`]; all of them
//! share one [`NetFaults`], which the scenario switches on for the safety phase and off for the
//! liveness phase. While it is off the wrapper draws nothing from the generator, so a run
//! without message faults sees the same randomness as with the bare transport.
//!
//! The faults, per request:
//! - **lost request**: nothing reaches the peer; the caller waits its whole deadline and gets a
//!   timeout (what a lost packet looks like);
//! - **lost answer**: the peer handles the request, the caller gets a broken connection or a
//!   timeout: an unknown outcome;
//! - **delay**: the request leaves late (concurrent requests overtake each other: reordering);
//! - **duplicate**: the same request is sent a second time 1 to 100 ms after the first and its
//!   answer is thrown away (not if the first was refused: what was never sent cannot arrive
//!   twice). Only requests the system must tolerate twice are duplicated: Raft RPCs, read
//!   index, and forwarded writes that carry an idempotency key. A plain append sent twice is
//!   two appends by definition (TCP does not duplicate an HTTP request; only a retrying
//!   client does, and it must use a key). A forwarded write's copy leaves after the first
//!   one's answer, and not at all if that answer was 503 `unavailable`: that answer promises
//!   the write was not applied and reaches the client, and a copy applied later (the leader's
//!   disk freed in between, seed 721 of the full-disk fault) would break a promise the system
//!   kept; a retrying client, the real source of copies, sees the first answer before it
//!   sends again.
//!
//! Raft's appends travel on links (`api::link`), one connection carrying one call at a time.
//! A link's calls get the same faults as requests, as a connection's traffic can meet them:
//! a lost request or answer breaks the link (the caller opens another), a delay holds the
//! call back, and a duplicate is the same frame sent again later on a link of its own, as a
//! leader's retry meets the first copy still on its way. Opening a link is a request like any
//! other.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::link::{FrameLink, Opened};
use api::{HttpRequest, HttpResponse, HyperTransport, Transport, TransportError};
use bytes::Bytes;
use futures::future::BoxFuture;
use madsim::rand::Rng;
use raft_store::Request;
use uniqlog_node::app::LeaderOp;

/// What a request is, for the odds and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MsgKind {
    /// `/raft/append`, `/raft/vote`, `/raft/snapshot`.
    Raft,
    /// `/internal/v1/leader`: a follower hands an operation to the leader.
    Forward,
    /// Anything else (the simulation's own clients do not go through the wrapper).
    Other,
}

impl MsgKind {
    pub fn of(path: &str) -> MsgKind {
        if path.starts_with("/raft/") {
            MsgKind::Raft
        } else if path.starts_with(uniqlog_node::app::FORWARD_PATH) {
            MsgKind::Forward
        } else {
            MsgKind::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MsgKind::Raft => "raft",
            MsgKind::Forward => "forward",
            MsgKind::Other => "other",
        }
    }
}

/// The kind of message fault, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MsgFault {
    LostRequest,
    LostAnswer,
    Delayed,
    Duplicated,
}

impl MsgFault {
    pub fn name(self) -> &'static str {
        match self {
            MsgFault::LostRequest => "lost_request",
            MsgFault::LostAnswer => "lost_answer",
            MsgFault::Delayed => "delayed",
            MsgFault::Duplicated => "duplicated",
        }
    }
}

/// The odds of each fault per request (each in 0.0..=1.0), and how long a delay lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub lose_request: f64,
    pub lose_answer: f64,
    pub delay: f64,
    pub delay_ms: (u64, u64),
    pub duplicate: f64,
}

impl Rates {
    pub const NONE: Rates = Rates {
        lose_request: 0.0,
        lose_answer: 0.0,
        delay: 0.0,
        delay_ms: (0, 0),
        duplicate: 0.0,
    };

    /// Odds drawn from the seed: some runs barely lossy, some very.
    pub fn random(rng: &mut impl Rng) -> Rates {
        let level = [0.005, 0.02, 0.05, 0.1][rng.gen_range(0..4)];
        Rates {
            lose_request: level,
            lose_answer: level,
            delay: rng.gen_range(0.0..0.2),
            delay_ms: (1, rng.gen_range(20..400)),
            duplicate: rng.gen_range(0.0..0.1),
        }
    }

    fn any(&self) -> bool {
        self.lose_request > 0.0
            || self.lose_answer > 0.0
            || self.delay > 0.0
            || self.duplicate > 0.0
    }
}

impl fmt::Display for Rates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lose_request={:.3} lose_answer={:.3} delay={:.2}({}..{}ms) duplicate={:.3}",
            self.lose_request,
            self.lose_answer,
            self.delay,
            self.delay_ms.0,
            self.delay_ms.1,
            self.duplicate
        )
    }
}

#[derive(Default)]
struct State {
    rates: BTreeMap<MsgKind, Rates>,
    counts: BTreeMap<(MsgKind, MsgFault), u64>,
}

/// The message faults in force for the whole cluster, and what was done. Cheap to clone.
#[derive(Clone, Default)]
pub struct NetFaults {
    state: Arc<Mutex<State>>,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Pass,
    LoseRequest,
    /// Lose the answer; `true`: report a broken connection at once, `false`: a timeout.
    LoseAnswer(bool),
}

impl NetFaults {
    pub fn new() -> NetFaults {
        NetFaults::default()
    }

    /// Set the odds for one kind of message (`Rates::NONE` switches it off).
    pub fn set(&self, kind: MsgKind, rates: Rates) {
        let mut s = self.state.lock().unwrap();
        if rates.any() {
            s.rates.insert(kind, rates);
        } else {
            s.rates.remove(&kind);
        }
    }

    /// Switch every message fault off.
    pub fn clear(&self) {
        self.state.lock().unwrap().rates.clear();
    }

    pub fn rates(&self, kind: MsgKind) -> Rates {
        self.state
            .lock()
            .unwrap()
            .rates
            .get(&kind)
            .copied()
            .unwrap_or(Rates::NONE)
    }

    /// Faults done so far, by message kind and fault.
    pub fn counts(&self) -> BTreeMap<(MsgKind, MsgFault), u64> {
        self.state.lock().unwrap().counts.clone()
    }

    fn count(&self, kind: MsgKind, fault: MsgFault) {
        *self
            .state
            .lock()
            .unwrap()
            .counts
            .entry((kind, fault))
            .or_default() += 1;
    }

    /// Decide the fate of one request: (plan, delay, duplicate after). Draws from the seeded
    /// generator only when faults are on for this kind.
    fn decide(&self, kind: MsgKind, duplicable: bool) -> (Plan, Duration, Option<Duration>) {
        let Some(rates) = self.state.lock().unwrap().rates.get(&kind).copied() else {
            return (Plan::Pass, Duration::ZERO, None);
        };
        let mut rng = madsim::rand::thread_rng();
        let plan = if rng.gen_bool(rates.lose_request) {
            Plan::LoseRequest
        } else if rng.gen_bool(rates.lose_answer) {
            Plan::LoseAnswer(rng.gen_bool(0.5))
        } else {
            Plan::Pass
        };
        let delay = if rng.gen_bool(rates.delay) {
            let (lo, hi) = rates.delay_ms;
            Duration::from_millis(rng.gen_range(lo..=hi.max(lo)))
        } else {
            Duration::ZERO
        };
        let duplicate = (duplicable && rng.gen_bool(rates.duplicate))
            .then(|| Duration::from_millis(rng.gen_range(1..100)));
        match plan {
            Plan::LoseRequest => self.count(kind, MsgFault::LostRequest),
            Plan::LoseAnswer(_) => self.count(kind, MsgFault::LostAnswer),
            Plan::Pass => {}
        }
        if !delay.is_zero() {
            self.count(kind, MsgFault::Delayed);
        }
        if duplicate.is_some() {
            self.count(kind, MsgFault::Duplicated);
        }
        (plan, delay, duplicate)
    }
}

/// May this request be delivered twice without changing what the system promises?
fn duplicable(kind: MsgKind, req: &HttpRequest) -> Option<CopyWhen> {
    match kind {
        MsgKind::Raft => Some(CopyWhen::Concurrent),
        MsgKind::Forward => {
            let body = req.body.as_ref()?;
            let f = raft_store::codec::decode::<uniqlog_node::app::Forwarded>(body).ok()?;
            match f.op {
                LeaderOp::ReadIndex => Some(CopyWhen::Concurrent),
                LeaderOp::Write {
                    request: Request::Append(a),
                } if a.idempotency.is_some() => Some(CopyWhen::AfterAnswer),
                _ => None,
            }
        }
        MsgKind::Other => None,
    }
}

/// When a duplicate may leave (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyWhen {
    /// While the first may still be on its way.
    Concurrent,
    /// After the first one's answer, unless it said the request was not applied.
    AfterAnswer,
}

/// Whether an answer promises that the request was not applied: it never left, or it was
/// refused with 503 `unavailable`.
fn not_applied(r: &Result<HttpResponse, TransportError>) -> bool {
    match r {
        Err(e) => e.nothing_sent(),
        Ok(resp) => {
            resp.status == 503
                && serde_json::from_slice::<api::error::ErrorBody>(&resp.body)
                    .is_ok_and(|b| b.error == "unavailable")
        }
    }
}

/// `HyperTransport` with the faults of a shared [`NetFaults`].
#[derive(Clone)]
pub struct FaultyTransport {
    inner: HyperTransport,
    faults: NetFaults,
}

impl FaultyTransport {
    pub fn new(faults: NetFaults) -> FaultyTransport {
        FaultyTransport {
            inner: HyperTransport::new(),
            faults,
        }
    }
}

impl Transport for FaultyTransport {
    fn send(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let kind = MsgKind::of(&req.path);
        let copy = duplicable(kind, &req);
        let (plan, delay, duplicate) = self.faults.decide(kind, copy.is_some());
        if plan == Plan::Pass && delay.is_zero() && duplicate.is_none() {
            return self.inner.send(addr, req, timeout);
        }
        let inner = self.inner.clone();
        let addr = addr.to_string();
        Box::pin(async move {
            let timed_out = |addr: &str| TransportError::Timeout {
                addr: addr.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            };
            if delay >= timeout {
                // Delivered too late to matter: the caller has given up. No duplicate either.
                tokio::time::sleep(timeout).await;
                return Err(timed_out(&addr));
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Set when the request certainly reached nobody (connection refused): a request
            // that was never sent cannot arrive twice.
            let refused = Arc::new(AtomicBool::new(false));
            let (answered, answer) = tokio::sync::oneshot::channel::<bool>();
            if let Some(after) = duplicate {
                let (inner, addr, req) = (inner.clone(), addr.clone(), req.clone());
                let refused = refused.clone();
                tokio::spawn(async move {
                    if copy == Some(CopyWhen::AfterAnswer) && answer.await.unwrap_or(true) {
                        return;
                    }
                    // At least 1 ms: by then a refused connection has been reported.
                    tokio::time::sleep(after).await;
                    if !refused.load(Ordering::SeqCst) {
                        let _ = inner.send(&addr, req, timeout).await;
                    }
                });
            }
            let left = timeout - delay;
            let note = |r: Result<HttpResponse, TransportError>| {
                if matches!(&r, Err(e) if e.nothing_sent()) {
                    refused.store(true, Ordering::SeqCst);
                }
                let _ = answered.send(not_applied(&r));
                r
            };
            let to = addr.clone();
            faulted(&addr, plan, Duration::ZERO, left, |left| {
                Box::pin(async move { note(inner.send(&to, req, left).await) })
            })
            .await
        })
    }

    fn open_link(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Opened, TransportError>> {
        let (inner, faults, addr) = (self.inner.clone(), self.faults.clone(), addr.to_string());
        let req_copy = req.clone();
        Box::pin(async move {
            let (plan, delay, _) = faults.decide(MsgKind::Raft, false);
            let opened = faulted(&addr, plan, delay, timeout, |left| {
                inner.open_link(&addr, req, left)
            })
            .await?;
            Ok(match opened {
                Opened::Link(link) => Opened::Link(Box::new(FaultyLink {
                    link,
                    faults,
                    inner,
                    addr,
                    open: req_copy,
                })),
                refused => refused,
            })
        })
    }
}

/// A link whose calls meet [`NetFaults`] (Raft's kind).
struct FaultyLink {
    link: Box<dyn FrameLink>,
    faults: NetFaults,
    /// What opens another link, for a duplicate.
    inner: HyperTransport,
    addr: String,
    open: HttpRequest,
}

impl FrameLink for FaultyLink {
    fn call(
        &mut self,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let (plan, delay, duplicate) = self.faults.decide(MsgKind::Raft, true);
            if let Some(after) = duplicate {
                let (inner, addr, open) =
                    (self.inner.clone(), self.addr.clone(), self.open.clone());
                let copy = frame.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    if let Ok(Opened::Link(mut link)) = inner.open_link(&addr, open, timeout).await
                    {
                        let _ = link.call(copy, timeout).await;
                    }
                });
            }
            let link = &mut self.link;
            faulted(&self.addr, plan, delay, timeout, |left| {
                link.call(frame, left)
            })
            .await
        })
    }
}

/// Run `call` (given the time it has left) under `plan` and `delay`, as [`FaultyTransport`]
/// runs a request but with no duplicate.
async fn faulted<'a, T>(
    addr: &str,
    plan: Plan,
    delay: Duration,
    timeout: Duration,
    call: impl FnOnce(Duration) -> BoxFuture<'a, Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let timed_out = || TransportError::Timeout {
        addr: addr.to_string(),
        timeout_ms: timeout.as_millis() as u64,
    };
    if delay >= timeout {
        tokio::time::sleep(timeout).await;
        return Err(timed_out());
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let left = timeout - delay;
    match plan {
        Plan::Pass => call(left).await,
        Plan::LoseRequest => {
            tokio::time::sleep(left).await;
            Err(timed_out())
        }
        Plan::LoseAnswer(broken) => {
            let start = tokio::time::Instant::now();
            call(left).await?;
            if broken {
                Err(TransportError::Broken {
                    addr: addr.to_string(),
                    reason: "simulated: the answer was lost".into(),
                })
            } else {
                tokio::time::sleep(left.saturating_sub(start.elapsed())).await;
                Err(timed_out())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_store::{AppendRequest, IdempotencyKey};

    #[test]
    fn kinds_by_path() {
        assert_eq!(MsgKind::of("/raft/append"), MsgKind::Raft);
        assert_eq!(MsgKind::of("/internal/v1/leader"), MsgKind::Forward);
        assert_eq!(MsgKind::of("/v1/topics/x/events"), MsgKind::Other);
    }

    #[test]
    fn only_keyed_writes_and_read_index_are_duplicated() {
        let fwd = |op: LeaderOp| {
            let body = raft_store::codec::encode(&uniqlog_node::app::Forwarded {
                op,
                timeout_ms: 5,
                term: 1,
            });
            HttpRequest::post("/internal/v1/leader", body)
        };
        let write = |idempotency: Option<IdempotencyKey>| LeaderOp::Write {
            request: Request::Append(AppendRequest {
                topic: "t".into(),
                events: Vec::new(),
                expected_version: Default::default(),
                idempotency,
                rules_version: 0,
                reply: None,
            }),
        };
        let keyed = write(Some(IdempotencyKey {
            key: "k".into(),
            fingerprint: "f".into(),
        }));
        assert_eq!(
            duplicable(MsgKind::Forward, &fwd(keyed)),
            Some(CopyWhen::AfterAnswer)
        );
        assert_eq!(duplicable(MsgKind::Forward, &fwd(write(None))), None);
        assert_eq!(
            duplicable(MsgKind::Forward, &fwd(LeaderOp::ReadIndex)),
            Some(CopyWhen::Concurrent)
        );
        assert_eq!(
            duplicable(
                MsgKind::Forward,
                &HttpRequest::post("/internal/v1/leader", "not binary")
            ),
            None
        );
        assert_eq!(
            duplicable(MsgKind::Raft, &HttpRequest::post("/raft/vote", "{}")),
            Some(CopyWhen::Concurrent)
        );
    }
}
