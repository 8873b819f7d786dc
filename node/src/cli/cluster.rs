//! `uniqlog cluster init | status | up | add-learner | promote | remove`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use uniqlog_node::Config;

use super::client::Client;
use super::progress::Progress;
use super::run::terminated;
use api::HttpRequest;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Bootstrap the cluster from the config's node list (idempotent).
    Init {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Show every node's view: role, term, commit and applied index.
    Status {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start this machine's nodes as child processes, initialize, stop all on Ctrl-C.
    Up {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Restart the nodes `cluster up` runs for this config, one at a time (the leader last),
    /// each waited for until it is back and caught up.
    Restart {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// One node at a time, keeping a majority up (the only way there is).
        #[arg(long, required = true)]
        rolling: bool,
    },
    /// Add a node as a learner and follow it until it holds the log up to its own addition
    /// (it catches up without voting; promote it after).
    AddLearner {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
        /// Peer address of the new node; taken from the config when omitted.
        #[arg(long)]
        addr: Option<String>,
        /// Return once it is added, without following its catch-up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
    },
    /// Remove a node from the voters and the cluster.
    Remove {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
    },
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init { config } => init(&Config::load(&config)?).await,
        ClusterCommand::Status { config, json } => status(&Config::load(&config)?, json).await,
        ClusterCommand::Up { config } => up(&config).await,
        ClusterCommand::Restart { config, .. } => super::rolling::restart(&config).await,
        ClusterCommand::AddLearner {
            config,
            id,
            addr,
            no_wait,
        } => {
            let config = Config::load(&config)?;
            let addr = match addr {
                Some(a) => a,
                None => config
                    .node(id)
                    .map(|n| n.peer_addr().to_string())
                    .map_err(|_| anyhow!("node {id} is not in the config: pass --addr"))?,
            };
            let body = any_node(&config, |c, a| {
                let body = json!({ "id": id, "addr": addr });
                async move { c.post(&a, "/v1/cluster/learners", &body).await }
            })
            .await?;
            println!(
                "node {id} added as learner (log index {})",
                body["log_index"]
            );
            match body["log_index"].as_u64() {
                Some(upto) if !no_wait => follow_catch_up(&config, id, upto).await,
                _ => Ok(()),
            }
        }
        ClusterCommand::Promote { config, id } => {
            change_voters(&Config::load(&config)?, id, true).await
        }
        ClusterCommand::Remove { config, id } => {
            change_voters(&Config::load(&config)?, id, false).await
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
            .and_then(|s| s["replication"][id.to_string()].as_u64())
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
        if let Ok(s) = client.get(&n.addr, "/v1/cluster/status").await {
            if s["role"] == "leader" {
                return Ok((n.id, n.addr.clone()));
            }
            first.get_or_insert((n.id, n.addr.clone()));
        }
    }
    first.ok_or_else(|| anyhow!("no node of the config answered"))
}

/// The status of the leader, found through any node.
pub(super) async fn leader_status(config: &Config) -> Result<Value> {
    let any = any_node(config, |c, a| async move {
        c.get(&a, "/v1/cluster/status").await
    })
    .await?;
    if any["role"] == "leader" {
        return Ok(any);
    }
    let leader = any["leader"]
        .as_u64()
        .ok_or_else(|| anyhow!("no leader is known"))?;
    let addr = config
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.addr.clone())
        .or_else(|| {
            any["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == leader)?["addr"]
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| anyhow!("the leader {leader} has no known address"))?;
    let status = Client::for_config(config)?
        .get(&addr, "/v1/cluster/status")
        .await?;
    // Others may still name a leader that has just restarted and is no longer one.
    if status["role"] != "leader" {
        bail!("node {leader} is not the leader any more");
    }
    Ok(status)
}

/// Try each configured node in turn until one answers.
pub(super) async fn any_node<F, Fut>(config: &Config, f: F) -> Result<Value>
where
    F: Fn(&'static Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
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

async fn init(config: &Config) -> Result<()> {
    // Exactly one node initializes: the first of the config.
    let first = &config.nodes[0];
    let client = Client::for_config(config)?;
    let body = client
        .post(&first.addr, "/v1/cluster/init", &json!({}))
        .await
        .with_context(|| format!("initializing through node {} at {}", first.id, first.addr))?;
    if body["initialized"] == true {
        println!(
            "cluster initialized through node {} ({} nodes)",
            first.id,
            config.nodes.len()
        );
    } else {
        println!("cluster was already initialized");
    }
    Ok(())
}

/// One row per node: the configured ones, and members the config does not list (a learner
/// added with `--addr`), each with its own view, its replication lag as the leader sees it
/// and whether it is ready.
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
        let mut row = match client.get(&addr, "/v1/cluster/status").await {
            Ok(s) => s,
            Err(e) => json!({ "id": id, "addr": addr, "role": "down", "error": e.to_string() }),
        };
        row["addr"] = json!(addr);
        // Members outside the config are reached at the address the membership holds (a
        // node's peer address, which is its client address unless `peer_addr` is set).
        for m in row["members"].as_array().into_iter().flatten() {
            if let (Some(mid), Some(maddr)) = (m["id"].as_u64(), m["addr"].as_str()) {
                if !nodes.iter().any(|(n, _)| *n == mid) {
                    nodes.push((mid, maddr.to_string()));
                }
            }
        }
        rows.push(row);
    }
    let leader = rows
        .iter()
        .filter(|r| r["role"] == "leader")
        .max_by_key(|r| r["term"].as_u64())
        .cloned();
    for row in &mut rows {
        row["replication_lag"] = replication_lag(leader.as_ref(), row);
        if row["error"].is_null() {
            let addr = row["addr"].as_str().unwrap_or_default().to_string();
            row["health"] = match client.call(&addr, HttpRequest::get("/ready")).await {
                Ok((200, _)) => json!("ready"),
                Ok((_, body)) => json!(format!(
                    "not ready: {}",
                    body["message"].as_str().unwrap_or("no reason given")
                )),
                Err(e) => json!(format!("down: {e}")),
            };
        } else {
            row["health"] = json!("down");
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return all_down(&rows);
    }
    print!("{}", status_table(&rows));
    // When none answers, the error alone says it; otherwise name each node that did not.
    all_down(&rows)?;
    for r in rows.iter().filter(|r| r["error"].is_string()) {
        eprintln!("node {}: {}", r["id"], r["error"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// Entries the leader has that `row`'s node is not known to hold: from the leader's
/// replication view, which is what Raft acts on. `null` for the leader itself, and when no
/// leader answered or it does not know yet.
fn replication_lag(leader: Option<&Value>, row: &Value) -> Value {
    let Some(leader) = leader else {
        return Value::Null;
    };
    if leader["id"] == row["id"] {
        return Value::Null;
    }
    let id = row["id"].to_string();
    match (
        leader["last_log_index"].as_u64(),
        leader["replication"][&id].as_u64(),
    ) {
        (Some(last), Some(matched)) => json!(last.saturating_sub(matched)),
        _ => Value::Null,
    }
}

fn status_table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<4} {:<22} {:<10} {:<7} {:>6} {:>7} {:>10} {:>10} {:>9}  {}\n",
        "ID", "ADDR", "ROLE", "MEMBER", "TERM", "LEADER", "COMMIT", "APPLIED", "REPL-LAG", "HEALTH"
    );
    // The membership as the leader (or else the first node that answered) holds it.
    let view = rows
        .iter()
        .find(|r| r["role"] == "leader")
        .or_else(|| rows.iter().find(|r| r["members"].is_array()));
    for r in rows {
        let dash = || "-".to_string();
        let num = |k: &str| r[k].as_u64().map_or_else(dash, |v| v.to_string());
        let member = view
            .and_then(|v| v["members"].as_array())
            .map(|ms| match ms.iter().find(|m| m["id"] == r["id"]) {
                Some(m) if m["voter"] == true => "voter",
                Some(_) => "learner",
                None => "no",
            })
            .unwrap_or("?");
        out.push_str(&format!(
            "{:<4} {:<22} {:<10} {:<7} {:>6} {:>7} {:>10} {:>10} {:>9}  {}\n",
            r["id"].to_string(),
            r["addr"].as_str().unwrap_or("?"),
            r["role"].as_str().unwrap_or("?"),
            member,
            num("term"),
            num("leader"),
            num("commit_index"),
            num("applied_index"),
            num("replication_lag"),
            r["health"].as_str().unwrap_or("?"),
        ));
    }
    out
}

/// An error when no node answered (a wrong address, CA or token everywhere).
fn all_down(rows: &[Value]) -> Result<()> {
    if rows.iter().all(|r| r["error"].is_string()) {
        bail!(
            "no node gave its status: {}",
            rows.first()
                .and_then(|r| r["error"].as_str())
                .unwrap_or("no nodes")
        );
    }
    Ok(())
}

async fn change_voters(config: &Config, id: u64, add: bool) -> Result<()> {
    let status = any_node(config, |c, a| async move {
        c.get(&a, "/v1/cluster/status").await
    })
    .await?;
    let members = status["members"]
        .as_array()
        .ok_or_else(|| anyhow!("cluster status has no members"))?;
    let mut voters: BTreeSet<u64> = members
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["id"].as_u64())
        .collect();
    let known = members.iter().any(|m| m["id"] == id);
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
    let body = json!({ "voters": voters });
    any_node(config, |c, a| {
        let body = body.clone();
        async move { c.post(&a, "/v1/cluster/membership", &body).await }
    })
    .await?;
    let verb = if add { "promoted to voter" } else { "removed" };
    println!("node {id} {verb}; voters are now {voters:?}");
    Ok(())
}

async fn wait_healthy(
    client: &Client,
    addr: &str,
    mut child_alive: impl FnMut() -> bool,
) -> Result<()> {
    for _ in 0..300 {
        if client.get(addr, "/health").await.is_ok() {
            return Ok(());
        }
        if !child_alive() {
            bail!("the node for {addr} exited during start-up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the node at {addr} did not become healthy within 30 s")
}

async fn up(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let exe = std::env::current_exe()?;
    // Before any node starts: a bad CA file stops here.
    let client = Client::for_config(&config)?;
    // Handlers first: a signal that arrives once the pid file is out must not kill this
    // process with the default action and leave its nodes running. SIGUSR1 asks for a
    // rolling restart; SIGHUP (the terminal went away) stops everything, like Ctrl-C.
    use tokio::signal::unix::{signal, SignalKind};
    let mut restart = signal(SignalKind::user_defined1())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // `cluster restart --rolling` finds this process through it.
    let _lock = super::rolling::UpLock::take(config_path)?;
    let spawn = |id: u64| {
        tokio::process::Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config_path)
            .arg("--id")
            .arg(id.to_string())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))
    };
    let mut children = Vec::new();
    for n in &config.nodes {
        children.push((n.id, spawn(n.id)?));
    }
    let result = async {
        for (n, (_, child)) in config.nodes.iter().zip(children.iter_mut()) {
            wait_healthy(&client, &n.addr, || matches!(child.try_wait(), Ok(None))).await?;
        }
        init(&config).await?;
        for n in &config.nodes {
            println!(
                "node {} listening on http://{} (data in {})",
                n.id,
                n.addr,
                n.data_dir.display()
            );
        }
        println!(
            "Ctrl-C stops all nodes; `uniqlog cluster restart --rolling --config {}` (or \
             SIGUSR1) restarts them one at a time.",
            config_path.display()
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_ok() {
        loop {
            tokio::select! {
                _ = terminated() => break,
                _ = hangup.recv() => break,
                _ = restart.recv() => {
                    // Ctrl-C during a restart still stops everything.
                    tokio::select! {
                        r = super::rolling::rolling_restart(&config, &mut children, spawn) => {
                            if let Err(e) = r {
                                eprintln!("rolling restart stopped: {e:#}");
                            }
                        }
                        _ = terminated() => break,
                        _ = hangup.recv() => break,
                    }
                }
            }
        }
    }
    for (id, child) in &mut children {
        stop_child(*id, child).await;
    }
    result
}

/// SIGTERM, then SIGKILL if the node has not exited within 5 s.
pub(super) async fn stop_child(id: u64, child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and own; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    eprintln!("node {id} did not stop in time; killing it");
    let _ = child.start_kill();
    let _ = child.wait().await;
}
