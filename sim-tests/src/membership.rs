//! Membership churn, the way an operator does it (`uniqlog cluster add-learner | promote |
//! remove`): start a node under a fresh id, add it as a learner, wait until it has caught up
//! (through a snapshot when the leader purged its log, as it usually has), promote it, then
//! remove a voter (the leader half the time) and retire that node for good. The voter count
//! goes n → n + 1 → n.
//!
//! Every step is bounded in simulated time and may fail under the faults that run beside it
//! (message loss, a leader crash in the middle). After each step the harness takes the
//! membership from the leader's answer, never from what it asked for: a change whose answer
//! was lost may still have happened. A step that cannot finish leaves the membership as the
//! cluster has it: a learner that was never promoted stays a learner, a node that has not got
//! in is left running (its add may still commit) and retired at the end if it never did.

use std::collections::BTreeMap;
use std::time::Duration;

use madsim::rand::seq::SliceRandom;
use madsim::rand::Rng;

use crate::cluster::{now_ms, sleep, Change, SimCluster};
use crate::history::NodeId;

/// What one churn episode did, for the fault log and the run's figures.
#[derive(Debug, Default)]
pub struct Churn {
    pub lines: Vec<String>,
    pub counts: BTreeMap<&'static str, u64>,
}

impl Churn {
    fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!("membership: {what}");
        self.lines.push(what);
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }
}

/// How long each step may take.
const STEP: Duration = Duration::from_secs(15);

