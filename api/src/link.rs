//! Links: a peer connection that left HTTP, after an upgrade, for a stream of length-prefixed
//! frames. Raft's appends to a follower travel this way (issue 25): an HTTP exchange per append
//! cost both ends more than the append's own work (headers built and parsed, the route's
//! layers, and on the sending side a hand-off to hyper's connection task and back), and a
//! third of all appends carry only a new commit index.
//!
//! A frame is its length (4 bytes, little-endian) and that many bytes. A link carries one call
//! at a time, as openraft sends appends to a follower one at a time: the caller writes a frame
//! and reads the one that answers it. Anything that breaks a call (a timeout, a short read, a
//! frame over the bound) ends the link, since what is left in it can no longer be matched to a
//! call; the caller opens a new one.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::{within, TransportError};

/// The protocol a link upgrade asks for (the `Upgrade` header), with the peer protocol's
/// version in the route's own header as for any peer request.
pub const UPGRADE_PROTOCOL: &str = "uniqlog-link";

/// Largest peer RPC body. Client bodies are bounded by `[limits] body_bytes_max`, so one entry
/// always fits; a batch that does not is split (openraft retries with fewer entries when told
/// the payload is too large).
pub const PEER_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One call at a time over an open link: write a frame, read the frame that answers it.
pub trait FrameLink: Send + 'static {
    fn call(
        &mut self,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>>;
}

/// What an upgrade request got: the link, or the HTTP answer of a peer that refused it (a wrong
/// cluster secret, another peer protocol), for the caller to report as it reports any refusal.
pub enum Opened {
    Link(Box<dyn FrameLink>),
    Refused(crate::transport::HttpResponse),
}

/// Write one frame and flush it: one write for length and body.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// What a reader reserves at a time while a frame arrives.
const READ_STEP: usize = 64 * 1024;

/// Reads frames from a stream, buffering what arrived past the current one.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame; `None` when the stream ended cleanly between frames. A frame longer
    /// than `max` is an error before any of it is buffered.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> io::Result<Option<Bytes>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > max {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a frame of {len} bytes, over the bound of {max}"),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                // In steps: a length alone must not make the reader hold its bound in memory.
                self.buf.reserve((4 + len - self.buf.len()).min(READ_STEP));
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

/// A link over any byte stream (the upgraded connection, TLS or not).
pub struct IoLink<S> {
    addr: String,
    io: S,
    reader: FrameReader,
    /// The largest answer taken.
    max: usize,
}

impl<S> IoLink<S> {
    pub fn new(addr: String, io: S, max: usize) -> Self {
        IoLink {
            addr,
            io,
            reader: FrameReader::default(),
            max,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> FrameLink for IoLink<S> {
    fn call(
        &mut self,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        let addr = self.addr.clone();
        let exchange = async move {
            let broken = |reason: String| TransportError::Broken {
                addr: self.addr.clone(),
                reason,
            };
            let answer = async {
                write_frame(&mut self.io, &frame).await?;
                self.reader.next(&mut self.io, self.max).await
            };
            match answer.await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(broken("the peer closed the link".into())),
                Err(e) => Err(broken(e.to_string())),
            }
        };
        Box::pin(within(addr, timeout, exchange))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_back_whole_however_the_bytes_are_split() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let bodies: Vec<Vec<u8>> = vec![b"".to_vec(), b"one".to_vec(), vec![9u8; 1000]];
        let sent = bodies.clone();
        let writer = tokio::spawn(async move {
            for body in &sent {
                write_frame(&mut a, body).await.unwrap();
            }
        });
        let mut reader = FrameReader::default();
        for body in &bodies {
            let got = reader.next(&mut b, 4096).await.unwrap().unwrap();
            assert_eq!(&got[..], &body[..]);
        }
        writer.await.unwrap();
        assert!(reader.next(&mut b, 4096).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_bound_or_cut_short_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, &[1u8; 20]).await.unwrap();
        let err = FrameReader::default().next(&mut b, 10).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_le_bytes()).await.unwrap();
        a.write_all(b"short").await.unwrap();
        drop(a);
        let err = FrameReader::default().next(&mut b, 100).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_call_that_gets_no_answer_in_time_is_a_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut link = IoLink::new("peer".into(), a, 100);
        let err = link
            .call(b"x".to_vec(), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
}
