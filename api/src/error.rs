//! The one error type of the HTTP boundary and the one place that maps it to status codes.
//!
//! Every error answer has the shape `{"error": code, "message": ..., "retryable": bool,
//! ...details}`. `status()` is an exhaustive match with no catch-all arm, so a new kind of
//! error cannot silently become a 400 or a 500.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input that is not about one named field.
    #[error("{message}")]
    BadRequest { message: String },
    /// A query parameter above its limit; the limit is in the details, so a client (a
    /// consumer's tailer) can ask again within it.
    #[error("{param} must be at most {max}")]
    OverLimit { param: &'static str, max: u64 },
    /// Field-level validation errors, all at once.
    #[error("invalid fields")]
    Validation { fields: BTreeMap<String, String> },
    #[error("stream {stream} belongs to topic {topic}")]
    StreamInOtherTopic { stream: String, topic: String },
    #[error("{message}")]
    NotFound { message: String },
    /// No or wrong credentials (a token, or a peer's cluster secret).
    #[error("{message}")]
    Unauthorized { message: String },
    /// A peer RPC of another peer protocol version (`peer_protocol`).
    #[error("{message}")]
    PeerProtocol { message: String },
    /// A valid token whose role is too low.
    #[error("{message}")]
    Forbidden { message: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    VersionConflict {
        stream: String,
        expected: String,
        actual: u64,
    },
    #[error("key {key:?} of uniq set {set} is taken")]
    UniqConflict { set: String, key: String },
    #[error("key {key:?} of uniq set {set} is not owned by this stream")]
    UniqNotOwner { set: String, key: String },
    #[error("events already in the topic violate uniq set {set} at key {key:?}")]
    RulesViolated { set: String, key: String },
    #[error("this email address is already taken")]
    EmailTaken,
    #[error("the account is already active")]
    AlreadyActive,
    #[error("idempotency key {key:?} was already used for a different request in this topic")]
    IdempotencyKeyReused { key: String },
    #[error("request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Not applied, retry is safe.
    #[error("{message}")]
    Unavailable { message: String },
    /// Too much work queued on this node (429): refused before anything was proposed, so
    /// retrying later is safe. Answered with `Retry-After`.
    #[error("{message}")]
    Overloaded { message: String },
    /// One client sent more anonymous requests than it may (429): nothing was done; retry
    /// after `retry_after_s`.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    /// The request (its body included) did not arrive within `request_timeout_ms`: nothing
    /// was done.
    #[error("{message}")]
    RequestTimeout { message: String },
    /// May or may not have been applied.
    #[error("{message}")]
    OutcomeUnknown { message: String },
    /// A bounded wait for an offset or index ran out.
    #[error("{message}")]
    NotYetApplied { message: String },
    /// This node's own storage or Raft failed: not the client's fault.
    #[error("{message}")]
    Internal { message: String },
    /// An error answered by the leader to a forwarded request, passed through as it was.
    #[error("{}", body.message)]
    Forwarded { status: u16, body: ErrorBody },
}

/// Every error answer: a code, a message, whether retrying may help, and details that depend
/// on the code (`fields` of a validation error, the `set` and `key` of a uniq conflict, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid_request`, `validation`, `uniq_conflict`, `overloaded`, `unavailable`, ...
    pub error: String,
    pub message: String,
    pub retryable: bool,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

/// A 409's body, attached to the response by `ApiError::into_response` (the node lists
/// recent ones for its dashboard).
#[derive(Clone, Debug)]
pub struct ConflictSeen(pub ErrorBody);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
        }
    }
    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError::Overloaded {
            message: message.into(),
        }
    }

    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        ApiError::OutcomeUnknown {
            message: message.into(),
        }
    }
    pub fn internal(message: impl ToString) -> Self {
        ApiError::Internal {
            message: message.to_string(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound {
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::OverLimit { .. }
            | ApiError::Validation { .. }
            | ApiError::StreamInOtherTopic { .. }
            | ApiError::IdempotencyKeyReused { .. }
            | ApiError::PeerProtocol { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::VersionConflict { .. }
            | ApiError::UniqConflict { .. }
            | ApiError::UniqNotOwner { .. }
            | ApiError::RulesViolated { .. }
            | ApiError::EmailTaken
            | ApiError::AlreadyActive => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. }
            | ApiError::OutcomeUnknown { .. }
            | ApiError::NotYetApplied { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Overloaded { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Forwarded { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } | ApiError::OverLimit { .. } => "invalid_request",
            ApiError::Validation { .. } => "validation",
            ApiError::StreamInOtherTopic { .. } => "stream_in_other_topic",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::PeerProtocol { .. } => "peer_protocol_mismatch",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::VersionConflict { .. } => "version_conflict",
            ApiError::UniqConflict { .. } => "uniq_conflict",
            ApiError::UniqNotOwner { .. } => "uniq_not_owner",
            ApiError::RulesViolated { .. } => "rules_violated",
            ApiError::EmailTaken => "email_taken",
            ApiError::AlreadyActive => "already_active",
            ApiError::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::NotYetApplied { .. } => "not_yet_applied",
            ApiError::Internal { .. } => "internal",
            ApiError::Forwarded { .. } => "forwarded",
        }
    }

    /// Whether repeating the same request is safe and may succeed.
    fn retryable(&self) -> bool {
        match self {
            ApiError::Unavailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::RateLimited { .. }
            | ApiError::RequestTimeout { .. }
            | ApiError::NotYetApplied { .. } => true,
            ApiError::Forwarded { body, .. } => body.retryable,
            ApiError::BadRequest { .. }
            | ApiError::OverLimit { .. }
            | ApiError::Validation { .. }
            | ApiError::StreamInOtherTopic { .. }
            | ApiError::NotFound { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::PeerProtocol { .. }
            | ApiError::Forbidden { .. }
            | ApiError::MethodNotAllowed
            | ApiError::VersionConflict { .. }
            | ApiError::UniqConflict { .. }
            | ApiError::UniqNotOwner { .. }
            | ApiError::RulesViolated { .. }
            | ApiError::EmailTaken
            | ApiError::AlreadyActive
            | ApiError::IdempotencyKeyReused { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType
            | ApiError::OutcomeUnknown { .. }
            | ApiError::Internal { .. } => false,
        }
    }

    pub fn body(&self) -> ErrorBody {
        if let ApiError::Forwarded { body, .. } = self {
            return body.clone();
        }
        let details = match self {
            ApiError::Validation { fields } => json!({ "fields": fields }),
            ApiError::StreamInOtherTopic { stream, topic } => {
                json!({ "stream": stream, "topic": topic })
            }
            ApiError::VersionConflict {
                stream,
                expected,
                actual,
            } => json!({ "stream": stream, "expected": expected, "actual": actual }),
            ApiError::UniqConflict { set, key }
            | ApiError::UniqNotOwner { set, key }
            | ApiError::RulesViolated { set, key } => json!({ "set": set, "key": key }),
            ApiError::IdempotencyKeyReused { key } => json!({ "idempotency_key": key }),
            ApiError::PayloadTooLarge { limit_bytes } => json!({ "limit_bytes": limit_bytes }),
            ApiError::OverLimit { param, max } => json!({ "param": param, "max": max }),
            ApiError::RateLimited { retry_after_s, .. } => {
                json!({ "retry_after_s": retry_after_s })
            }
            _ => json!({}),
        };
        let Value::Object(details) = details else {
            unreachable!("details are objects")
        };
        ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
            retryable: self.retryable(),
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let conflict = (status == StatusCode::CONFLICT).then(|| body.clone());
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(body) = conflict {
            resp.extensions_mut().insert(ConflictSeen(body));
        }
        let busy =
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
        if let ApiError::RateLimited { retry_after_s, .. } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        } else if busy && self.retryable() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
