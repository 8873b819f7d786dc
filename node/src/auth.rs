//! Who may call a client route: the decision, once per request, in the client routes' one
//! middleware (`crate::edge`), and the two auth routes. The tokens, roles and scopes it
//! decides with are the contract's (`api::auth`).

use std::borrow::Cow;

use axum::extract::{RawPathParams, Request, State};
use axum::response::{IntoResponse, Response};
use axum::RequestExt;

pub use api::auth::*;
use api::error::ApiError;

use crate::app::SharedApp;

/// Whom a client route's request comes from, and whether it may: the route's access from the
/// route table (`path`, the matched route), the token from the `Authorization` header, the
/// topic from the decoded path. Puts the caller in `req`'s extensions, or returns the answer
/// that refuses it. Part of the client routes' one middleware (`crate::edge`).
pub(crate) async fn admit(
    app: &SharedApp,
    path: Option<&str>,
    req: &mut Request,
) -> Result<(), Response> {
    let access = path
        .and_then(|p| crate::router::access_of(req.method(), p))
        .unwrap_or(Access::Role(Role::Admin));
    let topic = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "topic")
            .map(|(_, v)| v.to_string()),
        Err(_) => {
            return Err(ApiError::bad_request("a path segment is not valid UTF-8").into_response())
        }
    };
    let bearer = bearer(req.headers()).map(Cow::into_owned);
    // EventSource cannot send headers: the event stream also takes a short-lived read token
    // in its query (see `stream_token`).
    let on_stream = bearer.is_none() && path == Some(STREAM_ROUTE) && app.settings.auth.enabled();
    let decided = match stream_access_token(req) {
        Some(token) if on_stream => app
            .settings
            .auth
            .check_stream_token(token, api::runtime::now_ms())
            .and_then(|caller| {
                caller.check_read(topic.as_deref().unwrap_or_default())?;
                Ok(caller)
            }),
        None if on_stream => Err(ApiError::Unauthorized {
            message:
                "a bearer token or an access_token from POST /v1/auth/stream-token is required"
                    .into(),
        }),
        _ => app
            .settings
            .auth
            .authorize(access, topic.as_deref(), bearer.as_deref()),
    };
    let caller = decided.map_err(IntoResponse::into_response)?;
    // Anonymous sign-up and its resends are limited per client address, so one client cannot
    // fill the log with accounts or a mailbox with activation emails.
    if matches!(access, Access::Users { anonymous: true }) && caller.role.is_none() {
        let client = req
            .extensions()
            .get::<api::server::ClientAddr>()
            .map(|c| c.0.ip());
        app.runtime
            .anonymous_limiter
            .check(client)
            .map_err(IntoResponse::into_response)?;
    }
    req.extensions_mut().insert(caller);
    Ok(())
}

fn stream_access_token(req: &Request) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))
}

/// `GET /v1/auth/whoami` (read role): the role and topics of the presented token, so a
/// consumer can refuse to start with a token too weak for what it must write, instead of
/// failing later. With auth off everyone is `admin`.
pub async fn whoami(
    State(app): State<SharedApp>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    axum::Json(api::wire::Whoami {
        auth_enabled: app.settings.auth.enabled(),
        role: caller.role.unwrap_or(Role::Admin),
        topics: caller.scope.as_ref().map(|s| s.patterns().to_vec()),
    })
    .into_response()
}

/// `POST /v1/auth/stream-token` (read role): `{"access_token", "expires_at"}` for
/// `GET /v1/topics/{topic}/stream?access_token=...`.
pub async fn stream_token(
    State(app): State<SharedApp>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let (token, expires) = app
        .settings
        .auth
        .make_stream_token(&caller, api::runtime::now_ms());
    axum::Json(api::wire::StreamToken {
        access_token: token,
        expires_at: expires,
    })
    .into_response()
}
