//! The accept loop: hyper's `serve_connection` around the axum Router, with a header-read
//! timeout so a slow client cannot hold a connection. `axum::serve` installs no such timer
//! and needs the real tokio runtime; this loop runs in production and under madsim alike.
//! With a [`ServerTls`] every connection is TLS (real builds only, see `crate::tls`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::ApiError;

use crate::tls::ServerTls;

/// The address of the client a request came from, put into every request by the accept loop
/// (axum's `ConnectInfo` is tied to `axum::serve`, which this loop replaces).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// hyper's timer over `tokio::time` (madsim's clock in simulation).
#[derive(Clone, Debug, Default)]
pub struct RtTimer;

struct RtSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for RtSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for RtSleep {}

impl hyper::rt::Timer for RtTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(RtSleep(Box::pin(tokio::time::sleep(duration))))
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Serve `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router, header_read_timeout: Duration) {
    serve_with(listener, router, header_read_timeout, None, None).await
}

/// Serve `router` on `listener`, over TLS only when `tls` is given. The TLS handshake gets
/// `header_read_timeout` too; a connection whose handshake fails or stalls is closed and
/// logged at debug level, and never affects the others.
///
/// With a [`ConnectionCap`], connections past its `max` still get served, but only on
/// `/health`, `/ready` and the paths it exempts: every other request is answered 429 with
/// `Retry-After` and the connection is closed. Refusing at accept would also refuse a peer
/// that shares the client address, and client limits never apply to peers.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    tls: Option<ServerTls>,
    cap: Option<ConnectionCap>,
) {
    let slots = cap.map(|c| Arc::new(Semaphore::new(c.max)));
    let exempt = cap.map_or(no_path as fn(&str) -> bool, |c| c.exempt);
    let over_cap = router
        .clone()
        .layer(axum::middleware::from_fn(move |req, next| {
            exempt_only(exempt, req, next)
        }));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::debug!(%peer, "connection over connections_max: peer routes only");
                    None
                }
            },
        };
        let routes = if slots.is_some() && slot.is_none() {
            over_cap.clone()
        } else {
            router.clone()
        };
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            routes,
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            },
        ));
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    serve_connection(
                        crate::transport::flush_after_write(stream),
                        service,
                        header_read_timeout,
                    )
                    .await
                }
                Some(tls) => match tls.accept(stream, header_read_timeout).await {
                    Ok(stream) => serve_connection(stream, service, header_read_timeout).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
}

/// A cap on a listener's connections, and the paths still served past it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCap {
    pub max: usize,
    /// Paths served on connections over the cap, besides `/health` and `/ready` (the node's
    /// peer routes: peers are never refused by a client limit).
    pub exempt: fn(&str) -> bool,
}

fn no_path(_: &str) -> bool {
    false
}

/// The middleware of a connection over the cap.
async fn exempt_only(exempt: fn(&str) -> bool, req: Request, next: Next) -> Response {
    // A supervisor probing a busy node must not take it for a dead one.
    let path = req.uri().path();
    if exempt(path) || path == "/health" || path == "/ready" {
        return next.run(req).await;
    }
    let mut resp = ApiError::overloaded(
        "too many connections to this node; retry after a moment, or use another node",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn serve_connection<S, R>(
    stream: S,
    service: TowerToHyperService<R>,
    header_read_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    R::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(RtTimer)
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        // A peer's append route hands its connection over to a link (`crate::link`).
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
