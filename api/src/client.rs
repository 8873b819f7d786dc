//! A typed client of a node's API over any [`Transport`] (real TCP, TLS, or the simulator's
//! network). Each call names the node it asks: which node to ask, and when to move to another,
//! is the caller's policy (a tailer sticks to one node, a checkpoint tries each in turn).
//!
//! Answers are the wire types of [`crate::wire`]; a refusal is the node's error body.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::checkpoints::Checkpoint;
use crate::error::ErrorBody;
use crate::transport::{HttpRequest, HttpResponse, Transport, TransportError};
use crate::wire::{AppendBody, AppendCreated, Page, Ready, Topics, Whoami};

/// Why a call got no answer of the type it asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node answered with an error.
    #[error("{addr} answered {status}: {}", body.message)]
    Refused {
        addr: String,
        status: u16,
        body: ErrorBody,
    },
    /// The node's answer is not what the contract says.
    #[error("{addr} answered {status} with a body this client cannot read: {reason}")]
    BadAnswer {
        addr: String,
        status: u16,
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } | ClientError::BadAnswer { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(_) => None,
        }
    }

    /// The error body of a refusal.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Refused { body, .. } => Some(body),
            _ => None,
        }
    }

    /// True when the node certainly did not receive the request.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, ClientError::Transport(e) if e.nothing_sent())
    }
}

/// Where a page of a topic starts, how long it may be, and how long to wait for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTopic {
    pub from: u64,
    pub limit: usize,
    /// Long-poll: wait up to this long for an event when there is none past `from`.
    pub wait_ms: u64,
}

/// Where a page of a stream starts, and how it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStream {
    pub from: u64,
    pub limit: Option<usize>,
    /// Wait until the node has applied everything committed before the read.
    pub linearizable: bool,
}

/// Calls to the nodes of a cluster, through one transport (with its token and TLS).
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
}

impl Client {
    pub fn new(transport: Arc<dyn Transport>) -> Client {
        Client { transport }
    }

    /// `GET /v1/topics/{topic}/events`. The call waits `read.wait_ms` plus `slack`.
    pub async fn read_topic(
        &self,
        addr: &str,
        topic: &str,
        read: ReadTopic,
        slack: Duration,
    ) -> Result<Page, ClientError> {
        let path = format!(
            "/v1/topics/{}/events?from={}&limit={}&wait_ms={}",
            path_segment(topic),
            read.from,
            read.limit,
            read.wait_ms
        );
        let timeout = Duration::from_millis(read.wait_ms) + slack;
        self.call(addr, HttpRequest::get(path), timeout, 200).await
    }

    /// `GET /v1/streams/{stream}/events`: a page of a stream's events from its `from`th,
    /// as long as the node allows unless `limit`.
    pub async fn read_stream(
        &self,
        addr: &str,
        stream: &str,
        read: ReadStream,
        timeout: Duration,
    ) -> Result<Page, ClientError> {
        let mut path = format!(
            "/v1/streams/{}/events?from={}",
            path_segment(stream),
            read.from
        );
        if let Some(limit) = read.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if read.linearizable {
            path.push_str("&consistency=linearizable");
        }
        self.call(addr, HttpRequest::get(path), timeout, 200).await
    }

    /// `GET /v1/consumers/{name}/checkpoint`: `None` when the consumer never reported.
    /// `linearizable`: the latest even through a lagging follower (what a consumer resumes
    /// from).
    pub async fn checkpoint(
        &self,
        addr: &str,
        consumer: &str,
        linearizable: bool,
        timeout: Duration,
    ) -> Result<Option<Checkpoint>, ClientError> {
        let mut path = format!("/v1/consumers/{}/checkpoint", path_segment(consumer));
        if linearizable {
            path.push_str("?consistency=linearizable");
        }
        match self.call(addr, HttpRequest::get(path), timeout, 200).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/topics/{topic}/events`.
    pub async fn append(
        &self,
        addr: &str,
        topic: &str,
        body: &AppendBody,
        timeout: Duration,
    ) -> Result<AppendCreated, ClientError> {
        let body = serde_json::to_vec(body).expect("an append body serializes");
        let req = HttpRequest::post(format!("/v1/topics/{}/events", path_segment(topic)), body);
        self.call(addr, req, timeout, 201).await
    }

    /// `GET /v1/topics`.
    pub async fn topics(&self, addr: &str, timeout: Duration) -> Result<Topics, ClientError> {
        self.call(addr, HttpRequest::get("/v1/topics"), timeout, 200)
            .await
    }

    /// `GET /ready`: `Ok` when the node knows a leader and has applied what it knows
    /// committed; a 503 refusal otherwise.
    pub async fn ready(&self, addr: &str, timeout: Duration) -> Result<Ready, ClientError> {
        self.call(addr, HttpRequest::get("/ready"), timeout, 200)
            .await
    }

    /// `GET /v1/auth/whoami`.
    pub async fn whoami(&self, addr: &str, timeout: Duration) -> Result<Whoami, ClientError> {
        self.call(addr, HttpRequest::get("/v1/auth/whoami"), timeout, 200)
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        addr: &str,
        req: HttpRequest,
        timeout: Duration,
        expected: u16,
    ) -> Result<T, ClientError> {
        let resp = self.transport.send(addr, req, timeout).await?;
        read_answer(addr, resp, expected)
    }
}

/// The answer as `T` when its status is `expected`, else the node's error.
fn read_answer<T: DeserializeOwned>(
    addr: &str,
    resp: HttpResponse,
    expected: u16,
) -> Result<T, ClientError> {
    let bad = |reason: String| ClientError::BadAnswer {
        addr: addr.to_string(),
        status: resp.status,
        reason,
    };
    if resp.status == expected {
        return serde_json::from_slice(&resp.body).map_err(|e| bad(e.to_string()));
    }
    match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(body) => Err(ClientError::Refused {
            addr: addr.to_string(),
            status: resp.status,
            body,
        }),
        Err(e) => Err(bad(format!("not an error body ({e})"))),
    }
}

/// `segment` made safe as one segment of a URL path: topic, stream, set and key names may hold
/// what a path cannot (an email's `+`, a `/` in a key, any text in a stream id).
pub fn path_segment(segment: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(segment, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            body: body.to_string().into(),
        }
    }

    #[test]
    fn an_expected_answer_is_read_as_its_type_and_an_error_as_the_nodes() {
        let topics: Topics = read_answer(
            "n1",
            answer(200, r#"{"topics":[{"name":"users","length":3}]}"#),
            200,
        )
        .unwrap();
        assert_eq!(topics.topics[0].length, 3);
        let refused = read_answer::<Topics>(
            "n1",
            answer(
                503,
                r#"{"error":"unavailable","message":"no leader is known","retryable":true}"#,
            ),
            200,
        )
        .unwrap_err();
        assert_eq!(refused.status(), Some(503));
        assert_eq!(refused.body().unwrap().error, "unavailable");
        let garbled = read_answer::<Topics>("n1", answer(502, "<html>"), 200).unwrap_err();
        assert!(matches!(
            garbled,
            ClientError::BadAnswer { status: 502, .. }
        ));
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(path_segment("user-1.a_b~"), "user-1.a_b~");
        assert_eq!(path_segment("a/b c?é+"), "a%2Fb%20c%3F%C3%A9%2B");
    }
}
