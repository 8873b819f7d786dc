//! Extractors whose rejections come out in the project's error shape, not as plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: `application/json` (415 otherwise), at most `body_bytes_max` (413), arrived
/// by the request's body deadline (408, [`crate::timeouts`]), parsed strictly into `T` (400
/// with serde's message: unknown fields, duplicate keys, bad types).
pub struct JsonBody<T>(pub T);

/// Router states that bound request bodies.
pub trait BodyLimit {
    fn body_bytes_max(&self) -> usize;
}

impl<T: BodyLimit> BodyLimit for std::sync::Arc<T> {
    fn body_bytes_max(&self) -> usize {
        (**self).body_bytes_max()
    }
}

impl<T: DeserializeOwned, S: BodyLimit + Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.body_bytes_max();
        let deadline = req
            .extensions()
            .get::<crate::timeouts::BodyDeadline>()
            .copied();
        let bytes = crate::timeouts::read_body(req.into_body(), limit, deadline).await?;
        // Maps in a body (`expected_version`) would otherwise keep the last of two equal keys.
        if let Err(why) = std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(crate::json_check::unambiguous)
        {
            return Err(ApiError::bad_request(format!("invalid JSON body: {why}")));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query parameters parsed into `T`, rejections as 400 in the error shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters, rejections as 400 in the error shape.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// The `Idempotency-Key` header, if sent. An extractor of its own because `HeaderMap` as an
/// extractor copies every header of the request, on the path of every append.
pub struct IdempotencyKeyHeader(pub Option<axum::http::HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IdempotencyKeyHeader(
            parts.headers.get("idempotency-key").cloned(),
        ))
    }
}
