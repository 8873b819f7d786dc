//! What storage and apply report, as the errors clients get: the one mapping from
//! `raft-store`'s errors to `ApiError` (whose variants `api::error` maps to HTTP statuses).

use api::ApiError;
use raft_store::{Conflict, Rejection, StoreError};

/// An error of storage or apply, as a client's error.
pub trait IntoApiError {
    fn into_api(self) -> ApiError;
}

/// For `map_err`.
pub fn api_error<E: IntoApiError>(e: E) -> ApiError {
    e.into_api()
}

/// A storage error on this node: 503 when the disk failed (the node stops serving once Raft
/// notices, and must be restarted; another node can answer), 500 for damaged or unreadable
/// records (the node stops too: the damaged data is never served).
impl IntoApiError for StoreError {
    fn into_api(self) -> ApiError {
        let e = self;
        match e {
            StoreError::Redb(_)
            | StoreError::Io(_)
            | StoreError::Stopped
            | StoreError::Retry
            | StoreError::EntryMissing { .. } => ApiError::unavailable(format!(
                "this node's storage failed ({e}); it stops serving: ask another node"
            )),
            StoreError::Corrupt { .. } | StoreError::DamagedFile { .. } => ApiError::internal(
                format!("this node found damaged data ({e}); it stops serving: ask another node"),
            ),
            StoreError::Snapshot(_) | StoreError::Unsupported(_) | StoreError::Bug { .. } => {
                ApiError::internal(e)
            }
        }
    }
}

/// Replicated conflicts (409) as HTTP errors. The owner of a taken key is not disclosed.
impl IntoApiError for Conflict {
    fn into_api(self) -> ApiError {
        let c = self;
        match c {
            Conflict::Version {
                stream,
                expected,
                actual,
            } => ApiError::VersionConflict {
                stream,
                expected: expected.to_string(),
                actual,
            },
            Conflict::Uniq { set, key, .. } => ApiError::UniqConflict { set, key },
            Conflict::UniqNotOwner { set, key, .. } => ApiError::UniqNotOwner { set, key },
            Conflict::RulesViolated { set, key } => ApiError::RulesViolated { set, key },
        }
    }
}

/// Replicated rejections as HTTP errors. `RulesChanged` is normally retried before it gets
/// here; if it does, the request was not applied and may be sent again.
impl IntoApiError for Rejection {
    fn into_api(self) -> ApiError {
        let r = self;
        match r {
            Rejection::StreamInOtherTopic { stream, topic } => {
                ApiError::StreamInOtherTopic { stream, topic }
            }
            Rejection::InvalidEvent { index, reason } => {
                ApiError::bad_request(format!("events[{index}]: {reason}"))
            }
            Rejection::IdempotencyKeyReused { key } => ApiError::IdempotencyKeyReused { key },
            Rejection::RulesChanged { current_version } => ApiError::unavailable(format!(
                "the uniq rules changed (now version {current_version}) while the request was prepared"
            )),
        }
    }
}
