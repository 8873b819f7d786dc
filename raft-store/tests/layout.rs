//! The files of a data dir: the Raft log apart from the state machine, and a clear refusal of
//! the older layout that kept both in one file.

use raft_store::{Storage, StoreError, DATA_FILE, LOG_FILE};
use redb::{Database, TableDefinition};

#[test]
fn the_log_and_the_state_have_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open(dir.path()).unwrap());
    assert!(dir.path().join(LOG_FILE).is_file());
    assert!(dir.path().join(DATA_FILE).is_file());
    // Opening again finds them.
    drop(Storage::open(dir.path()).unwrap());
}

#[test]
fn a_data_dir_with_the_log_inside_the_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = Database::create(dir.path().join(DATA_FILE)).unwrap();
    let meta: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
    let txn = legacy.begin_write().unwrap();
    txn.open_table(meta)
        .unwrap()
        .insert(
            "vote",
            br#"{"leader_id":{"term":3,"node_id":1},"committed":true}"#.as_slice(),
        )
        .unwrap();
    txn.commit().unwrap();
    drop(legacy);
    match Storage::open(dir.path()) {
        Err(StoreError::Unsupported(msg)) => {
            assert!(
                msg.contains(DATA_FILE) && msg.contains("older uniqlog"),
                "{msg}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a legacy data dir was opened: its vote would be forgotten"),
    }
    assert!(!dir.path().join(LOG_FILE).exists(), "nothing was created");
}
