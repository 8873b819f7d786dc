//! The fault schedule of a run, chosen by the seed: crashes, pauses and partitions one after
//! another, with message faults (`net_faults`) in the background.
//!
//! Episodes run one at a time on the supervisor task (not on a simulated node): each one makes
//! its fault, lets the load run under it for a while, and undoes it, so a node is never left
//! down, paused or cut off when the next episode starts. Between episodes the cluster gets a
//! short, random breather (sometimes none).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use madsim::rand::seq::SliceRandom;
use madsim::rand::Rng;

use crate::cluster::{now_ms, sleep, SimCluster};
use crate::history::{NodeId, Outcome};
use crate::net_faults::{MsgKind, Rates};

/// The kinds of episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Power cut on one node (the leader half of the time), restart on its crashed disk.
    Crash,
    /// Power cut on every node at once.
    PowerCut,
    /// One node (often the leader) stops running for longer than the leader lease plus an
    /// election timeout: long enough for the others to elect a new leader.
    Pause,
    /// A random minority is cut off from the rest.
    Minority,
    /// The leader alone on one side.
    IsolatedLeader,
    /// No side has a majority: nothing may commit.
    NoQuorum,
    /// One direction of the links between the leader and the others (or one follower) is cut.
    Asymmetric,
    /// A node is cut off and reconnected over and over.
    Flapping,
    /// Power cut on one node (the leader half of the time) in the middle of a write: part of
    /// its last write since the last sync landed, the rest of the unsynced writes is lost.
    TornWrite,
    /// One node's next fsyncs fail: it must stop without acknowledging what it could not make
    /// durable; then it is power-cut and restarted on what its disk holds.
    FsyncError,
    /// One node's disk fills up (the leader half of the time): a few bytes to a few hundred
    /// KiB are left. Below `disk_free_min_bytes` it must refuse client writes before
    /// proposing them; a write of its log, state or snapshot that meets the limit fails as
    /// `ENOSPC` and stops it. Then space is freed, and a stopped node is restarted.
    DiskFull,
    /// A new node joins as a learner, catches up, is promoted; a voter (the leader half the
    /// time) is removed and retired (`crate::membership`).
    Membership,
    /// One voter is power-cut and bits of one of its files (log, state or snapshot) are
    /// flipped. It must refuse to start when the damage touches data, and is then repaired
    /// as the README says: removed, retired, replaced by a node under a new id.
    Corruption,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Crash,
        FaultKind::PowerCut,
        FaultKind::Pause,
        FaultKind::Minority,
        FaultKind::IsolatedLeader,
        FaultKind::NoQuorum,
        FaultKind::Asymmetric,
        FaultKind::Flapping,
        FaultKind::TornWrite,
        FaultKind::FsyncError,
        FaultKind::DiskFull,
        FaultKind::Membership,
        FaultKind::Corruption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::PowerCut => "power_cut",
            FaultKind::Pause => "pause",
            FaultKind::Minority => "minority",
            FaultKind::IsolatedLeader => "isolated_leader",
            FaultKind::NoQuorum => "no_quorum",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::Flapping => "flapping",
            FaultKind::TornWrite => "torn_write",
            FaultKind::FsyncError => "fsync_error",
            FaultKind::DiskFull => "disk_full",
            FaultKind::Membership => "membership",
            FaultKind::Corruption => "corruption",
        }
    }

    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Relative odds of each kind.
    fn weight(self) -> u32 {
        match self {
            FaultKind::Crash => 4,
            FaultKind::PowerCut => 1,
            FaultKind::Pause => 3,
            FaultKind::Minority => 3,
            FaultKind::IsolatedLeader => 3,
            FaultKind::NoQuorum => 1,
            FaultKind::Asymmetric => 3,
            FaultKind::Flapping => 2,
            FaultKind::TornWrite => 2,
            FaultKind::FsyncError => 2,
            FaultKind::DiskFull => 2,
            FaultKind::Membership => 2,
            FaultKind::Corruption => 2,
        }
    }
}

/// How the safety phase's faults are drawn.
#[derive(Debug, Clone)]
pub struct NemesisSpec {
    /// Episodes start until this much simulated time has passed.
    pub duration: Duration,
    /// The kinds that may be drawn.
    pub kinds: Vec<FaultKind>,
    /// Whether message faults run in the background (their odds are drawn from the seed).
    pub message_faults: bool,
    /// The largest election timeout of the cluster's config: pauses last longer than twice
    /// this (openraft's leader lease, which equals it by default, plus an election timeout).
    pub election_timeout_max: Duration,
}

