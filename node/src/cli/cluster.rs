//! `uniqlog cluster init | status | up | add-learner | promote | remove`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use uniqlog_node::Config;

use super::client::{write_targets, Client};
use super::progress::Progress;
use api::client::ClientError;
use api::wire::{AddLearnerBody, ClusterStatus, MembershipBody};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Bootstrap the cluster from the config's node list (idempotent).
    Init {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Initialize through this node (default: the first of the config that answers).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Show every node's view: role, term, commit and applied index.
    Status {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start this machine's nodes as supervised child processes (a child that exits is
    /// started again), initialize, stop all on Ctrl-C.
    Up {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Also run the read model (`query`), the mail sender (`mail`) and, when the config's
        /// webhook is `[mail_sink] listen`, the local mail sink.
        #[arg(long)]
        with_consumers: bool,
    },
    /// Restart nodes that `cluster up` runs for this config: all of them one at a time (the
    /// leader last), or one; each waited for until it is back and caught up.
    Restart {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Every node, one at a time, keeping a majority up.
        #[arg(long, required_unless_present = "node", conflicts_with = "node")]
        rolling: bool,
        /// This node only.
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Add a node as a learner and follow it until it holds the log up to its own addition
    /// (it catches up without voting; promote it after).
    AddLearner {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Peer address of the new node; taken from the config when omitted.
        #[arg(long)]
        addr: Option<String>,
        /// Return once it is added, without following its catch-up.
        #[arg(long)]
        no_wait: bool,
        /// Send the change to this node (default: any node of the config that takes it).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Make a learner a voter.
    Promote {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The learner to promote.
        #[arg(long)]
        id: u64,
        /// Send the change to this node (default: any node of the config that takes it).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
    /// Remove a node from the voters and the cluster.
    Remove {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The node to remove.
        #[arg(long)]
        id: u64,
        /// Send the change to this node (default: any node of the config that takes it).
        #[arg(long, value_name = "ID")]
        node: Option<u64>,
    },
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init { config, node } => init(&Config::load(&config)?, node).await,
        ClusterCommand::Status { config, json } => status(&Config::load(&config)?, json).await,
        ClusterCommand::Up {
            config,
            with_consumers,
        } => super::supervise::up(&config, with_consumers).await,
        ClusterCommand::Restart { config, node, .. } => {
            super::rolling::restart(&config, node).await
        }
        ClusterCommand::AddLearner {
            config,
            id,
            addr,
            no_wait,
            node,
        } => {
            let config = Config::load(&config)?;
            let addr = match addr {
                Some(a) => a,
                None => config
                    .node(id)
                    .map(|n| n.peer_addr().to_string())
                    .map_err(|_| anyhow!("node {id} is not in the config: pass --addr"))?,
            };
            // Adding the same learner again changes nothing: safe to send to the next node.
            let body = AddLearnerBody { id, addr };
            let client = Client::for_config(&config)?;
            let added = client
                .write(&write_targets(&config, node)?, true, |a| {
                    let (client, body) = (&client, &body);
                    async move { client.api().add_learner(&a, body, client.timeout).await }
                })
                .await?;
            println!("node {id} added as learner (log index {})", added.log_index);
            if no_wait {
                return Ok(());
            }
            follow_catch_up(&config, id, added.log_index).await
        }
        ClusterCommand::Promote { config, id, node } => {
            change_voters(&Config::load(&config)?, id, true, node).await
        }
        ClusterCommand::Remove { config, id, node } => {
            change_voters(&Config::load(&config)?, id, false, node).await
        }
    }
}

/// With no progress for this long, following a catch-up gives up (the node keeps trying).
const CATCH_UP_STALL: Duration = Duration::from_secs(60);

/// Follow a new learner until the leader knows it holds the log up to `upto` (the entry that
/// added it), with a progress display.
async fn follow_catch_up(config: &Config, id: u64, upto: u64) -> Result<()> {
    let mut progress = Progress::new(format!("node {id} catching up"), "entries");
    let (mut best, mut moved) = (0, Instant::now());
    loop {
        // A failed poll (an election, a node restarting) counts as no progress.
        let matched = leader_status(config)
            .await
            .ok()
            .and_then(|s| s.replication?.get(&id).copied().flatten())
            .unwrap_or(0);
        progress.set(matched, upto);
        if matched >= upto {
            progress.finish(&format!("caught up (log index {matched})"));
            return Ok(());
        }
        if matched > best {
            (best, moved) = (matched, Instant::now());
        } else if moved.elapsed() >= CATCH_UP_STALL {
            progress.abandon();
            bail!(
                "node {id} made no progress for {} s (at {best} of {upto}): is it running, and \
                 can the leader reach it at the address it was added with?",
                CATCH_UP_STALL.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The leader's id and client address, or else the first node that answers.
pub(super) async fn leader_or_any(config: &Config) -> Result<(u64, String)> {
    let client = Client::for_config(config)?;
    let mut first = None;
    for n in &config.nodes {
        if let Ok(s) = client.status(&n.addr).await {
            if s.role == LEADER {
                return Ok((n.id, n.addr.clone()));
            }
            first.get_or_insert((n.id, n.addr.clone()));
        }
    }
    first.ok_or_else(|| anyhow!("no node of the config answered"))
}

/// The status of the leader, found through any node.
pub(super) async fn leader_status(config: &Config) -> Result<ClusterStatus> {
    let any = any_node(config, |c, a| async move { c.status(&a).await }).await?;
    if any.role == LEADER {
        return Ok(any);
    }
    let leader = any.leader.ok_or_else(|| anyhow!("no leader is known"))?;
    let addr = config
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.addr.clone())
        .or_else(|| {
            let m = any.members.iter().find(|m| m.id == leader)?;
            Some(m.addr.clone())
        })
        .ok_or_else(|| anyhow!("the leader {leader} has no known address"))?;
    let status = Client::for_config(config)?.status(&addr).await?;
    // Others may still name a leader that has just restarted and is no longer one.
    if status.role != LEADER {
        bail!("node {leader} is not the leader any more");
    }
    Ok(status)
}

/// Try each configured node in turn until one answers.
pub(super) async fn any_node<T, F, Fut>(config: &Config, f: F) -> Result<T>
where
    F: Fn(&'static Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();
    let client = Client::for_config(config)?;
    let client = CLIENT.get_or_init(|| client);
    let mut last = None;
    for n in &config.nodes {
        match f(client, n.addr.clone()).await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("the config lists no nodes")))
}

pub(super) async fn init(config: &Config, node: Option<u64>) -> Result<()> {
    // One node initializes: the first of the config that answers. A node that holds a log
    // (initialized, or joined) answers that the cluster already was.
    let client = Client::for_config(config)?;
    let answer = client
        .write(&write_targets(config, node)?, true, |a| {
            let client = &client;
            async move { client.api().init(&a, client.timeout).await }
        })
        .await
        .context("initializing the cluster")?;
    if answer.initialized {
        println!("cluster initialized ({} nodes)", config.nodes.len());
    } else {
        println!("cluster was already initialized");
    }
    Ok(())
}

/// The role a node's status names when it leads.
const LEADER: &str = "leader";

/// One node in `cluster status`: its own view (or why there is none), its replication lag as
/// the leader sees it, and whether it is ready. `--json` prints these: the node's status
/// fields with `addr`, `replication_lag` and `health` beside them.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    seen: Seen,
    addr: String,
    replication_lag: Option<u64>,
    health: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Seen {
    Up(ClusterStatus),
    Down {
        id: u64,
        /// Always `down`.
        role: &'static str,
        error: String,
    },
}

impl Row {
    fn id(&self) -> u64 {
        match &self.seen {
            Seen::Up(s) => s.id,
            Seen::Down { id, .. } => *id,
        }
    }

    fn status(&self) -> Option<&ClusterStatus> {
        match &self.seen {
            Seen::Up(s) => Some(s),
            Seen::Down { .. } => None,
        }
    }

    fn error(&self) -> Option<&str> {
        match &self.seen {
            Seen::Up(_) => None,
            Seen::Down { error, .. } => Some(error),
        }
    }
}

/// One row per node: the configured ones, and members the config does not list (a learner
/// added with `--addr`).
async fn status(config: &Config, as_json: bool) -> Result<()> {
    let client = Client::for_config(config)?;
    let mut nodes: Vec<(u64, String)> = config
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.clone()))
        .collect();
    let mut rows = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        let (id, addr) = nodes[i].clone();
        i += 1;
        let seen = match client.status(&addr).await {
            Ok(s) => Seen::Up(s),
            Err(e) => Seen::Down {
                id,
                role: "down",
                error: format!("{e:#}"),
            },
        };
        // Members outside the config are reached at the address the membership holds (a
        // node's peer address, which is its client address unless `peer_addr` is set).
        if let Seen::Up(s) = &seen {
            for m in &s.members {
                if !nodes.iter().any(|(n, _)| *n == m.id) {
                    nodes.push((m.id, m.addr.clone()));
                }
            }
        }
        rows.push(Row {
            seen,
            addr,
            replication_lag: None,
            health: "down".into(),
        });
    }
    let leader = rows
        .iter()
        .filter_map(Row::status)
        .filter(|s| s.role == LEADER)
        .max_by_key(|s| s.term)
        .cloned();
    for row in &mut rows {
        row.replication_lag = replication_lag(leader.as_ref(), row.id());
        if row.status().is_some() {
            row.health = match client.api().ready(&row.addr, client.timeout).await {
                Ok(_) => "ready".into(),
                Err(ClientError::Refused { body, .. }) => format!("not ready: {}", body.message),
                Err(e) => format!("down: {e}"),
            };
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return all_down(&rows);
    }
    print!("{}", status_table(&rows));
    // When none answers, the error alone says it; otherwise name each node that did not.
    all_down(&rows)?;
    for r in &rows {
        if let Some(error) = r.error() {
            eprintln!("node {}: {error}", r.id());
        }
    }
    Ok(())
}

/// Entries the leader has that node `id` is not known to hold: from the leader's replication
/// view, which is what Raft acts on. `None` for the leader itself, and when no leader
/// answered or it does not know yet.
fn replication_lag(leader: Option<&ClusterStatus>, id: u64) -> Option<u64> {
    let leader = leader.filter(|l| l.id != id)?;
    let matched = leader.replication.as_ref()?.get(&id).copied().flatten()?;
    Some(leader.last_log_index.saturating_sub(matched))
}

fn status_table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<4} {:<22} {:<10} {:<7} {:>6} {:>7} {:>10} {:>10} {:>9}  {}\n",
        "ID", "ADDR", "ROLE", "MEMBER", "TERM", "LEADER", "COMMIT", "APPLIED", "REPL-LAG", "HEALTH"
    );
    // The membership as the leader (or else the first node that answered) holds it.
    let statuses = || rows.iter().filter_map(Row::status);
    let view = statuses()
        .find(|s| s.role == LEADER)
        .or_else(|| statuses().next());
    let dash = || "-".to_string();
    let num = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
    for r in rows {
        let s = r.status();
        let member = view
            .map(|v| match v.members.iter().find(|m| m.id == r.id()) {
                Some(m) if m.voter => "voter",
                Some(_) => "learner",
                None => "no",
            })
            .unwrap_or("?");
        out.push_str(&format!(
            "{:<4} {:<22} {:<10} {:<7} {:>6} {:>7} {:>10} {:>10} {:>9}  {}\n",
            r.id(),
            r.addr,
            s.map_or("down", |s| s.role.as_str()),
            member,
            num(s.map(|s| s.term)),
            num(s.and_then(|s| s.leader)),
            num(s.map(|s| s.commit_index)),
            num(s.map(|s| s.applied_index)),
            num(r.replication_lag),
            r.health,
        ));
    }
    out
}

