//! What the statuses of a cluster's nodes say together: the leader they agree on, and whether
//! they have settled. Pure functions over [`ClusterStatus`], for the process tests and the
//! simulator's harness, which wait on the same conditions.

use crate::wire::{ClusterStatus, NodeId};

/// The leader of the highest term any of `statuses` leads in, when at least `needed` of them
/// (its own included) name it as leader in that term.
pub fn agreed_leader<'a>(
    statuses: impl IntoIterator<Item = &'a ClusterStatus>,
    needed: usize,
) -> Option<NodeId> {
    let statuses: Vec<&ClusterStatus> = statuses.into_iter().collect();
    // The first of the highest term: openraft 0.9 may have two leaders in one term.
    let leader = statuses
        .iter()
        .filter(|s| s.role == "leader")
        .min_by_key(|s| std::cmp::Reverse(s.term))?;
    let agree = statuses
        .iter()
        .filter(|s| s.leader == Some(leader.id) && s.term == leader.term)
        .count();
    (agree >= needed).then_some(leader.id)
}

/// The index every one of `statuses` has committed and applied when they have settled: one
/// leader named by all, and nothing in its log left to commit or apply anywhere.
pub fn settled<'a>(statuses: impl IntoIterator<Item = &'a ClusterStatus>) -> Option<u64> {
    let all: Vec<&ClusterStatus> = statuses.into_iter().collect();
    let leader = all.first()?.leader?;
    let target = all.iter().find(|s| s.id == leader)?.last_log_index;
    all.iter()
        .all(|s| {
            s.leader == Some(leader)
                && s.applied_index == target
                && s.commit_index == target
                && s.last_log_index == target
        })
        .then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        id: NodeId,
        role: &str,
        term: u64,
        leader: Option<NodeId>,
        log: u64,
    ) -> ClusterStatus {
        serde_json::from_value(serde_json::json!({
            "id": id, "role": role, "term": term, "leader": leader,
            "commit_index": log, "applied_index": log, "last_log_index": log,
            "purged_index": null, "snapshot_index": null, "members": [],
            "replication": null, "uptime_ms": 0, "rules_version": 1,
            "idempotency": {"window_ms": 1, "records_max": 1, "records": 0},
        }))
        .unwrap()
    }

    #[test]
    fn the_leader_of_the_highest_term_counts_only_with_enough_followers_in_that_term() {
        let old = status(1, "leader", 3, Some(1), 9);
        let new = status(2, "leader", 4, Some(2), 9);
        let follower = status(3, "follower", 4, Some(2), 9);
        assert_eq!(agreed_leader([&old, &new, &follower], 2), Some(2));
        assert_eq!(agreed_leader([&old, &new, &follower], 3), None);
        let behind = status(3, "follower", 3, Some(2), 9);
        assert_eq!(
            agreed_leader([&new, &behind], 2),
            None,
            "a follower of an older term"
        );
        assert_eq!(agreed_leader([&follower], 1), None, "no status leads");
    }

    #[test]
    fn settled_means_one_leader_and_every_log_committed_and_applied() {
        let a = status(1, "leader", 2, Some(1), 7);
        let b = status(2, "follower", 2, Some(1), 7);
        assert_eq!(settled([&a, &b]), Some(7));
        let lagging = status(2, "follower", 2, Some(1), 6);
        assert_eq!(settled([&a, &lagging]), None);
    }
}
