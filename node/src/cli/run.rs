//! Long-running commands: `node` and `dev`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use api::HyperTransport;
use raft_store::Storage;
use uniqlog_node::{start, Config};

/// Wait for Ctrl-C or SIGTERM.
pub async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn open(config: &Config, id: u64) -> Result<Storage> {
    let dir = config.node(id)?.data_dir.clone();
    let shown = dir.display().to_string();
    match raft_store::blocking(move || Storage::open(&dir)).await {
        Ok(storage) => Ok(storage),
        Err(e) if e.to_string().contains("Database already open") => anyhow::bail!(
            "the data dir {shown} is in use by another process: is node {id} already running? \
             (`uniqlog cluster status`)"
        ),
        Err(e) => Err(e).with_context(|| format!("opening storage of node {id}")),
    }
}

pub async fn node(config_path: &Path, id: Option<u64>) -> Result<()> {
    let config = Config::load(config_path)?;
    let id = match id {
        Some(id) => id,
        None => config.node_for_host(&hostname()?)?,
    };
    // Before storage is created: a refused node leaves nothing behind.
    config.check_exposure(id)?;
    config.node_server_tls(id)?;
    // Peer RPC and forwarding: over TLS, trusting only `tls_ca`, when the cluster speaks TLS.
    let transport = Arc::new(HyperTransport::with_tls(config.client_tls()?));
    let storage = match open(&config, id).await {
        Ok(storage) => storage,
        Err(e) => match e.downcast_ref::<raft_store::StoreError>() {
            Some(store) if store.is_damage() => anyhow::bail!(
                "node {id} refuses to start: {e:#}.\n{}",
                repair_steps(config_path, id)
            ),
            Some(_) => anyhow::bail!("node {id} refuses to start: {e:#}"),
            None => return Err(e),
        },
    };
    let damage = storage.damage.clone();
    let node = start(&config, id, storage, transport).await?;
    let failure = tokio::select! {
        _ = terminated() => None,
        error = node.failed() => Some(error),
    };
    tracing::info!(id, ?failure, "stopping");
    let removed = node.app.runtime.removed.get().cloned();
    node.shutdown().await;
    if let Some(message) = removed {
        return Err(Removed(message).into());
    }
    match failure {
        None => Ok(()),
        Some(error) if damage.found().is_some() || error.contains("damaged") => anyhow::bail!(
            "node {id} stopped: {error}.\n{}",
            repair_steps(config_path, id)
        ),
        Some(error) => anyhow::bail!(
            "node {id} stopped: {error}. Nothing it had not made durable was acknowledged; \
             restart it to recover from its disk"
        ),
    }
}

/// The node found it was removed from the cluster. The binary exits with
/// [`EXIT_REMOVED`], which a supervisor should not restart on (`cluster up` does not;
/// systemd: `RestartPreventExitStatus=3`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Removed(pub String);

pub const EXIT_REMOVED: u8 = 3;

/// What the operator does with a node whose data is damaged. The node never repairs itself:
/// rewriting its log in place could make it forget a vote it gave, and vote twice. It leaves
/// the cluster and comes back empty under a new id, catching up from its peers.
fn repair_steps(config_path: &Path, id: u64) -> String {
    let c = config_path.display();
    format!(
        "Its data cannot be trusted, and this node will not repair it in place. The other \
         nodes keep serving while a majority of them is up. To rebuild it:\n  \
         1. uniqlog cluster remove --config {c} --id {id}      (run while a majority is up)\n  \
         2. move this node's data dir away (keep it for a post-mortem) or delete it\n  \
         3. give the node a new id: change its [[node]] id in {c} to an unused one, N\n  \
         4. uniqlog node --config {c} --id N\n  \
         5. uniqlog cluster add-learner --config {c} --id N\n  \
         6. wait until `uniqlog cluster status --config {c}` shows it caught up, then\n     \
            uniqlog cluster promote --config {c} --id N\n\
         See docs/operating.md, Damaged data."
    )
}

/// The shipped `cluster.toml`: `uniqlog dev` takes its rules and limits, so the dev node
/// enforces the same uniq rules as the three-node cluster.
const SHIPPED_CONFIG: &str = include_str!("../../../cluster.toml");