/// An error when no node answered (a wrong address, CA or token everywhere).
fn all_down(rows: &[Row]) -> Result<()> {
    if rows.iter().all(|r| r.error().is_some()) {
        bail!(
            "no node gave its status: {}",
            rows.first().and_then(Row::error).unwrap_or("no nodes")
        );
    }
    Ok(())
}

async fn change_voters(config: &Config, id: u64, add: bool, node: Option<u64>) -> Result<()> {
    let status = any_node(config, |c, a| async move { c.status(&a).await }).await?;
    let members = &status.members;
    let mut voters: BTreeSet<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let known = members.iter().any(|m| m.id == id);
    if add {
        if !known {
            bail!("node {id} is not a member: add it with `cluster add-learner` first");
        }
        voters.insert(id);
    } else {
        if !voters.remove(&id) && !known {
            bail!("node {id} is not a member");
        }
        if voters.is_empty() {
            bail!("refusing to remove the last voter");
        }
    }
    // Setting the same voters again changes nothing: safe to send to the next node.
    let body = MembershipBody {
        voters: voters.iter().copied().collect(),
    };
    let client = Client::for_config(config)?;
    client
        .write(&write_targets(config, node)?, true, |a| {
            let (client, body) = (&client, &body);
            async move {
                client
                    .api()
                    .change_membership(&a, body, client.timeout)
                    .await
            }
        })
        .await?;
    let verb = if add { "promoted to voter" } else { "removed" };
    println!("node {id} {verb}; voters are now {voters:?}");
    Ok(())
}
