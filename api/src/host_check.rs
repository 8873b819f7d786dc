//! DNS rebinding guard of loopback listeners with auth off. A page in the operator's browser
//! can point a name it controls at 127.0.0.1 and then read the node through it as if it were
//! its own origin; the browser still sends that name in `Host`. A listener that trusts
//! everyone who can reach it (loopback, no tokens) therefore answers only requests addressed
//! to a loopback name: `localhost` or a loopback IP. Requests without `Host` (HTTP/1.0 tools)
//! are not from a browser and pass.

use axum::extract::Request;
use axum::http::header::HOST;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Whether a `Host` value names this machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:7001`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: 403 for a request whose `Host` is not a loopback name.
pub async fn loopback_hosts_only(req: Request, next: Next) -> Response {
    let host = req.headers().get(HOST).map(|h| h.to_str().unwrap_or("?"));
    match host {
        Some(h) if !is_loopback_host(h) => ApiError::Forbidden {
            message: format!(
                "this node listens on loopback with auth off and answers only requests for \
                 localhost or a loopback address, not {h:?} (a page in a browser may be \
                 trying to reach it through DNS rebinding)"
            ),
        }
        .into_response(),
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass() {
        for ok in [
            "localhost",
            "localhost:7001",
            "LOCALHOST.:7001",
            "127.0.0.1",
            "127.0.0.1:7001",
            "127.3.4.5:1",
            "[::1]:7001",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7001",
            "localhost.evil.example:7001",
            "10.0.0.1:7001",
            "[2001:db8::1]:7001",
            "127.0.0.1.nip.io:7001",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
