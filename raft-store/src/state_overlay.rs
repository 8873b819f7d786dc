//! Every state-machine table's changes in one layer of [`crate::live`]: an apply batch's, or
//! all those since a checkpoint. Apply writes here instead of into a redb transaction per
//! batch; a checkpoint writes a layer into one transaction.

use redb::WriteTransaction;

use crate::error::StoreError;
use crate::overlay::Overlay;
use crate::tables::*;

/// Owned forms of the tables' keys and values (redb's are borrowed).
#[derive(Default, Debug)]
pub(crate) struct StateOverlay {
    /// `sm_meta`: key -> sealed JSON, as `tables::put_json` writes it.
    pub meta: Overlay<String, Vec<u8>>,
    pub topics: Overlay<String, u64>,
    /// (topic, first offset) -> (log index, position, count, log time). Apply writes no
    /// events: the log holds them (`crate::events`); the archive tables change only with a
    /// snapshot install, which replaces the file's tables outright.
    pub event_runs: Overlay<(String, u64), RunValue>,
    /// `stream_heads`: stream -> (topic, version, first offset).
    pub streams: Overlay<String, (String, u64, u64)>,
    /// (stream, version) -> offset, for versions from 2 on.
    pub stream_index: Overlay<(String, u64), u64>,
    /// (set, key) -> (owner, offset).
    pub uniq_owners: Overlay<(String, String), (String, u64)>,
    /// (set, key, claimed offset) -> (owner, released offset).
    pub uniq_history: Overlay<(String, String, u64), (String, u64)>,
    /// (topic, key) -> the stored answer's JSON.
    pub idempotency: Overlay<(String, String), String>,
    /// (log time, log index, position, topic, key).
    pub idempotency_by_age: Overlay<(u64, u64, u32, String, String), ()>,
    /// Idempotency records added less those removed: with the file's count, how many there
    /// are (apply's eviction bounds it).
    pub idempotency_net: i64,
}

impl StateOverlay {
    /// Rows changed since the last checkpoint, over all tables.
    pub(crate) fn len(&self) -> usize {
        self.meta.len()
            + self.topics.len()
            + self.event_runs.len()
            + self.streams.len()
            + self.stream_index.len()
            + self.uniq_owners.len()
            + self.uniq_history.len()
            + self.idempotency.len()
            + self.idempotency_by_age.len()
    }

