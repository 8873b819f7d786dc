//! One simulation run: a safety phase under faults drawn from the seed, then a liveness phase
//! without faults, then the checkers (`crate::check`) on what was recorded.
//!
//! Liveness phase: the nemesis has undone its last fault and switched message faults off;
//! within [`RunSpec::liveness_within`] of simulated time each of these must happen, or the run
//! fails with a `LIVENESS` violation: a leader agreed on by a majority; a new append (the
//! probe) acknowledged; the probe readable on every node; every node converged on the same
//! log (after the load stopped).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::check::uniq::{normalize, EMAIL_SET};
use crate::cluster::{now_ms, sim_auth, sleep, SimCluster, SimSettings, SIM_LIMITS, SIM_RAFT};
use crate::consumers::{ConsumerFigures, SimConsumers, SIM_CONSUMERS};
use crate::history::{check_all, Attempt, FinalState, History, Kind, Outcome, Report};
use crate::nemesis::{self, FaultLog, NemesisSpec};
use crate::workload::{Load, LoadSpec, ALL_TOPICS, EMAILS, PLAIN_TOPIC, USERS_CONFIG, USERS_TOPIC};

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub nodes: usize,
    pub nemesis: NemesisSpec,
    pub load: LoadSpec,
    /// Liveness: with every fault gone, each step must succeed within this much simulated
    /// time.
    pub liveness_within: Duration,
    /// Fault-free load after the leader is back, before the load stops.
    pub calm: Duration,
    /// Run the consumers (query, mail) and the provider, with their own nemesis
    /// (`crate::consumers`).
    pub consumers: bool,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            nodes: 3,
            nemesis: NemesisSpec::default(),
            load: LoadSpec {
                clients: 3,
                users_clients: 2,
                appends_per_client: usize::MAX,
                keyed_share: 0.5,
                retries_max: 3,
                status_poll: Some(Duration::from_millis(300)),
                readers: 2,
                ..LoadSpec::default()
            },
            liveness_within: Duration::from_secs(30),
            calm: Duration::from_secs(2),
            consumers: true,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub seed: u64,
    pub sim_ms: u64,
    pub faults: FaultLog,
    /// Message faults done, by "kind.fault".
    pub messages: BTreeMap<String, u64>,
    /// The simulated disks' figures, summed over the nodes (`SimCluster::disk_stats`).
    pub disk: BTreeMap<String, u64>,
    pub report: Report,
    pub violations: Vec<String>,
    /// Simulated time from the end of the faults to a converged cluster.
    pub liveness_ms: u64,
    /// A hash of everything observable: the clients' requests and answers in order, the
    /// status samples, the fault episodes, the final topics and owners.
    pub trace_hash: u64,
    /// The consumers' figures, when the run had consumers.
    pub consumers: Option<ConsumerFigures>,
}

impl RunResult {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The checkers that found violations (`Kind::checker`), in report order.
    pub fn caught_by(&self) -> Vec<&'static str> {
        Kind::ALL
            .into_iter()
            .filter(|&k| self.report.count(k) > 0)
            .map(Kind::checker)
            .collect()
    }

    /// The run's figures in report order: what the clients did, then the counts that must
    /// be 0.
    pub fn figures(&self) -> Vec<(&'static str, u64)> {
        let r = &self.report;
        let mut out = vec![
            ("appends", r.attempted as u64),
            ("acked", r.acknowledged as u64),
            ("conflict", r.conflicts as u64),
            ("failed", r.failed as u64),
            ("unknown", r.unknown as u64),
            ("retries", r.retries as u64),
            ("user_ops", r.user_ops as u64),
            ("user_done", r.user_done as u64),
            ("email_taken_or_409", r.user_conflicts as u64),
            ("user_failed", r.user_failed as u64),
            ("user_unknown", r.user_unknown as u64),
            ("reads", r.reads as u64),
            ("events_read", r.events_read as u64),
        ];
        if let Some(c) = &self.consumers {
            out.extend([
                ("mail_sent", c.sent),
                ("mail_resent", c.resent),
                ("mail_parked", c.parked),
                ("mail_timeouts", c.timeouts),
                ("max_lag", c.max_lag),
                ("consumer_kills", c.kills),
                ("provider_episodes", c.provider_episodes),
            ]);
        }
        for k in Kind::ALL {
            out.push((k.name(), r.count(k) as u64));
        }
        out
    }
}

