//! The event log: append, read (with long-poll), server-sent events, streams, topics.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use raft_store::{Answer, IdempotencyKey, Outcome, Page};
use serde::Deserialize;
use tokio::time::Instant;

use crate::app::SharedApp;
use crate::auth::Caller;
use crate::errors::IntoApiError;
use crate::wire::{
    append_fingerprint, check_append, idempotency_key, to_request, validate_topic, AppendBody,
    AppendCreated, Topic, Topics,
};
use api::error::ApiError;
use api::extract::{IdempotencyKeyHeader, JsonBody, PathParams, QueryParams};

#[tracing::instrument(level = "debug", skip_all, fields(topic = %topic))]
pub async fn append(
    State(app): State<SharedApp>,
    PathParams(topic): PathParams<String>,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Response, ApiError> {
    check_append(&body, &topic, &app.settings.limits)?;
    let header = match &key {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
        })?),
    };
    let idempotency =
        idempotency_key(header, body.idempotency_key.as_deref())?.map(|key| IdempotencyKey {
            key,
            fingerprint: append_fingerprint(&body, &topic),
        });
    let answer = app
        .append(|rules| to_request(&body, &topic, rules, idempotency.clone()))
        .await?;
    answer_response(answer)
}

/// An append's answer as HTTP: 201 with the offsets, or the error its outcome stands for.
/// A replay of a stored answer says so in `Idempotent-Replayed`.
pub fn answer_response(answer: Answer) -> Result<Response, ApiError> {
    match answer.outcome {
        Outcome::Appended {
            first_offset,
            last_offset,
            log_index,
        } => {
            let mut resp = (
                StatusCode::CREATED,
                Json(AppendCreated {
                    first_offset,
                    last_offset,
                    log_index,
                }),
            )
                .into_response();
            if answer.replayed {
                resp.headers_mut().insert(
                    "idempotent-replayed",
                    header::HeaderValue::from_static("true"),
                );
            }
            Ok(resp)
        }
        Outcome::Conflict(c) => Err(c.into_api()),
        Outcome::Rejected(r) => Err(r.into_api()),
        Outcome::RulesSet { .. } => Err(ApiError::internal(
            "an append was answered as a rules change",
        )),
    }
}

/// The query of a page of a topic or a stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// First offset (topics) or stream position (streams) to return.
    #[serde(default)]
    #[param(required = false)]
    from: u64,
    /// Most events to return, at most `[limits] read_events_max`.
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// Long-poll: wait up to this long for an event at `from`, at most `wait_ms_max`.
    #[serde(default)]
    #[param(required = false)]
    wait_ms: u64,
    #[param(inline)]
    consistency: Option<Consistency>,
}

/// `local` reads this node's applied state; `linearizable` first confirms leadership and
/// waits until this node has applied everything committed before the read.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Local,
    Linearizable,
}

impl ReadParams {
    fn limit(&self, app: &SharedApp) -> Result<usize, ApiError> {
        let max = app.settings.limits.read_events_max;
        match self.limit {
            None => Ok(max.min(100)),
            Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
            Some(l) if l > max => Err(ApiError::OverLimit {
                param: "limit",
                max: max as u64,
            }),
            Some(l) => Ok(l),
        }
    }

    fn wait(&self, app: &SharedApp) -> Result<Duration, ApiError> {
        if self.wait_ms > app.settings.limits.wait_ms_max {
            return Err(ApiError::OverLimit {
                param: "wait_ms",
                max: app.settings.limits.wait_ms_max,
            });
        }
        Ok(Duration::from_millis(self.wait_ms))
    }

    async fn prepare(&self, app: &SharedApp) -> Result<(), ApiError> {
        if self.consistency == Some(Consistency::Linearizable) {
            app.linearize().await?;
        }
        Ok(())
    }
}