    /// Whether no table changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0 && self.idempotency_net == 0
    }

    /// Lay a batch's changes over this layer's.
    pub(crate) fn absorb(&mut self, batch: StateOverlay) {
        self.meta.absorb(batch.meta);
        self.topics.absorb(batch.topics);
        self.event_runs.absorb(batch.event_runs);
        self.streams.absorb(batch.streams);
        self.stream_index.absorb(batch.stream_index);
        self.uniq_owners.absorb(batch.uniq_owners);
        self.uniq_history.absorb(batch.uniq_history);
        self.idempotency.absorb(batch.idempotency);
        self.idempotency_by_age.absorb(batch.idempotency_by_age);
        self.idempotency_net += batch.idempotency_net;
    }

    /// Write every change into `txn`, table by table in key order. The caller commits `txn`
    /// (durably, with `last_applied` among the meta rows).
    pub(crate) fn flush(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        /// Write one overlay into its table: `$key` and `$value` turn the owned forms into
        /// what the table takes.
        macro_rules! flush {
            ($overlay:expr, $table:expr, |$k:ident| $key:expr, |$v:ident| $value:expr) => {{
                let mut t = txn.open_table($table)?;
                for ($k, change) in $overlay.changes() {
                    match change {
                        Some($v) => {
                            t.insert($key, $value)?;
                        }
                        None => {
                            t.remove($key)?;
                        }
                    }
                }
            }};
        }
        flush!(self.meta, SM_META, |k| k.as_str(), |v| v.as_slice());
        flush!(self.topics, TOPICS, |k| k.as_str(), |v| *v);
        flush!(self.event_runs, EVENT_RUNS, |k| (k.0.as_str(), k.1), |v| *v);
        flush!(self.streams, STREAM_HEADS, |k| k.as_str(), |v| (
            v.0.as_str(),
            v.1,
            v.2
        ));
        flush!(
            self.stream_index,
            STREAM_INDEX,
            |k| (k.0.as_str(), k.1),
            |v| *v
        );
        flush!(
            self.uniq_owners,
            UNIQ_OWNERS,
            |k| (k.0.as_str(), k.1.as_str()),
            |v| (v.0.as_str(), v.1)
        );
        flush!(
            self.uniq_history,
            UNIQ_HISTORY,
            |k| (k.0.as_str(), k.1.as_str(), k.2),
            |v| (v.0.as_str(), v.1)
        );
        flush!(
            self.idempotency,
            IDEMPOTENCY,
            |k| (k.0.as_str(), k.1.as_str()),
            |v| v.as_str()
        );
        flush!(
            self.idempotency_by_age,
            IDEMPOTENCY_BY_AGE,
            |k| (k.0, k.1, k.2, k.3.as_str(), k.4.as_str()),
            |v| *v
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable};

    #[test]
    fn a_flush_writes_every_change_and_removes_what_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        // A row that the overlay will remove, written by an earlier checkpoint.
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(STREAM_HEADS)
                .unwrap()
                .insert("gone", ("t", 1, 0))
                .unwrap();
            txn.commit().unwrap();
        }
        let mut o = StateOverlay::default();
        o.topics.insert("t".into(), 2);
        o.streams.insert("s".into(), ("t".into(), 3, 0));
        o.streams.remove("gone".into());
        o.stream_index.insert(("s".into(), 2), 1);
        o.stream_index.insert(("s".into(), 3), 4);
        o.uniq_owners
            .insert(("email".into(), "a@x".into()), ("s".into(), 0));
        o.uniq_history
            .insert(("email".into(), "a@x".into(), 0), ("s".into(), STILL_OWNED));
        o.idempotency.insert(("t".into(), "k".into()), "{}".into());
        o.idempotency_by_age
            .insert((5, 7, 0, "t".into(), "k".into()), ());
        o.event_runs.insert(("t".into(), 0), (7, 0, 2, 5));
        o.meta.insert("k".into(), b"v".to_vec());
        assert_eq!(o.len(), 11);

        let txn = db.begin_write().unwrap();
        o.flush(&txn).unwrap();
        txn.commit().unwrap();

        let r = db.begin_read().unwrap();
        let streams = r.open_table(STREAM_HEADS).unwrap();
        assert!(streams.get("gone").unwrap().is_none());
        assert_eq!(streams.get("s").unwrap().unwrap().value(), ("t", 3, 0));
        assert_eq!(
            r.open_table(TOPICS)
                .unwrap()
                .get("t")
                .unwrap()
                .unwrap()
                .value(),
            2
        );
        let index: Vec<_> = r
            .open_table(STREAM_INDEX)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                (k.value().1, v.value())
            })
            .collect();
        assert_eq!(index, [(2, 1), (3, 4)]);
        let owner = r.open_table(UNIQ_OWNERS).unwrap();
        assert_eq!(
            owner.get(("email", "a@x")).unwrap().unwrap().value(),
            ("s", 0)
        );
        let history = r.open_table(UNIQ_HISTORY).unwrap();
        assert_eq!(
            history.get(("email", "a@x", 0)).unwrap().unwrap().value(),
            ("s", STILL_OWNED)
        );
        assert_eq!(
            r.open_table(IDEMPOTENCY)
                .unwrap()
                .get(("t", "k"))
                .unwrap()
                .unwrap()
                .value(),
            "{}"
        );
        assert!(r
            .open_table(IDEMPOTENCY_BY_AGE)
            .unwrap()
            .get((5, 7, 0, "t", "k"))
            .unwrap()
            .is_some());
        assert_eq!(
            r.open_table(EVENT_RUNS)
                .unwrap()
                .get(("t", 0))
                .unwrap()
                .unwrap()
                .value(),
            (7, 0, 2, 5)
        );
        assert_eq!(
            r.open_table(SM_META)
                .unwrap()
                .get("k")
                .unwrap()
                .unwrap()
                .value(),
            b"v"
        );
    }
}
