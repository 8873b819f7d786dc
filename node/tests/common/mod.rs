//! The one harness of the integration tests: real `uniqlog` processes on free 127.0.0.1
//! ports, a config file written per test, kill -9, restart, and a small HTTP client.
//! Every process started here is killed when the `Cluster` is dropped.
#![allow(dead_code)]

pub mod load;
pub mod metrics;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_uniqlog");

/// A free TCP port on 127.0.0.1 (bound, then released for the node to take), never one this
/// process was given before: the kernel may hand a released port out again at once, and two
/// nodes of one cluster on one port make its config invalid.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Poll `f` until it returns `Some`, or panic after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    /// The body as sent (binary answers: Raft RPC, backups).
    pub bytes: Vec<u8>,
    pub location: Option<String>,
    pub retry_after: Option<String>,
    /// `x-request-id` of the answer.
    pub request_id: Option<String>,
}

fn agent() -> ureq::Agent {
    agent_with(None)
}

/// A new agent for each request (no connection kept between requests), HTTPS with `tls`.
fn agent_with(tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)));
    match tls {
        Some(tls) => config.tls_config(tls),
        None => config,
    }
    .build()
    .into()
}

/// How the harness reaches the nodes: plain HTTP, or HTTPS trusting only one CA.
#[derive(Clone)]
pub struct Http {
    scheme: &'static str,
    tls: Option<ureq::tls::TlsConfig>,
}

impl Http {
    pub fn plain() -> Http {
        Http {
            scheme: "http",
            tls: None,
        }
    }

    /// HTTPS (rustls on ring) trusting only the CA certificate `ca_pem`.
    pub fn tls(ca_pem: &str) -> Http {
        use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
        let ca = Certificate::from_pem(ca_pem.as_bytes()).unwrap();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::new_with_certs(&[ca]))
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .build();
        Http {
            scheme: "https",
            tls: Some(tls),
        }
    }

    fn agent(&self) -> ureq::Agent {
        agent_with(self.tls.clone())
    }

    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    /// GET. Err means no HTTP answer (connection refused, timeout, a failed handshake).
    pub fn get(&self, addr: &str, path: &str) -> Result<Resp, String> {
        finish(self.agent().get(&self.url(addr, path)).call())
    }

    /// Any method, optional JSON body, optional bearer token. Err means no HTTP answer.
    pub fn send(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        json: Option<&str>,
        token: Option<&str>,
    ) -> Result<Resp, String> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(addr, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        finish(
            self.agent()
                .run(req.body(json.unwrap_or("").to_string()).unwrap()),
        )
    }

    /// POST a JSON text and require an answer.
    pub fn post(&self, addr: &str, path: &str, json: &str) -> Resp {
        self.send(addr, "POST", path, Some(json), None).unwrap()
    }
}

/// TLS material made by a test with rcgen: a CA, and a certificate signed by it for the
/// address every node of the harness has (IP SAN 127.0.0.1).
pub struct TestTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestTls {
    pub fn new(ca_name: &str) -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut node = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        node.distinguished_name
            .push(DnType::CommonName, "uniqlog test node");
        let node_key = KeyPair::generate().unwrap();
        let cert_pem = node.signed_by(&node_key, &issuer).unwrap().pem();
        TestTls {
            ca_pem,
            cert_pem,
            key_pem: node_key.serialize_pem(),
        }
    }

    /// Write `tls/{ca,node}.pem` and `tls/node.key` under `dir`, as [`TLS_AUTH`] names them.
    pub fn write(&self, dir: &Path) {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(tls.join("node.pem"), &self.cert_pem).unwrap();
        std::fs::write(tls.join("node.key"), &self.key_pem).unwrap();
    }
}

/// The `[auth]` section of a TLS cluster, relative to its config file.
pub const TLS_AUTH: &str =
    "\n[auth]\ntls_cert = \"tls/node.pem\"\ntls_key = \"tls/node.key\"\ntls_ca = \"tls/ca.pem\"\n";

fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Resp, String> {
    let mut resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let location = header("location");
    let retry_after = header("retry-after");
    let request_id = header("x-request-id");
    // Bytes, not text: a backup is binary.
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Resp {
        status,
        body,
        text,
        bytes,
        location,
        retry_after,
        request_id,
    })
}

/// GET `http://addr{path}`. Err means no HTTP answer (connection refused, timeout).
pub fn get(addr: &str, path: &str) -> Result<Resp, String> {
    finish(agent().get(&format!("http://{addr}{path}")).call())
}

