//! A typed client of a node's API over any [`Transport`] (real TCP, TLS, or the simulator's
//! network). Each call names the node it asks: which node to ask, and when to move to another,
//! is the caller's policy (a tailer sticks to one node, a checkpoint tries each in turn).
//!
//! Answers are the wire types of [`crate::wire`]; a refusal is the node's error body.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::checkpoints::{Checkpoint, Consumers};
use crate::error::ErrorBody;
use crate::transport::{HttpRequest, HttpResponse, HyperTransport, Transport, TransportError};
use crate::uniq::{History, Owner};
use crate::users::commands::{
    CommandDone, EmailChangeRequest, EmailChanged, SignedUp, SignupRequest,
};
use crate::wire::{
    AddLearnerBody, AppendBody, AppendCreated, ClusterStatus, Health, Initialized, LogIndex,
    MembershipBody, Page, Ready, StateHash, Topics, Whoami,
};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadTopic {
    pub from: u64,
    pub limit: usize,
    /// Long-poll: wait up to this long for an event when there is none past `from`.
    pub wait_ms: u64,
    /// Wait until the node has applied everything committed before the read.
    pub linearizable: bool,
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
        let mut path = format!(
            "/v1/topics/{}/events?from={}&limit={}&wait_ms={}",
            path_segment(topic),
            read.from,
            read.limit,
            read.wait_ms
        );
        if read.linearizable {
            path.push_str("&consistency=linearizable");
        }
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

    /// `GET /v1/cluster/status`.
    pub async fn status(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<ClusterStatus, ClientError> {
        self.call(addr, HttpRequest::get("/v1/cluster/status"), timeout, 200)
            .await
    }

    /// `GET /v1/cluster/state-hash` (admin): the node's replicated state, table by table.
    pub async fn state_hash(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<StateHash, ClientError> {
        self.call(
            addr,
            HttpRequest::get("/v1/cluster/state-hash"),
            timeout,
            200,
        )
        .await
    }

    /// `GET /health`: `ok`, or `failed` with the error that stopped the node (a 503 with the
    /// same shape, read as an answer).
    pub async fn health(&self, addr: &str, timeout: Duration) -> Result<Health, ClientError> {
        let resp = self
            .transport
            .send(addr, HttpRequest::get("/health"), timeout)
            .await?;
        let expected = if resp.status == 503 { 503 } else { 200 };
        read_answer(addr, resp, expected)
    }

    /// `POST /v1/cluster/init`.
    pub async fn init(&self, addr: &str, timeout: Duration) -> Result<Initialized, ClientError> {
        let req = HttpRequest::post("/v1/cluster/init", b"{}".to_vec());
        self.call(addr, req, timeout, 200).await
    }

    /// `POST /v1/cluster/learners`.
    pub async fn add_learner(
        &self,
        addr: &str,
        body: &AddLearnerBody,
        timeout: Duration,
    ) -> Result<LogIndex, ClientError> {
        let req = HttpRequest::post("/v1/cluster/learners", to_json(body));
        self.call(addr, req, timeout, 200).await
    }

    /// `POST /v1/cluster/membership`.
    pub async fn change_membership(
        &self,
        addr: &str,
        body: &MembershipBody,
        timeout: Duration,
    ) -> Result<LogIndex, ClientError> {
        let req = HttpRequest::post("/v1/cluster/membership", to_json(body));
        self.call(addr, req, timeout, 200).await
    }

    /// `GET /v1/consumers`.
    pub async fn consumers(&self, addr: &str, timeout: Duration) -> Result<Consumers, ClientError> {
        self.call(addr, HttpRequest::get("/v1/consumers"), timeout, 200)
            .await
    }

    /// `GET /v1/uniq/{set}/{key}`: a 404 refusal when the key is free.
    pub async fn uniq_owner(
        &self,
        addr: &str,
        set: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Owner, ClientError> {
        let path = format!("/v1/uniq/{}/{}", path_segment(set), path_segment(key));
        self.call(addr, HttpRequest::get(path), timeout, 200).await
    }

    /// `GET /v1/uniq/{set}/{key}/history`.
    pub async fn uniq_history(
        &self,
        addr: &str,
        set: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<History, ClientError> {
        let path = format!(
            "/v1/uniq/{}/{}/history",
            path_segment(set),
            path_segment(key)
        );
        self.call(addr, HttpRequest::get(path), timeout, 200).await
    }

    /// `POST /v1/users`, under `idempotency_key` if given.
    pub async fn signup(
        &self,
        addr: &str,
        body: &SignupRequest,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<SignedUp, ClientError> {
        let mut req = HttpRequest::post("/v1/users", to_json(body));
        if let Some(key) = idempotency_key {
            req.headers
                .push((http::HeaderName::from_static("idempotency-key"), key.into()));
        }
        self.call(addr, req, timeout, 201).await
    }

    /// `PATCH /v1/users/{id}`.
    pub async fn change_email(
        &self,
        addr: &str,
        id: &str,
        body: &EmailChangeRequest,
        timeout: Duration,
    ) -> Result<EmailChanged, ClientError> {
        let mut req = HttpRequest::post(format!("/v1/users/{}", path_segment(id)), to_json(body));
        req.method = http::Method::PATCH;
        self.call(addr, req, timeout, 200).await
    }

    /// `DELETE /v1/users/{id}`: releases the email.
    pub async fn delete_user(
        &self,
        addr: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<CommandDone, ClientError> {
        let mut req = HttpRequest::get(format!("/v1/users/{}", path_segment(id)));
        req.method = http::Method::DELETE;
        self.call(addr, req, timeout, 200).await
    }

    /// `POST /v1/users/{id}/activation-email`: the activation email again (202).
    pub async fn resend_activation(
        &self,
        addr: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<CommandDone, ClientError> {
        let path = format!("/v1/users/{}/activation-email", path_segment(id));
        self.call(addr, HttpRequest::post(path, b"{}".to_vec()), timeout, 202)
            .await
    }

    /// `GET /v1/users/activate?token=`, the link of the activation email, as JSON.
    pub async fn activate(
        &self,
        addr: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<CommandDone, ClientError> {
        let path = format!("/v1/users/activate?token={}", path_segment(token));
        self.call(addr, HttpRequest::get(path), timeout, 200).await
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

fn to_json(body: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("a request body serializes")
}

/// What to do about a write whose answer was lost.
pub const UNCERTAIN: &str = "The write may or may not have been applied; check before sending \
                             it again, or send it with an idempotency key";

/// The header of a backup naming the last log index it holds.
pub const BACKUP_INDEX_HEADER: &str = "x-uniqlog-backup-index";
/// The header of a backup carrying the CRC-32C of its whole body.
pub const BACKUP_CRC_HEADER: &str = "x-uniqlog-backup-crc32c";

/// A backup as it starts to arrive: what its headers say, and its body to read at the
/// caller's pace (it holds every event: too large to hold in memory).
pub struct Backup {
    /// The last log index it holds.
    pub index: u64,
    /// Its length in bytes.
    pub length: u64,
    /// The CRC-32C of the whole body.
    pub crc32c: u32,
    pub body: hyper::body::Incoming,
}

/// `GET /v1/backup` (admin), on a connection of its own with no deadline past its head.
pub async fn backup(
    transport: &HyperTransport,
    addr: &str,
    token: Option<&str>,
) -> Result<Backup, ClientError> {
    let mut req = HttpRequest::get("/v1/backup");
    if let Some(token) = token {
        req.headers
            .push((http::header::AUTHORIZATION, format!("Bearer {token}")));
    }
    let resp = transport.send_streaming(addr, req).await?;
    let status = resp.status().as_u16();
    if status != 200 {
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(refusal(addr, status, &body));
    }
    let header = |name: &str| -> Result<u64, ClientError> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| ClientError::BadAnswer {
                addr: addr.to_string(),
                status,
                reason: format!("no {name} header"),
            })
    };
    let (index, length) = (header(BACKUP_INDEX_HEADER)?, header("content-length")?);
    let crc32c = u32::try_from(header(BACKUP_CRC_HEADER)?).map_err(|e| ClientError::BadAnswer {
        addr: addr.to_string(),
        status,
        reason: format!("{BACKUP_CRC_HEADER}: {e}"),
    })?;
    Ok(Backup {
        index,
        length,
        crc32c,
        body: resp.into_body(),
    })
}

/// Why no node took a write. Each error comes with the index of the node (in the list
/// given to [`write_any`]) that caused it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The write may have been applied: sending it again could apply it twice.
    #[error("{}. {UNCERTAIN}", .0.1)]
    Uncertain((usize, ClientError)),
    /// A node refused it, and another would too.
    #[error("{}", .0.1)]
    Refused((usize, ClientError)),
    /// Every node was tried, and none applied it.
    #[error("no node took the write: {}", .0.iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoNode(Vec<(usize, ClientError)>),
}

/// Send a write to the first of `addrs` that takes it. Any node takes writes (a follower
/// forwards to the leader), so the next one is tried whenever that is safe: the node was not
/// reached (nothing was sent), or it answered 503 `unavailable` (nothing was applied), or the
/// write is `keyed` (an idempotency key makes every retry safe). A write whose answer was lost
/// without a key is reported as such, never sent twice.
pub async fn write_any<T, F, Fut>(
    addrs: &[String],
    keyed: bool,
    mut write: F,
) -> Result<T, WriteError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut tried = Vec::new();
    for (at, addr) in addrs.iter().enumerate() {
        let e = match write(addr.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let retry_safe = match &e {
            ClientError::Transport(t) => keyed || t.nothing_sent(),
            ClientError::Refused {
                status: 503, body, ..
            } => keyed || body.error == "unavailable",
            // A 503 from something in front of the node (a proxy): safe only with a key.
            ClientError::BadAnswer { status: 503, .. } => keyed,
            _ => false,
        };
        if !retry_safe {
            return Err(match e {
                ClientError::Transport(_) => WriteError::Uncertain((at, e)),
                _ => WriteError::Refused((at, e)),
            });
        }
        tried.push((at, e));
    }
    Err(WriteError::NoNode(tried))
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
    Err(refusal(addr, resp.status, &resp.body))
}

/// An answer with another status than asked for: the node's error, or a bad answer.
fn refusal(addr: &str, status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => ClientError::Refused {
            addr: addr.to_string(),
            status,
            body,
        },
        Err(e) => ClientError::BadAnswer {
            addr: addr.to_string(),
            status,
            reason: format!("not an error body ({e})"),
        },
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

    fn refused(status: u16, error: &str) -> ClientError {
        ClientError::Refused {
            addr: "n".into(),
            status,
            body: ErrorBody {
                error: error.into(),
                message: error.into(),
                retryable: false,
                details: Default::default(),
            },
        }
    }

    /// Each node's answer in turn, then which node took the write (or why none did).
    fn write(answers: Vec<Result<u16, ClientError>>, keyed: bool) -> Result<String, WriteError> {
        let addrs: Vec<String> = (0..answers.len()).map(|i| format!("n{i}")).collect();
        let mut answers = answers.into_iter();
        futures::executor::block_on(write_any(&addrs, keyed, |addr| {
            let answer = answers.next().unwrap();
            async move { answer.map(|_| addr) }
        }))
    }

    #[test]
    fn a_write_moves_on_only_when_nothing_was_applied_or_it_is_keyed() {
        let unreached = || {
            ClientError::Transport(TransportError::Connect {
                addr: "n".into(),
                reason: "refused".into(),
            })
        };
        let lost = || {
            ClientError::Transport(TransportError::Timeout {
                addr: "n".into(),
                timeout_ms: 1,
            })
        };
        assert_eq!(write(vec![Err(unreached()), Ok(201)], false).unwrap(), "n1");
        let unavailable = refused(503, "unavailable");
        assert_eq!(write(vec![Err(unavailable), Ok(201)], false).unwrap(), "n1");
        assert!(matches!(
            write(vec![Err(lost()), Ok(201)], false),
            Err(WriteError::Uncertain(_))
        ));
        assert_eq!(write(vec![Err(lost()), Ok(201)], true).unwrap(), "n1");
        assert!(matches!(
            write(vec![Err(refused(503, "outcome_unknown")), Ok(201)], false),
            Err(WriteError::Uncertain(_)) | Err(WriteError::Refused(_))
        ));
        let proxied = || ClientError::BadAnswer {
            addr: "n".into(),
            status: 503,
            reason: "not an error body".into(),
        };
        assert_eq!(write(vec![Err(proxied()), Ok(201)], true).unwrap(), "n1");
        assert!(matches!(
            write(vec![Err(proxied()), Ok(201)], false),
            Err(WriteError::Refused(_))
        ));
        assert!(matches!(
            write(vec![Err(refused(409, "uniq_conflict")), Ok(201)], true),
            Err(WriteError::Refused(_))
        ));
        assert!(matches!(
            write(vec![Err(unreached()), Err(unreached())], false),
            Err(WriteError::NoNode(tried)) if tried.len() == 2 && tried[1].0 == 1
        ));
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(path_segment("user-1.a_b~"), "user-1.a_b~");
        assert_eq!(path_segment("a/b c?é+"), "a%2Fb%20c%3F%C3%A9%2B");
    }
}
