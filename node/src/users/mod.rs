//! The sign-up flow's command side, served by every node: sign up, change email, delete,
//! activate, ask for the activation email again. Each command folds the user's stream on the
//! leader, then appends one event with that stream version under the uniq rules.

pub mod password;
pub mod validate;

pub use api::users::{
    commands, config, events, state, token, MAIL_HEARTBEAT_MS, MAIL_SILENT_MAX_MS,
};
use commands::{CommandDone, EmailChanged, SignedUp};

use crate::claims::claims_for;
use crate::errors::IntoApiError;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_store::{
    Answer, AppendRequest, Conflict, ExpectedVersion, IdempotencyKey, NewEvent, Outcome, RulesState,
};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use self::events::UserEvent;
use self::state::{fold, stream_of, Status, UserState, EMAIL_SET, TOPIC};
use self::validate::{validate_email_change, validate_signup, EmailBody, SignupBody};
use crate::app::SharedApp;
use crate::wire::{fingerprint, idempotency_key};
use api::error::ApiError;
use api::extract::{JsonBody, PathParams, QueryParams};
use api::runtime::now_ms;

/// Appends retried on a version conflict (a concurrent command on the same user).
const VERSION_RETRIES_MAX: usize = 5;

/// One event for a user's stream, and what it keeps out of the served data.
struct Command {
    event: UserEvent,
    secret: Option<Value>,
}

impl From<UserEvent> for Command {
    fn from(event: UserEvent) -> Self {
        Command {
            event,
            secret: None,
        }
    }
}

fn prepare(
    id: Uuid,
    cmd: &Command,
    expected: ExpectedVersion,
    rules: &RulesState,
    idempotency: Option<IdempotencyKey>,
    reply: Option<String>,
) -> Result<AppendRequest, ApiError> {
    let stream = stream_of(id);
    let (event_type, data) = cmd.event.to_parts();
    let claims = claims_for(&rules.rules, TOPIC, &event_type, &data, "")
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(AppendRequest {
        topic: TOPIC.into(),
        events: vec![NewEvent {
            event_type,
            stream: Some(stream.clone()),
            data: data.to_string(),
            metadata: None,
            claims,
            secret: cmd.secret.as_ref().map(Value::to_string),
        }],
        expected_version: [(stream, expected)].into_iter().collect(),
        idempotency,
        rules_version: rules.version,
        reply,
    })
}

/// The append's offset, or the HTTP error of its outcome; a taken email is `email_taken`.
fn appended(answer: &Answer) -> Result<u64, ApiError> {
    match &answer.outcome {
        Outcome::Appended { first_offset, .. } => Ok(*first_offset),
        Outcome::Conflict(Conflict::Uniq { set, .. }) if set == EMAIL_SET => {
            Err(ApiError::EmailTaken)
        }
        Outcome::Conflict(c) => Err(c.clone().into_api()),
        Outcome::Rejected(r) => Err(r.clone().into_api()),
        Outcome::RulesSet { .. } => Err(ApiError::internal(
            "a user command was answered as a rules change",
        )),
    }
}

/// The user's current state, read on (or through) the leader.
async fn current(app: &SharedApp, id: Uuid) -> Result<Option<UserState>, ApiError> {
    app.linearize().await?;
    let reader = app.reader.clone();
    let stream = stream_of(id);
    let page = raft_store::blocking(move || reader.read_stream(&stream, 0, usize::MAX))
        .await
        .map_err(crate::errors::api_error)?;
    let events: Vec<api::wire::Event> = page
        .events
        .iter()
        .map(|e| serde_json::from_str(e))
        .collect::<Result<_, _>>()
        .map_err(ApiError::internal)?;
    Ok(fold(id, &events))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no user {id}"))
}

