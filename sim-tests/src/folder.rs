//! `SimFolder`: a simulated folder of files for the Raft log's segments, implementing
//! `raft_store::disk::Disk`. Each file is a [`SimDisk`] (a volatile and a durable image), and
//! the folder itself has a volatile listing (what the running node sees) and a durable one (as
//! of the last `sync_dir`): a file created, renamed or removed without a folder sync is undone
//! by a crash, as on a real file system.
//!
//! Faults reach the folder as they reach a single disk: a power cut (every file loses what it
//! did not sync, the listing goes back to its durable one), a power cut during the next sync
//! (the last unsynced write of the file being synced is torn; or every unsynced write of every
//! file lands whole, not at all or torn, each on its own, as a device that reorders and splits
//! what the page cache sends it may leave them), failing syncs, bit flips in what survived. Every handle of a folder opened before a crash or a reopen is fenced.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use raft_store::disk::{Disk, DiskFile};
use redb::StorageBackend;

use crate::disk::{DiskHandle, DiskStats, SimDisk};
use crate::space::Space;

type Landed = Box<dyn FnMut(usize) -> bool + Send>;

#[derive(Default)]
struct FolderState {
    epoch: u64,
    /// The listing the running node sees.
    volatile: BTreeMap<String, SimDisk>,
    /// The listing as of the last folder sync.
    durable: BTreeMap<String, SimDisk>,
    /// The file of the last write not yet synced, for a torn power cut.
    last_written: Option<SimDisk>,
    tear_armed: Option<Landed>,
    /// The armed power cut lands every unsynced write of every file on its own.
    scramble: bool,
    failing_syncs: u64,
    crashes: u64,
    sync_errors: u64,
    fenced_calls: u64,
    created: u64,
}

impl FolderState {
    /// Power cut. `torn`: the file whose last unsynced write is torn (with the sectors
    /// `landed` picks), or, with `scramble`, every unsynced write of every file lands whole,
    /// not at all or torn on its own (`SimDisk::crash_scrambled`, `landed` as the coin).
    fn crash(&mut self, torn: Option<(&SimDisk, &mut dyn FnMut(usize) -> bool)>) {
        self.epoch += 1;
        self.crashes += 1;
        let mut files: Vec<SimDisk> = self
            .volatile
            .values()
            .chain(self.durable.values())
            .cloned()
            .collect();
        // A file may be in both listings; crash each disk once.
        let mut seen: Vec<SimDisk> = Vec::new();
        files.retain(|f| {
            let new = !seen.iter().any(|s| s.same(f));
            if new {
                seen.push(f.clone());
            }
            new
        });
        let scramble = std::mem::take(&mut self.scramble);
        match torn {
            Some((_, landed)) if scramble => {
                for f in &files {
                    f.crash_scrambled(landed);
                }
            }
            Some((disk, landed)) => {
                disk.crash_torn(landed);
                for f in files.iter().filter(|f| !f.same(disk)) {
                    f.crash();
                }
            }
            None => {
                for f in &files {
                    f.crash();
                }
            }
        }
        self.volatile = self.durable.clone();
        self.last_written = None;
        self.tear_armed = None;
        self.failing_syncs = 0;
    }
}

/// One simulated folder. Cheap to clone: clones are the same folder.
#[derive(Clone)]
pub struct SimFolder {
    name: Arc<str>,
    state: Arc<Mutex<FolderState>>,
    /// The capacity the folder's files share with the node's other disks.
    space: Option<Space>,
}

