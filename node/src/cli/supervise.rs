//! `uniqlog cluster up`: this machine's nodes (and, with `--with-consumers`, the query and mail
//! processes and the local mail sink) as supervised child processes.
//!
//! A child that exits is reported at once and started again after a backoff (1 s, doubling up
//! to 30 s, back to 1 s once it has run a minute), except a node that exits with 3: it was
//! removed from the cluster, and starting it again would only repeat that. Ctrl-C, SIGTERM
//! and SIGHUP stop every child. `cluster restart` asks for a rolling restart of the nodes or a
//! restart of one (see `rolling.rs`); a node that is down is started again, never waited on
//! past its deadline.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::Command;
use tokio::time::Instant;
use uniqlog_node::Config;

use super::client::Client;
use super::rolling::UpLock;
use super::run::EXIT_REMOVED;

/// The first wait before starting a crashed child again, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long is healthy again: its next crash waits `BACKOFF_MIN`.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How often exits are looked for.
const TEND_EVERY: Duration = Duration::from_millis(200);

/// One supervised process.
pub(super) struct Child {
    /// `node 2`, `query`, `mail`, `mail-sink`.
    pub name: String,
    /// The node's id, for nodes.
    pub node: Option<u64>,
    args: Vec<OsString>,
    pub process: Option<tokio::process::Child>,
    started: Instant,
    /// Crashes in a row, for the backoff.
    crashes: u32,
    /// When a crashed child is started again.
    restart_at: Option<Instant>,
    /// Removed from the cluster: never started again.
    retired: bool,
}

pub(super) struct Supervisor {
    exe: std::path::PathBuf,
    pub children: Vec<Child>,
}

impl Supervisor {
    fn new() -> Result<Self> {
        Ok(Supervisor {
            exe: std::env::current_exe()?,
            children: Vec::new(),
        })
    }

    /// Add a child and start it.
    fn add(&mut self, name: String, node: Option<u64>, args: Vec<OsString>) -> Result<()> {
        self.children.push(Child {
            name,
            node,
            args,
            process: None,
            started: Instant::now(),
            crashes: 0,
            restart_at: None,
            retired: false,
        });
        let i = self.children.len() - 1;
        self.start(i)
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let c = &mut self.children[i];
        let process = Command::new(&self.exe)
            .args(&c.args)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", c.name))?;
        c.process = Some(process);
        c.started = Instant::now();
        c.restart_at = None;
        Ok(())
    }

    pub fn index_of_node(&self, id: u64) -> Option<usize> {
        self.children.iter().position(|c| c.node == Some(id))
    }

