//! Uniq look-ups and the rules endpoint.

use crate::claims::{claims_for, normalize_key};
use crate::errors::IntoApiError;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use raft_store::rules::{Rules, UniqSet};
use raft_store::{
    Backfill, BackfillClaim, Outcome, Rejection, Request, RulesState, SetRules, StateReader,
    StoreError,
};
use serde_json::Value;

use crate::app::SharedApp;
use crate::auth::Caller;
use api::error::ApiError;
use api::extract::{JsonBody, PathParams};
use api::uniq::{Claim, History, Owner, RulesVersion, SetSize, Sets};

/// Normalize `key` as its set says (like writes), then read with it from the state. The set's
/// owners are streams of its topic: a caller must be allowed to read that topic.
async fn read_key<T: Send + 'static>(
    app: &SharedApp,
    caller: &Caller,
    set: &str,
    key: &str,
    read: impl FnOnce(&StateReader, &str, &str) -> Result<T, StoreError> + Send + 'static,
) -> Result<(String, T), ApiError> {
    let rules = app.rules().await?;
    let def = rules
        .rules
        .set(set)
        .ok_or_else(|| ApiError::not_found(format!("no uniq set named {set:?}")))?;
    caller.check_read(&def.topic)?;
    let key =
        normalize_key(def.normalize, key).map_err(|m| ApiError::bad_request(format!("key {m}")))?;
    let reader = app.reader.clone();
    let (s, k) = (set.to_string(), key.clone());
    let value = raft_store::blocking(move || read(&reader, &s, &k))
        .await
        .map_err(crate::errors::api_error)?;
    Ok((key, value))
}

