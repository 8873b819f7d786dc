//! openraft's `RaftStateMachine` over redb: apply, applied state, snapshots.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageError,
    StoredMembership,
};

use tokio::sync::watch;

use crate::apply::{apply_request, DataTables, EntryContext};
use crate::error::{sm_read, sm_write, snapshot_err, StoreError};
use crate::events::EntryReader;
use crate::live::{Layer, LiveState};
use crate::read::RulesCache;
use crate::runtime::blocking;
use crate::snapshot::{load_snapshot, Meta, SnapshotDir, SnapshotFile};
use crate::tables::*;
use crate::types::{LogResponse, Node, NodeId, TypeConfig};

/// Most requests an apply batch runs on the calling task's own thread; a longer one hands the
/// worker's other tasks away first (`crate::runtime::blocking_in_place`). At about 5 µs a
/// request, 256 is about a millisecond.
const APPLY_INLINE_REQUESTS_MAX: usize = 256;

/// The state machine of one node. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct StateMachine {
    /// The state file and the changes applied since its last checkpoint (`crate::live`).
    pub(crate) live: Arc<LiveState>,
    pub(crate) snapshots: Arc<SnapshotDir>,
    /// Last applied log index, for readers that wait for new events.
    pub(crate) applied: Arc<watch::Sender<u64>>,
    /// Dropped whenever the rules may have changed.
    pub(crate) rules: Arc<RulesCache>,
    pub(crate) damage: crate::Damage,
    pub(crate) metrics: crate::StoreMetrics,
    /// The log, where the events are (snapshots render them from it).
    pub(crate) entries: EntryReader,
    /// What the log's purge waits for ([`PurgeGate`]).
    pub(crate) purge_gate: Arc<watch::Sender<PurgeGate>>,
    /// How far this node's log is durable: a leader's own entries may commit before (with
    /// a single voter) or just as its fsync ends (`crate::local_durable`).
    pub(crate) durable: Arc<crate::local_durable::DurableMark>,
}

/// How far the state machine holds what the log's entries hold, for the log's purge.
/// openraft 0.9 queues a follower's purge right after handing a snapshot to the state machine,
/// without waiting for the install: removing the entries then would leave runs pointing at
/// nothing until the install commits, and for good if it never does. So the purge waits until
/// the state machine has applied or installed up to its point (`LogStore::purge`), and fails
/// if an install failed. Only while a snapshot is being received: no other purge goes past
/// what the state machine holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PurgeGate {
    pub applied: u64,
    /// A snapshot's first chunk arrived and it is not installed yet.
    pub receiving: bool,
    pub install_failed: bool,
}

type Membership = StoredMembership<NodeId, Node>;

pub(crate) fn applied_state(
    live: &LiveState,
) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
    live.read(|view| {
        view.with(|s| {
            let last: Option<LogId<NodeId>> = s.meta(KEY_LAST_APPLIED)?.flatten();
            let membership: Option<Membership> = s.meta(KEY_MEMBERSHIP)?;
            Ok((last, membership.unwrap_or_default()))
        })
    })
}

/// Apply's answers, the last index applied, and the layer to checkpoint if one is due.
pub(crate) type Applied = (Vec<LogResponse>, u64, Option<Arc<Layer>>);