/// Ask the members in turn for `change` until one carries it out, within [`STEP`].
pub async fn change_until_done(cluster: &SimCluster, change: Change) -> Result<(), String> {
    let start = now_ms();
    let mut last = String::new();
    let mut k = 0usize;
    while now_ms() - start < STEP.as_millis() as u64 {
        let ids = cluster.ids();
        let node = ids[k % ids.len()];
        k += 1;
        match cluster.change(node, change.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// Take the membership the leader reports (waiting for a leader within [`STEP`]); the
/// members become the harness' `ids()`. Returns (voters, learners).
async fn sync(cluster: &mut SimCluster) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
    let start = now_ms();
    while now_ms() - start < STEP.as_millis() as u64 {
        if let Some((voters, learners)) = cluster.membership().await {
            cluster.set_members(voters.iter().chain(&learners).copied());
            return Some((voters, learners));
        }
        sleep(Duration::from_millis(300)).await;
    }
    None
}

/// Wait until `id` has applied what the leader had committed when the wait began.
async fn caught_up(cluster: &SimCluster, id: NodeId) -> Option<(u64, Option<u64>)> {
    let start = now_ms();
    let mut target = None;
    while now_ms() - start < STEP.as_millis() as u64 {
        if target.is_none() {
            if let Some(l) = cluster.leader_now().await {
                target = cluster.status(l).await.ok().map(|s| s.commit_index);
            }
        }
        if let (Some(t), Ok(s)) = (target, cluster.status(id).await) {
            if s.applied_index >= t {
                return Some((s.applied_index, s.snapshot_index));
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
    None
}

/// One churn episode; leaves every member up and connected.
pub async fn churn(cluster: &mut SimCluster) -> Churn {
    let mut out = Churn::default();
    let Some((voters, _)) = sync(cluster).await else {
        out.note("no leader: no membership change");
        return out;
    };
    let want_voters = voters.len();
    let Some((voters, new)) = add_and_promote(cluster, &mut out).await else {
        return out;
    };
    if voters.len() <= want_voters {
        return out;
    }

    // 4. Remove a voter other than the new one, the leader half the time.
    let leader = cluster.leader_now().await;
    let others: Vec<NodeId> = voters.iter().copied().filter(|&v| v != new).collect();
    let victim = match leader {
        Some(l) if l != new && madsim::rand::thread_rng().gen_bool(0.5) => l,
        _ => *others
            .choose(&mut madsim::rand::thread_rng())
            .expect("a cluster with more voters than one"),
    };
    remove_voter(cluster, victim, voters, &mut out).await;
    out
}

/// The repair of a voter whose data is damaged, as the README gives it: remove it, retire it
/// (its disk is wiped with it), and add a node under a new id as a learner, then promote it.
/// Each step is retried (the faults beside it may fail one) until the removal is done.
pub async fn replace(cluster: &mut SimCluster, damaged: NodeId) -> Churn {
    let mut out = Churn::default();
    for _ in 0..5 {
        let Some((voters, _)) = sync(cluster).await else {
            out.note(format!("no leader: damaged node {damaged} waits"));
            continue;
        };
        if !voters.contains(&damaged) {
            out.note(format!(
                "damaged node {damaged} is no voter any more; retired"
            ));
            cluster.retire(damaged);
            break;
        }
        if remove_voter(cluster, damaged, voters, &mut out).await {
            break;
        }
    }
    if !cluster.retired().contains(&damaged) {
        out.note(format!("damaged node {damaged} could not be removed"));
        return out;
    }
    add_and_promote(cluster, &mut out).await;
    out
}

/// Remove `victim` from `voters` and retire it. Whether it was removed.
async fn remove_voter(
    cluster: &mut SimCluster,
    victim: NodeId,
    voters: Vec<NodeId>,
    out: &mut Churn,
) -> bool {
    let leader = cluster.leader_now().await;
    let remaining: Vec<NodeId> = voters.iter().copied().filter(|&v| v != victim).collect();
    let r = change_until_done(cluster, Change::Voters(remaining.clone())).await;
    // The removed node may still answer as a leader for a while: ask the others.
    sleep(Duration::from_millis(500)).await;
    let Some((voters, learners)) = sync(cluster).await else {
        out.note(format!("removal of {victim}: {r:?}; no leader after it"));
        return false;
    };
    if voters.contains(&victim) || learners.contains(&victim) {
        out.note(format!("node {victim} not removed ({r:?}); stays"));
        return false;
    }
    out.count("removed");
    out.note(format!(
        "node {victim}{} removed and retired: voters {voters:?}",
        if Some(victim) == leader {
            " (the leader)"
        } else {
            ""
        }
    ));
    cluster.retire(victim);
    true
}

/// Start a node under a fresh id, add it as a learner, wait until it caught up, promote it.
/// Returns the voters after the promotion and the new node, if it got that far.
async fn add_and_promote(
    cluster: &mut SimCluster,
    out: &mut Churn,
) -> Option<(Vec<NodeId>, NodeId)> {
    // 1. A new node joins as a learner.
    let Some(new) = cluster.add_node() else {
        out.note("no spare node id left: no membership change");
        return None;
    };
    let added = change_until_done(cluster, Change::AddLearner(new)).await;
    out.count("learner_added");
    let members = sync(cluster).await;
    let joined = members
        .as_ref()
        .is_some_and(|(v, l)| v.contains(&new) || l.contains(&new));
    if !joined {
        // Not retired yet: an add whose answer was lost may still commit (seed 33, with the
        // code's fault points slowing the change past the step's time), and a learner that
        // got in must be up for the cluster to converge. `settle` retires it at the end if
        // it never got in.
        out.note(format!(
            "node {new} could not join ({added:?}); left running until the end"
        ));
        return None;
    }
    out.note(format!("node {new} added as a learner"));

    // Sometimes the leader crashes in the middle of the change.
    if madsim::rand::thread_rng().gen_bool(0.25) {
        if let Some(leader) = cluster.leader_now().await {
            let down = Duration::from_millis(madsim::rand::thread_rng().gen_range(300..3000));
            out.note(format!(
                "leader {leader} crashes mid-change for {} ms",
                down.as_millis()
            ));
            out.count("leader_crash");
            cluster.kill(leader);
            sleep(down).await;
            cluster.restart(leader);
        }
    }

    // 2. It catches up, through a snapshot when the leader's log was purged.
    match caught_up(cluster, new).await {
        Some((applied, snapshot)) => {
            if snapshot.is_some() {
                out.count("caught_up_by_snapshot");
            } else {
                out.count("caught_up_by_log");
            }
            out.note(format!(
                "node {new} caught up at index {applied} (snapshot {snapshot:?})"
            ));
        }
        None => {
            out.note(format!(
                "node {new} did not catch up in time; stays a learner"
            ));
            return None;
        }
    }

    // 3. Promote it.
    let Some((voters, _)) = sync(cluster).await else {
        out.note("no leader: the learner stays a learner");
        return None;
    };
    let mut promoted: Vec<NodeId> = voters.clone();
    if !promoted.contains(&new) {
        promoted.push(new);
    }
    let r = change_until_done(cluster, Change::Voters(promoted.clone())).await;
    let Some((voters, _)) = sync(cluster).await else {
        out.note(format!("promotion of {new}: {r:?}; no leader after it"));
        return None;
    };
    if !voters.contains(&new) {
        out.note(format!("node {new} not promoted ({r:?}); stays a learner"));
        return None;
    }
    out.count("promoted");
    out.note(format!("node {new} promoted: voters {voters:?}"));
    Some((voters, new))
}

/// Before the final checks: take the membership from the leader once more (a change whose
/// answer was lost may have committed since the churn last looked) and retire every node
/// started for the churn that is not in it.
pub async fn settle(cluster: &mut SimCluster) {
    if sync(cluster).await.is_none() {
        return; // no leader: the liveness phase reports it
    }
    let members = cluster.ids();
    let retired = cluster.retired();
    for id in cluster.started() {
        if !members.contains(&id) && !retired.contains(&id) {
            tracing::info!(id, "not a member at the end: retired");
            cluster.retire(id);
        }
    }
}