impl Default for NemesisSpec {
    fn default() -> Self {
        NemesisSpec {
            duration: Duration::from_secs(30),
            kinds: FaultKind::ALL.to_vec(),
            message_faults: true,
            election_timeout_max: Duration::from_millis(1000),
        }
    }
}

/// What the nemesis did: counts by kind and a line per episode.
#[derive(Debug, Clone, Default)]
pub struct FaultLog {
    pub counts: BTreeMap<&'static str, u64>,
    pub lines: Vec<String>,
    /// Message fault odds in force during the safety phase, per kind of message.
    pub rates: BTreeMap<&'static str, String>,
    /// Promises the nemesis saw broken as it injected a fault (a node that kept serving
    /// after an fsync failed): violations of kind `durability`.
    pub broken: Vec<String>,
}

impl FaultLog {
    fn note(&mut self, kind: FaultKind, what: String) {
        *self.counts.entry(kind.name()).or_default() += 1;
        let line = format!("{:>7} ms {}: {what}", now_ms(), kind.name());
        tracing::info!("nemesis {line}");
        self.lines.push(line);
    }
}

impl fmt::Display for FaultLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        write!(f, "{}", counts.join(" "))
    }
}

fn ms(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(range))
}

fn pick(ids: &[NodeId]) -> NodeId {
    *ids.choose(&mut madsim::rand::thread_rng())
        .expect("a cluster has nodes")
}

/// The leader if one is agreed on now, else a random node; or a random node anyway with
/// odds 1/2.
async fn leader_or_any(cluster: &SimCluster) -> NodeId {
    let ids = cluster.ids();
    if madsim::rand::thread_rng().gen_bool(0.5) {
        if let Some(l) = cluster.leader_now().await {
            return l;
        }
    }
    pick(&ids)
}

/// Run episodes until `spec.duration` has passed; return what was done. Leaves every node up,
/// running and connected, and message faults off.
pub async fn run(cluster: &mut SimCluster, spec: &NemesisSpec) -> FaultLog {
    let mut log = FaultLog::default();
    if spec.message_faults {
        for kind in [MsgKind::Raft, MsgKind::Forward] {
            let rates = Rates::random(&mut madsim::rand::thread_rng());
            cluster.net_faults().set(kind, rates);
            log.rates.insert(kind.name(), rates.to_string());
        }
    }
    let start = now_ms();
    let total: u32 = spec.kinds.iter().map(|k| k.weight()).sum();
    while now_ms() - start < spec.duration.as_millis() as u64 && total > 0 {
        sleep(ms(0..3000)).await;
        let mut draw = madsim::rand::thread_rng().gen_range(0..total);
        let kind = *spec
            .kinds
            .iter()
            .find(|k| {
                if draw < k.weight() {
                    true
                } else {
                    draw -= k.weight();
                    false
                }
            })
            .expect("the draw falls on a kind");
        episode(cluster, spec, kind, &mut log).await;
    }
    cluster.net_faults().clear();
    log
}

async fn episode(
    cluster: &mut SimCluster,
    spec: &NemesisSpec,
    kind: FaultKind,
    log: &mut FaultLog,
) {
    match kind {
        FaultKind::Crash => crash(cluster, log).await,
        FaultKind::TornWrite => torn_write(cluster, log).await,
        FaultKind::FsyncError => fsync_error(cluster, log).await,
        FaultKind::DiskFull => disk_full(cluster, log).await,
        FaultKind::Corruption => corruption(cluster, log).await,
        FaultKind::Membership => membership(cluster, log).await,
        FaultKind::PowerCut => power_cut(cluster, log).await,
        FaultKind::Pause => pause(cluster, spec, log).await,
        FaultKind::Minority => minority(cluster, log).await,
        FaultKind::IsolatedLeader => isolated_leader(cluster, log).await,
        FaultKind::NoQuorum => no_quorum(cluster, log).await,
        FaultKind::Asymmetric => asymmetric(cluster, log).await,
        FaultKind::Flapping => flapping(cluster, log).await,
    }
}

/// Kill `victim`, and bring it back after `down`.
async fn down_for(cluster: &mut SimCluster, victim: NodeId, down: Duration) {
    cluster.kill(victim);
    sleep(down).await;
    cluster.restart(victim);
}

/// [`FaultKind::Crash`].
async fn crash(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Crash;
    let victim = leader_or_any(cluster).await;
    let down = ms(200..6000);
    log.note(
        kind,
        format!("node {victim} down for {} ms", down.as_millis()),
    );
    down_for(cluster, victim, down).await;
}