/// POST a JSON text.
pub fn post(addr: &str, path: &str, json: &str) -> Result<Resp, String> {
    post_with(addr, path, "application/json", json.as_bytes())
}

pub fn post_with(addr: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Resp, String> {
    finish(
        agent()
            .post(&format!("http://{addr}{path}"))
            .header("content-type", content_type)
            .send(body),
    )
}

pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub config: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub config: PathBuf,
    pub nodes: Vec<NodeProc>,
    pub queries: Vec<QueryProc>,
    /// Other processes (mail, mail-sink) by name.
    pub aux: Vec<(String, Child)>,
    /// The token the harness presents (clusters with auth on).
    pub token: Option<String>,
    /// How the harness reaches the nodes (HTTPS for TLS clusters).
    pub http: Http,
    /// A command the nodes are started through (`nsenter ... --`), if any.
    pub launcher: Vec<String>,
    /// Extra arguments of `uniqlog` before `node` when nodes are (re)started.
    pub node_flags: Vec<String>,
    /// Extra environment of nodes when (re)started.
    pub node_env: Vec<(String, String)>,
}

/// A `uniqlog query` process with its own config (the cluster's plus a `[query]` section).
pub struct QueryProc {
    pub name: String,
    pub addr: String,
    pub config: PathBuf,
    child: Option<Child>,
}

/// Extra `[raft]` / `[limits]` lines for a test.
#[derive(Default, Clone)]
pub struct Tuning {
    pub raft: &'static str,
    pub limits: &'static str,
    /// Appended as is: `[[uniq]]` sets, `[idempotency]`.
    pub extra: &'static str,
}

/// The reference application's uniq rules (as in the shipped cluster.toml).
pub const USER_EMAIL_RULES: &str = include_str!("user_email_rules.toml");

fn node_toml(id: u64, port: u16) -> String {
    uniqlog_node::NodeConfig {
        id,
        addr: format!("127.0.0.1:{port}"),
        peer_addr: None,
        data_dir: format!("node{id}").into(),
    }
    .toml_section()
}

