//! uniqlog's HTTP layer: the axum routers of the client API and of peer RPC, the one error
//! type and its status mapping, the transport seam, and the accept loop.
//!
//! This crate never opens redb: it reads through `raft_store::StateReader` and writes by
//! proposing commands to Raft.

pub mod app;
mod append_link;
pub mod auth;
pub mod cluster_secret;
pub mod conflicts;
mod edge;
pub mod error;
pub mod extract;
pub mod host_check;
mod json_check;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod openapi;
pub mod parking;
pub mod peer;
pub mod peer_protocol;
pub mod propose;
pub mod rate_limit;
pub mod removal;
pub mod request_id;
pub mod routes;
pub mod secret;
pub mod server;
pub mod timeouts;
pub mod tls;
pub mod transport;
pub mod users;
pub mod wire;

use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;

pub use app::{App, SharedApp};
pub use auth::{Access, Role};
pub use error::ApiError;
pub use limits::Limits;
pub use propose::Proposer;
pub use secret::Secret;
pub use tls::{ClientTls, ServerTls, TlsError, TlsFile};
pub use transport::{
    client_transport, client_transport_with, HttpRequest, HttpResponse, HyperTransport, Transport,
    TransportError,
};

use routes::{cluster, consumers, log, uniq};

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every client route: method, path, who may call it. The router is built from this table
/// and the auth middleware reads it, so a route cannot exist without a decision on access.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/v1/topics", Access::Role(Role::Read)),
    ("POST", "/v1/topics/{topic}/events", Access::Append),
    ("GET", "/v1/topics/{topic}/events", Access::ReadTopic),
    ("GET", "/v1/topics/{topic}/stream", Access::ReadTopic),
    (
        "GET",
        "/v1/streams/{stream}/events",
        Access::Role(Role::Read),
    ),
    ("GET", "/v1/cluster/status", Access::Role(Role::Read)),
    ("GET", "/v1/cluster/nodes", Access::Role(Role::Read)),
    ("POST", "/v1/cluster/init", Access::Role(Role::Admin)),
    ("POST", "/v1/cluster/learners", Access::Role(Role::Admin)),
    ("POST", "/v1/cluster/membership", Access::Role(Role::Admin)),
    ("POST", "/v1/cluster/uniq-rules", Access::Role(Role::Admin)),
    // Admin: a backup holds every event, password hashes included.
    ("GET", "/v1/backup", Access::Role(Role::Admin)),
    ("GET", "/v1/cluster/uniq-rules", Access::Role(Role::Read)),
    ("GET", "/v1/uniq", Access::Role(Role::Read)),
    ("GET", "/v1/uniq/{set}/{key}", Access::Role(Role::Read)),
    (
        "GET",
        "/v1/uniq/{set}/{key}/history",
        Access::Role(Role::Read),
    ),
    ("POST", "/v1/users", Access::Users { anonymous: true }),
    (
        "GET",
        "/v1/users/activate",
        Access::Users { anonymous: true },
    ),
    (
        "PATCH",
        "/v1/users/{id}",
        Access::Users { anonymous: false },
    ),
    (
        "DELETE",
        "/v1/users/{id}",
        Access::Users { anonymous: false },
    ),
    (
        "POST",
        "/v1/users/{id}/activation-email",
        Access::Users { anonymous: true },
    ),
    ("GET", "/v1/consumers", Access::Role(Role::Read)),
    // Admin: the keys of refused writes are in no event a reader could read.
    ("GET", "/v1/conflicts/recent", Access::Role(Role::Admin)),
    (
        "GET",
        "/v1/consumers/{name}/checkpoint",
        Access::Role(Role::Read),
    ),
    ("POST", "/v1/auth/stream-token", Access::Role(Role::Read)),
    ("GET", "/v1/auth/whoami", Access::Role(Role::Read)),
    ("GET", "/health", Access::Public),
    ("GET", "/ready", Access::Public),
    ("GET", "/openapi.json", Access::Public),
    // Public like etcd's and NATS's: scrapers carry no token, and the series hold no data of
    // the log (routes are templates, uniq sets are names from the config).
    ("GET", "/metrics", Access::Public),
    // The dashboard's page and assets hold no data; what it shows, it fetches with the
    // token the user gives it.
    ("GET", "/", Access::Public),
    ("GET", "/ui", Access::Public),
    ("GET", "/ui/app.js", Access::Public),
    ("GET", "/ui/style.css", Access::Public),
];

/// The access a (method, matched path) asks for.
pub fn access_of(method: &http::Method, path: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *p == path && method.as_str() == *m)
        .map(|(_, _, a)| *a)
}