/// The config of a simulated cluster with the users flow.
pub fn sim_config() -> String {
    format!(
        "{SIM_RAFT}\n{SIM_LIMITS}\n{USERS_CONFIG}\n{SIM_CONSUMERS}\n{}",
        sim_auth()
    )
}

/// Run one simulation in the current madsim runtime.
/// The code's fault points (`api::runtime::buggify`, `raft_store::runtime::buggify_delay`), on
/// or off for this thread's simulation.
fn fault_points(on: bool) {
    api::runtime::fault_points(on);
    raft_store::runtime::fault_points(on);
}

pub async fn simulate(spec: RunSpec) -> RunResult {
    let seed = madsim::runtime::Handle::current().seed();
    let started = now_ms();
    let mut cluster = SimCluster::with_settings(SimSettings {
        nodes: spec.nodes,
        extra_config: sim_config(),
    });
    // The nodes bootstrap the cluster themselves; in half the runs an operator's `cluster
    // init` races them, as `uniqlog cluster up` does.
    let mut liveness: Vec<String> = Vec::new();
    if madsim::rand::Rng::gen_bool(&mut madsim::rand::thread_rng(), 0.5) {
        cluster.cluster_init().await;
    }
    if let Err(e) = cluster.try_wait_bootstrapped(spec.liveness_within).await {
        liveness.push(format!("no first leader: {e}"));
    }

    // Safety phase: load under faults. In half the runs the code's fault points
    // (`api::runtime::buggify`) fire too, until the faults stop.
    let buggify = {
        use madsim::rand::Rng;
        madsim::rand::thread_rng().gen_bool(0.5)
    };
    fault_points(buggify);
    let mut consumers = spec.consumers.then(|| SimConsumers::start(&cluster));
    let load = Load::start_following(&cluster, &spec.load);
    let mut faults = match &mut consumers {
        None => nemesis::run(&mut cluster, &spec.nemesis).await,
        Some(c) => {
            let mut consumer_faults = FaultLog::default();
            let (mut faults, ()) = futures::join!(
                nemesis::run(&mut cluster, &spec.nemesis),
                c.nemesis(spec.nemesis.duration, &mut consumer_faults)
            );
            faults.counts.extend(consumer_faults.counts);
            faults.lines.extend(consumer_faults.lines);
            faults.broken.extend(consumer_faults.broken);
            faults
        }
    };

    if buggify {
        faults.counts.insert("fault_points", 1);
    }

    // Liveness phase: every fault is gone.
    fault_points(false);
    let calm_start = now_ms();
    if let Err(e) = cluster.try_wait_for_leader(spec.liveness_within).await {
        liveness.push(format!("no leader after the faults: {e}"));
    }
    crate::membership::settle(&mut cluster).await;
    let probe = probe(&cluster, spec.liveness_within, &mut liveness).await;
    sleep(spec.calm).await;
    let mut history = load.stop_all().await;
    history.appends.extend(probe);

    let mut state = match cluster
        .try_wait_converged(&ALL_TOPICS, spec.liveness_within)
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            liveness.push(e);
            None
        }
    };
    let liveness_ms = now_ms() - calm_start;
    let mut membership: Vec<String> = Vec::new();
    if let Some(state) = &mut state {
        let keys: Vec<String> = EMAILS.iter().map(|e| normalize(e)).collect();
        match cluster.read_uniq(EMAIL_SET, &keys).await {
            Ok(uniq) => state.uniq = uniq,
            Err(e) => liveness.push(format!("reading the uniq owners failed: {e}")),
        }
        membership_agreed(&cluster, &mut membership).await;
        if let Some(c) = &mut consumers {
            let head = state
                .topics
                .values()
                .next()
                .and_then(|t| t.get(USERS_TOPIC))
                .map_or(0, |u| u.len() as u64);
            state.consumers = Some(c.finish(&cluster, head, spec.liveness_within).await);
        }
    }
    let consumer_figures = consumers
        .as_ref()
        .map(|c| c.figures(state.as_ref().and_then(|s| s.consumers.as_ref())));

    let mut report = Report::default();
    let mut violations = Vec::new();
    if let Some(state) = &state {
        let verdict = check_all(&history, state);
        report = verdict.report;
        violations.extend(verdict.violations);
    } else {
        // Still judge what can be judged without the final state.
        let verdict = check_all(
            &History {
                status: history.status.clone(),
                ..History::default()
            },
            &FinalState {
                topics: [(0, BTreeMap::new())].into(),
                ..FinalState::default()
            },
        );
        report.violations = verdict.report.violations;
        violations.extend(verdict.violations);
    }
    for m in &membership {
        *report.violations.entry(Kind::Divergent).or_default() += 1;
        violations.push(format!("DIVERGENT: {m}"));
    }
    for l in &liveness {
        *report.violations.entry(Kind::Liveness).or_default() += 1;
        violations.push(format!("LIVENESS: {l}"));
    }
    for b in &faults.broken {
        *report.violations.entry(Kind::Durability).or_default() += 1;
        violations.push(format!("DURABILITY: {b}"));
    }
    // The corruption fault replaces the node it damaged; any member still refusing its files
    // found damage that no fault made.
    for id in cluster.ids() {
        if let Some(why) = cluster.damaged(id) {
            *report.violations.entry(Kind::Damage).or_default() += 1;
            violations.push(format!(
                "DAMAGE: node {id} found its own files damaged with no bit flipped in them: {why}"
            ));
        }
    }
    let messages = cluster
        .net_faults()
        .counts()
        .into_iter()
        .map(|((k, f), n)| (format!("{}.{}", k.name(), f.name()), n))
        .collect();
    let trace_hash = trace_hash(&history, state.as_ref(), &faults);
    let disk = cluster.disk_stats();
    RunResult {
        disk,
        seed,
        sim_ms: now_ms() - started,
        faults,
        messages,
        report,
        violations,
        liveness_ms,
        trace_hash,
        consumers: consumer_figures,
    }
}