pub async fn dev(port_base: u16, data_dir: &Path, reset: bool) -> Result<()> {
    let data_dir = std::env::current_dir()?.join(data_dir);
    // Before anything is written: a taken port leaves no data dir behind.
    check_dev_ports(port_base)?;
    if reset && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {} (--reset)", data_dir.display()))?;
        println!("--reset: removed {}", data_dir.display());
    }
    let config = dev_config(port_base, &data_dir)?;
    let storage = open(&config, 1).await?;
    let node = start(&config, 1, storage, Arc::new(HyperTransport::new())).await?;
    uniqlog_node::routes::cluster::init_cluster(&node.app)
        .await
        .map_err(|e| anyhow::anyhow!("initializing the dev cluster: {e}"))?;
    let sink = consumers::mail_sink::MailSink::default();
    let sink_listener = tokio::net::TcpListener::bind(&config.mail_sink.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.mail_sink.listen))?;
    let node_addr = &config.nodes[0].addr;
    println!("uniqlog dev: a single-node cluster with its read model, mail sender and mail sink");
    println!("  node API     http://{node_addr}");
    println!("  dashboard    http://{node_addr}/ui");
    println!("  query API    http://{}", config.query.listen);
    println!("  mail health  http://{}/health", config.mail.listen);
    println!(
        "  mail sink    http://{}/messages   (activation emails land here)",
        config.mail_sink.listen
    );
    println!("  data         {}", data_dir.display());
    println!("  auth is off and everything listens on 127.0.0.1 only. Ctrl-C stops.");
    println!("Next: README.md, \"Try it\" (sign up, the email in the mail sink, the log API).");
    let result = tokio::select! {
        r = serve_query(&config, false) => r,
        r = serve_mail(&config) => r,
        _ = api::server::serve(sink_listener, sink.router(), std::time::Duration::from_secs(10)) => Ok(()),
        _ = terminated() => Ok(()),
    };
    node.shutdown().await;
    result
}

/// Each of the dev system's ports must be free, or it says which and what to do.
fn check_dev_ports(port_base: u16) -> Result<()> {
    for (offset, role) in [
        (1, "node"),
        (101, "query API"),
        (102, "mail health"),
        (201, "mail sink"),
    ] {
        let port = port_base
            .checked_add(offset)
            .context("--port-base is too large")?;
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            anyhow::bail!(
                "port {port} ({role}) is taken ({e}): is another `uniqlog dev` running? Stop \
                 it, or pass --port-base N to use ports N+1, N+101, N+102 and N+201"
            );
        }
    }
    Ok(())
}

/// The shipped config's rules and limits, with one node and every role on 127.0.0.1 at
/// `port_base` + 1 (node), + 101 (query), + 102 (mail), + 201 (mail sink).
fn dev_config(port_base: u16, data_dir: &Path) -> Result<Config> {
    let port = |offset: u16| -> Result<u16> {
        port_base
            .checked_add(offset)
            .context("--port-base is too large")
    };
    let mut config = Config::parse(
        SHIPPED_CONFIG,
        Path::new("cluster.toml (built in)"),
        Path::new("."),
    )?;
    let node_addr = format!("127.0.0.1:{}", port(1)?);
    config.nodes = vec![uniqlog_node::NodeConfig {
        id: 1,
        addr: node_addr.clone(),
        peer_addr: None,
        data_dir: data_dir.join("node"),
    }];
    config.query.listen = format!("127.0.0.1:{}", port(101)?);
    config.query.data_dir = data_dir.join("query");
    config.mail.listen = format!("127.0.0.1:{}", port(102)?);
    config.mail_sink.listen = format!("127.0.0.1:{}", port(201)?);
    config.mail.webhook_url = format!("http://{}/send", config.mail_sink.listen);
    config.users.public_base_url = format!("http://{node_addr}");
    config.users.activation_secret = dev_activation_secret(data_dir)?.into();
    // Plain HTTP on loopback, whatever UNIQLOG_TLS_CA says.
    config.auth.tls_ca = None;
    config.validate()?;
    Ok(config)
}

