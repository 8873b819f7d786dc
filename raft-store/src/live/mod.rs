//! The state machine's state as apply and readers see it: the state file (redb) as of its last
//! checkpoint, and in memory the changes applied since (issue 25: apply writes no redb
//! transaction per batch).
//!
//! The changes are kept in layers ([`StateOverlay`]), newest first:
//! - an apply batch's own changes, private to apply until the batch is done, so readers see
//!   whole batches only (as they saw whole redb transactions before);
//! - `active`, every batch since the last checkpoint began;
//! - `frozen`, the layer a background checkpoint is writing into the file, while it writes.
//!
//! A lookup asks the layers newest first and the file last; a range read merges them. Every
//! checkpoint writes one layer in one durable redb transaction and records the layer's
//! sequence number in the file (`format.checkpoint`), so a reader knows exactly which layers
//! its read transaction's file already holds: those are skipped. A layer is dropped only after
//! its checkpoint committed; a reader whose transaction began before that commit finds a layer
//! it needs gone, gets [`StoreError::Retry`], and reads again (`StateReader::guard`).
//!
//! After a crash the layers are gone: openraft re-applies the entries after the file's
//! `last_applied` from the log (which holds them durably before apply runs), rebuilding them.

mod stack;
mod working;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::error::StoreError;
use crate::state_overlay::StateOverlay;
use crate::tables::*;

pub(crate) use stack::{Opened, Stack};
pub(crate) use working::Working;

/// The key of `format` that holds the sequence number of the last layer written.
pub(crate) const KEY_CHECKPOINT: &str = "checkpoint";

/// The key of `format` that holds the last index of the last snapshot installed: the one
/// state a state file may be ahead of its log in (`files::check_pair`), until the log's purge
/// to that index is durable.
pub(crate) const KEY_INSTALLED: &str = "installed";

/// An owned key of `idempotency_by_age`.
pub(crate) type AgeKeyOwned = (u64, u64, u32, String, String);

/// One layer of changes and its place in the sequence of checkpoints.
pub(crate) struct Layer {
    pub(crate) seq: u64,
    pub(crate) state: StateOverlay,
}

impl Layer {
    pub(crate) fn empty(seq: u64) -> Self {
        Layer {
            seq,
            state: StateOverlay::default(),
        }
    }
}

pub(crate) struct Layers {
    pub(crate) active: Layer,
    pub(crate) frozen: Option<Arc<Layer>>,
    /// Every `idempotency_by_age` key up to here was evicted: scans start after it. Eviction
    /// takes the oldest first and new records are always the newest, so this only skips
    /// removed rows (without it every eviction would step over all the removals since the
    /// last checkpoint).
    pub(crate) by_age_floor: Option<AgeKeyOwned>,
}

impl Layers {
    /// The layers a file at checkpoint `file_seq` lacks, newest first; `None` if one of them
    /// was written and dropped since (whoever asked must read the file again).
    pub(crate) fn missing_from(&self, file_seq: u64) -> Option<Vec<&StateOverlay>> {
        let oldest = self.frozen.as_ref().map_or(self.active.seq, |f| f.seq);
        if oldest > file_seq + 1 {
            return None;
        }
        let frozen = self.frozen.as_deref().filter(|f| f.seq > file_seq);
        Some(
            std::iter::once(&self.active)
                .filter(|a| a.seq > file_seq)
                .chain(frozen)
                .map(|l| &l.state)
                .collect(),
        )
    }

    /// Every layer is in the file, which holds checkpoint `seq`.
    fn all_written(&mut self, seq: u64) {
        self.frozen = None;
        self.active = Layer::empty(seq + 1);
    }
}

/// The state file with the layers over it. Shared by the state machine, its snapshot builder,
/// the readers and the log's purge.
pub(crate) struct LiveState {
    pub(crate) db: Arc<Database>,
    layers: RwLock<Layers>,
    /// Held by apply for a whole batch, and by whatever drops a layer: a batch sees the file
    /// and the layers of one moment. Holds what apply keeps from batch to batch.
    writer: Mutex<Writer>,
    /// Held while a write transaction fills the file (checkpoints, snapshot installs).
    filling: Mutex<()>,
    /// A background checkpoint failed: apply must not go on as if the file were keeping up.
    failed: Mutex<Option<String>>,
}

