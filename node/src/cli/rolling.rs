//! Restarts of the nodes `uniqlog cluster up` runs on one machine: all of them, one at a time
//! (a rolling restart), or one.
//!
//! `cluster up` owns its nodes as child processes, so it does the restarting: asked, it
//! restarts them one at a time, followers first and the leader last (one election in all),
//! each stopped with SIGTERM, started again on the same data dir, and waited for until it is
//! ready and the leader knows it holds the log, before the next one goes. A majority is up
//! throughout, so writes only pause for the election. A node that is down is started, not
//! stopped; one that does not come back within its deadline is reported and the others go on.
//!
//! `cluster restart` finds the `cluster up` of a config through its pid file (held under an
//! exclusive lock while it runs, so a stale file is never trusted), leaves its request beside
//! it, sends it SIGUSR1, and follows the state `cluster up` writes back.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use uniqlog_node::Config;

use super::client::Client;
use super::progress::Progress;
use super::supervise::Supervisor;
use api::wire::ClusterStatus;

/// How long one node may take to come back and catch up.
const NODE_BACK_MAX: Duration = Duration::from_secs(120);

/// `cluster.toml` → `cluster.toml.up.<what>`, beside it.
fn up_path(config: &Path, what: &str) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".up.{what}"));
    config.with_file_name(name)
}

fn pid_path(config: &Path) -> PathBuf {
    up_path(config, "pid")
}

/// What `cluster restart` asks of `cluster up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the asker, echoed in the state.
    pub id: u64,
    /// One node, or (none) every node in turn.
    pub node: Option<u64>,
}

/// How a request is going, as `cluster up` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    id: u64,
    /// `running`, `done` or `failed`.
    state: String,
    done: u64,
    total: u64,
    message: String,
}

/// Write `value` as JSON to `path` atomically (a reader sees the old file or the new one).
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock(2) on a descriptor this function's caller owns; no memory is touched.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The pid file of a running `cluster up`, locked for as long as it is held, with the
/// request and state files beside it.
pub struct UpLock {
    _file: File,
    path: PathBuf,
    request: PathBuf,
    state: PathBuf,
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
        let (request, state) = (up_path(config, "request"), up_path(config, "state"));
        let _ = std::fs::remove_file(&request);
        let _ = std::fs::remove_file(&state);
        Ok(UpLock {
            _file: file,
            path,
            request,
            state,
        })
    }

    /// The request `cluster restart` left (taken away); a bare SIGUSR1 asks for a rolling
    /// restart.
    pub fn take_request(&self) -> Request {
        let request = std::fs::read(&self.request)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Request { id: 0, node: None });
        let _ = std::fs::remove_file(&self.request);
        request
    }

    fn report(&self, request: &Request, state: &str, (done, total): (u64, u64), message: String) {
        let s = State {
            id: request.id,
            state: state.into(),
            done,
            total,
            message,
        };
        if let Err(e) = write_json(&self.state, &s) {
            eprintln!("cannot write {}: {e:#}", self.state.display());
        }
    }
}

