//! One id per client request, so an operator can follow it through the logs of every node it
//! touched: the node that received it and, for a write or a linearizable read on a follower,
//! the leader it was forwarded to.
//!
//! The id is the caller's `x-request-id` when that is a plain token (letters, digits, `-_.:`,
//! at most 64 characters), otherwise a fresh one: a correlation header is advisory, and one
//! that cannot be logged as it is gets replaced rather than failing the request. It is
//! answered in the same header, recorded on the `request` span that every log line of the
//! request carries, and sent along when the request is forwarded (`App::forward`).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The log target of the per-request lines: `RUST_LOG=info,uniqlog::request=debug` shows
/// every request, the default shows only those answered 5xx.
pub const TARGET: &str = "uniqlog::request";

const LEN_MAX: usize = 64;

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request this task serves, if it serves one.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

fn usable(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let plain = !s.is_empty()
        && s.len() <= LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| s.to_owned())
}

/// From the node's one random source, so a simulation seed replays.
fn fresh() -> String {
    format!(
        "{:016x}",
        rand::RngCore::next_u64(&mut crate::runtime::rng())
    )
}

pub async fn middleware(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(usable)
        .unwrap_or_else(fresh);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let started = std::time::Instant::now();
    let mut resp = CURRENT
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if status >= 500 {
            tracing::info!(target: TARGET, status, ms, "answered");
        } else {
            tracing::debug!(target: TARGET, status, ms, "answered");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_others_replaced() {
        let keep = |s: &str| usable(&HeaderValue::from_str(s).unwrap());
        assert_eq!(keep("abc-123_x.y:z").as_deref(), Some("abc-123_x.y:z"));
        assert_eq!(keep(&"a".repeat(64)).map(|s| s.len()), Some(64));
        assert_eq!(keep(&"a".repeat(65)), None);
        assert_eq!(keep(""), None);
        assert_eq!(keep("has space"), None);
        assert_eq!(keep("quote\"d"), None);
        assert_eq!(keep("new\tline"), None);
        assert_eq!(fresh().len(), 16);
    }
}
