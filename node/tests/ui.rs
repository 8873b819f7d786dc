//! The dashboard end to end, in headless Chromium (`scripts/ui_e2e.py` drives it over the
//! DevTools protocol) against three real nodes and a query consumer.

mod common;

use std::process::Command;

use common::*;

fn chromium() -> String {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|b| b.to_string())
        .expect("the dashboard test needs Chromium: scripts/test.sh installs it (apt-get install chromium)")
}

/// Run the browser script against `c` (node 1), signing in with `token` when given.
fn drive(c: &Cluster, token: Option<&str>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ui_e2e.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--base", &format!("http://{}", c.addr(1))])
        .args(["--chromium", &chromium()]);
    if let Some(token) = token {
        cmd.args(["--token", token]);
    }
    if let Ok(dir) = std::env::var("UI_SCREENSHOTS") {
        cmd.args(["--screenshots", &dir]);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stderr.contains("No module named 'websocket'"),
        "the dashboard test needs websocket-client: scripts/test.sh installs it"
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("all seen"), "{stdout}");
}

#[test]
fn the_dashboard_shows_the_cluster_a_live_tail_an_owner_and_a_consumer_catching_up() {
    let mut c = Cluster::start(3, users_tuning());
    c.wait_leader(&[1, 2, 3]);
    // The users topic exists before the page opens it.
    assert_eq!(signup(&c.addr(2), "first", "first@example.com").status, 201);
    c.start_query("query");
    drive(&c, None);
}

/// With auth on the page shows nothing until the user signs in with a token; then the same.
#[test]
fn the_dashboard_works_with_auth_on_after_signing_in() {
    const ADMIN: &str = "dashboard-admin-token";
    let mut extra = String::from(USER_EMAIL_RULES);
    extra.push_str(
        "\n[users]\nactivation_secret = \"s\"\npassword_memory_kib = 64\npassword_iterations = 1\n",
    );
    extra.push_str(&format!(
        "\n[auth]\ncluster_secret = \"a secret\"\nclient_token = \"{ADMIN}\"\n\
         [[auth.token]]\nname = \"admin\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        api::auth::token_digest(ADMIN)
    ));
    let tuning = Tuning {
        extra: Box::leak(extra.into_boxed_str()),
        ..Tuning::default()
    };
    let mut c = Cluster::start_as(3, tuning, Some(ADMIN));
    c.wait_leader(&[1, 2, 3]);
    let r = request_as(
        &c.addr(2),
        "POST",
        "/v1/users",
        Some(
            &serde_json::json!({
                "username": "first", "email": "first@example.com", "password": "correct horse"
            })
            .to_string(),
        ),
        Some(ADMIN),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    // Without a token the API the page calls refuses.
    assert_eq!(get(&c.addr(1), "/v1/cluster/nodes").unwrap().status, 401);
    c.start_query("query");
    drive(&c, Some(ADMIN));
}

/// The page and its assets: served with their types and a policy that allows no inline or
/// foreign script.
#[test]
fn the_dashboard_assets_are_served_with_a_strict_policy() {
    let c = Cluster::start(1, Tuning::default());
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = ureq_head(&c.addr(1), path);
        assert_eq!(r.0, 200, "{path}");
        assert!(r.1.starts_with(kind), "{path}: {}", r.1);
        assert!(r.2.contains("script-src 'self'"), "{path}: {}", r.2);
    }
    let page = get(&c.addr(1), "/ui").unwrap().text;
    assert!(
        page.contains("/ui/app.js") && !page.contains("<script>"),
        "{page}"
    );
    // A node's root leads to the dashboard (the client here follows the redirect).
    let root = get(&c.addr(1), "/").unwrap();
    assert_eq!(root.status, 200);
    assert!(root.text.contains("/ui/app.js"), "{}", root.text);
}

/// (status, content type, content security policy) of `GET path`.
fn ureq_head(addr: &str, path: &str) -> (u16, String, String) {
    let resp = ureq::get(&format!("http://{addr}{path}")).call().unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    (
        resp.status().as_u16(),
        header("content-type"),
        header("content-security-policy"),
    )
}
