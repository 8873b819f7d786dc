//! The binary encoding of what the Raft log holds (entries, the commit marker): postcard, a
//! compact serde format (varints, no field names). Decoding it costs a fraction of JSON's,
//! and an entry is decoded on every node.
//!
//! postcard does not describe itself, so the types it encodes use serde's externally tagged
//! enums (the default), never internally tagged or untagged ones, and types with a JSON
//! spelling of their own (`ExpectedVersion`) choose a binary one when the format is not
//! human-readable.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Append the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken).expect("log types encode");
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Decode all of `bytes` as a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the value", rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};

    use super::*;
    use crate::rules::{Rules, UniqOp};
    use crate::types::*;

    fn append(expected: ExpectedVersion) -> Request {
        Request::Append(AppendRequest {
            topic: "users".into(),
            events: vec![NewEvent {
                event_type: "AccountCreated".into(),
                stream: Some("user-1".into()),
                data: r#"{"email":"a@x.io"}"#.into(),
                metadata: None,
                claims: vec![UniqClaim {
                    set: "user_email".into(),
                    op: UniqOp::Create,
                    key: "a@x.io".into(),
                    old_key: None,
                }],
                secret: Some(r#"{"password_hash":"$argon2id$..."}"#.into()),
            }],
            expected_version: BTreeMap::from([("user-1".to_string(), expected)]),
            idempotency: Some(IdempotencyKey {
                key: "k".into(),
                fingerprint: "f".into(),
            }),
            rules_version: 3,
            reply: Some("id".into()),
        })
    }

    #[test]
    fn every_kind_of_entry_round_trips_and_is_smaller_than_json() {
        let log_id = LogId::new(CommittedLeaderId::new(7, 2), 41);
        let entries: Vec<Entry<TypeConfig>> = vec![
            Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id,
                payload: EntryPayload::Normal(LogCommand {
                    timestamp_ms: 1_764_331_200_000,
                    requests: vec![
                        append(ExpectedVersion::Any),
                        append(ExpectedVersion::NoStream),
                        append(ExpectedVersion::Exact(5)),
                        Request::SetRules(SetRules {
                            base_version: 1,
                            rules: Rules::default(),
                            backfill: vec![],
                        }),
                    ]
                    .into(),
                }),
            },
            Entry {
                log_id,
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3])],
                    BTreeMap::from([(4, Node::new("127.0.0.1:7004"))]),
                )),
            },
        ];
        for e in &entries {
            let bytes = encode(e);
            let back: Entry<TypeConfig> = decode(&bytes).unwrap();
            assert_eq!(&back, e);
            assert!(bytes.len() < serde_json::to_vec(e).unwrap().len());
            assert!(decode::<Entry<TypeConfig>>(&bytes[..bytes.len() - 1]).is_err());
        }
        // The requests are shared (`Arc<[Request]>`) but encoded as the plain sequence they
        // were before: logs written either way read the same.
        let requests = vec![append(ExpectedVersion::Any)];
        let shared: std::sync::Arc<[Request]> = requests.clone().into();
        assert_eq!(encode(&shared), encode(&requests));
        let committed: Option<LogId<NodeId>> = Some(log_id);
        assert_eq!(
            decode::<Option<LogId<NodeId>>>(&encode(&committed)).unwrap(),
            committed
        );
    }
}
