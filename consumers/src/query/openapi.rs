//! The OpenAPI 3 description of the query API, served by `uniqlog query` at
//! `GET /openapi.json`. Built like the node's (`api::openapi`): operations declared here, the
//! shared error answers added from code, and a test that the document names exactly the
//! routes `router` serves.

// The `*Doc` types and the operation stubs exist only for the document.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::OpenApi as Spec;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// A user as the read model holds it.
#[derive(Serialize, ToSchema)]
struct UserDoc {
    id: String,
    username: String,
    email: String,
    /// `pending`, `active` or `deleted`.
    status: String,
    created_at: u64,
    updated_at: u64,
    /// Events applied to this user after the first.
    version: u64,
}

#[derive(Serialize, ToSchema)]
struct UsersDoc {
    users: Vec<UserDoc>,
}

#[derive(Serialize, ToSchema)]
struct HistoryDoc {
    /// The user's events as the log serves them.
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
struct StatsDoc {
    created: u64,
    deleted: u64,
    /// Sign-ups with an email that a deleted account had.
    recreated: u64,
    activated: u64,
}

#[derive(Serialize, ToSchema)]
struct HealthDoc {
    /// Next offset of `users` to apply.
    checkpoint: u64,
    /// Length of `users` as last seen.
    head: u64,
    lag_events: u64,
    lag_seconds: u64,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadYourWrites {
    /// Wait (bounded) until this offset of `users` is applied: read-your-writes after a
    /// command that answered this offset. 503 `not_yet_applied` if the wait runs out.
    min_offset: Option<u64>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    min_offset: Option<u64>,
    /// The user as of this offset of `users`.
    as_of: Option<u64>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct LookupQuery {
    min_offset: Option<u64>,
    /// Exactly one of `email` and `username`.
    email: Option<String>,
    username: Option<String>,
}

#[utoipa::path(get, path = "/v1/users", tag = "query", params(LookupQuery),
    responses((status = 200, description = "the live users with this email or username", body = UsersDoc)))]
fn users() {}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "query",
    params(("id" = String, Path), UserQuery),
    responses((status = 200, description = "the user", body = UserDoc)))]
fn user() {}

#[utoipa::path(get, path = "/v1/users/{id}/history", tag = "query",
    params(("id" = String, Path), ReadYourWrites),
    responses((status = 200, description = "every event of the user", body = HistoryDoc)))]
fn history() {}

#[utoipa::path(get, path = "/v1/stats/signups", tag = "query", params(ReadYourWrites),
    responses((status = 200, description = "sign-up counters", body = StatsDoc)))]
fn stats() {}

#[utoipa::path(get, path = "/health", tag = "query",
    responses((status = 200, description = "how far the read model is", body = HealthDoc)))]
fn health() {}

#[utoipa::path(get, path = "/metrics", tag = "query",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text format",
        content_type = "application/openmetrics-text", body = String)))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "query",
    responses((status = 200, description = "this document", body = Object)))]
fn openapi_json() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "uniqlog query API",
        description = "The users read model, kept by `uniqlog query` from the `users` topic."
    ),
    paths(users, user, history, stats, health, metrics, openapi_json)
)]
struct QueryApi;

const ERRORS: &[(&str, &str)] = &[
    ("400", "invalid query"),
    ("401", "no or wrong token (the cluster's auth is on)"),
    ("403", "the token's role is too low"),
    ("404", "no such user or route"),
    ("405", "method not allowed"),
    ("500", "the read model's storage is damaged"),
    (
        "503",
        "`not_yet_applied`: `min_offset` was not reached in time; retry",
    ),
];

/// The document, built once.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec = QueryApi::openapi();
        api::openapi::document_errors(&mut spec, ERRORS);
        spec
    })
}

/// The paths the router serves (all `GET`); `router` is built from this list.
pub const PATHS: &[&str] = &[
    "/v1/users",
    "/v1/users/{id}",
    "/v1/users/{id}/history",
    "/v1/stats/signups",
    "/health",
    "/metrics",
    "/openapi.json",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_exactly_the_served_paths() {
        let mut documented: Vec<&str> = spec().paths.paths.keys().map(String::as_str).collect();
        let mut served = PATHS.to_vec();
        documented.sort_unstable();
        served.sort_unstable();
        assert_eq!(documented, served);
        assert!(spec().paths.paths.values().all(|i| i.get.is_some()));
    }
}
