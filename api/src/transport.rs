//! The HTTP client seam: peer RPC, forwarding to the leader, the CLI and consumers all send
//! requests through [`Transport`].
//!
//! [`HyperTransport`] is hyper's low-level client over `tokio::net::TcpStream`, which under
//! madsim is simulated TCP: the same client runs in production and in the simulator. Given a
//! [`ClientTls`] it speaks TLS to every address (real builds only, see `crate::tls`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::link::{IoLink, Opened, UPGRADE_PROTOCOL};
use crate::tls::ClientTls;

/// An HTTP answer, body fully read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
}

/// What went wrong sending a request. The distinction matters for writes: a request that
/// never reached the peer was certainly not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Could not connect: nothing was sent.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The deadline ran out; the request may have been received.
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The connection failed after the request started; it may have been received.
    #[error("connection to {addr} failed: {reason}")]
    Broken { addr: String, reason: String },
}

impl TransportError {
    /// True when the peer certainly did not receive the request.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, TransportError::Connect { .. })
    }
}

/// A method, a path (with query) and an optional JSON body.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: http::Method,
    pub path: String,
    pub body: Option<Bytes>,
    pub headers: Vec<(http::HeaderName, String)>,
}

impl HttpRequest {
    pub fn get(path: impl Into<String>) -> Self {
        HttpRequest {
            method: http::Method::GET,
            path: path.into(),
            body: None,
            headers: Vec::new(),
        }
    }
    pub fn post(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        HttpRequest {
            method: http::Method::POST,
            path: path.into(),
            body: Some(body.into()),
            headers: Vec::new(),
        }
    }
}

/// Sends one HTTP request to `addr` (`host:port`) and reads the whole answer, or gives up
/// after `timeout`.
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>>;

    /// Send `req` as an upgrade to a link (`crate::link`) on a connection of its own, within
    /// `timeout`.
    fn open_link(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Opened, TransportError>>;
}

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections per address, with the time each was returned.
type Pool = HashMap<String, Vec<(Sender, Instant)>>;

/// hyper http1 client with a small keep-alive pool per address, over TLS when it has a
/// [`ClientTls`] (then every connection is TLS, pooled like plain ones).
#[derive(Clone, Default)]
pub struct HyperTransport {
    pool: Arc<Mutex<Pool>>,
    tls: Option<ClientTls>,
}

/// A streamed answer: connected within this, its head (sent once the answer is ready to
/// flow: a backup is written first) within that.
const STREAM_CONNECT_MAX: Duration = Duration::from_secs(15);
const STREAM_HEAD_MAX: Duration = Duration::from_secs(30 * 60);

/// Idle connections kept per address.
const IDLE_PER_ADDR_MAX: usize = 64;

/// A pooled connection idle longer than this is dropped, not reused: the server may be closing
/// it (its header-read timer runs on idle keep-alive connections), and a request written into
/// a connection the server closes unread would be reported as an unknown outcome.
const IDLE_REUSE_MAX: Duration = Duration::from_secs(2);

impl HyperTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Over TLS when `tls` is given, plain HTTP otherwise.
    pub fn with_tls(tls: Option<ClientTls>) -> Self {
        HyperTransport {
            pool: Arc::default(),
            tls,
        }
    }

    fn take(&self, addr: &str) -> Option<Sender> {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.get_mut(addr)?;
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && s.is_ready() && since.elapsed() < IDLE_REUSE_MAX {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, addr: &str, sender: Sender) {
        let mut pool = self.pool.lock().expect("pool lock");
        let idle = pool.entry(addr.to_string()).or_default();
        if idle.len() < IDLE_PER_ADDR_MAX {
            idle.push((sender, Instant::now()));
        }
    }

    /// A new connection; with TLS, after a completed handshake. Any failure here is
    /// `Connect`: no request was written.
    async fn connect(&self, addr: &str) -> Result<Sender, TransportError> {
        self.connect_for(addr, false).await
    }

    /// [`Self::connect`]; with `upgrades`, the connection can be handed over to a link.
    async fn connect_for(&self, addr: &str, upgrades: bool) -> Result<Sender, TransportError> {
        let connect_err = |reason: String| TransportError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Self::handshake(flush_after_write(stream), upgrades).await,
            Some(tls) => {
                Self::handshake(
                    tls.connect(addr, stream).await.map_err(connect_err)?,
                    upgrades,
                )
                .await
            }
        }
        .map_err(|e| connect_err(e.to_string()))
    }

    async fn handshake<S>(stream: S, upgrades: bool) -> Result<Sender, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        if upgrades {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        Ok(sender)
    }

    async fn open_link_inner(
        self,
        addr: String,
        req: HttpRequest,
    ) -> Result<Opened, TransportError> {
        let mut sender = self.connect_for(&addr, true).await?;
        let broken = |reason: String| TransportError::Broken {
            addr: addr.clone(),
            reason,
        };
        let mut request = http_request(&addr, req).map_err(|e| broken(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static(UPGRADE_PROTOCOL),
        );
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| broken(e.to_string()))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| broken(e.to_string()))?
                .to_bytes();
            return Ok(Opened::Refused(HttpResponse { status, body }));
        }
        let io = hyper::upgrade::on(resp)
            .await
            .map_err(|e| broken(e.to_string()))?;
        Ok(Opened::Link(Box::new(IoLink::new(
            addr.clone(),
            TokioIo::new(io),
            crate::link::PEER_BODY_BYTES_MAX,
        ))))
    }

    async fn send_inner(
        self,
        addr: String,
        req: HttpRequest,
    ) -> Result<HttpResponse, TransportError> {
        let mut sender = match self.take(&addr) {
            Some(s) => s,
            None => self.connect(&addr).await?,
        };
        let broken = |reason: String| TransportError::Broken {
            addr: addr.clone(),
            reason,
        };
        let request = http_request(&addr, req).map_err(|e| broken(e.to_string()))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| broken(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| broken(e.to_string()))?
            .to_bytes();
        self.give_back(&addr, sender);
        Ok(HttpResponse { status, body })
    }

    /// Send `req` on a connection of its own and hand over the answer as it arrives, for a
    /// body too large to hold in memory (a backup). No deadline: the caller reads at its pace.
    pub async fn send_streaming(
        &self,
        addr: &str,
        req: HttpRequest,
    ) -> Result<http::Response<hyper::body::Incoming>, TransportError> {
        let broken = |reason: String| TransportError::Broken {
            addr: addr.to_string(),
            reason,
        };
        let timeout = |what: Duration| TransportError::Timeout {
            addr: addr.to_string(),
            timeout_ms: what.as_millis() as u64,
        };
        let mut sender = tokio::time::timeout(STREAM_CONNECT_MAX, self.connect(addr))
            .await
            .map_err(|_| timeout(STREAM_CONNECT_MAX))??;
        let request = http_request(addr, req).map_err(|e| broken(e.to_string()))?;
        tokio::time::timeout(STREAM_HEAD_MAX, sender.send_request(request))
            .await
            .map_err(|_| timeout(STREAM_HEAD_MAX))?
            .map_err(|e| broken(e.to_string()))
    }
}

