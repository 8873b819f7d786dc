//! `SimCluster`: uniqlog nodes as madsim nodes, built from the production code paths.
//!
//! Each node is `uniqlog_node::start` on `raft_store::Storage::open_with_backend` over a
//! [`SimDisk`], with `api::HyperTransport` for peer RPC, serving the real routers on simulated
//! TCP at `10.0.0.{id}:7001`. A separate client node (`10.0.0.100`) sends the HTTP requests.
//! Snapshot files are real files in a per-run temporary directory.
//!
//! Every helper that waits, waits for a condition, with a bounded number of tries and
//! simulated sleeps between them, and panics with what it saw when the bound runs out.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api::client::{ClientError, ReadTopic};
use api::cluster::{agreed_leader, settled};
use api::wire::{AddLearnerBody, AppendBody, ClusterStatus, Initialized, MembershipBody};
use api::{HttpRequest, HttpResponse, Transport, TransportError};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use raft_store::Storage;
use serde_json::Value;
use uniqlog_node::Config;

use crate::disk::{Faults, SimDisk};
use crate::folder::SimFolder;
use crate::history::{Created, FinalState, NodeId, Outcome, Owner};
use crate::net_faults::{FaultyTransport, NetFaults};
use crate::space::Space;

pub const PORT: u16 = 7001;
/// Ids a run may give to nodes it adds (membership churn) after its first `n`; a consumer's
/// list of node addresses covers them all (see [`all_node_addrs`]).
pub const SPARE_IDS: u64 = 16;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

/// Raft timing and snapshot policy tuned for simulation: snapshots and purges every few dozen
/// entries, several chunks per snapshot transfer.
pub const SIM_RAFT: &str = r#"
[raft]
heartbeat_ms = 100
election_timeout_ms_min = 500
election_timeout_ms_max = 1000
snapshot_every_entries = 50
entries_kept_after_snapshot = 10
snapshot_chunk_bytes = 4096
install_snapshot_timeout_ms = 2000
append_entries_max = 64
"#;

/// Client limits for simulation: writes give up after 5 s; writes are refused with less than
/// 64 KiB free (a full disk, `FaultKind::DiskFull`, sets limits near that on disks a few
/// hundred KiB large).
pub const SIM_LIMITS: &str = r#"
[limits]
request_timeout_ms = 5000
disk_free_min_bytes = 65536
"#;

/// `disk_free_min_bytes` of [`SIM_LIMITS`].
pub const SIM_DISK_FREE_MIN: u64 = 65536;

/// The cluster secret every simulated node presents on peer RPC.
pub const SIM_CLUSTER_SECRET: &str = "sim-cluster-secret";
/// The admin token the simulation's clients present: the simulation runs with auth on, as a
/// cluster on a network must.
pub const SIM_CLIENT_TOKEN: &str = "sim-admin-token";

/// `[auth]` of the simulated cluster: the cluster secret and one admin token (as its digest).
/// `insecure`, because simulation builds have no TLS and the nodes are on a (simulated)
/// network.
pub fn sim_auth() -> String {
    format!(
        "[auth]\ninsecure = true\ncluster_secret = \"{SIM_CLUSTER_SECRET}\"\n\n[[auth.token]]\nname = \"sim\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        api::auth::token_digest(SIM_CLIENT_TOKEN)
    )
}

/// How long the client waits for an append's answer: the server's request timeout, the
/// forwarding slack and some network latency.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(8);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two tries of a waiting loop.
const POLL: Duration = Duration::from_millis(200);

pub fn node_ip(id: NodeId) -> Ipv4Addr {
    assert!((1..100).contains(&id), "node ids are 1..99");
    Ipv4Addr::new(10, 0, 0, id as u8)
}

pub fn node_addr(id: NodeId) -> String {
    format!("{}:{PORT}", node_ip(id))
}

/// The addresses of every node a run of `n` first nodes may ever have, spares included: the
/// consumers' bootstrap list. An address with no node (yet, or any more) refuses connections
/// at once, so a consumer moves on to the next.
pub fn all_node_addrs(n: usize) -> Vec<String> {
    (1..=n as u64 + SPARE_IDS).map(node_addr).collect()
}

/// The cluster.toml text of an `n`-node simulated cluster.
pub fn config_text(n: usize, extra: &str) -> String {
    let ids: Vec<NodeId> = (1..=n as u64).collect();
    config_text_of(&ids, extra)
}

/// The cluster.toml text listing the nodes `ids`.
pub fn config_text_of(ids: &[NodeId], extra: &str) -> String {
    let mut text = String::new();
    for &id in ids {
        let node = uniqlog_node::NodeConfig {
            id,
            addr: node_addr(id),
            peer_addr: None,
            data_dir: format!("sim/node{id}").into(),
        };
        text.push_str(&node.toml_section());
    }
    text.push_str(extra);
    text
}

