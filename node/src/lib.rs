//! The node assembly shared by the `uniqlog` binary and the simulator: open storage, start
//! openraft, serve the client API and peer RPC.

pub mod app;
mod append_link;
pub mod auth;
pub mod bootstrap;
pub mod claims;
pub mod cluster_secret;
pub mod config;
pub mod conflicts;
mod edge;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod peer_protocol;
pub mod prevote;
pub mod propose;
pub mod rate_limit;
pub mod removal;
pub mod router;
pub mod routes;
pub mod users;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use api::Transport;
pub use app::{App, SharedApp};
pub use limits::Limits;
use openraft::Raft;
use peer::{peer_router, PeerNetwork};
pub use propose::Proposer;
use raft_store::{Node, NodeId, Storage, TypeConfig};
use router::{client_router, router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError, NodeConfig, RaftSettings};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid raft settings: {0}")]
    RaftConfig(#[from] Box<openraft::ConfigError>),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("storage: {0}")]
    Storage(#[from] raft_store::StoreError),
    #[error(
        "the uniq rules in {config} differ from the replicated rules (version {version}):\n\
         {diff}\nUpdate the config to the replicated rules (GET /v1/cluster/uniq-rules), or \
         change the replicated rules through POST /v1/cluster/uniq-rules"
    )]
    RulesDiffer {
        config: String,
        version: u64,
        diff: String,
    },
    #[error("cannot listen on {addr}: {error}{}", bind_hint(error))]
    Bind { addr: String, error: std::io::Error },
}

/// What to do about a refused listen address.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there: is this node already running?)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
        _ => "",
    }
}

/// A running node: its app state and the tasks serving it.
pub struct RunningNode {
    pub app: SharedApp,
    servers: Vec<JoinHandle<()>>,
}

