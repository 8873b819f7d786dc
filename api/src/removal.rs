//! A node removed from the cluster is not told: the leader stops replicating to it as soon as
//! it sees the new membership (openraft's node-lifecycle notes), so the removed node hears
//! nothing more and stands for election in ever higher terms, for ever. Like etcd, uniqlog has
//! it find out and stop: every few election timeouts without a leader, it asks the peers it
//! knows for their membership (`/raft/membership`). A committed membership newer than the
//! last one that held this node, and without it, means it was removed.
//!
//! Only a node that has been a member looks: a new node waiting to be added as a learner is
//! in nobody's membership yet, and that is no removal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::SharedApp;
use crate::transport::HttpRequest;

pub const MEMBERSHIP_PATH: &str = "/raft/membership";

/// A node's view of the membership, for a peer that wonders whether it was removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerMembership {
    pub leader: Option<u64>,
    /// The log index of the membership in effect on this node.
    pub membership_index: u64,
    /// This node's applied index: a membership at or below it is committed.
    pub applied_index: u64,
    /// Voters and learners.
    pub members: Vec<u64>,
}

impl PeerMembership {
    pub fn of(app: &SharedApp) -> Self {
        let m = app.raft.metrics().borrow().clone();
        PeerMembership {
            leader: m.current_leader,
            membership_index: m.membership_config.log_id().map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect(),
        }
    }

    /// Whether this view says node `id`, last a member at `member_at`, was removed: a
    /// committed membership after that one, without it.
    fn removes(&self, id: u64, member_at: u64) -> bool {
        self.membership_index > member_at
            && self.membership_index <= self.applied_index
            && !self.members.contains(&id)
    }
}

/// Watch for this node's removal; when found, record it (`App::fatal` reports it and the node
/// stops). Polls every `period` rather than waiting on the metrics channel, which would make
/// the simulation's wake order depend on an unseeded generator (see `RunningNode::failed`).
pub async fn watch(app: SharedApp, period: Duration) {
    let mut member_at: Option<u64> = None;
    let mut leaderless = 0u32;
    loop {
        tokio::time::sleep(period).await;
        let own = PeerMembership::of(&app);
        if own.members.contains(&app.id) {
            member_at =
                Some(member_at.map_or(own.membership_index, |m| m.max(own.membership_index)));
        }
        let Some(at) = member_at else { continue };
        if own.removes(app.id, at) {
            return removed(&app, own.membership_index, "its own log");
        }
        if own.leader.is_some() && own.members.contains(&app.id) {
            leaderless = 0;
            continue;
        }
        // Two periods in a row without a leader before asking: an election is no reason.
        leaderless += 1;
        if leaderless < 2 {
            continue;
        }
        let peers: Vec<(u64, String)> = {
            let m = app.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != app.id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        for (peer, addr) in peers {
            let Some(view) = ask(&app, &addr, period).await else {
                continue;
            };
            if view.leader.is_some() && view.removes(app.id, at) {
                return removed(&app, view.membership_index, &format!("node {peer}"));
            }
        }
    }
}

async fn ask(app: &SharedApp, addr: &str, timeout: Duration) -> Option<PeerMembership> {
    let mut req = HttpRequest::post(MEMBERSHIP_PATH, b"{}".to_vec());
    crate::cluster_secret::sign(&mut req, app.cluster_secret.as_deref());
    crate::peer_protocol::stamp(&mut req);
    match app.transport.send(addr, req, timeout).await {
        Ok(resp) if resp.status == 200 => serde_json::from_slice(&resp.body).ok(),
        // A peer of an older build has no such route; an unreachable one says nothing.
        _ => None,
    }
}

fn removed(app: &SharedApp, index: u64, from: &str) {
    let message = format!(
        "node {} was removed from the cluster (membership at log index {index}, as {from} \
         has it); it takes no part any more. To bring this machine back, move its data dir \
         away, then add it again as a learner (`uniqlog cluster add-learner`)",
        app.id
    );
    tracing::error!("{message}");
    let _ = app.removed.set(message);
}
