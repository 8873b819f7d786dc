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
//! Two ways for the disk to lie, as real ones do:
//! - [`SimDisk::crash_torn`]: a power cut during the last write since the last sync. That write
//!   lands in part: each of its 512-byte sectors reached the platter or not (a sector itself is
//!   written whole, the usual assumption of storage engines and of redb's checksummed commit
//!   slots); every other unsynced write is lost.
//! - [`SimDisk::fail_syncs`]: the next `sync_data` calls fail with an I/O error and make
//!   nothing durable, and, as Linux may, the writes they covered are marked clean without
//!   reaching the disk: a later fsync succeeds and a crash still loses them. After a failed
//!   fsync the only safe belief is that nothing since the last good one is on disk.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use crate::space::Space;

/// Granularity of the dirty-page tracking (only the syncing cost depends on it).
const PAGE: usize = 4096;
/// The unit a torn write is torn in: a sector is written whole or not at all.
pub const SECTOR: usize = 512;

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
    /// Crashes that tore the last write.
    pub torn_writes: u64,
    /// Sectors of torn writes that landed anyway.
    pub torn_sectors_kept: u64,
    /// `sync_data` calls that failed on purpose.
    pub sync_errors: u64,
}

#[derive(Default)]
struct State {
    epoch: u64,
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Pages of `volatile` that may differ from `durable`.
    dirty: BTreeSet<usize>,
    /// The writes since the last sync (offset, bytes), in order, for a torn or scrambled
    /// crash.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// How many coming `sync_data` calls fail.
    failing_syncs: u64,
    /// A power cut waiting for the next `sync_data` (see [`SimDisk::tear_at_next_sync`]).
    tear_armed: Option<Box<dyn FnMut(usize) -> bool + Send>>,
    /// The armed power cut lands every unsynced write on its own (`State::crash_scrambled`),
    /// not only the last one torn.
    scramble: bool,
    stats: DiskStats,
}

impl State {
    fn crash(&mut self) {
        self.epoch += 1;
        self.stats.crashes += 1;
        self.stats.lost_pages += self.dirty.len() as u64;
        self.volatile = self.durable.clone();
        self.dirty.clear();
        self.unsynced.clear();
        self.failing_syncs = 0;
        self.tear_armed = None;
        self.scramble = false;
    }

    fn crash_torn(&mut self, landed: &mut dyn FnMut(usize) -> bool) -> usize {
        let torn = self.unsynced.pop();
        self.crash();
        let Some((offset, data)) = torn else {
            return 0;
        };
        self.stats.torn_writes += 1;
        let mut kept = 0;
        // Sectors are aligned to the file, not to the write: a write that starts mid-sector
        // lands its first part with the rest of that sector.
        let end = offset + data.len();
        let mut start = offset;
        let mut i = 0;
        while start < end {
            let stop = ((start / SECTOR + 1) * SECTOR).min(end);
            // Past the durable length the file's growth itself was not synced.
            if stop <= self.durable.len() && landed(i) {
                let (from, to) = (start - offset, stop - offset);
                self.durable[start..stop].copy_from_slice(&data[from..to]);
                kept += 1;
            }
            start = stop;
            i += 1;
        }
        self.stats.torn_sectors_kept += kept as u64;
        self.volatile = self.durable.clone();
        kept
    }