impl fmt::Debug for SimFolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("SimFolder")
            .field("name", &self.name)
            .field("epoch", &s.epoch)
            .field("files", &s.volatile.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SimFolder {
    pub fn new(name: impl Into<String>) -> Self {
        SimFolder {
            name: name.into().into(),
            state: Arc::default(),
            space: None,
        }
    }

    /// This folder on `space`: the files it lists count there, and their growth fails past
    /// its limit.
    pub fn with_space(mut self, space: &Space) -> Self {
        let state = Arc::downgrade(&self.state);
        space.watch(Box::new(move || {
            let state = state.upgrade()?;
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            Some(s.volatile.values().map(SimDisk::len_now).sum())
        }));
        self.space = Some(space.clone());
        self
    }

    /// The files the running node sees.
    pub fn names(&self) -> Vec<String> {
        self.lock().volatile.keys().cloned().collect()
    }

    /// Bytes of the file `name` as the running node sees it (0 when it is not listed).
    pub fn file_len(&self, name: &str) -> u64 {
        self.lock().volatile.get(name).map_or(0, SimDisk::len_now)
    }

    fn lock(&self) -> MutexGuard<'_, FolderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for a new life of the node; every older handle is fenced from now on.
    pub fn open(&self) -> Arc<dyn Disk> {
        let mut s = self.lock();
        s.epoch += 1;
        Arc::new(FolderHandle {
            folder: self.clone(),
            epoch: s.epoch,
        })
    }

    /// Power cut: every file loses what it did not sync; the listing goes back to its last
    /// sync; every handle is fenced.
    pub fn crash(&self) {
        self.lock().crash(None);
    }

    /// Arm a power cut for the next `sync_data` of any file of the folder: the last write
    /// not yet synced is torn (`landed` picks its sectors), the sync fails.
    pub fn tear_at_next_sync(&self, landed: Landed) {
        let mut s = self.lock();
        s.tear_armed = Some(landed);
        s.scramble = false;
    }

    /// Arm a power cut for the next `sync_data` of any file of the folder: every write not yet
    /// synced, of every file, lands whole, not at all or torn on its own (`coin` decides).
    pub fn scramble_at_next_sync(&self, coin: Landed) {
        let mut s = self.lock();
        s.tear_armed = Some(coin);
        s.scramble = true;
    }

    pub fn tear_pending(&self) -> bool {
        self.lock().tear_armed.is_some()
    }

    /// The next `n` syncs of any file fail (until a crash).
    pub fn fail_syncs(&self, n: u64) {
        self.lock().failing_syncs = n;
    }

    fn files_durable(&self) -> Vec<SimDisk> {
        self.lock().durable.values().cloned().collect()
    }

    pub fn stats(&self) -> DiskStats {
        let s = self.lock();
        let mut out = DiskStats::default();
        for f in s.volatile.values() {
            let fs = f.stats();
            out.writes += fs.writes;
            out.syncs += fs.syncs;
            out.lost_pages += fs.lost_pages;
            out.torn_writes += fs.torn_writes;
            out.torn_sectors_kept += fs.torn_sectors_kept;
            out.fenced_calls += fs.fenced_calls;
        }
        out.crashes = s.crashes;
        out.sync_errors = s.sync_errors;
        out.fenced_calls += s.fenced_calls;
        out.opens = s.epoch;
        out
    }

    /// Flip bit `bit` of byte `at` of what survived the last sync, counting through the
    /// durable files in name order, each without the zeros it ends in. Only on a crashed
    /// folder.
    pub fn flip_bit(&self, at: usize, bit: u8) {
        let mut at = at;
        for f in self.files_durable() {
            let len = f.data_len() as usize;
            if at < len {
                f.flip_bit(at, bit);
                return;
            }
            at -= len;
        }
    }

    /// Bytes `flip_bit` counts through: every durable file without the zeros it ends in.
    pub fn flippable_len(&self) -> u64 {
        self.files_durable().iter().map(SimDisk::data_len).sum()
    }

    pub fn unsynced_pages(&self) -> usize {
        self.lock()
            .volatile
            .values()
            .map(SimDisk::unsynced_pages)
            .sum()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One life's view of the folder.
struct FolderHandle {
    folder: SimFolder,
    epoch: u64,
}

impl FolderHandle {
    fn live(&self) -> io::Result<MutexGuard<'_, FolderState>> {
        let mut s = self.folder.lock();
        if s.epoch != self.epoch {
            s.fenced_calls += 1;
            return Err(io::Error::other(format!(
                "folder {}: a handle of epoch {} is fenced (at {}): the node crashed",
                self.folder.name, self.epoch, s.epoch
            )));
        }
        Ok(s)
    }
}

impl Disk for FolderHandle {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut s = self.live()?;
        let disk = match s.volatile.get(name) {
            Some(d) => d.clone(),
            None if create => {
                s.created += 1;
                let mut d = SimDisk::new(format!("{}/{name}#{}", self.folder.name, s.created));
                if let Some(space) = &self.folder.space {
                    d = d.limited_by(space);
                }
                s.volatile.insert(name.to_string(), d.clone());
                d
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}/{name}: no such file", self.folder.name),
                ))
            }
        };
        Ok(Arc::new(FolderFile {
            handle: disk.open_shared(),
            disk,
            folder: self.folder.clone(),
            epoch: self.epoch,
        }))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.live()?.volatile.keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.live()?
            .volatile
            .remove(name)
            .map(drop)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.live()?;
        let d = s
            .volatile
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        s.volatile.insert(to.to_string(), d);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.live()?;
        s.durable = s.volatile.clone();
        Ok(())
    }

    fn describe(&self) -> String {
        self.folder.name.to_string()
    }
}

/// One open file of the folder.
struct FolderFile {
    disk: SimDisk,
    handle: DiskHandle,
    folder: SimFolder,
    epoch: u64,
}

