//! `uniqlog cluster init | status | up | add-learner | promote | remove`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use uniqlog_node::Config;

use super::client::Client;
use super::run::terminated;

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
    /// Add a node as a learner (it catches up without voting).
    AddLearner {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        id: u64,
        /// Peer address of the new node; taken from the config when omitted.
        #[arg(long)]
        addr: Option<String>,
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
        ClusterCommand::AddLearner { config, id, addr } => {
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
            Ok(())
        }
        ClusterCommand::Promote { config, id } => {
            change_voters(&Config::load(&config)?, id, true).await
        }
        ClusterCommand::Remove { config, id } => {
            change_voters(&Config::load(&config)?, id, false).await
        }
    }
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

async fn status(config: &Config, as_json: bool) -> Result<()> {
    let client = Client::for_config(config)?;
    let mut rows = Vec::new();
    for n in &config.nodes {
        let row = match client.get(&n.addr, "/v1/cluster/status").await {
            Ok(s) => s,
            Err(e) => json!({ "id": n.id, "addr": n.addr, "role": "down", "error": e.to_string() }),
        };
        rows.push(row);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return all_down(&rows);
    }
    println!(
        "{:<4} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10} {:>8}",
        "ID", "ADDR", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG"
    );
    let leader_commit = rows
        .iter()
        .filter(|r| r["role"] == "leader")
        .filter_map(|r| r["commit_index"].as_u64())
        .max();
    for (n, r) in config.nodes.iter().zip(&rows) {
        let dash = || "-".to_string();
        let num = |k: &str| r[k].as_u64().map_or_else(dash, |v| v.to_string());
        let lag = match (leader_commit, r["applied_index"].as_u64()) {
            (Some(c), Some(a)) => c.saturating_sub(a).to_string(),
            _ => dash(),
        };
        println!(
            "{:<4} {:<22} {:<10} {:>6} {:>7} {:>10} {:>10} {:>8}",
            n.id,
            n.addr,
            r["role"].as_str().unwrap_or("?"),
            num("term"),
            num("leader"),
            num("commit_index"),
            num("applied_index"),
            lag
        );
    }
    // When none answers, the error alone says it; otherwise name each node that did not.
    all_down(&rows)?;
    for r in rows.iter().filter(|r| r["error"].is_string()) {
        eprintln!("node {}: {}", r["id"], r["error"].as_str().unwrap_or(""));
    }
    Ok(())
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
    let mut children = Vec::new();
    for n in &config.nodes {
        let child = tokio::process::Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config_path)
            .arg("--id")
            .arg(n.id.to_string())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", n.id))?;
        children.push((n.id, child));
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
        println!("Ctrl-C stops all nodes.");
        anyhow::Ok(())
    }
    .await;
    if result.is_ok() {
        terminated().await;
    }
    for (id, child) in &mut children {
        stop_child(*id, child).await;
    }
    result
}

/// SIGTERM, then SIGKILL if the node has not exited within 5 s.
async fn stop_child(id: u64, child: &mut tokio::process::Child) {
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
