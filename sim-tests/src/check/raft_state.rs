//! Raft state seen from outside is monotonic. Per node, from its status polls in order:
//! within one life of the process (restart epoch), term, commit index and applied index never
//! decrease; across a crash the term still never decreases (the vote is durable), while commit
//! and applied may fall back (the commit index is not synced, the state machine re-applies
//! from its last durable point). Across nodes: at most one node is leader in any term
//! (election safety).

use std::collections::BTreeMap;

use super::Found;
use crate::history::{Kind, NodeId, StatusSample};

pub fn check(samples: &[StatusSample], found: &mut Found) {
    let mut last: BTreeMap<NodeId, &StatusSample> = BTreeMap::new();
    let mut leaders: BTreeMap<u64, BTreeMap<NodeId, u64>> = BTreeMap::new();
    for s in samples {
        if s.role == "leader" {
            leaders
                .entry(s.term)
                .or_default()
                .entry(s.node)
                .or_insert(s.at_ms);
        }
        if let Some(prev) = last.insert(s.node, s) {
            let node = s.node;
            if s.term < prev.term {
                found.push(
                    Kind::Raft,
                    format!(
                        "node {node}: term went back from {} (at {} ms, epoch {}) to {} (at {} ms, \
                         epoch {})",
                        prev.term, prev.at_ms, prev.epoch, s.term, s.at_ms, s.epoch
                    ),
                );
            }
            if s.epoch == prev.epoch {
                for (what, before, now) in [
                    ("commit index", prev.commit_index, s.commit_index),
                    ("applied index", prev.applied_index, s.applied_index),
                ] {
                    if now < before {
                        found.push(
                            Kind::Raft,
                            format!(
                                "node {node}: {what} went back from {before} (at {} ms) to {now} \
                                 (at {} ms) without a restart",
                                prev.at_ms, s.at_ms
                            ),
                        );
                    }
                }
            }
        }
    }
    for (term, nodes) in leaders {
        if nodes.len() > 1 {
            found.push(
                Kind::Raft,
                format!(
                    "term {term} had {} leaders: {nodes:?} (node: first seen at ms)",
                    nodes.len()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        node: NodeId,
        epoch: u64,
        role: &str,
        term: u64,
        commit: u64,
        applied: u64,
    ) -> StatusSample {
        StatusSample {
            node,
            epoch,
            at_ms: 0,
            role: role.into(),
            term,
            leader: None,
            commit_index: commit,
            applied_index: applied,
            last_log_index: commit,
        }
    }

    #[test]
    fn going_back_is_reported_unless_a_restart_explains_it() {
        let mut found = Found::default();
        check(
            &[
                sample(1, 0, "follower", 3, 10, 10),
                sample(1, 0, "follower", 3, 9, 10),
                sample(1, 1, "follower", 3, 2, 1),
                sample(1, 1, "follower", 2, 2, 1),
            ],
            &mut found,
        );
        let kinds: Vec<&str> = found.violations.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(found.violations.len(), 2, "{kinds:?}");
        assert!(kinds[0].contains("commit index"), "{kinds:?}");
        assert!(kinds[1].contains("term went back"), "{kinds:?}");
    }

    #[test]
    fn two_leaders_in_one_term_are_reported() {
        let mut found = Found::default();
        check(
            &[
                sample(1, 0, "leader", 4, 1, 1),
                sample(2, 0, "leader", 4, 1, 1),
            ],
            &mut found,
        );
        assert_eq!(found.violations.len(), 1);
        assert!(found.violations[0].detail.contains("2 leaders"));
    }
}