    /// Power cut with every write since the last sync in flight: the device may have taken
    /// them in any order and split them, so each lands whole, not at all, or torn (some of its
    /// sectors), decided on its own by `coin` (called in a fixed order, so a seed replays).
    /// The file's unsynced growth reaches the disk or not, also by `coin`. Returns how many
    /// writes landed whole and how many torn.
    fn crash_scrambled(&mut self, coin: &mut dyn FnMut(usize) -> bool) -> (usize, usize) {
        let writes = std::mem::take(&mut self.unsynced);
        let grown = self.volatile.len() > self.durable.len() && coin(0);
        let len = if grown {
            self.volatile.len()
        } else {
            self.durable.len()
        };
        self.crash();
        self.durable.resize(len, 0);
        let (mut whole, mut torn) = (0, 0);
        for (i, (offset, data)) in writes.into_iter().enumerate() {
            let (lands, tears) = (coin(2 * i + 1), coin(2 * i + 2));
            if !lands && !tears {
                continue;
            }
            if lands {
                whole += 1;
            } else {
                torn += 1;
            }
            let end = offset + data.len();
            let mut start = offset;
            let mut sector = 0;
            while start < end {
                let stop = ((start / SECTOR + 1) * SECTOR).min(end);
                if stop <= len && (lands || coin(sector)) {
                    self.durable[start..stop].copy_from_slice(&data[start - offset..stop - offset]);
                }
                start = stop;
                sector += 1;
            }
        }
        self.stats.torn_writes += torn as u64;
        self.volatile = self.durable.clone();
        (whole, torn)
    }

