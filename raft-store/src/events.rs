//! The event store's read side. The log is the store: apply records where accepted appends'
//! events are (`event_runs`: topic and first offset -> log index, position of the first
//! request in its entry, count, log time; a run spans the appends of one topic that follow
//! each other in an entry) and never copies them. A read finds the run that
//! holds an offset, takes the entry from the log (its in-memory tail, else the segment files,
//! whose records carry CRCs) and renders the event as readers see it.
//!
//! Events whose entries this node's log does not hold, because a snapshot or a backup brought
//! them, are in the archive tables (`events`, `event_secrets`), rendered by the node that
//! built the snapshot. The archive is looked at first; on a node that never installed a
//! snapshot it is empty.

use std::fmt::Write as _;
use std::sync::Arc;

use openraft::{Entry, EntryPayload};
use redb::{ReadOnlyTable, ReadableTableMetadata};

use crate::checksum::check_event;
use crate::error::StoreError;
use crate::live::View;
use crate::log_writer::LogCache;
use crate::segments::SegmentLog;
use crate::tables::{RunValue, EVENTS, EVENT_SECRETS};
use crate::types::{NewEvent, Request, TypeConfig};

/// An offset below its topic's length that neither a run nor the archive holds.
pub(crate) fn missing(topic: &str, offset: u64) -> StoreError {
    StoreError::corrupt(
        "event_runs",
        format!("({topic}, {offset})"),
        "no run holds it",
    )
}

/// Reads entries for the event store: the log's tail in memory, else its files, purged by
/// openraft or not.
#[derive(Clone)]
pub(crate) struct EntryReader {
    pub(crate) log: Arc<SegmentLog>,
    pub(crate) cache: Arc<LogCache>,
}

impl EntryReader {
    /// Refuse to go on unless the log's files hold entries up to `index` (the files' last
    /// entry is updated only after its frame's `fdatasync`).
    pub(crate) fn check_durable(&self, index: u64) -> Result<(), StoreError> {
        match self.log.last_log_id() {
            Some(l) if l.index >= index => Ok(()),
            _ => Err(StoreError::EntryMissing { index }),
        }
    }

    /// The entry at `index`. Missing means this node's log does not hold it yet (a follower
    /// restarted behind what it had applied catches up from its leader): not damage.
    pub(crate) fn entry(&self, index: u64) -> Result<Entry<TypeConfig>, StoreError> {
        if let Some(e) = self.cache.get(index) {
            return Ok(e);
        }
        // Evicted from the tail only once durable, so the files hold it.
        self.log
            .read_kept(index)?
            .ok_or(StoreError::EntryMissing { index })
    }
}

