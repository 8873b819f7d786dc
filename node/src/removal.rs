//! A node removed from the cluster is not told: the leader stops replicating to it as soon as
//! it sees the new membership (openraft's node-lifecycle notes), so the removed node hears
//! nothing more and, a voter, stands for election in ever higher terms for ever. Like etcd,
//! uniqlog has it find out and stop: when its log has not moved for two periods (nothing is
//! replicated to it, or the cluster is idle) and it is not the leader, it asks the peers it
//! knows for their membership (`/raft/membership`). A peer that knows a leader and holds a
//! committed membership newer than the last one that held this node, and without it, means
//! it was removed.
//!
//! Only a peer's word counts, never this node's own log: a node added again after a removal
//! (under the same id, on an empty data dir) replays the old entry that removed it on its way
//! to the one that added it back, and is being replicated to all the while. And only a node
//! that has been a member looks: a new node waiting to be added as a learner is in nobody's
//! membership yet, and that is no removal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::SharedApp;
use api::transport::HttpRequest;

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
    let mut last_log = None;
    let mut still = 0u32;
    loop {
        tokio::time::sleep(period).await;
        let m = app.raft.metrics().borrow().clone();
        let own = PeerMembership::of(&app);
        if own.members.contains(&app.id) {
            member_at =
                Some(member_at.map_or(own.membership_index, |a| a.max(own.membership_index)));
        }
        // Replication reaching this node moves its log; a removed node's log stands still.
        let log = (m.last_log_index, m.last_applied.map(|l| l.index));
        if last_log != Some(log) || m.state == openraft::ServerState::Leader {
            (last_log, still) = (Some(log), 0);
            continue;
        }
        still += 1;
        let Some(at) = member_at else { continue };
        // Two periods in a row: an election in progress is no reason to ask.
        if still < 2 {
            continue;
        }
        let peers: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != app.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
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
    ask_peer(app, addr, MEMBERSHIP_PATH, timeout).await
}

/// A peer's JSON answer on `path` (signed and stamped as every peer call), or `None`: a peer
/// of an older build has no such route, and an unreachable one says nothing.
pub(crate) async fn ask_peer<T: serde::de::DeserializeOwned>(
    app: &SharedApp,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Option<T> {
    let mut req = HttpRequest::post(path, b"{}".to_vec());
    crate::cluster_secret::sign(&mut req, app.settings.cluster_secret.as_deref());
    crate::peer_protocol::stamp(&mut req);
    match app.transport.send(addr, req, timeout).await {
        Ok(resp) if resp.status == 200 => serde_json::from_slice(&resp.body).ok(),
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
    let _ = app.runtime.removed.set(message);
}
