//! Lookups and range reads through the layers of changes and the state file.

use std::cell::OnceCell;
use std::ops::Bound;

use redb::{Key, ReadOnlyTable, ReadTransaction, ReadableTableMetadata, TableDefinition, Value};
use serde::de::DeserializeOwned;

use super::AgeKeyOwned;
use crate::checksum;
use crate::error::StoreError;
use crate::overlay::{Lookup, Overlay};
use crate::state_overlay::StateOverlay;
use crate::tables::*;

/// An owner and the offset of the event that claimed (or, in history, released) a key.
type Owner = (String, u64);
/// A stream's topic, version (its number of events) and first event's offset.
pub(crate) type StreamHead = (String, u64, u64);
/// A history row's key: set, key, claimed offset.
type HistoryRowKey = (String, String, u64);

/// Rows in key order (or its reverse), as they are now.
pub(crate) type Rows<'a, K, V> = Box<dyn Iterator<Item = Result<(K, V), StoreError>> + 'a>;

/// The layers that the file lacks, newest first, over the file.
pub(crate) struct Stack<'a> {
    pub(super) layers: Vec<&'a StateOverlay>,
    pub(super) txn: &'a ReadTransaction,
    /// Apply's tables, kept open for its whole batch; `None`: each lookup opens its table.
    pub(super) opened: Option<&'a Opened>,
}

/// The file's tables that apply looks up for every event (a key's owner, a stream's
/// version), opened once per batch: redb checks a table's name and types at every open, which
/// cost as much as the lookup itself (about 5 % of a follower's CPU, bench/README.md, issue
/// 25 step 6).
#[derive(Default)]
pub(crate) struct Opened {
    owners: OnceCell<ReadOnlyTable<(&'static str, &'static str), SealedOwner>>,
    streams: OnceCell<ReadOnlyTable<&'static str, checksum::Sealed<(&'static str, u64, u64)>>>,
}

/// `f` of `table` of `txn`: the table kept in `cell`, opened there first if need be, or
/// opened for this call alone.
fn with_table<K: Key + 'static, V: Value + 'static, T>(
    cell: Option<&OnceCell<ReadOnlyTable<K, V>>>,
    txn: &ReadTransaction,
    table: TableDefinition<'static, K, V>,
    f: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let Some(cell) = cell else {
        return f(&txn.open_table(table)?);
    };
    if cell.get().is_none() {
        let _ = cell.set(txn.open_table(table)?);
    }
    f(cell.get().expect("opened above"))
}

/// The value of `key`: the newest layer's that knows it, else the file's.
fn get<'a, K, V, Q>(
    layers: impl Iterator<Item = &'a Overlay<K, V>>,
    key: &Q,
    file: impl FnOnce() -> Result<Option<V>, StoreError>,
) -> Result<Option<V>, StoreError>
where
    K: Ord + std::hash::Hash + std::borrow::Borrow<Q> + 'a,
    V: Clone + 'a,
    Q: Ord + std::hash::Hash + ?Sized,
{
    for layer in layers {
        match layer.get(key) {
            Lookup::Written(v) => return Ok(Some(v.clone())),
            Lookup::Removed => return Ok(None),
            Lookup::Unknown => {}
        }
    }
    file()
}

/// The rows of `range`: the file's with every layer laid over, oldest first.
fn range<'a, K: Ord + Clone + 'a, V: Clone + 'a>(
    layers: Vec<&'a Overlay<K, V>>,
    range: (Bound<K>, Bound<K>),
    file: Rows<'a, K, V>,
    descending: bool,
) -> Rows<'a, K, V> {
    let mut rows = file;
    for layer in layers.into_iter().rev() {
        rows = Box::new(layer.merge(range.clone(), rows, descending));
    }
    rows
}

/// A file range as owned rows.
macro_rules! file_rows {
    ($range:expr, |$k:ident, $v:ident| $row:expr) => {
        Box::new($range.map(|row| {
            let (k, v) = row?;
            let ($k, $v) = (k.value(), v.value());
            Ok($row)
        }))
    };
}

impl<'a> Stack<'a> {
    fn each<K, V>(
        &self,
        pick: impl Fn(&'a StateOverlay) -> &'a Overlay<K, V>,
    ) -> Vec<&'a Overlay<K, V>> {
        self.layers.iter().map(|l| pick(l)).collect()
    }