impl Drop for UpLock {
    fn drop(&mut self) {
        for p in [&self.path, &self.request, &self.state] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `cluster restart --rolling | --node N`: ask the `cluster up` of `config_path` to restart
/// its nodes (or one), and follow until it says it is done.
pub async fn restart(config_path: &Path, node: Option<u64>) -> Result<()> {
    let config = Config::load(config_path)?;
    if let Some(id) = node {
        config.node(id)?;
    }
    let path = pid_path(config_path);
    let file = File::open(&path).map_err(|_| {
        anyhow!(
            "no `uniqlog cluster up` runs for {} (no {}); a restart of nodes run another way \
             is done by their supervisor, one node at a time",
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
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    write_json(&up_path(config_path, "request"), &Request { id, node })?;
    // SAFETY: kill(2) with a pid read from a file its owner keeps locked; no memory touched.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        bail!(
            "cannot signal `cluster up` (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let total = node.map_or(config.nodes.len(), |_| 1) as u64;
    let what = match node {
        Some(id) => format!("restart of node {id}"),
        None => "rolling restart".to_string(),
    };
    let mut progress = Progress::new(what.clone(), "nodes");
    // `cluster up` gives each node its deadline and goes on past it: this only guards
    // against a `cluster up` that went away.
    let deadline = Instant::now() + NODE_BACK_MAX * (total as u32 + 1);
    let state_path = up_path(config_path, "state");
    loop {
        let state: Option<State> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &State| s.id == id);
        if let Some(s) = state {
            progress.set(s.done, s.total.max(1));
            match s.state.as_str() {
                "done" => {
                    progress.finish(&s.message);
                    return Ok(());
                }
                "failed" => {
                    progress.abandon();
                    bail!("the {what} did not finish: {}", s.message);
                }
                _ => {}
            }
        }
        if Instant::now() > deadline || File::open(&path).is_err() {
            progress.abandon();
            bail!("no answer from `cluster up` about the {what}: see its output");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether node `id` (its status `node`) holds the leader's log as it was when first asked
/// (`targets` keeps that index): under writes the leader's last index keeps moving, so "all
/// of it right now" may never be seen. The leader itself always holds its log.
fn caught_up(
    leader: Option<&ClusterStatus>,
    node: &ClusterStatus,
    targets: &mut std::collections::BTreeMap<u64, u64>,
    id: u64,
) -> bool {
    let Some(leader) = leader else { return false };
    if leader.id == node.id {
        return true;
    }
    let target = *targets.entry(id).or_insert(leader.last_log_index);
    leader
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .is_some_and(|matched| matched >= target)
}

/// Carry out `request` on the nodes of `sup`: one at a time, a follower next and the leader
/// last, each back and caught up (or past its deadline, reported) before the next. Reports
/// its state for `cluster restart` through `lock`.
pub async fn carry_out(
    config: &Config,
    sup: &mut Supervisor,
    request: Request,
    lock: &UpLock,
) -> Result<()> {
    let mut left: Vec<u64> = match request.node {
        Some(id) if sup.index_of_node(id).is_some() => vec![id],
        Some(id) => {
            let message = format!("node {id} is not one that this `cluster up` runs");
            lock.report(&request, "failed", (0, 1), message.clone());
            bail!(message);
        }
        None => sup.children.iter().filter_map(|c| c.node).collect(),
    };
    let total = left.len() as u64;
    let mut late = Vec::new();
    lock.report(&request, "running", (0, total), "started".into());
    let client = Client::for_config(config)?;
    let mut done = 0;
    while !left.is_empty() {
        // Asked again each time: the leader may have moved. A follower next, the leader last.
        let leader = super::cluster::leader_or_any(config)
            .await
            .ok()
            .map(|(id, _)| id);
        let pick = left.iter().position(|id| Some(*id) != leader).unwrap_or(0);
        let id = left.remove(pick);
        let i = sup.index_of_node(id).expect("a node of this cluster up");
        let role = if Some(id) == leader {
            "leader"
        } else {
            "follower"
        };
        let started = Instant::now();
        if sup.running(i) {
            println!("rolling restart: stopping node {id} ({role})");
            sup.stop(i).await;
        } else {
            println!("rolling restart: node {id} is down; starting it");
        }
        sup.start(i)?;
        if wait_back(config, &client, sup, id, started + NODE_BACK_MAX).await {
            println!(
                "rolling restart: node {id} back and caught up in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "rolling restart: node {id} did not come back and catch up within {} s; going on",
                NODE_BACK_MAX.as_secs()
            );
            late.push(id);
        }
        done += 1;
        lock.report(
            &request,
            "running",
            (done, total),
            format!("node {id} done"),
        );
    }
    if late.is_empty() {
        println!("rolling restart: done");
        let message = match request.node {
            Some(id) => format!("node {id} restarted and caught up"),
            None => "every node restarted and caught up".into(),
        };
        lock.report(&request, "done", (done, total), message);
        Ok(())
    } else {
        let message =
            format!("node(s) {late:?} did not come back in time; `cluster up` keeps starting them");
        lock.report(&request, "failed", (done, total), message.clone());
        bail!(message)
    }
}

/// Wait until node `id` is ready and holds the leader's log, tending the other children
/// meanwhile; false at `deadline`.
async fn wait_back(
    config: &Config,
    client: &Client,
    sup: &mut Supervisor,
    id: u64,
    deadline: Instant,
) -> bool {
    let addr = match config.node(id) {
        Ok(n) => n.addr.clone(),
        Err(_) => return false,
    };
    let mut targets = Default::default();
    loop {
        sup.tend();
        let ready = client.api().ready(&addr, client.timeout).await.is_ok();
        let leader_view = super::cluster::leader_status(config).await.ok();
        let me = client.status(&addr).await.ok();
        if ready && me.is_some_and(|me| caught_up(leader_view.as_ref(), &me, &mut targets, id)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
