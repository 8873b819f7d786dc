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

/// Run `f`, which reads rows of `file`. A panic in it is damage when a decoder raised it
/// (redb decodes a key or a value before our checksum can look at it, and a damaged length or
/// string makes it panic; a broken [`crate::checksum::Sealed`] value says so), and a bug in
/// uniqlog otherwise ([`StoreError::Bug`]): a read that trips over its own logic must not
/// tell the operator to wipe a node whose data is fine.
pub(crate) fn catching<T>(
    file: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    watch_panics();
    forget_last_panic();
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(match Panicked::classify(&*panic) {
            Panicked::Damage(detail) => StoreError::DamagedFile {
                file: file.into(),
                detail: format!("{what}: {detail}"),
            },
            Panicked::Bug(detail) => StoreError::Bug {
                what: what.into(),
                detail,
            },
        })
    })
}

/// [`catching`] for apply, where a bug must not be survived: the state machine cannot go on
/// from a half-applied batch. Damage becomes the error that stops the node; any other panic
/// goes on as a panic.
pub(crate) fn catching_seals<T>(
    file: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    watch_panics();
    forget_last_panic();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => match Panicked::classify(&*panic) {
            Panicked::Damage(detail) => Err(StoreError::DamagedFile {
                file: file.into(),
                detail: format!("{what}: {detail}"),
            }),
            Panicked::Bug(_) => std::panic::resume_unwind(panic),
        },
    }
}

/// What a caught panic stands for.
enum Panicked {
    Damage(String),
    Bug(String),
}

impl Panicked {
    /// Read where the panic was raised (recorded by [`watch_panics`]'s hook on this thread):
    /// inside redb's source, it is redb failing to decode a stored row (or one of its own
    /// assertions about its pages, which is counted as damage too: redb's pages are not ours
    /// to judge). A hook set later that does not run ours makes every panic a bug here.
    fn classify(payload: &(dyn std::any::Any + Send)) -> Panicked {
        let text = panic_text(payload);
        let at = LAST_PANIC
            .try_with(|p| p.borrow_mut().take())
            .ok()
            .flatten();
        if text.contains(crate::checksum::SEAL_BROKEN) {
            return Panicked::Damage(text);
        }
        match at {
            Some((file, _)) if in_redb(&file) => {
                Panicked::Damage(format!("redb could not decode a stored row ({text})"))
            }
            Some((file, line)) => Panicked::Bug(format!("{text} (at {file}:{line})")),
            None => Panicked::Bug(text),
        }
    }
}

/// Whether a source path is redb's own: `.../redb-4.6.0/src/...` from the registry, or
/// `.../checkouts/redb-<hash>/...` from git. Other components that start with `redb-` (a user
/// named so) do not count.
fn in_redb(file: &str) -> bool {
    let parts: Vec<&str> = file.split(['/', '\\']).collect();
    parts.iter().enumerate().any(|(i, part)| {
        part.strip_prefix("redb-").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit()) || (i > 0 && parts[i - 1] == "checkouts")
        })
    })
}

thread_local! {
    /// File and line of the last panic raised on this thread.
    static LAST_PANIC: std::cell::RefCell<Option<(String, u32)>> = const { std::cell::RefCell::new(None) };
}

/// A panic resumed without the hook (`resume_unwind`) must not be judged by an older one's
/// place.
fn forget_last_panic() {
    let _ = LAST_PANIC.try_with(|p| p.borrow_mut().take());
}