/// What apply keeps from one batch to the next, under [`LiveState`]'s `writer` lock.
pub(crate) struct Writer {
    pub(crate) pace: Pace,
    /// Apply's read transaction of the file and the tables it keeps open, reused by every
    /// batch until a checkpoint or an install changes the file (each of them drops it, in
    /// the same step as the layers the file now holds). A follower's batch is often one
    /// entry, and beginning a transaction and opening its tables cost a fifth of its apply
    /// (bench/README.md, issue 25 step 8).
    pub(crate) file: Option<FileView>,
    /// The rules and the log time that the last batch ended with: the next batch starts from
    /// them instead of decoding them from `sm_meta` again. Dropped by an install.
    pub(crate) carried: Option<Carried>,
}

/// A read transaction of the state file, as apply reads it.
pub(crate) struct FileView {
    pub(crate) txn: ReadTransaction,
    pub(crate) opened: Opened,
    /// The sequence number of the last layer the file holds, as `txn` sees it.
    pub(crate) seq: u64,
}

/// State that apply carries from batch to batch; exactly what it wrote in `sm_meta`.
pub(crate) struct Carried {
    pub(crate) rules: crate::apply::RulesState,
    pub(crate) log_time_ms: u64,
}

/// When apply freezes the active layer for a checkpoint: after so many entries or events,
/// counted in the log, not in time, so apply reads no clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) since: (u64, u64),
    pub(crate) every: (u64, u64),
}

/// Entries applied between two checkpoints of the state file, at most. Bounds what a restart
/// re-applies, and the memory the changes since the last checkpoint hold.
pub(crate) const ENTRIES_BETWEEN_CHECKPOINTS: u64 = 256;

