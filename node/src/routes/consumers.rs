//! Consumer positions as reported to `__checkpoints`: one stream `checkpoint-<name>` per
//! consumer; its last event is the latest checkpoint.

use api::checkpoints::{Checkpoint, Consumers, Report, STREAM_PREFIX};
use api::wire::Event;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::SharedApp;
use api::error::ApiError;
use api::extract::{PathParams, QueryParams};

/// The query of a checkpoint read.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointParams {
    #[param(inline)]
    consistency: Option<super::log::Consistency>,
}

async fn latest(
    app: &SharedApp,
    stream: String,
    version: u64,
) -> Result<Option<Checkpoint>, ApiError> {
    let reader = app.reader.clone();
    let page =
        raft_store::blocking(move || reader.read_stream(&stream, version.saturating_sub(1), 1))
            .await
            .map_err(crate::errors::api_error)?;
    let Some(text) = page.events.first() else {
        return Ok(None);
    };
    let e: Event = serde_json::from_str(text).map_err(ApiError::internal)?;
    // `__checkpoints` is an ordinary (admin-only) topic: an event there that is not a
    // checkpoint (no consumer name, no offset) is not reported as one.
    let Ok(report) = serde_json::from_value::<Report>(e.data) else {
        return Ok(None);
    };
    Ok(Some(Checkpoint {
        consumer: report.consumer,
        topic: report.topic,
        offset: report.offset,
        reported_at: e.timestamp,
        breaker: report.breaker,
    }))
}

/// `GET /v1/consumers`.
pub async fn list(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    let reader = app.reader.clone();
    let streams = raft_store::blocking(move || reader.streams_with_prefix(STREAM_PREFIX))
        .await
        .map_err(crate::errors::api_error)?;
    let mut consumers = Vec::new();
    for (stream, version) in streams {
        if let Some(c) = latest(&app, stream, version).await? {
            consumers.push(c);
        }
    }
    Ok(Json(Consumers { consumers }).into_response())
}

/// `GET /v1/consumers/{name}/checkpoint`.
/// With `?consistency=linearizable` a consumer that resumes reads the latest checkpoint even
/// through a lagging follower.
pub async fn checkpoint(
    State(app): State<SharedApp>,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<CheckpointParams>,
) -> Result<Response, ApiError> {
    if params.consistency == Some(super::log::Consistency::Linearizable) {
        app.linearize().await?;
    }
    latest_of(&app, &name)
        .await?
        .map(|c| Json(c).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no checkpoint reported by consumer {name:?}")))
}

/// The latest checkpoint consumer `name` reported, as this node has applied it.
pub async fn latest_of(app: &SharedApp, name: &str) -> Result<Option<Checkpoint>, ApiError> {
    let stream = api::checkpoints::stream_of(name);
    let reader = app.reader.clone();
    let s = stream.clone();
    let version = raft_store::blocking(move || reader.streams_with_prefix(&s))
        .await
        .map_err(crate::errors::api_error)?
        .into_iter()
        .find(|(n, _)| *n == stream)
        .map(|(_, v)| v);
    match version {
        Some(v) => latest(app, stream, v).await,
        None => Ok(None),
    }
}
