//! Entries and appends built by hand, for the unit tests that drive apply through the log.

use std::collections::BTreeMap;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use crate::types::{AppendRequest, ExpectedVersion, LogCommand, NewEvent, Request, TypeConfig};

/// A normal entry at `index` (term 1) carrying `requests`.
pub(crate) fn entry(index: u64, requests: Vec<Request>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: 1,
            requests: requests.into(),
        }),
    }
}

/// An append to `topic` of one event per type in `types`, all in `stream`, with `expected` as
/// the stream's expected version if given.
pub(crate) fn append(
    topic: &str,
    stream: &str,
    types: &[String],
    expected: Option<ExpectedVersion>,
) -> Request {
    Request::Append(AppendRequest {
        topic: topic.into(),
        events: types
            .iter()
            .map(|t| NewEvent {
                event_type: t.clone(),
                stream: Some(stream.into()),
                data: "{}".into(),
                metadata: None,
                claims: Vec::new(),
                secret: None,
            })
            .collect(),
        expected_version: expected
            .map(|v| (stream.to_string(), v))
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        idempotency: None,
        rules_version: 0,
        reply: None,
    })
}
