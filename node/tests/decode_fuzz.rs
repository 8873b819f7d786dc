//! Property tests of request decoding on the receiving node: whatever bytes a client sends,
//! decoding, validation and preparation never panic, refuse with a 4xx (never a 5xx), and what
//! they accept keeps the limits. Email keys, which decide uniqueness, normalize to a fixed
//! point: normalizing a key again gives the same key.
#![cfg(not(madsim))]

use api::error::ApiError;
use api::extract::parse_json;
use axum::body::Bytes;
use proptest::prelude::*;
use raft_store::rules::Rules;
use raft_store::RulesState;
use uniqlog_node::limits::Limits;
use uniqlog_node::users::validate::check_email;
use uniqlog_node::wire::{append_fingerprint, check_append, to_request, AppendBody};

fn rules() -> RulesState {
    // The reference application's rules, as the integration tests use them.
    let rules: Rules = toml::from_str(include_str!("common/user_email_rules.toml")).unwrap();
    RulesState { version: 1, rules }
}

const VALID: &str = r#"{"events":[{"type":"AccountCreated","stream":"user-1","data":{"email":"Ann@Example.com","n":[1,2.5,{"x":null}]},"metadata":{"m":true}},{"type":"EmailChanged","stream":"user-1","data":{"old_email":"ann@example.com","new_email":"b@b.io"}}],"expected_version":{"user-1":0},"idempotency_key":"k1"}"#;

/// Bytes near a valid body: a few random edits (insert, delete, replace) of it.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0usize..VALID.len(), 0u8..3, any::<u8>()), 1..6).prop_map(|edits| {
        let mut b = VALID.as_bytes().to_vec();
        for (at, kind, byte) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match kind {
                0 => b.insert(at, byte),
                1 if !b.is_empty() => {
                    b.remove(at);
                }
                _ if !b.is_empty() => b[at] = byte,
                _ => {}
            }
        }
        b
    })
}

fn refusal_is_a_client_error(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.status().is_client_error(),
        "{:?} answered {}",
        e,
        e.status()
    );
    Ok(())
}

fn decode(bytes: Vec<u8>, topic: &str) -> Result<(), TestCaseError> {
    let limits = Limits {
        events_per_append_max: 2,
        event_bytes_max: 200,
        ..Limits::default()
    };
    let body = match parse_json::<AppendBody>(&Bytes::from(bytes)) {
        Ok(b) => b,
        Err(e) => return refusal_is_a_client_error(&e),
    };
    if let Err(e) = check_append(&body, topic, &limits) {
        return refusal_is_a_client_error(&e);
    }
    prop_assert!(!body.events.is_empty() && body.events.len() <= limits.events_per_append_max);
    for e in &body.events {
        prop_assert!(e.event_type.len() <= limits.name_bytes_max);
        prop_assert!(e.data.get().starts_with('{'), "data is an object");
    }
    let _ = append_fingerprint(&body, topic);
    match to_request(&body, topic, &rules(), None) {
        Ok(req) => {
            prop_assert_eq!(req.events.len(), body.events.len());
            for ev in &req.events {
                for claim in &ev.claims {
                    // A claimed key is already normalized: normalizing again changes nothing.
                    prop_assert_eq!(api::keys::email(&claim.key), Ok(claim.key.clone()));
                }
            }
            Ok(())
        }
        Err(e) => refusal_is_a_client_error(&e),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_with_a_4xx_or_decoded_within_limits(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        topic in prop_oneof![Just("users".to_string()), "[a-z.]{0,4}", any::<String>()],
    ) {
        decode(bytes, &topic)?;
    }

    #[test]
    fn near_valid_bodies_are_refused_with_a_4xx_or_decoded_within_limits(bytes in mutated()) {
        decode(bytes, "users")?;
    }

    #[test]
    fn email_keys_are_a_fixed_point_of_normalization(
        raw in prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9._%+-]{1,8}@[a-zA-Z0-9-]{1,8}\\.[a-zA-Z]{2,4}",
            "\\PC{1,6}@\\PC{1,6}\\.[a-z]{2}",
        ],
    ) {
        if let Ok(email) = check_email(&raw) {
            let key = api::keys::email(&email);
            prop_assert!(key.is_ok(), "{:?} passed check_email but not normalization", email);
            let key = key.unwrap();
            prop_assert_eq!(api::keys::email(&key), Ok(key.clone()), "{:?}", email);
        }
    }
}
