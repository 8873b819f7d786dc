//! Client authentication, roles and topic scopes. Auth is on exactly when `[auth]` lists
//! tokens. A token is presented as `Authorization: Bearer <token>` (or as the password of HTTP
//! Basic) and stored only as its SHA-256. Roles nest: `admin` includes `write`, which includes
//! `read`.
//!
//! Every decision is made once per request, by the node's `auth::admit` (in the client
//! routes' one middleware) and the query process's, from these pieces: the route's [`Access`]
//! from the route table, the token, and the route's `{topic}` **as axum decodes it** (deciding on
//! the raw path let `%5F%5Fcheckpoints` pass for an ordinary topic). The result, a [`Caller`],
//! goes into the request's extensions for the handlers that touch topics the path does not
//! name (a stream's events, uniq sets, the topic list).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Write,
    Admin,
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, metrics, the OpenAPI document, the dashboard's assets.
    Public,
    Role(Role),
    /// Read the topic the path names (`{topic}`): `read`, within the token's scope.
    ReadTopic,
    /// Append to the topic the path names: `write` within the token's scope; `admin` for the
    /// system's `__` topics; for topics the command API writes, a scope that names them.
    Append,
    /// A command of the sign-up flow, which appends to `users`: `write` (within a scope that
    /// covers `users`), or anyone when `anonymous` and `[auth] anonymous_signup` is on.
    Users {
        anonymous: bool,
    },
}

/// Topics that the command API writes (its invariants live in its commands): raw appends to
/// them need a token whose scope names them, or admin.
pub const COMMAND_TOPICS: &[&str] = &[crate::users::state::TOPIC];

/// Whether `topic` is one of the system's (`__checkpoints`, `__parked`, `__retry.*`).
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with("__")
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
    /// The topics this token may read and append to: names, or prefixes ending in `*`
    /// (`orders.*`, `*`). Absent: every topic its role allows. Not for admin tokens, which
    /// have every scope.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
}

/// A token's topic patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Vec<String>);

impl Scope {
    /// Check the patterns: a topic name, optionally ending in `*`.
    pub fn new(patterns: Vec<String>) -> Result<Scope, String> {
        if patterns.is_empty() {
            return Err("an empty list allows nothing; leave `topics` out for no scope".into());
        }
        for p in &patterns {
            let name = p.strip_suffix('*').unwrap_or(p);
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if !name.chars().all(ok) || (name.is_empty() && p.is_empty()) {
                return Err(format!(
                    "{p:?} is not a topic name or a prefix ending in '*' (A-Z, a-z, 0-9, '.', \
                     '_', '-')"
                ));
            }
        }
        Ok(Scope(patterns))
    }

    /// A pattern covers the topic: equal, or a prefix ending in `*`. System topics are
    /// covered only by patterns that start with `__` themselves, never by a bare `*`.
    pub fn covers(&self, topic: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => {
                topic.starts_with(prefix) && (!is_system_topic(topic) || is_system_topic(prefix))
            }
            None => p == topic,
        })
    }

    /// A pattern is the topic's exact name.
    pub fn names(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p == topic)
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// Who is calling, as [`admit`] decided.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: no token (a public route, or anonymous sign-up).
    pub role: Option<Role>,
    /// The token's topics; `None` is every topic the role allows.
    pub scope: Option<Arc<Scope>>,
    /// The token's name, for stream tokens and logs.
    pub token: Option<String>,
}

impl Caller {
    /// With auth off: anyone may do anything.
    pub fn unrestricted() -> Caller {
        Caller {
            role: Some(Role::Admin),
            scope: None,
            token: None,
        }
    }

    fn anonymous() -> Caller {
        Caller {
            role: None,
            scope: None,
            token: None,
        }
    }

    fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }

    fn has(&self, needed: Role) -> Result<(), ApiError> {
        match self.role {
            Some(role) if role >= needed => Ok(()),
            Some(role) => Err(ApiError::Forbidden {
                message: format!("this needs the {needed:?} role; the token has {role:?}")
                    .to_lowercase(),
            }),
            None => Err(unauthorized()),
        }
    }

    /// May read `topic` (its events, its streams, uniq sets over it).
    pub fn check_read(&self, topic: &str) -> Result<(), ApiError> {
        self.has(Role::Read)?;
        match &self.scope {
            Some(scope) if !self.is_admin() && !scope.covers(topic) => Err(out_of_scope(topic)),
            _ => Ok(()),
        }
    }

    pub fn may_read(&self, topic: &str) -> bool {
        self.check_read(topic).is_ok()
    }

    /// May append to `topic` through the raw log API.
    pub fn check_append(&self, topic: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            return Ok(());
        }
        if is_system_topic(topic) {
            self.has(Role::Admin)?;
        }
        self.has(Role::Write)?;
        if COMMAND_TOPICS.contains(&topic) && !self.scope.as_ref().is_some_and(|s| s.names(topic)) {
            return Err(ApiError::Forbidden {
                message: format!(
                    "topic {topic} is written by the command API (/v1/users); raw appends to it \
                     need the admin role or a token whose topics name {topic:?}"
                ),
            });
        }
        match &self.scope {
            Some(scope) if !scope.covers(topic) => Err(out_of_scope(topic)),
            _ => Ok(()),
        }
    }

    /// May run a command of the sign-up flow (which appends to `users`).
    fn check_users_command(&self) -> Result<(), ApiError> {
        self.has(Role::Write)?;
        let topic = crate::users::state::TOPIC;
        match &self.scope {
            Some(scope) if !self.is_admin() && !scope.covers(topic) => Err(out_of_scope(topic)),
            _ => Ok(()),
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized {
        message: "a valid bearer token is required".into(),
    }
}

fn out_of_scope(topic: &str) -> ApiError {
    ApiError::Forbidden {
        message: format!("topic {topic} is outside this token's topics"),
    }
}

/// A configured token, ready for look-ups.
#[derive(Debug, Clone)]
struct Token {
    name: String,
    role: Role,
    sha256: String,
    scope: Option<Arc<Scope>>,
}

/// The node's view of `[auth]` for client routes. Its `Debug` leaves out the stream key.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
    pub anonymous_signup: bool,
    /// Signs stream tokens: derived from the cluster secret when set (tokens work on every
    /// node), else a random key of this process (tokens work on this node).
    stream_key: Vec<u8>,
}

/// Lowercase hex SHA-256 of a token. On every authenticated request, so no per-byte
/// formatting.
pub fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens)
            .field("anonymous_signup", &self.anonymous_signup)
            .field("stream_key", &"redacted")
            .finish()
    }
}

