//! The store on simulated disks that share one capacity (`sim_tests::space`), filled up (a
//! normal test, no madsim needed): the node reads the free space its writes meet, a log write
//! or a snapshot build past the limit fails as `ENOSPC` without leaving a temporary file
//! behind, and once space is freed the same work succeeds and nothing written before is lost.
#![cfg(not(madsim))]

use std::sync::Arc;

use openraft::RaftSnapshotBuilder;
use raft_store::Storage;
use sim_tests::disk::SimDisk;
use sim_tests::folder::SimFolder;
use sim_tests::space::{Probe, Space};

mod common;
use common::entry;

#[tokio::test(flavor = "current_thread")]
async fn a_full_disk_fails_writes_and_builds_cleanly_and_they_succeed_once_space_is_freed() {
    let space = Space::new();
    let log = SimFolder::new("log").with_space(&space);
    let state = SimDisk::new("state").with_space(&space);
    let snapshots = SimFolder::new("snapshots").with_space(&space);
    let mut storage = Storage::open_with(log.open(), state.open(), snapshots.open()).unwrap();
    storage.disk = raft_store::DiskSpace::probe(Arc::new(Probe {
        space: space.clone(),
        snapshot_len: Box::new({
            let s = snapshots.clone();
            move || s.file_len(raft_store::SNAPSHOT_FILE)
        }),
        name: "the test's disk".into(),
    }));
    let entries: Vec<_> = (1..=20).map(|i| entry(1, i, 200)).collect();
    storage.log_and_apply(entries).await.unwrap();
    let used = space.used();
    assert!(used > 0);
    assert_eq!(space.free(), None, "no limit yet");

    // Full: the node's measure of free space says so, and refuses what writes need. (Its
    // first measure: a measure that allowed writes would stand for 100 ms.)
    space.limit(used);
    let low = storage.disk.check(1024).unwrap_err();
    assert_eq!((low.free, low.needed), (0, 1024));
    assert!(low.to_string().contains("the test's disk"), "{low}");

    // A snapshot build fails as ENOSPC and leaves no temporary file behind.
    let mut builder = storage.state_machine.clone();
    let e = builder.build_snapshot().await.unwrap_err();
    assert!(e.to_string().contains("no space left on device"), "{e}");
    let left = snapshots.names();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");
    assert!(space.refused() >= 1);

    // Freed: the build succeeds, and its size now counts in what writes need.
    space.unlimit();
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(20));
    let snapshot_len = snapshots.file_len(raft_store::SNAPSHOT_FILE);
    assert!(snapshot_len > 0);
    space.limit(space.used() + 1024);
    let low = storage.disk.check(1024).unwrap_err();
    assert_eq!(low.needed, 1024 + snapshot_len);
    space.unlimit();
    assert!(storage.disk.check(1024).is_ok());
    let page = storage.reader.read_topic("t", 0, 100).unwrap();
    assert_eq!(
        page.events.len(),
        20,
        "nothing written before the disk filled is lost"
    );
}
