//! Client auth on a real node, generated from the route table: every route × no token, a wrong
//! token, each role and two scoped tokens × path segments as written and percent-encoded, and
//! for `{topic}` routes an ordinary, a system and a command topic. A route added to the API is
//! in the table, so it is in this matrix too. The expectations are written from DESIGN's
//! rules here, not taken from the code under test; and the topics are read back at the end:
//! exactly the appends that were allowed landed.

mod common;

use std::collections::BTreeSet;

use api::{Access, Role};
use common::*;
use uniqlog_node::router::ROUTES;

/// (token, role, topics it may read and append to).
const TOKENS: [(&str, Role, Option<&[&str]>); 5] = [
    ("reader-token", Role::Read, None),
    ("writer-token", Role::Write, None),
    ("admin-token", Role::Admin, None),
    ("t-reader-token", Role::Read, Some(&["t"])),
    ("t-users-writer-token", Role::Write, Some(&["t", "users"])),
];

/// What a token holds: its role and its topics.
type Held = (Role, Option<&'static [&'static str]>);

/// An ordinary topic, a system topic, the command API's topic.
const TOPICS: [&str; 3] = ["t", "__checkpoints", "users"];

fn tuning() -> Tuning {
    let mut extra = String::from(include_str!("common/user_email_rules.toml"));
    extra.push_str(
        "\n[users]\nactivation_secret = \"s\"\npassword_memory_kib = 64\npassword_iterations = 1\n",
    );
    extra.push_str("\n[auth]\nanonymous_signup = false\ncluster_secret = \"a secret\"\n");
    for (token, role, topics) in TOKENS {
        let role = format!("{role:?}").to_lowercase();
        let topics = topics.map_or(String::new(), |t| format!("topics = {t:?}\n"));
        extra.push_str(&format!(
            "[[auth.token]]\nname = \"{token}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n{topics}",
            api::auth::token_digest(token)
        ));
    }
    Tuning {
        extra: Box::leak(extra.into_boxed_str()),
        ..Tuning::default()
    }
}

/// Every byte of `s` as `%XX`.
fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A concrete path for a route pattern, its segments percent-encoded when `encoded`.
fn concrete(pattern: &str, topic: &str, encoded: bool) -> String {
    let seg = |s: &str| {
        if encoded {
            encode_all(s)
        } else {
            s.to_string()
        }
    };
    pattern
        .replace("{topic}", &seg(topic))
        .replace("{stream}", &seg("s"))
        .replace("{set}", &seg("user_email"))
        .replace("{key}", &seg("a@x.io"))
        .replace("{id}", &seg("00000000-0000-4000-8000-000000000000"))
        .replace("{name}", &seg("query"))
}

fn covers(topics: Option<&[&str]>, topic: &str) -> bool {
    topics.is_none_or(|t| t.contains(&topic))
}