/// This machine's hostname: `HOSTNAME` (containers set it), else the kernel's.
fn hostname() -> Result<String> {
    if let Ok(name) = std::env::var("HOSTNAME") {
        if !name.is_empty() {
            return Ok(name);
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading this machine's hostname (/proc/sys/kernel/hostname); pass --id")?;
    Ok(name.trim().to_string())
}

/// The dev system's activation secret: random, made at its first start and kept (0600) in its
/// data dir, so links mailed before a restart still work and no two dev systems share one.
fn dev_activation_secret(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("activation.secret");
    match std::fs::read_to_string(&path) {
        Ok(secret) if secret.trim().len() >= 32 => return Ok(secret.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} holds no secret of 32 bytes or more: remove it (or use --reset)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = super::certs::random_hex();
    std::fs::create_dir_all(data_dir)?;
    write_private(&path, secret.as_bytes())?;
    Ok(secret)
}

/// Create `path` readable by its owner only, with `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// `uniqlog query`: tail `users` from the config's nodes into the read model and serve it.
pub async fn query(config_path: &Path, rebuild: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    tokio::select! {
        r = serve_query(&config, rebuild) => r,
        _ = terminated() => Ok(()),
    }
}

/// The query role: returns only on failure.
pub async fn serve_query(config: &Config, rebuild: bool) -> Result<()> {
    use consumers::query::{follow, router, QueryState, QueryStore, DATA_FILE};
    let qc = config.query.clone();
    // The read model holds every account's email: its API gets the node's exposure check,
    // and serves TLS with the node's certificate when the config has one.
    config.check_listener("the query API", &[qc.listen.as_str()])?;
    let server_tls = config.server_tls()?;
    let tls = config.client_tls()?;
    let file = qc.data_dir.join(DATA_FILE);
    if rebuild && file.exists() {
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        println!("dropped the read model; replaying users from offset 0");
    }
    let store = QueryStore::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let start = store.next_offset()?;
    let (applied_tx, applied) = tokio::sync::watch::channel(start);
    let (head_tx, head) = tokio::sync::watch::channel(start);
    let state = Arc::new(QueryState {
        store,
        applied,
        head,
        config: qc.clone(),
        auth: config.client_auth(),
        http: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(&qc.listen)
        .await
        .with_context(|| format!("cannot listen on {}", qc.listen))?;
    let header_timeout = std::time::Duration::from_millis(config.limits.header_read_timeout_ms);
    // The query API is a client API: the same header timeout, request deadline and connection
    // cap as a node's (its reads may wait `min_offset_wait_ms_max` on purpose).
    let ms = std::time::Duration::from_millis;
    let deadlines = api::timeouts::RequestTimeouts {
        request: ms(config.limits.request_timeout_ms) + ms(qc.min_offset_wait_ms_max),
        waits: Vec::new(),
    };
    let routes = router(state.clone()).layer(axum::middleware::from_fn_with_state(
        Arc::new(deadlines),
        api::timeouts::bound,
    ));
    let routes = if config.auth.tokens.is_empty() && uniqlog_node::config::is_loopback(&qc.listen) {
        routes.layer(axum::middleware::from_fn(
            api::host_check::loopback_hosts_only,
        ))
    } else {
        routes
    };
    tokio::spawn(api::server::serve_with(
        listener,
        routes,
        header_timeout,
        server_tls,
        Some(api::server::ConnectionCap {
            max: config.limits.connections_max,
            exempt: |_| false,
        }),
    ));
    let nodes = config.nodes.iter().map(|n| n.addr.clone()).collect();
    let stale_after = std::time::Duration::from_millis(config.raft.election_timeout_ms_max);
    let scheme = if config.auth.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "uniqlog query: serving on {scheme}://{} from offset {start}",
        qc.listen
    );
    let transport = api::client_transport_with(config.client_token(), tls);
    if rebuild {
        tokio::spawn(show_rebuild(state.applied.clone(), state.head.clone()));
    }
    follow(state, applied_tx, head_tx, nodes, transport, stale_after).await;
    anyhow::bail!("the read model stopped following the log (see the log above)")
}

/// The replay of a rebuild, until the read model holds the topic as first seen.
async fn show_rebuild(
    applied: tokio::sync::watch::Receiver<u64>,
    head: tokio::sync::watch::Receiver<u64>,
) {
    let mut progress = super::progress::Progress::new("rebuilding the read model", "events");
    loop {
        let (done, total) = (*applied.borrow(), *head.borrow());
        // The head is 0 until the first read answers (or while the topic is empty).
        if total > 0 {
            progress.set(done, total);
            if done >= total {
                progress.finish(&format!("replayed {done} events of users"));
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `uniqlog mail-sink`: serve the stand-in provider until stopped.
pub async fn mail_sink(
    listen: &str,
    faults: consumers::mail_sink::Faults,
    insecure: bool,
) -> Result<()> {
    if !(0.0..=1.0).contains(&faults.fail_rate) {
        anyhow::bail!("--fail-rate is between 0 and 1");
    }
    let loopback = uniqlog_node::config::is_loopback(listen);
    if listen.parse::<std::net::SocketAddr>().is_err() {
        anyhow::bail!("--listen {listen:?} is not an IP:port address");
    }
    if !loopback && !insecure {
        anyhow::bail!(
            "the mail sink would listen on {listen}, which is not loopback: it has no auth and \
             no TLS, and shows every message it received (activation links included) to \
             whoever asks. Use a loopback address, or --insecure to run it open on purpose"
        );
    }
    let sink = consumers::mail_sink::MailSink::new(faults);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "uniqlog mail-sink: webhook at http://{listen}/send, messages at http://{listen}/messages"
    );
    let routes = if loopback {
        sink.router().layer(axum::middleware::from_fn(
            api::host_check::loopback_hosts_only,
        ))
    } else {
        sink.router()
    };
    tokio::select! {
        _ = api::server::serve(listener, routes, std::time::Duration::from_secs(10)) => Ok(()),
        _ = terminated() => Ok(()),
    }
}

/// The connection to the webhook provider: over TLS for `https://`, trusting `webhook_ca` or
/// else the public web's CAs.
fn provider_transport(mail: &consumers::mail::MailConfig) -> Result<HyperTransport> {
    let target = mail.webhook_target().map_err(|e| anyhow::anyhow!("{e}"))?;
    if !target.https {
        return Ok(HyperTransport::new());
    }
    let tls = match &mail.webhook_ca {
        Some(ca) => api::ClientTls::from_ca_file(ca)
            .map_err(|e| anyhow::anyhow!("mail.webhook_ca: {}", e.message))?,
        None => api::ClientTls::public_roots().map_err(|e| anyhow::anyhow!("{}", e.message))?,
    };
    Ok(HyperTransport::with_tls(Some(tls)))
}

/// `uniqlog mail`: the activation email sender, with `/health` on `[mail] listen`.
pub async fn mail(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    tokio::select! {
        r = serve_mail(&config) => r,
        _ = terminated() => Ok(()),
    }
}

/// The mail role: returns only on failure.
pub async fn serve_mail(config: &Config) -> Result<()> {
    use consumers::mail::{MailConsumer, MailStats};
    if config.users.activation_secret.is_empty() {
        anyhow::bail!(
            "[users] activation_secret is empty: the mail consumer cannot make activation links"
        );
    }
    config.check_listener(
        "the mail consumer's health listener",
        &[config.mail.listen.as_str()],
    )?;
    let remote = config
        .nodes
        .iter()
        .any(|n| !uniqlog_node::config::is_loopback(&n.addr));
    if let Some(why) = config.users.weak_activation_secret().filter(|_| remote) {
        anyhow::bail!(
            "users.activation_secret {why}, and the nodes are not on loopback: links it signs \
             could be forged by anyone. Set a random one of at least 32 bytes, the same as \
             the nodes'"
        );
    }
    let server_tls = config.server_tls()?;
    let tls = config.client_tls()?;
    let stats = Arc::new(std::sync::Mutex::new(MailStats::default()));
    let (health_stats, metrics_stats) = (stats.clone(), stats.clone());
    let router = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(move || {
                let s = health_stats.lock().expect("stats").clone();
                async move { axum::Json(s) }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics_stats.lock().expect("stats").metrics();
                async move { consumers::metrics::answer(text) }
            }),
        );
    let listen = config.mail.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tokio::spawn(api::server::serve_with(
        listener,
        router,
        std::time::Duration::from_secs(10),
        server_tls,
        None,
    ));
    let consumer = MailConsumer {
        config: config.mail.clone(),
        users: config.users.clone(),
        nodes: config.nodes.iter().map(|n| n.addr.clone()).collect(),
        transport: api::client_transport_with(config.client_token(), tls),
        // The provider gets neither the cluster's token nor its CA.
        provider_transport: Arc::new(provider_transport(&config.mail)?),
        stale_after: std::time::Duration::from_millis(config.raft.election_timeout_ms_max),
        stats,
    };
    // Its checkpoint (its resume point) and its parking topic are `__` topics.
    let role = consumers::access::token_role(&consumer.nodes, &consumer.transport).await?;
    if role < api::Role::Admin {
        anyhow::bail!(
            "the mail consumer writes its checkpoint to __checkpoints and parks messages in \
             __retry.mail, which need an admin token; [auth] client_token has the {} role",
            format!("{role:?}").to_lowercase()
        );
    }
    println!(
        "uniqlog mail: sending through {} (health on http://{listen}/health)",
        config.mail.webhook_url
    );
    consumer.run().await;
    anyhow::bail!("the mail consumer stopped")
}