pub fn write_config(path: &Path, nodes: &[(u64, u16)], tuning: &Tuning) {
    let mut text: String = nodes
        .iter()
        .map(|(id, port)| node_toml(*id, *port))
        .collect();
    text.push_str("[raft]\nheartbeat_ms = 100\nelection_timeout_ms_min = 600\nelection_timeout_ms_max = 1200\n");
    text.push_str(tuning.raft);
    text.push_str("\n[limits]\n");
    text.push_str(tuning.limits);
    text.push('\n');
    text.push_str(tuning.extra);
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

impl Cluster {
    /// Start `n` nodes, initialize, wait for a leader.
    pub fn start(n: u64, tuning: Tuning) -> Cluster {
        Self::start_as(n, tuning, None)
    }

    /// Like `start`, initializing with an admin `token` (for clusters with auth on).
    pub fn start_as(n: u64, tuning: Tuning, token: Option<&str>) -> Cluster {
        Self::start_with(n, tuning, token, None)
    }

    /// Like `start`, every node serving TLS with the certificate of `tls` and the harness
    /// trusting its CA. `tuning` must not have an `[auth]` section (this adds one).
    pub fn start_tls(n: u64, tuning: Tuning, tls: &TestTls) -> Cluster {
        Self::start_with(n, tuning, None, Some(tls))
    }

    fn start_with(n: u64, tuning: Tuning, token: Option<&str>, tls: Option<&TestTls>) -> Cluster {
        let mut cluster = Self::prepare(n, tuning, token, tls);
        cluster.boot();
        cluster
    }

    /// The config and temporary dir of an `n`-node cluster, nothing started yet.
    pub fn prepare(n: u64, tuning: Tuning, token: Option<&str>, tls: Option<&TestTls>) -> Cluster {
        let dir = TempDir::new().unwrap();
        // A random activation secret per data dir, as `uniqlog dev` makes one
        // (`users_tuning` names the file).
        std::fs::write(dir.path().join(ACTIVATION_SECRET_FILE), random_hex(32)).unwrap();
        let ports: Vec<(u64, u16)> = (1..=n).map(|id| (id, free_port())).collect();
        let config = dir.path().join("cluster.toml");
        write_config(&config, &ports, &tuning);
        let http = match tls {
            Some(tls) => {
                tls.write(dir.path());
                let mut text = std::fs::read_to_string(&config).unwrap();
                text.push_str(TLS_AUTH);
                std::fs::write(&config, text).unwrap();
                Http::tls(&tls.ca_pem)
            }
            None => Http::plain(),
        };
        Cluster {
            nodes: ports
                .iter()
                .map(|(id, port)| NodeProc {
                    id: *id,
                    addr: format!("127.0.0.1:{port}"),
                    config: config.clone(),
                    child: None,
                })
                .collect(),
            dir,
            config,
            queries: Vec::new(),
            aux: Vec::new(),
            token: token.map(str::to_string),
            http,
            launcher: Vec::new(),
            node_flags: Vec::new(),
            node_env: Vec::new(),
        }
    }

    /// Start every node of a prepared cluster, initialize it, wait for a leader.
    pub fn boot(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in &ids {
            self.spawn(*id);
        }
        for id in &ids {
            self.wait_healthy(*id);
        }
        let r = self
            .http
            .send(
                &self.addr(ids[0]),
                "POST",
                "/v1/cluster/init",
                Some("{}"),
                self.token.as_deref(),
            )
            .unwrap();
        assert_eq!(r.status, 200, "init: {}", r.text);
        self.wait_leader(&ids);
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// A node that is not part of the initial config: its own config lists every node so
    /// far plus itself. Returns its id.
    pub fn add_process(&mut self, tuning: &Tuning) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap() + 1;
        let port = free_port();
        let mut all: Vec<(u64, u16)> = self
            .nodes
            .iter()
            .map(|n| (n.id, n.addr.rsplit(':').next().unwrap().parse().unwrap()))
            .collect();
        all.push((id, port));
        let config = self.dir.path().join(format!("cluster-{id}.toml"));
        write_config(&config, &all, tuning);
        self.nodes.push(NodeProc {
            id,
            addr: format!("127.0.0.1:{port}"),
            config,
            child: None,
        });
        self.spawn(id);
        self.wait_healthy(id);
        id
    }

    pub fn spawn(&mut self, id: u64) {
        let log = self.dir.path().join(format!("node{id}.log"));
        let log = File::options().create(true).append(true).open(log).unwrap();
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        assert!(node.child.is_none(), "node {id} already running");
        let mut cmd = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(&self.node_flags)
            .args(["node", "--config"])
            .arg(&node.config)
            .args(["--id", &id.to_string()])
            // Every request's lines too, with its id: a failing test's logs say what it did.
            .env("RUST_LOG", "info,openraft=info,uniqlog::request=debug")
            .envs(self.node_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn uniqlog node");
        node.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let mut child = node.child.take().expect("node running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and wait for the node to shut down (its files closed cleanly).
    pub fn stop(&mut self, id: u64) {
        let pid = self.node(id).pid().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        self.wait_exit(id, Duration::from_secs(30));
    }

    /// Wait until node `id`'s process exits on its own (it refused to start, or stopped).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let log = self.dir.path().join(format!("node{id}.log"));
        let node = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let child = node.child.as_mut().expect("node running");
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("node {id} did not exit within {timeout:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        node.child = None;
        status
    }

    /// Everything node `id` has written to its log (stderr) so far, across restarts.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_healthy(id);
    }

    pub fn wait_healthy(&self, id: u64) {
        let addr = self.addr(id);
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(30) {
            match self.http.get(&addr, "/health") {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("{} {}", r.status, r.text),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The temporary dir goes with the test: show why the node is not healthy.
        let log = std::fs::read_to_string(self.dir.path().join(format!("node{id}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "node {id} not healthy after 30 s (last answer: {last}); its log ends:\n{}",
            tail.join("\n")
        );
    }

    pub fn status(&self, id: u64) -> Option<Value> {
        let r = self
            .http
            .send(
                &self.addr(id),
                "GET",
                "/v1/cluster/status",
                None,
                self.token.as_deref(),
            )
            .ok()?;
        (r.status == 200).then_some(r.body)
    }

    /// Node `id`'s status in the contract's type, if it answers.
    pub fn cluster_status(&self, id: u64) -> Option<api::wire::ClusterStatus> {
        serde_json::from_value(self.status(id)?).ok()
    }

    /// The members as node `id` reports them: id -> whether it votes.
    pub fn members(&self, id: u64) -> std::collections::BTreeMap<u64, bool> {
        self.cluster_status(id)
            .unwrap()
            .members
            .iter()
            .map(|m| (m.id, m.voter))
            .collect()
    }

    /// Wait until every node in `ids` names the same leader in its term, which is one of them
    /// (`api::cluster::agreed_leader`, as the simulator waits).
    pub fn wait_leader(&self, ids: &[u64]) -> u64 {
        wait_for("one agreed leader", Duration::from_secs(30), || {
            let seen: Vec<_> = ids
                .iter()
                .filter_map(|id| self.cluster_status(*id))
                .collect();
            api::cluster::agreed_leader(&seen, ids.len()).filter(|l| ids.contains(l))
        })
    }

    /// Wait until every node in `ids` has applied the same index as the leader's commit.
    pub fn wait_converged(&self, ids: &[u64]) {
        wait_for(
            "all nodes applied the same index",
            Duration::from_secs(60),
            || {
                let seen: Vec<_> = ids
                    .iter()
                    .map(|id| self.cluster_status(*id))
                    .collect::<Option<_>>()?;
                let commit = seen.iter().map(|s| s.commit_index).max()?;
                seen.iter().all(|s| s.applied_index == commit).then_some(())
            },
        )
    }

    /// The whole topic as read from one node.
    pub fn read_topic(&self, id: u64, topic: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let r = self
                .http
                .get(
                    &self.addr(id),
                    &format!("/v1/topics/{topic}/events?from={}", out.len()),
                )
                .unwrap();
            assert_eq!(r.status, 200, "read: {}", r.text);
            let events = r.body["events"].as_array().unwrap().clone();
            if events.is_empty() {
                return out;
            }
            out.extend(events);
        }
    }

    pub fn topics(&self, id: u64) -> Value {
        self.http.get(&self.addr(id), "/v1/topics").unwrap().body
    }

    /// Run the CLI against this cluster's config.
    pub fn cli(&self, config: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(config);
        cmd.output().unwrap()
    }

    /// `uniqlog ARGS --config <this cluster's config>`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(&self.config, args);
        assert!(
            out.status.success(),
            "uniqlog {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Cluster {
    /// Start a query process `name` with its own data dir, and wait until it serves.
    pub fn start_query(&mut self, name: &str) -> String {
        let port = free_port();
        let config = self.dir.path().join(format!("query-{name}.toml"));
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!(
            "\n[query]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"query-{name}\"\ncheckpoint_every_events = 5\ncheckpoint_every_ms = 200\n"
        ));
        std::fs::write(&config, text).unwrap();
        self.queries.push(QueryProc {
            name: name.into(),
            addr: format!("127.0.0.1:{port}"),
            config,
            child: None,
        });
        self.restart_query(name, false);
        format!("127.0.0.1:{port}")
    }

    pub fn restart_query(&mut self, name: &str, rebuild: bool) {
        let log = self.dir.path().join(format!("query-{name}.log"));
        let log = File::options().create(true).append(true).open(log).unwrap();
        let q = self.queries.iter_mut().find(|q| q.name == name).unwrap();
        assert!(q.child.is_none(), "query {name} already running");
        let mut cmd = Command::new(BIN);
        cmd.args(["query", "--config"]).arg(&q.config);
        if rebuild {
            cmd.arg("--rebuild");
        }
        let out = log.try_clone().unwrap();
        q.child = Some(cmd.stdout(out).stderr(log).spawn().unwrap());
        let addr = q.addr.clone();
        // Over TLS when the cluster's config has a certificate: the query API serves with it.
        let http = self.http.clone();
        wait_for(
            &format!("query {name} serving"),
            Duration::from_secs(30),
            || http.get(&addr, "/health").ok().filter(|r| r.status == 200),
        );
    }

    /// kill -9 a query process.
    pub fn kill_query(&mut self, name: &str) {
        let q = self.queries.iter_mut().find(|q| q.name == name).unwrap();
        let mut child = q.child.take().expect("query running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Cluster {
    /// Start `uniqlog <args>` as process `name`, output to `<name>.log`.
    pub fn spawn_aux(&mut self, name: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let log = File::options().create(true).append(true).open(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.aux.push((name.to_string(), child));
    }

    /// kill -9 process `name`.
    pub fn kill_aux(&mut self, name: &str) {
        let i = self
            .aux
            .iter()
            .position(|(n, _)| n == name)
            .expect("known process");
        let (_, mut child) = self.aux.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A copy of the cluster config with `extra` appended.
    pub fn config_with(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(extra);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.aux {
            let _ = c.kill();
            let _ = c.wait();
        }
        for q in &mut self.queries {
            if let Some(mut c) = q.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Leave the node logs where a human can read them.
            let dir = std::mem::replace(&mut self.dir, TempDir::new().unwrap());
            let kept = dir.keep();
            eprintln!("node logs kept in {}", kept.display());
        }
    }
}

/// An append body with one event carrying a unique id.
pub fn event_body(uid: &str, stream: Option<&str>) -> String {
    let stream = stream.map_or(String::new(), |s| format!(",\"stream\":\"{s}\""));
    format!("{{\"events\":[{{\"type\":\"Test\"{stream},\"data\":{{\"uid\":\"{uid}\"}}}}]}}")
}

/// Append one event with a unique id and require 201.
pub fn append_ok(addr: &str, topic: &str, uid: &str, stream: Option<&str>) -> Resp {
    let r = post(
        addr,
        &format!("/v1/topics/{topic}/events"),
        &event_body(uid, stream),
    )
    .unwrap();
    assert_eq!(r.status, 201, "append {uid} to {topic}: {}", r.text);
    r
}

/// Any method, optional JSON body.
pub fn request(addr: &str, method: &str, path: &str, json: Option<&str>) -> Resp {
    request_as(addr, method, path, json, None)
}

/// Any method, optional JSON body, optional bearer token.
pub fn request_as(
    addr: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    finish(agent().run(req.body(json.unwrap_or("").to_string()).unwrap())).unwrap()
}

/// POST a JSON text with an `Idempotency-Key`. Err means no HTTP answer.
pub fn try_post_keyed(addr: &str, path: &str, json: &str, key: &str) -> Result<Resp, String> {
    finish(
        agent()
            .post(&format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .send(json),
    )
}

pub fn post_keyed(addr: &str, path: &str, json: &str, key: &str) -> Resp {
    try_post_keyed(addr, path, json, key).unwrap()
}

/// The file, in every test cluster's dir, holding its random activation secret.
pub const ACTIVATION_SECRET_FILE: &str = "activation.secret";

/// `bytes` random bytes in hex.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The shipped user_email rules and a cheap `[users]` section, with the cluster dir's random
/// activation secret and resends allowed a second apart.
pub fn users_tuning() -> Tuning {
    Tuning {
        extra: concat!(
            include_str!("user_email_rules.toml"),
            "\n[users]\nactivation_secret_file = \"activation.secret\"\n",
            "activation_resend_interval_s = 1\npassword_memory_kib = 64\npassword_iterations = 1\n"
        ),
        ..Tuning::default()
    }
}

/// `POST /v1/users` (any answer).
pub fn signup(addr: &str, username: &str, email: &str) -> Resp {
    let body =
        serde_json::json!({"username": username, "email": email, "password": "correct horse"});
    post(addr, "/v1/users", &body.to_string()).unwrap()
}

impl Cluster {
    /// This cluster's activation secret.
    pub fn activation_secret(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(ACTIVATION_SECRET_FILE)).unwrap()
    }

    /// An activation token for user `id` at `email` that expires at `expires_s`.
    pub fn activation_token(&self, id: &str, email: &str, expires_s: u64) -> String {
        api::users::token::make_token(
            &self.activation_secret(),
            id.parse().unwrap(),
            email,
            expires_s,
        )
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A child process killed (and reaped) however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// POST a binary Raft RPC body (`raft_store::codec`), as a peer does.
pub fn post_rpc(addr: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    let mut req = agent()
        .post(&format!("http://{addr}{path}"))
        .header("content-type", "application/x-uniqlog-raft");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    finish(req.send(body)).unwrap()
}

/// POST a JSON text with extra headers (any answer).
pub fn post_with_headers(addr: &str, path: &str, json: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent()
        .post(&format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    finish(req.send(json)).unwrap()
}

/// Run `uniqlog <args>` until it exits on its own (bounded by `timeout`, then killed and the
/// test fails): whether it succeeded, and what it wrote to stdout and stderr.
pub fn run_to_end(args: &[&str], timeout: Duration) -> (bool, String) {
    let mut child = Killed(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = wait_for(&format!("uniqlog {args:?} to exit"), timeout, || {
        child.0.try_wait().unwrap()
    });
    let mut out = String::new();
    use std::io::Read;
    if let Some(mut o) = child.0.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    if let Some(mut e) = child.0.stderr.take() {
        e.read_to_string(&mut out).unwrap();
    }
    (status.success(), out)
}

/// GET with extra headers (any answer).
pub fn get_with_headers(addr: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().get(&format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    finish(req.call()).unwrap()
}