    /// Whether child `i` runs now.
    pub fn running(&mut self, i: usize) -> bool {
        let c = &mut self.children[i];
        c.process
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Look at every child once: report an exit at once, start a crashed child again when
    /// its backoff is over.
    pub fn tend(&mut self) {
        for i in 0..self.children.len() {
            let c = &mut self.children[i];
            if let Some(p) = c.process.as_mut() {
                let Ok(Some(status)) = p.try_wait() else {
                    continue;
                };
                c.process = None;
                if c.node.is_some() && status.code() == Some(i32::from(EXIT_REMOVED)) {
                    c.retired = true;
                    println!(
                        "{} exited: it was removed from the cluster; not starting it again",
                        c.name
                    );
                    continue;
                }
                if c.started.elapsed() >= HEALTHY_AFTER {
                    c.crashes = 0;
                }
                let wait = BACKOFF_MIN
                    .saturating_mul(1 << c.crashes.min(5))
                    .min(BACKOFF_MAX);
                c.crashes += 1;
                c.restart_at = Some(Instant::now() + wait);
                println!(
                    "{} exited ({status}); starting it again in {} s",
                    c.name,
                    wait.as_secs()
                );
            } else if !c.retired && c.restart_at.is_some_and(|at| Instant::now() >= at) {
                let name = c.name.clone();
                match self.start(i) {
                    Ok(()) => println!("{name} started again"),
                    Err(e) => {
                        eprintln!("{e:#}");
                        self.children[i].restart_at = Some(Instant::now() + BACKOFF_MAX);
                    }
                }
            }
        }
    }

    /// Stop child `i` (SIGTERM, then SIGKILL after 5 s) and forget any pending restart.
    pub async fn stop(&mut self, i: usize) {
        let c = &mut self.children[i];
        c.restart_at = None;
        if let Some(mut p) = c.process.take() {
            stop_process(&c.name, &mut p).await;
        }
    }

    async fn stop_all(&mut self) {
        // Consumers first: they would only complain about the nodes going away.
        for i in (0..self.children.len()).rev() {
            self.stop(i).await;
        }
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within 5 s.
pub(super) async fn stop_process(name: &str, child: &mut tokio::process::Child) {
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
    eprintln!("{name} did not stop in time; killing it");
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn node_args(config: &Path, id: u64) -> Vec<OsString> {
    vec![
        "node".into(),
        "--config".into(),
        config.into(),
        "--id".into(),
        id.to_string().into(),
    ]
}

/// `cluster up [--with-consumers]`.
pub async fn up(config_path: &Path, with_consumers: bool) -> Result<()> {
    let config = Config::load(config_path)?;
    // Before any node starts: a bad CA file stops here.
    let client = Client::for_config(&config)?;
    // Handlers first: a signal that arrives once the pid file is out, or while the nodes
    // start (they may form the cluster before this process gets to `init`), must not kill
    // this process with the default action and leave its children running. SIGUSR1 carries
    // a request of `cluster restart`; SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal
    // went away) stop everything.
    use tokio::signal::unix::{signal, SignalKind};
    let mut requests = signal(SignalKind::user_defined1())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let lock = UpLock::take(config_path)?;
    let mut sup = Supervisor::new()?;
    let mut stopped = false;
    let startup = async {
        for n in &config.nodes {
            sup.add(
                format!("node {}", n.id),
                Some(n.id),
                node_args(config_path, n.id),
            )?;
        }
        for n in &config.nodes {
            let i = sup.index_of_node(n.id).expect("added");
            wait_healthy(&client, &n.addr, &mut sup, i).await?;
        }
        super::cluster::init(&config, None).await?;
        if with_consumers {
            start_consumers(&config, config_path, &mut sup).await?;
        }
        print_addresses(&config, config_path, with_consumers);
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = startup => r,
        _ = term.recv() => { stopped = true; Ok(()) }
        _ = interrupt.recv() => { stopped = true; Ok(()) }
        _ = hangup.recv() => { stopped = true; Ok(()) }
    };
    if result.is_ok() && !stopped {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = interrupt.recv() => break,
                _ = hangup.recv() => break,
                _ = tokio::time::sleep(TEND_EVERY) => sup.tend(),
                _ = requests.recv() => {
                    let request = lock.take_request();
                    // Ctrl-C during a restart still stops everything.
                    tokio::select! {
                        r = super::rolling::carry_out(&config, &mut sup, request, &lock) => {
                            if let Err(e) = r {
                                eprintln!("restart stopped: {e:#}");
                            }
                        }
                        _ = term.recv() => break,
                        _ = interrupt.recv() => break,
                        _ = hangup.recv() => break,
                    }
                }
            }
        }
    }
    sup.stop_all().await;
    result
}

/// The mail sink (when the config's webhook is the local sink), the read model and the mail
/// consumer, each waited for until it serves.
async fn start_consumers(config: &Config, config_path: &Path, sup: &mut Supervisor) -> Result<()> {
    let with_config =
        |cmd: &str| -> Vec<OsString> { vec![cmd.into(), "--config".into(), config_path.into()] };
    if sink_is_local(config) {
        let listen = config.mail_sink.listen.clone();
        sup.add(
            "mail-sink".into(),
            None,
            vec!["mail-sink".into(), "--listen".into(), listen.clone().into()],
        )?;
        wait_listening(&listen, sup, "mail-sink").await?;
    }
    sup.add("query".into(), None, with_config("query"))?;
    wait_listening(&config.query.listen, sup, "query").await?;
    sup.add("mail".into(), None, with_config("mail"))?;
    wait_listening(&config.mail.listen, sup, "mail").await
}

/// Whether the mail consumer's webhook is `[mail_sink] listen` of this config.
fn sink_is_local(config: &Config) -> bool {
    config.mail.provider == "webhook"
        && config
            .mail
            .webhook_target()
            .is_ok_and(|t| !t.https && t.addr == config.mail_sink.listen)
}

fn print_addresses(config: &Config, config_path: &Path, with_consumers: bool) {
    for n in &config.nodes {
        println!(
            "node {} listening on http://{} (data in {})",
            n.id,
            n.addr,
            n.data_dir.display()
        );
    }
    if let Some(first) = config.nodes.first() {
        println!("dashboard     http://{}/ui", first.addr);
    }
    if with_consumers {
        println!("query API     http://{}", config.query.listen);
        println!("mail health   http://{}/health", config.mail.listen);
        if sink_is_local(config) {
            println!(
                "mail sink     http://{}/messages   (activation emails land here)",
                config.mail_sink.listen
            );
        } else {
            println!("emails go to  {}", config.mail.webhook_url);
        }
    }
    println!(
        "Children that exit are started again. Ctrl-C stops everything; `uniqlog cluster \
         restart --rolling --config {c}` restarts the nodes one at a time, `--node N` one node.",
        c = config_path.display()
    );
}

/// Wait until the node at `addr` answers `/health`, while its child runs.
async fn wait_healthy(client: &Client, addr: &str, sup: &mut Supervisor, i: usize) -> Result<()> {
    for _ in 0..300 {
        if client
            .api()
            .health(addr, client.timeout)
            .await
            .is_ok_and(|h| h.status == "ok")
        {
            return Ok(());
        }
        if !sup.running(i) {
            anyhow::bail!(
                "{} exited during start-up (its output is above)",
                sup.children[i].name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "{} at {addr} did not become healthy within 30 s",
        sup.children[i].name
    )
}

/// Wait until something accepts connections at `listen`, while the last child runs.
async fn wait_listening(listen: &str, sup: &mut Supervisor, name: &str) -> Result<()> {
    let i = sup.children.len() - 1;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        if !sup.running(i) {
            anyhow::bail!("{name} exited during start-up (its output is above)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{name} did not listen on {listen} within 30 s")
}
