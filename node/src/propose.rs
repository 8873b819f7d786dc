//! Group commit on the leader: concurrent client requests share one Raft entry.
//!
//! Every request that reaches the leader while earlier proposals are in flight waits in a
//! queue; the batcher takes what has gathered (up to a count and a byte bound) and proposes it
//! as one [`LogCommand`]. Apply decides each request on its own and returns one answer per
//! request, in order, so each client still gets exactly its own outcome: batching changes the
//! cost per request (one entry, one encoding, one replication message, one apply), never the
//! result. With a single client nothing waits: a request is proposed as soon as it arrives.
//!
//! At most [`IN_FLIGHT_MAX`] entries are in flight at once. That bound is what makes batches
//! grow under load (requests gather while the pipeline is full) and keeps the pipeline from
//! holding more than a few entries' worth of work.
//!
//! The queue itself is bounded (`[limits] write_queue_max`): a request that finds it full is
//! refused at once with 429 and `Retry-After`, before anything is proposed. Under a flood the
//! node's memory holds at most that many waiting requests, and those that are admitted still
//! commit within the request timeout instead of all timing out together.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use raft_store::{Answer, LogCommand, Request, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::NodeMetrics;
use api::error::ApiError;

/// Entries proposed and not yet answered, at most. One since issue 25 step 9: on the
/// segment log, with the leader's fsync beside its followers', a second entry in flight
/// bought no throughput and made smaller entries (17.8 requests an entry at 64 clients, 29.2
/// with one), and every entry costs an append RPC, a frame and an fdatasync on each follower
/// and a turn of Raft's core: `bench/ab.sh` at 64 clients 1.05×, CPU a request 95 → 88 µs.
/// On the redb log two had been the best.
const IN_FLIGHT_MAX: usize = 1;

/// Requests in one entry, at most.
const REQUESTS_PER_ENTRY_MAX: usize = 256;

/// A batch is closed once its requests' payload passes this (a single larger request still
/// goes, alone): replication sends whole entries, and an entry must fit in one append RPC.
const ENTRY_BYTES_TARGET: usize = 512 * 1024;

/// A request's answer and the index of the entry that carried it.
type Reply = oneshot::Sender<Result<(Answer, u64), ApiError>>;

struct Queued {
    request: Request,
    reply: Reply,
    /// The request's span: the entry's span follows from it, so a trace leads from each
    /// request to the entry that carried it.
    span: tracing::Span,
}

/// The queue in front of `client_write`; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Queued>,
}

impl Proposer {
    /// Start the batcher for `raft` (on the current runtime). An entry whose outcome has not
    /// come back within `entry_timeout` frees its slot and answers `outcome_unknown`: a
    /// `client_write` that never resolves must not hold the pipeline for good. At most
    /// `queue_max` requests wait for a slot.
    pub fn start(
        raft: Raft<TypeConfig>,
        entry_timeout: Duration,
        queue_max: usize,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(queue_max.max(1));
        tokio::spawn(batcher(raft, rx, entry_timeout, metrics));
        Proposer { queue }
    }

    /// Propose `request` and wait (at most `timeout`) for its own answer: committed on a
    /// quorum and applied on this node. Also returns the log index of the entry.
    pub async fn propose(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<(Answer, u64), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .try_send(Queued {
                request,
                reply,
                span: tracing::Span::current(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ApiError::overloaded(
                    "too many writes are waiting on this node; retry after a moment",
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::unavailable("this node is shutting down")
                }
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            // The batcher dropped the request: Raft stopped before it was proposed.
            Ok(Err(_)) => Err(ApiError::outcome_unknown(
                "this node stopped while the write was queued",
            )),
            Err(_) => Err(ApiError::outcome_unknown(
                "no commit within the request timeout",
            )),
        }
    }
}

async fn batcher(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Queued>,
    entry_timeout: Duration,
    metrics: Arc<NodeMetrics>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = first.request.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < REQUESTS_PER_ENTRY_MAX && bytes < ENTRY_BYTES_TARGET {
            match rx.try_recv() {
                Ok(q) => {
                    let size = q.request.approx_bytes();
                    if bytes + size > ENTRY_BYTES_TARGET {
                        carried = Some(q);
                        break;
                    }
                    bytes += size;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch, entry_timeout, &metrics).await;
            drop(slot);
        });
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(requests = batch.len()))]
async fn propose_batch(
    raft: &Raft<TypeConfig>,
    batch: Vec<Queued>,
    entry_timeout: Duration,
    metrics: &NodeMetrics,
) {
    metrics.batch_proposed(batch.len());
    let entry = tracing::Span::current();
    for q in &batch {
        entry.follows_from(&q.span);
    }
    let (requests, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|q| (q.request, q.reply)).unzip();
    // Fault points: a slow proposer, and one that gives up at once (its callers hear
    // `outcome_unknown` while the entry may still commit).
    if api::runtime::buggify(0.05) {
        tokio::time::sleep(api::runtime::buggify_delay()).await;
    }
    let entry_timeout = if api::runtime::buggify(0.02) {
        Duration::from_millis(1)
    } else {
        entry_timeout
    };
    let cmd = LogCommand {
        timestamp_ms: api::runtime::now_ms(),
        requests: requests.into(),
    };
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(entry_timeout, raft.client_write(cmd))
        .await
        .map_err(|_| ApiError::outcome_unknown("no commit within the request timeout"))
        .and_then(|r| r.map_err(write_error));
    match res {
        Ok(resp) => {
            metrics.raft_path.wrote(started.elapsed());
            let index = resp.log_id.index;
            tracing::debug!(log_index = index, "entry committed and applied");
            let mut outcomes = resp.data.outcomes.into_iter();
            for reply in replies {
                let answer = outcomes.next().ok_or_else(|| {
                    ApiError::internal("apply returned fewer outcomes than requests")
                });
                let _ = reply.send(answer.map(|a| (a, index)));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, raft_store::Node>>) -> ApiError {
    match e {
        // openraft sends this both when it refuses before appending (not leader) and when the
        // appended entry was truncated by a new leader. A truncated entry may still live on
        // another node and be committed later, so this is not "not applied".
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::outcome_unknown(format!(
                "leadership moved (to {:?}) while the write was in flight",
                f.leader_id
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ApiError::internal(e),
        RaftError::Fatal(e) => {
            ApiError::outcome_unknown(format!("raft stopped while the write was in flight: {e}"))
        }
    }
}