/// `call`, or [`TransportError::Timeout`] if it takes longer than `timeout`.
pub(crate) async fn within<T>(
    addr: String,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

fn http_request(addr: &str, req: HttpRequest) -> http::Result<http::Request<Full<Bytes>>> {
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header(http::header::HOST, addr);
    if req.body.is_some()
        && !req
            .headers
            .iter()
            .any(|(k, _)| k == http::header::CONTENT_TYPE)
    {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in req.headers {
        builder = builder.header(k, v);
    }
    builder.body(Full::new(req.body.unwrap_or_default()))
}

impl Transport for HyperTransport {
    fn send(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let this = self.clone();
        let addr = addr.to_string();
        Box::pin(within(addr.clone(), timeout, this.send_inner(addr, req)))
    }

    fn open_link(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Opened, TransportError>> {
        let this = self.clone();
        let addr = addr.to_string();
        Box::pin(within(
            addr.clone(),
            timeout,
            this.open_link_inner(addr, req),
        ))
    }
}

/// The stream hyper gets: the TCP stream itself, or under madsim a wrapper that drops empty
/// flushes.
///
/// madsim's simulated `TcpStream` sends a message on every `poll_flush`, even when nothing was
/// written; hyper flushes each time its connection task runs, and that task runs on every
/// message that arrives. Two idle keep-alive ends thus exchange an empty message per simulated
/// millisecond in each direction for as long as the connection lives, and since each message
/// costs the receiving side at least 1 ms, a request sent on an old connection queues behind
/// the backlog (latency grows with the connection's age until heartbeats time out). A real
/// `TcpStream`'s flush is a no-op, so production keeps the stream as it is.
#[cfg(not(madsim))]
pub(crate) fn flush_after_write(stream: tokio::net::TcpStream) -> tokio::net::TcpStream {
    stream
}

#[cfg(madsim)]
pub(crate) fn flush_after_write(stream: tokio::net::TcpStream) -> sim_io::FlushAfterWrite {
    sim_io::FlushAfterWrite {
        inner: stream,
        written: false,
    }
}

#[cfg(madsim)]
pub(crate) mod sim_io {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    /// Forwards `poll_flush` only when something was written since the last flush.
    pub struct FlushAfterWrite {
        pub(super) inner: TcpStream,
        pub(super) written: bool,
    }

    impl AsyncRead for FlushAfterWrite {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for FlushAfterWrite {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.written = true;
            }
            r
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if !self.written {
                return Poll::Ready(Ok(()));
            }
            let r = Pin::new(&mut self.inner).poll_flush(cx);
            if matches!(r, Poll::Ready(Ok(()))) {
                self.written = false;
            }
            r
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }
}

/// A transport that adds `Authorization: Bearer <token>` to every request: how consumers and
/// the CLI present their token.
pub struct BearerTransport<T> {
    pub inner: T,
    pub token: String,
}

impl<T> BearerTransport<T> {
    fn bearing(&self, mut req: HttpRequest) -> HttpRequest {
        req.headers.push((
            http::header::AUTHORIZATION,
            format!("Bearer {}", self.token),
        ));
        req
    }
}

impl<T: Transport> Transport for BearerTransport<T> {
    fn send(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        self.inner.send(addr, self.bearing(req), timeout)
    }

    fn open_link(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Opened, TransportError>> {
        self.inner.open_link(addr, self.bearing(req), timeout)
    }
}

/// The client transport: bearer-authenticated when a token is given.
pub fn client_transport(token: Option<String>) -> Arc<dyn Transport> {
    client_transport_with(token, None)
}

/// The client transport of consumers and the CLI: bearer-authenticated when a token is given,
/// over TLS (trusting only the configured CA) when `tls` is given.
pub fn client_transport_with(token: Option<String>, tls: Option<ClientTls>) -> Arc<dyn Transport> {
    let inner = HyperTransport::with_tls(tls);
    match token {
        Some(token) => Arc::new(BearerTransport { inner, token }),
        None => Arc::new(inner),
    }
}