/// Apply a batch of committed entries: decided against the state as it is, written into a
/// layer in memory (`crate::live`) that readers see whole once the batch is done.
///
/// When a checkpoint is due, the layer of changes since the last one is frozen and returned,
/// for the caller to write into the state file in the background. After a crash the state
/// file is at its last checkpoint and openraft re-applies the committed entries after it from
/// the log, which apply handles like the first time.
pub(crate) fn apply_batch(
    live: &LiveState,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<Applied, StoreError> {
    let events: u64 = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(cmd) => cmd.event_count(),
            _ => 0,
        })
        .sum();
    let mut responses = Vec::with_capacity(entries.len());
    let mut last_index = 0;
    let (mut tables, mut log_time) = DataTables::open(live.begin()?)?;
    let mut last_applied = None;
    let mut membership = None;
    for entry in &entries {
        last_applied = Some(entry.log_id);
        last_index = entry.log_id.index;
        match &entry.payload {
            EntryPayload::Blank => responses.push(LogResponse::default()),
            EntryPayload::Membership(m) => {
                membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                responses.push(LogResponse::default());
            }
            EntryPayload::Normal(cmd) => {
                log_time = log_time.max(cmd.timestamp_ms);
                // Planted bug (simulation builds only): the time comes from this node's clock.
                #[cfg(madsim)]
                if crate::planted::is(crate::planted::Bug::ApplyReadsClock) {
                    log_time = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                }
                let ctx = EntryContext {
                    log_index: entry.log_id.index,
                    log_time_ms: log_time,
                    position: 0,
                };
                let outcomes = (0..)
                    .zip(cmd.requests.iter())
                    .map(|(position, r)| {
                        apply_request(&mut tables, EntryContext { position, ..ctx }, r)
                    })
                    .collect::<Result<_, _>>()?;
                responses.push(LogResponse { outcomes });
            }
        }
    }
    let w = &mut tables.w;
    w.put_meta(KEY_LAST_APPLIED, &last_applied);
    w.put_meta(KEY_LOG_TIME, &log_time);
    if let Some(m) = &membership {
        w.put_meta(KEY_MEMBERSHIP, m);
    }
    let frozen = tables.close(log_time).finish(entries.len() as u64, events);
    Ok((responses, last_index, frozen))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let live = self.live.clone();
        blocking(move || applied_state(&live))
            .await
            .map_err(|e| sm_read(self.damage.saw(e)))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LogResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Fault point: a slow apply (readers, linearizable reads and answers wait for it).
        #[cfg(madsim)]
        crate::runtime::buggify_delay(0.05).await;
        let requests: usize = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => cmd.requests.len(),
                _ => 1,
            })
            .sum();
        let sets_rules = entries.iter().any(|e| match &e.payload {
            EntryPayload::Normal(cmd) => cmd
                .requests
                .iter()
                .any(|r| matches!(r, crate::types::Request::SetRules(_))),
            _ => false,
        });
        let live = self.live.clone();
        let first = entries[0].log_id.index;
        let last = entries[entries.len() - 1].log_id.index;
        let count = entries.len();
        // The runs written here point into the log: the state file must never become
        // durable with entries this node's log could still lose (after a restart openraft
        // would purge a log found behind the state, and never send those entries again).
        // A follower's entries are durable before they can commit; a leader that overlaps its
        // fsync with its followers' may see an entry committed first, so apply waits for the
        // log's durable mark (at once when overlap is off), then checks what the files hold.
        // Blank and membership entries write no runs (and openraft's storage suite applies
        // some that were never appended).
        self.durable
            .wait_through(last)
            .await
            .map_err(|e| sm_write(self.damage.saw(e)))?;
        let last_normal = entries
            .iter()
            .rev()
            .find(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(|e| e.log_id.index);
        // Planted bug (simulation builds only): neither the wait above nor this check.
        #[cfg(madsim)]
        let last_normal = last_normal
            .filter(|_| !crate::planted::is(crate::planted::Bug::LeaderCountsItselfEarly));
        if let Some(index) = last_normal {
            self.entries
                .check_durable(index)
                .map_err(|e| sm_write(self.damage.saw(e)))?;
        }
        if self.live.lagging() {
            let live = self.live.clone();
            blocking(move || live.checkpoint().map(drop))
                .await
                .map_err(|e| sm_write(self.damage.saw(e)))?;
        }
        // Timed around apply, never inside it: what apply decides reads no clock.
        let started = std::time::Instant::now();
        let work = move || {
            crate::files::catching_seals(crate::DATA_FILE, "apply", || apply_batch(&live, entries))
        };
        // A batch at full load (a few entries of about twenty requests: some hundred µs) runs
        // on the task's thread as it is; handing the worker's other tasks to a thread of the
        // blocking pool first costs two thread switches a batch. Only a long batch (catching
        // up, a restart's replay) pays for the hand-off.
        let (responses, last_index, frozen) = if requests > APPLY_INLINE_REQUESTS_MAX {
            crate::runtime::blocking_in_place(work)
        } else {
            work()
        }
        .map_err(|e| sm_write(self.damage.saw(e)))?;
        self.metrics.applied(started, count);
        if let Some(layer) = frozen {
            // Not awaited: the write path goes on while the layer is written. A failure
            // stops the next apply (`LiveState::begin`).
            let live = self.live.clone();
            let damage = self.damage.clone();
            tokio::spawn(async move {
                let written = blocking({
                    let live = live.clone();
                    move || {
                        crate::files::catching_seals(crate::DATA_FILE, "a checkpoint", || {
                            live.write_frozen(&layer)
                        })
                    }
                })
                .await;
                if let Err(e) = written {
                    live.failed(damage.saw(e));
                }
            });
        }
        // The end of a write's path on every node: the request's `committed log_index=N`
        // line (api) names the entry applied here.
        tracing::debug!(first, last, entries = count, "applied");
        if sets_rules {
            self.rules.invalidate();
        }
        self.applied.send_replace(last_index);
        self.purge_gate
            .send_modify(|g| g.applied = g.applied.max(last_index));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotFile>, StorageError<NodeId>> {
        self.purge_gate.send_modify(|g| g.receiving = true);
        self.snapshots
            .receiving()
            .map(Box::new)
            .map_err(|e| snapshot_err(self.damage.saw(e)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<NodeId>> {
        // Fault point: a slow install (the leader's replication to this node waits).
        #[cfg(madsim)]
        crate::runtime::buggify_delay(0.25).await;
        let live = self.live.clone();
        let snapshots = self.snapshots.clone();
        let meta = meta.clone();
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        blocking(move || -> Result<(), StoreError> {
            // State first, file second: a crash in between leaves a file older than the
            // state, which is dropped at the next open.
            live.install(|txn| {
                load_snapshot(txn, &mut snapshot)?;
                // openraft's meta is authoritative for what the snapshot covers.
                let mut m = txn.open_table(SM_META)?;
                put_json(&mut m, KEY_LAST_APPLIED, &meta.last_log_id)?;
                // An empty membership is what a missing row already means; writing it would
                // make this node's rows differ from the leader's.
                if meta.last_membership != Membership::default() {
                    put_json(&mut m, KEY_MEMBERSHIP, &meta.last_membership)?;
                }
                Ok(())
            })?;
            snapshots.keep(&mut snapshot, &meta)
        })
        .await
        // Not recorded as damage of this node: a bad record here came with the snapshot
        // (the leader checks its file before sending, chunks are checked on the way), and
        // nothing was changed. Raft stops; a restart fetches the snapshot again. The purge
        // queued behind the install must not remove the entries meanwhile.
        .map_err(|e| {
            self.purge_gate.send_modify(|g| g.install_failed = true);
            snapshot_err(e)
        })?;
        self.purge_gate.send_modify(|g| {
            g.applied = g.applied.max(last_index);
            g.receiving = false;
        });
        self.metrics.snapshot_installed();
        self.rules.invalidate();
        self.applied.send_replace(last_index);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current_checked())
            .await
            .map_err(|e| snapshot_err(self.damage.saw(e)))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// One read transaction: the snapshot and its meta see the same state, and apply goes on
    /// meanwhile.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Fault point: a slow build, while apply goes on.
        #[cfg(madsim)]
        crate::runtime::buggify_delay(0.25).await;
        let live = self.live.clone();
        let snapshots = self.snapshots.clone();
        let entries = self.entries.clone();
        let meta = blocking(move || {
            crate::files::catching(crate::DATA_FILE, "building a snapshot", || {
                build(&live, &entries, &snapshots)
            })
        })
        .await
        .map_err(|e| snapshot_err(self.damage.saw(e)))?;
        // Operators size disks and the snapshot policy by these; the log is purged after it.
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index),
            id = %meta.snapshot_id,
            "built a snapshot"
        );
        self.metrics.snapshot_built();
        let current = self.get_current_snapshot().await?;
        current.ok_or_else(|| snapshot_err(StoreError::Snapshot("built snapshot vanished".into())))
    }
}