/// Simulated milliseconds since the runtime started.
pub fn now_ms() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_millis() as u64
}

pub async fn sleep(d: Duration) {
    madsim::time::sleep(d).await;
}

/// How the cluster is built.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub nodes: usize,
    /// TOML appended after the `[[node]]` list: `[raft]`, `[limits]`, ….
    pub extra_config: String,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            nodes: 3,
            extra_config: format!("{SIM_RAFT}\n{SIM_LIMITS}\n{}", sim_auth()),
        }
    }
}

struct SimNode {
    handle: NodeHandle,
    /// The Raft log's folder of segments (every write syncs one of them).
    disk: SimFolder,
    /// The state machine's file (checkpointed every few entries, see `run_node`, and before
    /// purges and snapshots).
    state_disk: SimDisk,
    /// The snapshot folder (`current.snap` and the temporaries of builds and transfers).
    snapshots: SimFolder,
    /// The capacity the three share, as one file system.
    space: Space,
    up: bool,
    paused: bool,
    /// Bumped on every kill: a status read is only trusted if the epoch did not change
    /// while it was in flight.
    epoch: Arc<AtomicU64>,
    /// Set when the node refused to start, or stopped, on damaged data.
    damaged: Arc<std::sync::Mutex<Option<String>>>,
}

/// The restart epoch of every node ever started, shared with the clients: an answer is
/// trusted to come from one life of a node only if the epoch did not change while it was in
/// flight.
#[derive(Clone, Default)]
pub struct Epochs(Arc<std::sync::Mutex<BTreeMap<NodeId, Arc<AtomicU64>>>>);

impl Epochs {
    fn add(&self, id: NodeId, epoch: Arc<AtomicU64>) {
        self.0.lock().unwrap().insert(id, epoch);
    }

    /// Node `id`'s epoch now (0 for a node this registry never saw).
    pub fn get(&self, id: NodeId) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(&id)
            .map_or(0, |e| e.load(Ordering::SeqCst))
    }
}

