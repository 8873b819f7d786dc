//! The OpenAPI 3 description of the client API, served at `GET /openapi.json`.
//!
//! Request bodies are the wire types themselves (`ToSchema` derived next to their serde
//! attributes, so the spec cannot drift from what the node parses). Operations are declared
//! here, in one place, each on a stub function; the tests check that they match the route
//! table `ROUTES` exactly, one for one. The error answers every route shares (the error shape,
//! with the statuses `error.rs` can produce) and each route's security (from its `Access`) are
//! added from code as well, so no route can be documented with the wrong ones. Responses the
//! handlers build inline are described by the `*Doc` types below; schemathesis checks every
//! answer against them (`scripts/schemathesis.sh`).

// The `*Doc` types and the operation stubs exist only for the document.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde::Serialize;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi as Spec;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::Access;
use crate::router::ROUTES;
use crate::wire::{
    AddLearnerBody, AppendBody, AppendCreated, ClusterStatus, Event, EventBody, Health,
    IdempotencyStatus, Initialized, LogIndex, Member, MembershipBody, Page, Ready, StreamToken,
    Topic, Topics, Whoami,
};
use api::checkpoints::{Checkpoint, Consumers};
use api::openapi::{document_errors, operations_mut, ErrorDoc};
use api::uniq::{History, Owner, RulesVersion, Sets};
use api::users::commands::{
    CommandDone, EmailChangeRequest, EmailChanged, SignedUp, SignupRequest,
};

#[derive(Serialize, ToSchema)]
struct RulesDoc {
    version: u64,
    #[schema(value_type = Vec<Object>)]
    uniq: Vec<serde_json::Value>,
    #[schema(value_type = Object)]
    idempotency: serde_json::Value,
}

/// `local` reads this node's applied state; `linearizable` first confirms leadership and
/// waits until this node has applied everything committed before the read.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ConsistencyDoc {
    Local,
    Linearizable,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    /// First offset (topics) or stream position (streams) to return.
    from: Option<u64>,
    /// Most events to return, at most `[limits] read_events_max`.
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// Long-poll: wait up to this long for an event at `from`, at most `wait_ms_max`.
    wait_ms: Option<u64>,
    #[param(inline)]
    consistency: Option<ConsistencyDoc>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// First offset; a reconnect's `Last-Event-ID` wins.
    from: Option<u64>,
    /// A token from `POST /v1/auth/stream-token` (EventSource cannot send headers).
    access_token: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyQuery {
    #[param(inline)]
    consistency: Option<ConsistencyDoc>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivateQuery {
    /// The token of the activation email.
    token: String,
}

#[utoipa::path(get, path = "/v1/topics", tag = "log",
    responses((status = 200, description = "every topic and its length", body = Topics)))]
fn topics() {}

#[utoipa::path(post, path = "/v1/topics/{topic}/events", tag = "log",
    params(("topic" = String, Path, description = "topic name: A-Z a-z 0-9 . _ -"),
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    request_body = AppendBody,
    responses((status = 201, description = "appended, durable on a quorum (a replay under the same idempotency key has `Idempotent-Replayed: true`)", body = AppendCreated)))]
fn append() {}

#[utoipa::path(get, path = "/v1/topics/{topic}/events", tag = "log",
    params(("topic" = String, Path), ReadQuery),
    responses((status = 200, description = "a page of events", body = Page)))]
fn read() {}

#[utoipa::path(get, path = "/v1/topics/{topic}/stream", tag = "log",
    params(("topic" = String, Path), StreamQuery),
    responses((status = 200, description = "server-sent events, one `id: <offset>` frame per event",
        content_type = "text/event-stream", body = String)))]
fn stream() {}

#[utoipa::path(get, path = "/v1/streams/{stream}/events", tag = "log",
    params(("stream" = String, Path), ReadQuery),
    responses((status = 200, description = "a page of the stream's events", body = Page)))]
fn stream_events() {}

#[utoipa::path(get, path = "/v1/cluster/status", tag = "cluster",
    responses((status = 200, description = "this node's view of the cluster", body = ClusterStatus)))]
fn status() {}

#[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster",
    responses((status = 200, description = "initialized, or already was", body = Initialized)))]
fn init() {}

#[utoipa::path(post, path = "/v1/cluster/learners", tag = "cluster",
    request_body = AddLearnerBody,
    responses((status = 200, description = "the learner was added and caught up", body = LogIndex)))]
fn add_learner() {}

#[utoipa::path(post, path = "/v1/cluster/membership", tag = "cluster",
    request_body = MembershipBody,
    responses((status = 200, description = "the voters are now these", body = LogIndex)))]
fn change_membership() {}

#[utoipa::path(post, path = "/v1/cluster/uniq-rules", tag = "uniq",
    request_body(content = Object, description = "the whole rules: `uniq` sets and `idempotency`"),
    responses((status = 200, description = "the new rules are in force", body = RulesVersion)))]
