//! The consumers' planted bugs, for the simulation only (this module exists under
//! `--cfg madsim` alone). Each breaks one guarantee of a consumer on purpose, so `sim-tests`
//! can show that its checkers notice; the simulator names these beside storage's
//! (`sim_tests::planted`). The switch is process-wide, set before the simulation starts.
//!
//! - [`Bug::MailCheckpointBeforeSend`]: the mail consumer (`mail/mod.rs`) reports its
//!   checkpoint past an event before delivering it, so a crash in between skips the email;
//! - [`Bug::ProjectionOutsideTxn`]: the query store (`query/store.rs`) commits a page's
//!   documents and its checkpoint in two transactions, the checkpoint's not durable, so a crash
//!   between them applies the page twice;
//! - [`Bug::MailResumesBehind`]: the mail consumer resumes one checkpoint interval before the
//!   checkpoint it read (as if it had read a stale copy), so after a crash it resends emails
//!   of events it had already handled and reported.

use std::sync::atomic::{AtomicU8, Ordering};

/// The bugs that can be planted in the consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The mail consumer reports its checkpoint past an event before it delivers the email.
    MailCheckpointBeforeSend,
    /// The query read model applies a page outside the transaction of its checkpoint.
    ProjectionOutsideTxn,
    /// The mail consumer resumes `checkpoint_every_events` before its checkpoint.
    MailResumesBehind,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::MailCheckpointBeforeSend,
        Bug::ProjectionOutsideTxn,
        Bug::MailResumesBehind,
    ];

    /// The name on the command line (`simulate --plant <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::MailCheckpointBeforeSend => "mail-checkpoint-before-send",
            Bug::ProjectionOutsideTxn => "projection-outside-txn",
            Bug::MailResumesBehind => "mail-resume-behind",
        }
    }

    fn code(self) -> u8 {
        match self {
            Bug::MailCheckpointBeforeSend => 1,
            Bug::ProjectionOutsideTxn => 2,
            Bug::MailResumesBehind => 3,
        }
    }
}

/// 0: none; otherwise [`Bug::code`].
static PLANTED: AtomicU8 = AtomicU8::new(0);

/// Plant `bug` (or none) in this process's consumers.
pub fn plant(bug: Option<Bug>) {
    PLANTED.store(bug.map_or(0, Bug::code), Ordering::SeqCst);
}

/// Whether `bug` is planted.
pub fn is(bug: Bug) -> bool {
    PLANTED.load(Ordering::SeqCst) == bug.code()
}