impl RunningNode {
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.app.raft
    }

    /// Resolves when Raft has stopped on a fatal error, with that error. The storage layer
    /// turns any failed write or fsync into one: after a failed fsync nothing since the last
    /// good one can be trusted to be on disk (the kernel may have dropped the dirty pages), so
    /// the node must not go on acknowledging anything; only a restart, which recovers from
    /// what is durable, is safe.
    ///
    /// It polls the metrics instead of waiting on their watch channel: one more waiter on that
    /// channel makes the simulation's wake order depend on tokio's own generator, which is not
    /// seeded (a second run in one process then differs).
    pub async fn failed(&self) -> String {
        loop {
            if let Some(error) = self.app.fatal() {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stop serving, shut Raft down, and write what was applied into the state file, so a
    /// clean restart re-applies nothing (and checks its config against the latest rules).
    pub async fn shutdown(self) {
        for s in &self.servers {
            s.abort();
        }
        let _ = self.app.raft.shutdown().await;
        let reader = self.app.reader.clone();
        if reader.damage().is_some() {
            // Nothing more goes into a file found damaged.
            return;
        }
        if let Err(e) = raft_store::blocking(move || reader.checkpoint()).await {
            tracing::warn!(error = %e, "could not write the state file at shutdown; the next start re-applies from the log");
        }
    }
}

/// Start node `id` of `config` on already opened `storage`: Raft, the app, its listeners.
pub async fn start(
    config: &Config,
    id: NodeId,
    storage: Storage,
    transport: Arc<dyn Transport>,
) -> Result<RunningNode, NodeError> {
    let me = config.node(id)?.clone();
    let tls = config.node_server_tls(id)?;
    let app = build(config, id, storage, transport).await?;
    let header_timeout = Duration::from_millis(config.limits.header_read_timeout_ms);
    let mut servers = Vec::new();
    let connections_max = Some(api::server::ConnectionCap {
        max: config.limits.connections_max,
        exempt: peer::is_peer_path,
    });
    match &me.peer_addr {
        None => servers.push(
            listen(
                &me.addr,
                router(app.clone()),
                header_timeout,
                &tls,
                connections_max,
            )
            .await?,
        ),
        Some(peer) => {
            servers.push(
                listen(
                    &me.addr,
                    client_router(app.clone()),
                    header_timeout,
                    &tls,
                    connections_max,
                )
                .await?,
            );
            servers.push(listen(peer, peer_router(app.clone()), header_timeout, &tls, None).await?);
        }
    }
    // Every two election timeouts: long enough that an election in progress is not taken for
    // silence.
    let period = Duration::from_millis(2 * config.raft.election_timeout_ms_max);
    servers.push(tokio::spawn(removal::watch(app.clone(), period)));
    // Elections start here, openraft's own timer being off (`prevote.rs`).
    servers.push(tokio::spawn(prevote::run(app.clone())));
    if config.raft.bootstrap == config::Bootstrap::Auto {
        let period = Duration::from_millis(config.raft.election_timeout_ms_max);
        servers.push(tokio::spawn(bootstrap::run(app.clone(), period)));
    }
    tracing::info!(id, addr = %me.addr, peer_addr = %me.peer_addr(), tls = tls.is_some(), "node serving");
    Ok(RunningNode { app, servers })
}

/// Node `id` of `config` on already opened `storage`, Raft started, with no listener: what
/// [`start`] serves, and what in-process tests call through the routers.
pub async fn build(
    config: &Config,
    id: NodeId,
    storage: Storage,
    transport: Arc<dyn Transport>,
) -> Result<SharedApp, NodeError> {
    let me = config.node(id)?.clone();
    config.check_exposure(id)?;
    let raft_config = Arc::new(config.openraft().validate().map_err(Box::new)?);
    let metrics = Arc::new(metrics::NodeMetrics::new(&storage.metrics));
    // The leader's fsync runs beside its followers' (raft_store::LocalDurable).
    let log_durable = storage.log.overlap_leader_fsync(id);
    let network = PeerNetwork::new(
        transport.clone(),
        config.cluster_secret(),
        metrics.raft_path.clone(),
        log_durable.clone(),
    );
    // Raft::new re-applies the committed entries after the state file's last checkpoint (at
    // most 256 entries or about 2,048 events; none after a clean stop): with the state
    // file's repair, what a restart after a crash waits on.
    let applied_before = *storage.reader.applied_watch().borrow();
    let started = std::time::Instant::now();
    let raft = Raft::new(id, raft_config, network, storage.log, storage.state_machine)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        reapplied = storage
            .reader
            .applied_watch()
            .borrow()
            .saturating_sub(applied_before),
        "started Raft"
    );
    // After `Raft::new`, which re-applied the committed entries the state file had not kept
    // yet (it is checkpointed every 256 entries or 2,048 events, and at a clean stop): the
    // rules compared are the latest this node knows committed.
    if let Err(e) = check_rules(config, &storage.reader) {
        let _ = raft.shutdown().await;
        return Err(e);
    }
    let core = app::Core {
        id,
        proposer: Proposer::start(
            raft.clone(),
            Duration::from_millis(config.limits.request_timeout_ms),
            config.limits.write_queue_max,
            metrics.clone(),
        ),
        raft,
        reader: storage.reader,
        log_durable,
        disk: storage.disk,
        transport,
        metrics,
    };
    let settings = app::Settings {
        limits: config.limits.clone(),
        initial_members: config
            .nodes
            .iter()
            .map(|n| (n.id, Node::new(n.peer_addr())))
            .collect(),
        config_rules: config.rules(),
        users: config.users.clone(),
        cluster_secret: config.cluster_secret(),
        auth: config.client_auth(),
        loopback_hosts_only: config.auth.tokens.is_empty()
            && [Some(me.addr.as_str()), me.peer_addr.as_deref()]
                .into_iter()
                .flatten()
                .all(config::is_loopback),
    };
    Ok(App::new(core, settings))
}

/// Serve `router` on `addr`, over TLS only when `tls` is given.
async fn listen(
    addr: &str,
    router: axum::Router,
    header_timeout: Duration,
    tls: &Option<api::ServerTls>,
    connections_max: Option<api::server::ConnectionCap>,
) -> Result<JoinHandle<()>, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| NodeError::Bind {
            addr: addr.to_string(),
            error,
        })?;
    Ok(tokio::spawn(api::server::serve_with(
        listener,
        router,
        header_timeout,
        tls.clone(),
        connections_max,
    )))
}

/// A node whose config rules differ from the replicated ones it has applied refuses to start:
/// the operator must see the difference instead of running with rules nobody enforces.
fn check_rules(config: &Config, reader: &raft_store::StateReader) -> Result<(), NodeError> {
    let replicated = reader.rules()?;
    if replicated.version == 0 {
        return Ok(());
    }
    let diff = config
        .rules()
        .diff(&replicated.rules, ("in the config", "replicated"));
    if diff.is_empty() {
        return Ok(());
    }
    Err(NodeError::RulesDiffer {
        config: config.path.display().to_string(),
        version: replicated.version,
        diff: diff
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}
