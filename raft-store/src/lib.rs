//! uniqlog's replicated storage: the openraft type config, the Raft log in segment files, the
//! state machine in redb, the command and outcome types, and snapshots.
//!
//! This crate does no network I/O and knows no HTTP type. Apply is deterministic: it reads no
//! clock, randomness, environment or local config.

mod apply;
mod backup;
mod checksum;
pub mod codec;
mod damage;
pub mod disk;
mod disk_space;
mod error;
mod events;
mod files;
mod idempotency;
mod live;
mod local_durable;
mod log_store;
mod log_writer;
mod metrics;
mod overlay;
/// Bugs the simulation can plant on purpose (simulation builds only).
#[cfg(madsim)]
pub mod planted;
mod read;
pub mod rules;
pub mod runtime;
pub mod segments;
mod snapshot;
mod state_machine;
mod state_overlay;
mod tables;
#[cfg(all(test, not(madsim)))]
mod test_entries;
mod types;
mod uniq;
mod well_formed;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, StorageBackend};
use tokio::sync::watch;

pub use apply::RulesState;
pub use backup::{restore, verify_backup, BackupFile, BackupInfo, BackupKey};
pub use damage::Damage;
pub use disk_space::{DiskSpace, LowDisk, SpaceProbe};
pub use error::StoreError;
pub use idempotency::Record as IdempotencyRecord;
pub use local_durable::LocalDurable;
pub use log_store::LogStore;
pub use metrics::StoreMetrics;
pub use read::{Page, StateReader};
pub use runtime::{blocking, UniqRuntime};
pub use snapshot::SnapshotFile;
pub use state_machine::StateMachine;
pub use types::*;

/// The name of a node's state machine file inside its data dir.
pub const DATA_FILE: &str = "uniqlog.redb";

/// The folder of a node's Raft log inside its data dir: append-only segment files and the
/// vote (`segments`).
///
/// The log and the state machine are kept apart so that the log's `fdatasync`, which every
/// write waits for, carries only the log's own bytes; the state machine is checkpointed in the
/// background of the log's guarantees (`live`).
pub use segments::LOG_DIR;

/// The Raft log file of the previous on-disk format (a redb B-tree): a data dir holding one is
/// refused with the way to migrate.
pub const LEGACY_LOG_FILE: &str = "raft-log.redb";

/// The folder of a node's snapshot files inside its data dir.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// The current snapshot's file in [`SNAPSHOT_DIR`].
pub const SNAPSHOT_FILE: &str = "current.snap";

/// redb's page cache of the state file. redb's default (1 GiB per file) would let a node's memory
/// grow with its data for a long time.
const STATE_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// A node's opened storage: the halves openraft drives, and a reader for the API.
pub struct Storage {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StateReader,
    /// Damage found while running (see [`Damage`]).
    pub damage: Damage,
    /// The free space writes need (see [`DiskSpace`]).
    pub disk: DiskSpace,
    /// Commit latencies and snapshot and purge counts, for the node's `/metrics`.
    pub metrics: StoreMetrics,
}

