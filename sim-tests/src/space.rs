//! `Space`: the capacity of one simulated node's disk, shared by the three simulated disks on
//! it (the log's folder, the state file, the snapshot folder), as they would share one file
//! system. Unlimited until the nemesis sets a limit (`FaultKind::DiskFull`); past the limit, a
//! write that would grow a file fails as a full file system fails it (`ENOSPC`,
//! `io::ErrorKind::StorageFull`), whatever file it is. The node reads the free space through
//! [`raft_store::SpaceProbe`], as it reads `statvfs` on a machine, so its refusal of writes
//! below `disk_free_min_bytes` meets the same disk its writes do.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many bytes one of the disks holds now (its files' lengths, unsynced growth
/// included); `None` once that disk is gone.
type Usage = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// One node's disk capacity. Cheap to clone: clones are the same capacity.
#[derive(Clone, Default)]
pub struct Space(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Bytes the disks may hold together; `None`: no limit.
    limit: Mutex<Option<u64>>,
    disks: Mutex<Vec<Usage>>,
    /// Writes refused for want of space, over the run.
    refused: AtomicU64,
}

impl Space {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count `usage` (one disk's bytes) in what the disks hold.
    pub(crate) fn watch(&self, usage: Usage) {
        self.0.disks.lock().unwrap().push(usage);
    }

    /// Bytes the disks hold now.
    pub fn used(&self) -> u64 {
        self.0
            .disks
            .lock()
            .unwrap()
            .iter()
            .filter_map(|u| u())
            .sum()
    }

    /// From now on the disks hold at most `bytes` together (less than they hold: every
    /// growth fails until files shrink or the limit goes).
    pub fn limit(&self, bytes: u64) {
        *self.0.limit.lock().unwrap() = Some(bytes);
    }

    /// Space freed: no limit any more.
    pub fn unlimit(&self) {
        *self.0.limit.lock().unwrap() = None;
    }

    /// Bytes that may still be written; `None` without a limit.
    pub fn free(&self) -> Option<u64> {
        let limit = (*self.0.limit.lock().unwrap())?;
        Some(limit.saturating_sub(self.used()))
    }

    /// Writes refused for want of space so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Whether `file` may grow by `growth` bytes. Called with no disk's lock held: counting
    /// what the disks hold takes each of them.
    pub(crate) fn grow(&self, file: &str, growth: u64) -> io::Result<()> {
        if growth == 0 {
            return Ok(());
        }
        match self.free() {
            Some(free) if growth > free => {
                self.0.refused.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("{file}: no space left on device ({growth} bytes asked, {free} free)"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What the node reads of its disk: [`Space`], and the size of its current snapshot.
pub struct Probe {
    pub space: Space,
    pub snapshot_len: Box<dyn Fn() -> u64 + Send + Sync>,
    pub name: String,
}

impl raft_store::SpaceProbe for Probe {
    fn free(&self) -> Option<u64> {
        self.space.free()
    }

    fn snapshot_len(&self) -> u64 {
        (self.snapshot_len)()
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;
    use crate::folder::SimFolder;
    use redb::StorageBackend;

    #[test]
    fn the_disks_of_a_node_fill_together_and_writes_past_the_limit_fail_whole() {
        let space = Space::new();
        let state = SimDisk::new("state").with_space(&space);
        let folder = SimFolder::new("log").with_space(&space);
        let h = state.open();
        h.set_len(1000).unwrap();
        let d = folder.open();
        let f = d.open("seg", true).unwrap();
        f.write_at(0, &[7; 500]).unwrap();
        assert_eq!(space.used(), 1500);

        space.limit(1600);
        assert_eq!(space.free(), Some(100));
        // Past the limit: refused, and the file did not grow.
        let e = f.write_at(500, &[7; 200]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.len().unwrap(), 500);
        assert_eq!(
            h.set_len(1200).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        // Within the file, or within the limit: written.
        f.write_at(0, &[8; 500]).unwrap();
        f.write_at(500, &[8; 100]).unwrap();
        assert_eq!(space.free(), Some(0));
        assert_eq!(space.refused(), 2);
        // A crash gives back the unsynced growth; removing a file gives back its bytes.
        folder.crash();
        assert_eq!(space.used(), 1000);
        state.crash();
        assert_eq!(space.used(), 0);

        space.unlimit();
        assert_eq!(space.free(), None);
        let d = folder.open();
        d.open("big", true)
            .unwrap()
            .write_at(0, &[1; 10_000])
            .unwrap();
        assert_eq!(space.used(), 10_000);
        d.remove("big").unwrap();
        assert_eq!(space.used(), 0);
    }
}