/// A running simulated cluster. Create it inside a madsim runtime.
pub struct SimCluster {
    pub seed: u64,
    pub config: Arc<Config>,
    runtime: Handle,
    /// Every node ever started, retired ones included.
    nodes: BTreeMap<NodeId, SimNode>,
    /// The nodes of the Raft membership (voters and learners) as the harness last learned
    /// it: what [`SimCluster::ids`] returns, and what faults, convergence and checks cover.
    members: std::collections::BTreeSet<NodeId>,
    /// Removed from the membership, stopped, their disks thrown away; ids never reused.
    retired: std::collections::BTreeSet<NodeId>,
    /// The `[raft]`, `[limits]`, ... text every node's config ends with.
    extra_config: String,
    /// Where the clients of `Load::start_following` send: the members.
    targets: crate::workload::Targets,
    client_node: NodeHandle,
    client: Client,
    run_dir: PathBuf,
    clogged: Vec<NodeId>,
    clogged_links: Vec<(NodeId, NodeId)>,
    net: NetFaults,
    /// Every node's restart epoch, for clients that record which life of a node answered.
    epochs: Epochs,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl SimCluster {
    /// Start `n` nodes with the default simulation settings.
    pub fn start(n: usize) -> SimCluster {
        Self::with_settings(SimSettings {
            nodes: n,
            ..SimSettings::default()
        })
    }

    pub fn with_settings(settings: SimSettings) -> SimCluster {
        let runtime = Handle::current();
        let seed = runtime.seed();
        let text = config_text(settings.nodes, &settings.extra_config);
        let config = Config::parse(&text, Path::new("<sim>"), Path::new("/"))
            .unwrap_or_else(|e| panic!("the simulation's config is invalid: {e}\n{text}"));
        let config = Arc::new(config);
        let run_dir = std::env::temp_dir().join(format!(
            "uniqlog-sim-{}-{seed}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&run_dir);
        remove_stale_run_dirs();
        std::fs::create_dir_all(&run_dir).expect("create the run directory");

        let net = NetFaults::new();
        let epochs = Epochs::default();
        let mut nodes = BTreeMap::new();
        for n in &config.nodes {
            let node = spawn_node(&runtime, config.clone(), n.id, &net);
            epochs.add(n.id, node.epoch.clone());
            nodes.insert(n.id, node);
        }
        let client_node = runtime
            .create_node()
            .name("client")
            .ip(IpAddr::V4(CLIENT_IP))
            .build();
        let transport = api::client_transport(Some(SIM_CLIENT_TOKEN.to_string()));
        let client = Client {
            api: api::client::Client::new(transport.clone()),
            transport,
        };
        SimCluster {
            seed,
            members: nodes.keys().copied().collect(),
            targets: crate::workload::Targets::new(nodes.keys().copied().collect()),
            retired: Default::default(),
            extra_config: settings.extra_config.clone(),
            config,
            runtime,
            nodes,
            client_node,
            client,
            run_dir,
            clogged: Vec::new(),
            clogged_links: Vec::new(),
            net,
            epochs,
        }
    }

    /// The message faults of every node's peer RPC and forwarding (off until set).
    pub fn net_faults(&self) -> &NetFaults {
        &self.net
    }

    /// The restart epoch of node `id` (bumped by every kill), shared with status pollers.
    pub fn epoch(&self, id: NodeId) -> Arc<AtomicU64> {
        self.node(id).epoch.clone()
    }

    /// Every node's restart epoch, nodes started later included.
    pub fn epochs(&self) -> Epochs {
        self.epochs.clone()
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.node(id).paused
    }

    /// Stop running node `id`'s tasks (timers, handlers, Raft) without killing it: a process
    /// stopped by the OS or a long GC pause. Messages to it queue up.
    pub fn pause(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        assert!(
            node.up && !node.paused,
            "pause node {id}: it is down or paused"
        );
        self.runtime.pause(node.handle.id());
        node.paused = true;
        tracing::info!(id, "paused node");
    }

    pub fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        assert!(node.paused, "resume node {id}: it is not paused");
        self.runtime.resume(node.handle.id());
        node.paused = false;
        tracing::info!(id, "resumed node");
    }

    /// The current members (voters and learners), as last learned.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().copied().collect()
    }

    /// The nodes clients send to, kept equal to the members.
    pub fn targets(&self) -> crate::workload::Targets {
        self.targets.clone()
    }

    /// Every node ever started, members or not, retired ones included.
    pub fn started(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes removed from the cluster for good.
    pub fn retired(&self) -> Vec<NodeId> {
        self.retired.iter().copied().collect()
    }

    /// Start a new node under a fresh id (never used before), on an empty disk, with a config
    /// that lists the cluster's first nodes and itself, as an operator would write it. It is
    /// not a member until added (`POST /v1/cluster/learners`) and [`SimCluster::set_members`]
    /// says so. `None` once the [`SPARE_IDS`] are used up.
    pub fn add_node(&mut self) -> Option<NodeId> {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        if id > self.config.nodes.len() as u64 + SPARE_IDS {
            return None;
        }
        let mut ids: Vec<NodeId> = self.config.nodes.iter().map(|n| n.id).collect();
        ids.push(id);
        let text = config_text_of(&ids, &self.extra_config);
        let config = Config::parse(&text, Path::new("<sim>"), Path::new("/"))
            .unwrap_or_else(|e| panic!("the config of new node {id} is invalid: {e}\n{text}"));
        let node = spawn_node(&self.runtime, Arc::new(config), id, &self.net);
        self.epochs.add(id, node.epoch.clone());
        self.nodes.insert(id, node);
        tracing::info!(id, "started a new node");
        Some(id)
    }

    /// Take the membership as the cluster reports it (see [`SimCluster::membership`]).
    pub fn set_members(&mut self, members: impl IntoIterator<Item = NodeId>) {
        self.members = members.into_iter().collect();
        self.targets.set(self.ids());
        tracing::info!(members = ?self.members, "members");
    }

    /// Stop node `id` for good: it left the membership (or never joined); its disk is gone
    /// with it, and its id is never used again.
    pub fn retire(&mut self, id: NodeId) {
        if self.node(id).up {
            self.kill(id);
        }
        self.members.remove(&id);
        self.retired.insert(id);
        self.targets.set(self.ids());
        tracing::info!(id, "retired node");
    }

    /// The membership (voters, learners) the agreed leader reports, if a leader is agreed on.
    pub async fn membership(&self) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        let leader = self.leader_now().await?;
        let status = self.status(leader).await.ok()?;
        let (voters, learners) = status.members.iter().partition::<Vec<_>, _>(|m| m.voter);
        Some((
            voters.iter().map(|m| m.id).collect(),
            learners.iter().map(|m| m.id).collect(),
        ))
    }

    /// Ask node `node` for a membership change: the log index of its entry, or why not.
    pub async fn change(&self, node: NodeId, change: Change) -> Result<u64, String> {
        let client = self.client();
        self.on_client(async move {
            let (api, addr) = (client.api(), node_addr(node));
            let done = match change {
                Change::AddLearner(id) => {
                    let body = AddLearnerBody {
                        id,
                        addr: node_addr(id),
                    };
                    api.add_learner(&addr, &body, APPEND_TIMEOUT).await
                }
                Change::Voters(voters) => {
                    let body = MembershipBody { voters };
                    api.change_membership(&addr, &body, APPEND_TIMEOUT).await
                }
            };
            done.map(|d| d.log_index).map_err(|e| e.to_string())
        })
        .await
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).up
    }

