//! Client auth on a real node: every route of the route table × no token, a wrong token, and
//! each role. A route added to the API is in the table, so it is in this matrix too.

mod common;

use api::{Access, Role, ROUTES};
use common::*;

const TOKENS: [(&str, Role); 3] = [
    ("reader-token", Role::Read),
    ("writer-token", Role::Write),
    ("admin-token", Role::Admin),
];

fn tuning() -> Tuning {
    let mut extra = String::from(include_str!("common/user_email_rules.toml"));
    extra.push_str(
        "\n[users]\nactivation_secret = \"s\"\npassword_memory_kib = 64\npassword_iterations = 1\n",
    );
    extra.push_str("\n[auth]\nanonymous_signup = false\n");
    for (token, role) in TOKENS {
        let role = format!("{role:?}").to_lowercase();
        extra.push_str(&format!(
            "[[auth.token]]\nname = \"{role}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            api::auth::token_digest(token)
        ));
    }
    Tuning {
        extra: Box::leak(extra.into_boxed_str()),
        ..Tuning::default()
    }
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{topic}", "t")
        .replace("{stream}", "s")
        .replace("{set}", "user_email")
        .replace("{key}", "a@x.io")
        .replace("{id}", "00000000-0000-4000-8000-000000000000")
        .replace("{name}", "query")
}

/// The role a request needs (None: anyone), as DESIGN states it.
fn needed(access: Access, system_topic: bool) -> Option<Role> {
    match access {
        Access::Public => None,
        // anonymous_signup = false in this config
        Access::Signup => Some(Role::Write),
        Access::Role(r) => Some(r),
        Access::Append if system_topic => Some(Role::Admin),
        Access::Append => Some(Role::Write),
    }
}

#[test]
fn every_route_checks_tokens_and_roles() {
    let c = Cluster::start_as(1, tuning(), Some("admin-token"));
    let a = c.addr(1);
    let mut cases = 0;
    let mut routes: Vec<(String, &str, Access, bool)> = ROUTES
        .iter()
        .map(|(m, p, acc)| (concrete(p), *m, *acc, false))
        .collect();
    routes.push((
        "/v1/topics/__checkpoints/events".into(),
        "POST",
        Access::Append,
        true,
    ));
    for (path, method, access, system) in routes {
        let need = needed(access, system);
        let body = matches!(method, "POST" | "PATCH").then_some("{}");
        let mut creds: Vec<(Option<&str>, Option<Role>)> =
            vec![(None, None), (Some("wrong-token"), None)];
        creds.extend(TOKENS.iter().map(|(t, r)| (Some(*t), Some(*r))));
        for (token, role) in creds {
            // The event stream never ends when allowed: read only its status and error body.
            let r = if path.ends_with("/stream") {
                status_of_stream(&a, &path, token)
            } else {
                request_as(&a, method, &path, body, token)
            };
            let what = format!("{method} {path} with {token:?}: {}", r.text);
            match (need, role) {
                (None, _) => assert!(r.status != 401 && r.status != 403, "{what}"),
                (Some(_), None) => {
                    assert_eq!(r.status, 401, "{what}");
                    assert_eq!(r.body["error"], "unauthorized", "{what}");
                }
                (Some(n), Some(held)) if held < n => {
                    assert_eq!(r.status, 403, "{what}");
                    assert_eq!(r.body["error"], "forbidden", "{what}");
                }
                (Some(_), Some(_)) => assert!(r.status != 401 && r.status != 403, "{what}"),
            }
            cases += 1;
        }
    }
    assert!(cases >= ROUTES.len() * 5);
    // The event stream also takes a short-lived access_token in its query (EventSource).
    let t = request_as(
        &a,
        "POST",
        "/v1/auth/stream-token",
        Some("{}"),
        Some("reader-token"),
    );
    assert_eq!(t.status, 200, "{}", t.text);
    let token = t.body["access_token"].as_str().unwrap();
    assert_eq!(
        status_of_stream(
            &a,
            &format!("/v1/topics/t/stream?access_token={token}"),
            None
        )
        .status,
        200
    );
    assert_eq!(
        status_of_stream(&a, "/v1/topics/t/stream?access_token=1.bad", None).status,
        401
    );
    assert_eq!(
        status_of_stream(&a, "/v1/topics/t/stream", None).status,
        401
    );
    // Unknown routes stay 404 whatever the token.
    assert_eq!(request_as(&a, "GET", "/v1/nope", None, None).status, 404);
}

/// GET a streaming route and read only the status line (and a JSON error body, if any).
fn status_of_stream(addr: &str, path: &str, token: Option<&str>) -> Resp {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut text = String::new();
    if status != 200 {
        let _ = reader.read_to_string(&mut text);
        text = text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
    }
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
        location: None,
        retry_after: None,
        request_id: None,
    }
}
