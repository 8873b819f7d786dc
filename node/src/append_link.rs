//! The follower's end of a leader's append link (`api::link`): the route that accepts the
//! upgrade, then a loop that hands each append to Raft and answers it on the same connection.
//!
//! The upgrade request passes the peer routes' layers (cluster secret, peer protocol) like any
//! peer request, so a link is open only to a peer that may call `/raft/append`.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use openraft::raft::AppendEntriesRequest;
use raft_store::TypeConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::app::SharedApp;
use crate::metrics::rpc_kind;
use crate::peer::rpc_answer_body;
use api::error::ApiError;
use api::link::PEER_BODY_BYTES_MAX;
use api::link::{write_frame, FrameReader, UPGRADE_PROTOCOL};
use api::server::ClientAddr;

/// A link with no append for this long is closed. A leader sends heartbeats many times a
/// second; a link this quiet lost its leader without a goodbye (a crash, a partition), and
/// would otherwise hold a task and a socket for good.
const IDLE_MAX: Duration = Duration::from_secs(30);

/// `GET /raft/append` with `Upgrade: uniqlog-link`: switch the connection to a link.
pub(crate) async fn open(State(app): State<SharedApp>, mut req: Request) -> Response {
    let asks = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())
    });
    if !asks {
        return ApiError::bad_request(format!(
            "appends travel on a link: send Connection: upgrade and Upgrade: {UPGRADE_PROTOCOL}"
        ))
        .into_response();
    }
    let peer = req.extensions().get::<ClientAddr>().map(|a| a.0);
    let upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::debug_span!("append_link", peer = ?peer);
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(io) => serve(app, TokioIo::new(io)).await,
                Err(e) => tracing::debug!(error = %e, "the link upgrade did not complete"),
            }
        }
        .instrument(span),
    );
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    resp
}

/// Answer the appends of one link until the leader closes it, it goes quiet, or this node's
/// Raft stops. A frame that does not decode ends the link: a peer of this build never sends
/// one, so the link is not one to trust further.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(app: SharedApp, mut io: S) {
    let mut reader = FrameReader::default();
    loop {
        let frame =
            match tokio::time::timeout(IDLE_MAX, reader.next(&mut io, PEER_BODY_BYTES_MAX)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "append link broken");
                    return;
                }
                Err(_) => {
                    tracing::debug!("append link idle: closed");
                    return;
                }
            };
        let req: AppendEntriesRequest<TypeConfig> = match raft_store::codec::decode(&frame) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(error = %e, "closed an append link that sent a frame that is not an append");
                return;
            }
        };
        let kind = rpc_kind("append", req.entries.len());
        let started = Instant::now();
        let answer = app.raft.append_entries(req).await;
        app.metrics.raft_path.handled(kind, started.elapsed());
        let stopped = matches!(answer, Err(openraft::error::RaftError::Fatal(_)));
        if write_frame(&mut io, &rpc_answer_body(answer))
            .await
            .is_err()
            || stopped
        {
            return;
        }
    }
}
