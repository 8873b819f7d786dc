//! Helpers of the tests that drive the store by hand on simulated disks.

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::{LogCommand, TypeConfig};

/// An entry of one append of one event whose data is padded to about `size` bytes.
pub fn entry(term: u64, index: u64, size: usize) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: index,
            requests: vec![raft_store::Request::Append(raft_store::AppendRequest {
                topic: "t".into(),
                events: vec![raft_store::NewEvent {
                    event_type: "E".into(),
                    stream: None,
                    data: format!("{{\"pad\":\"{}\"}}", "x".repeat(size)),
                    metadata: None,
                    claims: vec![],
                    secret: None,
                }],
                expected_version: Default::default(),
                idempotency: None,
                rules_version: 0,
                reply: None,
            })]
            .into(),
        }),
    }
}
