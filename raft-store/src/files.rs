//! Opening a node's redb files so that damage is found, named and never repaired away.
//!
//! Three layers of defence, cheapest first:
//! - Every durable commit is a two-phase commit. With one phase, redb takes a commit slot
//!   whose checksum fails for a commit torn by a crash and silently rolls back to the one
//!   before; a bit flip in the newest slot would then make the node forget its latest vote and
//!   log entries, which is how a trusted log loses acknowledged writes. With two phases a bad
//!   newest slot cannot be a torn commit, and redb reports it instead.
//! - Every open verifies the checksum of every page of the committed trees
//!   (`set_check_integrity_on_open`): damage anywhere in the file's live data is found before
//!   the node serves, and reported instead of panicking.
//! - Every record carries its own checksum (`crate::checksum`), checked on each read, and
//!   the log file's records are all checked at open. When redb reports a damaged page, the
//!   records are scanned read-only to name the first damaged one.
//!
//! The on-disk format version lives in a `format` table of each file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition, TableError, WriteTransaction,
};

use crate::checksum;
use crate::error::StoreError;
use crate::log_store::decode_entry;
use crate::tables::*;

/// A write transaction with `durability`. A durable one commits in two phases (see the
/// module doc); a non-durable one is made durable by the next durable commit, which is.
pub(crate) fn write_txn(
    db: &Database,
    durability: Durability,
) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    let durable = matches!(durability, Durability::Immediate);
    txn.set_durability(durability)?;
    txn.set_two_phase_commit(durable);
    Ok(txn)
}

fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes)
        .set_check_integrity_on_open(true);
    b
}

fn is_corrupted(e: &DatabaseError) -> bool {
    matches!(e, DatabaseError::Storage(redb::StorageError::Corrupted(_)))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Open (or create) the redb file at `path`, verifying every page. A damaged file is an
/// error naming it, and the first damaged record when one can be found.
pub(crate) fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let name = path.display().to_string();
    match catch_unwind(AssertUnwindSafe(|| builder(cache_bytes).create(path))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if is_corrupted(&e) => Err(diagnose(path, e.to_string())),
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => Err(diagnose(
            path,
            format!("redb could not read it: {}", panic_text(&*panic)),
        )),
    }
    .map_err(|e| e.in_file(&name))
}

/// [`open_file`] on a custom backend (the simulator's disks). Without a path to reopen, a
/// damaged file is named but its records are not scanned.
pub(crate) fn open_backend(
    backend: impl StorageBackend,
    name: &str,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    match catch_unwind(AssertUnwindSafe(|| {
        builder(cache_bytes).create_with_backend(backend)
    })) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if is_corrupted(&e) => Err(StoreError::DamagedFile {
            file: name.into(),
            detail: e.to_string(),
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(panic) => Err(StoreError::DamagedFile {
            file: name.into(),
            detail: format!("redb could not read it: {}", panic_text(&*panic)),
        }),
    }
}

/// redb found `path` damaged: look, read-only, for the first record whose checksum fails, so
/// the operator learns which data was hit. Falls back to naming the file.
fn diagnose(path: &Path, detail: String) -> StoreError {
    let scan = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
        let db = Database::builder().open_read_only(path)?;
        verify_log_records(&db)?;
        verify_state_records(&db, true)
    }));
    match scan {
        Ok(Err(e @ StoreError::Corrupt { .. })) => e,
        _ => StoreError::DamagedFile {
            file: path.display().to_string(),
            detail,
        },
    }
}

fn each_row<K, V>(
    db: &impl ReadableDatabase,
    def: TableDefinition<K, V>,
    mut check: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let txn = db.begin_read()?;
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for row in table.iter()? {
        let (k, v) = row?;
        check(k.value(), v.value())?;
    }
    Ok(())
}

/// Check every record of the log file: each entry's checksum, index and encoding, and each
/// metadata value. The log is bounded by the snapshot policy, so this is cheap enough for
/// every start.
pub(crate) fn verify_log_records(db: &impl ReadableDatabase) -> Result<(), StoreError> {
    each_row(db, LOG, |index, stored| {
        decode_entry(index, stored).map(drop)
    })?;
    each_row(db, RAFT_META, |key, stored| {
        checksum::open("raft_meta", &key, key.as_bytes(), stored).map(drop)
    })
}

/// Check the state file's metadata, and with `events` every event and secret.
pub(crate) fn verify_state_records(
    db: &impl ReadableDatabase,
    events: bool,
) -> Result<(), StoreError> {
    each_row(db, SM_META, |key, stored| {
        checksum::open("sm_meta", &key, key.as_bytes(), stored).map(drop)
    })?;
    if events {
        each_row(db, EVENTS, |(topic, offset), v| {
            checksum::check_event("events", topic, offset, v).map(drop)
        })?;
        each_row(db, EVENT_SECRETS, |(topic, offset), v| {
            checksum::check_event("event_secrets", topic, offset, v).map(drop)
        })?;
    }
    Ok(())
}

/// Stamp a new file with this build's format version, or refuse a file in another one.
pub(crate) fn ensure_format(db: &Database, name: &str) -> Result<(), StoreError> {
    let txn = write_txn(db, Durability::Immediate)?;
    let fresh = txn.list_tables()?.next().is_none();
    {
        let mut t = txn.open_table(FORMAT)?;
        let found = t.get(KEY_FORMAT_VERSION)?.map(|g| g.value());
        match found {
            Some(FORMAT_VERSION) => {}
            None if fresh => {
                t.insert(KEY_FORMAT_VERSION, FORMAT_VERSION)?;
            }
            found => {
                let (version, by) = match found {
                    None => (0, "an earlier uniqlog, before records carried checksums"),
                    Some(_) => (found.unwrap_or(0), "a newer uniqlog"),
                };
                return Err(StoreError::Unsupported(format!(
                    "{name} is in on-disk format {version}, written by {by}; this build reads \
                     format {FORMAT_VERSION} only. Run the build that wrote it, or rebuild this \
                     node from its peers (see README, Operations: the node gets a new id)"
                )));
            }
        }
    }
    txn.commit()?;
    Ok(())
}
