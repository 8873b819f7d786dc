//! The redb tables of a node's two data files (the Raft log's and the state machine's), and
//! the small codecs around them.
//!
//! Every value carries a checksum (`crate::checksum`): log entries and metadata values are
//! byte strings sealed under their key, events are `(checksum, text)` over key and text, and
//! the other state tables hold `Sealed<V>` values.

use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checksum::{self, Sealed};
use crate::error::StoreError;

/// Both files: `version` -> the on-disk format the file is written in ([`FORMAT_VERSION`]).
pub const FORMAT: TableDefinition<&str, u64> = TableDefinition::new("format");
pub const KEY_FORMAT_VERSION: &str = "version";
/// The on-disk format this build writes and reads. 1: checksums on every record and a format
/// table. 2: events are read from the log (`event_runs`); `events` and `event_secrets` hold
/// only what a snapshot or a backup brought. 3: a run may span several appends of an entry
/// (`crate::apply`), which a format-2 reader would misread, and a stream's first offset is in
/// `stream_heads`, not in `stream_index`. A format-2 file is upgraded at open, in one
/// transaction: its runs are read as they are (each is one append, a run of format 3), its
/// `streams` rows move into `stream_heads` ([`move_streams_to_heads`]), and it is stamped 3,
/// so an older build refuses it from then on. Files in another format are refused.
pub const FORMAT_VERSION: u64 = 3;
/// The format that this build upgrades in place by stamping it [`FORMAT_VERSION`].
pub const FORMAT_UPGRADED_IN_PLACE: u64 = 2;

/// Raft log: index -> JSON-encoded `openraft::Entry`, sealed under the index.
/// Raft metadata: `vote`, `committed`, `last_purged` -> JSON, sealed under the key.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// State machine metadata: `last_applied`, `membership`, `log_time_ms`, `rules` -> JSON,
/// sealed under the key.
pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// topic -> number of events (the next offset).
pub const TOPICS: TableDefinition<&str, Sealed<u64>> = TableDefinition::new("topics");
/// (topic, first offset) -> where a run of accepted appends' events is in the log: (log
/// index, position of the run's first request in its entry, number of events, log time). A
/// run is the appends of one topic that follow each other in one entry, each appending all
/// its events (requests to other topics may sit between). Apply writes this row, never the
/// events: the log is the event store (`crate::events`).
pub const EVENT_RUNS: TableDefinition<(&str, u64), Sealed<RunValue>> =
    TableDefinition::new("event_runs");
/// The archive: (topic, offset) -> (checksum, the event as served to readers, JSON text), for
/// events whose entries this node's log does not hold, because a snapshot or a backup brought
/// them. Apply never writes it.
pub const EVENTS: TableDefinition<(&str, u64), (u32, &str)> = TableDefinition::new("events");
/// The archive of the events' secret fields, as [`EVENTS`]. Never served to readers.
pub const EVENT_SECRETS: TableDefinition<(&str, u64), (u32, &str)> =
    TableDefinition::new("event_secrets");
/// Format 2 only: stream -> (topic it belongs to, version = number of its events). Its rows
/// move into [`STREAM_HEADS`] when a format-2 file is opened or a snapshot written by a
/// format-2 node is installed ([`move_streams_to_heads`]); nothing else writes it.
pub const STREAMS: TableDefinition<&str, Sealed<(&str, u64)>> = TableDefinition::new("streams");
/// stream -> (topic it belongs to, version = number of its events, topic offset of its first
/// event). The first event's offset lives here rather than in a `stream_index` row: most
/// streams (a user's) get one event from a hot path, and a row costs apply and every
/// checkpoint on every node (issue 25).
pub const STREAM_HEADS: TableDefinition<&str, Sealed<(&str, u64, u64)>> =
    TableDefinition::new("stream_heads");
/// (stream, version) -> topic offset of the stream's `version`-th event, for versions from 2
/// on (version 1 is in [`STREAM_HEADS`]).
pub const STREAM_INDEX: TableDefinition<(&str, u64), Sealed<u64>> =
    TableDefinition::new("stream_index");

/// (set, key) -> (owner stream, offset of the event that claimed it).
pub const UNIQ_OWNERS: TableDefinition<(&str, &str), Sealed<(&str, u64)>> =
    TableDefinition::new("uniq_owners");
/// (set, key, claimed offset) -> (owner, released offset): the claims that were released.
/// The current claim is the `uniq_owners` row; files written before issue 25's step 6 hold it
/// here too, released at [`STILL_OWNED`] (`live::Stack::key_history` reads both).
pub const UNIQ_HISTORY: TableDefinition<HistoryKey, SealedOwner> =
    TableDefinition::new("uniq_history");