impl Storage {
    /// Open (or create) the storage in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Storage, StoreError> {
        let legacy_log = data_dir.join(LEGACY_LOG_FILE);
        if legacy_log.exists() {
            return Err(StoreError::Unsupported(format!(
                "{} is the Raft log of an older uniqlog (a redb file; this version keeps the log \
                 in segment files under {LOG_DIR}/). To move its data: with the old build \
                 running, `uniqlog backup --to FILE`; then, with this build, `uniqlog restore \
                 --from FILE` into a new data dir (docs/operating.md, Backup and restore)",
                legacy_log.display()
            )));
        }
        std::fs::create_dir_all(data_dir)?;
        let state_path = data_dir.join(DATA_FILE);
        if state_path.exists() {
            // Read-only, changing nothing. A file redb cannot open that way (it needs the
            // recovery of an unclean shutdown) is refused below for its missing format.
            let legacy = files::catching(DATA_FILE, "opening", || {
                Ok(Database::builder().open_read_only(&state_path)?)
            });
            if let Ok(db) = legacy {
                refuse_single_file_layout(&db, &state_path)?;
            }
        }
        let log_disk = Arc::new(disk::FsDisk::new(&data_dir.join(LOG_DIR))?);
        // Timed for the start-up line: after a crash, redb's repair of the state file and the
        // scan of the log are what a restart waits on (bench/restart.sh).
        let started = std::time::Instant::now();
        let state_db = files::open_file(&state_path, STATE_CACHE_BYTES)?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            file = %state_path.display(),
            "opened the state file"
        );
        let snapshot_disk = Arc::new(disk::FsDisk::new(&data_dir.join(SNAPSHOT_DIR))?);
        let mut storage = Self::with_log(
            log_disk,
            (state_db, &state_path.display().to_string()),
            snapshot_disk,
        )?;
        storage.disk = DiskSpace::at(data_dir);
        Ok(storage)
    }

    /// Open the storage on a custom log folder, a custom redb backend for the state machine
    /// and a custom snapshot folder (the simulator's disks).
    pub fn open_with(
        log: Arc<dyn disk::Disk>,
        state: impl StorageBackend,
        snapshots: Arc<dyn disk::Disk>,
    ) -> Result<Storage, StoreError> {
        let state_db = files::open_backend(state, DATA_FILE, STATE_CACHE_BYTES)?;
        Self::with_log(log, (state_db, DATA_FILE), snapshots)
    }

    /// Check the state file's format, open the log (cutting off a torn last write), check
    /// that the two belong together, then start on them.
    fn with_log(
        log_disk: Arc<dyn disk::Disk>,
        (state_db, state_name): (Database, &str),
        snapshots: Arc<dyn disk::Disk>,
    ) -> Result<Storage, StoreError> {
        files::ensure_format(&state_db, state_name)?;
        let started = std::time::Instant::now();
        let (log, recovery) = segments::SegmentLog::open(log_disk)?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            torn_bytes = recovery.torn_bytes,
            leftover_segments = recovery.leftover_segments,
            "opened the Raft log"
        );
        files::check_pair(&log, (&state_db, state_name))?;
        files::verify_state_records(&state_db, false).map_err(|e| e.in_file(state_name))?;
        Self::start(Arc::new(log), Arc::new(state_db), snapshots)
    }

    fn start(
        log: Arc<segments::SegmentLog>,
        db: Arc<Database>,
        snapshots: Arc<dyn disk::Disk>,
    ) -> Result<Storage, StoreError> {
        create_tables(&db)?;
        let live = Arc::new(live::LiveState::open(db)?);
        let (last_applied, _) = state_machine::applied_state(&live)?;
        let (tx, rx) = watch::channel(last_applied.map_or(0, |l| l.index));
        let snapshots = Arc::new(snapshot::SnapshotDir::open(snapshots)?);
        snapshots.forget_if_older_than(last_applied.map(|l| l.index))?;
        let rules = Arc::new(read::RulesCache::default());
        let damage = Damage::default();
        let metrics = StoreMetrics::default();
        let purge_gate = Arc::new(
            watch::channel(state_machine::PurgeGate {
                applied: last_applied.map_or(0, |l| l.index),
                receiving: false,
                install_failed: false,
            })
            .0,
        );
        // Everything the log holds at open is durable (the segments' last entry moves only
        // after its frame's fsync), and so is what was purged.
        let durable = local_durable::DurableMark::new(
            log.last_log_id()
                .or(log.last_purged())
                .map_or(0, |l| l.index + 1),
        );
        let log = LogStore::new(
            log,
            live.clone(),
            damage.clone(),
            metrics.clone(),
            purge_gate.subscribe(),
            durable.clone(),
        );
        let entries = log.entry_reader();
        let state_machine = StateMachine {
            purge_gate,
            durable,
            entries: entries.clone(),
            live: live.clone(),
            snapshots: snapshots.clone(),
            applied: Arc::new(tx),
            rules: rules.clone(),
            damage: damage.clone(),
            metrics: metrics.clone(),
        };
        Ok(Storage {
            log,
            reader: StateReader::new(live, rx, rules, damage.clone(), snapshots, entries),
            state_machine,
            damage,
            disk: DiskSpace::unlimited(),
            metrics,
        })
    }
}

impl Storage {
    /// What openraft does with committed entries, for tests that drive the state machine by
    /// hand: write them to the log (durably: the events are read from there), then apply.
    #[doc(hidden)]
    pub async fn log_and_apply(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> Result<Vec<LogResponse>, openraft::StorageError<NodeId>> {
        self.log_only(entries.clone()).await?;
        self.apply_only(entries).await
    }

    /// The first half of [`Storage::log_and_apply`]: write entries to the log, durably.
    #[doc(hidden)]
    pub async fn log_only(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> Result<(), openraft::StorageError<NodeId>> {
        let log = self.log.log.clone();
        blocking(move || log.append(&entries, None))
            .await
            .map_err(crate::error::logs_write)
    }

    /// The second half of [`Storage::log_and_apply`]: apply entries the log holds.
    #[doc(hidden)]
    pub async fn apply_only(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> Result<Vec<LogResponse>, openraft::StorageError<NodeId>> {
        use openraft::storage::RaftStateMachine;
        self.state_machine.clone().apply(entries).await
    }

    /// Checkpoint the state file every `entries` applied entries (tests: frequent
    /// checkpoints, in the background of apply as always).
    #[doc(hidden)]
    pub fn checkpoint_every(&self, entries: u64) {
        self.state_machine.live.checkpoint_every(entries);
    }
}

/// A data dir from before the log had a file of its own keeps the log, and the vote, inside
/// the state file: starting on it would forget the vote. Refuse, and say so.
fn refuse_single_file_layout(
    db: &impl redb::ReadableDatabase,
    path: &Path,
) -> Result<(), StoreError> {
    use redb::ReadableTableMetadata;
    let txn = db.begin_read()?;
    let has_log = match txn.open_table(tables::RAFT_META) {
        Ok(t) => !t.is_empty()?,
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if has_log {
        return Err(StoreError::Unsupported(format!(
            "{} holds the Raft log and state of an older uniqlog (one file, before {LOG_DIR}/); \
             this version cannot use it: remove the node from the cluster, move the data dir \
             away and add the node back so it catches up from its peers",
            path.display()
        )));
    }
    Ok(())
}

/// Every table exists from the first open on, so readers never meet a missing one.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = files::write_txn(db, Durability::Immediate)?;
    macro_rules! create {
        ($($tag:literal $table:ident $name:ident),*) => {
            $( txn.open_table(tables::$table)?; )*
        };
    }
    tables::state_machine_tables!(create);
    txn.commit()?;
    Ok(())
}
