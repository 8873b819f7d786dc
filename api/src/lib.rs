//! uniqlog's HTTP layer: the axum routers of the client API and of peer RPC, the one error
//! type and its status mapping, the transport seam, and the accept loop.
//!
//! This crate never opens redb: it reads through `raft_store::StateReader` and writes by
//! proposing commands to Raft.

pub mod app;
pub mod cluster_secret;
pub mod error;
pub mod extract;
pub mod limits;
pub mod peer;
pub mod routes;
pub mod server;
pub mod transport;
pub mod users;
pub mod wire;

use axum::routing::{get, post};
use axum::Router;

pub use app::{App, SharedApp};
pub use error::ApiError;
pub use limits::Limits;
pub use transport::{HttpRequest, HttpResponse, HyperTransport, Transport, TransportError};

use routes::{cluster, consumers, log, uniq};

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The client API. Built without a socket so tests can call it directly.
pub fn client_router(app: SharedApp) -> Router {
    Router::new()
        .route("/v1/topics", get(log::topics))
        .route(
            "/v1/topics/{topic}/events",
            post(log::append).get(log::read),
        )
        .route("/v1/topics/{topic}/stream", get(log::sse))
        .route("/v1/streams/{stream}/events", get(log::stream_events))
        .route("/v1/cluster/status", get(cluster::status))
        .route("/v1/cluster/init", post(cluster::init))
        .route("/v1/cluster/learners", post(cluster::add_learner))
        .route("/v1/cluster/membership", post(cluster::change_membership))
        .route(
            "/v1/cluster/uniq-rules",
            post(uniq::set_rules).get(uniq::get_rules),
        )
        .route("/v1/uniq/{set}/{key}", get(uniq::owner))
        .route("/v1/uniq/{set}/{key}/history", get(uniq::history))
        .route("/v1/users", post(users::signup))
        .route("/v1/users/activate", get(users::activate))
        .route(
            "/v1/users/{id}",
            axum::routing::patch(users::change_email).delete(users::delete),
        )
        .route(
            "/v1/users/{id}/activation-email",
            post(users::resend_activation),
        )
        .route("/v1/consumers", get(consumers::list))
        .route(
            "/v1/consumers/{name}/checkpoint",
            get(consumers::checkpoint),
        )
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Client and peer routes on one listener (the default when `peer_addr` is not set).
pub fn router(app: SharedApp) -> Router {
    peer::peer_router(app.clone()).merge(client_router(app))
}
