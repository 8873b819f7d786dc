//! `SimDisk`: an in-memory redb [`StorageBackend`] that loses unsynced writes on a crash.
//!
//! The disk keeps two images of the file: the *volatile* one (what reads see: every write so
//! far) and the *durable* one (what survived the last `sync_data`). `sync_data` makes the
//! durable image equal to the volatile one; [`SimDisk::crash`] throws the volatile image away
//! and goes back to the durable one, as a power cut would.
//!
//! The disk lives outside the simulated node, so a restarted node reopens the same disk.
//! Every [`SimDisk::open`] hands out a [`DiskHandle`] stamped with the disk's current epoch;
//! `open` and `crash` both bump the epoch, and any call through a handle of an older epoch
//! fails with an I/O error and changes nothing. That fences the killed node's redb `Database`,
//! which madsim drops some time after the kill and whose `Drop` still tries to write.
//!
//! The model is the simple one: no torn writes, a crash keeps exactly what was synced.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// Granularity of the dirty-page tracking (only the syncing cost depends on it).
const PAGE: usize = 4096;

/// Counters, for reports and for tests of the disk itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskStats {
    pub opens: u64,
    pub crashes: u64,
    pub writes: u64,
    pub syncs: u64,
    /// Calls refused because they came through a fenced (stale) handle.
    pub fenced_calls: u64,
    /// Bytes written but not yet synced that the crashes threw away (page granularity).
    pub lost_pages: u64,
}

#[derive(Default)]
struct State {
    epoch: u64,
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Pages of `volatile` that may differ from `durable`.
    dirty: BTreeSet<usize>,
    stats: DiskStats,
}

impl State {
    fn mark(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        for p in start / PAGE..=(end - 1) / PAGE {
            self.dirty.insert(p);
        }
    }
}

/// One simulated disk holding one redb file. Cheap to clone: clones are the same disk.
#[derive(Clone)]
pub struct SimDisk {
    name: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("SimDisk")
            .field("name", &self.name)
            .field("epoch", &s.epoch)
            .field("len", &s.volatile.len())
            .field("durable_len", &s.durable.len())
            .field("dirty_pages", &s.dirty.len())
            .finish()
    }
}

impl SimDisk {
    pub fn new(name: impl Into<String>) -> Self {
        SimDisk {
            name: name.into().into(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure anyway; keep the data reachable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for a new `Database`; every older handle is fenced from now on.
    pub fn open(&self) -> DiskHandle {
        let mut s = self.lock();
        s.epoch += 1;
        s.stats.opens += 1;
        DiskHandle {
            disk: self.clone(),
            epoch: s.epoch,
        }
    }

    /// Power cut: unsynced writes are lost and every open handle is fenced.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.epoch += 1;
        s.stats.crashes += 1;
        s.stats.lost_pages += s.dirty.len() as u64;
        s.volatile = s.durable.clone();
        s.dirty.clear();
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Length of the file as a crash now would leave it.
    pub fn durable_len(&self) -> u64 {
        self.lock().durable.len() as u64
    }

    /// Bytes written since the last sync (at page granularity).
    pub fn unsynced_pages(&self) -> usize {
        self.lock().dirty.len()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What one redb `Database` uses: the disk plus the epoch it was opened in.
pub struct DiskHandle {
    disk: SimDisk,
    epoch: u64,
}

impl fmt::Debug for DiskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskHandle")
            .field("disk", &self.disk.name)
            .field("epoch", &self.epoch)
            .finish()
    }
}

fn out_of_range(what: &str, offset: u64, len: usize, file_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} of {len} bytes at {offset} is past the end of the file ({file_len} bytes)"),
    )
}

impl DiskHandle {
    /// The disk state, or an error if this handle is stale.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let mut s = self.disk.lock();
        if s.epoch != self.epoch {
            s.stats.fenced_calls += 1;
            return Err(io::Error::other(format!(
                "disk {}: handle of epoch {} is fenced (disk is at epoch {}): the node crashed",
                self.disk.name, self.epoch, s.epoch
            )));
        }
        Ok(s)
    }
}