/// After convergence every member reports the same membership as the leader did when the
/// faults were over (`membership::settle`): each change the churn saw acknowledged is in
/// it, and no retired node is.
async fn membership_agreed(cluster: &SimCluster, out: &mut Vec<String>) {
    let want: Vec<u64> = cluster.ids();
    for (id, status) in cluster.statuses().await {
        match status {
            Ok(s) => {
                let mut have: Vec<u64> = s.members.iter().map(|m| m.id).collect();
                have.sort_unstable();
                if have != want {
                    out.push(format!(
                        "node {id} reports members {have:?}, the cluster's are {want:?} \
                         (retired: {:?})",
                        cluster.retired()
                    ));
                }
            }
            Err(e) => out.push(format!("node {id}: no status after convergence: {e}")),
        }
    }
}

/// The liveness probe: one keyed append, retried until acknowledged, then read back from every
/// node. Returns its attempts (for the history).
async fn probe(cluster: &SimCluster, within: Duration, liveness: &mut Vec<String>) -> Vec<Attempt> {
    let start = now_ms();
    let deadline = start + within.as_millis() as u64;
    let id = "probe".to_string();
    let body = json!({
        "events": [{"type": "Probe", "data": {"id": "probe.0"}}],
        "idempotency_key": "key-probe",
    });
    let ids = cluster.ids();
    let mut attempts = Vec::new();
    let mut acked = false;
    for retry in 0.. {
        let node = ids[retry as usize % ids.len()];
        let sent_ms = now_ms();
        let outcome = cluster.append(node, PLAIN_TOPIC, &body).await;
        let ok = matches!(outcome, Outcome::Ok(_));
        attempts.push(Attempt {
            id: id.clone(),
            client: usize::MAX,
            node,
            topic: PLAIN_TOPIC.into(),
            events: 1,
            stream: None,
            key: Some("key-probe".into()),
            retry,
            outcome,
            sent_ms,
            answered_ms: now_ms(),
        });
        if ok {
            acked = true;
            break;
        }
        if now_ms() >= deadline {
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    if !acked {
        liveness.push(format!(
            "the probe append was not acknowledged within {} s (last answer: {})",
            within.as_secs(),
            attempts
                .last()
                .map_or("none".into(), |a| a.outcome.render())
        ));
        return attempts;
    }
    for &node in &ids {
        loop {
            let read = cluster.read_topic(node, PLAIN_TOPIC).await;
            let seen = read.as_ref().is_ok_and(|events| {
                events
                    .iter()
                    .any(|e| e["data"]["id"].as_str() == Some("probe.0"))
            });
            if seen {
                break;
            }
            if now_ms() >= deadline {
                liveness.push(format!(
                    "node {node} did not serve the acknowledged probe within {} s of the faults' \
                     end",
                    within.as_secs()
                ));
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
    attempts
}

/// FNV-1a, 64 bits: stable across builds and platforms.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn line(&mut self, s: &str) {
        for b in s.bytes().chain(std::iter::once(b'\n')) {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The trace hash of a run (see [`RunResult::trace_hash`]). With `SIM_TRACE_DIR` set, the
/// text hashed is also written to `$SIM_TRACE_DIR/trace-<seed>-<n>.txt` (n counts the runs of
/// the seed in this process), to compare two runs line by line.
pub fn trace_hash(history: &History, state: Option<&FinalState>, faults: &FaultLog) -> u64 {
    let mut h = Fnv::new();
    let mut dump = std::env::var_os("SIM_TRACE_DIR").map(|d| (d, String::new()));
    let mut h_line = |h: &mut Fnv, l: &str| {
        h.line(l);
        if let Some((_, text)) = &mut dump {
            text.push_str(l);
            text.push('\n');
        }
    };
    trace_lines(history, state, faults, &mut |l| h_line(&mut h, l));
    if let Some((dir, text)) = dump {
        use std::sync::atomic::{AtomicU64, Ordering};
        static DUMPS: AtomicU64 = AtomicU64::new(0);
        let seed = madsim::runtime::Handle::current().seed();
        let n = DUMPS.fetch_add(1, Ordering::Relaxed);
        let path = std::path::Path::new(&dir).join(format!("trace-{seed}-{n}.txt"));
        let _ = std::fs::write(path, text);
    }
    h.0
}

fn trace_lines(
    history: &History,
    state: Option<&FinalState>,
    faults: &FaultLog,
    out: &mut dyn FnMut(&str),
) {
    let mut line = String::new();
    for a in &history.appends {
        line.clear();
        let _ = write!(
            line,
            "A {} c{} n{} r{} {}..{} {}",
            a.id,
            a.client,
            a.node,
            a.retry,
            a.sent_ms,
            a.answered_ms,
            a.outcome.render()
        );
        out(&line);
    }
    for u in &history.users {
        line.clear();
        let _ = write!(
            line,
            "U c{} n{} r{} {}..{} {} -> {}",
            u.client,
            u.node,
            u.retry,
            u.sent_ms,
            u.answered_ms,
            u.op.render(),
            u.outcome.render()
        );
        out(&line);
    }
    for s in &history.status {
        out(&format!("{s:?}"));
    }
    for r in &history.reads {
        line.clear();
        let _ = write!(
            line,
            "R n{} {} {} {} {}..{} {}",
            r.node,
            r.topic,
            r.from,
            r.linearizable,
            r.sent_ms,
            r.answered_ms,
            r.events.len()
        );
        out(&line);
    }
    for l in &faults.lines {
        out(l);
    }
    if let Some(state) = state {
        out(&format!("applied {}", state.applied_index));
        if let Some(topics) = state.topics.values().next() {
            for (topic, events) in topics {
                for e in events {
                    out(&format!("{topic} {e}"));
                }
            }
        }
        for (node, keys) in &state.uniq {
            out(&format!("uniq {node} {keys:?}"));
        }
        if let Some(c) = &state.consumers {
            out(&format!(
                "consumers query_applied={} query_next={} mail_checkpoint={:?} breaker={} duplicates={} \
                 timeouts={} mail_kills={} parked={:?}",
                c.query_applied,
                c.query_next,
                c.mail_checkpoint,
                c.breaker,
                c.duplicates,
                c.timeouts,
                c.mail_kills,
                c.parked
            ));
            for d in &c.docs {
                out(&format!("doc {d}"));
            }
            for (key, to) in &c.messages {
                out(&format!("mail {key} {to}"));
            }
        }
    }
}