/// (topic, idempotency key) -> the stored answer (JSON [`crate::idempotency::Record`]).
pub const IDEMPOTENCY: TableDefinition<(&str, &str), Sealed<&str>> =
    TableDefinition::new("idempotency");
/// (log time, log index, topic, key): the idempotency records in eviction order.
pub const IDEMPOTENCY_BY_AGE: TableDefinition<AgeKey, ()> =
    TableDefinition::new("idempotency_by_age");

/// (log time, log index, position of the request in its entry, topic, key): the key of
/// `idempotency_by_age`, the order of the requests in the log whatever entries they shared.
pub type AgeKey = (u64, u64, u32, &'static str, &'static str);
/// (set, key, claimed offset): the key of `uniq_history`.
pub type HistoryKey = (&'static str, &'static str, u64);
/// (log index, position in the entry, event count, log time): the value of `event_runs`.
pub type RunValue = (u64, u32, u32, u64);
/// (owner, offset), sealed: the value of `uniq_owners` and `uniq_history`.
pub type SealedOwner = Sealed<(&'static str, u64)>;

/// `released_offset` of a history row whose owner still holds the key.
pub const STILL_OWNED: u64 = u64::MAX;

pub const KEY_LAST_APPLIED: &str = "last_applied";
pub const KEY_MEMBERSHIP: &str = "membership";
pub const KEY_LOG_TIME: &str = "log_time_ms";
pub const KEY_RULES: &str = "rules";

/// Every state-machine table, with its stable snapshot tag and a local name. Calls
/// `$m!(tag TABLE name, ...)`. Adding a table here puts it in creation at open, snapshots,
/// snapshot installs and canonical dumps; a tag is never reused.
macro_rules! state_machine_tables {
    ($m:ident) => {
        $m!(
            0 SM_META sm_meta,
            1 TOPICS topics,
            2 EVENTS events,
            3 STREAMS streams,
            4 STREAM_INDEX stream_index,
            5 UNIQ_OWNERS uniq_owners,
            6 UNIQ_HISTORY uniq_history,
            7 IDEMPOTENCY idempotency,
            8 IDEMPOTENCY_BY_AGE idempotency_by_age,
            9 EVENT_SECRETS event_secrets,
            10 EVENT_RUNS event_runs,
            11 STREAM_HEADS stream_heads
        )
    };
}
pub(crate) use state_machine_tables;

/// Write `value` as sealed JSON under `key` of a metadata table (`raft_meta`, `sm_meta`).
pub(crate) fn put_json<T: Serialize>(
    t: &mut Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(value).expect("metadata serializes");
    t.insert(key, checksum::seal(key.as_bytes(), &json).as_slice())?;
    Ok(())
}

/// Read the sealed JSON under `key` of the metadata table `table` (named for errors).
pub(crate) fn get_json<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(v) = t.get(key)? else {
        return Ok(None);
    };
    let json = checksum::open(table, &key, key.as_bytes(), v.value())?;
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| StoreError::corrupt(table, key, e))
}