/// A read page as JSON, built from the stored event texts without re-encoding them.
fn page_response(page: Page) -> Response {
    let mut out =
        String::with_capacity(page.events.iter().map(|e| e.len() + 1).sum::<usize>() + 40);
    out.push_str("{\"events\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
    out.push_str("],\"next_offset\":");
    out.push_str(&page.next_offset.to_string());
    out.push_str(",\"head\":");
    out.push_str(&page.head.to_string());
    out.push('}');
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

async fn read_page(
    app: &SharedApp,
    topic: String,
    from: u64,
    limit: usize,
) -> Result<Page, ApiError> {
    let reader = app.reader.clone();
    let bytes_max = app.settings.limits.read_bytes_max;
    raft_store::blocking(move || reader.read_topic_within(&topic, from, limit, bytes_max))
        .await
        .map_err(crate::errors::api_error)
}

#[tracing::instrument(level = "debug", skip_all, fields(topic = %topic))]
pub async fn read(
    State(app): State<SharedApp>,
    PathParams(topic): PathParams<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    validate_topic(&topic, &app.settings.limits)?;
    let limit = params.limit(&app)?;
    // Fault point: a short page (as `read_bytes_max` makes one), which readers must follow
    // by `next_offset`, not take for the end of the topic.
    let limit = if api::runtime::buggify(0.1) {
        use rand::Rng;
        api::runtime::rng().gen_range(1..=limit)
    } else {
        limit
    };
    let wait = params.wait(&app)?;
    // A long-poll holds a place among the node's streams while it waits.
    let _slot = if wait.is_zero() {
        None
    } else {
        Some(app.stream_slot()?)
    };
    let deadline = Instant::now() + wait;
    // Planted bug (simulation builds only, `raft_store::planted`): a full page skips the read
    // index.
    #[cfg(madsim)]
    if params.consistency == Some(Consistency::Linearizable)
        && raft_store::planted::is(raft_store::planted::Bug::StaleFullPage)
    {
        let page = read_page(&app, topic.clone(), params.from, limit).await?;
        if page.events.len() == limit {
            return Ok(page_response(page));
        }
    }
    params.prepare(&app).await?;
    let mut applied = app.reader.applied_watch();
    loop {
        applied.borrow_and_update();
        let page = read_page(&app, topic.clone(), params.from, limit).await?;
        if !page.events.is_empty() || Instant::now() >= deadline {
            return Ok(page_response(page));
        }
        // Wake on the next apply, or answer the empty page when the wait runs out.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, applied.changed()).await {
            Ok(Ok(())) => {}
            Err(_) => return Ok(page_response(page)),
            // The state machine is gone (shutting down): no wake-up will ever come.
            Ok(Err(_)) => return Err(ApiError::unavailable("this node is shutting down")),
        }
    }
}

/// Server-sent-event frames of consecutive events from `from`. A stored event keeps the
/// client's formatting and may span lines: each line gets its own `data:` field. Lines end
/// where EventSource ends them, at `\r\n`, `\n` or a lone `\r`; splitting only on `\n`
/// would let a `\r` (JSON whitespace) end the field early and cut the event short.
fn sse_frames(from: u64, events: &[String]) -> String {
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        out.push_str(&format!("id: {}\n", from + i as u64));
        for line in e.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The query of the event stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// First offset; a reconnect's `Last-Event-ID` wins.
    from: Option<u64>,
    /// A token from `POST /v1/auth/stream-token` (EventSource cannot send headers); checked
    /// by the auth middleware.
    #[serde(rename = "access_token")]
    _access_token: Option<String>,
}

/// Server-sent events: one `id: <offset>` frame per event, keep-alive comments while idle.
/// A reconnecting client's `Last-Event-ID` wins over `from`.
pub async fn sse(
    State(app): State<SharedApp>,
    PathParams(topic): PathParams<String>,
    QueryParams(params): QueryParams<StreamParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_topic(&topic, &app.settings.limits)?;
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event offset"))?,
        ),
    };
    let from = last_id.map_or(params.from.unwrap_or(0), |id| id.saturating_add(1));
    let keepalive = Duration::from_millis(app.settings.limits.sse_keepalive_ms.max(1));
    let limit = app.settings.limits.read_events_max;
    // Held for as long as the stream lives: the stream is dropped with the connection.
    let slot = std::sync::Arc::new(app.stream_slot()?);
    let state = (app, topic, from, Instant::now());
    let stream = futures::stream::unfold(state, move |(app, topic, from, last_frame)| {
        let _slot = slot.clone();
        async move {
            let mut applied = app.reader.applied_watch();
            loop {
                applied.borrow_and_update();
                let page = match read_page(&app, topic.clone(), from, limit).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream read failed");
                        return None;
                    }
                };
                if !page.events.is_empty() {
                    let frame = Bytes::from(sse_frames(from, &page.events));
                    return Some((
                        Ok::<_, Infallible>(frame),
                        (app, topic, page.next_offset, Instant::now()),
                    ));
                }
                // Applies to other topics wake us too; the keep-alive is due by the last frame
                // written, whatever the wake-ups.
                let due = last_frame + keepalive;
                match tokio::time::timeout(
                    due.saturating_duration_since(Instant::now()),
                    applied.changed(),
                )
                .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        let frame = Bytes::from_static(b": keep-alive\n\n");
                        return Some((Ok(frame), (app, topic, from, Instant::now())));
                    }
                }
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One stream's events. A token with topics reads only streams of those topics (the path
/// names the stream, not its topic, so the check is here, not in the middleware).
pub async fn stream_events(
    State(app): State<SharedApp>,
    Extension(caller): Extension<Caller>,
    PathParams(stream): PathParams<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit(&app)?;
    params.wait(&app)?;
    params.prepare(&app).await?;
    let reader = app.reader.clone();
    let from = params.from;
    let bytes_max = app.settings.limits.read_bytes_max;
    let (topic, page) = raft_store::blocking(move || {
        let topic = reader.stream_topic(&stream)?;
        let page = reader.read_stream_within(&stream, from, limit, bytes_max)?;
        Ok::<_, raft_store::StoreError>((topic, page))
    })
    .await
    .map_err(crate::errors::api_error)?;
    if let Some(topic) = topic {
        caller.check_read(&topic)?;
    }
    Ok(page_response(page))
}