impl Auth {
    /// `tokens` as the config validated them (digests set, scopes checked).
    pub fn new(
        tokens: &[TokenConfig],
        anonymous_signup: bool,
        stream_key: Vec<u8>,
    ) -> Result<Auth, String> {
        let tokens = tokens
            .iter()
            .map(|t| {
                let scope = match &t.topics {
                    None => None,
                    Some(_) if t.role == Role::Admin => {
                        return Err(format!(
                            "token {:?}: an admin token has every topic; leave `topics` out",
                            t.name
                        ))
                    }
                    Some(p) => Some(Arc::new(
                        Scope::new(p.clone()).map_err(|e| format!("token {:?}: {e}", t.name))?,
                    )),
                };
                Ok(Token {
                    name: t.name.clone(),
                    role: t.role,
                    sha256: t.sha256.to_ascii_lowercase(),
                    scope,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Auth {
            tokens,
            anonymous_signup,
            stream_key,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller a presented token stands for, comparing digests in constant time.
    fn caller_of(&self, token: &str) -> Option<Caller> {
        let digest = token_digest(token);
        let mut found = None;
        for t in &self.tokens {
            if crate::secret::same_secret(&digest, &t.sha256) {
                found = Some(t);
            }
        }
        found.map(Token::caller)
    }

    /// Decide a request: the caller, or 401 / 403. `topic` is the route's `{topic}`, decoded.
    pub fn authorize(
        &self,
        access: Access,
        topic: Option<&str>,
        bearer: Option<&str>,
    ) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::unrestricted());
        }
        let presented = bearer.map(|t| self.caller_of(t));
        match (access, presented) {
            // A public route ignores credentials, even wrong ones.
            (Access::Public, Some(Some(caller))) => Ok(caller),
            (Access::Public, _) => Ok(Caller::anonymous()),
            (Access::Users { anonymous: true }, None) if self.anonymous_signup => {
                Ok(Caller::anonymous())
            }
            (_, None | Some(None)) => Err(unauthorized()),
            (access, Some(Some(caller))) => {
                let topic = || topic.ok_or_else(|| ApiError::internal("no {topic} in the path"));
                match access {
                    Access::Public => unreachable!("matched above"),
                    Access::Role(r) => caller.has(r)?,
                    Access::ReadTopic => caller.check_read(topic()?)?,
                    Access::Append => caller.check_append(topic()?)?,
                    Access::Users { .. } => caller.check_users_command()?,
                }
                Ok(caller)
            }
        }
    }
}

impl Token {
    fn caller(&self) -> Caller {
        Caller {
            role: Some(self.role),
            scope: self.scope.clone(),
            token: Some(self.name.clone()),
        }
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

/// The route that accepts `?access_token=`.
pub const STREAM_ROUTE: &str = "/v1/topics/{topic}/stream";

/// How long a stream token is good for: long enough to open a stream, short enough that a
/// logged URL is soon useless.
pub const STREAM_TOKEN_TTL_MS: u64 = 60_000;

type HmacSha256 = hmac::Hmac<Sha256>;

impl Auth {
    /// The key of stream tokens made from the cluster secret: derived, so a stream token's
    /// MAC is never a MAC under the cluster secret itself.
    pub fn stream_key_from_secret(secret: &str) -> Vec<u8> {
        format!("stream-token:{secret}").into_bytes()
    }

    fn stream_mac(&self, name: &str, expires_ms: u64) -> String {
        use hmac::Mac;
        let mut mac = HmacSha256::new_from_slice(&self.stream_key).expect("any key length");
        mac.update(format!("stream-read.{expires_ms}.{name}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// A read-only token for the event stream, valid for a minute, with the topics of the
    /// token it was made for: `<expiry>.<token name, base64url>.<MAC>`.
    pub fn make_stream_token(&self, caller: &Caller, now_ms: u64) -> (String, u64) {
        let expires = now_ms + STREAM_TOKEN_TTL_MS;
        let name = caller.token.as_deref().unwrap_or_default();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name);
        (
            format!("{expires}.{encoded}.{}", self.stream_mac(name, expires)),
            expires,
        )
    }

    /// The caller a stream token stands for: the read role, with the topics of the token it
    /// was made for (which must still be configured).
    pub fn check_stream_token(&self, token: &str, now_ms: u64) -> Result<Caller, ApiError> {
        let bad = || ApiError::Unauthorized {
            message: "the access_token is invalid or expired".into(),
        };
        let mut parts = token.splitn(3, '.');
        let (Some(expires), Some(name), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let expires: u64 = expires.parse().map_err(|_| bad())?;
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(name)
            .ok()
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or_else(bad)?;
        if now_ms >= expires || !crate::secret::same_secret(mac, &self.stream_mac(&name, expires)) {
            return Err(bad());
        }
        let scope = if self.enabled() {
            let token = self
                .tokens
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(bad)?;
            token.scope.clone()
        } else {
            None
        };
        Ok(Caller {
            role: Some(Role::Read),
            scope,
            token: Some(name),
        })
    }
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

    fn token(name: &str, role: Role, topics: Option<&[&str]>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role,
            sha256: token_digest(name),
            token_env: None,
            token_file: None,
            topics: topics.map(|t| t.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn auth(tokens: &[TokenConfig], key: &[u8]) -> Auth {
        Auth::new(tokens, false, key.to_vec()).unwrap()
    }

    #[test]
    fn stream_tokens_expire_are_bound_to_their_key_and_keep_the_scope() {
        let tokens = [token("orders-reader", Role::Read, Some(&["orders"]))];
        let a = auth(&tokens, b"k1");
        let b = auth(&tokens, b"k2");
        let caller = a.caller_of("orders-reader").unwrap();
        let (t, expires) = a.make_stream_token(&caller, 1_000);
        let got = a.check_stream_token(&t, 1_001).unwrap();
        assert!(got.may_read("orders") && !got.may_read("users"), "{got:?}");
        assert!(a.check_stream_token(&t, expires).is_err(), "expired");
        assert!(b.check_stream_token(&t, 1_001).is_err(), "another key");
        let forged = t.replacen(&expires.to_string(), &(expires + 1_000_000).to_string(), 1);
        assert!(
            a.check_stream_token(&forged, 1_001).is_err(),
            "expiry is signed"
        );
        // Another token's name with this MAC does not pass.
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("admin");
        let renamed = t.replacen(t.split('.').nth(1).unwrap(), &other, 1);
        assert!(
            a.check_stream_token(&renamed, 1_001).is_err(),
            "name is signed"
        );
        assert!(a.check_stream_token("junk", 1).is_err());
    }

    #[test]
    fn scopes_cover_names_and_prefixes_and_never_system_topics_by_accident() {
        let s = Scope::new(vec!["orders".into(), "audit.*".into(), "__retry.*".into()]).unwrap();
        assert!(s.covers("orders") && !s.covers("orders2"));
        assert!(s.covers("audit.eu") && !s.covers("audit"));
        assert!(s.covers("__retry.mail") && !s.covers("__checkpoints"));
        let all = Scope::new(vec!["*".into()]).unwrap();
        assert!(all.covers("anything") && !all.covers("__parked"));
        assert!(all.covers("users") && !all.names("users"));
        assert!(Scope::new(vec![]).is_err());
        assert!(Scope::new(vec!["a/b".into()]).is_err());
        assert!(Scope::new(vec!["a*b".into()]).is_err());
    }

    #[test]
    fn command_topics_take_raw_appends_only_from_a_scope_that_names_them() {
        let a = auth(
            &[
                token("w", Role::Write, None),
                token("w-all", Role::Write, Some(&["*"])),
                token("w-users", Role::Write, Some(&["users"])),
                token("admin", Role::Admin, None),
            ],
            b"k",
        );
        let append = |t: &str, topic: &str| {
            a.authorize(Access::Append, Some(topic), Some(t))
                .map(|_| ())
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(append("w", "orders"), Ok(()));
        assert_eq!(append("w", "users"), Err(403));
        assert_eq!(append("w-all", "users"), Err(403));
        assert_eq!(append("w-users", "users"), Ok(()));
        assert_eq!(append("w-users", "orders"), Err(403));
        assert_eq!(append("w", "__checkpoints"), Err(403));
        assert_eq!(append("admin", "users"), Ok(()));
        assert_eq!(append("admin", "__checkpoints"), Ok(()));
        assert_eq!(append("nope", "orders"), Err(401));
        // The command API itself is open to any writer whose scope covers `users`.
        let command = |t: &str| {
            a.authorize(Access::Users { anonymous: false }, None, Some(t))
                .is_ok()
        };
        assert!(command("w") && command("w-all") && command("w-users"));
        let b = auth(&[token("w-orders", Role::Write, Some(&["orders"]))], b"k");
        assert!(b
            .authorize(Access::Users { anonymous: false }, None, Some("w-orders"))
            .is_err());
    }

    #[test]
    fn an_admin_token_with_topics_is_refused() {
        let e = Auth::new(&[token("a", Role::Admin, Some(&["x"]))], false, vec![]).unwrap_err();
        assert!(e.contains("admin token has every topic"), "{e}");
    }
}