/// Write a snapshot of the state machine as it is now and make it the current one.
pub(crate) fn build(
    live: &LiveState,
    entries: &EntryReader,
    snapshots: &SnapshotDir,
) -> Result<Meta, StoreError> {
    // A snapshot installed meanwhile may have removed entries that this build's older read
    // transaction still points at (their events are in the archive now, which a fresh
    // transaction sees): build again rather than fail, which would stop Raft.
    let mut tries = 0;
    loop {
        match build_once(live, entries, snapshots) {
            Err(StoreError::EntryMissing { index }) if tries < 3 => {
                tracing::info!(index, "a snapshot install removed entries; building again");
                tries += 1;
            }
            built => return built,
        }
    }
}

fn build_once(
    live: &LiveState,
    entries: &EntryReader,
    snapshots: &SnapshotDir,
) -> Result<Meta, StoreError> {
    // Everything applied goes into the state file first, durably, and the snapshot is of
    // exactly that: a snapshot is never ahead of the state machine on disk (openraft requires
    // snapshot <= committed at start-up, and purges by snapshot).
    let txn = live.checkpoint()?;
    let (last_log_id, last_membership) = {
        let t = txn.open_table(SM_META)?;
        let last: Option<LogId<NodeId>> = get_json(&t, "sm_meta", KEY_LAST_APPLIED)?.flatten();
        let membership: Membership = get_json(&t, "sm_meta", KEY_MEMBERSHIP)?.unwrap_or_default();
        (last, membership)
    };
    let meta = Meta {
        snapshot_id: snapshots.next_id(last_log_id.map(|l| l.index)),
        last_log_id,
        last_membership,
    };
    snapshots.build(&txn, entries, &meta)?;
    Ok(meta)
}
