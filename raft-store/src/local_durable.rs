//! How far this node's own log is durable, so a leader can send its entries to the followers
//! before its own `fdatasync` has finished and still commit nothing that fewer than a quorum of
//! nodes hold on disk (the Raft thesis, 10.2.1; etcd does the same).
//!
//! openraft 0.9 awaits the leader's flush of an append before it replicates it, which puts the
//! leader's fsync and the followers' fsyncs in series on every write. Once a node is enabled
//! ([`crate::LogStore::overlap_leader_fsync`]) its log store tells openraft at once that the
//! entries it appends as leader are flushed, and writes them in the background. openraft then
//! counts the leader in every quorum as if it held them: what keeps that true is that
//! openraft never hears that a follower holds an entry before the leader does too. The peer
//! network waits, before it hands openraft a follower's answer to an append, until the
//! leader's log is durable through the last entry that answer confirms ([`LocalDurable::through`]).
//! So an index commits only once the leader and enough followers to make a quorum with it have
//! synced it. Apply waits for the same mark, which covers a configuration with a single voter,
//! where no follower answer is needed.
//!
//! A follower still reports an append only once it is durable (openraft sends the answer after
//! the flush): its answer is its promise.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::error::StoreError;
use crate::types::NodeId;

/// The log's durable end and whether writing it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    /// One past the last index this node's log holds durably.
    end: u64,
    /// A write of the log failed: nothing later becomes durable.
    failed: bool,
}

/// Shared by the log writer (which moves the mark), the state machine and the peer network
/// (which wait for it). A mutex and a `Notify`, not a watch channel: a watch wakes its waiters
/// in an order drawn from tokio's own generator, which the simulator cannot seed, and the
/// same seed would then not replay the same run.
pub(crate) struct DurableMark {
    mark: Mutex<Mark>,
    moved: Notify,
    /// Set once the node lets its log store report its own appends as leader at once.
    leader_id: OnceLock<NodeId>,
}

impl DurableMark {
    /// A log that holds indexes below `end` durably.
    pub(crate) fn new(end: u64) -> Arc<DurableMark> {
        Arc::new(DurableMark {
            mark: Mutex::new(Mark { end, failed: false }),
            moved: Notify::new(),
            leader_id: OnceLock::new(),
        })
    }

    /// The writer synced the log through `last`, the log's last entry (a truncation moves it
    /// back, then appends forward again: it is the log's end, not a maximum).
    pub(crate) fn synced_through(&self, last: u64) {
        self.modify(|m| m.end = last + 1);
    }

    /// The log was cut back to end before `from`.
    pub(crate) fn truncated(&self, from: u64) {
        self.modify(|m| m.end = m.end.min(from));
    }

    /// A write of the log failed: every waiter fails, now and later.
    pub(crate) fn failed(&self) {
        self.modify(|m| m.failed = true);
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.get().failed
    }

    fn get(&self) -> Mark {
        *self.mark.lock().expect("durable mark lock")
    }

    fn modify(&self, f: impl FnOnce(&mut Mark)) {
        f(&mut self.mark.lock().expect("durable mark lock"));
        self.moved.notify_waiters();
    }

    pub(crate) fn enable(&self, me: NodeId) {
        let _ = self.leader_id.set(me);
    }

    /// This node, if it reports its own appends as leader before they are durable.
    pub(crate) fn early_leader(&self) -> Option<NodeId> {
        self.leader_id.get().copied()
    }

    /// Wait until the log holds `index` durably; at once when the node never reports an
    /// append early (everything it reported is durable, and tests that write the log by hand
    /// apply without this writer).
    pub(crate) async fn wait_through(&self, index: u64) -> Result<(), StoreError> {
        if self.leader_id.get().is_none() {
            return Ok(());
        }
        // Planted bug (simulation builds only): nothing waits for the leader's fsync.
        #[cfg(madsim)]
        if crate::planted::is(crate::planted::Bug::LeaderCountsItselfEarly) {
            return Ok(());
        }
        // The common case on every append answer and apply: already durable, no waiter.
        let mark = self.get();
        if mark.failed {
            return Err(StoreError::Stopped);
        }
        if mark.end > index {
            return Ok(());
        }
        loop {
            // Registered before the mark is read: a move in between still wakes this.
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let mark = self.get();
            if mark.failed {
                return Err(StoreError::Stopped);
            }
            if mark.end > index {
                return Ok(());
            }
            moved.await;
        }
    }
}

/// What the peer network waits on before it tells openraft a follower holds an entry
/// (see the module's comment).
#[derive(Clone)]
pub struct LocalDurable {
    pub(crate) mark: Arc<DurableMark>,
}

impl LocalDurable {
    /// Wait until this node's own log holds `index` durably. Fails once a write of the log
    /// failed: the leader must then never count a follower's answer past its durable end, and
    /// stops (its next append fails).
    pub async fn through(&self, index: u64) -> Result<(), StoreError> {
        self.mark.wait_through(index).await
    }

    /// A write of this node's log failed: the node must stop.
    pub fn has_failed(&self) -> bool {
        self.mark.has_failed()
    }

    /// One past the last index this node's log holds durably.
    pub fn end(&self) -> u64 {
        self.mark.get().end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_sync_and_fails_with_the_log() {
        let mark = DurableMark::new(5);
        // Not enabled: nothing waits.
        mark.wait_through(100).await.unwrap();
        mark.enable(1);
        mark.wait_through(4).await.unwrap();
        let waiter = {
            let mark = mark.clone();
            tokio::spawn(async move { mark.wait_through(7).await })
        };
        mark.synced_through(6);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "index 7 is not durable yet");
        mark.synced_through(7);
        waiter.await.unwrap().unwrap();
        // A truncation takes durability back; a failure fails every waiter.
        mark.truncated(3);
        let waiter = {
            let mark = mark.clone();
            tokio::spawn(async move { mark.wait_through(3).await })
        };
        mark.failed();
        assert!(waiter.await.unwrap().is_err());
        assert!(mark.wait_through(0).await.is_err());
    }
}