/// Whether a caller holding `token` (`None`: no valid token) may call a route, as DESIGN's
/// rules say: `Err(401)` without a valid token, `Err(403)` with one too weak.
fn expected(
    access: Access,
    topic: &str,
    token: Option<(Role, Option<&[&str]>)>,
) -> Result<(), u16> {
    let Some((role, topics)) = token else {
        return if access == Access::Public {
            Ok(())
        } else {
            Err(401)
        };
    };
    let allowed = match access {
        Access::Public => true,
        Access::Role(r) => role >= r,
        Access::ReadTopic => role == Role::Admin || covers(topics, topic),
        Access::Append => match topic {
            _ if role == Role::Admin => true,
            t if t.starts_with("__") => false,
            // The command API's topic: only a scope that names it.
            "users" => role >= Role::Write && topics.is_some_and(|t| t.contains(&"users")),
            t => role >= Role::Write && covers(topics, t),
        },
        // anonymous_signup = false in this config.
        Access::Users { .. } => {
            role >= Role::Write && (role == Role::Admin || covers(topics, "users"))
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(403)
    }
}

/// An append body whose event carries `marker`.
fn append_body(marker: &str) -> String {
    format!(r#"{{"events":[{{"type":"Probe","data":{{"marker":"{marker}"}}}}]}}"#)
}

#[test]
fn every_route_checks_tokens_roles_and_topics_on_decoded_paths_and_nothing_lands_unallowed() {
    let c = Cluster::start_as(1, tuning(), Some("admin-token"));
    let a = c.addr(1);
    let mut cases = 0;
    // Markers of the appends that were allowed, per topic.
    let mut landed: Vec<(String, String)> = Vec::new();
    let mut creds: Vec<(Option<&str>, Option<Held>)> =
        vec![(None, None), (Some("wrong-token"), None)];
    creds.extend(TOKENS.iter().map(|(t, r, s)| (Some(*t), Some((*r, *s)))));
    for uniqlog_node::router::Route {
        method,
        path: pattern,
        access,
        ..
    } in ROUTES
    {
        let topics: &[&str] = if pattern.contains("{topic}") {
            &TOPICS
        } else {
            &["t"]
        };
        for topic in topics {
            for encoded in [false, true] {
                let path = concrete(pattern, topic, encoded);
                for (token, held) in &creds {
                    let marker = format!("m{cases}");
                    let body = match (*method, *access) {
                        ("POST", Access::Append) => Some(append_body(&marker)),
                        ("POST" | "PATCH", _) => Some("{}".to_string()),
                        _ => None,
                    };
                    // The event stream never ends when allowed: read only its status.
                    let r = if pattern.ends_with("/stream") {
                        status_of_stream(&a, &path, *token)
                    } else {
                        request_as(&a, method, &path, body.as_deref(), *token)
                    };
                    let what = format!("{method} {path} with {token:?}: {} {}", r.status, r.text);
                    match expected(*access, topic, *held) {
                        Ok(()) => {
                            assert!(r.status != 401 && r.status != 403, "{what}");
                            if *access == Access::Append {
                                assert_eq!(r.status, 201, "{what}");
                                landed.push((topic.to_string(), marker));
                            }
                        }
                        Err(code) => {
                            assert_eq!(r.status, code, "{what}");
                            let error = if code == 401 {
                                "unauthorized"
                            } else {
                                "forbidden"
                            };
                            assert_eq!(r.body["error"], error, "{what}");
                        }
                    }
                    cases += 1;
                }
            }
        }
    }
    assert!(cases >= ROUTES.len() * 14, "{cases}");
    // Read back as admin: exactly the allowed appends are there.
    for topic in TOPICS {
        let got: BTreeSet<String> = read_all(&a, topic, "admin-token")
            .iter()
            .filter(|e| e["type"] == "Probe")
            .map(|e| e["data"]["marker"].as_str().unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = landed
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(got, want, "the appends to {topic}");
    }
    // With a valid token a writer with no scope was refused on `users` and `__checkpoints`,
    // plain and encoded: the checks above hold exactly that, and the read-back found nothing
    // of theirs.
    assert!(landed.iter().any(|(t, _)| t == "users"));
    // Unknown routes stay 404 whatever the token.
    assert_eq!(request_as(&a, "GET", "/v1/nope", None, None).status, 404);
}

/// The whole topic as `token` reads it.
fn read_all(addr: &str, topic: &str, token: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        let path = format!("/v1/topics/{topic}/events?from={}", out.len());
        let r = request_as(addr, "GET", &path, None, Some(token));
        assert_eq!(r.status, 200, "{}", r.text);
        let events = r.body["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        out.extend(events);
    }
}

#[test]
fn scoped_tokens_see_only_their_topics_streams_sets_and_event_streams() {
    let c = Cluster::start_as(1, tuning(), Some("admin-token"));
    let a = c.addr(1);
    let admin = Some("admin-token");
    for (topic, stream) in [("t", "s-t"), ("users", "s-users"), ("other", "s-other")] {
        let body = format!(r#"{{"events":[{{"type":"Probe","stream":"{stream}","data":{{}}}}]}}"#);
        let r = request_as(
            &a,
            "POST",
            &format!("/v1/topics/{topic}/events"),
            Some(&body),
            admin,
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let reader = Some("t-reader-token");
    // The topic list holds only what the token may read.
    let listed = request_as(&a, "GET", "/v1/topics", None, reader);
    let names: Vec<&str> = listed.body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["t"], "{}", listed.text);
    // A stream's events: only streams of its topics.
    assert_eq!(
        request_as(&a, "GET", "/v1/streams/s-t/events", None, reader).status,
        200
    );
    let r = request_as(&a, "GET", "/v1/streams/s-users/events", None, reader);
    assert_eq!(r.status, 403, "{}", r.text);
    // Uniq sets over `users` are outside a `t` scope.
    let r = request_as(&a, "GET", "/v1/uniq/user_email/a@x.io", None, reader);
    assert_eq!(r.status, 403, "{}", r.text);
    let sets = request_as(&a, "GET", "/v1/uniq", None, reader);
    assert_eq!(
        sets.body["sets"].as_array().unwrap().len(),
        0,
        "{}",
        sets.text
    );
    // whoami tells the topics.
    let me = request_as(&a, "GET", "/v1/auth/whoami", None, reader);
    assert_eq!(me.body["topics"], serde_json::json!(["t"]), "{}", me.text);
    // A stream token keeps the scope of the token it was made for.
    let t = request_as(&a, "POST", "/v1/auth/stream-token", Some("{}"), reader);
    let token = t.body["access_token"].as_str().unwrap().to_string();
    let open = |topic: &str| {
        status_of_stream(
            &a,
            &format!("/v1/topics/{topic}/stream?access_token={token}"),
            None,
        )
        .status
    };
    assert_eq!(open("t"), 200);
    assert_eq!(open("users"), 403);
    assert_eq!(open(&encode_all("users")), 403);
    assert_eq!(
        status_of_stream(&a, "/v1/topics/t/stream?access_token=1.bad.x", None).status,
        401
    );
    assert_eq!(
        status_of_stream(&a, "/v1/topics/t/stream", None).status,
        401
    );
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
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
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
        bytes: text.clone().into_bytes(),
        text,
        location: None,
        retry_after: None,
        request_id: None,
    }
}
