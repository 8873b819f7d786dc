//! `uniqlog mail-sink`: a local stand-in for an email provider. It speaks the webhook
//! protocol (`POST /send {to, subject, text}` with `Idempotency-Key`), records one message
//! per key and counts duplicates, and fails on command so the mail consumer can be tested
//! against outages, flakiness, slowness and rejected recipients.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::extract::JsonBody;
use api::runtime::now_ms;
use api::ApiError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The faults in force. Also the body of `POST /control`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of requests answered 500, from 0 to 1.
    pub fail_rate: f64,
    /// Delay before answering (after recording), to answer slower than a client's timeout.
    pub delay_ms: u64,
    /// Answer 503 to everything for this long from now.
    pub down_for_ms: u64,
    /// Recipients answered 422 `invalid_recipient`.
    pub reject: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub idempotency_key: String,
    pub received_at: u64,
}

#[derive(Default)]
struct Sink {
    faults: Faults,
    down_until_ms: u64,
    messages: BTreeMap<String, Message>,
    order: Vec<String>,
    duplicates: u64,
    requests: u64,
    /// Each duplicate's key, with how many requests had arrived before it.
    resent: Vec<(u64, String)>,
}

#[derive(Clone, Default)]
pub struct MailSink {
    inner: Arc<Mutex<Sink>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to: String,
    subject: String,
    text: String,
}

/// Bodies the sink accepts: a message is small.
const SINK_BODY_BYTES_MAX: usize = 1024 * 1024;

impl api::extract::BodyLimit for MailSink {
    fn body_bytes_max(&self) -> usize {
        SINK_BODY_BYTES_MAX
    }
}

impl MailSink {
    pub fn new(faults: Faults) -> Self {
        let sink = MailSink::default();
        sink.set_faults(faults);
        sink
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.inner.lock().expect("sink lock");
        s.down_until_ms = if faults.down_for_ms > 0 {
            now_ms() + faults.down_for_ms
        } else {
            0
        };
        s.faults = faults;
    }

    /// The messages recorded, in arrival order, and the duplicates counted: what
    /// `GET /messages` answers, for a caller that holds the sink itself (the simulator).
    pub fn recorded(&self) -> (Vec<Message>, u64) {
        let s = self.inner.lock().expect("sink lock");
        let messages = s
            .order
            .iter()
            .filter_map(|k| s.messages.get(k).cloned())
            .collect();
        (messages, s.duplicates)
    }

    /// Requests received so far (whatever their answer): a mark in the arrival order.
    pub fn requests(&self) -> u64 {
        self.inner.lock().expect("sink lock").requests
    }

    /// Every duplicate accepted, in arrival order: its key and the number of requests that
    /// arrived before it (comparable with [`MailSink::requests`] taken earlier).
    pub fn resent(&self) -> Vec<(u64, String)> {
        self.inner.lock().expect("sink lock").resent.clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/send", post(send))
            .route("/messages", get(messages))
            .route("/control", post(control))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(self.clone())
    }
}

/// What the provider decided before the delay.
enum Verdict {
    Down,
    Fail,
    Reject,
    Accept,
}

async fn send(
    State(sink): State<MailSink>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SendBody>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(key) = key else {
        return ApiError::bad_request("an Idempotency-Key header is required").into_response();
    };
    let (verdict, delay) = {
        let mut s = sink.inner.lock().expect("sink lock");
        s.requests += 1;
        let verdict = if now_ms() < s.down_until_ms {
            Verdict::Down
        } else if s
            .faults
            .reject
            .iter()
            .any(|r| r.eq_ignore_ascii_case(body.to.trim()))
        {
            Verdict::Reject
        } else if s.faults.fail_rate > 0.0
            && api::runtime::rng().gen_bool(s.faults.fail_rate.clamp(0.0, 1.0))
        {
            Verdict::Fail
        } else {
            // Recorded now, answered after the delay: a slow provider still delivers.
            if s.messages.contains_key(&key) {
                s.duplicates += 1;
                let before = s.requests - 1;
                s.resent.push((before, key.clone()));
            } else {
                s.order.push(key.clone());
                let m = Message {
                    to: body.to,
                    subject: body.subject,
                    text: body.text,
                    idempotency_key: key.clone(),
                    received_at: now_ms(),
                };
                s.messages.insert(key.clone(), m);
            }
            Verdict::Accept
        };
        (verdict, s.faults.delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match verdict {
        Verdict::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "down"})),
        )
            .into_response(),
        Verdict::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "injected failure"})),
        )
            .into_response(),
        Verdict::Reject => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "invalid_recipient"})),
        )
            .into_response(),
        Verdict::Accept => (StatusCode::ACCEPTED, Json(json!({"id": key}))).into_response(),
    }
}

/// `GET /messages?count=N&wait_ms=T`: with both, waits (at most T ms, at most 30 s) until N
/// messages arrived, so a script can ask for the email it just caused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesParams {
    count: Option<usize>,
    #[serde(default)]
    wait_ms: u64,
}

async fn messages(
    State(sink): State<MailSink>,
    api::extract::QueryParams(params): api::extract::QueryParams<MessagesParams>,
) -> Response {
    if let Some(count) = params.count {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(params.wait_ms.min(30_000));
        while sink.inner.lock().expect("sink lock").order.len() < count
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let s = sink.inner.lock().expect("sink lock");
    let messages: Vec<&Message> = s.order.iter().filter_map(|k| s.messages.get(k)).collect();
    Json(json!({"messages": messages, "duplicates": s.duplicates, "requests": s.requests}))
        .into_response()
}

async fn control(
    State(sink): State<MailSink>,
    JsonBody(faults): JsonBody<Faults>,
) -> Result<Response, ApiError> {
    if !(0.0..=1.0).contains(&faults.fail_rate) {
        return Err(ApiError::bad_request("fail_rate is between 0 and 1"));
    }
    let unique: BTreeSet<&String> = faults.reject.iter().collect();
    let n = unique.len();
    sink.set_faults(faults);
    Ok(Json(json!({"ok": true, "rejected_addresses": n})).into_response())
}