impl FolderFile {
    fn check(&self) -> io::Result<()> {
        let mut s = self.folder.lock();
        if s.epoch != self.epoch {
            s.fenced_calls += 1;
            return Err(io::Error::other(format!(
                "{}: the folder's handle is fenced: the node crashed",
                self.disk.name()
            )));
        }
        Ok(())
    }
}

impl DiskFile for FolderFile {
    fn len(&self) -> io::Result<u64> {
        self.check()?;
        StorageBackend::len(&self.handle)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check()?;
        self.handle.read(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let end = offset + data.len() as u64;
        if end > StorageBackend::len(&self.handle)? {
            self.handle.set_len(end)?;
        }
        self.handle.write(offset, data)?;
        self.folder.lock().last_written = Some(self.disk.clone());
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.handle.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        let mut s = self.folder.lock();
        if let Some(mut landed) = s.tear_armed.take() {
            let torn = s.last_written.clone().unwrap_or_else(|| self.disk.clone());
            s.crash(Some((&torn, &mut *landed)));
            return Err(io::Error::other(format!(
                "folder {}: power cut during sync_data",
                self.folder.name
            )));
        }
        if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            s.sync_errors += 1;
            self.disk.forget_dirty();
            return Err(io::Error::other(format!(
                "{}: sync_data failed (injected I/O error)",
                self.disk.name()
            )));
        }
        drop(s);
        self.handle.sync_data()?;
        let mut s = self.folder.lock();
        if s.last_written
            .as_ref()
            .is_some_and(|d| d.name() == self.disk.name())
        {
            s.last_written = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_bytes_of_files_the_folder_synced() {
        let folder = SimFolder::new("log");
        let d = folder.open();
        let a = d.open("a", true).unwrap();
        a.write_at(0, b"kept").unwrap();
        a.sync_data().unwrap();
        d.sync_dir().unwrap();
        a.write_at(4, b" lost").unwrap();
        let b = d.open("b", true).unwrap();
        b.write_at(0, b"unlisted").unwrap();
        b.sync_data().unwrap();
        folder.crash();
        assert!(a.write_at(0, b"x").is_err(), "fenced");
        let d = folder.open();
        assert_eq!(d.list().unwrap(), vec!["a".to_string()]);
        let a = d.open("a", false).unwrap();
        assert_eq!(a.len().unwrap(), 4);
        let mut buf = [0u8; 4];
        a.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"kept");
    }

    #[test]
    fn renames_and_removals_need_a_folder_sync_to_last() {
        let folder = SimFolder::new("log");
        let d = folder.open();
        let t = d.open("tmp", true).unwrap();
        t.write_at(0, b"v1").unwrap();
        t.sync_data().unwrap();
        d.rename("tmp", "state").unwrap();
        d.sync_dir().unwrap();
        d.remove("state").unwrap();
        folder.crash();
        let d = folder.open();
        assert_eq!(d.list().unwrap(), vec!["state".to_string()]);
    }

    #[test]
    fn a_torn_sync_loses_what_was_not_synced_and_fails() {
        let folder = SimFolder::new("log");
        let d = folder.open();
        let a = d.open("a", true).unwrap();
        a.write_at(0, &[1u8; 1024]).unwrap();
        a.sync_data().unwrap();
        d.sync_dir().unwrap();
        a.write_at(1024, &[2u8; 1024]).unwrap();
        folder.tear_at_next_sync(Box::new(|_| true));
        assert!(a.sync_data().is_err());
        assert!(!folder.tear_pending());
        let d = folder.open();
        // Past the durable length the growth itself was not synced: nothing of it landed.
        assert_eq!(d.open("a", false).unwrap().len().unwrap(), 1024);
        assert_eq!(folder.stats().crashes, 1);
    }

    #[test]
    fn a_scrambled_sync_lands_each_files_writes_on_their_own() {
        let folder = SimFolder::new("log");
        let d = folder.open();
        let (a, b) = (d.open("a", true).unwrap(), d.open("b", true).unwrap());
        for f in [&a, &b] {
            f.write_at(0, &[1u8; 1024]).unwrap();
            f.sync_data().unwrap();
        }
        d.sync_dir().unwrap();
        a.write_at(0, &[2u8; 512]).unwrap();
        b.write_at(512, &[3u8; 512]).unwrap();
        // Every draw says yes: each write lands whole, on both files, not only the one synced.
        folder.scramble_at_next_sync(Box::new(|_| true));
        assert!(a.sync_data().is_err());
        let d = folder.open();
        let mut buf = [0u8; 1024];
        d.open("a", false).unwrap().read_at(0, &mut buf).unwrap();
        assert_eq!((buf[0], buf[600]), (2, 1));
        d.open("b", false).unwrap().read_at(0, &mut buf).unwrap();
        assert_eq!((buf[0], buf[600]), (1, 3));
    }
}