/// How long a count of owned keys is reused: counting reads every owned key.
const COUNTS_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// The last count of owned keys per uniq set, and when it was taken.
pub struct UniqCounts {
    pub at: tokio::time::Instant,
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// `GET /v1/uniq`: the sets of the rules in force, each with how many keys are owned. The
/// count is a full pass over the owned keys: one runs at a time, and its result serves every
/// caller for [`COUNTS_FRESH`] (`counted_at` says when it was taken).
pub async fn sets(
    State(app): State<SharedApp>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let rules = app.rules_shared().await?;
    let mut cache = app.runtime.uniq_counts.lock().await;
    let (at, counts) = match &*cache {
        Some(c) if c.at.elapsed() < COUNTS_FRESH => (c.at, c.counts.clone()),
        _ => {
            let reader = app.reader.clone();
            let counts = raft_store::blocking(move || reader.uniq_key_counts())
                .await
                .map_err(crate::errors::api_error)?;
            let at = tokio::time::Instant::now();
            *cache = Some(UniqCounts {
                at,
                counts: counts.clone(),
            });
            (at, counts)
        }
    };
    drop(cache);
    let counted_at = api::runtime::now_ms().saturating_sub(at.elapsed().as_millis() as u64);
    let sets: Vec<_> = rules
        .rules
        .uniq
        .iter()
        .filter(|s| caller.may_read(&s.topic))
        .map(|s| SetSize {
            keys: counts.get(&s.name).copied().unwrap_or(0),
            name: s.name.clone(),
            normalize: serde_json::to_value(s.normalize)
                .ok()
                .and_then(|n| n.as_str().map(str::to_string))
                .unwrap_or_default(),
            topic: s.topic.clone(),
        })
        .collect();
    Ok(Json(Sets {
        counted_at,
        sets,
        version: rules.version,
    })
    .into_response())
}

/// `GET /v1/uniq/{set}/{key}`.
pub async fn owner(
    State(app): State<SharedApp>,
    Extension(caller): Extension<Caller>,
    PathParams((set, key)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let (key, owner) = read_key(&app, &caller, &set, &key, |r, s, k| r.uniq_owner(s, k)).await?;
    let (owner, since) = owner
        .ok_or_else(|| ApiError::not_found(format!("key {key:?} of uniq set {set} is free")))?;
    Ok(Json(Owner {
        key,
        owner,
        set,
        since_offset: since,
    })
    .into_response())
}

/// `GET /v1/uniq/{set}/{key}/history`: owners over time, oldest first.
pub async fn history(
    State(app): State<SharedApp>,
    Extension(caller): Extension<Caller>,
    PathParams((set, key)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let (key, rows) = read_key(&app, &caller, &set, &key, |r, s, k| r.uniq_history(s, k)).await?;
    let history = rows
        .into_iter()
        .map(|(owner, claimed_offset, released_offset)| Claim {
            claimed_offset,
            owner,
            released_offset,
        })
        .collect();
    Ok(Json(History { history, key, set }).into_response())
}

/// The claims of `set` for every event already in its topic, read from this node's state.
async fn backfill(app: &SharedApp, set: &UniqSet) -> Result<Backfill, ApiError> {
    let only = Rules {
        uniq: vec![set.clone()],
        ..Rules::default()
    };
    let mut claims = Vec::new();
    let mut from = 0;
    loop {
        let reader = app.reader.clone();
        let topic = set.topic.clone();
        let page = raft_store::blocking(move || reader.read_topic(&topic, from, 1000))
            .await
            .map_err(crate::errors::api_error)?;
        if page.events.is_empty() {
            break;
        }
        for text in &page.events {
            let e: Value = serde_json::from_str(text).map_err(ApiError::internal)?;
            let offset = e["offset"].as_u64().unwrap_or(from);
            let event_type = e["type"].as_str().unwrap_or_default();
            let violated = |why: String| ApiError::RulesViolated {
                set: set.name.clone(),
                key: format!("(event at offset {offset}: {why})"),
            };
            let found = claims_for(&only, &set.topic, event_type, &e["data"], "data")
                .map_err(|err| violated(err.to_string()))?;
            if found.is_empty() {
                continue;
            }
            let stream = e["stream"]
                .as_str()
                .ok_or_else(|| violated("it has no stream to own the key".into()))?;
            claims.extend(found.into_iter().map(|claim| BackfillClaim {
                offset,
                stream: stream.to_string(),
                claim,
            }));
        }
        from = page.next_offset;
    }
    Ok(Backfill {
        set: set.name.clone(),
        topic_len: from,
        claims,
    })
}

/// Propose `rules` as the next version. Sets that are new or changed are built from the
/// events already in their topics, in the same apply, or refused (409) if those violate them.
pub async fn propose_rules(app: &SharedApp, rules: Rules) -> Result<u64, ApiError> {
    rules
        .validate()
        .map_err(|m| ApiError::bad_request(format!("invalid rules: {m}")))?;
    for _ in 0..5 {
        // Our state must be at least as new as the leader's for the backfill to be current.
        app.linearize().await?;
        let RulesState {
            version,
            rules: current,
        } = app.rules().await?;
        // These rules are in force already (a retry, two nodes bootstrapping, two operators):
        // one more version would say nothing.
        if version > 0 && current == rules {
            return Ok(version);
        }
        let mut backfills = Vec::new();
        for set in &rules.uniq {
            if current.set(&set.name) != Some(set) {
                backfills.push(backfill(app, set).await?);
            }
        }
        let request = Request::SetRules(SetRules {
            base_version: version,
            rules: rules.clone(),
            backfill: backfills,
        });
        // One entry carries the whole backfill; it must fit a peer RPC, or replication of
        // everything after it would stall.
        let size = serde_json::to_vec(&request)
            .map_err(ApiError::internal)?
            .len();
        if size > api::link::PEER_BODY_BYTES_MAX / 2 {
            return Err(ApiError::bad_request(format!(
                "the backfill of these rules is {size} bytes, more than one log entry may carry; \
                 add the set before the topic grows this large"
            )));
        }
        let answer = app.write(request, app.request_timeout()).await?;
        match answer.outcome {
            Outcome::RulesSet { version } => return Ok(version),
            Outcome::Rejected(Rejection::RulesChanged { .. }) => continue,
            Outcome::Conflict(c) => return Err(c.into_api()),
            Outcome::Rejected(r) => return Err(r.into_api()),
            Outcome::Appended { .. } => {
                return Err(ApiError::internal(
                    "a rules change was answered as an append",
                ))
            }
        }
    }
    Err(ApiError::unavailable(
        "the topic kept changing while the rules were prepared; retry",
    ))
}

/// `POST /v1/cluster/uniq-rules` with `{"uniq": [...], "idempotency": {...}}`.
pub async fn set_rules(
    State(app): State<SharedApp>,
    JsonBody(rules): JsonBody<Rules>,
) -> Result<Response, ApiError> {
    let version = propose_rules(&app, rules).await?;
    Ok(Json(RulesVersion { version }).into_response())
}

/// `GET /v1/cluster/uniq-rules`: the rules in force and their version. The rules' fields are
/// spelled out, not flattened: `Rules` refuses unknown fields, and its schema says so.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RulesInForce {
    pub version: u64,
    pub uniq: Vec<raft_store::rules::UniqSet>,
    pub idempotency: raft_store::rules::IdempotencySettings,
}

/// `GET /v1/cluster/uniq-rules`: the rules in force on this node.
pub async fn get_rules(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    let state = app.rules().await?;
    Ok(Json(RulesInForce {
        version: state.version,
        uniq: state.rules.uniq,
        idempotency: state.rules.idempotency,
    })
    .into_response())
}