/// An event as readers see it: the JSON object that `GET .../events` serves, built from the
/// entry that carried it. Field order and text are part of the contract (clients, snapshots
/// and the archive hold the same bytes), so it is written by hand, once, here; `data` and
/// `metadata` are the client's JSON as validated at apply, verbatim.
pub(crate) fn render(
    topic: &str,
    offset: u64,
    log_index: u64,
    log_time: u64,
    e: &NewEvent,
) -> String {
    let mut out = String::with_capacity(
        96 + topic.len()
            + e.event_type.len()
            + e.stream.as_ref().map_or(0, String::len)
            + e.data.len()
            + e.metadata.as_ref().map_or(0, String::len),
    );
    out.push_str("{\"topic\":");
    push_json_string(&mut out, topic);
    write!(
        out,
        ",\"offset\":{offset},\"log_index\":{log_index},\"timestamp\":{log_time},\"type\":"
    )
    .expect("writing to a String");
    push_json_string(&mut out, &e.event_type);
    if let Some(stream) = &e.stream {
        out.push_str(",\"stream\":");
        push_json_string(&mut out, stream);
    }
    out.push_str(",\"data\":");
    out.push_str(json_trim(&e.data));
    if let Some(m) = &e.metadata {
        out.push_str(",\"metadata\":");
        out.push_str(json_trim(m));
    }
    out.push('}');
    out
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

/// A JSON text without the whitespace around its value (what serde's `RawValue` keeps).
fn json_trim(text: &str) -> &str {
    text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// The events of one read transaction: runs and archive as of that transaction, entries from
/// the log (which never changes below the applied index).
pub(crate) struct Events<'r> {
    entries: &'r EntryReader,
    /// The runs, in the layers of applied changes and the state file (`crate::live`).
    view: &'r View<'r>,
    archive: ReadOnlyTable<(&'static str, u64), (u32, &'static str)>,
    secrets: ReadOnlyTable<(&'static str, u64), (u32, &'static str)>,
    archive_empty: bool,
    /// The last run found: (topic, first offset, run). Reads go offset by offset.
    run: Option<(String, u64, RunValue)>,
    /// The last entry read: a run's events share it.
    entry: Option<Entry<TypeConfig>>,
}

impl<'r> Events<'r> {
    pub(crate) fn open(view: &'r View<'r>, entries: &'r EntryReader) -> Result<Self, StoreError> {
        let txn = view.txn();
        let archive = txn.open_table(EVENTS)?;
        Ok(Events {
            entries,
            view,
            archive_empty: archive.is_empty()?,
            archive,
            secrets: txn.open_table(EVENT_SECRETS)?,
            run: None,
            entry: None,
        })
    }

    /// The event at `(topic, offset)` as readers see it, if the topic has that many.
    pub(crate) fn event(&mut self, topic: &str, offset: u64) -> Result<Option<String>, StoreError> {
        if let Some(text) = self.archived(topic, offset)? {
            return Ok(Some(text));
        }
        self.with_new_event(topic, offset, |run, e| {
            render(topic, offset, run.0, run.3, e)
        })
    }

    /// The event and its secret fields, found once (a snapshot writes both).
    pub(crate) fn event_and_secret(
        &mut self,
        topic: &str,
        offset: u64,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        if let Some(text) = self.archived(topic, offset)? {
            return Ok(Some((text, self.archived_secret(topic, offset)?)));
        }
        self.with_new_event(topic, offset, |run, e| {
            (render(topic, offset, run.0, run.3, e), e.secret.clone())
        })
    }

    fn archived_secret(&self, topic: &str, offset: u64) -> Result<Option<String>, StoreError> {
        match self.secrets.get((topic, offset))? {
            None => Ok(None),
            Some(g) => Ok(Some(
                check_event("event_secrets", topic, offset, g.value())?.to_string(),
            )),
        }
    }

    /// The secret fields stored with the event at `(topic, offset)`, if it has any.
    pub(crate) fn secret(
        &mut self,
        topic: &str,
        offset: u64,
    ) -> Result<Option<String>, StoreError> {
        if self.archived(topic, offset)?.is_some() {
            return self.archived_secret(topic, offset);
        }
        Ok(self
            .with_new_event(topic, offset, |_, e| e.secret.clone())?
            .flatten())
    }

    fn archived(&self, topic: &str, offset: u64) -> Result<Option<String>, StoreError> {
        if self.archive_empty {
            return Ok(None);
        }
        match self.archive.get((topic, offset))? {
            None => Ok(None),
            Some(g) => Ok(Some(
                check_event("events", topic, offset, g.value())?.to_string(),
            )),
        }
    }

    /// `f` of the event's run and of the event as the client sent it, from its entry.
    fn with_new_event<T>(
        &mut self,
        topic: &str,
        offset: u64,
        f: impl FnOnce(&RunValue, &NewEvent) -> T,
    ) -> Result<Option<T>, StoreError> {
        let cached = self
            .run
            .as_ref()
            .filter(|(t, first, run)| {
                t == topic && *first <= offset && offset < first + run.2 as u64
            })
            .map(|(_, first, run)| (*first, *run));
        let (first, run) = match cached {
            Some(found) => found,
            None => {
                let Some((first, run)) = self.view.with(|s| s.run_at(topic, offset))? else {
                    return Ok(None);
                };
                if offset >= first + run.2 as u64 {
                    return Ok(None);
                }
                self.run = Some((topic.to_string(), first, run));
                (first, run)
            }
        };
        if self.entry.as_ref().map(|e| e.log_id.index) != Some(run.0) {
            self.entry = Some(self.entries.entry(run.0)?);
        }
        let entry = self.entry.as_ref().expect("read above");
        let event = match &entry.payload {
            EntryPayload::Normal(cmd) => {
                nth_event(&cmd.requests[..], run.1 as usize, topic, offset - first)
            }
            _ => None,
        };
        let Some(event) = event else {
            return Err(StoreError::corrupt(
                "event_runs",
                format!("({topic}, {first})"),
                format!(
                    "it points at request {} of entry {}, which holds no event {} of {topic}",
                    run.1,
                    run.0,
                    offset - first
                ),
            ));
        };
        Ok(Some(f(&run, event)))
    }
}

/// The `nth` event appended to `topic` by the requests of an entry from `position` on: a
/// run's events (`apply::OpenRun`). Every append to `topic` in a run appended all its events;
/// requests to other topics sit between them and are skipped.
fn nth_event<'e>(
    requests: &'e [Request],
    position: usize,
    topic: &str,
    mut nth: u64,
) -> Option<&'e NewEvent> {
    for request in requests.get(position..)? {
        let Request::Append(a) = request else {
            continue;
        };
        if a.topic != topic {
            continue;
        }
        let len = a.events.len() as u64;
        if nth < len {
            return a.events.get(nth as usize);
        }
        nth -= len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::value::RawValue;

    /// What apply stored before events were read from the log (serde over `RawValue`): the
    /// archive and old backups hold these bytes, so the hand-written rendering must match.
    #[derive(Serialize)]
    struct StoredEvent<'a> {
        topic: &'a str,
        offset: u64,
        log_index: u64,
        timestamp: u64,
        #[serde(rename = "type")]
        event_type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'a str>,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a RawValue>,
    }

    fn reference(topic: &str, offset: u64, index: u64, time: u64, e: &NewEvent) -> String {
        serde_json::to_string(&StoredEvent {
            topic,
            offset,
            log_index: index,
            timestamp: time,
            event_type: &e.event_type,
            stream: e.stream.as_deref(),
            data: serde_json::from_str(&e.data).unwrap(),
            metadata: e
                .metadata
                .as_deref()
                .map(|m| serde_json::from_str(m).unwrap()),
        })
        .unwrap()
    }

    #[test]
    fn rendering_matches_what_apply_used_to_store() {
        let cases = [
            ("users", None, " {\"email\":\"a@x\"}\n", None),
            (
                "t\"q\\uote",
                Some("s/1\u{7f}\u{1}"),
                "{}",
                Some("\t{\"k\":[1,2.5,\"\\u0000\"]} "),
            ),
            ("ünï", Some(""), "{\"nested\":{\"a\":{}}}", Some("{}")),
        ];
        for (i, (topic, stream, data, metadata)) in cases.into_iter().enumerate() {
            let e = NewEvent {
                event_type: format!("Type\"{i}\n"),
                stream: stream.map(str::to_string),
                data: data.into(),
                metadata: metadata.map(str::to_string),
                claims: Vec::new(),
                secret: None,
            };
            let got = render(topic, i as u64, 7 + i as u64, u64::MAX - i as u64, &e);
            assert_eq!(
                got,
                reference(topic, i as u64, 7 + i as u64, u64::MAX - i as u64, &e)
            );
            // What clients read it as: the contract's event, field for field (nothing it does
            // not hold, nothing it holds otherwise).
            let event: api::wire::Event = serde_json::from_str(&got).unwrap();
            let written: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(serde_json::to_value(&event).unwrap(), written);
        }
    }
}
