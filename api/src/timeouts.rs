//! Request deadlines of client listeners. hyper's header-read timeout bounds how long a client
//! may take to send its headers; this bounds the rest: the body must arrive within
//! `request_timeout_ms` of the request's start (408 otherwise, and nothing was done), and the
//! whole request is answered within that plus what the route waits on purpose (a long-poll's
//! `wait_ms`). A slow client can therefore hold a connection only for a bounded time.
//!
//! Streaming answers (server-sent events, a backup) are bounded here only until their head;
//! the number of streams is capped elsewhere (`App::streams`).

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::error::ApiError;

/// When the body of a request must have arrived, for [`crate::extract::JsonBody`].
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Instant);

/// The deadlines of one listener's routes.
#[derive(Debug, Clone)]
pub struct RequestTimeouts {
    pub request: Duration,
    /// Routes (method, matched path) that may take longer on purpose, and how much longer.
    pub waits: Vec<(Method, &'static str, Duration)>,
}

impl RequestTimeouts {
    /// Set `req`'s body deadline; returns how long the whole request may take (`route`: the
    /// matched route).
    pub fn arm(&self, req: &mut Request, route: Option<&str>) -> Duration {
        req.extensions_mut()
            .insert(BodyDeadline(Instant::now() + self.request));
        self.budget(req.method(), route)
    }

    fn budget(&self, method: &Method, path: Option<&str>) -> Duration {
        let extra = self
            .waits
            .iter()
            .find(|(m, p, _)| m == method && Some(*p) == path)
            .map_or(Duration::ZERO, |(_, _, d)| *d);
        self.request + extra
    }
}

/// Middleware: set the body deadline and bound the whole request. (The client routes do the
/// same inside their one middleware, `crate::edge`.)
pub async fn bound(
    State(timeouts): State<std::sync::Arc<RequestTimeouts>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let budget = timeouts.arm(&mut req, route.as_ref().map(MatchedPath::as_str));
    let method = req.method().clone();
    within(budget, &method, next.run(req)).await
}

/// `answer`, or the error that says it took longer than `budget`.
pub async fn within(
    budget: Duration,
    method: &Method,
    answer: impl std::future::Future<Output = Response>,
) -> Response {
    let reads_only = method == Method::GET || method == Method::HEAD;
    match tokio::time::timeout(budget, answer).await {
        Ok(resp) => resp,
        Err(_) if reads_only => ApiError::unavailable(format!(
            "the request took longer than its {} ms",
            budget.as_millis()
        ))
        .into_response(),
        // The body had arrived (that has its own deadline), so the command may be under way.
        Err(_) => ApiError::outcome_unknown(format!(
            "the request took longer than its {} ms; it may or may not have been applied: \
             retry with the same idempotency key",
            budget.as_millis()
        ))
        .into_response(),
    }
}

/// Read a body of at most `limit` bytes by `deadline` (none: no deadline).
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    deadline: Option<BodyDeadline>,
) -> Result<axum::body::Bytes, ApiError> {
    let read = axum::body::to_bytes(body, limit);
    let bytes = match deadline {
        None => read.await,
        Some(BodyDeadline(at)) => {
            let left = at.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, read)
                .await
                .map_err(|_| ApiError::RequestTimeout {
                    message: "the request body did not arrive in time (request_timeout_ms)".into(),
                })?
        }
    };
    bytes.map_err(|_| ApiError::PayloadTooLarge { limit_bytes: limit })
}
