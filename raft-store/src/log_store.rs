//! openraft's `RaftLogStorage` over redb: the log, the vote and the committed marker.
//!
//! Every append, truncate, purge and vote is a `Durability::Immediate` commit, and openraft is
//! told an append is flushed only after that commit returned: nothing is acknowledged to a
//! leader (and so to a client) before it is on disk. Appends are group-committed by
//! [`crate::log_writer`]; reads see appended entries at once, flushed or not.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checksum;
use crate::error::{logs_read, logs_write, vote_read, vote_write, StoreError};
use crate::log_writer::{LogCache, LogWriter};
use crate::runtime::blocking;
use crate::tables::*;
use crate::types::{NodeId, TypeConfig};

/// The Raft log of one node. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: Arc<Database>,
    writer: Arc<LogWriter>,
    damage: crate::Damage,
}

impl LogStore {
    /// The log in `db`; `state_db` is the state machine's file, made durable before any purge.
    pub(crate) fn new(
        db: Arc<Database>,
        state_db: Arc<Database>,
        damage: crate::Damage,
        metrics: crate::StoreMetrics,
    ) -> Self {
        LogStore {
            writer: Arc::new(LogWriter::new(db.clone(), state_db, metrics)),
            db,
            damage,
        }
    }
}

pub(crate) fn get_meta<T: DeserializeOwned>(
    db: &Database,
    table: redb::TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    get_json(&t, table.name(), key)
}

fn put_meta<T: Serialize>(
    db: &Database,
    key: &'static str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let txn = crate::files::write_txn(db, durability)?;
    put_json(&mut txn.open_table(RAFT_META)?, key, value)?;
    txn.commit()?;
    Ok(())
}

/// Log appends are fsynced before openraft is told they are flushed.
fn append_durability() -> Durability {
    // Planted bug (simulation builds only, `crate::planted`): acknowledge before durable.
    #[cfg(madsim)]
    if crate::planted::is(crate::planted::Bug::AckBeforeDurable) {
        return Durability::None;
    }
    Durability::Immediate
}