/// A JSON value sealed under `key` in a metadata table of `db`, if the table and the key exist.
pub(crate) fn get_meta<T: serde::de::DeserializeOwned>(
    db: &redb::Database,
    table: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, crate::error::StoreError> {
    use redb::{ReadableDatabase, TableHandle};
    let txn = db.begin_read()?;
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    get_json(&t, table.name(), key)
}

/// Move every `streams` row (format 2) into `stream_heads` (format 3), taking the stream's
/// first offset out of its `stream_index` row for version 1. Returns how many moved. Runs in
/// the transaction that upgrades a file or installs a snapshot, so a crash leaves either
/// format whole.
pub(crate) fn move_streams_to_heads(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut old = txn.open_table(STREAMS)?;
    if old.is_empty()? {
        return Ok(0);
    }
    let mut heads = txn.open_table(STREAM_HEADS)?;
    let mut index = txn.open_table(STREAM_INDEX)?;
    let mut moved = 0;
    for row in old.iter()? {
        let (stream, value) = row?;
        let (stream, (topic, version)) = (stream.value(), value.value());
        let first = index.remove((stream, 1))?.map(|g| g.value());
        let Some(first) = first else {
            return Err(StoreError::corrupt(
                "stream_index",
                format!("{stream}/1"),
                "a stream with events has no offset for its first event",
            ));
        };
        heads.insert(stream, (topic, version, first))?;
        moved += 1;
    }
    old.retain(|_, _| false)?;
    Ok(moved)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;
    use crate::test_entries::entry;
    use crate::types::Request;

    /// An append to topic `t` of `n` events in `stream`, typed `<stream>-<i>`.
    fn append(stream: &str, n: usize) -> Request {
        let types: Vec<String> = (0..n).map(|i| format!("{stream}-{i}")).collect();
        crate::test_entries::append("t", stream, &types, None)
    }

    fn stream_types(storage: &crate::Storage, stream: &str) -> Vec<String> {
        let page = storage.reader.read_stream(stream, 0, 100).unwrap();
        page.events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["type"].to_string())
            .collect()
    }

    /// Rewrite a format-3 state file the way format 2 held streams: `streams` rows, and the
    /// first event's offset in `stream_index`.
    fn as_format_2(db: &redb::Database, stamp: u64) {
        let txn = db.begin_write().unwrap();
        {
            let mut heads = txn.open_table(STREAM_HEADS).unwrap();
            let mut streams = txn.open_table(STREAMS).unwrap();
            let mut index = txn.open_table(STREAM_INDEX).unwrap();
            for row in heads.iter().unwrap() {
                let (k, v) = row.unwrap();
                let (topic, version, first) = v.value();
                streams.insert(k.value(), (topic, version)).unwrap();
                index.insert((k.value(), 1), first).unwrap();
            }
            heads.retain(|_, _| false).unwrap();
            txn.open_table(FORMAT)
                .unwrap()
                .insert(KEY_FORMAT_VERSION, stamp)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    fn heads_and_index(db: &redb::Database) -> (Vec<(String, (String, u64, u64))>, u64, u64) {
        let txn = db.begin_read().unwrap();
        let heads = txn
            .open_table(STREAM_HEADS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                let (topic, version, first) = v.value();
                (k.value().to_string(), (topic.to_string(), version, first))
            })
            .collect();
        let index = txn.open_table(STREAM_INDEX).unwrap().len().unwrap();
        let streams = txn.open_table(STREAMS).unwrap().len().unwrap();
        (heads, index, streams)
    }

    /// A state file and a snapshot of format 2 (streams in `streams`, first offsets in
    /// `stream_index`) are both moved to `stream_heads` when this build opens or installs
    /// them, and every stream reads back as it was.
    #[tokio::test]
    async fn format_2_streams_move_to_heads_at_open_and_at_install() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        storage
            .log_and_apply(vec![
                entry(1, vec![append("one", 1), append("three", 2)]),
                entry(2, vec![append("three", 1)]),
            ])
            .await
            .unwrap();
        let expected = [
            ("one", vec!["\"one-0\""]),
            ("three", vec!["\"three-0\"", "\"three-1\"", "\"three-0\""]),
        ];
        let heads = vec![
            ("one".to_string(), ("t".to_string(), 1, 0)),
            ("three".to_string(), ("t".to_string(), 3, 1)),
        ];
        for (stream, types) in &expected {
            assert_eq!(stream_types(&storage, stream), *types);
        }
        let db = storage.state_machine.live.db.clone();
        storage.state_machine.live.checkpoint().unwrap();
        // Versions 2 and 3 of "three" only: a first event needs no index row.
        assert_eq!(heads_and_index(&db), (heads.clone(), 2, 0));

        // A snapshot of the format-2 shape, installed on a fresh store.
        as_format_2(&db, 2);
        assert_eq!(heads_and_index(&db), (Vec::new(), 4, 2));
        let snap = storage
            .state_machine
            .clone()
            .build_snapshot()
            .await
            .unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = crate::Storage::open(other_dir.path()).unwrap();
        let mut sm = other.state_machine.clone();
        let mut rx = sm.begin_receiving_snapshot().await.unwrap();
        let mut src = snap.snapshot;
        tokio::io::copy(&mut src, &mut rx).await.unwrap();
        sm.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(
            heads_and_index(&other.state_machine.live.db),
            (heads.clone(), 2, 0)
        );
        for (stream, types) in &expected {
            assert_eq!(stream_types(&other, stream), *types);
        }

        // The format-2 file itself, opened again; then the same rows stamped 3, as an
        // unreleased build of this change left them.
        drop((storage, db));
        let reopen = || loop {
            match crate::Storage::open(dir.path()) {
                Ok(s) => break s,
                // A background checkpoint may still hold the file for a moment.
                Err(e) if e.to_string().contains("already open") => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        for stamp in [2, 3] {
            let storage = reopen();
            let db = storage.state_machine.live.db.clone();
            assert_eq!(heads_and_index(&db), (heads.clone(), 2, 0), "stamp {stamp}");
            for (stream, types) in &expected {
                assert_eq!(stream_types(&storage, stream), *types);
            }
            if stamp == 2 {
                as_format_2(&db, 3);
            }
        }
    }

    /// A format-2 stream whose first offset is missing is damage, named, not a guess.
    #[test]
    fn a_format_2_stream_without_its_first_offset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(STREAMS)
            .unwrap()
            .insert("s", ("t", 1))
            .unwrap();
        let err = move_streams_to_heads(&txn).unwrap_err();
        assert!(err.to_string().contains("s/1"), "{err}");
    }
}