/// Events applied between two checkpoints, at most (give or take one batch). Entries carry up
/// to 256 requests of many events each, so a bound in entries alone could let a restart after
/// a crash re-apply tens of thousands of events. Small checkpoints also keep each one's burst
/// of redb work short: against 16,384, p99 at 64 clients fell from about 21 to 18 ms in two
/// `bench/ab.sh` runs (bench/README.md, step 4).
pub(crate) const EVENTS_BETWEEN_CHECKPOINTS: u64 = 2_048;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one is reported as damage (`files::catching`) and stops the node.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sequence number of the last layer the file holds.
fn file_seq(txn: &ReadTransaction) -> Result<u64, StoreError> {
    match txn.open_table(FORMAT) {
        Ok(t) => Ok(t.get(KEY_CHECKPOINT)?.map_or(0, |g| g.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn set_file_seq(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    txn.open_table(FORMAT)?.insert(KEY_CHECKPOINT, seq)?;
    Ok(())
}

impl LiveState {
    pub(crate) fn open(db: Arc<Database>) -> Result<Self, StoreError> {
        let seq = file_seq(&db.begin_read()?)?;
        Ok(LiveState {
            db,
            layers: RwLock::new(Layers {
                active: Layer::empty(seq + 1),
                frozen: None,
                by_age_floor: None,
            }),
            writer: Mutex::new(Writer {
                pace: Pace {
                    since: (0, 0),
                    every: (ENTRIES_BETWEEN_CHECKPOINTS, EVENTS_BETWEEN_CHECKPOINTS),
                },
                file: None,
                carried: None,
            }),
            filling: Mutex::new(()),
            failed: Mutex::new(None),
        })
    }

    /// Run `read` on a view of the state as of now, again if a checkpoint dropped a layer
    /// under it ([`StoreError::Retry`]; checkpoints are seconds apart, reads are short).
    pub(crate) fn read<T>(
        &self,
        read: impl Fn(&View<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let txn = self.db.begin_read()?;
            match read(&self.view(&txn)?) {
                Err(StoreError::Retry) => continue,
                done => return done,
            }
        }
    }

    /// Checkpoint every `entries` applied entries instead (tests: frequent checkpoints).
    pub(crate) fn checkpoint_every(&self, entries: u64) {
        lock(&self.writer).pace.every = (entries.max(1), EVENTS_BETWEEN_CHECKPOINTS);
    }

    /// Whether the changes since the last checkpoint have grown past twice their bound while
    /// a background checkpoint is still writing: apply then waits for the file
    /// ([`LiveState::checkpoint`]) rather than let memory and a restart's re-apply grow
    /// without limit on a slow disk.
    pub(crate) fn lagging(&self) -> bool {
        // Called from async code: never wait for a checkpoint that holds `writer` (it is
        // writing the file, so apply is not behind it).
        let pace = match self.writer.try_lock() {
            Ok(writer) => writer.pace,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().pace,
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let behind = pace.since.0 >= 2 * pace.every.0 || pace.since.1 >= 2 * pace.every.1;
        behind && self.read_layers().frozen.is_some()
    }

    /// Record that a background checkpoint failed with `e`.
    pub(crate) fn failed(&self, e: StoreError) {
        tracing::error!(error = %e, "a checkpoint of the state file failed; apply stops");
        lock(&self.failed).get_or_insert(e.to_string());
    }

    /// The failure of a background checkpoint, if one failed.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    fn read_layers(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_layers(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A view of the state as of now, over `txn` (begun by the caller, just before).
    pub(crate) fn view<'a>(&'a self, txn: &'a ReadTransaction) -> Result<View<'a>, StoreError> {
        Ok(View {
            live: Some(self),
            file_seq: file_seq(txn)?,
            txn,
        })
    }

    /// Begin an apply batch.
    pub(crate) fn begin(&self) -> Result<Working<'_>, StoreError> {
        if let Some(e) = lock(&self.failed).as_ref() {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "a checkpoint of the state file failed: {e}"
            ))));
        }
        let mut writer = lock(&self.writer);
        if writer.file.is_none() {
            let txn = self.db.begin_read()?;
            writer.file = Some(FileView {
                seq: file_seq(&txn)?,
                txn,
                opened: Opened::default(),
            });
        }
        let layers = self.read_layers();
        let by_age_floor = layers.by_age_floor.clone();
        Ok(Working {
            live: self,
            writer,
            layers: Some(layers),
            batch: StateOverlay::default(),
            by_age_floor,
        })
    }

    /// Write `layer` (frozen by [`Working::finish`]) into the file, then drop it. Runs in the
    /// background of apply; a failure leaves the layer in place (readers stay right) and is
    /// the caller's to report.
    pub(crate) fn write_frozen(&self, layer: &Arc<Layer>) -> Result<(), StoreError> {
        // Under `filling` from the check to the drop: a frozen layer still there is not in
        // the file yet (checkpoints and installs take `filling` too, and drop it).
        let _filling = lock(&self.filling);
        let current = self.read_layers().frozen.clone();
        if !current.is_some_and(|f| Arc::ptr_eq(&f, layer)) {
            // A checkpoint of everything (or an install) came first.
            return Ok(());
        }
        let txn = crate::files::write_txn(&self.db, redb::Durability::Immediate)?;
        layer.state.flush(&txn)?;
        set_file_seq(&txn, layer.seq)?;
        txn.commit()?;
        let mut writer = lock(&self.writer);
        writer.file = None;
        self.write_layers().frozen = None;
        Ok(())
    }

    /// Write every layer into the file now, and return a read transaction of exactly that
    /// state: for snapshots, backups and canonical dumps, which read the file alone. Waits for
    /// the apply batch under way.
    pub(crate) fn checkpoint(&self) -> Result<ReadTransaction, StoreError> {
        // `filling` first: a background checkpoint under way finishes its write without
        // stalling apply meanwhile (nothing holds `writer` while it waits for `filling`).
        let _filling = lock(&self.filling);
        let mut writer = lock(&self.writer);
        let written = {
            let layers = self.read_layers();
            if layers.active.state.is_empty() && layers.frozen.is_none() {
                return Ok(self.db.begin_read()?);
            }
            let txn = crate::files::write_txn(&self.db, redb::Durability::Immediate)?;
            // A frozen layer still there is not in the file (`write_frozen`).
            if let Some(f) = &layers.frozen {
                f.state.flush(&txn)?;
            }
            layers.active.state.flush(&txn)?;
            set_file_seq(&txn, layers.active.seq)?;
            txn.commit()?;
            layers.active.seq
        };
        self.write_layers().all_written(written);
        writer.pace.since = (0, 0);
        writer.file = None;
        Ok(self.db.begin_read()?)
    }

    /// Make the file hold what was applied up to `index`: the log is about to drop those
    /// entries, and a restart re-applies from the log what the file lacks.
    pub(crate) fn durable_upto(&self, index: u64) -> Result<(), StoreError> {
        let applied: Option<openraft::LogId<crate::NodeId>> =
            get_meta(&self.db, SM_META, KEY_LAST_APPLIED)?.flatten();
        if applied.is_some_and(|l| l.index >= index) {
            return Ok(());
        }
        self.checkpoint().map(drop)
    }

    /// Replace the whole state with what `load` writes (a snapshot), durably, dropping every
    /// layer.
    pub(crate) fn install(
        &self,
        load: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let _filling = lock(&self.filling);
        let mut writer = lock(&self.writer);
        writer.file = None;
        writer.carried = None;
        let seq = self.read_layers().active.seq;
        let txn = crate::files::write_txn(&self.db, redb::Durability::Immediate)?;
        load(&txn)?;
        // A snapshot or backup written by a format-2 node carries `streams` rows.
        move_streams_to_heads(&txn)?;
        let installed: Option<openraft::LogId<crate::NodeId>> =
            get_json(&txn.open_table(SM_META)?, "sm_meta", KEY_LAST_APPLIED)?.flatten();
        txn.open_table(FORMAT)?
            .insert(KEY_INSTALLED, installed.map_or(0, |l| l.index))?;
        // Past every layer: readers and a background checkpoint skip them all from now on.
        set_file_seq(&txn, seq)?;
        txn.commit()?;
        let mut layers = self.write_layers();
        layers.all_written(seq);
        layers.by_age_floor = None;
        Ok(())
    }
}