/// Install, once per process, a panic hook that records where each panic is raised for
/// [`Panicked::classify`], then runs the hook that was there before (which prints it).
fn watch_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                // `try_with`: a panic while this thread's locals are torn down must not panic
                // again inside the hook (that would abort the process).
                let _ = LAST_PANIC
                    .try_with(|p| *p.borrow_mut() = Some((at.file().to_owned(), at.line())));
            }
            previous(info);
        }));
    });
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
            // Moves nothing unless `streams` still has rows (an unreleased build of issue 25's
            // step 8 stamped 3 before it moved them); one emptiness check otherwise.
            Some(FORMAT_VERSION) => {
                catching_seals(name, "moving streams to stream_heads", || {
                    move_streams_to_heads(&txn)
                })?;
            }
            Some(FORMAT_UPGRADED_IN_PLACE) => {
                let streams = catching_seals(name, "moving streams to stream_heads", || {
                    move_streams_to_heads(&txn)
                })?;
                tracing::info!(
                    file = name,
                    from = FORMAT_UPGRADED_IN_PLACE,
                    to = FORMAT_VERSION,
                    streams,
                    "on-disk format upgraded in place; builds before it refuse this file from now on"
                );
                t.insert(KEY_FORMAT_VERSION, FORMAT_VERSION)?;
            }
            None if fresh => {
                t.insert(KEY_FORMAT_VERSION, FORMAT_VERSION)?;
            }
            found => {
                let (version, by) = match found {
                    None => (0, "an earlier uniqlog, before records carried checksums"),
                    Some(v) if v > FORMAT_VERSION => (v, "a newer uniqlog"),
                    Some(v) => (v, "an older uniqlog"),
                };
                if found == Some(1) {
                    return Err(StoreError::Unsupported(format!(
                        "{name} is in on-disk format 1, written by an older uniqlog that kept a \
                         copy of every event in the state file; this build reads events from the \
                         log (format {FORMAT_VERSION}). To move its data: with the old build \
                         running, `uniqlog backup --to FILE`; then, with this build, `uniqlog \
                         restore --from FILE` into a new data dir (docs/operating.md, Backup and \
                         restore)"
                    )));
                }
                return Err(StoreError::Unsupported(format!(
                    "{name} is in on-disk format {version}, written by {by}; this build reads \
                     format {FORMAT_VERSION} only. Run the build that wrote it, or rebuild this \
                     node from its peers (see docs/operating.md, Damaged data: the node gets a new id)"
                )));
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// The log and the state file must belong together. A log holding no vote, entry or purge
/// point beside a state file that has applied entries was lost or replaced: the vote went
/// with it, and starting would let the node vote twice. A state file that applied nothing
/// beside a log purged past some index was lost or replaced: what the purged entries made is
/// gone. Both are refused as damage (each alone looks like a fresh one).
pub(crate) fn check_pair(
    log: &crate::segments::SegmentLog,
    (state_db, state_name): (&Database, &str),
) -> Result<(), StoreError> {
    type LogId = openraft::LogId<crate::NodeId>;
    let log_empty = log.vote().is_none() && log.last_log_id().is_none();
    let applied: Option<LogId> = {
        let txn = state_db.begin_read()?;
        match txn.open_table(SM_META) {
            Ok(t) => get_json::<Option<LogId>>(&t, "sm_meta", KEY_LAST_APPLIED)?.flatten(),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    let log_name = crate::LOG_DIR;
    if let (true, Some(applied)) = (log_empty, applied) {
        return Err(StoreError::DamagedFile {
            file: log_name.into(),
            detail: format!(
                "it holds no vote and no log entry, while {state_name} has applied up to index \
                 {}: the log was lost or replaced, and with it this node's vote",
                applied.index
            ),
        });
    }
    // Apply runs only on entries the log holds durably (`EntryReader::check_durable`), and a
    // checkpoint writes only what was applied: a state file ahead of its log means the log
    // lost entries after their fsync said they were durable. Except right after a snapshot
    // install, which commits the state before the log's purge to the snapshot's index.
    // A file that no build with checkpoints wrote yet (no `checkpoint` key) may come from one
    // that recorded no installs: not judged.
    let (installed, checkpointed): (Option<u64>, bool) = {
        let txn = state_db.begin_read()?;
        match txn.open_table(FORMAT) {
            Ok(t) => (
                t.get(crate::live::KEY_INSTALLED)?.map(|g| g.value()),
                t.get(crate::live::KEY_CHECKPOINT)?.is_some(),
            ),
            Err(TableError::TableDoesNotExist(_)) => (None, false),
            Err(e) => return Err(e.into()),
        }
    };
    let judged = |a: &LogId| !log_empty && checkpointed && installed != Some(a.index);
    if let Some(applied) = applied.filter(judged) {
        let log_last = log.last_log_id().map(|l| l.index);
        if log_last.is_none_or(|last| last < applied.index) {
            return Err(StoreError::DamagedFile {
                file: log_name.into(),
                detail: format!(
                    "it ends at index {}, while {state_name} has applied up to index {}: the \
                     log lost entries after they were synced (a disk that does not keep what \
                     it acknowledged), or the two files come from different nodes",
                    log_last.map_or("none".to_string(), |l| l.to_string()),
                    applied.index
                ),
            });
        }
    }
    if let (Some(purged), None) = (log.last_purged(), applied) {
        return Err(StoreError::DamagedFile {
            file: state_name.into(),
            detail: format!(
                "it has applied nothing, while {log_name} was purged up to index {}: the \
                 state file was lost or replaced",
                purged.index
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Storage, DATA_FILE, LOG_DIR};

    fn refused(dir: &Path, file: &str) {
        match Storage::open(dir) {
            Err(e @ StoreError::DamagedFile { .. }) => {
                assert!(e.is_damage());
                assert!(e.to_string().contains(file), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened a data dir whose {file} was lost"),
        }
    }

    #[test]
    fn a_broken_seal_is_damage_and_other_panics_in_apply_are_not() {
        let seal = || -> Result<(), StoreError> { panic!("{}", crate::checksum::SEAL_BROKEN) };
        for result in [
            catching("f", "read", seal),
            catching_seals("f", "apply", seal),
        ] {
            let e = result.unwrap_err();
            assert!(e.is_damage() && e.to_string().contains("checksum"), "{e}");
        }
        // A panic of uniqlog's own code in a read is a bug: named as one, with where it was.
        let other = || -> Result<(), StoreError> { panic!("index out of range") };
        let e = catching("f", "read", other).unwrap_err();
        assert!(matches!(e, StoreError::Bug { .. }) && !e.is_damage(), "{e}");
        assert!(e.to_string().contains("files.rs"), "{e}");
        // In apply, it goes on as a panic.
        let bug = std::panic::catch_unwind(|| catching_seals("f", "apply", other));
        assert!(bug.is_err());
    }

    #[test]
    fn only_redbs_own_sources_are_redb() {
        let registry =
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/redb-4.6.0/src/types.rs";
        assert!(in_redb(registry));
        assert!(in_redb(
            "/root/.cargo/git/checkouts/redb-5d2b8e0c1f/abc123/src/db.rs"
        ));
        assert!(!in_redb("/home/redb-ci/uniqlog/raft-store/src/files.rs"));
        assert!(!in_redb("raft-store/src/read.rs"));
    }

    /// A row that redb cannot decode (its bytes damaged after the file was opened, so no
    /// check at open saw them) makes redb panic; that panic is damage, in reads and in apply.
    #[test]
    fn a_row_redb_cannot_decode_is_damage() {
        const PROBE: TableDefinition<u64, &str> = TableDefinition::new("probe");
        const TEXT: &str = "uniqlog-panic-probe-0123456789";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(PROBE).unwrap().insert(1, TEXT).unwrap();
            txn.commit().unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(TEXT.len())
            .position(|w| w == TEXT.as_bytes())
            .expect("the row's text is in the file");
        bytes[at..at + TEXT.len()].fill(0xff);
        std::fs::write(&path, &bytes).unwrap();
        let db = Database::builder()
            .set_check_integrity_on_open(false)
            .create(&path)
            .unwrap();
        let read = || -> Result<(), StoreError> {
            let txn = db.begin_read()?;
            let table = txn.open_table(PROBE)?;
            let row = table.get(1)?.map(|v| v.value().len());
            assert!(row.is_some());
            Ok(())
        };
        for e in [
            catching("f", "read", read).unwrap_err(),
            catching_seals("f", "apply", read).unwrap_err(),
        ] {
            assert!(e.is_damage(), "{e}");
            assert!(e.to_string().contains("redb could not decode"), "{e}");
        }
    }

    fn applied(path: &Path, index: u64) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        let log_id =
            openraft::LogId::<crate::NodeId>::new(openraft::CommittedLeaderId::new(1, 1), index);
        put_json(
            &mut txn.open_table(SM_META).unwrap(),
            KEY_LAST_APPLIED,
            &Some(log_id),
        )
        .unwrap();
        txn.commit().unwrap();
    }

    /// Each alone would pass for a fresh one; beside the other, its loss shows.
    #[test]
    fn a_lost_log_or_state_file_is_refused() {
        let log_id = |i| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
        // The log lost beside a state that applied entries.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        storage
            .log
            .log
            .save_vote(openraft::Vote::new(1, 1))
            .unwrap();
        storage.log.log.purge(log_id(7)).unwrap();
        drop(storage);
        applied(&dir.path().join(DATA_FILE), 7);
        drop(Storage::open(dir.path()).unwrap());
        std::fs::remove_dir_all(dir.path().join(LOG_DIR)).unwrap();
        refused(dir.path(), LOG_DIR);
        // A log that ends before what the state applied lost synced entries.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        storage.log.log.purge(log_id(6)).unwrap();
        drop(storage);
        applied(&dir.path().join(DATA_FILE), 7);
        // A file written by a build that keeps checkpoints is judged; one without the key
        // (an older build, which recorded no snapshot installs) is not.
        drop(Storage::open(dir.path()).unwrap());
        {
            let db = Database::create(dir.path().join(DATA_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(FORMAT)
                .unwrap()
                .insert(crate::live::KEY_CHECKPOINT, 1)
                .unwrap();
            txn.commit().unwrap();
        }
        refused(dir.path(), LOG_DIR);
        // ...unless a snapshot install put it there, and the crash came before the log's purge.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        storage.log.log.purge(log_id(6)).unwrap();
        storage
            .state_machine
            .live
            .install(|txn| {
                put_json(
                    &mut txn.open_table(SM_META)?,
                    KEY_LAST_APPLIED,
                    &Some(log_id(7)),
                )
            })
            .unwrap();
        drop(storage);
        drop(Storage::open(dir.path()).unwrap());
        // The state lost beside a purged log.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        storage.log.log.purge(log_id(9)).unwrap();
        drop(storage);
        applied(&dir.path().join(DATA_FILE), 9);
        drop(Storage::open(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join(DATA_FILE)).unwrap();
        refused(dir.path(), DATA_FILE);
    }
}