/// Fold, decide the event, append it at that version; again on a version conflict.
async fn command(
    app: &SharedApp,
    id: Uuid,
    decide: impl Fn(&UserState) -> Result<Option<Command>, ApiError>,
) -> Result<(UserState, u64), ApiError> {
    for _ in 0..VERSION_RETRIES_MAX {
        let state = current(app, id)
            .await?
            .filter(|s| s.status != Status::Deleted);
        let state = state.ok_or_else(|| not_found(id))?;
        let Some(ev) = decide(&state)? else {
            // Nothing to append (an activation that already happened).
            return Ok((state.clone(), state.activated_offset.unwrap_or(0)));
        };
        let expected = ExpectedVersion::Exact(state.version);
        let answer = app
            .append(|rules| prepare(id, &ev, expected, rules, None, None))
            .await?;
        match &answer.outcome {
            Outcome::Conflict(Conflict::Version { .. }) => continue,
            _ => return Ok((state, appended(&answer)?)),
        }
    }
    Err(ApiError::unavailable(
        "the user kept changing concurrently; retry",
    ))
}

fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no user {raw:?}")))
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
        })?),
    };
    idempotency_key(header, None)
}

/// `POST /v1/users`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn signup(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SignupBody>,
) -> Result<Response, ApiError> {
    let signup = validate_signup(&body, &app.settings.users)?;
    // The password is not part of the fingerprint: a digest of it would sit in the log.
    let idempotency = idempotency_header(&headers)?.map(|key| IdempotencyKey {
        key,
        fingerprint: fingerprint(
            &json!({ "signup": { "username": signup.username, "email": signup.email } }),
        ),
    });
    let config = app.settings.users.clone();
    let password = signup.password.clone();
    let hash = {
        // Each hash takes `password_memory_kib` and a core for tens of milliseconds: a few at
        // a time, the rest wait, so a burst of sign-ups cannot take the node's memory.
        let _slot = app
            .runtime
            .password_hashing
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("this node is shutting down"))?;
        raft_store::blocking(move || password::hash_password(&config, &password))
            .await
            .map_err(ApiError::internal)?
    };
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut api::runtime::rng(), &mut bytes);
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let ev = Command {
        event: UserEvent::AccountCreated {
            id: id.to_string(),
            username: signup.username.clone(),
            email: signup.email.clone(),
        },
        secret: Some(json!({ "password_hash": hash })),
    };
    let answer = app
        .append(|rules| {
            prepare(
                id,
                &ev,
                ExpectedVersion::NoStream,
                rules,
                idempotency.clone(),
                Some(id.to_string()),
            )
        })
        .await?;
    let offset = appended(&answer)?;
    // A retry under the same key gets the first attempt's id back.
    let id = answer
        .reply
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(id);
    let body = SignedUp {
        id: id.to_string(),
        username: signup.username,
        email: signup.email,
        status: "pending".into(),
        offset,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/users/{id}"))],
        Json(body),
    )
        .into_response())
}

/// `PATCH /v1/users/{id}` with `{email}`.
pub async fn change_email(
    State(app): State<SharedApp>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<EmailBody>,
) -> Result<Response, ApiError> {
    let id = path_id(&id)?;
    let email = validate_email_change(&body)?;
    let (_, offset) = command(&app, id, |s| {
        Ok(Some(
            UserEvent::EmailChanged {
                id: id.to_string(),
                old_email: s.email.clone(),
                new_email: email.clone(),
            }
            .into(),
        ))
    })
    .await?;
    Ok(Json(EmailChanged {
        id: id.to_string(),
        email,
        offset,
    })
    .into_response())
}

/// `DELETE /v1/users/{id}`: releases the email.
pub async fn delete(
    State(app): State<SharedApp>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let id = path_id(&id)?;
    let (_, offset) = command(&app, id, |s| {
        Ok(Some(
            UserEvent::AccountDeleted {
                id: id.to_string(),
                email: s.email.clone(),
            }
            .into(),
        ))
    })
    .await?;
    Ok(Json(CommandDone {
        id: id.to_string(),
        offset,
    })
    .into_response())
}

/// The query of the activation link.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActivateParams {
    /// The token of the activation email.
    token: String,
}

fn activation_secret(app: &SharedApp) -> Result<&str, ApiError> {
    let secret = app.settings.users.activation_secret.expose();
    if secret.is_empty() {
        return Err(ApiError::unavailable(
            "activation is not configured ([users] activation_secret)",
        ));
    }
    Ok(secret)
}