impl StorageBackend for DiskHandle {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.live()?.volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.live()?;
        let file_len = s.volatile.len();
        let start = usize::try_from(offset)
            .map_err(|_| out_of_range("read", offset, out.len(), file_len))?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| s.volatile.get(start..end))
            .ok_or_else(|| out_of_range("read", offset, out.len(), file_len))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.live()?;
        let new = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        let old = s.volatile.len();
        s.volatile.resize(new, 0);
        // Shrinking then growing again must read zeros, on the durable image too.
        s.mark(old.min(new), old.max(new));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.live()?;
        let s = &mut *s;
        let len = s.volatile.len();
        s.durable.resize(len, 0);
        for &p in &s.dirty {
            let start = p * PAGE;
            let end = (start + PAGE).min(len);
            if start < end {
                s.durable[start..end].copy_from_slice(&s.volatile[start..end]);
            }
        }
        s.dirty.clear();
        s.stats.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.live()?;
        let file_len = s.volatile.len();
        let start = usize::try_from(offset)
            .map_err(|_| out_of_range("write", offset, data.len(), file_len))?;
        let end = start
            .checked_add(data.len())
            .filter(|&end| end <= file_len)
            .ok_or_else(|| out_of_range("write", offset, data.len(), file_len))?;
        s.volatile[start..end].copy_from_slice(data);
        s.mark(start, end);
        s.stats.writes += 1;
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        // Nothing to release; a stale handle's close is refused like any other call.
        self.live().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_writes() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(3 * PAGE as u64).unwrap();
        h.write(10, b"synced").unwrap();
        h.sync_data().unwrap();
        h.write(PAGE as u64 + 5, b"lost").unwrap();
        h.set_len(4 * PAGE as u64).unwrap();
        disk.crash();
        assert!(h.write(0, b"x").is_err(), "stale handle must be fenced");
        assert!(h.sync_data().is_err());
        let h2 = disk.open();
        assert_eq!(h2.len().unwrap(), 3 * PAGE as u64);
        let mut buf = [0u8; 6];
        h2.read(10, &mut buf).unwrap();
        assert_eq!(&buf, b"synced");
        let mut buf = [0u8; 4];
        h2.read(PAGE as u64 + 5, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
        assert_eq!(disk.stats().fenced_calls, 2);
    }

    #[test]
    fn shrink_then_grow_reads_zeros_after_sync_and_crash() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(2 * PAGE as u64).unwrap();
        h.write(PAGE as u64 + 1, b"old").unwrap();
        h.sync_data().unwrap();
        h.set_len(PAGE as u64).unwrap();
        h.set_len(2 * PAGE as u64).unwrap();
        h.sync_data().unwrap();
        disk.crash();
        let h = disk.open();
        let mut buf = [1u8; 3];
        h.read(PAGE as u64 + 1, &mut buf).unwrap();
        assert_eq!(buf, [0; 3]);
    }

    #[test]
    fn open_fences_the_previous_handle() {
        let disk = SimDisk::new("t");
        let old = disk.open();
        old.set_len(8).unwrap();
        let new = disk.open();
        assert!(old.write(0, b"x").is_err());
        assert_eq!(new.len().unwrap(), 8);
    }

    #[test]
    fn reads_and_writes_past_the_end_fail() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(4).unwrap();
        assert!(h.write(2, b"abc").is_err());
        let mut buf = [0u8; 5];
        assert!(h.read(0, &mut buf).is_err());
        assert!(h.read(u64::MAX, &mut buf[..1]).is_err());
    }

    #[test]
    fn redb_survives_a_crash_with_its_last_durable_commit() {
        use redb::{Database, Durability, ReadableDatabase, TableDefinition};
        const T: TableDefinition<u64, u64> = TableDefinition::new("t");
        let disk = SimDisk::new("t");
        {
            let db = Database::builder()
                .create_with_backend(disk.open())
                .unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            txn.open_table(T).unwrap().insert(1, 1).unwrap();
            txn.commit().unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::None).unwrap();
            txn.open_table(T).unwrap().insert(2, 2).unwrap();
            txn.commit().unwrap();
            disk.crash();
            // `db` is dropped here, after the crash: its writes must be refused.
        }
        let db = Database::builder()
            .create_with_backend(disk.open())
            .unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().map(|v| v.value()), Some(1));
        assert_eq!(t.get(2).unwrap().map(|v| v.value()), None);
    }
}
