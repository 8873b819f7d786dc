//! The redb tables of a node's two data files (the Raft log's and the state machine's), and
//! the small codecs around them.
//!
//! Every value carries a checksum (`crate::checksum`): log entries and metadata values are
//! byte strings sealed under their key, events are `(checksum, text)` over key and text, and
//! the other state tables hold `Sealed<V>` values.

use redb::{ReadableTable, Table, TableDefinition};
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
/// (`crate::apply`), which a format-2 reader would misread. A format-2 file is read as it is
/// (each of its runs is one append, which is a run of format 3) and stamped 3 at open, so an
/// older build refuses it from then on. Files in another format are refused.
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
/// stream -> (topic it belongs to, version = number of its events).
pub const STREAMS: TableDefinition<&str, Sealed<(&str, u64)>> = TableDefinition::new("streams");
/// (stream, version) -> topic offset of the stream's `version`-th event (1-based).
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
            10 EVENT_RUNS event_runs
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
