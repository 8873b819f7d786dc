//! Planted bugs, for the simulation only (this module exists under `--cfg madsim` alone, so a
//! production build cannot plant one).
//!
//! Each bug breaks one guarantee on purpose, so `sim-tests` can show that its checkers notice
//! (`sim-tests/tests/planted.rs`, `simulate --plant <bug>`). The switch is process-wide: the
//! seed runner starts one process per seed and sets it before the simulation starts, so every
//! node of the simulated cluster runs with the same bug and apply stays deterministic.
//!
//! The hooks are one `if planted::is(Bug::X)` branch each, at the real code sites:
//! - [`Bug::AckBeforeDurable`]: the segment log (`segments/mod.rs`, `sync_frame`) skips the
//!   `fdatasync` of a frame of entries, and the writer tells openraft they are flushed;
//! - [`Bug::LeaderCountsItselfEarly`]: nothing waits for the leader's own fsync
//!   (`local_durable.rs`): the peer network hands openraft a follower's answer, and apply runs,
//!   while the leader's log is not yet durable that far, though the leader already reported
//!   its appends flushed: an index commits, and is acknowledged, on fewer synced copies than a
//!   quorum;
//! - [`Bug::UniqInHandler`]: `node::app::App::append` refuses a taken key from the receiving node's
//!   own (possibly stale) state, [`uniq_conflict_here`], and apply (`uniq.rs`) lets a claim
//!   take a key another stream owns;
//! - [`Bug::NoIdempotencyCheck`]: apply (`apply.rs`) does not look the idempotency key up, so a
//!   retry is appended again;
//! - [`Bug::StaleLinearizableRead`]: `node::app::App::linearize` returns at once, so a read asked
//!   with `consistency=linearizable` is served from whatever the node has applied;
//! - [`Bug::RetryFailedFsync`]: a log frame whose `fdatasync` failed is synced again, and the
//!   node carries on when that succeeds (the pages the failed one covered may be gone);
//! - [`Bug::ApplyReadsClock`]: apply (`state_machine.rs`) stamps an entry's events with the
//!   applying node's clock instead of the time the leader put in the entry;
//! - [`Bug::StaleFullPage`]: `node::routes::log::read` serves a linearizable read from the
//!   node's applied state, without a read index, when that page comes out full (the reasoning
//!   being that a full page cannot miss anything: it can, its `head`);
//! - [`Bug::SnapshotNotSynced`]: a built snapshot (`snapshot.rs`, `SnapshotDir::build`) is
//!   renamed into place without its `fdatasync`, and openraft then purges the log it covers: a
//!   power cut leaves a node with neither.
//!
//! These are the bugs planted in storage, apply and the node on top of them. The consumers
//! plant theirs through their own switch (`consumers::planted`); the simulator names both
//! (`sim_tests::planted`).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::StoreError;
use crate::read::StateReader;
use crate::rules::UniqOp;
use crate::types::{AppendRequest, Conflict};

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// A frame of log entries is written without its `fdatasync` and reported flushed: an
    /// acknowledged entry can vanish on a power cut.
    AckBeforeDurable,
    /// The leader, which reports its own appends flushed before its fsync, counts a follower's
    /// answer before its own log is durable that far: a commit can rest on one synced copy.
    LeaderCountsItselfEarly,
    /// Uniqueness is decided by the HTTP side against the receiving node's local state, and
    /// apply no longer refuses a claim on a key another stream owns.
    UniqInHandler,
    /// Apply skips the idempotency lookup: a retried keyed request is appended twice.
    NoIdempotencyCheck,
    /// Linearizable reads skip the read index: a lagging or cut-off node serves a page that
    /// misses writes acknowledged before the read was sent.
    StaleLinearizableRead,
    /// A linearizable read whose page is full skips the read index.
    StaleFullPage,
    /// Apply reads the local clock: nodes stamp the same events with different times.
    ApplyReadsClock,
    /// A failed fsync of the log is retried, and the node carries on if the retry succeeds.
    RetryFailedFsync,
    /// A built snapshot is published without its `fdatasync`, before the log it covers is
    /// purged.
    SnapshotNotSynced,
}

impl Bug {
    pub const ALL: [Bug; 9] = [
        Bug::AckBeforeDurable,
        Bug::LeaderCountsItselfEarly,
        Bug::UniqInHandler,
        Bug::NoIdempotencyCheck,
        Bug::StaleLinearizableRead,
        Bug::StaleFullPage,
        Bug::ApplyReadsClock,
        Bug::RetryFailedFsync,
        Bug::SnapshotNotSynced,
    ];

    /// The name on the command line (`simulate --plant <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeDurable => "ack-before-durable",
            Bug::LeaderCountsItselfEarly => "leader-counts-itself-early",
            Bug::UniqInHandler => "uniq-in-handler",
            Bug::NoIdempotencyCheck => "no-idempotency-check",
            Bug::StaleLinearizableRead => "stale-linearizable-read",
            Bug::StaleFullPage => "stale-full-page",
            Bug::ApplyReadsClock => "apply-reads-clock",
            Bug::RetryFailedFsync => "retry-failed-fsync",
            Bug::SnapshotNotSynced => "snapshot-not-synced",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            Bug::AckBeforeDurable => 1,
            Bug::LeaderCountsItselfEarly => 5,
            Bug::UniqInHandler => 2,
            Bug::NoIdempotencyCheck => 3,
            Bug::StaleLinearizableRead => 4,
            Bug::StaleFullPage => 6,
            Bug::ApplyReadsClock => 7,
            Bug::RetryFailedFsync => 8,
            Bug::SnapshotNotSynced => 9,
        }
    }
}

/// 0: none; otherwise [`Bug::code`].
static PLANTED: AtomicU8 = AtomicU8::new(0);

/// Plant `bug` (or none) for the whole process. Set it before the simulation starts.
pub fn plant(bug: Option<Bug>) {
    PLANTED.store(bug.map_or(0, Bug::code), Ordering::SeqCst);
}

/// The bug planted in this process, if any.
pub fn planted() -> Option<Bug> {
    let code = PLANTED.load(Ordering::SeqCst);
    Bug::ALL.into_iter().find(|b| b.code() == code)
}

/// Whether `bug` is planted.
pub fn is(bug: Bug) -> bool {
    planted() == Some(bug)
}

/// [`Bug::UniqInHandler`], the handler's half: the first create or update claim of `req` whose
/// key another stream owns in this node's applied state, as the conflict apply would report.
/// The state read is whatever this node has applied: on a lagging follower, or between two
/// concurrent requests, it is stale, which is the bug.
pub fn uniq_conflict_here(
    reader: &StateReader,
    req: &AppendRequest,
) -> Result<Option<Conflict>, StoreError> {
    for e in &req.events {
        let Some(stream) = e.stream.as_deref() else {
            continue;
        };
        for claim in &e.claims {
            let new_key = match claim.op {
                UniqOp::Create => true,
                UniqOp::Update => claim.old_key.as_deref() != Some(claim.key.as_str()),
                UniqOp::Delete => false,
            };
            if !new_key {
                continue;
            }
            if let Some((owner, _)) = reader.uniq_owner(&claim.set, &claim.key)? {
                if owner != stream {
                    return Ok(Some(Conflict::Uniq {
                        set: claim.set.clone(),
                        key: claim.key.clone(),
                        owner,
                    }));
                }
            }
        }
    }
    Ok(None)
}
