//! openraft's `RaftLogStorage` over redb: the log, the vote and the committed marker.
//!
//! Every append, truncate, purge and vote is a `Durability::Immediate` commit, and openraft is
//! told an append is flushed only after that commit returned: nothing is acknowledged to a
//! leader (and so to a client) before it is on disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{logs_read, logs_write, vote_read, vote_write, StoreError};
use crate::runtime::blocking;
use crate::tables::*;
use crate::types::{NodeId, TypeConfig};

/// The Raft log of one node. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        LogStore { db }
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
    match t.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::corrupt(table.name(), key, e)),
    }
}

fn put_meta<T: Serialize>(
    db: &Database,
    key: &'static str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).expect("raft metadata serializes");
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
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

fn read_entries(
    db: &Database,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(LOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range::<u64>((start, end))? {
        let (k, v) = row?;
        let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::corrupt("raft_log", k.value(), e))?;
        out.push(entry);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || read_entries(&db, start, end))
            .await
            .map_err(logs_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId<NodeId>> = get_meta(&db, RAFT_META, KEY_LAST_PURGED)?;
            let txn = db.begin_read()?;
            let last = match txn.open_table(LOG) {
                Ok(t) => match t.last()? {
                    Some((k, v)) => Some(
                        serde_json::from_slice::<Entry<TypeConfig>>(v.value())
                            .map_err(|e| StoreError::corrupt("raft_log", k.value(), e))?
                            .log_id,
                    ),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
        .map_err(logs_read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_meta(&db, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(vote_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, RAFT_META, KEY_VOTE))
            .await
            .map_err(vote_read)
    }

    /// Advisory (openraft re-derives the commit index on election), so not fsynced on its own:
    /// the next durable commit of the file carries it.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || put_meta(&db, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(logs_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || get_meta::<Option<LogId<NodeId>>>(&db, RAFT_META, KEY_COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(logs_read)
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
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                let bytes = serde_json::to_vec(&e).expect("log entries serialize");
                (e.log_id.index, bytes)
            })
            .collect();
        let db = self.db.clone();
        let res = blocking(move || -> Result<(), StoreError> {
            let mut txn = db.begin_write()?;
            txn.set_durability(append_durability())?;
            {
                let mut t = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                callback.log_io_completed(Err(io));
                Err(logs_write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || -> Result<(), StoreError> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(logs_write)
    }

    /// Durable, and in the same file as the state machine: this commit also makes every
    /// earlier (non-fsynced) apply durable, so the log is never purged past what the state
    /// machine kept.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || -> Result<(), StoreError> {
            let bytes = serde_json::to_vec(&log_id).expect("log id serializes");
            let txn = db.begin_write()?;
            txn.open_table(RAFT_META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(logs_write)
    }
}
