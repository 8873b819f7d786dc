//! The client router in process, with no socket: routing, access decisions and the error
//! shape, on a one-node cluster built by `uniqlog_node::build`. What needs real processes
//! (listeners, TLS, crashes) is in the other tests.
#![cfg(not(madsim))]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::error::ErrorBody;
use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use uniqlog_node::{Config, SharedApp};

const READER: &str = "reader-token";
const ADMIN: &str = "admin-token";

/// A one-node cluster, initialized and leading, with a read token and an admin token.
async fn one_node(dir: &Path) -> SharedApp {
    let node = uniqlog_node::NodeConfig {
        id: 1,
        addr: "127.0.0.1:9".into(),
        peer_addr: None,
        data_dir: dir.join("node"),
    };
    let mut text = node.toml_section() + "[auth]\ncluster_secret = \"a secret\"\n";
    for (token, role) in [(READER, "read"), (ADMIN, "admin")] {
        text.push_str(&format!(
            "[[auth.token]]\nname = \"{token}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            api::auth::token_digest(token)
        ));
    }
    text.push_str("[users]\nactivation_secret = \"s\"\n");
    let config = Config::parse(&text, Path::new("router.toml"), dir).unwrap();
    let storage = raft_store::Storage::open(&dir.join("node")).unwrap();
    let app = uniqlog_node::build(&config, 1, storage, Arc::new(api::HyperTransport::new()))
        .await
        .unwrap();
    uniqlog_node::routes::cluster::init_cluster(&app)
        .await
        .unwrap();
    let mut leader = app.raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(10),
        leader.wait_for(|m| m.current_leader == Some(1)),
    )
    .await
    .expect("a one-node cluster elects itself")
    .unwrap();
    app
}

/// One request through the client router: the status and the body as JSON.
async fn call(
    app: &SharedApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = uniqlog_node::router::client_router(app.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every refusal is the one error shape, with a code a client can branch on.
fn error_code(body: &Value) -> String {
    let body: ErrorBody = serde_json::from_value(body.clone()).expect("the error shape");
    body.error
}

#[tokio::test]
async fn routes_access_and_error_shapes_without_a_socket() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = one_node(dir.path()).await;

    // Unknown paths and methods.
    let (status, body) = call(&app, Method::GET, "/v1/nowhere", Some(ADMIN), "").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = call(&app, Method::DELETE, "/v1/topics", Some(ADMIN), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    error_code(&body);

    // Access: no token, a read token on a write, an admin token.
    let append = r#"{"events":[{"type":"Made","data":{"n":1}}]}"#;
    let (status, body) = call(&app, Method::POST, "/v1/topics/t/events", None, append).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/topics/t/events",
        Some(READER),
        append,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    error_code(&body);
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/topics/t/events",
        Some(ADMIN),
        append,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: api::wire::AppendCreated = serde_json::from_value(body).unwrap();
    assert_eq!((created.first_offset, created.last_offset), (0, 0));

    // Bad input: a clear 4xx, and nothing appended.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/topics/t/events",
        Some(ADMIN),
        r#"{"events":[{"type":"Made","data":{"n":1}}],"extra":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    error_code(&body);
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/topics/t/events",
        Some(ADMIN),
        r#"{"events":[]}"#,
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "validation")
    );

    // The read token reads what the admin wrote, as the contract's page.
    let (status, body) = call(&app, Method::GET, "/v1/topics/t/events", Some(READER), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: api::wire::Page = serde_json::from_value(body).unwrap();
    assert_eq!(page.events.len(), 1, "the refused appends wrote nothing");
    assert_eq!(page.events[0].data, serde_json::json!({"n": 1}));

    // Public routes need no token.
    let (status, body) = call(&app, Method::GET, "/health", None, "").await;
    let health: api::wire::Health = serde_json::from_value(body).unwrap();
    assert_eq!((status, health.status.as_str()), (StatusCode::OK, "ok"));
    app.raft.shutdown().await.unwrap();
}
