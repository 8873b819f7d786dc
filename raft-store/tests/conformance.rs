//! openraft's own storage conformance suite, run against the redb log and state machine.
#![cfg(not(madsim))]

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raft_store::{LogStore, NodeId, StateMachine, Storage, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let storage = Storage::open(dir.path()).expect("open storage");
        Ok((dir, storage.log, storage.state_machine))
    }
}

#[test]
fn redb_storage_passes_openraft_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