fn set_rules() {}

#[utoipa::path(get, path = "/v1/cluster/uniq-rules", tag = "uniq",
    responses((status = 200, description = "the rules in force", body = RulesDoc)))]
fn get_rules() {}

#[utoipa::path(get, path = "/v1/uniq/{set}/{key}", tag = "uniq",
    params(("set" = String, Path), ("key" = String, Path, description = "normalized as the set says")),
    responses((status = 200, description = "the key's owner", body = Owner)))]
fn owner() {}

#[utoipa::path(get, path = "/v1/uniq/{set}/{key}/history", tag = "uniq",
    params(("set" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "every claim of the key", body = History)))]
fn history() {}

#[utoipa::path(post, path = "/v1/users", tag = "users",
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = SignupRequest,
    responses((status = 201, description = "signed up, pending activation", body = SignedUp)))]
fn signup() {}

#[utoipa::path(get, path = "/v1/users/activate", tag = "users",
    params(ActivateQuery),
    responses((status = 200, description = "activated", body = CommandDone)))]
fn activate() {}

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "the user's UUID")),
    request_body = EmailChangeRequest,
    responses((status = 200, description = "the email changed", body = EmailChanged)))]
fn change_email() {}

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path)),
    responses((status = 200, description = "deleted; the email is free again", body = CommandDone)))]
fn delete_user() {}

#[utoipa::path(post, path = "/v1/users/{id}/activation-email", tag = "users",
    params(("id" = String, Path)),
    responses((status = 202, description = "a new activation email is requested", body = CommandDone)))]
fn resend_activation() {}

#[utoipa::path(get, path = "/v1/consumers", tag = "consumers",
    responses((status = 200, description = "every consumer with its latest checkpoint", body = Consumers)))]
fn consumers() {}

#[utoipa::path(get, path = "/v1/consumers/{name}/checkpoint", tag = "consumers",
    params(("name" = String, Path), ConsistencyQuery),
    responses((status = 200, description = "the consumer's latest checkpoint", body = Checkpoint)))]
fn checkpoint() {}

#[utoipa::path(post, path = "/v1/auth/stream-token", tag = "auth",
    responses((status = 200, description = "a short-lived token for the event stream", body = StreamToken)))]
fn stream_token() {}

#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth",
    responses((status = 200, description = "the presented token's role and topics", body = Whoami)))]
fn whoami() {}

#[utoipa::path(get, path = "/health", tag = "cluster",
    responses((status = 200, description = "the process serves", body = Health)))]
fn health() {}

#[utoipa::path(get, path = "/ready", tag = "cluster",
    responses((status = 200, description = "a leader is known and this node applied its commit index", body = Ready)))]
fn ready() {}

#[utoipa::path(get, path = "/openapi.json", tag = "cluster",
    responses((status = 200, description = "this document", body = Object)))]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/backup", tag = "cluster",
    responses((status = 200, description = "a consistent backup of this node's applied state \
        (a snapshot file: format byte, per-record CRC-32C); `x-uniqlog-backup-index` is its \
        last log index, `x-uniqlog-backup-crc32c` the CRC-32C of the whole body",
        content_type = "application/octet-stream", body = Vec<u8>)))]
fn backup() {}

#[utoipa::path(get, path = "/v1/conflicts/recent", tag = "cluster",
    responses((status = 200, description = "the latest conflicts (409) this node answered, newest \
        first (`{conflicts: [{at_ms, route, error, message, ...details}]}`; in memory, at most 50)",
        body = Object)))]
fn recent_conflicts() {}

#[utoipa::path(get, path = "/v1/uniq", tag = "uniq",
    responses((status = 200, description = "the uniq sets of the rules in force, each with \
        the number of keys owned", body = Sets)))]
fn uniq_sets() {}

#[utoipa::path(get, path = "/v1/cluster/nodes", tag = "cluster",
    responses((status = 200, description = "this node's status and every other member's \
        (`{nodes: [{id, status} | {id, error}]}`)", body = Object)))]
fn nodes() {}

#[utoipa::path(get, path = "/ui", tag = "dashboard",
    responses((status = 200, description = "the dashboard", content_type = "text/html", body = String)))]
fn ui() {}

#[utoipa::path(get, path = "/ui/app.js", tag = "dashboard",
    responses((status = 200, description = "the dashboard's script", content_type = "text/javascript", body = String)))]
fn ui_js() {}

#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 303, description = "to the dashboard, `/ui`")))]
fn root() {}

#[utoipa::path(get, path = "/ui/style.css", tag = "dashboard",
    responses((status = 200, description = "the dashboard's styles", content_type = "text/css", body = String)))]
fn ui_css() {}

#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text format",
        content_type = "application/openmetrics-text", body = String)))]
