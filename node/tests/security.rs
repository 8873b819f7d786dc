//! The holes an outside review found (issue 23), each proven closed on real processes: what a
//! node, the query API, the mail consumer and the mail sink refuse to start with; request and
//! body deadlines; read pages capped in bytes; streams capped per node; anonymous requests
//! rate-limited per client; activation links bound to the account's address; backups private
//! and signed; loopback listeners deaf to foreign `Host` names; and docs/security.md's list of public
//! routes. (The auth matrix is `auth.rs`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A config of one node at `addr` with `extra` appended, in `dir`.
fn one_node_config(dir: &Path, addr: &str, extra: &str) -> String {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!("[[node]]\nid = 1\naddr = \"{addr}\"\ndata_dir = \"node1\"\n\n{extra}"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn token_lines(token: &str, role: &str) -> String {
    format!(
        "[[auth.token]]\nname = \"{role}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        api::auth::token_digest(token)
    )
}

#[test]
fn a_node_refuses_to_start_exposed_without_tls_with_tokens_but_no_secret_or_a_weak_activation_secret(
) {
    let strong = "k".repeat(32);
    let cases = [
        (
            "10.255.0.1:7001",
            format!(
                "[users]\nactivation_secret = \"{strong}\"\n[auth]\ncluster_secret = \"c\"\n{}",
                token_lines("t", "admin")
            ),
            "no TLS certificate (tls_cert)",
        ),
        (
            "127.0.0.1:7001",
            format!("[auth]\n{}", token_lines("t", "admin")),
            "auth.cluster_secret: [[auth.token]] is set without a cluster secret",
        ),
        (
            "10.255.0.1:7001",
            "[auth]\ninsecure = true\n[users]\nactivation_secret = \"dev-only-secret-change-me\"\n"
                .to_string(),
            "users.activation_secret",
        ),
        (
            "10.255.0.1:7001",
            "[auth]\ninsecure = true\n[users]\nactivation_secret = \"short\"\n".to_string(),
            "at least 32",
        ),
    ];
    for (addr, extra, says) in cases {
        let dir = tempfile::TempDir::new().unwrap();
        let config = one_node_config(dir.path(), addr, &extra);
        let (ok, out) = run_to_end(
            &["node", "--config", &config, "--id", "1"],
            Duration::from_secs(20),
        );
        assert!(!ok, "started with {extra}: {out}");
        assert!(out.contains(says), "{says:?} not in: {out}");
        assert!(
            !dir.path().join("node1").exists(),
            "a refused node leaves nothing behind"
        );
    }
}

#[test]
fn the_query_api_the_mail_listener_and_the_mail_sink_get_the_exposure_check() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let query = one_node_config(
        dir.path(),
        "127.0.0.1:7001",
        &format!("[query]\nlisten = \"0.0.0.0:{port}\"\ndata_dir = \"q\"\n"),
    );
    let (ok, out) = run_to_end(&["query", "--config", &query], Duration::from_secs(20));
    assert!(
        !ok && out.contains("the query API listens on 0.0.0.0"),
        "{out}"
    );
    let mail = one_node_config(
        dir.path(),
        "127.0.0.1:7001",
        &format!("[users]\nactivation_secret = \"s\"\n[mail]\nlisten = \"0.0.0.0:{port}\"\n"),
    );
    let (ok, out) = run_to_end(&["mail", "--config", &mail], Duration::from_secs(20));
    assert!(
        !ok && out.contains("the mail consumer's health listener listens on 0.0.0.0"),
        "{out}"
    );
    let listen = format!("0.0.0.0:{port}");
    let (ok, out) = run_to_end(&["mail-sink", "--listen", &listen], Duration::from_secs(20));
    assert!(!ok && out.contains("--insecure"), "{out}");
}

#[test]
fn the_query_api_serves_tls_with_the_node_certificate() {
    let tls = TestTls::new("query test CA");
    let mut c = Cluster::start_tls(1, users_tuning(), &tls);
    let port = free_port();
    let config = c.config_with(
        "query-tls",
        &format!("\n[query]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"q\"\n"),
    );
    c.spawn_aux("query", &["query", "--config", config.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    let health = wait_for("the query API over TLS", Duration::from_secs(30), || {
        c.http
            .get(&addr, "/health")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(health.body["checkpoint"].is_u64(), "{}", health.text);
    // Plain HTTP gets no answer from a TLS listener.
    assert!(get(&addr, "/health").is_err());
    c.kill_aux("query");
}

/// Send `head` and `body` on a new connection, keep it open for `hold`, then read the
/// answer's status line (None: no answer).
fn raw(addr: &str, head: &str, body: &[u8], read_for: Duration) -> (Option<u16>, TcpStream) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(body).unwrap();
    sock.set_read_timeout(Some(read_for)).unwrap();
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut line = String::new();
    let status = match reader.read_line(&mut line) {
        Ok(n) if n > 0 => line.split_whitespace().nth(1).and_then(|s| s.parse().ok()),
        _ => None,
    };
    (status, sock)
}

#[test]
fn a_slow_body_is_cut_at_the_request_timeout_and_appends_nothing() {
    let c = Cluster::start(
        1,
        Tuning {
            limits: "request_timeout_ms = 1000\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    let head = format!(
        "POST /v1/topics/slow/events HTTP/1.1\r\nHost: {a}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n"
    );
    let start = Instant::now();
    // Ten bytes of a hundred, then nothing: the client holds the request open.
    let (status, _sock) = raw(&a, &head, b"{\"events\":", Duration::from_secs(15));
    assert_eq!(status, Some(408), "a slow body is answered 408");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "cut at about the request timeout, not {took:?}"
    );
    assert!(c.read_topic(1, "slow").is_empty());
}

#[test]
fn read_pages_are_capped_in_bytes_and_hold_at_least_one_event() {
    let c = Cluster::start(
        1,
        Tuning {
            limits: "read_bytes_max = 10000\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    let pad = "x".repeat(4000);
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"type": "Big", "stream": "big-1", "data": {"i": i, "pad": pad}}))
        .collect();
    let r = post(
        &a,
        "/v1/topics/big/events",
        &json!({ "events": events }).to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let page = get(&a, "/v1/topics/big/events?from=0&limit=100").unwrap();
    assert_eq!(
        page.body["events"].as_array().unwrap().len(),
        2,
        "{}",
        &page.text[..200]
    );
    assert_eq!(page.body["next_offset"], 2);
    let stream = get(&a, "/v1/streams/big-1/events?limit=100").unwrap();
    assert_eq!(stream.body["events"].as_array().unwrap().len(), 2);
    // One event larger than the cap still comes, alone.
    let huge = json!({"events": [{"type": "Huge", "data": {"pad": "y".repeat(12000)}}]});
    assert_eq!(
        post(&a, "/v1/topics/big/events", &huge.to_string())
            .unwrap()
            .status,
        201
    );
    let page = get(&a, "/v1/topics/big/events?from=5&limit=100").unwrap();
    assert_eq!(page.body["events"].as_array().unwrap().len(), 1);
    // Every event is still read, page by page.
    assert_eq!(c.read_topic(1, "big").len(), 6);
}

/// Open the event stream of `topic`; the status and the open connection.
fn open_stream(addr: &str, topic: &str) -> (Option<u16>, TcpStream) {
    let head = format!(
        "GET /v1/topics/{topic}/stream HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, &head, b"", Duration::from_secs(10))
}

#[test]
fn streams_and_long_polls_are_capped_per_node() {
    let c = Cluster::start(
        1,
        Tuning {
            limits: "streams_max = 2\nsse_keepalive_ms = 100\n",
            ..Tuning::default()
        },
    );
    let a = c.addr(1);
    let (s1, first) = open_stream(&a, "t");
    let (s2, _second) = open_stream(&a, "t");
    assert_eq!((s1, s2), (Some(200), Some(200)));
    let (s3, _) = open_stream(&a, "t");
    assert_eq!(s3, Some(429), "a third stream");
    let poll = get(&a, "/v1/topics/t/events?wait_ms=500").unwrap();
    assert_eq!(poll.status, 429, "{}", poll.text);
    assert_eq!(poll.retry_after.as_deref(), Some("1"));
    // Reads that do not wait are not capped.
    assert_eq!(get(&a, "/v1/topics/t/events").unwrap().status, 200);
    // A closed stream gives its place back (found at its next keep-alive).
    drop(first);
    let (again, _third) = wait_for("a place among the streams", Duration::from_secs(10), || {
        let (s, sock) = open_stream(&a, "t");
        (s == Some(200)).then_some((s, sock))
    });
    assert_eq!(again, Some(200));
}

#[test]
fn anonymous_requests_are_rate_limited_per_client_and_tokens_are_not() {
    let mut extra = String::from(include_str!("common/user_email_rules.toml"));
    extra.push_str(
        "\n[users]\nactivation_secret = \"s\"\npassword_memory_kib = 64\npassword_iterations = 1\n\
         \n[auth]\nanonymous_signup = true\ncluster_secret = \"c\"\n",
    );
    extra.push_str(&token_lines("writer-token", "write"));
    extra.push_str(&token_lines("admin-token", "admin"));
    let c = Cluster::start_as(
        1,
        Tuning {
            limits: "anonymous_requests_per_minute = 3\n",
            extra: Box::leak(extra.into_boxed_str()),
            ..Tuning::default()
        },
        Some("admin-token"),
    );
    let a = c.addr(1);
    let body = |i: usize| {
        json!({"username": "u", "email": format!("u{i}@x.io"), "password": "correct horse"})
            .to_string()
    };
    for i in 0..3 {
        let r = post(&a, "/v1/users", &body(i)).unwrap();
        assert_eq!(r.status, 201, "anonymous sign-up {i}: {}", r.text);
    }
    let r = post(&a, "/v1/users", &body(3)).unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("rate_limited")),
        "{}",
        r.text
    );
    let wait: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    // The activation routes share the client's budget.
    assert_eq!(get(&a, "/v1/users/activate?token=x").unwrap().status, 429);
    // A caller with a token is not anonymous.
    let r = request_as(
        &a,
        "POST",
        "/v1/users",
        Some(&body(4)),
        Some("writer-token"),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // Nothing was appended for the refused one.
    let page = request_as(
        &a,
        "GET",
        "/v1/topics/users/events",
        None,
        Some("admin-token"),
    );
    let emails: Vec<String> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["email"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(emails.len(), 4, "{emails:?}");
    assert!(!emails.contains(&"u3@x.io".to_string()), "{emails:?}");
}

fn mail_config(c: &Cluster, sink: &str) -> String {
    c.config_with(
        "mail",
        &format!(
            "\n[mail]\nlisten = \"127.0.0.1:{}\"\nwebhook_url = \"http://{sink}/send\"\n\
             checkpoint_every_events = 1\ncheckpoint_every_ms = 100\n",
            free_port()
        ),
    )
    .to_str()
    .unwrap()
    .to_string()
}

/// The message under `key` at the sink, once it came.
fn message(sink: &str, key: &str) -> Value {
    wait_for(
        &format!("the message {key}"),
        Duration::from_secs(30),
        || {
            get(sink, "/messages").ok()?.body["messages"]
                .as_array()?
                .iter()
                .find(|m| m["idempotency_key"] == key)
                .cloned()
        },
    )
}

/// The activation path of a message's link (its host is the config's `public_base_url`).
fn link_path(m: &Value) -> String {
    let text = m["text"].as_str().unwrap();
    let at = text.find("/v1/users/activate?token=").expect("a link");
    text[at..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn activation_mail_goes_to_the_accounts_address_and_links_die_with_an_email_change() {
    let mut c = Cluster::start(1, users_tuning());
    let a = c.addr(1);
    let sink = format!("127.0.0.1:{}", free_port());
    c.spawn_aux("sink", &["mail-sink", "--listen", &sink]);
    let config = mail_config(&c, &sink);
    c.spawn_aux("mail", &["mail", "--config", &config]);
    let ada = signup(&a, "ada", "ada@example.com");
    assert_eq!(ada.status, 201, "{}", ada.text);
    let id = ada.body["id"].as_str().unwrap().to_string();
    let first = message(&sink, &format!("users:{}", ada.body["offset"]));
    assert_eq!(first["to"], "ada@example.com");
    // An event that names another address (auth is off here, so the raw API takes it) does
    // not send a link there: the consumer mails the account's own address.
    let forged = json!({"events": [{"type": "ActivationRequested", "stream": format!("user-{id}"),
        "data": {"id": id, "username": "ada", "email": "mallory@example.com"}}]});
    let r = post(&a, "/v1/topics/users/events", &forged.to_string()).unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let second = message(&sink, &format!("users:{}", r.body["first_offset"]));
    assert_eq!(second["to"], "ada@example.com", "{second}");
    // An email change makes the links sent to the old address useless.
    let old_link = link_path(&first);
    let r = request(
        &a,
        "PATCH",
        &format!("/v1/users/{id}"),
        Some(r#"{"email":"ada@new.example"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let dead = get(&a, &old_link).unwrap();
    assert_eq!(dead.status, 400, "{}", dead.text);
    // A resend goes to the new address, and its link works.
    let resent = wait_for("a resend allowed", Duration::from_secs(10), || {
        let r = post(&a, &format!("/v1/users/{id}/activation-email"), "{}").unwrap();
        (r.status == 202).then_some(r)
    });
    let third = message(&sink, &format!("users:{}", resent.body["offset"]));
    assert_eq!(third["to"], "ada@new.example");
    let ok = get(&a, &link_path(&third)).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text);
}

/// A stand-in HTTPS provider (Python's http.server over TLS), recording each request body as
/// a line of `log`.
fn https_provider(dir: &Path, port: u16, log: &Path) -> Killed {
    let script = r#"
import http.server, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        with open(log, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;
    let tls = dir.join("tls");
    Killed(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(tls.join("node.pem"))
            .arg(tls.join("node.key"))
            .arg(log)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_https_webhook_is_reached_over_tls_checked_against_its_ca() {
    let mut c = Cluster::start(1, users_tuning());
    let tls = TestTls::new("provider CA");
    tls.write(c.dir.path());
    let port = free_port();
    let log = c.dir.path().join("provider.log");
    let _provider = https_provider(c.dir.path(), port, &log);
    let config = c.config_with(
        "mail-https",
        &format!(
            "\n[mail]\nlisten = \"127.0.0.1:{}\"\nwebhook_url = \"https://127.0.0.1:{port}/send\"\n\
             webhook_ca = \"tls/ca.pem\"\nwebhook_authorization = \"Bearer provider-key\"\n\
             checkpoint_every_events = 1\ncheckpoint_every_ms = 100\n",
            free_port()
        ),
    );
    c.spawn_aux("mail", &["mail", "--config", config.to_str().unwrap()]);
    let r = signup(&c.addr(1), "eve", "eve@example.com");
    assert_eq!(r.status, 201, "{}", r.text);
    let got = wait_for("the provider's request", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).ok().filter(|t| !t.is_empty())
    });
    let body: Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    assert_eq!(body["to"], "eve@example.com", "{got}");
}

/// GET `path` with a `Host` header of our choosing; the status.
fn get_with_host(addr: &str, path: &str, host: &str) -> u16 {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw(addr, &head, b"", Duration::from_secs(10)).0.unwrap()
}

#[test]
fn a_loopback_node_with_auth_off_answers_only_requests_for_loopback_names() {
    let c = Cluster::start(1, Tuning::default());
    let a = c.addr(1);
    let port = a.rsplit(':').next().unwrap();
    // A page that rebound its own name to 127.0.0.1 still sends that name.
    assert_eq!(
        get_with_host(&a, "/v1/topics", &format!("evil.example:{port}")),
        403
    );
    assert_eq!(get_with_host(&a, "/v1/topics", "127.0.0.1.nip.io"), 403);
    for host in [a.clone(), format!("localhost:{port}"), "[::1]".into()] {
        assert_eq!(get_with_host(&a, "/v1/topics", &host), 200, "{host}");
    }
    // Peers reach each other by address: unaffected (a one-node cluster's leader is itself,
    // so its writes work through the same listener).
    append_ok(&a, "t", "after", None);
}

#[test]
fn backups_are_private_and_signed_and_restore_checks_the_mac() {
    use std::os::unix::fs::PermissionsExt;
    let secret_tuning = Tuning {
        extra: "[auth]\ncluster_secret = \"the cluster secret\"\n",
        ..Tuning::default()
    };
    let c = Cluster::start(1, secret_tuning.clone());
    append_ok(&c.addr(1), "t", "kept", None);
    let file = c.dir.path().join("b.backup");
    c.cli_ok(&["backup", "--to", file.to_str().unwrap()]);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // Restore needs the MAC under the restoring config's secret.
    let restore = |secret: Option<&str>, from: &Path, extra_args: &[&str]| {
        let dir = tempfile::TempDir::new().unwrap();
        let auth = secret.map_or(String::new(), |s| {
            format!("[auth]\ncluster_secret = \"{s}\"\n")
        });
        let config = one_node_config(dir.path(), &format!("127.0.0.1:{}", free_port()), &auth);
        let mut args = vec![
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--config",
            &config,
            "--id",
            "1",
        ];
        args.extend_from_slice(extra_args);
        let (ok, out) = run_to_end(&args, Duration::from_secs(60));
        (ok, out, dir.path().join("node1").exists())
    };
    let (ok, out, _) = restore(Some("another secret"), &file, &[]);
    assert!(!ok && out.contains("does not carry a valid MAC"), "{out}");
    // Edited after it was taken: the MAC no longer matches, whatever the CRCs say.
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    bytes[len - 1] ^= 1;
    let edited = c.dir.path().join("edited.backup");
    std::fs::write(&edited, &bytes).unwrap();
    let (ok, out, _) = restore(Some("the cluster secret"), &edited, &[]);
    assert!(!ok && out.contains("does not carry a valid MAC"), "{out}");
    // Its trailer cut off, it is unsigned: refused unless the operator says so.
    let unsigned = c.dir.path().join("unsigned.backup");
    std::fs::write(&unsigned, &std::fs::read(&file).unwrap()[..len - 41]).unwrap();
    let (ok, out, _) = restore(Some("the cluster secret"), &unsigned, &[]);
    assert!(
        !ok && out.contains("not signed") && out.contains("--allow-unsigned"),
        "{out}"
    );
    let (ok, out, restored) = restore(Some("the cluster secret"), &unsigned, &["--allow-unsigned"]);
    assert!(ok && restored, "{out}");
    let (ok, out, restored) = restore(Some("the cluster secret"), &file, &[]);
    assert!(ok && restored, "{out}");
}

#[test]
fn the_security_doc_lists_exactly_the_public_routes() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md"))
            .unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("Public with auth on:"))
        .expect("a line 'Public with auth on: ...' in docs/security.md");
    let listed: std::collections::BTreeSet<String> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let public: std::collections::BTreeSet<String> = uniqlog_node::router::ROUTES
        .iter()
        .filter(|r| r.access == api::Access::Public)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(listed, public, "docs/security.md: {line}");
}
