//! Rolling restarts of the nodes `uniqlog cluster up` runs on one machine.
//!
//! `cluster up` owns its nodes as child processes, so it does the restarting: on SIGUSR1 it
//! restarts them one at a time, followers first and the leader last (one election in all),
//! each stopped with SIGTERM, started again on the same data dir, and waited for until it is
//! ready and the leader knows it holds the whole log, before the next one goes. A majority is
//! up throughout, so writes only pause for the election.
//!
//! `cluster restart --rolling` finds the `cluster up` of a config through its pid file (held
//! under an exclusive lock while it runs, so a stale file is never trusted), sends it SIGUSR1,
//! and follows the restart through each node's `uptime_ms`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use uniqlog_node::Config;

use super::client::Client;
use super::progress::Progress;

/// How long one node may take to come back and catch up.
const NODE_BACK_MAX: Duration = Duration::from_secs(120);

/// `cluster.toml` → `cluster.toml.up.pid`, beside it.
fn pid_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".up.pid");
    config.with_file_name(name)
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock(2) on a descriptor this function's caller owns; no memory is touched.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The pid file of a running `cluster up`, locked for as long as it is held.
pub struct UpLock {
    _file: File,
    path: PathBuf,
}

impl UpLock {
    /// Take the pid file of `config` for this process; refused when another `cluster up`
    /// of the same config holds it.
    pub fn take(config: &Path) -> Result<UpLock> {
        let path = pid_path(config);
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&file) {
            bail!(
                "another `uniqlog cluster up` runs this config ({} is locked)",
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(UpLock { _file: file, path })
    }
}

impl Drop for UpLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `cluster restart --rolling`: ask the `cluster up` of `config_path` to restart its nodes,
/// and follow until every node has restarted, is ready and holds the leader's log.
pub async fn restart(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let path = pid_path(config_path);
    let file = File::open(&path).map_err(|_| {
        anyhow!(
            "no `uniqlog cluster up` runs for {} (no {}); a rolling restart of nodes run \
             another way is done by their supervisor, one node at a time",
            config_path.display(),
            path.display()
        )
    })?;
    if try_lock(&file) {
        bail!(
            "no `uniqlog cluster up` runs for {} ({} is stale)",
            config_path.display(),
            path.display()
        );
    }
    let pid: i32 = std::fs::read_to_string(&path)?
        .trim()
        .parse()
        .with_context(|| format!("reading {}", path.display()))?;
    let asked = Instant::now();
    // SAFETY: kill(2) with a pid read from a file its owner keeps locked; no memory touched.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        bail!(
            "cannot signal `cluster up` (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let client = Client::for_config(&config)?;
    let total = config.nodes.len() as u64;
    let mut progress = Progress::new("rolling restart", "nodes");
    let deadline = asked + NODE_BACK_MAX * total as u32;
    // Per node, once seen back: the leader's last log index then, which it must reach.
    let mut targets: std::collections::BTreeMap<u64, u64> = Default::default();
    loop {
        let mut done = 0;
        let mut statuses = Vec::new();
        for n in &config.nodes {
            statuses.push(client.get(&n.addr, "/v1/cluster/status").await.ok());
        }
        let leader = statuses
            .iter()
            .flatten()
            .find(|s| s["role"] == "leader")
            .cloned();
        for (n, s) in config.nodes.iter().zip(&statuses) {
            let Some(s) = s else { continue };
            let restarted = s["uptime_ms"]
                .as_u64()
                .is_some_and(|up| Duration::from_millis(up) < asked.elapsed());
            if restarted && caught_up(leader.as_ref(), s, &mut targets, n.id) {
                done += 1;
            }
        }
        progress.set(done, total);
        if done == total {
            progress.finish("every node restarted and caught up");
            return Ok(());
        }
        if Instant::now() > deadline {
            progress.abandon();
            bail!("the rolling restart did not finish in time: see the output of `cluster up`");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether node `id` (its status `node`) holds the leader's log as it was when first asked
/// (`targets` keeps that index): under writes the leader's last index keeps moving, so "all
/// of it right now" may never be seen. The leader itself always holds its log.
fn caught_up(
    leader: Option<&Value>,
    node: &Value,
    targets: &mut std::collections::BTreeMap<u64, u64>,
    id: u64,
) -> bool {
    let Some(leader) = leader else { return false };
    if leader["id"] == node["id"] {
        return true;
    }
    let Some(last) = leader["last_log_index"].as_u64() else {
        return false;
    };
    let target = *targets.entry(id).or_insert(last);
    leader["replication"][id.to_string()]
        .as_u64()
        .is_some_and(|matched| matched >= target)
}

/// Restart `children` (id, process) one at a time, the leader last; `spawn` starts a node.
pub async fn rolling_restart<S>(
    config: &Config,
    children: &mut [(u64, tokio::process::Child)],
    spawn: S,
) -> Result<()>
where
    S: Fn(u64) -> Result<tokio::process::Child>,
{
    let client = Client::for_config(config)?;
    let mut left: Vec<usize> = (0..children.len()).collect();
    while !left.is_empty() {
        // Asked again each time: the leader may have moved. A follower next, the leader last.
        let leader = super::cluster::leader_or_any(config)
            .await
            .ok()
            .map(|(id, _)| id);
        let pick = left
            .iter()
            .position(|i| Some(children[*i].0) != leader)
            .unwrap_or(0);
        let i = left.remove(pick);
        let id = children[i].0;
        if let Ok(Some(status)) = children[i].1.try_wait() {
            println!("rolling restart: node {id} is not running ({status}); skipped");
            continue;
        }
        let addr = config.node(id)?.addr.clone();
        let role = if Some(id) == leader {
            "leader"
        } else {
            "follower"
        };
        println!("rolling restart: stopping node {id} ({role})");
        let started = Instant::now();
        super::cluster::stop_child(id, &mut children[i].1).await;
        children[i].1 = spawn(id)?;
        let deadline = started + NODE_BACK_MAX;
        let mut targets = Default::default();
        loop {
            let ready = client.get(&addr, "/ready").await.is_ok();
            let leader_view = super::cluster::leader_status(config).await.ok();
            let me = client.get(&addr, "/v1/cluster/status").await.ok();
            if ready && me.is_some_and(|me| caught_up(leader_view.as_ref(), &me, &mut targets, id))
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {id} did not come back and catch up within {NODE_BACK_MAX:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "rolling restart: node {id} back and caught up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    println!("rolling restart: done");
    Ok(())
}