/// `GET /v1/users/activate?token=...`: activates once; again is a harmless 200. The token
/// must have been made for the address the account has now ([`token`]). The link is opened
/// in a browser more often than by a program: one that asks for HTML (`Accept: text/html`)
/// gets a short page saying what happened, others the JSON answer.
pub async fn activate(
    State(app): State<SharedApp>,
    headers: HeaderMap,
    params: QueryParams<ActivateParams>,
) -> Result<Response, ApiError> {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let answer = activate_account(app, params).await;
    if !wants_html {
        return answer;
    }
    Ok(match answer {
        Ok(_) => activation_page(
            StatusCode::OK,
            "Your account is active",
            "You can close this page and sign in.",
        ),
        Err(e) => activation_page(
            e.status(),
            "This link did not activate an account",
            &e.to_string(),
        ),
    })
}

/// The page a browser gets from an activation link. `message` is escaped.
fn activation_page(status: StatusCode, title: &str, message: &str) -> Response {
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head><body style=\"font-family:\
         sans-serif;max-width:32em;margin:4em auto\"><h1>{t}</h1><p>{m}</p></body></html>",
        t = escape(title),
        m = escape(message)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn activate_account(
    app: SharedApp,
    QueryParams(params): QueryParams<ActivateParams>,
) -> Result<Response, ApiError> {
    let secret = activation_secret(&app)?;
    let token = token::ActivationToken::parse(&params.token)
        .and_then(|t| t.check_expiry(now_ms() / 1000).map(|()| t))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = token.id;
    let result = command(&app, id, |s| {
        token
            .verify(secret, &s.email)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((s.status == Status::Pending)
            .then(|| UserEvent::AccountActivated { id: id.to_string() }.into()))
    })
    .await;
    let (_, offset) = result.map_err(|e| match e {
        ApiError::NotFound { .. } => {
            ApiError::bad_request("the activation token names no active account")
        }
        e => e,
    })?;
    Ok(Json(CommandDone {
        id: id.to_string(),
        offset,
    })
    .into_response())
}

/// 503 unless the mail consumer reported within [`MAIL_SILENT_MAX_MS`] (it reports every
/// [`MAIL_HEARTBEAT_MS`] when idle): asking for an email that nothing will send is refused,
/// not accepted and forgotten.
async fn mail_consumer_runs(app: &SharedApp) -> Result<(), ApiError> {
    let latest = crate::routes::consumers::latest_of(app, "mail").await?;
    let reported = latest.map(|c| c.reported_at);
    match reported {
        Some(at) if now_ms().saturating_sub(at) <= MAIL_SILENT_MAX_MS => Ok(()),
        Some(at) => Err(ApiError::unavailable(format!(
            "the mail consumer last reported {} s ago: it does not seem to run, and the email \
             would not be sent. Start `uniqlog mail` (or `uniqlog cluster up --with-consumers`)",
            now_ms().saturating_sub(at) / 1000
        ))),
        None => Err(ApiError::unavailable(
            "no mail consumer has ever reported: the email would not be sent. Start `uniqlog \
             mail` (or `uniqlog cluster up --with-consumers`)",
        )),
    }
}

/// `POST /v1/users/{id}/activation-email`: the mail consumer sends the email again (202).
/// At most one per `activation_resend_interval_s` per account, counted from the last email's
/// event in the log, so the limit holds across nodes and restarts: knowing an account's id is
/// not enough to flood its mailbox.
pub async fn resend_activation(
    State(app): State<SharedApp>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let id = path_id(&id)?;
    mail_consumer_runs(&app).await?;
    let interval_ms = app
        .settings
        .users
        .activation_resend_interval_s
        .saturating_mul(1000);
    let (_, offset) = command(&app, id, |s| {
        if s.status == Status::Active {
            return Err(ApiError::AlreadyActive);
        }
        let next_ms = s.last_mail_ms.unwrap_or(0).saturating_add(interval_ms);
        let now = now_ms();
        if now < next_ms {
            return Err(ApiError::RateLimited {
                message: format!(
                    "an activation email was sent to this account less than {} s ago",
                    app.settings.users.activation_resend_interval_s
                ),
                retry_after_s: (next_ms - now).div_ceil(1000),
            });
        }
        Ok(Some(
            UserEvent::ActivationRequested {
                id: id.to_string(),
                username: s.username.clone(),
                email: s.email.clone(),
            }
            .into(),
        ))
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CommandDone {
            id: id.to_string(),
            offset,
        }),
    )
        .into_response())
}
