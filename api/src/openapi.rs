//! What both servers' OpenAPI documents share: the error answer every route may give.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi as Spec, RefOr, Response, ResponseBuilder};
use utoipa::PartialSchema;

use crate::error::ErrorBody;

/// The operations of a path, with their methods.
pub fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("GET", &mut item.get),
        ("POST", &mut item.post),
        ("PATCH", &mut item.patch),
        ("DELETE", &mut item.delete),
        ("PUT", &mut item.put),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_mut().map(|op| (method, op)))
}

/// Add the error answers `errors` (status, meaning) to every operation of `spec`, each with
/// the error shape, which this registers as the schema `ErrorBody`. The query API's document
/// uses it too: both processes answer errors through `ApiError`.
pub fn document_errors(spec: &mut Spec, errors: &[(&str, &str)]) {
    let components = spec.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert("ErrorBody".into(), ErrorBody::schema());
    let error = ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ErrorBody",
        ))))
        .build();
    for item in spec.paths.paths.values_mut() {
        for (_, op) in operations_mut(item) {
            for (status, description) in errors {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| {
                        RefOr::T::<Response>(
                            ResponseBuilder::new()
                                .description(*description)
                                .content("application/json", error.clone())
                                .build(),
                        )
                    });
            }
        }
    }
}
