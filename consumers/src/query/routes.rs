//! The query API, answered from the read model. Every route takes `min_offset`: wait (bounded)
//! until that offset of `users` is applied, for read-your-writes after a command.

use std::sync::Arc;
use std::time::Duration;

use api::extract::{PathParams, QueryParams};
use api::runtime::now_ms;
use api::ApiError;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;

use super::answers::{Health, Users};
use super::QueryState;

type Shared = Arc<QueryState>;

/// The query of the routes that only wait for an offset.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadYourWrites {
    /// Wait (bounded) until this offset of `users` is applied: read-your-writes after a
    /// command that answered this offset. 503 `not_yet_applied` if the wait runs out.
    min_offset: Option<u64>,
}

/// The query of `GET /v1/users/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    min_offset: Option<u64>,
    /// The user as of this offset of `users`.
    as_of: Option<u64>,
}

/// The query of `GET /v1/users`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    min_offset: Option<u64>,
    /// Exactly one of `email` and `username`.
    email: Option<String>,
    username: Option<String>,
}

fn internal(e: impl ToString) -> ApiError {
    ApiError::internal(e)
}

async fn wait_for(state: &Shared, min_offset: Option<u64>) -> Result<(), ApiError> {
    let Some(min) = min_offset else { return Ok(()) };
    let mut rx = state.applied.clone();
    let wait = Duration::from_millis(state.config.min_offset_wait_ms_max);
    let reached = tokio::time::timeout(wait, async {
        loop {
            if *rx.borrow_and_update() > min {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match reached {
        Ok(true) => Ok(()),
        _ => Err(ApiError::NotYetApplied {
            message: format!("offset {min} of users is not applied yet"),
        }),
    }
}

async fn user(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
    QueryParams(p): QueryParams<UserQuery>,
) -> Result<Response, ApiError> {
    wait_for(&state, p.min_offset).await?;
    let doc = match p.as_of {
        Some(offset) => state.store.doc_as_of(&id, offset).map_err(internal)?,
        None => state.store.doc(&id).map_err(internal)?,
    };
    doc.map(|d| Json(d).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no user {id}")))
}

async fn users(
    State(state): State<Shared>,
    QueryParams(p): QueryParams<LookupQuery>,
) -> Result<Response, ApiError> {
    wait_for(&state, p.min_offset).await?;
    let found = match (&p.email, &p.username) {
        (Some(e), None) => state.store.by_email(e).map_err(internal)?,
        (None, Some(u)) => state.store.by_username(u).map_err(internal)?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of email or username",
            ))
        }
    };
    Ok(Json(Users { users: found }).into_response())
}

async fn history(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
    QueryParams(p): QueryParams<ReadYourWrites>,
) -> Result<Response, ApiError> {
    wait_for(&state, p.min_offset).await?;
    let history = state.store.history(&id).map_err(internal)?;
    if history.events.is_empty() {
        return Err(ApiError::not_found(format!("no user {id}")));
    }
    Ok(Json(history).into_response())
}

async fn stats(
    State(state): State<Shared>,
    QueryParams(p): QueryParams<ReadYourWrites>,
) -> Result<Response, ApiError> {
    wait_for(&state, p.min_offset).await?;
    Ok(Json(state.store.stats().map_err(internal)?).into_response())
}

/// (checkpoint, head, lag in events, lag in seconds).
fn position(state: &Shared) -> Result<(u64, u64, u64, u64), ApiError> {
    let checkpoint = *state.applied.borrow();
    let head = (*state.head.borrow()).max(checkpoint);
    let lag_events = head - checkpoint;
    let lag_seconds = if lag_events == 0 {
        0
    } else {
        now_ms().saturating_sub(state.store.last_event_ms().map_err(internal)?) / 1000
    };
    Ok((checkpoint, head, lag_events, lag_seconds))
}

async fn health(State(state): State<Shared>) -> Result<Response, ApiError> {
    let (checkpoint, head, lag_events, lag_seconds) = position(&state)?;
    Ok(Json(Health {
        checkpoint,
        head,
        lag_events,
        lag_seconds,
    })
    .into_response())
}

async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let (checkpoint, head, lag_events, lag_seconds) = position(&state)?;
    let text = crate::metrics::render(
        "uniqlog_query",
        &[
            (
                "checkpoint",
                "Next offset of users to apply",
                checkpoint as i64,
            ),
            ("head", "Length of users as last seen", head as i64),
            (
                "lag_events",
                "Events of users not yet applied",
                lag_events as i64,
            ),
            (
                "lag_seconds",
                "Age of the last applied event while behind",
                lag_seconds as i64,
            ),
        ],
        &[],
        Some(&state.http),
    );
    Ok(crate::metrics::answer(text))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The read model holds what the `users` topic holds (emails, usernames): with the cluster's
/// auth on, its queries need a token that may read `users`, as reads of the log would.
async fn require_read(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let bearer = api::auth::bearer(req.headers());
    let users = api::users::state::TOPIC;
    match state
        .auth
        .authorize(api::Access::ReadTopic, Some(users), bearer.as_deref())
    {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Who may call a query route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Queries of the read model: the role that may read `users`.
    Read,
    /// Health, metrics and the document.
    Public,
}

/// The query routes, all `GET`: for each its name, path, access, handler and the OpenAPI
/// description of its operation. It makes [`ROUTES`] and [`RouteDocs`], so the router and
/// the document cannot differ.
macro_rules! route_table {
    ($(
        $name:ident: $path:literal, $access:ident, $handler:expr,
            doc($($doc:tt)*);
    )*) => {
        /// (path, access, handler).
        pub const ROUTES: &[(&str, Access, fn() -> MethodRouter<Shared>)] =
            &[$(($path, Access::$access, || get($handler))),*];

        mod operations {
            #[allow(unused_imports)]
            use super::super::answers::*;
            #[allow(unused_imports)]
            use super::{LookupQuery, ReadYourWrites, UserQuery};
            $(
                #[utoipa::path(get, path = $path, $($doc)*)]
                #[allow(dead_code)]
                pub(super) fn $name() {}
            )*
        }

        /// The paths of the query API, each with its operation.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($(operations::$name),*))]
        pub(crate) struct RouteDocs;
    };
}

route_table! {
    users: "/v1/users", Read, users,
        doc(
        tag = "query", params(LookupQuery),
        responses((status = 200, description = "the live users with this email or username", body = Users))
        );
    user: "/v1/users/{id}", Read, user,
        doc(
        tag = "query",
        params(("id" = String, Path), UserQuery),
        responses((status = 200, description = "the user", body = User))
        );
    history: "/v1/users/{id}/history", Read, history,
        doc(
        tag = "query",
        params(("id" = String, Path), ReadYourWrites),
        responses((status = 200, description = "every event of the user", body = History))
        );
    stats: "/v1/stats/signups", Read, stats,
        doc(
        tag = "query", params(ReadYourWrites),
        responses((status = 200, description = "sign-up counters", body = Stats))
        );
    health: "/health", Public, health,
        doc(
        tag = "query",
        responses((status = 200, description = "how far the read model is", body = Health))
        );
    metrics: "/metrics", Public, metrics,
        doc(
        tag = "query",
        responses((status = 200, description = "Prometheus metrics, OpenMetrics text format",
        content_type = "application/openmetrics-text", body = String))
        );
    openapi_json: "/openapi.json", Public, || async { Json(super::openapi::spec()) },
        doc(
        tag = "query",
        responses((status = 200, description = "this document", body = Object))
        );
}

/// Queries of the read model need the read role; health, metrics and the document do not.
pub fn router(state: Shared) -> Router {
    let route = |access: Access| {
        ROUTES
            .iter()
            .filter(move |r| r.1 == access)
            .fold(Router::new(), |router, (path, _, handler)| {
                router.route(path, handler())
            })
    };
    let queries = route(Access::Read).route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_read,
    ));
    route(Access::Public)
        .merge(queries)
        .route_layer(axum::middleware::from_fn_with_state(
            state.http.clone(),
            api::metrics::track,
        ))
        .fallback(not_found)
        .with_state(state)
}
