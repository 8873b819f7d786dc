//! What the storage counts and times, for the node's `/metrics`. The node registers these
//! in its registry; this crate only records, so it stays free of HTTP and of any exporter.
//!
//! Nothing here is read back by the store: apply stays deterministic whatever is recorded.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Cheap to clone: every metric is shared behind an `Arc`.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    log_commit: Histogram,
    log_commit_entries: Histogram,
    apply: Histogram,
    applied_entries: Counter,
    snapshots_built: Counter,
    snapshots_installed: Counter,
    purges: Counter,
}

/// 50 µs to about 1.6 s: an fsync on a fast disk up to one stuck behind a slow device.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// 1 to 4096: entries per log commit grow with load (group commit in the log writer).
fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            log_commit: seconds(),
            log_commit_entries: counts(),
            apply: seconds(),
            applied_entries: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            purges: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Add every metric to `registry` (which carries the `uniqlog` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "raft_log_commit",
            "Durable writes of the Raft log: one segment frame written and fdatasynced",
            Unit::Seconds,
            self.log_commit.clone(),
        );
        registry.register(
            "raft_log_commit_entries",
            "Entries written by one durable commit of the Raft log",
            self.log_commit_entries.clone(),
        );
        registry.register_with_unit(
            "apply",
            "Applying one batch of committed entries to the state file",
            Unit::Seconds,
            self.apply.clone(),
        );
        registry.register(
            "applied_entries",
            "Committed entries applied to the state machine",
            self.applied_entries.clone(),
        );
        registry.register(
            "snapshots_built",
            "Snapshots this node built of its state machine",
            self.snapshots_built.clone(),
        );
        registry.register(
            "snapshots_installed",
            "Snapshots this node installed from a leader",
            self.snapshots_installed.clone(),
        );
        registry.register(
            "log_purges",
            "Purges of the Raft log up to a snapshot",
            self.purges.clone(),
        );
    }

    pub(crate) fn log_committed(&self, started: Instant, entries: usize) {
        self.log_commit.observe(started.elapsed().as_secs_f64());
        self.log_commit_entries.observe(entries as f64);
    }

    pub(crate) fn applied(&self, started: Instant, entries: usize) {
        self.apply.observe(started.elapsed().as_secs_f64());
        self.applied_entries.inc_by(entries as u64);
    }

    pub(crate) fn snapshot_built(&self) {
        self.snapshots_built.inc();
    }

    pub(crate) fn snapshot_installed(&self) {
        self.snapshots_installed.inc();
    }

    pub(crate) fn purged(&self) {
        self.purges.inc();
    }
}
