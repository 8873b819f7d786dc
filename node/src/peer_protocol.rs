//! The peer protocol version: every peer RPC (Raft and forwarding) names the version of the
//! messages it carries, and a node refuses any other.
//!
//! Peer messages are openraft's types and our forwarded operations (both binary,
//! `raft_store::codec`), and the log entries inside them decide what apply does. A node of another build could decode them
//! differently, or apply the same entry to a different result, and the replicas would diverge
//! without an error. A build that changes the meaning or shape of a peer message, or what apply
//! does with an entry, bumps [`VERSION`]; the refusal is then loud and immediate. Rolling
//! upgrades between builds of the same version are safe (see docs/operating.md, Upgrades).

use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use api::error::ApiError;
use api::transport::HttpRequest;

/// The peer protocol this build speaks. 2: log entries in a binary encoding. 3: Raft
/// messages and forwarded operations in that encoding too (2 sent them as JSON). 4: a Raft
/// RPC's error travels as JSON text inside the binary answer (`peer::rpc_answer`). 5: apply
/// writes a key's history row when the key is released, not when it is claimed (issue 25
/// step 6): the state files of two builds would differ, and an older node would read no
/// current owner in the history of a key claimed by a newer one; and a forwarded operation
/// names the term its sender saw the leader in (`App::leads_term`). 6: appends travel on a
/// link, a connection upgraded from `GET /raft/append` to a stream of frames (`api::link`),
/// not one `POST` each. 7: apply writes state format 3 (one run per entry and topic, a
/// stream's first offset in `stream_heads`), so two builds' state files would differ, and a
/// snapshot carries `stream_heads` rows, which an older node cannot install.
pub const VERSION: u32 = 7;

pub const HEADER: HeaderName = HeaderName::from_static("x-uniqlog-peer-protocol");

/// Name this build's protocol version on an outgoing peer request.
pub fn stamp(req: &mut HttpRequest) {
    req.headers.push((HEADER, VERSION.to_string()));
}

/// Middleware of the peer routes: a request without this build's version gets 400
/// `peer_protocol_mismatch` naming both versions, and a line in the log.
pub async fn require(req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    if presented.as_deref() == Some(VERSION.to_string().as_str()) {
        return next.run(req).await;
    }
    let theirs = presented.unwrap_or_else(|| "none".into());
    tracing::error!(
        path = %req.uri().path(),
        theirs = %theirs,
        ours = VERSION,
        "refused a peer speaking another protocol version: run the same uniqlog build on every node"
    );
    ApiError::PeerProtocol {
        message: format!(
            "this node speaks peer protocol {VERSION}, the request {}; every node of a cluster \
             must run a build of the same peer protocol version",
            if theirs == "none" {
                "names none".to_string()
            } else {
                format!("peer protocol {theirs}")
            }
        ),
    }
    .into_response()
}
