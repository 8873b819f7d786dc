//! openraft's `RaftStateMachine` over redb: apply, applied state, snapshots.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase};
use tokio::sync::watch;

use crate::apply::{apply_request, DataTables, EntryContext};
use crate::error::{sm_read, sm_write, snapshot_err, StoreError};
use crate::events::EntryReader;
use crate::read::RulesCache;
use crate::runtime::blocking;
use crate::snapshot::{load_snapshot, Meta, SnapshotDir, SnapshotFile};
use crate::tables::get_meta;
use crate::tables::*;
use crate::types::{LogResponse, Node, NodeId, TypeConfig};

/// The state machine of one node. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) db: Arc<Database>,
    pub(crate) snapshots: Arc<SnapshotDir>,
    /// Last applied log index, for readers that wait for new events.
    pub(crate) applied: Arc<watch::Sender<u64>>,
    /// Dropped whenever the rules may have changed.
    pub(crate) rules: Arc<RulesCache>,
    pub(crate) damage: crate::Damage,
    pub(crate) metrics: crate::StoreMetrics,
    /// Events applied since the state file was last made durable (see
    /// [`EVENTS_BETWEEN_SYNCS_MAX`]).
    pub(crate) events_since_sync: u64,
    /// The log, where the events are (snapshots render them from it).
    pub(crate) entries: EntryReader,
    /// What the log's purge waits for ([`PurgeGate`]).
    pub(crate) purge_gate: Arc<watch::Sender<PurgeGate>>,
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
    db: &Database,
) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
    let last: Option<LogId<NodeId>> = get_meta(db, SM_META, KEY_LAST_APPLIED)?;
    let membership: Option<Membership> = get_meta(db, SM_META, KEY_MEMBERSHIP)?;
    Ok((last, membership.unwrap_or_default()))
}

/// Entries applied between two durable commits of the state file, at most. Bounds what a
/// restart re-applies, and the space redb cannot reuse until a durable commit.
const APPLIED_BETWEEN_SYNCS_MAX: u64 = 1024;

/// Events applied between two durable commits of the state file, at most (give or take one
/// batch). Entries carry up to 256 requests of many events each, so a bound in entries alone
/// let a restart after a crash re-apply about 90,000 events (4 s with 100 events per request,
/// `bench/restart.sh`); this one keeps that under a second, for one extra fsync of the state
/// file every couple of seconds at full load.
const EVENTS_BETWEEN_SYNCS_MAX: u64 = 16_384;

/// Make every earlier non-durable commit of the state file durable.
pub(crate) fn make_durable(db: &Database) -> Result<(), StoreError> {
    let sync = crate::files::write_txn(db, Durability::Immediate)?;
    sync.commit()?;
    Ok(())
}

