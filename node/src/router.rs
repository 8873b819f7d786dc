//! The client routes: one table (name, method, path, access, handler, operation) that builds
//! the router, the auth decision and the OpenAPI paths.

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
/// from this table, the auth middleware reads it, and the OpenAPI document takes each route's
/// operation from it, so a route cannot exist without a decision on access, nor be listed
/// without a handler or a document.
pub struct Route {
    /// Upper case, as `http::Method` spells it.
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// The handler as axum routes it (a function, so the table can be a constant).
    pub handler: fn() -> MethodRouter<SharedApp>,
}

/// `get` as `GET`: the table names a method once, as axum's routing function and utoipa's
/// operation name it.
const fn upper(method: &'static str) -> &'static str {
    match method.as_bytes() {
        b"get" => "GET",
        b"post" => "POST",
        b"patch" => "PATCH",
        b"put" => "PUT",
        b"delete" => "DELETE",
        _ => panic!("not an HTTP method of the route table"),
    }
}

/// The route table: for each route its name, method, path, access, handler and the OpenAPI
/// description of its operation (`utoipa::path`'s arguments, without method and path). It
/// makes [`ROUTES`], one operation stub per route in `operations`, and [`RouteDocs`], the
/// document of their paths that `crate::openapi` completes.
macro_rules! route_table {
    ($(
        $name:ident: $method:ident $path:literal, $access:expr, $handler:expr,
            doc($($doc:tt)*);
    )*) => {
        pub const ROUTES: &[Route] = &[$(
            Route {
                method: upper(stringify!($method)),
                path: $path,
                access: $access,
                handler: || $method($handler),
            },
        )*];

        /// One stub per route, carrying its operation for the document.
        mod operations {
            #[allow(unused_imports)]
            use crate::openapi::params::*;
            #[allow(unused_imports)]
            use crate::openapi::shapes::*;
            $(
                #[utoipa::path($method, path = $path, $($doc)*)]
                #[allow(dead_code)]
                pub(super) fn $name() {}
            )*
        }

        /// The paths of the client API, each with its operation.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($(operations::$name),*))]
        pub(crate) struct RouteDocs;
    };
}

route_table! {
    topics: get "/v1/topics", Access::Role(Role::Read), log::topics,
        doc(
        tag = "log",
        responses((status = 200, description = "every topic and its length", body = Topics))
        );
    append: post "/v1/topics/{topic}/events", Access::Append, log::append,
        doc(
        tag = "log",
        params(("topic" = String, Path, description = "topic name: A-Z a-z 0-9 . _ -"),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
        request_body = AppendBody,
        responses((status = 201, description = "appended, durable on a quorum (a replay under the same idempotency key has `Idempotent-Replayed: true`)", body = AppendCreated))
        );
    read: get "/v1/topics/{topic}/events", Access::ReadTopic, log::read,
        doc(
        tag = "log",
        params(("topic" = String, Path), ReadParams),
        responses((status = 200, description = "a page of events", body = Page))
        );
    stream: get "/v1/topics/{topic}/stream", Access::ReadTopic, log::sse,
        doc(
        tag = "log",
        params(("topic" = String, Path), StreamParams),
        responses((status = 200, description = "server-sent events, one `id: <offset>` frame per event",
        content_type = "text/event-stream", body = String))
        );
    stream_events: get "/v1/streams/{stream}/events", Access::Role(Role::Read), log::stream_events,
        doc(
        tag = "log",
        params(("stream" = String, Path), ReadParams),
        responses((status = 200, description = "a page of the stream's events", body = Page))
        );
    status: get "/v1/cluster/status", Access::Role(Role::Read), cluster::status,
        doc(
        tag = "cluster",
        responses((status = 200, description = "this node's view of the cluster", body = ClusterStatus))
        );
    // Admin: it reads every row the node holds.
    state_hash: get "/v1/cluster/state-hash", Access::Role(Role::Admin), cluster::state_hash,
        doc(
        tag = "cluster",
        responses((status = 200, description = "this node's replicated state, table by table: \
        rows and SHA-256, as of an applied index; members that applied the same entries answer \
        the same", body = StateHash))
        );
    nodes: get "/v1/cluster/nodes", Access::Role(Role::Read), routes::ui::nodes,
        doc(
        tag = "cluster",
        responses((status = 200, description = "this node's status and every other member's, \
        or why it did not answer", body = Nodes))
        );
    init: post "/v1/cluster/init", Access::Role(Role::Admin), cluster::init,
        doc(
        tag = "cluster",
        responses((status = 200, description = "initialized, or already was", body = Initialized))
        );
    add_learner: post "/v1/cluster/learners", Access::Role(Role::Admin), cluster::add_learner,
        doc(
        tag = "cluster",
        request_body = AddLearnerBody,
        responses((status = 200, description = "the learner was added and caught up", body = LogIndex))
        );
    change_membership: post "/v1/cluster/membership", Access::Role(Role::Admin), cluster::change_membership,
        doc(
        tag = "cluster",
        request_body = MembershipBody,
        responses((status = 200, description = "the voters are now these", body = LogIndex))
        );
    set_rules: post "/v1/cluster/uniq-rules", Access::Role(Role::Admin), uniq::set_rules,
        doc(
        tag = "uniq",
        request_body(content = Rules, description = "the whole rules: `uniq` sets and `idempotency`"),
        responses((status = 200, description = "the new rules are in force", body = RulesVersion))
        );
    // Admin: a backup holds every event, password hashes included.
    backup: get "/v1/backup", Access::Role(Role::Admin), routes::backup::backup,
        doc(
        tag = "cluster",
        responses((status = 200, description = "a consistent backup of this node's applied state \
        (a snapshot file: format byte, per-record CRC-32C); `x-uniqlog-backup-index` is its \
        last log index, `x-uniqlog-backup-crc32c` the CRC-32C of the whole body",
        content_type = "application/octet-stream", body = Vec<u8>))
        );
    get_rules: get "/v1/cluster/uniq-rules", Access::Role(Role::Read), uniq::get_rules,
        doc(
        tag = "uniq",
        responses((status = 200, description = "the rules in force", body = RulesInForce))
        );
    uniq_sets: get "/v1/uniq", Access::Role(Role::Read), uniq::sets,
        doc(
        tag = "uniq",
        responses((status = 200, description = "the uniq sets of the rules in force, each with \
        the number of keys owned", body = Sets))
        );
    owner: get "/v1/uniq/{set}/{key}", Access::Role(Role::Read), uniq::owner,
        doc(
        tag = "uniq",
        params(("set" = String, Path), ("key" = String, Path, description = "normalized as the set says")),
        responses((status = 200, description = "the key's owner", body = Owner))
        );
    history: get "/v1/uniq/{set}/{key}/history", Access::Role(Role::Read), uniq::history,
        doc(
        tag = "uniq",
        params(("set" = String, Path), ("key" = String, Path)),
        responses((status = 200, description = "every claim of the key", body = History))
        );
    signup: post "/v1/users", Access::Users { anonymous: true }, users::signup,
        doc(
        tag = "users",
        params(("Idempotency-Key" = Option<String>, Header)),
        request_body = SignupRequest,
        responses((status = 201, description = "signed up, pending activation", body = SignedUp))
        );
    activate: get "/v1/users/activate", Access::Users { anonymous: true }, users::activate,
        doc(
        tag = "users",
        params(ActivateParams),
        responses((status = 200, description = "activated", body = CommandDone))
        );
    change_email: patch "/v1/users/{id}", Access::Users { anonymous: false }, users::change_email,
        doc(
        tag = "users",
        params(("id" = String, Path, description = "the user's UUID")),
        request_body = EmailChangeRequest,
        responses((status = 200, description = "the email changed", body = EmailChanged))
        );
    delete_user: delete "/v1/users/{id}", Access::Users { anonymous: false }, users::delete,
        doc(
        tag = "users",
        params(("id" = String, Path)),
        responses((status = 200, description = "deleted; the email is free again", body = CommandDone))
        );
    resend_activation: post "/v1/users/{id}/activation-email", Access::Users { anonymous: true }, users::resend_activation,
        doc(
        tag = "users",
        params(("id" = String, Path)),
        responses((status = 202, description = "a new activation email is requested", body = CommandDone))
        );
    consumers: get "/v1/consumers", Access::Role(Role::Read), consumers::list,
        doc(
        tag = "consumers",
        responses((status = 200, description = "every consumer with its latest checkpoint", body = Consumers))
        );
    // Admin: the keys of refused writes are in no event a reader could read.
    recent_conflicts: get "/v1/conflicts/recent", Access::Role(Role::Admin), conflicts::recent,
        doc(
        tag = "cluster",
        responses((status = 200, description = "the latest conflicts (409) this node answered, \
        newest first", body = RecentConflicts))
        );
    checkpoint: get "/v1/consumers/{name}/checkpoint", Access::Role(Role::Read), consumers::checkpoint,
        doc(
        tag = "consumers",
        params(("name" = String, Path), CheckpointParams),
        responses((status = 200, description = "the consumer's latest checkpoint", body = Checkpoint))
        );
    stream_token: post "/v1/auth/stream-token", Access::Role(Role::Read), auth::stream_token,
        doc(
        tag = "auth",
        responses((status = 200, description = "a short-lived token for the event stream", body = StreamToken))
        );
    whoami: get "/v1/auth/whoami", Access::Role(Role::Read), auth::whoami,
        doc(
        tag = "auth",
        responses((status = 200, description = "the presented token's role and topics", body = Whoami))
        );
    health: get "/health", Access::Public, cluster::health,
        doc(
        tag = "cluster",
        responses((status = 200, description = "the process serves", body = Health))
        );
    ready: get "/ready", Access::Public, cluster::ready,
        doc(
        tag = "cluster",
        responses((status = 200, description = "a leader is known and this node applied its commit index", body = Ready))
        );
    openapi_json: get "/openapi.json", Access::Public, || async { axum::Json(openapi::spec()) },
        doc(
        tag = "cluster",
        responses((status = 200, description = "this document", body = Object))
        );
    // Public like etcd's and NATS's: scrapers carry no token, and the series hold no data of
    // the log (routes are templates, uniq sets are names from the config).
    metrics: get "/metrics", Access::Public, metrics::scrape,
        doc(
        tag = "cluster",
        responses((status = 200, description = "Prometheus metrics, OpenMetrics text format",
        content_type = "application/openmetrics-text", body = String))
        );
    // The dashboard's page and assets hold no data; what it shows, it fetches with the
    // token the user gives it.
    root: get "/", Access::Public, || async { axum::response::Redirect::to("/ui") },
        doc(
        tag = "dashboard",
        responses((status = 303, description = "to the dashboard, `/ui`"))
        );
    ui: get "/ui", Access::Public, routes::ui::index,
        doc(
        tag = "dashboard",
        responses((status = 200, description = "the dashboard", content_type = "text/html", body = String))
        );
    ui_js: get "/ui/app.js", Access::Public, routes::ui::app_js,
        doc(
        tag = "dashboard",
        responses((status = 200, description = "the dashboard's script", content_type = "text/javascript", body = String))
        );
    ui_css: get "/ui/style.css", Access::Public, routes::ui::style,
        doc(
        tag = "dashboard",
        responses((status = 200, description = "the dashboard's styles", content_type = "text/css", body = String))
        );
}

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
