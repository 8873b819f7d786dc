//! The client routes: one table (method, path, access, handler) that builds the router, and
//! that the auth middleware and the OpenAPI document read.

use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;

use api::error::ApiError;
use api::{host_check, request_id, timeouts};

use crate::app::SharedApp;
use crate::auth::{Access, Role};
use crate::limits::Limits;
use crate::routes::{cluster, consumers, log, uniq};
use crate::{auth, conflicts, edge, metrics, openapi, peer, routes, users};

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every client route: method, path, who may call it, and its handler. The router is built
/// from this table and the auth middleware reads it, so a route cannot exist without a
/// decision on access, nor be listed without a handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// The handler as axum routes it (a function, so the table can be a constant).
    pub handler: fn() -> MethodRouter<SharedApp>,
}

pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v1/topics",
        access: Access::Role(Role::Read),
        handler: || get(log::topics),
    },
    Route {
        method: "POST",
        path: "/v1/topics/{topic}/events",
        access: Access::Append,
        handler: || post(log::append),
    },
    Route {
        method: "GET",
        path: "/v1/topics/{topic}/events",
        access: Access::ReadTopic,
        handler: || get(log::read),
    },
    Route {
        method: "GET",
        path: "/v1/topics/{topic}/stream",
        access: Access::ReadTopic,
        handler: || get(log::sse),
    },
    Route {
        method: "GET",
        path: "/v1/streams/{stream}/events",
        access: Access::Role(Role::Read),
        handler: || get(log::stream_events),
    },
    Route {
        method: "GET",
        path: "/v1/cluster/status",
        access: Access::Role(Role::Read),
        handler: || get(cluster::status),
    },
    Route {
        method: "GET",
        path: "/v1/cluster/nodes",
        access: Access::Role(Role::Read),
        handler: || get(routes::ui::nodes),
    },
    Route {
        method: "POST",
        path: "/v1/cluster/init",
        access: Access::Role(Role::Admin),
        handler: || post(cluster::init),
    },
    Route {
        method: "POST",
        path: "/v1/cluster/learners",
        access: Access::Role(Role::Admin),
        handler: || post(cluster::add_learner),
    },
    Route {
        method: "POST",
        path: "/v1/cluster/membership",
        access: Access::Role(Role::Admin),
        handler: || post(cluster::change_membership),
    },
    Route {
        method: "POST",
        path: "/v1/cluster/uniq-rules",
        access: Access::Role(Role::Admin),
        handler: || post(uniq::set_rules),
    },
    // Admin: a backup holds every event, password hashes included.
    Route {
        method: "GET",
        path: "/v1/backup",
        access: Access::Role(Role::Admin),
        handler: || get(routes::backup::backup),
    },
    Route {
        method: "GET",
        path: "/v1/cluster/uniq-rules",
        access: Access::Role(Role::Read),
        handler: || get(uniq::get_rules),
    },
    Route {
        method: "GET",
        path: "/v1/uniq",
        access: Access::Role(Role::Read),
        handler: || get(uniq::sets),
    },
    Route {
        method: "GET",
        path: "/v1/uniq/{set}/{key}",
        access: Access::Role(Role::Read),
        handler: || get(uniq::owner),
    },
    Route {
        method: "GET",
        path: "/v1/uniq/{set}/{key}/history",
        access: Access::Role(Role::Read),
        handler: || get(uniq::history),
    },
    Route {
        method: "POST",
        path: "/v1/users",
        access: Access::Users { anonymous: true },
        handler: || post(users::signup),
    },
    Route {
        method: "GET",
        path: "/v1/users/activate",
        access: Access::Users { anonymous: true },
        handler: || get(users::activate),
    },
    Route {
        method: "PATCH",
        path: "/v1/users/{id}",
        access: Access::Users { anonymous: false },
        handler: || patch(users::change_email),
    },
    Route {
        method: "DELETE",
        path: "/v1/users/{id}",
        access: Access::Users { anonymous: false },
        handler: || delete(users::delete),
    },
    Route {
        method: "POST",
        path: "/v1/users/{id}/activation-email",
        access: Access::Users { anonymous: true },
        handler: || post(users::resend_activation),
    },
    Route {
        method: "GET",
        path: "/v1/consumers",
        access: Access::Role(Role::Read),
        handler: || get(consumers::list),
    },
    // Admin: the keys of refused writes are in no event a reader could read.
    Route {
        method: "GET",
        path: "/v1/conflicts/recent",
        access: Access::Role(Role::Admin),
        handler: || get(conflicts::recent),
    },
    Route {
        method: "GET",
        path: "/v1/consumers/{name}/checkpoint",
        access: Access::Role(Role::Read),
        handler: || get(consumers::checkpoint),
    },
    Route {
        method: "POST",
        path: "/v1/auth/stream-token",
        access: Access::Role(Role::Read),
        handler: || post(auth::stream_token),
    },
    Route {
        method: "GET",
        path: "/v1/auth/whoami",
        access: Access::Role(Role::Read),
        handler: || get(auth::whoami),
    },
    Route {
        method: "GET",
        path: "/health",
        access: Access::Public,
        handler: || get(cluster::health),
    },
    Route {
        method: "GET",
        path: "/ready",
        access: Access::Public,
        handler: || get(cluster::ready),
    },
    Route {
        method: "GET",
        path: "/openapi.json",
        access: Access::Public,
        handler: || get(|| async { axum::Json(openapi::spec()) }),
    },
    // Public like etcd's and NATS's: scrapers carry no token, and the series hold no data of
    // the log (routes are templates, uniq sets are names from the config).
    Route {
        method: "GET",
        path: "/metrics",
        access: Access::Public,
        handler: || get(metrics::scrape),
    },
    // The dashboard's page and assets hold no data; what it shows, it fetches with the
    // token the user gives it.
    Route {
        method: "GET",
        path: "/",
        access: Access::Public,
        handler: || get(|| async { axum::response::Redirect::to("/ui") }),
    },
    Route {
        method: "GET",
        path: "/ui",
        access: Access::Public,
        handler: || get(routes::ui::index),
    },
    Route {
        method: "GET",
        path: "/ui/app.js",
        access: Access::Public,
        handler: || get(routes::ui::app_js),
    },
    Route {
        method: "GET",
        path: "/ui/style.css",
        access: Access::Public,
        handler: || get(routes::ui::style),
    },
];

/// The access a (method, matched path) asks for.
pub fn access_of(method: &http::Method, path: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|r| r.path == path && method.as_str() == r.method)
        .map(|r| r.access)
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
    for Route { path, handler, .. } in ROUTES {
        let h = handler();
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
        timeouts: std::sync::Arc::new(request_timeouts(&app.settings.limits)),
    };
    let router = router.route_layer(axum::middleware::from_fn_with_state(
        edge,
        edge::client_route,
    ));
    // Open to whoever reaches it: then only for requests addressed to loopback.
    let router = if app.settings.loopback_hosts_only {
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
