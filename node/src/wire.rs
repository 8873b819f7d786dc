//! The checks of what clients send, and its conversion to the internal command types
//! (`raft-store`'s): the shapes themselves are the contract's (`api::wire`).

use std::collections::BTreeMap;

use api::error::ApiError;
pub use api::wire::*;
use raft_store::{AppendRequest, IdempotencyKey, NewEvent, RulesState};
use serde_json::{json, Value};

use crate::claims::{claims_for, KeyError};
use crate::limits::Limits;

/// Topic names: what fits in a URL path segment and a file name without escaping.
pub fn validate_topic(topic: &str, limits: &Limits) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > limits.name_bytes_max || !topic.chars().all(ok_char) {
        return Err(ApiError::bad_request(format!(
            "topic names are 1 to {} characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            limits.name_bytes_max
        )));
    }
    Ok(())
}

fn check_name(fields: &mut BTreeMap<String, String>, key: String, value: &str, limits: &Limits) {
    if value.trim().is_empty() {
        fields.insert(key, "must not be blank".into());
    } else if value.len() > limits.name_bytes_max {
        fields.insert(
            key,
            format!("must be at most {} bytes", limits.name_bytes_max),
        );
    } else if value.chars().any(char::is_control) {
        fields.insert(key, "must not contain control characters".into());
    }
}

/// Check an append's names, sizes and counts against the limits; all field errors at once.
pub fn check_append(body: &AppendBody, topic: &str, limits: &Limits) -> Result<(), ApiError> {
    validate_topic(topic, limits)?;
    let mut fields = BTreeMap::new();
    if body.events.is_empty() {
        fields.insert("events".into(), "must contain at least one event".into());
    }
    if body.events.len() > limits.events_per_append_max {
        fields.insert(
            "events".into(),
            format!("at most {} events per append", limits.events_per_append_max),
        );
    }
    for (i, e) in body.events.iter().enumerate() {
        check_name(
            &mut fields,
            format!("events[{i}].type"),
            &e.event_type,
            limits,
        );
        if let Some(s) = &e.stream {
            check_name(&mut fields, format!("events[{i}].stream"), s, limits);
        }
        // Whether the JSON is unambiguous (no duplicate keys, representable numbers) was
        // checked on the whole body before it was decoded (`extract::JsonBody`).
        let objects = std::iter::once(("data", Some(&e.data)))
            .chain(std::iter::once(("metadata", e.metadata.as_ref())));
        for (name, raw) in objects {
            let Some(raw) = raw else { continue };
            if !raw.get().starts_with('{') {
                fields.insert(
                    format!("events[{i}].{name}"),
                    "must be a JSON object".into(),
                );
            }
        }
        let size = e.event_type.len()
            + e.stream.as_ref().map_or(0, String::len)
            + e.data.get().len()
            + e.metadata.as_ref().map_or(0, |m| m.get().len());
        if size > limits.event_bytes_max {
            fields.insert(
                format!("events[{i}]"),
                format!(
                    "event is {size} bytes, at most {} allowed",
                    limits.event_bytes_max
                ),
            );
        }
    }
    for stream in body.expected_version.keys() {
        check_name(
            &mut fields,
            format!("expected_version.{stream}"),
            stream,
            limits,
        );
    }
    if let Some(k) = &body.idempotency_key {
        check_name(&mut fields, "idempotency_key".into(), k, limits);
    }
    if !fields.is_empty() {
        return Err(ApiError::Validation { fields });
    }
    Ok(())
}

/// A digest of what the client asked for, so a reused idempotency key with a different
/// request is recognised. JSON objects are canonical (sorted keys), so formatting and
/// key order do not matter.
pub fn append_fingerprint(body: &AppendBody, topic: &str) -> String {
    let events: Vec<Value> = body
        .events
        .iter()
        .map(|e| {
            json!({
                "type": e.event_type,
                "stream": e.stream,
                "data": serde_json::from_str::<Value>(e.data.get()).unwrap_or(Value::Null),
                "metadata": e.metadata.as_ref().map(|m| serde_json::from_str::<Value>(m.get()).unwrap_or(Value::Null)),
            })
        })
        .collect();
    fingerprint(
        &json!({ "topic": topic, "events": events, "expected_version": body.expected_version }),
    )
}

/// The internal request under `rules`: uniq keys extracted and normalized here, on the
/// receiving node. Missing or invalid keys are field errors.
pub fn to_request(
    body: &AppendBody,
    topic: &str,
    rules: &RulesState,
    idempotency: Option<IdempotencyKey>,
) -> Result<AppendRequest, ApiError> {
    let mut fields = BTreeMap::new();
    let mut events = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.iter().enumerate() {
        let mut claims = Vec::new();
        if rules.rules.rules_for(topic, &e.event_type).next().is_some() {
            match claims_for(
                &rules.rules,
                topic,
                &e.event_type,
                &*e.data,
                &format!("events[{i}].data"),
            ) {
                Ok(c) => claims = c,
                Err(KeyError { field, message }) => {
                    fields.insert(field, message);
                }
            }
            if e.stream.is_none() {
                fields.insert(
                    format!("events[{i}].stream"),
                    "is required: this event type is under a uniq rule and the stream owns the key"
                        .into(),
                );
            }
        }
        events.push(NewEvent {
            event_type: e.event_type.clone(),
            stream: e.stream.clone(),
            data: e.data.get().to_string(),
            metadata: e.metadata.as_ref().map(|m| m.get().to_string()),
            claims,
            secret: None,
        });
    }
    if !fields.is_empty() {
        return Err(ApiError::Validation { fields });
    }
    Ok(AppendRequest {
        topic: topic.to_string(),
        events,
        expected_version: body
            .expected_version
            .iter()
            .map(|(stream, v)| (stream.clone(), log_version(*v)))
            .collect(),
        idempotency,
        rules_version: rules.version,
        reply: None,
    })
}

/// Hex SHA-256 of a JSON value's canonical text.
pub fn fingerprint(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(
        serde_json::to_string(v)
            .expect("JSON values serialize")
            .as_bytes(),
    );
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The idempotency key of a request: the `Idempotency-Key` header or the body field (they
/// must agree when both are given).
pub fn idempotency_key(
    header: Option<&str>,
    field: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match (header, field) {
        (Some(h), Some(f)) if h != f => Err(ApiError::bad_request(
            "the Idempotency-Key header and the idempotency_key field differ",
        )),
        (Some(k), _) | (None, Some(k)) => {
            if k.is_empty() || k.len() > 255 || k.chars().any(char::is_control) {
                return Err(ApiError::bad_request(
                    "an idempotency key is 1 to 255 bytes without control characters",
                ));
            }
            Ok(Some(k.to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// A stream's expected version as the log encodes it.
fn log_version(v: ExpectedVersion) -> raft_store::ExpectedVersion {
    match v {
        ExpectedVersion::Any => raft_store::ExpectedVersion::Any,
        ExpectedVersion::NoStream => raft_store::ExpectedVersion::NoStream,
        ExpectedVersion::Exact(n) => raft_store::ExpectedVersion::Exact(n),
    }
}
