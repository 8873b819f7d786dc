//! The OpenAPI 3 description of the query API, served by `uniqlog query` at
//! `GET /openapi.json`. Built like the node's: each route's operation is declared with the
//! route (`routes::ROUTES`), the shared error answers are added from code.

use std::sync::OnceLock;

use utoipa::openapi::OpenApi as Spec;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "uniqlog query API",
    description = "The users read model, kept by `uniqlog query` from the `users` topic."
))]
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
        spec.merge(super::routes::RouteDocs::openapi());
        api::openapi::document_errors(&mut spec, ERRORS);
        spec
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_exactly_the_served_paths() {
        let mut documented: Vec<&str> = spec().paths.paths.keys().map(String::as_str).collect();
        let mut served: Vec<&str> = super::super::routes::ROUTES.iter().map(|r| r.0).collect();
        documented.sort_unstable();
        served.sort_unstable();
        assert_eq!(documented, served);
        assert!(spec().paths.paths.values().all(|i| i.get.is_some()));
    }
}