fn handler(method: &str, path: &str) -> MethodRouter<SharedApp> {
    match (method, path) {
        ("GET", "/v1/topics") => get(log::topics),
        ("POST", "/v1/topics/{topic}/events") => post(log::append),
        ("GET", "/v1/topics/{topic}/events") => get(log::read),
        ("GET", "/v1/topics/{topic}/stream") => get(log::sse),
        ("GET", "/v1/streams/{stream}/events") => get(log::stream_events),
        ("GET", "/v1/cluster/status") => get(cluster::status),
        ("GET", "/v1/cluster/nodes") => get(routes::ui::nodes),
        ("POST", "/v1/cluster/init") => post(cluster::init),
        ("POST", "/v1/cluster/learners") => post(cluster::add_learner),
        ("POST", "/v1/cluster/membership") => post(cluster::change_membership),
        ("POST", "/v1/cluster/uniq-rules") => post(uniq::set_rules),
        ("GET", "/v1/backup") => get(routes::backup::backup),
        ("GET", "/v1/cluster/uniq-rules") => get(uniq::get_rules),
        ("GET", "/v1/uniq") => get(uniq::sets),
        ("GET", "/v1/uniq/{set}/{key}") => get(uniq::owner),
        ("GET", "/v1/uniq/{set}/{key}/history") => get(uniq::history),
        ("POST", "/v1/users") => post(users::signup),
        ("GET", "/v1/users/activate") => get(users::activate),
        ("PATCH", "/v1/users/{id}") => patch(users::change_email),
        ("DELETE", "/v1/users/{id}") => delete(users::delete),
        ("POST", "/v1/users/{id}/activation-email") => post(users::resend_activation),
        ("GET", "/v1/consumers") => get(consumers::list),
        ("GET", "/v1/conflicts/recent") => get(conflicts::recent),
        ("GET", "/v1/consumers/{name}/checkpoint") => get(consumers::checkpoint),
        ("POST", "/v1/auth/stream-token") => post(auth::stream_token),
        ("GET", "/v1/auth/whoami") => get(auth::whoami),
        ("GET", "/health") => get(cluster::health),
        ("GET", "/ready") => get(cluster::ready),
        ("GET", "/openapi.json") => get(|| async { axum::Json(openapi::spec()) }),
        ("GET", "/metrics") => get(metrics::scrape),
        ("GET", "/") => get(|| async { axum::response::Redirect::to("/ui") }),
        ("GET", "/ui") => get(routes::ui::index),
        ("GET", "/ui/app.js") => get(routes::ui::app_js),
        ("GET", "/ui/style.css") => get(routes::ui::style),
        (m, p) => unreachable!("route {m} {p} is in ROUTES but has no handler"),
    }
}

/// What the client routes may take: `request_timeout_ms`, plus `wait_ms_max` for a long-poll.
/// A backup is written before its first byte is sent, so its head may take as long as that.
fn request_timeouts(limits: &Limits) -> timeouts::RequestTimeouts {
    let ms = std::time::Duration::from_millis;
    timeouts::RequestTimeouts {
        request: ms(limits.request_timeout_ms),
        waits: vec![
            (
                http::Method::GET,
                "/v1/topics/{topic}/events",
                ms(limits.wait_ms_max),
            ),
            (
                http::Method::GET,
                "/v1/backup",
                std::time::Duration::from_secs(3600),
            ),
        ],
    }
}

/// The client API. Built without a socket so tests can call it directly.
pub fn client_router(app: SharedApp) -> Router {
    let mut by_path: Vec<(&str, MethodRouter<SharedApp>)> = Vec::new();
    for (method, path, _) in ROUTES {
        let h = handler(method, path);
        match by_path.iter_mut().find(|(p, _)| p == path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(h),
            None => by_path.push((path, h)),
        }
    }
    let router = by_path
        .into_iter()
        .fold(Router::new(), |r, (path, h)| r.route(path, h));
    let edge = edge::Edge {
        app: app.clone(),
        timeouts: std::sync::Arc::new(request_timeouts(&app.limits)),
    };
    let router = router.route_layer(axum::middleware::from_fn_with_state(
        edge,
        edge::client_route,
    ));
    // Open to whoever reaches it: then only for requests addressed to loopback.
    let router = if app.loopback_hosts_only {
        router.route_layer(axum::middleware::from_fn(host_check::loopback_hosts_only))
    } else {
        router
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::middleware))
        .with_state(app)
}

/// Client and peer routes on one listener (the default when `peer_addr` is not set).
pub fn router(app: SharedApp) -> Router {
    peer::peer_router(app.clone()).merge(client_router(app))
}
