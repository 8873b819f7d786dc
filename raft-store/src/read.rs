//! Read access to the applied state, for the HTTP read path. Reads never go through Raft:
//! they see this node's applied state (a follower may lag a little).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::apply::RulesState;
use crate::error::StoreError;
use crate::events::{missing, EntryReader, Events};
use crate::live::{LiveState, View};
use crate::snapshot::{table_hashes, write_records};
use crate::state_overlay::StateOverlay;
use crate::tables::*;

/// A page of events, each the JSON text readers are served (`crate::events::render`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<String>,
    /// The position to read next: a topic offset, or for a stream the number of its events
    /// already returned.
    pub next_offset: u64,
    /// The topic's length (a stream's: its number of events) in the state the page was read
    /// from. A page ends before it when it is full, so a reader knows how far behind it is,
    /// and a checker can tell a stale full page from a fresh one.
    pub head: u64,
}

/// The rules in force, kept decoded: every append needs them, and they change only when a
/// rules entry is applied or a snapshot installed. The state machine bumps the generation
/// after such a commit; a reader keeps what it read only if no bump happened meanwhile, so a
/// stale copy never outlives the change.
#[derive(Default)]
pub(crate) struct RulesCache {
    inner: std::sync::Mutex<(u64, Option<Arc<RulesState>>)>,
}

impl RulesCache {
    pub(crate) fn invalidate(&self) {
        let mut inner = self.inner.lock().expect("rules cache lock");
        inner.0 += 1;
        inner.1 = None;
    }
}

/// Read-only handle on the state machine. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    pub(crate) live: Arc<LiveState>,
    applied: watch::Receiver<u64>,
    rules: Arc<RulesCache>,
    pub(crate) damage: crate::Damage,
    /// Where backups are written before they are sent (`backup.rs`).
    pub(crate) snapshots: Arc<crate::snapshot::SnapshotDir>,
    /// The log, where the events are.
    pub(crate) entries: EntryReader,
}

impl StateReader {
    pub(crate) fn new(
        live: Arc<LiveState>,
        applied: watch::Receiver<u64>,
        rules: Arc<RulesCache>,
        damage: crate::Damage,
        snapshots: Arc<crate::snapshot::SnapshotDir>,
        entries: EntryReader,
    ) -> Self {
        StateReader {
            live,
            applied,
            rules,
            damage,
            snapshots,
            entries,
        }
    }

    /// Damage this node found while running, if any: such a node must stop.
    pub fn damage(&self) -> Option<&str> {
        self.damage.found()
    }

    /// Why the state file can no longer be written, if a background checkpoint failed: such a
    /// node must stop. Apply refuses to go on once one failed, but a follower that applies
    /// nothing for a while (catching up by snapshot, or idle) would not learn of it from
    /// apply, and would keep serving on a file that stopped keeping up.
    pub fn state_file_failed(&self) -> Option<String> {
        self.live
            .failure()
            .map(|e| format!("writing the state file failed ({e}); restart the node"))
    }