/// [`FaultKind::TornWrite`].
async fn torn_write(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::TornWrite;
    let victim = leader_or_any(cluster).await;
    // The power cut strikes when the victim next makes a commit of one of its files
    // durable (the log's, or now and then the state's or a snapshot's): its writes are
    // issued, none synced; either the last one is torn (each sector landed with odds 1/2), or
    // every one lands whole, not at all or torn on its own (a device reorders and splits
    // writes).
    let which = madsim::rand::thread_rng().gen_range(0..3);
    let scramble = madsim::rand::thread_rng().gen_bool(0.5);
    let disk = || cluster.disks(victim)[which];
    let mut bits: u64 = madsim::rand::thread_rng().gen();
    let coin = Box::new(move |_| {
        bits = bits
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        bits >> 63 == 1
    });
    if scramble {
        disk().scramble_at_next_sync(coin);
    } else {
        disk().tear_at_next_sync(coin);
    }
    let start = now_ms();
    while disk().tear_pending() && now_ms() - start < 10_000 {
        sleep(ms(20..100)).await;
    }
    let torn = !disk().tear_pending();
    let down = ms(200..4000);
    log.note(
        kind,
        format!(
            "node {victim} power-cut {} ({}) after {} ms, down for {} ms",
            if torn && scramble {
                "mid-commit, each unsynced write landed, vanished or torn"
            } else if torn {
                "mid-commit, its last write torn"
            } else {
                "(it never synced)"
            },
            disk().name(),
            now_ms() - start,
            down.as_millis()
        ),
    );
    down_for(cluster, victim, down).await;
}

/// [`FaultKind::FsyncError`].
async fn fsync_error(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::FsyncError;
    let victim = leader_or_any(cluster).await;
    let fails = madsim::rand::thread_rng().gen_range(1..4);
    let which = madsim::rand::thread_rng().gen_range(0..2);
    let disk = cluster.disks(victim)[which];
    // The disk counts failed syncs over the run; this episode's are those past this.
    let errors_before = disk.stats().sync_errors;
    disk.fail_syncs(fails);
    // The node stops at its next fsync; the load makes one soon, on a leader or a
    // follower alike. A node that did not sync within the bound is cut anyway.
    let start = now_ms();
    let mut stopped = false;
    while now_ms() - start < 10_000 {
        sleep(ms(100..300)).await;
        if disk.stats().sync_errors > errors_before && !cluster.healthy(victim).await {
            stopped = true;
            break;
        }
    }
    let failed = disk.stats().sync_errors > errors_before;
    if failed && !stopped {
        // What it wrote since its last good fsync may be gone (the disk dropped the pages
        // the failed one covered), and it goes on acknowledging as if it were not.
        log.broken.push(format!(
            "node {victim} kept serving for {} ms after an fsync of {} failed",
            now_ms() - start,
            disk.name()
        ));
    }
    let down = ms(100..3000);
    log.note(
        kind,
        format!(
            "node {victim}: next {fails} fsyncs of {} fail; {} after {} ms; power cut, \
                 down for {} ms",
            disk.name(),
            if stopped { "stopped" } else { "still serving" },
            now_ms() - start,
            down.as_millis()
        ),
    );
    down_for(cluster, victim, down).await;
}

