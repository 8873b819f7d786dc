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
    #[error("corrupt record in {table} at {key}: {reason}")]
    Corrupt {
        table: String,
        key: String,
        reason: String,
    },
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The data on disk is in a layout or format this version does not read.
    #[error("{0}")]
    Unsupported(String),
    /// The log writer task is gone: the node is shutting down.
    #[error("the raft log writer stopped")]
    Stopped,
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
    pub(crate) fn corrupt(table: impl ToString, key: impl ToString, reason: impl ToString) -> Self {
        StoreError::Corrupt {
            table: table.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Wrap for openraft: which kind of storage access failed decides how openraft reports it.
pub(crate) fn logs_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}
pub(crate) fn logs_write(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}
pub(crate) fn vote_read(e: StoreError) -> StorageError<NodeId> {
    StorageIOError::read_vote(&e).into()
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
