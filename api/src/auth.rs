//! Client authentication and roles. Auth is on exactly when `[auth]` lists tokens. A token is
//! presented as `Authorization: Bearer <token>` and stored only as its SHA-256. Roles nest:
//! `admin` includes `write`, which includes `read`.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::app::SharedApp;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
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
}

pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match app.auth.check(access, system, bearer) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
