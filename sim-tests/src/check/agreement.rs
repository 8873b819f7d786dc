//! Invariant 2: every node applies the same entries in the same order, so every node holds
//! identical topics, and identical replicated tables (streams, uniq owners and history,
//! idempotency answers, rules, system topics: [`whole_state`], from each node's
//! `GET /v1/cluster/state-hash` at one applied index). Also the shape of the reference node's topics: offsets gap-free from 0,
//! each event naming its topic, and the events of a stream appended with `expected_version`
//! carrying, in topic order, exactly the versions they expected (0, 1, 2, …).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{data_field, stream_of, Found, Index};
use crate::history::{FinalState, History, Kind};

pub fn check(_history: &History, state: &FinalState, idx: &Index<'_>, found: &mut Found) {
    whole_state(state, found);
    let reference = idx.topics;
    for (node, topics) in &state.topics {
        if topics == reference {
            continue;
        }
        let detail = topics
            .keys()
            .chain(reference.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|t| topics.get(*t) != reference.get(*t))
            .map(|t| {
                let mine = topics.get(t).map_or(&[][..], Vec::as_slice);
                let theirs = reference.get(t).map_or(&[][..], Vec::as_slice);
                let first_diff = mine
                    .iter()
                    .zip(theirs)
                    .position(|(a, b)| a != b)
                    .unwrap_or(mine.len().min(theirs.len()));
                format!(
                    "{t}: {} vs {} events, first difference at offset {first_diff}",
                    mine.len(),
                    theirs.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        found.push(
            Kind::Divergent,
            format!("node {node} diverges from node {}: {detail}", idx.node),
        );
    }

    let mut streams: BTreeMap<&str, Vec<(u64, &Value)>> = BTreeMap::new();
    for (topic, events) in reference {
        for (i, e) in events.iter().enumerate() {
            let offset = e.get("offset").and_then(Value::as_u64);
            if offset != Some(i as u64) {
                found.push(
                    Kind::Divergent,
                    format!(
                        "{topic}: event at position {i} has offset {offset:?}: offsets have a gap"
                    ),
                );
            }
            if e.get("topic").and_then(Value::as_str) != Some(topic.as_str()) {
                found.push(
                    Kind::Divergent,
                    format!("{topic}[{i}] names another topic: {e}"),
                );
            }
            if let Some(s) = stream_of(e) {
                if data_field(e, "expected_version").is_some() {
                    streams.entry(s).or_default().push((i as u64, e));
                }
            }
        }
    }
    // Optimistic concurrency: the n-th event of a stream expected version n.
    for (stream, events) in &streams {
        for (n, (offset, e)) in events.iter().enumerate() {
            let expected = data_field(e, "expected_version").and_then(Value::as_u64);
            if expected != Some(n as u64) {
                found.push(
                    Kind::Divergent,
                    format!(
                        "stream {stream}: event {n} (offset {offset}) was appended expecting \
                         version {expected:?}: optimistic concurrency let a stale writer through"
                    ),
                );
            }
        }
    }
}

/// Every member's replicated state, table by table, equals the first member's.
fn whole_state(state: &FinalState, found: &mut Found) {
    let mut nodes = state.state_hashes.iter();
    let Some((first, reference)) = nodes.next() else {
        return;
    };
    for (node, hash) in nodes {
        if hash.applied_index != reference.applied_index {
            found.push(
                Kind::Divergent,
                format!(
                    "node {node} hashed its state at index {}, node {first} at {}",
                    hash.applied_index, reference.applied_index
                ),
            );
            continue;
        }
        let tables: BTreeSet<&String> = hash.tables.keys().chain(reference.tables.keys()).collect();
        let differ: Vec<String> = tables
            .into_iter()
            .filter(|t| hash.tables.get(*t) != reference.tables.get(*t))
            .map(|t| {
                let rows = |h: &api::wire::StateHash| h.tables.get(t).map_or(0, |t| t.rows);
                format!("{t} ({} rows vs {})", rows(hash), rows(reference))
            })
            .collect();
        if !differ.is_empty() {
            found.push(
                Kind::Divergent,
                format!(
                    "node {node}'s replicated state differs from node {first}'s at index {}: {}",
                    hash.applied_index,
                    differ.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_all;
    use super::super::testing::*;
    use crate::history::{History, Kind};

    #[test]
    fn a_divergent_node_and_a_gap_are_reported() {
        let mut s = state(
            vec![event("t", 0, 5, "a.0"), event("t", 2, 6, "b.0")],
            vec![],
        );
        s.topics.get_mut(&2).unwrap().get_mut("t").unwrap().pop();
        let h = History {
            appends: vec![attempt("a", ok(0, 5)), attempt("b", ok(1, 6))],
            ..History::default()
        };
        let v = check_all(&h, &s);
        assert_eq!(v.report.count(Kind::Divergent), 2, "{:?}", v.violations);
        let all = v.violations.join("\n");
        assert!(all.contains("diverges"), "{all}");
        assert!(all.contains("gap"), "{all}");
    }

    #[test]
    fn a_node_whose_tables_differ_is_reported_by_table() {
        use api::wire::{StateHash, TableHash};
        let hash = |uniq: &str| StateHash {
            applied_index: 7,
            tables: [("events", "aa", 2), ("uniq_owners", uniq, 1)]
                .into_iter()
                .map(|(t, h, rows)| {
                    let sha256 = h.to_string();
                    (t.to_string(), TableHash { rows, sha256 })
                })
                .collect(),
        };
        let mut s = state(vec![event("t", 0, 5, "a.0")], vec![]);
        let h = History {
            appends: vec![attempt("a", ok(0, 5))],
            ..History::default()
        };
        s.state_hashes = [(1, hash("bb")), (2, hash("bb"))].into();
        assert!(check_all(&h, &s).violations.is_empty());
        s.state_hashes.insert(2, hash("cc"));
        let v = check_all(&h, &s);
        assert_eq!(v.report.count(Kind::Divergent), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("node 2's replicated state differs")
                && v.violations[0].contains("uniq_owners"),
            "{:?}",
            v.violations
        );
    }
}
