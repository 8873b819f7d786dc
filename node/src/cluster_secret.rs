//! The cluster secret: every peer RPC (Raft and forwarding) carries it, every node checks it.
//! A node with another secret cannot join, vote, append or install a snapshot.

use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::SharedApp;
use api::error::ApiError;
use api::transport::HttpRequest;

pub const HEADER: HeaderName = HeaderName::from_static("x-uniqlog-cluster-secret");

use api::secret::same_secret;

/// Add the secret to an outgoing peer request.
pub fn sign(req: &mut HttpRequest, secret: Option<&str>) {
    if let Some(s) = secret {
        req.headers.push((HEADER, s.to_string()));
    }
}

/// Middleware of the peer routes: without the right secret, 401 and a line in the log.
pub async fn require(State(app): State<SharedApp>, req: Request, next: Next) -> Response {
    let Some(expected) = app.settings.cluster_secret.as_deref() else {
        return next.run(req).await;
    };
    let presented = req.headers().get(HEADER).and_then(|v| v.to_str().ok());
    match presented {
        Some(p) if same_secret(p, expected) => next.run(req).await,
        _ => {
            tracing::warn!(path = %req.uri().path(), "refused a peer request without the right cluster secret");
            ApiError::Unauthorized {
                message: "peer RPC needs the cluster secret".into(),
            }
            .into_response()
        }
    }
}