/// Apply a batch of committed entries in one write transaction.
///
/// Fsynced only every [`APPLIED_BETWEEN_SYNCS_MAX`] entries or [`EVENTS_BETWEEN_SYNCS_MAX`]
/// events (and before the log is purged or
/// a snapshot is built). After a crash the state machine may come back at an older applied
/// index and openraft re-applies the committed entries after it from the log, which apply
/// handles like the first time.
fn apply_batch(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    durable: bool,
) -> Result<(Vec<LogResponse>, u64), StoreError> {
    let txn = crate::files::write_txn(
        db,
        if durable {
            Durability::Immediate
        } else {
            Durability::None
        },
    )?;
    let mut responses = Vec::with_capacity(entries.len());
    let mut last_index = 0;
    {
        let mut tables = DataTables::open(&txn)?;
        let mut log_time: u64 = get_json(tables.meta(), "sm_meta", KEY_LOG_TIME)?.unwrap_or(0);
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
                    let ctx = EntryContext {
                        log_index: entry.log_id.index,
                        log_time_ms: log_time,
                        position: 0,
                    };
                    let outcomes = (0..)
                        .zip(&cmd.requests)
                        .map(|(position, r)| {
                            apply_request(&mut tables, EntryContext { position, ..ctx }, r)
                        })
                        .collect::<Result<_, _>>()?;
                    responses.push(LogResponse { outcomes });
                }
            }
        }
        let meta = tables.meta();
        put_json(meta, KEY_LAST_APPLIED, &last_applied)?;
        put_json(meta, KEY_LOG_TIME, &log_time)?;
        if let Some(m) = &membership {
            put_json(meta, KEY_MEMBERSHIP, m)?;
        }
    }
    txn.commit()?;
    Ok((responses, last_index))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || applied_state(&db))
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
        let sets_rules = entries.iter().any(|e| match &e.payload {
            EntryPayload::Normal(cmd) => cmd
                .requests
                .iter()
                .any(|r| matches!(r, crate::types::Request::SetRules(_))),
            _ => false,
        });
        let db = self.db.clone();
        let first = entries[0].log_id.index;
        let last = entries[entries.len() - 1].log_id.index;
        // Durable when the batch holds an index one short of a multiple of the bound, or
        // brings the events applied since the last durable commit to their bound: counted in
        // the log, not in time, so apply reads no clock.
        let events: u64 = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => cmd.event_count(),
                _ => 0,
            })
            .sum();
        self.events_since_sync += events;
        let durable = first / APPLIED_BETWEEN_SYNCS_MAX != (last + 1) / APPLIED_BETWEEN_SYNCS_MAX
            || self.events_since_sync >= EVENTS_BETWEEN_SYNCS_MAX;
        if durable {
            self.events_since_sync = 0;
        }
        let count = entries.len();
        // The runs written here point into the log: the state file must never become
        // durable with entries this node's log could still lose (after a restart openraft
        // would purge a log found behind the state, and never send those entries again).
        // openraft 0.9 awaits every append's flush before it runs later commands, so this
        // holds; checked, not assumed, should that change (0.10 writes the log
        // asynchronously). Blank and membership entries write no runs.
        let last_normal = entries
            .iter()
            .rev()
            .find(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .map(|e| e.log_id.index);
        if let Some(index) = last_normal {
            self.entries
                .check_durable(index)
                .map_err(|e| sm_write(self.damage.saw(e)))?;
        }
        // Timed around apply, never inside it: what apply decides reads no clock.
        let started = std::time::Instant::now();
        let (responses, last_index) = blocking(move || {
            crate::files::catching_seals(crate::DATA_FILE, "apply", || {
                apply_batch(&db, entries, durable)
            })
        })
        .await
        .map_err(|e| sm_write(self.damage.saw(e)))?;
        self.metrics.applied(started, count);
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
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        let meta = meta.clone();
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        blocking(move || -> Result<(), StoreError> {
            let txn = crate::files::write_txn(&db, Durability::Immediate)?;
            load_snapshot(&txn, &mut snapshot)?;
            {
                // openraft's meta is authoritative for what the snapshot covers.
                let mut m = txn.open_table(SM_META)?;
                put_json(&mut m, KEY_LAST_APPLIED, &meta.last_log_id)?;
                // An empty membership is what a missing row already means; writing it would
                // make this node's rows differ from the leader's.
                if meta.last_membership != Membership::default() {
                    put_json(&mut m, KEY_MEMBERSHIP, &meta.last_membership)?;
                }
            }
            // State first, file second: a crash in between leaves a file older than the
            // state, which is dropped at the next open.
            txn.commit()?;
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
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        let entries = self.entries.clone();
        let meta = blocking(move || {
            crate::files::catching(crate::DATA_FILE, "building a snapshot", || {
                build(&db, &entries, &snapshots)
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
    db: &Database,
    entries: &EntryReader,
    snapshots: &SnapshotDir,
) -> Result<Meta, StoreError> {
    // A snapshot installed meanwhile may have removed entries that this build's older read
    // transaction still points at (their events are in the archive now, which a fresh
    // transaction sees): build again rather than fail, which would stop Raft.
    let mut tries = 0;
    loop {
        match build_once(db, entries, snapshots) {
            Err(StoreError::EntryMissing { index }) if tries < 3 => {
                tracing::info!(index, "a snapshot install removed entries; building again");
                tries += 1;
            }
            built => return built,
        }
    }
}

fn build_once(
    db: &Database,
    entries: &EntryReader,
    snapshots: &SnapshotDir,
) -> Result<Meta, StoreError> {
    let txn = db.begin_read()?;
    // The read sees applies that are not fsynced yet. Make them durable before the
    // snapshot file exists, so a snapshot is never ahead of the state machine on disk
    // (openraft requires snapshot <= committed at start-up, and purges by snapshot).
    make_durable(db)?;
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