    /// The sealed JSON under `key` of `sm_meta`.
    pub(crate) fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let sealed = get(self.layers.iter().map(|l| &l.meta), key, || {
            Ok(self
                .txn
                .open_table(SM_META)?
                .get(key)?
                .map(|g| g.value().to_vec()))
        })?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let json = checksum::open("sm_meta", &key, key.as_bytes(), &sealed)?;
        serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| StoreError::corrupt("sm_meta", key, e))
    }

    /// The number of events of `topic` (0 if unknown).
    pub(crate) fn topic_len(&self, topic: &str) -> Result<u64, StoreError> {
        Ok(get(self.layers.iter().map(|l| &l.topics), topic, || {
            Ok(self.txn.open_table(TOPICS)?.get(topic)?.map(|g| g.value()))
        })?
        .unwrap_or(0))
    }

    /// Every topic with its length, by name.
    pub(crate) fn topics(&self) -> Rows<'a, String, u64> {
        let file: Rows<'a, String, u64> = match self.txn.open_table(TOPICS) {
            Ok(t) => match t.range::<&str>(..) {
                Ok(r) => file_rows!(r, |k, v| (k.to_string(), v)),
                Err(e) => Box::new(std::iter::once(Err(e.into()))),
            },
            Err(e) => Box::new(std::iter::once(Err(e.into()))),
        };
        range(
            self.each(|l| &l.topics),
            (Bound::Unbounded, Bound::Unbounded),
            file,
            false,
        )
    }

    /// The topic, version and first event's offset of `stream`, if it has events.
    pub(crate) fn stream(&self, stream: &str) -> Result<Option<StreamHead>, StoreError> {
        get(self.layers.iter().map(|l| &l.streams), stream, || {
            let cell = self.opened.map(|o| &o.streams);
            with_table(cell, self.txn, STREAM_HEADS, |t| {
                Ok(t.get(stream)?.map(|g| {
                    let (topic, version, first) = g.value();
                    (topic.to_string(), version, first)
                }))
            })
        })
    }

    /// Streams from `from` on, by name, with their topics, versions and first offsets.
    pub(crate) fn streams_from(
        &self,
        from: &str,
    ) -> Result<Rows<'a, String, StreamHead>, StoreError> {
        let t = self.txn.open_table(STREAM_HEADS)?;
        let file: Rows<'a, String, StreamHead> = file_rows!(t.range(from..)?, |k, v| (
            k.to_string(),
            (v.0.to_string(), v.1, v.2)
        ));
        Ok(range(
            self.each(|l| &l.streams),
            (Bound::Included(from.to_string()), Bound::Unbounded),
            file,
            false,
        ))
    }

    /// The topic offsets of `stream`'s events from version `from` on, with their versions:
    /// the first from the stream's head, the others from `stream_index`.
    pub(crate) fn stream_offsets(
        &self,
        stream: &str,
        from: u64,
    ) -> Result<Rows<'a, (String, u64), u64>, StoreError> {
        let later = from.max(2);
        let t = self.txn.open_table(STREAM_INDEX)?;
        let file: Rows<'a, (String, u64), u64> = file_rows!(
            t.range((stream, later)..=(stream, u64::MAX))?,
            |k, v| ((k.0.to_string(), k.1), v)
        );
        let rest = range(
            self.each(|l| &l.stream_index),
            (
                Bound::Included((stream.to_string(), later)),
                Bound::Included((stream.to_string(), u64::MAX)),
            ),
            file,
            false,
        );
        let first = match self.stream(stream)? {
            Some((_, _, first)) if from <= 1 => first,
            _ => return Ok(rest),
        };
        Ok(Box::new(
            std::iter::once(Ok(((stream.to_string(), 1), first))).chain(rest),
        ))
    }

    /// The run that holds `offset` of `topic`, if any: the last run that starts at or before
    /// it, as (first offset, run).
    pub(crate) fn run_at(
        &self,
        topic: &str,
        offset: u64,
    ) -> Result<Option<(u64, RunValue)>, StoreError> {
        let t = self.txn.open_table(EVENT_RUNS)?;
        let file: Rows<'a, (String, u64), RunValue> = file_rows!(
            t.range((topic, 0)..=(topic, offset))?.rev(),
            |k, v| ((k.0.to_string(), k.1), v)
        );
        let mut rows = range(
            self.each(|l| &l.event_runs),
            (
                Bound::Included((topic.to_string(), 0)),
                Bound::Included((topic.to_string(), offset)),
            ),
            file,
            true,
        );
        rows.next()
            .transpose()
            .map(|row| row.map(|((_, first), run)| (first, run)))
    }

    /// The owner of a key and the offset of the event that claimed it.
    pub(crate) fn owner(&self, set: &str, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        get(
            self.layers.iter().map(|l| &l.uniq_owners),
            &(set.to_string(), key.to_string()),
            || {
                let cell = self.opened.map(|o| &o.owners);
                with_table(cell, self.txn, UNIQ_OWNERS, |t| {
                    Ok(t.get((set, key))?.map(|g| {
                        let (owner, since) = g.value();
                        (owner.to_string(), since)
                    }))
                })
            },
        )
    }

    /// Every owned key, by set and key.
    pub(crate) fn owners(&self) -> Result<Rows<'a, (String, String), Owner>, StoreError> {
        let t = self.txn.open_table(UNIQ_OWNERS)?;
        let file: Rows<'a, (String, String), (String, u64)> = file_rows!(
            t.range::<(&str, &str)>(..)?,
            |k, v| ((k.0.to_string(), k.1.to_string()), (v.0.to_string(), v.1))
        );
        Ok(range(
            self.each(|l| &l.uniq_owners),
            (Bound::Unbounded, Bound::Unbounded),
            file,
            false,
        ))
    }

    /// Every history row, by set, key and claimed offset.
    pub(crate) fn history(&self) -> Result<Rows<'a, HistoryRowKey, Owner>, StoreError> {
        let t = self.txn.open_table(UNIQ_HISTORY)?;
        let file: Rows<'a, (String, String, u64), (String, u64)> =
            file_rows!(t.range::<HistoryKey>(..)?, |k, v| (
                (k.0.to_string(), k.1.to_string(), k.2),
                (v.0.to_string(), v.1)
            ));
        Ok(range(
            self.each(|l| &l.uniq_history),
            (Bound::Unbounded, Bound::Unbounded),
            file,
            false,
        ))
    }

    /// The owners of one key over time, oldest first: (claimed offset, (owner, released
    /// offset or [`STILL_OWNED`])). `uniq_history` holds the released claims; the current
    /// owner is the last row. Files written before issue 25's step 6 also hold the current
    /// claim in `uniq_history`, as [`STILL_OWNED`]: it is the same row.
    pub(crate) fn key_history(
        &self,
        set: &str,
        key: &str,
    ) -> Result<Vec<(u64, Owner)>, StoreError> {
        let mut rows = self.released(set, key)?;
        if let Some((owner, claimed)) = self.owner(set, key)? {
            if !rows.iter().any(|(c, _)| *c == claimed) {
                rows.push((claimed, (owner, STILL_OWNED)));
                rows.sort_by_key(|(c, _)| *c);
            }
        }
        Ok(rows)
    }

    /// The rows of `uniq_history` for one key, by claimed offset.
    fn released(&self, set: &str, key: &str) -> Result<Vec<(u64, Owner)>, StoreError> {
        let t = self.txn.open_table(UNIQ_HISTORY)?;
        let file: Rows<'a, (String, String, u64), (String, u64)> =
            file_rows!(t.range((set, key, 0)..=(set, key, u64::MAX))?, |k, v| (
                (k.0.to_string(), k.1.to_string(), k.2),
                (v.0.to_string(), v.1)
            ));
        range(
            self.each(|l| &l.uniq_history),
            (
                Bound::Included((set.to_string(), key.to_string(), 0)),
                Bound::Included((set.to_string(), key.to_string(), u64::MAX)),
            ),
            file,
            false,
        )
        .map(|row| row.map(|((_, _, claimed), v)| (claimed, v)))
        .collect()
    }

    /// The stored answer under an idempotency key (JSON).
    pub(crate) fn idempotency(&self, topic: &str, key: &str) -> Result<Option<String>, StoreError> {
        get(
            self.layers.iter().map(|l| &l.idempotency),
            &(topic.to_string(), key.to_string()),
            || {
                Ok(self
                    .txn
                    .open_table(IDEMPOTENCY)?
                    .get((topic, key))?
                    .map(|g| g.value().to_string()))
            },
        )
    }

    /// The number of idempotency records.
    pub(crate) fn idempotency_len(&self) -> Result<u64, StoreError> {
        let file = self.txn.open_table(IDEMPOTENCY)?.len()?;
        let net: i64 = self.layers.iter().map(|l| l.idempotency_net).sum();
        Ok(file.saturating_add_signed(net))
    }

    /// The idempotency records in eviction order, after `floor`.
    pub(crate) fn by_age(
        &self,
        floor: Option<&AgeKeyOwned>,
    ) -> Result<Rows<'a, AgeKeyOwned, ()>, StoreError> {
        let t = self.txn.open_table(IDEMPOTENCY_BY_AGE)?;
        let file = match floor {
            None => t.range::<AgeKey>(..)?,
            Some((a, b, c, d, e)) => t.range::<(u64, u64, u32, &str, &str)>((
                Bound::Excluded((*a, *b, *c, d.as_str(), e.as_str())),
                Bound::Unbounded,
            ))?,
        };
        let file: Rows<'a, AgeKeyOwned, ()> = file_rows!(file, |k, _v| (
            (k.0, k.1, k.2, k.3.to_string(), k.4.to_string()),
            ()
        ));
        let low = floor.map_or(Bound::Unbounded, |f| Bound::Excluded(f.clone()));
        Ok(range(
            self.each(|l| &l.idempotency_by_age),
            (low, Bound::Unbounded),
            file,
            false,
        ))
    }
}
