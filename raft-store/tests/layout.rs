//! The files of a data dir: the Raft log (segment files under `log/`) apart from the state
//! machine, and clear refusals of the older layouts: both in one file, and the log in a redb
//! file of its own.

use raft_store::{Storage, StoreError, DATA_FILE, LEGACY_LOG_FILE, LOG_DIR};
use redb::{Database, TableDefinition};

#[test]
fn the_log_and_the_state_have_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open(dir.path()).unwrap());
    assert!(dir.path().join(LOG_DIR).is_dir());
    assert!(dir.path().join(DATA_FILE).is_file());
    // Opening again finds them.
    drop(Storage::open(dir.path()).unwrap());
}

#[test]
fn a_data_dir_with_the_log_in_a_redb_file_is_refused_with_the_way_to_migrate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LEGACY_LOG_FILE), b"an old log").unwrap();
    match Storage::open(dir.path()) {
        Err(StoreError::Unsupported(msg)) => assert!(
            msg.contains(LEGACY_LOG_FILE)
                && msg.contains("uniqlog backup")
                && msg.contains("uniqlog restore"),
            "{msg}"
        ),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a data dir of the previous format was opened"),
    }
    assert!(!dir.path().join(LOG_DIR).exists(), "nothing was created");
    assert!(!dir.path().join(DATA_FILE).exists(), "nothing was created");
}

#[test]
fn a_segment_of_another_format_version_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open(dir.path()).unwrap());
    let mut header = Vec::new();
    header.extend_from_slice(b"UQLOGSEG");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    let segment = dir.path().join(LOG_DIR).join("00000000000000000001.seg");
    std::fs::write(&segment, &header).unwrap();
    match Storage::open(dir.path()) {
        Err(StoreError::Unsupported(msg)) => {
            assert!(msg.contains("format 3") && msg.contains("backup"), "{msg}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a segment of another format was opened"),
    }
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
    assert!(!dir.path().join(LOG_DIR).exists(), "nothing was created");
}

/// Format 2 differs from format 3 only in what a run may span (format 3 joins the appends of
/// an entry): this build reads a format-2 file as it is and stamps it 3 at open, so the build
/// that wrote it refuses it from then on rather than misread a joined run.
#[test]
fn a_format_2_state_file_is_upgraded_in_place_at_open() {
    let format: TableDefinition<&str, u64> = TableDefinition::new("format");
    let dir = tempfile::tempdir().unwrap();
    drop(Storage::open(dir.path()).unwrap());
    let path = dir.path().join(DATA_FILE);
    let stamp = |version: Option<u64>| {
        use redb::ReadableTable;
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let found = {
            let mut t = txn.open_table(format).unwrap();
            if let Some(v) = version {
                t.insert("version", v).unwrap();
            }
            let found = t.get("version").unwrap().map(|g| g.value());
            found
        };
        txn.commit().unwrap();
        found
    };
    assert_eq!(stamp(Some(2)), Some(2));
    drop(Storage::open(dir.path()).expect("a format-2 file opens"));
    assert_eq!(stamp(None), Some(3), "stamped with this build's format");
}

/// A state file with tables but no `format` table (written before checksums), or stamped
/// with a format this build does not know, is refused by name; nothing in it is touched.
/// Format 1 (events copied into the state file) is refused with the way to migrate: backup
/// with the old build, restore with this one.
#[test]
fn files_of_another_on_disk_format_are_refused() {
    let format: TableDefinition<&str, u64> = TableDefinition::new("format");
    for (file, stamp) in [
        (DATA_FILE, None),
        (DATA_FILE, Some(99u64)),
        (DATA_FILE, Some(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path()).unwrap());
        let path = dir.path().join(file);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            match stamp {
                None => {
                    txn.delete_table(format).unwrap();
                }
                Some(v) => {
                    txn.open_table(format)
                        .unwrap()
                        .insert("version", v)
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        match Storage::open(dir.path()) {
            Err(StoreError::Unsupported(msg)) => {
                let version = stamp.unwrap_or(0);
                assert!(msg.contains(file), "{msg}");
                assert!(msg.contains(&format!("on-disk format {version}")), "{msg}");
                if version == 1 {
                    assert!(msg.contains("uniqlog backup --to FILE"), "{msg}");
                    assert!(msg.contains("uniqlog restore --from FILE"), "{msg}");
                } else {
                    assert!(msg.contains("reads format 3 only"), "{msg}");
                }
            }
            Err(e) => panic!("{file} {stamp:?}: wrong error: {e}"),
            Ok(_) => panic!("{file} {stamp:?}: a file of another format was opened"),
        }
        // The integrity check at open may commit (it rebuilds redb's allocator state), but
        // the refused file's tables are as they were.
        let db = Database::create(&path).unwrap();
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let found = match txn.open_table(format) {
            Ok(t) => t.get("version").unwrap().map(|g| g.value()),
            Err(_) => None,
        };
        assert_eq!(found, stamp, "{file}: the format table changed");
    }
}