/// [`FaultKind::DiskFull`].
async fn disk_full(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::DiskFull;
    let victim = leader_or_any(cluster).await;
    let space = cluster.space(victim).clone();
    let (used, refused_before) = (space.used(), space.refused());
    // Below 64 KiB (`SIM_LIMITS`' `disk_free_min_bytes`) client writes must be refused; above
    // it they are taken until a file cannot grow. Segments grow a MiB of zeros at a time.
    let left = *[0, 512, 8 << 10, 48 << 10, 96 << 10, 512 << 10]
        .choose(&mut madsim::rand::thread_rng())
        .expect("a choice");
    debug_assert!(crate::cluster::SIM_LIMITS.contains(&format!(
        "disk_free_min_bytes = {}",
        crate::cluster::SIM_DISK_FREE_MIN
    )));
    space.limit(used + left);
    let hold = ms(1000..5000);
    // Past the node's last measure of free space (taken at most every 100 ms while it allowed
    // writes), a write sent to it must be refused, never acknowledged.
    sleep(Duration::from_millis(300)).await;
    let mut probe = "not sent (a write may still fit)".to_string();
    if left < crate::cluster::SIM_DISK_FREE_MIN && cluster.is_up(victim) {
        let body =
            serde_json::json!({"events": [{"type": "T", "data": {"id": "disk-full-probe"}}]});
        // A topic of its own: the history judged is the load's.
        probe = match cluster.append(victim, "disk-full-probe", &body).await {
            Outcome::Ok(created) => {
                log.broken.push(format!(
                    "node {victim} acknowledged a write with {} bytes free, below                      disk_free_min_bytes: {created:?}",
                    space.free().unwrap_or(u64::MAX)
                ));
                "acknowledged".into()
            }
            Outcome::Failed(status, why) => format!("refused ({status}: {why})"),
            other => format!("{other:?}"),
        };
    }
    sleep(hold.saturating_sub(Duration::from_millis(300))).await;
    let stopped_in_hold = !cluster.healthy(victim).await;
    let refused = space.refused() - refused_before;
    space.unlimit();
    // A write refused just before the space came back stops the node a few ms later (a
    // snapshot build's error reaches Raft's core through its task: seed 78539455 of the
    // 5-node sweep was left stopped). Judge its health again once that has had time to show;
    // no write fails for space after `unlimit`.
    sleep(Duration::from_millis(500)).await;
    let stopped = stopped_in_hold || !cluster.healthy(victim).await;
    let down = ms(100..2000);
    log.note(
        kind,
        format!(
            "node {victim}: {left} bytes left beside {used} for {} ms; {refused} writes failed              for space; a write sent to it: {probe}; {}",
            hold.as_millis(),
            if stopped {
                format!(
                    "stopped{}, power cut, down for {} ms",
                    if stopped_in_hold { "" } else { " as space came back" },
                    down.as_millis()
                )
            } else {
                "still serving".to_string()
            }
        ),
    );
    if stopped {
        down_for(cluster, victim, down).await;
    }
}

/// [`FaultKind::Membership`].
async fn membership(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Membership;
    let churn = crate::membership::churn(cluster).await;
    log.note(kind, churn.lines.join("; "));
    for (what, n) in churn.counts {
        *log.counts.entry(what).or_default() += n;
    }
}

/// [`FaultKind::PowerCut`].
async fn power_cut(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::PowerCut;
    let ids = cluster.ids();
    let down = ms(100..2000);
    log.note(kind, format!("every node down for {} ms", down.as_millis()));
    for &id in &ids {
        cluster.kill(id);
    }
    sleep(down).await;
    for &id in &ids {
        cluster.restart(id);
    }
}

/// [`FaultKind::Pause`].
async fn pause(cluster: &mut SimCluster, spec: &NemesisSpec, log: &mut FaultLog) {
    let kind = FaultKind::Pause;
    let victim = leader_or_any(cluster).await;
    // A follower that knows a leader waits the leader lease (openraft 0.9: the largest election
    // timeout) plus an election timeout before it stands, so a pause has to outlast both
    // for the others to elect a new leader in the meantime.
    let paused = spec.election_timeout_max * 2 + ms(100..3000);
    log.note(
        kind,
        format!("node {victim} paused for {} ms", paused.as_millis()),
    );
    cluster.pause(victim);
    sleep(paused).await;
    cluster.resume(victim);
}

/// [`FaultKind::Minority`].
async fn minority(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Minority;
    let ids = cluster.ids();
    let n = ids.len();
    let size = madsim::rand::thread_rng().gen_range(1..=(n - 1) / 2);
    let mut side = ids.clone();
    side.shuffle(&mut madsim::rand::thread_rng());
    side.truncate(size);
    side.sort();
    let hold = ms(500..6000);
    log.note(
        kind,
        format!("{side:?} cut off for {} ms", hold.as_millis()),
    );
    cluster.partition(&side);
    sleep(hold).await;
    cluster.heal();
}

/// [`FaultKind::IsolatedLeader`].
async fn isolated_leader(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::IsolatedLeader;
    let Some(leader) = cluster.leader_now().await else {
        log.note(kind, "no leader to isolate".into());
        return;
    };
    let hold = ms(500..6000);
    log.note(
        kind,
        format!("leader {leader} cut off for {} ms", hold.as_millis()),
    );
    cluster.partition(&[leader]);
    sleep(hold).await;
    cluster.heal();
}

/// [`FaultKind::NoQuorum`].
async fn no_quorum(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::NoQuorum;
    let ids = cluster.ids();
    let n = ids.len();
    // Sides of at most (n - 1) / 2 nodes: 3 nodes all alone, 5 nodes 2 + 2 + 1.
    let mut order = ids.clone();
    order.shuffle(&mut madsim::rand::thread_rng());
    let sides: Vec<Vec<NodeId>> = order.chunks((n - 1) / 2).map(|c| c.to_vec()).collect();
    let hold = ms(500..4000);
    log.note(kind, format!("sides {sides:?} for {} ms", hold.as_millis()));
    for side in &sides {
        cluster.partition(side);
    }
    sleep(hold).await;
    cluster.heal();
}