fn metrics() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "uniqlog node API",
        description = "A Raft-replicated event log with replicated uniqueness constraints."
    ),
    paths(
        topics,
        append,
        read,
        stream,
        stream_events,
        status,
        init,
        add_learner,
        change_membership,
        set_rules,
        get_rules,
        owner,
        history,
        signup,
        activate,
        change_email,
        delete_user,
        resend_activation,
        consumers,
        checkpoint,
        stream_token,
        whoami,
        health,
        ready,
        openapi_json,
        metrics,
        backup,
        nodes,
        uniq_sets,
        recent_conflicts,
        ui,
        ui_js,
        ui_css,
        root
    ),
    components(schemas(
        ErrorDoc,
        EventBody,
        Event,
        Topic,
        Checkpoint,
        Member,
        IdempotencyStatus
    ))
)]
struct NodeApi;

/// The document, built once.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(build)
}

/// The statuses of error answers, and what they mean. Every operation may answer these:
/// a route's own handler, the extractors, auth and overload control all share them.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "invalid input: `invalid_request`, `validation` with `fields`, ...",
    ),
    ("401", "no or wrong token"),
    (
        "403",
        "the token's role is too low, or the topic outside its topics; or, on a loopback node \
         with auth off, a `Host` that is not a loopback name",
    ),
    ("404", "no such route, key, user or consumer"),
    ("405", "method not allowed"),
    (
        "408",
        "`request_timeout`: the body did not arrive within `request_timeout_ms`",
    ),
    (
        "409",
        "a conflict: uniq key taken, stream version, email taken, ...",
    ),
    ("413", "body larger than `body_bytes_max`"),
    ("415", "content type is not application/json"),
    (
        "429",
        "`overloaded` (writes queued, connections or streams open) or `rate_limited` \
         (anonymous requests per client, activation emails per account): retry after \
         `Retry-After` seconds",
    ),
    ("500", "this node's storage is damaged"),
    (
        "503",
        "`unavailable` (safe to retry), `outcome_unknown` or `not_yet_applied`",
    ),
];

fn build() -> Spec {
    let mut spec = NodeApi::openapi();
    document_errors(&mut spec, ERRORS);
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components.add_security_scheme(
        "basic",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
    );
    for (path, item) in spec.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            let access = ROUTES
                .iter()
                .find(|r| r.method == method && r.path == path)
                .map(|r| r.access);
            op.security = Some(match access {
                Some(Access::Public) | None => vec![SecurityRequirement::default()],
                // Anonymous when the config opens sign-up, else a token with `write`.
                Some(Access::Users { anonymous: true }) => vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("token", Vec::<String>::new()),
                    SecurityRequirement::new("basic", Vec::<String>::new()),
                ],
                Some(
                    Access::Role(_)
                    | Access::Append
                    | Access::ReadTopic
                    | Access::Users { anonymous: false },
                ) => vec![
                    SecurityRequirement::new("token", Vec::<String>::new()),
                    SecurityRequirement::new("basic", Vec::<String>::new()),
                ],
            });
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The CLI reads a status leniently (fields added later default), but a node always sends
    /// them: the document keeps them required.
    #[test]
    fn status_fields_a_reader_may_default_stay_required() {
        let json = serde_json::to_value(spec()).unwrap();
        let required = &json["components"]["schemas"]["ClusterStatus"]["required"];
        for field in ["rules_version", "idempotency", "id", "role"] {
            assert!(
                required
                    .as_array()
                    .is_some_and(|r| r.iter().any(|f| f == field)),
                "{field} not required: {required}"
            );
        }
    }

    /// Every schema the document refers to is in it: an answer type's nested types too.
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.insert(r.to_string());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let json = serde_json::to_value(spec()).unwrap();
        let mut found = BTreeSet::new();
        refs(&json, &mut found);
        assert!(found.contains("#/components/schemas/Claim"), "{found:?}");
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a schema ref");
            assert!(
                json["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn the_document_has_exactly_the_routes_of_the_route_table() {
        let mut spec = spec().clone();
        let documented: BTreeSet<(String, String)> = spec
            .paths
            .paths
            .iter_mut()
            .flat_map(|(path, item)| {
                operations_mut(item)
                    .map(|(m, _)| (m.to_string(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn every_operation_documents_the_error_shape_and_its_security() {
        let json = serde_json::to_value(spec()).unwrap();
        assert_eq!(json["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let append = &json["paths"]["/v1/topics/{topic}/events"]["post"];
        assert!(append["responses"]["201"].is_object());
        assert_eq!(
            append["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorDoc"
        );
        assert_eq!(append["security"][0]["token"], serde_json::json!([]));
        assert_eq!(
            json["paths"]["/health"]["get"]["security"],
            serde_json::json!([{}])
        );
        // The request body is the wire type, strict as its parser.
        let body = &json["components"]["schemas"]["AppendBody"];
        assert_eq!(body["additionalProperties"], false, "{body}");
    }
}