/// The state as of one read transaction of the file and the layers it does not hold.
pub(crate) struct View<'a> {
    /// `None`: the file alone (a read transaction returned by a checkpoint).
    live: Option<&'a LiveState>,
    txn: &'a ReadTransaction,
    file_seq: u64,
}

impl<'a> View<'a> {
    /// The file alone, as `txn` sees it.
    pub(crate) fn file(txn: &'a ReadTransaction) -> Self {
        View {
            live: None,
            txn,
            file_seq: 0,
        }
    }

    pub(crate) fn txn(&self) -> &'a ReadTransaction {
        self.txn
    }

    /// Run `read` on the layers and the file. Holds the layers' read lock for the call only:
    /// keep it to lookups (apply waits for it to merge a batch).
    pub(crate) fn with<T>(
        &self,
        read: impl FnOnce(&Stack<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_layers(|layers| {
            read(&Stack {
                layers,
                txn: self.txn,
                opened: None,
            })
        })
    }

    /// Run `read` on copies of the layers (`copy` keeps what `read` needs of each), holding
    /// no lock while it runs: for scans of a whole table, which would stall apply.
    pub(crate) fn scan<T>(
        &self,
        copy: impl Fn(&StateOverlay) -> StateOverlay,
        read: impl FnOnce(&Stack<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let copies: Vec<StateOverlay> =
            self.with_layers(|layers| Ok(layers.into_iter().map(&copy).collect()))?;
        read(&Stack {
            layers: copies.iter().collect(),
            txn: self.txn,
            opened: None,
        })
    }

    /// `f` of the layers this view's file lacks, newest first, under the layers' read lock.
    fn with_layers<T>(
        &self,
        f: impl FnOnce(Vec<&StateOverlay>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(live) = self.live else {
            return f(Vec::new());
        };
        let layers = live.read_layers();
        // `None`: a layer this transaction's file lacks was written and dropped meanwhile.
        let stack = layers
            .missing_from(self.file_seq)
            .ok_or(StoreError::Retry)?;
        f(stack)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::types::{AppendRequest, LogCommand, NewEvent, Request, TypeConfig};

    fn append(index: u64, topic: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogCommand {
                timestamp_ms: 1,
                requests: vec![Request::Append(AppendRequest {
                    topic: topic.into(),
                    events: vec![NewEvent {
                        event_type: "E".into(),
                        stream: Some(format!("s{index}")),
                        data: "{}".into(),
                        metadata: None,
                        claims: Vec::new(),
                        secret: None,
                    }],
                    expected_version: Default::default(),
                    idempotency: None,
                    rules_version: 0,
                    reply: None,
                })]
                .into(),
            }),
        }
    }

    fn len(view: &View<'_>) -> Result<u64, StoreError> {
        view.with(|s| s.topic_len("t"))
    }

    /// A reader sees the frozen layer while its checkpoint is written, and the active one
    /// over it; once the frozen layer is in the file and dropped, a view begun before reads
    /// again rather than see the file without it, and a fresh view sees everything.
    #[test]
    fn readers_see_every_layer_and_read_again_when_one_is_dropped_under_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let live = &storage.state_machine.live;
        live.checkpoint_every(1);
        let (_, _, frozen) = crate::state_machine::apply_batch(live, vec![append(1, "t")]).unwrap();
        let frozen = frozen.expect("a checkpoint is due after every entry");

        let before = live.db.begin_read().unwrap();
        let old = live.view(&before).unwrap();
        assert_eq!(len(&old).unwrap(), 1, "the frozen layer is read");
        // One checkpoint at a time: this batch stays in the active layer.
        let (_, _, second) = crate::state_machine::apply_batch(live, vec![append(2, "t")]).unwrap();
        assert!(second.is_none());
        assert_eq!(
            len(&old).unwrap(),
            2,
            "the active layer is read over the frozen one"
        );

        // Twice the pace behind with the checkpoint still writing: apply must wait for it.
        assert!(!live.lagging());
        let (_, _, third) = crate::state_machine::apply_batch(live, vec![append(3, "t")]).unwrap();
        assert!(third.is_none());
        assert!(live.lagging());

        live.write_frozen(&frozen).unwrap();
        assert!(!live.lagging(), "no checkpoint under way");
        assert!(
            matches!(len(&old), Err(StoreError::Retry)),
            "a view whose file lacks a dropped layer reads again"
        );
        assert_eq!(live.read(len).unwrap(), 3);
        let file_alone = View::file(&live.db.begin_read().unwrap()).with(|s| s.topic_len("t"));
        assert_eq!(
            file_alone.unwrap(),
            1,
            "the file holds the frozen layer only"
        );

        // A checkpoint of everything: the file alone holds every entry.
        let txn = live.checkpoint().unwrap();
        assert_eq!(len(&View::file(&txn)).unwrap(), 3);
        assert_eq!(live.read(len).unwrap(), 3);
        // Writing the frozen layer again (a checkpoint raced it) changes nothing.
        live.write_frozen(&frozen).unwrap();
        assert_eq!(live.read(len).unwrap(), 3);
    }

    /// Since step 6 of issue 25 a claim writes its owner row only, and `uniq_history` gets a
    /// row at release; files written before also hold the current claim in `uniq_history`,
    /// released at `STILL_OWNED`. A key's history reads the same from both.
    #[test]
    fn a_key_s_history_reads_the_same_whether_or_not_its_open_claim_has_a_history_row() {
        let history = |old_file: bool| {
            let dir = tempfile::tempdir().unwrap();
            let storage = crate::Storage::open(dir.path()).unwrap();
            let db = &storage.state_machine.live.db;
            let txn = db.begin_write().unwrap();
            {
                let mut owners = txn.open_table(UNIQ_OWNERS).unwrap();
                owners.insert(("email", "a@x"), ("s2", 5)).unwrap();
                let mut history = txn.open_table(UNIQ_HISTORY).unwrap();
                history.insert(("email", "a@x", 1), ("s1", 3)).unwrap();
                if old_file {
                    history
                        .insert(("email", "a@x", 5), ("s2", STILL_OWNED))
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            View::file(&db.begin_read().unwrap())
                .with(|s| s.key_history("email", "a@x"))
                .unwrap()
        };
        let expected = vec![
            (1, ("s1".to_string(), 3)),
            (5, ("s2".to_string(), STILL_OWNED)),
        ];
        assert_eq!(history(true), expected);
        assert_eq!(history(false), expected);
    }
}