    /// A receiver that changes whenever entries are applied (value: last applied index).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Run a read on a view of the state as of now, recording damage for the node to stop
    /// on. A row redb cannot decode (it panics on a damaged length or string) is damage too,
    /// not a reason to drop one request and go on serving.
    fn guard<T>(
        &self,
        what: &str,
        read: impl Fn(&View<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.damage
            .note(crate::files::catching(crate::DATA_FILE, what, || {
                self.live.read(&read)
            }))
    }

    /// Events of `topic` from offset `from`, at most `limit`. An unknown topic is empty.
    pub fn read_topic(&self, topic: &str, from: u64, limit: usize) -> Result<Page, StoreError> {
        self.read_topic_within(topic, from, limit, usize::MAX)
    }

    /// [`StateReader::read_topic`], also stopping before the events' text passes `bytes_max`
    /// (a page holds at least one event, whatever its size).
    pub fn read_topic_within(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Page, StoreError> {
        self.guard("read_topic", |view| {
            // The topic's length as of this view bounds the read: runs and entries past it
            // may belong to applies this view does not see.
            let len = view.with(|s| s.topic_len(topic))?;
            let mut events = Events::open(view, &self.entries)?;
            let mut out: Vec<String> = Vec::new();
            let mut bytes = 0usize;
            for offset in (from..len).take(limit) {
                let event = events
                    .event(topic, offset)?
                    .ok_or_else(|| missing(topic, offset))?;
                bytes = bytes.saturating_add(event.len());
                if bytes > bytes_max && !out.is_empty() {
                    break;
                }
                out.push(event);
            }
            Ok(Page {
                next_offset: from + out.len() as u64,
                events: out,
                head: len,
            })
        })
    }

    /// Events of `stream` in order, skipping its first `from` events, at most `limit`.
    pub fn read_stream(&self, stream: &str, from: u64, limit: usize) -> Result<Page, StoreError> {
        self.read_stream_within(stream, from, limit, usize::MAX)
    }

    /// The topic `stream` belongs to, if it has events.
    pub fn stream_topic(&self, stream: &str) -> Result<Option<String>, StoreError> {
        self.guard("stream_topic", |view| {
            view.with(|s| Ok(s.stream(stream)?.map(|(topic, _, _)| topic)))
        })
    }

    /// [`StateReader::read_stream`], also capped in bytes like
    /// [`StateReader::read_topic_within`].
    pub fn read_stream_within(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Page, StoreError> {
        self.guard("read_stream", |view| {
            // Where the page's events are, looked up first: the layers are locked for
            // lookups only, never while entries are read and rendered.
            let found = view.with(|s| {
                let Some((topic, version, _)) = s.stream(stream)? else {
                    return Ok(None);
                };
                let offsets: Vec<((String, u64), u64)> = s
                    .stream_offsets(stream, from.saturating_add(1))?
                    .take(limit)
                    .collect::<Result<_, _>>()?;
                Ok(Some((topic, version, offsets)))
            })?;
            let Some((topic, head, offsets)) = found else {
                return Ok(Page {
                    events: Vec::new(),
                    next_offset: from,
                    head: 0,
                });
            };
            let mut events = Events::open(view, &self.entries)?;
            let mut out: Vec<String> = Vec::new();
            let mut bytes = 0usize;
            for ((_, version), offset) in offsets {
                let event = events.event(&topic, offset)?.ok_or_else(|| {
                    // A stream's first offset is in its head, the others in the index.
                    let table = if version == 1 {
                        "stream_heads"
                    } else {
                        "stream_index"
                    };
                    StoreError::corrupt(table, format!("{stream}/{version}"), "event missing")
                })?;
                bytes = bytes.saturating_add(event.len());
                if bytes > bytes_max && !out.is_empty() {
                    break;
                }
                out.push(event);
            }
            Ok(Page {
                next_offset: from + out.len() as u64,
                events: out,
                head,
            })
        })
    }

    /// Topics with their lengths, by name.
    pub fn topics(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.guard("topics", |view| {
            let copy = |l: &StateOverlay| StateOverlay {
                topics: l.topics.clone(),
                ..StateOverlay::default()
            };
            view.scan(copy, |s| s.topics().collect())
        })
    }

    /// Streams whose names start with `prefix`, with their versions, by name.
    pub fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.guard("streams_with_prefix", |view| {
            let copy = |l: &StateOverlay| StateOverlay {
                streams: l.streams.clone(),
                ..StateOverlay::default()
            };
            view.scan(copy, |s| {
                let mut out = Vec::new();
                for row in s.streams_from(prefix)? {
                    let (name, (_, version, _)) = row?;
                    if !name.starts_with(prefix) {
                        break;
                    }
                    out.push((name, version));
                }
                Ok(out)
            })
        })
    }

    /// The length of one topic (0 if unknown).
    pub fn topic_len(&self, topic: &str) -> Result<u64, StoreError> {
        self.guard("topic_len", |view| view.with(|s| s.topic_len(topic)))
    }

    /// The replicated rules in force (version 0 and no sets before the first rules entry).
    /// The rules, if they are in memory: no I/O, so callable from async code.
    pub fn cached_rules(&self) -> Option<Arc<RulesState>> {
        self.rules.inner.lock().expect("rules cache lock").1.clone()
    }

    pub fn rules(&self) -> Result<Arc<RulesState>, StoreError> {
        let generation = {
            let inner = self.rules.inner.lock().expect("rules cache lock");
            if let Some(rules) = &inner.1 {
                return Ok(rules.clone());
            }
            inner.0
        };
        let rules: RulesState = self.guard("rules", |view| {
            view.with(|s| Ok(s.meta(KEY_RULES)?.unwrap_or_default()))
        })?;
        let rules = Arc::new(rules);
        let mut inner = self.rules.inner.lock().expect("rules cache lock");
        if inner.0 == generation {
            inner.1 = Some(rules.clone());
        }
        Ok(rules)
    }

    /// How many keys each uniq set has an owner for. One pass over every owned key: meant
    /// for a dashboard refreshing every few seconds, not for a hot path.
    pub fn uniq_key_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.guard("uniq_key_counts", |view| {
            let copy = |l: &StateOverlay| StateOverlay {
                uniq_owners: l.uniq_owners.clone(),
                ..StateOverlay::default()
            };
            view.scan(copy, |s| {
                let mut counts = std::collections::BTreeMap::<String, u64>::new();
                for row in s.owners()? {
                    let ((set, _), _) = row?;
                    *counts.entry(set).or_default() += 1;
                }
                Ok(counts)
            })
        })
    }

    /// The owner of a normalized key and the offset of the event that claimed it.
    pub fn uniq_owner(&self, set: &str, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.guard("uniq_owner", |view| view.with(|s| s.owner(set, key)))
    }

    /// Owners of a key over time: (owner, claimed offset, released offset if released).
    pub fn uniq_history(
        &self,
        set: &str,
        key: &str,
    ) -> Result<Vec<(String, u64, Option<u64>)>, StoreError> {
        self.guard("uniq_history", |view| {
            let rows = view.with(|s| s.key_history(set, key))?;
            Ok(rows
                .into_iter()
                .map(|(claimed, (owner, released))| {
                    (
                        owner,
                        claimed,
                        (released != STILL_OWNED).then_some(released),
                    )
                })
                .collect())
        })
    }

    /// The secret fields stored with an event (for the node's own use, never served).
    pub fn event_secret(&self, topic: &str, offset: u64) -> Result<Option<String>, StoreError> {
        self.guard("event_secret", |view| {
            Events::open(view, &self.entries)?.secret(topic, offset)
        })
    }

    /// Number of idempotency records held.
    pub fn idempotency_records(&self) -> Result<u64, StoreError> {
        self.guard("idempotency_records", |view| {
            view.with(|s| s.idempotency_len())
        })
    }

    /// Write everything applied into the state file now (a clean stop: the next start
    /// re-applies nothing).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.damage.note(crate::files::catching(
            crate::DATA_FILE,
            "a checkpoint",
            || self.live.checkpoint().map(drop),
        ))
    }

    /// The applied index, and per replicated table its rows and their SHA-256 in the
    /// canonical record form (`crate::snapshot::table_hashes`): members that applied the
    /// same entries answer the same, whatever their files look like. Writes a checkpoint
    /// first, as [`StateReader::canonical_dump`] does.
    pub fn state_hash(&self) -> Result<(u64, BTreeMap<&'static str, (u64, String)>), StoreError> {
        self.damage.note(crate::files::catching(
            crate::DATA_FILE,
            "state_hash",
            || {
                let txn = self.live.checkpoint()?;
                let applied: Option<openraft::LogId<crate::NodeId>> =
                    get_json(&txn.open_table(SM_META)?, "sm_meta", KEY_LAST_APPLIED)?.flatten();
                let tables = table_hashes(&txn, &self.entries)?;
                Ok((applied.map_or(0, |l| l.index), tables))
            },
        ))
    }

    /// Every state-machine row in a canonical byte form (the snapshot record encoding). Two
    /// nodes that applied the same entries have equal dumps. Writes a checkpoint first: the
    /// dump reads the state file alone.
    pub fn canonical_dump(&self) -> Result<Vec<u8>, StoreError> {
        self.damage.note(crate::files::catching(
            crate::DATA_FILE,
            "canonical_dump",
            || {
                let txn = self.live.checkpoint()?;
                let mut out = Vec::new();
                write_records(&txn, &self.entries, &mut out)?;
                Ok(out)
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed background checkpoint is reported at once, not only to the next apply: the
    /// node stops on it (`App::fatal`) even when it applies nothing more.
    #[test]
    fn a_failed_checkpoint_is_reported_without_an_apply() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let reader = storage.reader.clone();
        assert_eq!(reader.state_file_failed(), None);
        let injected = std::io::Error::other("sync_data failed (injected)");
        storage
            .state_machine
            .live
            .failed(StoreError::from(injected));
        let failed = reader.state_file_failed().expect("reported");
        assert!(
            failed.contains("injected") && failed.contains("restart"),
            "{failed}"
        );
    }

    /// An archived event whose checksum fails is never served: the read fails naming the record,
    /// and the damage is recorded for the node to stop on.
    #[test]
    fn a_damaged_event_is_refused_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        {
            let txn = storage.state_machine.live.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVENTS).unwrap();
                let good = r#"{"offset":0}"#;
                let crc = crate::checksum::event_sum("t", 0, good);
                t.insert(("t", 0), (crc, good)).unwrap();
                t.insert(("t", 1), (crc, r#"{"offset":1}"#)).unwrap();
                txn.open_table(TOPICS).unwrap().insert("t", 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let reader = storage.reader.clone();
        assert_eq!(reader.read_topic("t", 0, 1).unwrap().events.len(), 1);
        assert_eq!(reader.damage(), None);
        let err = reader.read_topic("t", 0, 10).unwrap_err();
        assert!(err.is_damage(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("table events") && text.contains("(t, 1)"),
            "{text}"
        );
        assert_eq!(storage.damage.found(), Some(text.as_str()));
        assert_eq!(reader.damage(), Some(text.as_str()));
    }
}