/// One durable commit of entries, and of the commit marker when given. An error (a failed
/// fsync among them) means nothing may be taken as durable: the caller reports it to
/// openraft, which stops Raft on this node.
pub(crate) fn write_entries(
    db: &Database,
    entries: &[Entry<TypeConfig>],
    committed: Option<Option<LogId<NodeId>>>,
) -> Result<(), StoreError> {
    let txn = crate::files::write_txn(db, append_durability())?;
    if let Some(committed) = committed {
        put_json(&mut txn.open_table(RAFT_META)?, KEY_COMMITTED, &committed)?;
    }
    {
        let mut t = txn.open_table(LOG)?;
        let (mut json, mut sealed) = (Vec::new(), Vec::new());
        for e in entries {
            json.clear();
            serde_json::to_writer(&mut json, e).expect("log entries serialize");
            let index = e.log_id.index;
            checksum::seal_into(&index.to_be_bytes(), &json, &mut sealed);
            t.insert(index, sealed.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Check and decode the log entry stored at `index`. An entry whose own index differs from
/// its key is damage too (a value written under the wrong key).
pub(crate) fn decode_entry(index: u64, stored: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    let json = checksum::open("raft_log", &index, &index.to_be_bytes(), stored)?;
    let entry: Entry<TypeConfig> =
        serde_json::from_slice(json).map_err(|e| StoreError::corrupt("raft_log", index, e))?;
    if entry.log_id.index != index {
        return Err(StoreError::corrupt(
            "raft_log",
            index,
            format!("holds the entry of index {}", entry.log_id.index),
        ));
    }
    Ok(entry)
}

/// The entries in the range: from the cached tail when it covers the range, else the part
/// before the tail from redb and the rest from the tail. The tail is taken first: an entry
/// evicted from it meanwhile is durable, where the read that follows finds it.
fn read_entries(
    db: &Database,
    cache: &LogCache,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let (tail, complete) = cache.range(start, end);
    if complete {
        return Ok(tail);
    }
    let mut out = Vec::new();
    let txn = db.begin_read()?;
    let table = match txn.open_table(LOG) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    // redb's part ends where the tail begins.
    let redb_end = match tail.first() {
        Some(first) => Bound::Excluded(first.log_id.index),
        None => end,
    };
    if let Some(table) = table {
        for row in table.range::<u64>((start, redb_end))? {
            let (k, v) = row?;
            out.push(decode_entry(k.value(), v.value())?);
        }
    }
    out.extend(tail);
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        // The common case, recent entries, needs no I/O and so no blocking thread.
        if let (entries, true) = self.writer.cache.range(start, end) {
            return Ok(entries);
        }
        let (db, writer) = (self.db.clone(), self.writer.clone());
        blocking(move || read_entries(&db, &writer.cache, start, end))
            .await
            .map_err(|e| logs_read(self.damage.saw(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let (db, writer) = (self.db.clone(), self.writer.clone());
        blocking(move || {
            let last_purged: Option<LogId<NodeId>> = get_meta(&db, RAFT_META, KEY_LAST_PURGED)?;
            let last = match writer.cache.last() {
                Some(log_id) => Some(log_id),
                None => {
                    let txn = db.begin_read()?;
                    match txn.open_table(LOG) {
                        Ok(t) => match t.last()? {
                            Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
                            None => None,
                        },
                        Err(redb::TableError::TableDoesNotExist(_)) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
        .map_err(|e| logs_read(self.damage.saw(e)))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.writer
            .barrier(move |db| put_meta(db, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| vote_write(self.damage.saw(e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, RAFT_META, KEY_VOTE))
            .await
            .map_err(|e| vote_read(self.damage.saw(e)))
    }

    /// Advisory (openraft re-derives the commit index on election), so it costs no commit of
    /// its own: the log writer writes the latest value with the next batch of entries.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.writer.note_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || get_meta::<Option<LogId<NodeId>>>(&db, RAFT_META, KEY_COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(|e| logs_read(self.damage.saw(e)))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.writer.append(entries.into_iter().collect(), callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.writer
            .truncate(log_id.index)
            .await
            .map_err(|e| logs_write(self.damage.saw(e)))
    }

    /// Durable, and only after the state machine's file is: the log is never purged past what
    /// the state machine kept (its applies are not fsynced one by one).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.writer
            .purge(log_id)
            .await
            .map_err(|e| logs_write(self.damage.saw(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use redb::StorageBackend;

    use super::*;

    /// An in-memory file whose `sync_data` fails on demand; a failed sync makes nothing
    /// durable (the pages are dropped, as Linux may after a failed fsync).
    #[derive(Debug, Default, Clone)]
    struct FlakyDisk {
        volatile: Arc<Mutex<Vec<u8>>>,
        durable: Arc<Mutex<Vec<u8>>>,
        fail: Arc<AtomicBool>,
    }

    impl StorageBackend for FlakyDisk {
        fn len(&self) -> Result<u64, io::Error> {
            Ok(self.volatile.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            let v = self.volatile.lock().unwrap();
            let start = offset as usize;
            out.copy_from_slice(&v[start..start + out.len()]);
            Ok(())
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.volatile.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
            *self.durable.lock().unwrap() = self.volatile.lock().unwrap().clone();
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            let mut v = self.volatile.lock().unwrap();
            let start = offset as usize;
            v[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// A failed fsync fails the append (so openraft hears an error, never "flushed"), every
    /// later commit fails too, and the file reopened on what is durable holds the entries
    /// before it and not the failed one.
    #[test]
    fn a_failed_fsync_fails_the_append_and_nothing_of_it_is_durable() {
        let disk = FlakyDisk::default();
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::Storage::open_with_backend(disk.clone(), dir.path().join("s")).unwrap();
        let db = storage.log.db.clone();
        write_entries(&db, &[entry(1), entry(2)], None).unwrap();
        disk.fail.store(true, Ordering::SeqCst);
        let err = write_entries(&db, &[entry(3)], None).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        disk.fail.store(false, Ordering::SeqCst);
        // redb latches the failure: every later commit fails, even with the disk healthy
        // again. (Reads still succeed from its cache: the node stops serving once Raft stopped.)
        assert!(write_entries(&db, &[entry(4)], None).is_err());
        drop(storage);
        drop(db);

        let reopened = FlakyDisk {
            volatile: Arc::new(Mutex::new(disk.durable.lock().unwrap().clone())),
            ..FlakyDisk::default()
        };
        let storage = crate::Storage::open_with_backend(reopened, dir.path().join("s")).unwrap();
        let got: Vec<u64> = read_entries(
            &storage.log.db,
            &LogCache::default(),
            Bound::Unbounded,
            Bound::Unbounded,
        )
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
        assert_eq!(got, vec![1, 2]);
    }
}
