//! Errors of the storage layer.

use openraft::{StorageError, StorageIOError};

use crate::types::NodeId;

/// A failure of the node's own storage (never a client's fault).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A record whose checksum or shape is wrong: the data cannot be trusted.
    #[error("damaged record in {file}, table {table}, key {key}: {reason}")]
    Corrupt {
        file: String,
        table: String,
        key: String,
        reason: String,
    },
    /// A file redb itself found damaged (a page checksum), before any record could be named.
    #[error("damaged file {file}: {detail}")]
    DamagedFile { file: String, detail: String },
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A panic in uniqlog's own code while it read its files: a bug to report, not damage
    /// (the data on disk is not known to be bad). Damage is what a checksum or a decoder says.
    #[error("a bug in uniqlog while {what}: {detail}; the data on disk is not known to be damaged, please report this")]
    Bug { what: String, detail: String },
    /// The data on disk is in a layout or format this version does not read.
    #[error("{0}")]
    Unsupported(String),
    /// The log writer task is gone: the node is shutting down.
    #[error("the raft log writer stopped")]
    Stopped,
    /// An applied event's entry is not in this node's log (yet): a follower brought back at
    /// an older log catches up from its leader.
    #[error("entry {index} is not in this node's log yet; it is catching up")]
    EntryMissing { index: u64 },
    /// A read met a checkpoint that dropped changes its view of the state file lacked
    /// (`crate::live`): read again. Never leaves the storage crate's readers.
    #[error("the state changed under a read; read again")]
    Retry,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl StoreError {
    /// A damaged record of `table`, in the file that holds that table.
    pub(crate) fn corrupt(table: &str, key: impl ToString, reason: impl ToString) -> Self {
        let file = match table {
            "raft_log" | "raft_meta" => crate::LOG_DIR,
            _ => crate::DATA_FILE,
        };
        StoreError::Corrupt {
            file: file.to_string(),
            table: table.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// A damaged record names its file by its role (`corrupt`); name the path instead.
    pub(crate) fn in_file(self, path: &str) -> Self {
        match self {
            StoreError::Corrupt {
                table, key, reason, ..
            } => StoreError::Corrupt {
                file: path.into(),
                table,
                key,
                reason,
            },
            e => e,
        }
    }

    /// Whether this error means the node's data is damaged (as opposed to an I/O failure or
    /// a full disk): such a node must stop and be rebuilt, never retried or repaired in place.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::DamagedFile { .. }
                | StoreError::Redb(redb::Error::Corrupted(_))
        )
    }
}

/// Wrap for openraft: which kind of storage access failed decides how openraft reports it.
pub(crate) fn logs_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}
pub(crate) fn logs_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}
pub(crate) fn vote_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_vote(&e).into()
}
pub(crate) fn sm_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}
pub(crate) fn sm_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}
pub(crate) fn snapshot_err(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}
