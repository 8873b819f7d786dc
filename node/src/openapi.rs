//! The OpenAPI 3 description of the client API, served at `GET /openapi.json`.
//!
//! Request and answer bodies are the contract's types themselves (`ToSchema` derived next to
//! their serde attributes, in `api`), so the document cannot drift from what the node parses
//! and answers. Each route's operation is declared with the route, in the route table
//! (`crate::router`), which makes the paths; this adds what every route shares: the error
//! answers (the error shape, with the statuses `error.rs` can produce) and each route's
//! security (from its `Access`), so no route can be documented with the wrong ones.
//! schemathesis checks every answer against the document (`scripts/schemathesis.sh`).

use std::sync::OnceLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi as Spec;
use utoipa::OpenApi;

use crate::auth::Access;
use crate::router::{RouteDocs, ROUTES};
use crate::wire::{Event, EventBody, IdempotencyStatus, Member, TableHash, Topic};
use api::checkpoints::Checkpoint;
use api::error::ErrorBody;
use api::openapi::{document_errors, operations_mut};

/// The answers and bodies the route table's operations name (`crate::router`).
pub(crate) mod shapes {
    pub use crate::wire::{
        AddLearnerBody, AppendBody, AppendCreated, ClusterStatus, Health, Initialized, LogIndex,
        MembershipBody, Nodes, Page, Ready, RecentConflicts, StateHash, StreamToken, Topics,
        Whoami,
    };
    pub use api::checkpoints::{Checkpoint, Consumers};
    pub use api::uniq::{History, Owner, RulesVersion, Sets};
    pub use api::users::commands::{
        CommandDone, EmailChangeRequest, EmailChanged, SignedUp, SignupRequest,
    };
    pub use raft_store::rules::Rules;

    pub use crate::routes::uniq::RulesInForce;
}

/// The query parameters the route table's operations name: the handlers' own.
pub(crate) mod params {
    pub use crate::routes::consumers::CheckpointParams;
    pub use crate::routes::log::{ReadParams, StreamParams};
    pub use crate::users::ActivateParams;
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "uniqlog node API",
        description = "A Raft-replicated event log with replicated uniqueness constraints."
    ),
    components(schemas(
        ErrorBody,
        EventBody,
        Event,
        Topic,
        Checkpoint,
        Member,
        IdempotencyStatus,
        TableHash
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
    spec.merge(RouteDocs::openapi());
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

    /// The route table makes both the router and the paths, so this guards what is built on
    /// top: the merge of `RouteDocs` into the document, and the security set per route.
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
            "#/components/schemas/ErrorBody"
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