    /// The disk capacity node `id`'s three disks share.
    pub fn space(&self, id: NodeId) -> &Space {
        &self.node(id).space
    }

    /// The folder of node `id`'s Raft log.
    pub fn disk(&self, id: NodeId) -> &SimFolder {
        &self.node(id).disk
    }

    /// Both disks of node `id`: its Raft log's folder, then its state machine's file.
    /// Node `id`'s log folder, state file and snapshot folder, in that order.
    pub fn disks(&self, id: NodeId) -> [&dyn Faults; 3] {
        let node = self.node(id);
        [&node.disk, &node.state_disk, &node.snapshots]
    }

    fn node(&self, id: NodeId) -> &SimNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A client for tasks spawned with [`SimCluster::spawn_client`].
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Run `f` as a task on the client node (network calls need a node with an address).
    pub fn spawn_client<F>(&self, f: F) -> madsim::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.client_node.spawn(f)
    }

    /// The mail consumer's committed checkpoint (a linearizable read from any node that
    /// answers), as a future that does not borrow the cluster: the consumers' nemesis reads it
    /// before each kill while the cluster's own nemesis holds the cluster.
    pub fn mail_checkpoint_probe(
        &self,
    ) -> impl Fn() -> madsim::task::JoinHandle<Option<u64>> + Send + Sync + 'static {
        let (client, node) = (self.client.clone(), self.client_node.clone());
        let ids: Vec<NodeId> = (1..=self.config.nodes.len() as u64 + SPARE_IDS).collect();
        move || {
            let (client, ids) = (client.clone(), ids.clone());
            node.spawn(async move {
                for id in ids {
                    if let Ok(Some(c)) = client.checkpoint(id, "mail").await {
                        return Some(c.offset);
                    }
                }
                None
            })
        }
    }

    async fn on_client<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.client_node
            .spawn(f)
            .await
            .expect("a client task was cancelled")
    }

    /// Why node `id` refused to start or stopped on damaged data, if it did, with its files
    /// named under `<run>`: the run directory's name holds the process id, and what a run
    /// reports must be the same for the same seed (`same_seed_same_trace_hash`).
    pub fn damaged(&self, id: NodeId) -> Option<String> {
        let why = self.node(id).damaged.lock().unwrap().clone()?;
        Some(why.replace(&self.run_dir.display().to_string(), "<run>"))
    }

    /// Power cut on node `id`: every task of it stops, unsynced writes are lost.
    pub fn kill(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        assert!(node.up, "node {id} is already down");
        if node.paused {
            self.runtime.resume(node.handle.id());
            node.paused = false;
        }
        node.epoch.fetch_add(1, Ordering::SeqCst);
        // Crash the disk first: the dying node's redb may still try to write as its tasks are
        // dropped, and those writes must not land.
        node.disk.crash();
        node.state_disk.crash();
        node.snapshots.crash();
        self.runtime.kill(node.handle.id());
        node.up = false;
        tracing::info!(id, "killed node");
    }

    /// The disk figures of every node, summed.
    pub fn disk_stats(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self
            .nodes
            .values()
            .flat_map(|n| [n.disk.stats(), n.state_disk.stats(), n.snapshots.stats()])
        {
            for (k, v) in [
                ("crashes", s.crashes),
                ("lost_pages", s.lost_pages),
                ("torn_writes", s.torn_writes),
                ("torn_sectors_kept", s.torn_sectors_kept),
                ("sync_errors", s.sync_errors),
                ("fenced_calls", s.fenced_calls),
            ] {
                *out.entry(k.to_string()).or_default() += v;
            }
        }
        let enospc: u64 = self.nodes.values().map(|n| n.space.refused()).sum();
        out.insert("enospc_writes".to_string(), enospc);
        out
    }

    /// `GET /health` of node `id` answered 200 (a node that stopped on a fatal error answers
    /// 503, then nothing once it stopped serving).
    pub async fn healthy(&self, id: NodeId) -> bool {
        let client = self.client();
        self.on_client(async move { client.healthy(id).await })
            .await
    }

    /// Start a killed node again on its disks.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("no such node");
        assert!(
            !node.up,
            "restart node {id} after kill: madsim's restart alone keeps the old sockets"
        );
        *node.damaged.lock().unwrap() = None;
        self.runtime.restart(node.handle.id());
        node.up = true;
        tracing::info!(id, "restarted node");
    }

    /// Cut node `id` off the network, both ways (its clients too).
    pub fn clog(&mut self, id: NodeId) {
        NetSim::current().clog_node(self.node(id).handle.id());
        self.clogged.push(id);
        tracing::info!(id, "clogged node");
    }

    pub fn unclog(&mut self, id: NodeId) {
        NetSim::current().unclog_node(self.node(id).handle.id());
        self.clogged.retain(|&c| c != id);
        tracing::info!(id, "unclogged node");
    }

    /// Hold back the traffic from `from` to `to` only (asymmetric partition).
    pub fn clog_link(&mut self, from: NodeId, to: NodeId) {
        NetSim::current().clog_link(self.node(from).handle.id(), self.node(to).handle.id());
        self.clogged_links.push((from, to));
    }

    pub fn unclog_link(&mut self, from: NodeId, to: NodeId) {
        NetSim::current().unclog_link(self.node(from).handle.id(), self.node(to).handle.id());
        self.clogged_links.retain(|&l| l != (from, to));
    }

    /// Cut every link between `side` and the other nodes, both ways. The clients still reach
    /// every node.
    pub fn partition(&mut self, side: &[NodeId]) {
        let others: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|id| !side.contains(id))
            .collect();
        for &a in side {
            for &b in &others {
                self.clog_link(a, b);
                self.clog_link(b, a);
            }
        }
        tracing::info!(?side, ?others, "partitioned");
    }

    /// `POST /v1/cluster/init` to node 1, until it answers 200.
    pub async fn cluster_init(&self) -> Initialized {
        let mut last = String::new();
        for _ in 0..20 {
            let client = self.client();
            let r = self
                .on_client(async move { client.api.init(&node_addr(1), APPEND_TIMEOUT).await })
                .await;
            match r {
                Ok(answer) => return answer,
                Err(e) => last = e.to_string(),
            }
            sleep(Duration::from_millis(500)).await;
        }
        panic!("cluster init never answered 200; last answer: {last}");
    }

    /// Wait until the nodes have bootstrapped the cluster themselves (`[raft] bootstrap =
    /// "auto"`): a leader a majority agrees on, which has applied the first rules entry.
    pub async fn try_wait_bootstrapped(&self, within: Duration) -> Result<NodeId, String> {
        let start = now_ms();
        loop {
            let left = within.saturating_sub(Duration::from_millis(now_ms() - start));
            let leader = self.try_wait_for_leader(left).await?;
            match self.status(leader).await {
                Ok(s) if s.rules_version > 0 => return Ok(leader),
                other => {
                    if now_ms() - start >= within.as_millis() as u64 {
                        return Err(format!(
                            "no rules entry within {} s; the leader's status: {other:?}",
                            within.as_secs()
                        ));
                    }
                }
            }
            sleep(POLL).await;
        }
    }

    /// Every node's status (or why it could not be had).
    pub async fn statuses(&self) -> BTreeMap<NodeId, Result<ClusterStatus, String>> {
        let client = self.client();
        let ids = self.ids();
        self.on_client(async move {
            let all = ids.iter().map(|&id| {
                let client = client.clone();
                async move { (id, client.status(id).await) }
            });
            futures::future::join_all(all).await.into_iter().collect()
        })
        .await
    }

    pub async fn status(&self, id: NodeId) -> Result<ClusterStatus, String> {
        let client = self.client();
        self.on_client(async move { client.status(id).await }).await
    }

    /// Wait until a majority of the whole cluster agrees on one leader that says it leads.
    pub async fn wait_for_leader(&self) -> NodeId {
        self.try_wait_for_leader(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The leader a majority agrees on now, if any (one round of status calls).
    pub async fn leader_now(&self) -> Option<NodeId> {
        agreed_leader(
            self.statuses().await.values().flatten(),
            self.members.len() / 2 + 1,
        )
    }

    /// Like [`SimCluster::wait_for_leader`], but gives up after `within` of simulated time
    /// with what it saw.
    pub async fn try_wait_for_leader(&self, within: Duration) -> Result<NodeId, String> {
        let majority = self.members.len() / 2 + 1;
        let start = now_ms();
        loop {
            let seen = self.statuses().await;
            if let Some(l) = agreed_leader(seen.values().flatten(), majority) {
                return Ok(l);
            }
            if now_ms() - start >= within.as_millis() as u64 {
                return Err(format!(
                    "no leader agreed on by a majority after {} s: {}",
                    within.as_secs(),
                    brief(&seen)
                ));
            }
            sleep(POLL).await;
        }
    }

    /// Send one append to `node` and classify the answer.
    pub async fn append(&self, node: NodeId, topic: &str, body: &Value) -> Outcome {
        let client = self.client();
        let (topic, body) = (topic.to_string(), body.clone());
        self.on_client(async move { client.append(node, &topic, &body).await })
            .await
    }

    /// All events of `topic` on `node`, paging with `from`.
    pub async fn read_topic(&self, node: NodeId, topic: &str) -> Result<Vec<Value>, String> {
        let client = self.client();
        let topic = topic.to_string();
        self.on_client(async move { client.read_topic(node, &topic).await })
            .await
    }

    /// Wait until every node is up, agrees on the leader, has applied everything the leader
    /// has in its log, and holds identical `topics`; return that state. If the nodes agree on
    /// the index but not on the content, that is returned too (the checker names the
    /// divergence).
    pub async fn wait_converged(&self, topics: &[&str]) -> FinalState {
        self.try_wait_converged(topics, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`SimCluster::wait_converged`], but gives up after `within` of simulated time.
    pub async fn try_wait_converged(
        &self,
        topics: &[&str],
        within: Duration,
    ) -> Result<FinalState, String> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let mut seen;
        let mut last_state = None;
        let start = now_ms();
        loop {
            seen = self.statuses().await;
            if let Some(applied) = all_settled(&seen) {
                let mut state = FinalState {
                    applied_index: applied,
                    ..FinalState::default()
                };
                let mut complete = true;
                for id in self.ids() {
                    let mut per_topic = BTreeMap::new();
                    for t in &topics {
                        match self.read_topic(id, t).await {
                            Ok(events) => {
                                per_topic.insert(t.clone(), events);
                            }
                            Err(_) => complete = false,
                        }
                    }
                    state.topics.insert(id, per_topic);
                    let client = self.client();
                    match self
                        .on_client(async move { client.state_hash(id).await })
                        .await
                    {
                        Ok(h) => {
                            state.state_hashes.insert(id, h);
                        }
                        Err(_) => complete = false,
                    }
                }
                // The index must not have moved while the topics were read.
                if complete && all_settled(&self.statuses().await) == Some(applied) {
                    let first = state.topics.values().next();
                    if state.topics.values().all(|t| Some(t) == first) {
                        return Ok(state);
                    }
                    last_state = Some(state);
                }
            }
            if now_ms() - start >= within.as_millis() as u64 {
                break;
            }
            sleep(POLL).await;
        }
        if let Some(state) = last_state {
            tracing::error!("nodes settled on one applied index but hold different topics");
            return Ok(state);
        }
        Err(format!(
            "the cluster did not converge within {} s: {}",
            within.as_secs(),
            brief(&seen)
        ))
    }

    /// Every node's owner of each of `keys` in uniq set `set`.
    pub async fn read_uniq(
        &self,
        set: &str,
        keys: &[String],
    ) -> Result<BTreeMap<NodeId, BTreeMap<String, Option<Owner>>>, String> {
        let client = self.client();
        let (ids, set, keys) = (self.ids(), set.to_string(), keys.to_vec());
        self.on_client(async move {
            let mut out = BTreeMap::new();
            for id in ids {
                let mut per_key = BTreeMap::new();
                for key in &keys {
                    per_key.insert(key.clone(), client.uniq_owner(id, &set, key).await?);
                }
                out.insert(id, per_key);
            }
            Ok(out)
        })
        .await
    }

    /// Heal every partition made with [`SimCluster::clog`], [`SimCluster::clog_link`] or
    /// [`SimCluster::partition`].
    pub fn heal(&mut self) {
        for id in std::mem::take(&mut self.clogged) {
            NetSim::current().unclog_node(self.node(id).handle.id());
        }
        for (a, b) in std::mem::take(&mut self.clogged_links) {
            NetSim::current().unclog_link(self.node(a).handle.id(), self.node(b).handle.id());
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Run directories of test processes that died (a failed run leaves its directory behind).
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("uniqlog-sim-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let proc_dir = Path::new("/proc");
        if proc_dir.is_dir() && !proc_dir.join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The index all nodes agree on when every one answers and they have settled.
fn all_settled(seen: &BTreeMap<NodeId, Result<ClusterStatus, String>>) -> Option<u64> {
    let all: Vec<&ClusterStatus> = seen
        .values()
        .map(|r| r.as_ref().ok())
        .collect::<Option<_>>()?;
    settled(all)
}

/// One line per node for failure messages.
pub fn brief(seen: &BTreeMap<NodeId, Result<ClusterStatus, String>>) -> String {
    seen.iter()
        .map(|(id, s)| match s {
            Ok(s) => format!(
                "\n  node {id}: {} term {} leader {:?} commit {} applied {} last_log {} purged {:?} snapshot {:?}",
                s.role, s.term, s.leader, s.commit_index, s.applied_index, s.last_log_index,
                s.purged_index, s.snapshot_index
            ),
            Err(e) => format!("\n  node {id}: {e}"),
        })
        .collect()
}

/// Create simulated node `id` (its log folder, state file and snapshot folder) running
/// [`run_node`]; a restart reopens the same disks.
/// Run node `handle`'s wall clock (`api::runtime::now_ms`) up to 2 s off true time and up to
/// 200 ppm fast or slow, drawn from the seed: timestamps, log time, token and activation
/// expiry and lag all read it (issue 27). Real servers under NTP stay within milliseconds;
/// this is the unsynchronized case.
fn skew_clock(handle: &NodeHandle) {
    use madsim::rand::Rng;
    let mut rng = madsim::rand::thread_rng();
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    api::runtime::clocks::skew(
        handle.id(),
        api::runtime::clocks::Skew {
            offset_ms: rng.gen_range(-2000..=2000),
            drift_ppm: rng.gen_range(-200..=200),
            since_ms,
        },
    );
}

fn spawn_node(runtime: &Handle, config: Arc<Config>, id: NodeId, net: &NetFaults) -> SimNode {
    let space = Space::new();
    let disk = SimFolder::new(format!("node{id}-log")).with_space(&space);
    let state_disk = SimDisk::new(format!("node{id}-state")).with_space(&space);
    let snapshots = SimFolder::new(format!("node{id}-snapshots")).with_space(&space);
    let damaged = Arc::new(std::sync::Mutex::new(None));
    let handle = runtime
        .create_node()
        .name(format!("node{id}"))
        .ip(IpAddr::V4(node_ip(id)))
        .init({
            let disks = (
                disk.clone(),
                state_disk.clone(),
                snapshots.clone(),
                space.clone(),
            );
            let net = net.clone();
            let damaged = damaged.clone();
            move || {
                run_node(
                    config.clone(),
                    id,
                    disks.clone(),
                    net.clone(),
                    damaged.clone(),
                )
            }
        })
        .build();
    skew_clock(&handle);
    SimNode {
        handle,
        disk,
        state_disk,
        snapshots,
        space,
        up: true,
        paused: false,
        epoch: Arc::new(AtomicU64::new(0)),
        damaged,
    }
}

/// The body of a simulated node: open its disks (log, state), start the production node,
/// serve forever.
async fn run_node(
    config: Arc<Config>,
    id: NodeId,
    (log_disk, state_disk, snapshots, space): (SimFolder, SimDisk, SimFolder, Space),
    net: NetFaults,
    damaged: Arc<std::sync::Mutex<Option<String>>>,
) {
    // A start that met a full disk (`FaultKind::DiskFull` struck as the node came up) ends as
    // the binary's does: the process stops, and the nemesis, which sees no healthy node,
    // power-cuts and restarts it once space is freed. Any other failure to start is a bug.
    let refused_before = space.refused();
    let out_of_space = {
        let space = space.clone();
        move || space.refused() > refused_before
    };
    let mut storage = match Storage::open_with(log_disk.open(), state_disk.open(), snapshots.open())
    {
        Ok(storage) => storage,
        // As the binary does: refuse to start, and wait for the operator (the nemesis) to
        // replace the node.
        // A format byte flipped reads as a format this build does not know.
        Err(e) if e.is_damage() || matches!(e, raft_store::StoreError::Unsupported(_)) => {
            tracing::warn!(id, error = %e, "node refuses to start: damaged data");
            *damaged.lock().unwrap() = Some(e.to_string());
            return std::future::pending::<()>().await;
        }
        Err(e) if out_of_space() => {
            tracing::warn!(id, error = %e, "node cannot open its storage: disk full");
            return std::future::pending::<()>().await;
        }
        Err(e) => panic!("node {id}: opening its storage failed: {e}"),
    };
    // Checkpoints of the state file more often than the node's default (256 entries),
    // at a pace that differs between nodes and seeds: crashes then meet layers being written
    // and restarts re-apply a few entries or a few hundred.
    let seed = madsim::runtime::Handle::current().seed();
    storage.checkpoint_every([4, 32, 256][((seed + id) % 3) as usize]);
    // The node measures the free space of the disks it writes, as `statvfs` on a machine.
    storage.disk = raft_store::DiskSpace::probe(Arc::new(crate::space::Probe {
        space,
        snapshot_len: Box::new(move || snapshots.file_len(raft_store::SNAPSHOT_FILE)),
        name: format!("node{id}'s disk"),
    }));
    let damage = storage.damage.clone();
    let transport: Arc<dyn Transport> = Arc::new(FaultyTransport::new(net));
    let node = match uniqlog_node::start(&config, id, storage, transport).await {
        Ok(node) => node,
        Err(e) if out_of_space() => {
            tracing::warn!(id, error = %e, "node failed to start: disk full");
            return std::future::pending::<()>().await;
        }
        Err(e) => panic!("node {id}: start failed: {e}"),
    };
    tracing::info!(id, "node started");
    // As the binary does: on a fatal storage error the node stops serving (here it stays a
    // silent process until the nemesis power-cuts and restarts it).
    let error = node.failed().await;
    tracing::warn!(id, %error, "node stopped on a fatal error");
    if damage.found().is_some() {
        *damaged.lock().unwrap() = Some(error);
    }
    node.shutdown().await;
    std::future::pending::<()>().await;
}

/// A membership change, as the harness asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add this node as a learner, at its address.
    AddLearner(NodeId),
    /// Make these the voters.
    Voters(Vec<NodeId>),
}

/// The HTTP client of the simulation. Use it from tasks on the client node. Calls go through
/// `api::client`; what they answer is recorded as JSON, which the checkers read on their own.
#[derive(Clone)]
pub struct Client {
    /// Presents [`SIM_CLIENT_TOKEN`].
    transport: Arc<dyn Transport>,
    /// The same transport, typed.
    api: api::client::Client,
}

impl Client {
    pub async fn send(
        &self,
        node: NodeId,
        req: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, TransportError> {
        self.transport.send(&node_addr(node), req, timeout).await
    }

    /// `POST /v1/topics/{topic}/events`, classified. `body` is the workload's JSON, which
    /// must be an append body.
    pub async fn append(&self, node: NodeId, topic: &str, body: &Value) -> Outcome {
        let body: AppendBody =
            serde_json::from_value(body.clone()).expect("the workload sends append bodies");
        let body = &body;
        match self
            .api
            .append(&node_addr(node), topic, body, APPEND_TIMEOUT)
            .await
        {
            Ok(c) => Outcome::Ok(Created {
                first_offset: c.first_offset,
                last_offset: c.last_offset,
                log_index: c.log_index,
            }),
            // Bodies as JSON values, as the checkers and the reports read them.
            Err(ClientError::Refused {
                status: 409, body, ..
            }) => Outcome::Conflict(serde_json::to_value(body).expect("an error body serializes")),
            Err(ClientError::Refused { status, body, .. }) => {
                let unknown = status == 503 && body.error == "outcome_unknown";
                let body = serde_json::to_value(body).expect("an error body serializes");
                if unknown {
                    Outcome::Unknown(format!("503 {body}"))
                } else {
                    Outcome::Failed(status, body.to_string())
                }
            }
            Err(ClientError::BadAnswer { status, reason, .. }) if status == 201 => {
                Outcome::Unknown(format!("201 with an unexpected body: {reason}"))
            }
            Err(ClientError::BadAnswer { status, reason, .. }) => Outcome::Failed(status, reason),
            Err(e) if e.nothing_sent() => Outcome::Failed(0, e.to_string()),
            Err(e) => Outcome::Unknown(e.to_string()),
        }
    }

    /// `GET /v1/cluster/state-hash` on `node`: its replicated state, table by table.
    pub async fn state_hash(&self, node: NodeId) -> Result<api::wire::StateHash, String> {
        self.api
            .state_hash(&node_addr(node), READ_TIMEOUT)
            .await
            .map_err(|e| format!("state hash of node {node}: {e}"))
    }

    /// Every event of `topic` on `node`, as the node served them.
    pub async fn read_topic(&self, node: NodeId, topic: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            let read = ReadTopic {
                from: out.len() as u64,
                limit: 1000,
                ..ReadTopic::default()
            };
            let page = self
                .api
                .read_topic(&node_addr(node), topic, read, READ_TIMEOUT)
                .await
                .map_err(|e| format!("read {topic} on node {node}: {e}"))?;
            if page.events.is_empty() {
                return Ok(out);
            }
            for e in page.events {
                out.push(serde_json::to_value(e).expect("an event serializes"));
            }
        }
    }

    /// `GET /v1/uniq/{set}/{key}` on `node`: the owner, or `None` when the key is free.
    pub async fn uniq_owner(
        &self,
        node: NodeId,
        set: &str,
        key: &str,
    ) -> Result<Option<Owner>, String> {
        match self
            .api
            .uniq_owner(&node_addr(node), set, key, READ_TIMEOUT)
            .await
        {
            Ok(o) => Ok(Some(Owner {
                owner: o.owner,
                since_offset: o.since_offset,
            })),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(format!("uniq {set}/{key} on node {node}: {e}")),
        }
    }

    /// The latest checkpoint of `consumer`, read linearizably; `None` when it never reported.
    pub async fn checkpoint(
        &self,
        node: NodeId,
        consumer: &str,
    ) -> Result<Option<api::checkpoints::Checkpoint>, String> {
        self.api
            .checkpoint(&node_addr(node), consumer, true, Duration::from_secs(2))
            .await
            .map_err(|e| e.to_string())
    }

    /// The typed client, on the same transport.
    pub fn api(&self) -> &api::client::Client {
        &self.api
    }

    /// `GET /v1/cluster/status`.
    pub async fn status(&self, node: NodeId) -> Result<ClusterStatus, String> {
        self.api
            .status(&node_addr(node), STATUS_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// `GET /health` answered `ok` (a node that stopped on a fatal error answers 503
    /// `failed`, then nothing once it stopped serving).
    pub async fn healthy(&self, node: NodeId) -> bool {
        self.api
            .health(&node_addr(node), STATUS_TIMEOUT)
            .await
            .is_ok_and(|h| h.status == "ok")
    }
}
