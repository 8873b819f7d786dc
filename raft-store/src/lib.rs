//! uniqlog's replicated storage: the openraft type config, the redb-backed Raft log and state
//! machine, the command and outcome types, and snapshots.
//!
//! This crate does no network I/O and knows no HTTP type. Apply is deterministic: it reads no
//! clock, randomness, environment or local config.

mod apply;
mod error;
mod idempotency;
mod log_store;
mod log_writer;
/// Bugs the simulation can plant on purpose (simulation builds only).
#[cfg(madsim)]
pub mod planted;
mod read;
pub mod rules;
pub mod runtime;
mod snapshot;
mod state_machine;
mod tables;
mod types;
mod uniq;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, StorageBackend};
use tokio::sync::watch;

pub use apply::RulesState;
pub use error::StoreError;
pub use idempotency::Record as IdempotencyRecord;
pub use log_store::LogStore;
pub use read::{Page, StateReader};
pub use runtime::{blocking, UniqRuntime};
pub use snapshot::SnapshotFile;
pub use state_machine::StateMachine;
pub use types::*;

/// The name of a node's data file inside its data dir.
pub const DATA_FILE: &str = "uniqlog.redb";

/// A node's opened storage: the halves openraft drives, and a reader for the API.
pub struct Storage {
    pub log: LogStore,
    pub state_machine: StateMachine,
    pub reader: StateReader,
}

impl Storage {
    /// Open (or create) the storage in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Storage, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(data_dir.join(DATA_FILE))?;
        Self::with_database(db, data_dir.join("snapshots"))
    }

    /// Open the storage on a custom redb backend (the simulator's disk), with snapshot files
    /// under `snapshot_dir`.
    pub fn open_with_backend(
        backend: impl StorageBackend,
        snapshot_dir: PathBuf,
    ) -> Result<Storage, StoreError> {
        let db = Database::builder().create_with_backend(backend)?;
        Self::with_database(db, snapshot_dir)
    }

    fn with_database(db: Database, snapshot_dir: PathBuf) -> Result<Storage, StoreError> {
        create_tables(&db)?;
        let db = Arc::new(db);
        let (last_applied, _) = state_machine::applied_state(&db)?;
        let (tx, rx) = watch::channel(last_applied.map_or(0, |l| l.index));
        let snapshots = snapshot::SnapshotDir::open(snapshot_dir)?;
        snapshots.forget_if_older_than(last_applied.map(|l| l.index))?;
        let rules = Arc::new(read::RulesCache::default());
        let state_machine = StateMachine {
            db: db.clone(),
            snapshots: Arc::new(snapshots),
            applied: Arc::new(tx),
            rules: rules.clone(),
        };
        Ok(Storage {
            log: LogStore::new(db.clone()),
            reader: StateReader::new(db, rx, rules),
            state_machine,
        })
    }
}

/// Every table exists from the first open on, so readers never meet a missing one.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.open_table(tables::LOG)?;
    txn.open_table(tables::RAFT_META)?;
    macro_rules! create {
        ($($tag:literal $table:ident $name:ident),*) => {
            $( txn.open_table(tables::$table)?; )*
        };
    }
    tables::state_machine_tables!(create);
    txn.commit()?;
    Ok(())
}
