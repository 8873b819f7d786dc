//! Client authentication and roles. Auth is on exactly when `[auth]` lists tokens. A token is
//! presented as `Authorization: Bearer <token>` (or as the password of HTTP Basic) and stored only as its SHA-256. Roles nest:
//! `admin` includes `write`, which includes `read`.

use std::borrow::Cow;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::SharedApp;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness and readiness.
    Public,
    /// The sign-up flow's public steps: anyone when `anonymous_signup` is on, else `write`.
    Signup,
    Role(Role),
    /// Appends: `write`, or `admin` for the system's `__` topics.
    Append,
}

/// One token, as configured: its digest, or where to read the token itself (an environment
/// variable or a file), which the node hashes at start and keeps only as a digest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

/// The node's view of `[auth]` for client routes.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub tokens: Vec<TokenConfig>,
    pub anonymous_signup: bool,
    /// Signs stream tokens: the cluster secret when set (tokens work on every node), else a
    /// random key of this process (tokens work on this node).
    pub stream_key: Vec<u8>,
}

/// Lowercase hex SHA-256 of a token. On every authenticated request, so no per-byte
/// formatting.
pub fn token_digest(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(token.as_bytes()) {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

impl Auth {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The role of a presented token, comparing digests in constant time.
    fn role_of(&self, token: &str) -> Option<Role> {
        let digest = token_digest(token);
        let mut found = None;
        for t in &self.tokens {
            if crate::cluster_secret::same_secret(&digest, &t.sha256.to_ascii_lowercase()) {
                found = Some(t.role);
            }
        }
        found
    }

    /// Decide a request: Ok to proceed, or 401 / 403.
    pub fn check(
        &self,
        access: Access,
        topic_is_system: bool,
        bearer: Option<&str>,
    ) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let needed = match access {
            Access::Public => return Ok(()),
            Access::Signup if self.anonymous_signup => return Ok(()),
            Access::Signup => Role::Write,
            Access::Role(r) => r,
            Access::Append if topic_is_system => Role::Admin,
            Access::Append => Role::Write,
        };
        let role = bearer
            .and_then(|t| self.role_of(t))
            .ok_or_else(|| ApiError::Unauthorized {
                message: "a valid bearer token is required".into(),
            })?;
        if role < needed {
            return Err(ApiError::Forbidden {
                message: format!("this needs the {needed:?} role; the token has {role:?}")
                    .to_lowercase(),
            });
        }
        Ok(())
    }
}

/// Middleware of the client routes: the route's access from the route table, the token from
/// the `Authorization` header.
pub async fn require(State(app): State<SharedApp>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let access = path
        .as_deref()
        .and_then(|p| crate::access_of(req.method(), p))
        .unwrap_or(Access::Role(Role::Admin));
    let system = req.uri().path().starts_with("/v1/topics/__");
    let bearer = bearer(req.headers());
    let bearer = bearer.as_deref();
    // EventSource cannot send headers: the event stream also takes a short-lived read token
    // in its query (see `stream_token`).
    if bearer.is_none() && path.as_deref() == Some(STREAM_ROUTE) && app.auth.enabled() {
        let token = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
        return match token.map(|t| app.auth.check_stream_token(t, crate::app::now_ms())) {
            Some(Ok(())) => next.run(req).await,
            Some(Err(e)) => e.into_response(),
            None => ApiError::Unauthorized {
                message:
                    "a bearer token or an access_token from POST /v1/auth/stream-token is required"
                        .into(),
            }
            .into_response(),
        };
    }
    match app.auth.check(access, system, bearer) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The token a request presents: `Authorization: Bearer <token>`, or HTTP Basic with the token
/// as the password (any user name), so that `curl -u :TOKEN` and clients that only take
/// credentials in the URL (`http://any:TOKEN@host/...`) work too.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<Cow<'_, str>> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(Cow::Borrowed(token));
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(Cow::Owned(password.to_string()))
}

/// `GET /v1/auth/whoami` (read role): the role of the presented token, so a consumer can
/// refuse to start with a token too weak for what it must write, instead of failing later.
/// With auth off everyone is `admin`.
pub async fn whoami(State(app): State<SharedApp>, headers: axum::http::HeaderMap) -> Response {
    let role = match bearer(&headers).and_then(|t| app.auth.role_of(&t)) {
        Some(role) if app.auth.enabled() => role,
        _ => Role::Admin,
    };
    axum::Json(serde_json::json!({ "auth_enabled": app.auth.enabled(), "role": role }))
        .into_response()
}

/// The route that accepts `?access_token=`.
pub const STREAM_ROUTE: &str = "/v1/topics/{topic}/stream";

/// How long a stream token is good for: long enough to open a stream, short enough that a
/// logged URL is soon useless.
pub const STREAM_TOKEN_TTL_MS: u64 = 60_000;

type HmacSha256 = hmac::Hmac<Sha256>;

impl Auth {
    fn stream_mac(&self, expires_ms: u64) -> String {
        use hmac::Mac;
        let mut mac = HmacSha256::new_from_slice(&self.stream_key).expect("any key length");
        mac.update(format!("stream-read.{expires_ms}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A read-only token for the event stream, valid for a minute.
    pub fn make_stream_token(&self, now_ms: u64) -> (String, u64) {
        let expires = now_ms + STREAM_TOKEN_TTL_MS;
        (format!("{expires}.{}", self.stream_mac(expires)), expires)
    }

    pub fn check_stream_token(&self, token: &str, now_ms: u64) -> Result<(), ApiError> {
        let bad = || ApiError::Unauthorized {
            message: "the access_token is invalid or expired".into(),
        };
        let (expires, mac) = token.split_once('.').ok_or_else(bad)?;
        let expires: u64 = expires.parse().map_err(|_| bad())?;
        if now_ms >= expires || !crate::cluster_secret::same_secret(mac, &self.stream_mac(expires))
        {
            return Err(bad());
        }
        Ok(())
    }
}

/// `POST /v1/auth/stream-token` (read role): `{"access_token", "expires_at"}` for
/// `GET /v1/topics/{topic}/stream?access_token=...`.
pub async fn stream_token(State(app): State<SharedApp>) -> Response {
    let (token, expires) = app.auth.make_stream_token(crate::app::now_ms());
    axum::Json(serde_json::json!({ "access_token": token, "expires_at": expires })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_from_bearer_or_from_basic_as_the_password() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            bearer(&h).map(|t| t.into_owned())
        };
        assert_eq!(with("Bearer s3cret").as_deref(), Some("s3cret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("bench:s3cret:x");
        assert_eq!(with(&format!("Basic {basic}")).as_deref(), Some("s3cret:x"));
        let no_colon = base64::engine::general_purpose::STANDARD.encode("s3cret");
        assert_eq!(with(&format!("Basic {no_colon}")), None);
        assert_eq!(with("Basic !!notbase64"), None);
        assert_eq!(with("Digest abc"), None);
    }

    #[test]
    fn stream_tokens_expire_and_are_bound_to_their_key() {
        let a = Auth {
            stream_key: b"k1".to_vec(),
            ..Auth::default()
        };
        let b = Auth {
            stream_key: b"k2".to_vec(),
            ..Auth::default()
        };
        let (t, expires) = a.make_stream_token(1_000);
        assert!(a.check_stream_token(&t, 1_001).is_ok());
        assert!(a.check_stream_token(&t, expires).is_err(), "expired");
        assert!(b.check_stream_token(&t, 1_001).is_err(), "another key");
        let forged = t.replacen(&expires.to_string(), &(expires + 1_000_000).to_string(), 1);
        assert!(
            a.check_stream_token(&forged, 1_001).is_err(),
            "expiry is signed"
        );
        assert!(a.check_stream_token("junk", 1).is_err());
    }
}