/// The topics with their lengths: those the caller may read.
pub async fn topics(
    State(app): State<SharedApp>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let reader = app.reader.clone();
    let topics = raft_store::blocking(move || reader.topics())
        .await
        .map_err(crate::errors::api_error)?;
    let topics: Vec<_> = topics
        .into_iter()
        .filter(|(name, _)| caller.may_read(name))
        .map(|(name, length)| Topic { name, length })
        .collect();
    Ok(Json(Topics { topics }).into_response())
}

#[cfg(test)]
mod tests {
    use super::{page_response, sse_frames};

    /// The page the node writes by hand is `api::wire::Page`, field for field.
    #[tokio::test]
    async fn a_page_written_by_hand_is_the_contracts_page() {
        use http_body_util::BodyExt;
        let event = |offset: u64, stream: Option<&str>, metadata: Option<&str>| {
            serde_json::json!({
                "topic": "t", "offset": offset, "log_index": 3, "timestamp": 17,
                "type": "Made", "stream": stream, "data": {"a": [1, "x"]},
                "metadata": metadata.map(|m| serde_json::json!({"m": m})),
            })
        };
        let mut events = Vec::new();
        for e in [event(0, Some("s-1"), Some("meta")), event(1, None, None)] {
            let mut e = e;
            let fields = e.as_object_mut().unwrap();
            fields.retain(|_, v| !v.is_null());
            events.push(serde_json::to_string(&e).unwrap());
        }
        for (events, next, head) in [(events, 2, 5), (Vec::new(), 9, 9)] {
            let want = events.len();
            let resp = page_response(raft_store::Page {
                events,
                next_offset: next,
                head,
            });
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let page: api::wire::Page = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (page.events.len(), page.next_offset, page.head),
                (want, next, head)
            );
            // Nothing the type does not hold, and nothing it holds otherwise.
            let written: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(serde_json::to_value(&page).unwrap(), written);
        }
    }

    #[test]
    fn a_lone_carriage_return_ends_a_data_line_as_eventsource_reads_it() {
        let frames = sse_frames(0, &["{\"a\":1,\r\"b\":2,\r\n\"c\":3}".to_string()]);
        assert_eq!(
            frames,
            "id: 0\ndata: {\"a\":1,\ndata: \"b\":2,\ndata: \"c\":3}\n\n"
        );
        assert!(!frames.contains('\r'));
    }

    #[test]
    fn multi_line_events_become_one_data_field_per_line() {
        let frames = sse_frames(5, &["{\n  \"a\": 1\n}".to_string(), "{}".to_string()]);
        assert_eq!(
            frames,
            "id: 5\ndata: {\ndata:   \"a\": 1\ndata: }\n\nid: 6\ndata: {}\n\n"
        );
    }
}
