//! The dashboard: `GET /ui` and its two assets, embedded in the binary (no build step, no
//! files to ship), and `GET /v1/cluster/nodes`, every member's own status in one answer.
//!
//! The page holds no data: it calls the client API from the browser with the token the user
//! gives it (kept in the tab's session storage), so it sees exactly what that token may see.
//! Its scripts and styles are separate files, so the page can forbid inline script (CSP).

use api::wire::{NodeView, Nodes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::value::RawValue;

use crate::app::SharedApp;
use api::error::ApiError;
use api::transport::HttpRequest;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// Peers answer this with their `ClusterStatus` (cluster secret and peer protocol apply).
pub const STATUS_PATH: &str = "/raft/status";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /v1/cluster/nodes` (read role): this node's status and each other member's, asked
/// over the peer route (a browser can only reach the node that served the page). A member
/// that does not answer is listed with the error.
pub async fn nodes(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    let own = crate::routes::cluster::cluster_status(&app).await?;
    let others: Vec<(u64, String)> = own
        .members
        .iter()
        .filter(|m| m.id != app.id)
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    let timeout =
        std::time::Duration::from_millis(app.settings.limits.request_timeout_ms.min(2000));
    let asked = others.iter().map(|(id, addr)| {
        let app = app.clone();
        async move {
            let mut req = HttpRequest::post(STATUS_PATH, b"{}".to_vec());
            crate::cluster_secret::sign(&mut req, app.settings.cluster_secret.as_deref());
            crate::peer_protocol::stamp(&mut req);
            let seen = match app.transport.send(addr, req, timeout).await {
                Ok(r) if r.status == 200 => {
                    serde_json::from_slice::<Box<RawValue>>(&r.body).map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("answered {}", r.status)),
                Err(e) => Err(e.to_string()),
            };
            NodeView {
                id: *id,
                error: seen.as_ref().err().cloned(),
                status: seen.ok(),
            }
        }
    });
    let mut nodes = vec![NodeView {
        error: None,
        id: app.id,
        status: Some(serde_json::value::to_raw_value(&own).map_err(ApiError::internal)?),
    }];
    nodes.extend(futures::future::join_all(asked).await);
    nodes.sort_by_key(|n| n.id);
    Ok(Json(Nodes { nodes }).into_response())
}