/// [`FaultKind::Asymmetric`].
async fn asymmetric(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Asymmetric;
    let ids = cluster.ids();
    let leader = cluster.leader_now().await.unwrap_or_else(|| pick(&ids));
    let others: Vec<NodeId> = ids.iter().copied().filter(|&i| i != leader).collect();
    let hold = ms(500..6000);
    let how = madsim::rand::thread_rng().gen_range(0..3);
    match how {
        0 => {
            // The leader hears everyone but nobody hears it.
            log.note(
                kind,
                format!("leader {leader} -> all cut for {} ms", hold.as_millis()),
            );
            for &o in &others {
                cluster.clog_link(leader, o);
            }
        }
        1 => {
            let f = pick(&others);
            log.note(
                kind,
                format!("leader {leader} -> {f} cut for {} ms", hold.as_millis()),
            );
            cluster.clog_link(leader, f);
        }
        _ => {
            let f = pick(&others);
            log.note(
                kind,
                format!("{f} -> leader {leader} cut for {} ms", hold.as_millis()),
            );
            cluster.clog_link(f, leader);
        }
    }
    sleep(hold).await;
    cluster.heal();
}

/// [`FaultKind::Flapping`].
async fn flapping(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Flapping;
    let victim = leader_or_any(cluster).await;
    let total = ms(1000..8000);
    log.note(
        kind,
        format!("node {victim} flapping for {} ms", total.as_millis()),
    );
    let until = now_ms() + total.as_millis() as u64;
    let mut cut = false;
    while now_ms() < until {
        if cut {
            cluster.heal();
        } else {
            cluster.partition(&[victim]);
        }
        cut = !cut;
        sleep(ms(50..800)).await;
    }
    cluster.heal();
}

/// [`FaultKind::Corruption`]: damage one voter's files while it is down.
async fn corruption(cluster: &mut SimCluster, log: &mut FaultLog) {
    let kind = FaultKind::Corruption;
    let Some((voters, _)) = cluster.membership().await else {
        log.note(kind, "no leader: no node damaged".into());
        return;
    };
    // A damaged voter is lost until it is replaced, and replacing it needs a quorum of the
    // others: with fewer than three voters (an earlier repair whose new node did not catch up
    // in time) that quorum would be gone for good, which no system survives.
    if voters.len() < 3 {
        log.note(
            kind,
            format!(
                "only {} voters: none may be lost for good; no node damaged",
                voters.len()
            ),
        );
        return;
    }
    let victim = pick(&voters);
    cluster.kill(victim);
    let mut rng = madsim::rand::thread_rng();
    let flips = rng.gen_range(1..=8);
    // redb's first page holds the commit slots and the bit that picks between them: a flip of
    // that bit would roll the file back one commit with every checksum intact, which no check
    // can tell from a clean file (ARCHITECTURE.md, storage integrity). The damage here lands
    // past it.
    const HEADER: usize = 4096;
    // The log, the state file or the snapshot folder (past the first page, as above, but for
    // snapshots, where no flip goes unnoticed).
    let which = rng.gen_range(0..3);
    let disk = cluster.disks(victim)[which];
    let from = if which == 2 { 0 } else { HEADER };
    let len = disk.flippable_len() as usize;
    if len > from {
        for _ in 0..flips {
            disk.flip_bit(rng.gen_range(from..len), rng.gen_range(0..8));
        }
    }
    let what = disk.name().to_string();
    drop(rng);
    cluster.restart(victim);
    let start = now_ms();
    let mut refused = None;
    while now_ms() - start < 10_000 {
        sleep(ms(200..400)).await;
        refused = cluster.damaged(victim);
        if refused.is_some() || cluster.healthy(victim).await {
            break;
        }
    }
    // A node that started must stay clean: the open verified every page it will read.
    sleep(ms(500..1500)).await;
    let refused = refused.or_else(|| cluster.damaged(victim));
    let Some(why) = refused else {
        log.note(
            kind,
            format!("node {victim}: {flips} bits of {what} flipped, all on free space: it serves"),
        );
        *log.counts.entry("damage_harmless").or_default() += 1;
        return;
    };
    *log.counts.entry("damage_refused").or_default() += 1;
    let churn = crate::membership::replace(cluster, victim).await;
    log.note(
        kind,
        format!(
            "node {victim}: {flips} bits of {what} flipped; refused ({why}); repair: {}",
            churn.lines.join("; ")
        ),
    );
    for (what, n) in churn.counts {
        *log.counts.entry(what).or_default() += n;
    }
}