    /// What Linux may do when an fsync fails: the dirty pages it covered are marked clean
    /// without reaching the disk. Reads still see them until a crash; a later fsync, which
    /// finds nothing dirty, succeeds; a crash loses them. Only a program that stops at the
    /// first failed fsync keeps its promises.
    fn forget_dirty(&mut self) {
        self.stats.lost_pages += self.dirty.len() as u64;
        self.dirty.clear();
        self.unsynced.clear();
    }

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
    /// The capacity this disk shares with the node's others (`None`: it never fills).
    space: Option<Space>,
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
            space: None,
        }
    }

    /// This disk on `space`: its bytes count there, and its growth fails past its limit.
    pub fn with_space(self, space: &Space) -> Self {
        let state = Arc::downgrade(&self.state);
        space.watch(Box::new(move || {
            let state = state.upgrade()?;
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            Some(s.volatile.len() as u64)
        }));
        self.limited_by(space)
    }

    /// A file of a folder on `space`: its growth fails past the limit; its bytes are counted
    /// by the folder, which knows whether it is still listed.
    pub(crate) fn limited_by(mut self, space: &Space) -> Self {
        self.space = Some(space.clone());
        self
    }

    /// Bytes the file holds now, unsynced growth included.
    pub(crate) fn len_now(&self) -> u64 {
        self.lock().volatile.len() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure anyway; keep the data reachable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `other` is this disk (a clone of it), not merely one of the same name.
    pub fn same(&self, other: &SimDisk) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
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

    /// A handle beside the open ones (a folder's file may be open twice at once, as a
    /// snapshot being sent while another is read): fenced, like them, by the next crash or
    /// [`SimDisk::open`].
    pub fn open_shared(&self) -> DiskHandle {
        let s = self.lock();
        DiskHandle {
            disk: self.clone(),
            epoch: s.epoch,
        }
    }

    /// Power cut: unsynced writes are lost and every open handle is fenced.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Power cut in the middle of the last write since the last sync: of that write, the
    /// sectors for which `landed(sector_index)` says yes reach the durable image (sector 0 is
    /// the write's first); every other unsynced write is lost, as in [`SimDisk::crash`].
    /// Returns how many sectors landed (0 when nothing was written since the last sync).
    pub fn crash_torn(&self, landed: &mut dyn FnMut(usize) -> bool) -> usize {
        self.lock().crash_torn(landed)
    }

    /// Power cut with every unsynced write in flight: see `State::crash_scrambled`.
    pub fn crash_scrambled(&self, coin: &mut dyn FnMut(usize) -> bool) -> (usize, usize) {
        self.lock().crash_scrambled(coin)
    }

    /// Arm a power cut for the moment the next `sync_data` is called: every write of the
    /// transaction being made durable was issued, none is synced, and the last one is torn
    /// ([`SimDisk::crash_torn`] with `landed`). The `sync_data` fails, as every later call
    /// through the fenced handle does. redb keeps its writes in a cache until it syncs, so this
    /// is the instant at which a power cut finds unsynced writes on the device at all.
    pub fn tear_at_next_sync(&self, landed: Box<dyn FnMut(usize) -> bool + Send>) {
        let mut s = self.lock();
        s.tear_armed = Some(landed);
        s.scramble = false;
    }

    /// Like [`SimDisk::tear_at_next_sync`], but every write since the last sync lands whole,
    /// not at all or torn on its own ([`SimDisk::crash_scrambled`] with `coin`).
    pub fn scramble_at_next_sync(&self, coin: Box<dyn FnMut(usize) -> bool + Send>) {
        let mut s = self.lock();
        s.tear_armed = Some(coin);
        s.scramble = true;
    }

    /// Whether a tear armed with [`SimDisk::tear_at_next_sync`] is still waiting for a sync.
    pub fn tear_pending(&self) -> bool {
        self.lock().tear_armed.is_some()
    }

    /// A failed fsync of this file through its folder: see `State::forget_dirty`.
    pub(crate) fn forget_dirty(&self) {
        self.lock().forget_dirty();
    }

    /// Make the next `n` `sync_data` calls fail (until a crash), each dropping the writes it
    /// should have made durable (as Linux may, see `State::forget_dirty`).
    pub fn fail_syncs(&self, n: u64) {
        self.lock().failing_syncs = n;
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// Flip bit `bit` of byte `at` of what survived the last sync (a bad sector, a stray write
    /// by something else): what the next open reads. Only on a crashed disk, whose volatile
    /// image is the durable one.
    pub fn flip_bit(&self, at: usize, bit: u8) {
        let mut s = self.lock();
        assert!(
            s.dirty.is_empty(),
            "flip_bit on {}: crash the disk first",
            self.name
        );
        s.durable[at] ^= 1 << (bit % 8);
        s.volatile[at] ^= 1 << (bit % 8);
    }

    /// Length of the file as a crash now would leave it.
    pub fn durable_len(&self) -> u64 {
        self.lock().durable.len() as u64
    }

    /// [`Faults::flippable_len`] of a single file: all of it (a redb file's free pages are
    /// fair game).
    pub fn flippable_len(&self) -> u64 {
        self.durable_len()
    }

    /// [`Self::durable_len`] without the zeros it ends in.
    pub fn data_len(&self) -> u64 {
        let s = self.lock();
        s.durable.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64
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
        if let Some(space) = &self.disk.space {
            let now = self.live()?.volatile.len() as u64;
            space.grow(&self.disk.name, len.saturating_sub(now))?;
        }
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
        if let Some(mut landed) = s.tear_armed.take() {
            let what = if std::mem::take(&mut s.scramble) {
                let (whole, torn) = s.crash_scrambled(&mut *landed);
                format!("of the unsynced writes {whole} landed whole, {torn} torn")
            } else {
                let kept = s.crash_torn(&mut *landed);
                format!("{kept} sectors of the last write landed")
            };
            return Err(io::Error::other(format!(
                "disk {}: power cut during sync_data ({what})",
                self.disk.name
            )));
        }
        if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            s.stats.sync_errors += 1;
            s.forget_dirty();
            return Err(io::Error::other(format!(
                "disk {}: sync_data failed (injected I/O error)",
                self.disk.name
            )));
        }
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
        s.unsynced.clear();
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
        s.unsynced.push((start, data.to_vec()));
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
    fn a_scrambled_crash_lands_each_unsynced_write_whole_not_at_all_or_torn() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(2 * SECTOR as u64).unwrap();
        h.write(0, &[9; 2 * SECTOR]).unwrap();
        h.sync_data().unwrap();
        // Three writes in flight and the file's growth; the coin is called: growth (0), then
        // per write (lands, tears), then per sector of a torn write.
        h.set_len(4 * SECTOR as u64).unwrap();
        h.write(0, &[1; SECTOR]).unwrap();
        h.write(SECTOR as u64, &[2; SECTOR]).unwrap();
        h.write(2 * SECTOR as u64, &[3; 2 * SECTOR]).unwrap();
        let mut draws = vec![
            true, // the growth reached the disk
            false, false, // write 1 vanished
            true, false, // write 2 landed whole
            false, true, // write 3 torn:
            false, true, // its first sector lost, its second landed
        ]
        .into_iter();
        let (whole, torn) = disk.crash_scrambled(&mut |_| draws.next().unwrap());
        assert_eq!((whole, torn), (1, 1));
        let h = disk.open();
        let mut file = vec![0u8; 4 * SECTOR];
        h.read(0, &mut file).unwrap();
        assert_eq!(
            &file[..SECTOR],
            &[9; SECTOR][..],
            "write 1 vanished: the synced bytes"
        );
        assert_eq!(&file[SECTOR..2 * SECTOR], &[2; SECTOR][..]);
        assert_eq!(
            &file[2 * SECTOR..3 * SECTOR],
            &[0; SECTOR][..],
            "grown, not written"
        );
        assert_eq!(&file[3 * SECTOR..], &[3; SECTOR][..]);
    }

    #[test]
    fn a_scrambled_crash_without_the_growth_keeps_the_durable_length() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(SECTOR as u64).unwrap();
        h.sync_data().unwrap();
        h.set_len(2 * SECTOR as u64).unwrap();
        h.write(0, &[1; 2 * SECTOR]).unwrap();
        disk.crash_scrambled(&mut |i| i != 0);
        let h = disk.open();
        assert_eq!(h.len().unwrap(), SECTOR as u64);
        let mut file = vec![0u8; SECTOR];
        h.read(0, &mut file).unwrap();
        assert_eq!(
            file,
            vec![1; SECTOR],
            "the part within the old length landed"
        );
    }

    #[test]
    fn a_torn_crash_keeps_the_chosen_sectors_of_the_last_write_only() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(4 * SECTOR as u64).unwrap();
        h.sync_data().unwrap();
        h.write(0, &[1; SECTOR]).unwrap(); // lost: not the last write
        h.write(SECTOR as u64 + 10, &[2; 2 * SECTOR]).unwrap(); // sectors 1, 2, 3 of the file
        let kept = disk.crash_torn(&mut |i| i != 1);
        assert_eq!(kept, 2);
        let h = disk.open();
        let mut file = vec![0u8; 4 * SECTOR];
        h.read(0, &mut file).unwrap();
        assert!(file[..SECTOR + 10].iter().all(|&b| b == 0));
        assert!(file[SECTOR + 10..2 * SECTOR].iter().all(|&b| b == 2));
        assert!(
            file[2 * SECTOR..3 * SECTOR].iter().all(|&b| b == 0),
            "sector 1 of the write did not land"
        );
        assert!(file[3 * SECTOR..3 * SECTOR + 10].iter().all(|&b| b == 2));
        assert!(file[3 * SECTOR + 10..].iter().all(|&b| b == 0));
        assert_eq!(disk.stats().torn_writes, 1);
        // Nothing written since the last sync: nothing to tear.
        assert_eq!(disk.crash_torn(&mut |_| true), 0);
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let disk = SimDisk::new("t");
        let h = disk.open();
        h.set_len(8).unwrap();
        h.write(0, b"a").unwrap();
        disk.fail_syncs(1);
        assert!(h.sync_data().is_err());
        disk.crash();
        assert_eq!(
            disk.open().len().unwrap(),
            0,
            "the failed sync kept nothing"
        );
        let h = disk.open();
        h.set_len(8).unwrap();
        h.sync_data().unwrap();
        assert_eq!(disk.stats().sync_errors, 1);
    }

    /// A commit torn by a power cut (its last write half on disk, the rest lost) or whose
    /// fsync failed is absent after recovery, or whole: never in part, never taking the
    /// earlier durable commit with it.
    #[test]
    fn redb_recovers_a_torn_or_unsynced_commit_whole_or_not_at_all() {
        use redb::{
            Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition,
        };
        const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
        let value = [7u8; 300];
        for case in 0..48u64 {
            let disk = SimDisk::new("t");
            {
                let db = Database::builder()
                    .create_with_backend(disk.open())
                    .unwrap();
                let txn = db.begin_write().unwrap();
                {
                    let mut t = txn.open_table(T).unwrap();
                    for k in 0..40 {
                        t.insert(k, &value[..]).unwrap();
                    }
                }
                txn.commit().unwrap();
                let mut txn = db.begin_write().unwrap();
                let durable = case % 2 == 0;
                if durable && case % 4 == 0 {
                    // The power cut strikes as the commit syncs (the nemesis' torn_write).
                    let mut y = case;
                    disk.tear_at_next_sync(Box::new(move |_| {
                        y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                        y >> 63 == 1
                    }));
                } else if durable {
                    disk.fail_syncs(1 + case % 3);
                } else {
                    txn.set_durability(Durability::None).unwrap();
                }
                {
                    let mut t = txn.open_table(T).unwrap();
                    for k in 40..80 {
                        t.insert(k, &value[..]).unwrap();
                    }
                }
                let committed = txn.commit();
                assert_eq!(committed.is_ok(), !durable, "case {case}: {committed:?}");
                if durable && case % 4 == 0 {
                    assert!(!disk.tear_pending());
                    assert!(
                        disk.stats().torn_writes == 1,
                        "case {case}: the commit synced"
                    );
                    // Already crashed by the tear; the crash below finds nothing unsynced.
                }
                // Which sectors of the last write land: a pattern per case.
                let mut x = case.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                disk.crash_torn(&mut |i| match case % 6 {
                    0 | 1 => true,
                    2 | 3 => i % 2 == 0,
                    _ => {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 3 != 0
                    }
                });
            }
            let db = Database::builder()
                .create_with_backend(disk.open())
                .unwrap_or_else(|e| panic!("case {case}: reopening failed: {e}"));
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(T).unwrap();
            let n = t.len().unwrap();
            assert!(
                n == 40 || n == 80,
                "case {case}: {n} rows: a torn commit shows in part"
            );
            for k in 0..n {
                assert_eq!(
                    t.get(k).unwrap().unwrap().value(),
                    &value[..],
                    "case {case} key {k}"
                );
            }
        }
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

/// The faults the nemesis injects, on a single file ([`SimDisk`], the state machine's redb
/// file) and on a folder ([`crate::folder::SimFolder`], the Raft log's segments) alike.
pub trait Faults {
    fn name(&self) -> &str;
    fn tear_at_next_sync(&self, landed: Box<dyn FnMut(usize) -> bool + Send>);
    fn scramble_at_next_sync(&self, coin: Box<dyn FnMut(usize) -> bool + Send>);
    fn tear_pending(&self) -> bool;
    fn fail_syncs(&self, n: u64);
    fn stats(&self) -> DiskStats;
    fn flip_bit(&self, at: usize, bit: u8);
    /// Bytes `flip_bit` reaches: a log folder's files without the zeros written ahead of
    /// their frames (rot there is harmless, and would leave the frames almost untouched).
    fn flippable_len(&self) -> u64;
}

macro_rules! faults {
    ($t:ty) => {
        impl Faults for $t {
            fn name(&self) -> &str {
                <$t>::name(self)
            }
            fn tear_at_next_sync(&self, landed: Box<dyn FnMut(usize) -> bool + Send>) {
                <$t>::tear_at_next_sync(self, landed)
            }
            fn scramble_at_next_sync(&self, coin: Box<dyn FnMut(usize) -> bool + Send>) {
                <$t>::scramble_at_next_sync(self, coin)
            }
            fn tear_pending(&self) -> bool {
                <$t>::tear_pending(self)
            }
            fn fail_syncs(&self, n: u64) {
                <$t>::fail_syncs(self, n)
            }
            fn stats(&self) -> DiskStats {
                <$t>::stats(self)
            }
            fn flip_bit(&self, at: usize, bit: u8) {
                <$t>::flip_bit(self, at, bit)
            }
            fn flippable_len(&self) -> u64 {
                <$t>::flippable_len(self)
            }
        }
    };
}
faults!(SimDisk);
faults!(crate::folder::SimFolder);
