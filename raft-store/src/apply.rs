//! The business decision of the state machine: one request in, one [`Outcome`] out.
//!
//! Pure and deterministic: the inputs are the replicated tables, the entry's log index and the
//! log time; no clock, randomness, environment or local config is read here. A request is
//! decided as a whole before anything is written, so a conflict or rejection leaves nothing
//! behind.

use std::collections::BTreeMap;

use redb::{ReadableTable, Table, WriteTransaction};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::StoreError;
use crate::tables::{EVENTS, STREAMS, STREAM_INDEX, TOPICS};
use crate::types::{AppendRequest, Conflict, NewEvent, Outcome, Rejection, Request};

/// The state machine's data tables, opened once per apply batch.
pub(crate) struct DataTables<'txn> {
    topics: Table<'txn, &'static str, u64>,
    events: Table<'txn, (&'static str, u64), &'static str>,
    streams: Table<'txn, &'static str, (&'static str, u64)>,
    stream_index: Table<'txn, (&'static str, u64), u64>,
}

impl<'txn> DataTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(DataTables {
            topics: txn.open_table(TOPICS)?,
            events: txn.open_table(EVENTS)?,
            streams: txn.open_table(STREAMS)?,
            stream_index: txn.open_table(STREAM_INDEX)?,
        })
    }
}

/// Where an entry sits in the log, for the fields the node adds to each event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryContext {
    pub log_index: u64,
    pub log_time_ms: u64,
}

pub(crate) fn apply_request(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &Request,
) -> Result<Outcome, StoreError> {
    match req {
        Request::Append(a) => apply_append(t, ctx, a),
    }
}

/// The event as readers see it. Serialized once, at apply, and served verbatim afterwards.
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

fn json_object<'a>(text: &'a str, what: &str) -> Result<&'a RawValue, String> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err(format!("{what} must be a JSON object"));
    }
    Ok(raw)
}

fn check_events(events: &[NewEvent]) -> Result<(), Rejection> {
    if events.is_empty() {
        return Err(Rejection::InvalidEvent {
            index: 0,
            reason: "an append needs at least one event".into(),
        });
    }
    for (index, e) in events.iter().enumerate() {
        let invalid = |reason| Rejection::InvalidEvent { index, reason };
        json_object(&e.data, "data").map_err(invalid)?;
        if let Some(m) = &e.metadata {
            json_object(m, "metadata").map_err(invalid)?;
        }
    }
    Ok(())
}

fn apply_append(
    t: &mut DataTables<'_>,
    ctx: EntryContext,
    req: &AppendRequest,
) -> Result<Outcome, StoreError> {
    if let Err(r) = check_events(&req.events) {
        return Ok(Outcome::Rejected(r));
    }

    // Current version of every stream the request names; a stream of another topic is a 400.
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    let named = req
        .expected_version
        .keys()
        .map(String::as_str)
        .chain(req.events.iter().filter_map(|e| e.stream.as_deref()));
    for stream in named {
        if versions.contains_key(stream) {
            continue;
        }
        let version = match t.streams.get(stream)? {
            None => 0,
            Some(g) => {
                let (topic, version) = g.value();
                if topic != req.topic {
                    return Ok(Outcome::Rejected(Rejection::StreamInOtherTopic {
                        stream: stream.to_string(),
                        topic: topic.to_string(),
                    }));
                }
                version
            }
        };
        versions.insert(stream, version);
    }

    for (stream, expected) in &req.expected_version {
        let actual = versions[stream.as_str()];
        if !expected.matches(actual) {
            return Ok(Outcome::Conflict(Conflict::Version {
                stream: stream.clone(),
                expected: *expected,
                actual,
            }));
        }
    }

    // Every check passed: write.
    let first = t.topics.get(req.topic.as_str())?.map_or(0, |g| g.value());
    let mut touched: std::collections::BTreeSet<&str> = Default::default();
    for (i, e) in req.events.iter().enumerate() {
        let offset = first + i as u64;
        let event = StoredEvent {
            topic: &req.topic,
            offset,
            log_index: ctx.log_index,
            timestamp: ctx.log_time_ms,
            event_type: &e.event_type,
            stream: e.stream.as_deref(),
            data: json_object(&e.data, "data").expect("checked above"),
            metadata: e
                .metadata
                .as_deref()
                .map(|m| json_object(m, "metadata").expect("checked above")),
        };
        let json = serde_json::to_string(&event).expect("events serialize");
        t.events
            .insert((req.topic.as_str(), offset), json.as_str())?;
        if let Some(stream) = e.stream.as_deref() {
            let v = versions.get_mut(stream).expect("collected above");
            *v += 1;
            t.stream_index.insert((stream, *v), offset)?;
            touched.insert(stream);
        }
    }
    // Only streams that received events are recorded: naming a stream in expected_version
    // alone does not claim it for this topic.
    for stream in touched {
        t.streams
            .insert(stream, (req.topic.as_str(), versions[stream]))?;
    }
    let next = first + req.events.len() as u64;
    t.topics.insert(req.topic.as_str(), next)?;
    Ok(Outcome::Appended {
        first_offset: first,
        last_offset: next.saturating_sub(1),
        log_index: ctx.log_index,
    })
}
