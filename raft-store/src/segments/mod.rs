//! The Raft log as append-only segment files, in the folder `log/` of a node's data dir.
//!
//! Each durable write is one frame at the end of the active segment followed by one
//! `fdatasync` (`format.rs` has the bytes). Entries are encoded once, in binary
//! (`crate::codec`), and read back by position: an index kept in memory maps each entry to its
//! frame and record. The vote and the purge point live in a small file, `state`, replaced
//! atomically (written beside, synced, renamed, folder synced).
//!
//! At open every frame of every segment is checked. A bad frame of the last segment after
//! which nothing was written (no later frame has an intact header and body, and the file does
//! not end in a trailer naming this frame or a later one) is what a power cut leaves of the
//! last write, which was never acknowledged (acknowledgement follows the `fdatasync`): it is
//! cut off, and logged. Any other bad frame is damage, and the node refuses to start, naming
//! the file and the offset (`format::written_whole` has the rule and how it can err: only
//! towards refusing).
//!
//! Zeros are written ahead of the frames, a megabyte at a time ([`ZEROS_AHEAD`]), so that most
//! frames land in space the file already holds: an `fdatasync` then flushes the frame alone,
//! where one that grows the file also commits the new size to the file system's journal
//! (ext4 here: about 40 % more time and CPU a sync, bench/README.md, issue 25 step 7). A
//! check that fails on bytes that are all zeros to the end of the file is the end of the
//! frames, not damage nor a torn write.
//!
//! Nothing durable is ever written over. A truncation removes the segments that start at or
//! after its index (newest first, each removal synced) and appends a record saying the
//! entries from that index on are void.
//!
//! The log is the event store (the state machine's `event_runs` point into it), so openraft's
//! purge after a snapshot keeps the files: it records the purge point, which only hides the
//! entries from openraft. Data goes only when the log does not hold the purged entry itself
//! (a follower that installed a snapshot past its log, whose events the snapshot brought):
//! then whole segments are removed and `first_kept`, recorded first, hides what a partly
//! removed segment still holds.

pub(crate) mod format;

use std::ops::Bound;
use std::sync::{Arc, RwLock};

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use self::format::{
    FrameBuilder, Kind, FRAME_HEADER_BYTES, FRAME_TRAILER_BYTES, HEADER_BYTES, RECORD_HEADER_BYTES,
};
use crate::disk::{Disk, DiskFile};
use crate::error::StoreError;
use crate::types::{NodeId, TypeConfig};

/// The folder of the log's files inside a data dir.
pub const LOG_DIR: &str = "log";
/// A new segment is started once the active one is this long.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const SEGMENT_SUFFIX: &str = ".seg";
/// How far zeros are written past the last frame whenever a frame reaches beyond them.
const ZEROS_AHEAD: usize = 1 << 20;
static ZEROS: [u8; ZEROS_AHEAD] = [0; ZEROS_AHEAD];

/// Where an entry's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// Offset of its frame in the segment file.
    frame: u64,
    /// Offset of its record in the frame (from the frame's start, header included).
    record: u32,
    /// Its payload's length.
    len: u32,
}

struct Segment {
    name: String,
    first_index: u64,
    file: Arc<dyn DiskFile>,
    /// Bytes of whole frames: where the next one goes.
    len: u64,
    /// Bytes the file holds: the frames, then zeros written ahead of them.
    written: u64,
    /// Entry `first_index + i` is at `entries[i]`.
    entries: Vec<Loc>,
}

impl Segment {
    fn end_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }
}

/// The vote, the purge point and the first entry kept, in the file `state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LogState {
    pub vote: Option<Vote<NodeId>>,
    /// openraft's purge point: it reads nothing up to here.
    pub last_purged: Option<LogId<NodeId>>,
    /// Entries before this index are gone (or void), for every reader.
    #[serde(default)]
    pub first_kept: u64,
}

#[derive(Default)]
struct Inner {
    segments: Vec<Segment>,
    state: LogState,
    /// The latest commit marker found or written.
    committed: Option<LogId<NodeId>>,
    /// The last entry's id (or the purge point when there is none).
    last: Option<LogId<NodeId>>,
}

impl Inner {
    /// The segment holding `index`, if any.
    fn find(&self, index: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.first_index <= index);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (index < s.end_index()).then_some(s)
    }

    fn next_index(&self) -> u64 {
        match self.segments.last() {
            Some(s) => s.end_index(),
            None => self.state.last_purged.map_or(0, |l| l.index + 1),
        }
    }
}

/// What [`SegmentLog::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn last write cut off the last segment.
    pub torn_bytes: u64,
    /// Segments left behind by a purge that did not finish, removed.
    pub leftover_segments: usize,
}

/// The log's files. Cheap to share: every method takes `&self`. One writer at a time
/// (`log_writer`), any number of readers.
pub struct SegmentLog {
    disk: Arc<dyn Disk>,
    /// A new segment is started once the active one is this long.
    segment_bytes: u64,
    inner: RwLock<Inner>,
    /// The first write that failed. After a failed `fdatasync` nothing written since the last
    /// good one can be trusted to be on disk (the kernel may have dropped the pages), so every
    /// later write is refused: only a restart, which reads back what is durable, is safe.
    failed: std::sync::Mutex<Option<String>>,
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl SegmentLog {
    /// Open the log in `disk`, checking every frame; cut off a torn last write.
    pub fn open(disk: Arc<dyn Disk>) -> Result<(SegmentLog, Recovery), StoreError> {
        Self::open_sized(disk, SEGMENT_BYTES)
    }

    /// [`SegmentLog::open`] with segments of about `segment_bytes` (tests use small ones).
    pub fn open_sized(
        disk: Arc<dyn Disk>,
        segment_bytes: u64,
    ) -> Result<(SegmentLog, Recovery), StoreError> {
        let names = disk.list().map_err(io_error(disk.describe()))?;
        if names.iter().any(|n| n == STATE_TMP) {
            // A state write that did not reach its rename: the old state stands.
            disk.remove(STATE_TMP).map_err(io_error(STATE_TMP.into()))?;
        }
        let state = read_state(&*disk, names.iter().any(|n| n == STATE_FILE))?;
        let mut seg_names: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(SEGMENT_SUFFIX))
            .collect();
        seg_names.sort();
        let mut inner = Inner {
            state,
            ..Inner::default()
        };
        let mut recovery = Recovery::default();
        // A last segment shorter than its header was being created when the power went: the
        // folder kept its name, not its header. It held nothing; it goes.
        if let Some(name) = seg_names.last() {
            let file = disk.open(name, false).map_err(io_error(name.to_string()))?;
            if file.len().map_err(io_error(name.to_string()))? < HEADER_BYTES as u64 {
                disk.remove(name).map_err(io_error(name.to_string()))?;
                disk.sync_dir().map_err(io_error(disk.describe()))?;
                seg_names.pop();
            }
        }
        let count = seg_names.len();
        for (i, name) in seg_names.into_iter().enumerate() {
            let last = i + 1 == count;
            let scanned = scan(&*disk, name, last)?;
            recovery.torn_bytes += scanned.torn_bytes;
            if let Some(marker) = scanned.markers.last() {
                inner.committed = *marker;
            }
            if let Some(id) = scanned.last_id {
                inner.last = Some(id);
            }
            inner.segments.push(scanned.segment);
        }
        // Finish a removal that was recorded but not carried out.
        if inner.state.first_kept > 0 {
            let first_kept = inner.state.first_kept;
            let before = inner.segments.len();
            let keep_from = inner
                .segments
                .iter()
                .position(|s| s.end_index() > first_kept)
                .unwrap_or(inner.segments.len());
            for s in inner.segments.drain(..keep_from) {
                disk.remove(&s.name).map_err(io_error(s.name.clone()))?;
            }
            recovery.leftover_segments = before - inner.segments.len();
            if recovery.leftover_segments > 0 {
                disk.sync_dir().map_err(io_error(disk.describe()))?;
            }
        }
        check_contiguous(&inner)?;
        if inner.last.is_none() || inner.segments.iter().all(|s| s.entries.is_empty()) {
            inner.last = inner.state.last_purged;
        }
        if recovery.torn_bytes > 0 {
            tracing::warn!(
                bytes = recovery.torn_bytes,
                log = %disk.describe(),
                "cut off the end of the log that a power cut tore (it was never acknowledged)"
            );
        }
        Ok((
            SegmentLog {
                disk,
                segment_bytes,
                inner: RwLock::new(inner),
                failed: std::sync::Mutex::new(None),
            },
            recovery,
        ))
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("segment log lock")
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("segment log lock")
    }

    pub fn vote(&self) -> Option<Vote<NodeId>> {
        self.read_lock().state.vote
    }

    pub fn committed(&self) -> Option<LogId<NodeId>> {
        self.read_lock().committed
    }

    pub fn last_purged(&self) -> Option<LogId<NodeId>> {
        self.read_lock().state.last_purged
    }

    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.read_lock().last
    }

    /// Run a write, unless one failed before; remember a failure.
    fn writing<T>(&self, write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        if let Some(first) = self.failed.lock().expect("failed lock").as_ref() {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "the log refuses writes after an earlier failure ({first}); restart the node"
            ))));
        }
        let result = write();
        if let Err(e) = &result {
            *self.failed.lock().expect("failed lock") = Some(e.to_string());
        }
        result
    }

    /// Make `vote` durable.
    pub fn save_vote(&self, vote: Vote<NodeId>) -> Result<(), StoreError> {
        self.writing(|| self.save_vote_now(vote))
    }

    fn save_vote_now(&self, vote: Vote<NodeId>) -> Result<(), StoreError> {
        let mut inner = self.write_lock();
        let mut state = inner.state.clone();
        state.vote = Some(vote);
        write_state(&*self.disk, &state)?;
        inner.state = state;
        Ok(())
    }

    /// Write `entries` (consecutive, following the last entry or starting a new run after a
    /// purge) and the commit marker in one frame, and make them durable.
    pub fn append(
        &self,
        entries: &[Entry<TypeConfig>],
        committed: Option<Option<LogId<NodeId>>>,
    ) -> Result<(), StoreError> {
        self.writing(|| {
            if let Some(first) = entries.first().map(|e| e.log_id.index) {
                // Entries that overwrite the end of the log replace it.
                if first < self.read_lock().next_index() {
                    self.truncate_now(first)?;
                }
            }
            self.append_now(entries, committed)
        })
    }

    fn append_now(
        &self,
        entries: &[Entry<TypeConfig>],
        committed: Option<Option<LogId<NodeId>>>,
    ) -> Result<(), StoreError> {
        let mut frame = FrameBuilder::new();
        let mut locs = Vec::with_capacity(entries.len());
        for e in entries {
            locs.push(frame.record_with(Kind::Entry, |buf| crate::codec::encode_into(e, buf)));
        }
        if let Some(c) = committed {
            frame.record(Kind::Committed, &crate::codec::encode(&c));
        }
        if frame.is_empty() {
            return Ok(());
        }
        let bytes = frame.seal();
        let first = entries.first().map(|e| e.log_id.index);
        let (file, at, written, name) = self.room_for(first, bytes.len() as u64)?;
        let written = put_frame(&*file, &name, at, &bytes, written)?;
        sync_frame(&*file, &name)?;
        let mut inner = self.write_lock();
        let s = inner.segments.last_mut().expect("room_for made one");
        s.len = at + bytes.len() as u64;
        s.written = written;
        s.entries.extend(locs.into_iter().map(|(record, len)| Loc {
            frame: at,
            record,
            len,
        }));
        if let Some(e) = entries.last() {
            inner.last = Some(e.log_id);
        }
        if let Some(c) = committed {
            inner.committed = c;
        }
        Ok(())
    }

    /// The active segment's file and where the next frame goes, starting a new segment when
    /// the active one is full or the entries do not follow it.
    fn room_for(
        &self,
        first: Option<u64>,
        bytes: u64,
    ) -> Result<(Arc<dyn DiskFile>, u64, u64, String), StoreError> {
        let mut inner = self.write_lock();
        let next = inner.next_index();
        let start = first.unwrap_or(next);
        let roll = match inner.segments.last() {
            None => true,
            Some(s) => {
                (first.is_some() && start != s.end_index())
                    || (s.len + bytes > self.segment_bytes && !s.entries.is_empty())
            }
        };
        if roll {
            let name = segment_name(start);
            let file = self
                .disk
                .open(&name, true)
                .map_err(io_error(format!("creating {name}")))?;
            file.set_len(0)
                .map_err(io_error(format!("creating {name}")))?;
            file.write_at(0, &format::header(start))
                .map_err(io_error(format!("writing {name}")))?;
            sync(&*file, &name)?;
            self.disk
                .sync_dir()
                .map_err(io_error(self.disk.describe()))?;
            inner.segments.push(Segment {
                name,
                first_index: start,
                file,
                len: HEADER_BYTES as u64,
                written: HEADER_BYTES as u64,
                entries: Vec::new(),
            });
        }
        let s = inner.segments.last().expect("one exists");
        Ok((s.file.clone(), s.len, s.written, s.name.clone()))
    }

    /// The entries in `range` that the files hold, in order; from the first missing one on,
    /// none.
    pub fn read(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let from = match start {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let to = match end {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let first_held = {
            let inner = self.read_lock();
            let purged = inner.state.last_purged.map_or(0, |l| l.index + 1);
            let first = inner.segments.first().map_or(0, |s| s.first_index);
            purged.max(first)
        };
        let mut out = Vec::new();
        let mut index = from.max(first_held);
        while index < to {
            let Some((file, name, loc)) = self.locate(index) else {
                break;
            };
            out.push(read_entry(&*file, &name, index, loc)?);
            index += 1;
        }
        Ok(out)
    }

    /// The entry at `index` if the files still hold it, purged or not: the event store's read
    /// (openraft's purge point hides entries from openraft only). `None` before the first
    /// entry kept, or past the end.
    pub fn read_kept(&self, index: u64) -> Result<Option<Entry<TypeConfig>>, StoreError> {
        if index < self.read_lock().state.first_kept {
            return Ok(None);
        }
        match self.locate(index) {
            Some((file, name, loc)) => read_entry(&*file, &name, index, loc).map(Some),
            None => Ok(None),
        }
    }

    fn locate(&self, index: u64) -> Option<(Arc<dyn DiskFile>, String, Loc)> {
        let inner = self.read_lock();
        let s = inner.find(index)?;
        let loc = s.entries[(index - s.first_index) as usize];
        Some((s.file.clone(), s.name.clone(), loc))
    }

    /// Remove the entries from `index` on, durably.
    pub fn truncate(&self, index: u64) -> Result<(), StoreError> {
        self.writing(|| self.truncate_now(index))
    }

    fn truncate_now(&self, index: u64) -> Result<(), StoreError> {
        let mut inner = self.write_lock();
        if inner.segments.is_empty() || index >= inner.next_index() {
            return Ok(());
        }
        // Whole segments first, newest first, each removal durable before the next: a crash
        // leaves the log a prefix of itself, never a gap.
        while inner.segments.len() > 1
            && inner
                .segments
                .last()
                .is_some_and(|s| s.first_index >= index)
        {
            let s = inner.segments.pop().expect("checked");
            self.disk
                .remove(&s.name)
                .map_err(io_error(s.name.clone()))?;
            self.disk
                .sync_dir()
                .map_err(io_error(self.disk.describe()))?;
        }
        let s = inner.segments.last_mut().expect("one is kept");
        if index < s.end_index() {
            let mut frame = FrameBuilder::new();
            frame.record(Kind::Truncate, &index.to_le_bytes());
            let bytes = frame.seal();
            s.written = put_frame(&*s.file, &s.name, s.len, &bytes, s.written)?;
            sync(&*s.file, &s.name)?;
            s.len += bytes.len() as u64;
            let keep = index.saturating_sub(s.first_index) as usize;
            s.entries.truncate(keep);
        }
        let before = index.checked_sub(1);
        inner.last = match before.and_then(|b| inner.find(b).map(|s| (b, s))) {
            Some((b, s)) => {
                let loc = s.entries[(b - s.first_index) as usize];
                Some(read_entry(&*s.file, &s.name, b, loc)?.log_id)
            }
            None => inner.state.last_purged,
        };
        Ok(())
    }

    /// Hide the entries up to `log_id` from openraft, durably. The files are kept when they
    /// hold `log_id` itself: every entry up to it is then committed and is this node's event
    /// store. Otherwise (the node installed a snapshot past its log) the entries up to it are
    /// removed: the purge point and `first_kept` first, then the segments that hold nothing
    /// after it.
    pub fn purge(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.writing(|| self.purge_now(log_id))
    }

    fn purge_now(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        let holds = match self.locate(log_id.index) {
            Some((file, name, loc)) => {
                read_entry(&*file, &name, log_id.index, loc)?.log_id == log_id
            }
            None => false,
        };
        let mut inner = self.write_lock();
        let mut state = inner.state.clone();
        state.last_purged = Some(log_id);
        if !holds {
            state.first_kept = state.first_kept.max(log_id.index + 1);
        }
        write_state(&*self.disk, &state)?;
        inner.state = state;
        let mut removed = false;
        while !holds
            && inner
                .segments
                .first()
                .is_some_and(|s| s.end_index() <= log_id.index + 1)
        {
            let s = inner.segments.remove(0);
            self.disk
                .remove(&s.name)
                .map_err(io_error(s.name.clone()))?;
            removed = true;
        }
        if removed {
            self.disk
                .sync_dir()
                .map_err(io_error(self.disk.describe()))?;
        }
        if inner.last.is_none_or(|l| l.index <= log_id.index) {
            inner.last = Some(log_id);
        }
        Ok(())
    }
}

/// Write a frame at `at` of a file that holds `written` bytes, after [`ZEROS_AHEAD`] of zeros
/// past its end when it reaches beyond them, for the caller's sync to make durable with it.
/// Returns what the file then holds.
fn put_frame(
    file: &dyn DiskFile,
    name: &str,
    at: u64,
    frame: &[u8],
    written: u64,
) -> Result<u64, StoreError> {
    let end = at + frame.len() as u64;
    let written = if end < written {
        written
    } else {
        file.write_at(end, &ZEROS)
            .map_err(io_error(format!("writing {name}")))?;
        end + ZEROS_AHEAD as u64
    };
    file.write_at(at, frame)
        .map_err(io_error(format!("writing {name}")))?;
    Ok(written)
}

/// Make what was written to `file` durable.
fn sync(file: &dyn DiskFile, name: &str) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(io_error(format!("syncing {name}")))
}

/// [`sync`] of a frame of entries, the sync that acknowledgements wait for. Planted bugs
/// (simulation builds only): skip it; or retry it once when it fails and carry on.
fn sync_frame(file: &dyn DiskFile, name: &str) -> Result<(), StoreError> {
    #[cfg(madsim)]
    if crate::planted::is(crate::planted::Bug::AckBeforeDurable) {
        return Ok(());
    }
    #[cfg(madsim)]
    if crate::planted::is(crate::planted::Bug::RetryFailedFsync) {
        return sync(file, name).or_else(|_| sync(file, name));
    }
    sync(file, name)
}

fn read_entry(
    file: &dyn DiskFile,
    name: &str,
    index: u64,
    loc: Loc,
) -> Result<Entry<TypeConfig>, StoreError> {
    let mut buf = vec![0u8; RECORD_HEADER_BYTES + loc.len as usize];
    file.read_at(loc.frame + loc.record as u64, &mut buf)
        .map_err(io_error(format!("reading {name}")))?;
    let damaged = |why: String| StoreError::Corrupt {
        file: name.into(),
        table: "raft log".into(),
        key: index.to_string(),
        reason: why,
    };
    let (kind, payload) = format::record_at(&buf, 0).map_err(damaged)?;
    if kind != Kind::Entry {
        return Err(damaged(format!(
            "a {kind:?} record where an entry should be"
        )));
    }
    let entry: Entry<TypeConfig> = crate::codec::decode(payload).map_err(damaged)?;
    if entry.log_id.index != index {
        return Err(damaged(format!("it holds entry {}", entry.log_id.index)));
    }
    Ok(entry)
}

/// What [`scan`] found in one segment file.
struct Scanned {
    segment: Segment,
    /// The id of its last entry still in force.
    last_id: Option<LogId<NodeId>>,
    /// The commit markers, in order.
    markers: Vec<Option<LogId<NodeId>>>,
    /// Bytes of a torn last write cut off (the last segment only).
    torn_bytes: u64,
}

/// Read and check segment `name`.
fn scan(disk: &dyn Disk, name: &str, last: bool) -> Result<Scanned, StoreError> {
    let file = disk
        .open(name, false)
        .map_err(io_error(format!("opening {name}")))?;
    let file_len = file.len().map_err(io_error(format!("reading {name}")))?;
    let bytes = {
        let mut b = vec![0u8; file_len as usize];
        file.read_at(0, &mut b)
            .map_err(io_error(format!("reading {name}")))?;
        b
    };
    let first_index = format::parse_header(name, &bytes)?;
    if segment_name(first_index) != name {
        return Err(StoreError::DamagedFile {
            file: name.into(),
            detail: format!("its header names first entry {first_index}"),
        });
    }
    let mut segment = Segment {
        name: name.into(),
        first_index,
        file: file.clone(),
        len: HEADER_BYTES as u64,
        written: file_len,
        entries: Vec::new(),
    };
    let mut last_id = None;
    let mut markers = Vec::new();
    let mut pos = HEADER_BYTES;
    while pos < bytes.len() {
        match check_frame(&bytes, pos) {
            Ok(body) => {
                for r in format::records(body).expect("checked by check_frame") {
                    match r.kind {
                        Kind::Entry => {
                            let (id, _): (LogId<NodeId>, _) = postcard::take_from_bytes(r.payload)
                                .map_err(|e| frame_damage(name, pos, &e.to_string()))?;
                            if id.index != segment.end_index() {
                                return Err(frame_damage(
                                    name,
                                    pos,
                                    &format!(
                                        "entry {} where entry {} should follow",
                                        id.index,
                                        segment.end_index()
                                    ),
                                ));
                            }
                            segment.entries.push(Loc {
                                frame: pos as u64,
                                record: (FRAME_HEADER_BYTES + r.at) as u32,
                                len: r.payload.len() as u32,
                            });
                            last_id = Some(id);
                        }
                        Kind::Committed => markers.push(
                            crate::codec::decode(r.payload)
                                .map_err(|e| frame_damage(name, pos, &e))?,
                        ),
                        Kind::Truncate => {
                            let from =
                                r.payload.try_into().map(u64::from_le_bytes).map_err(|_| {
                                    frame_damage(name, pos, "a truncation of a bad length")
                                })?;
                            let keep = from.saturating_sub(segment.first_index) as usize;
                            segment.entries.truncate(keep);
                            last_id = match segment.entries.last() {
                                Some(loc) => Some(
                                    id_at(&bytes, *loc).map_err(|e| frame_damage(name, pos, &e))?,
                                ),
                                None => None,
                            };
                        }
                    }
                }
                pos += FRAME_HEADER_BYTES + body.len() + FRAME_TRAILER_BYTES;
                segment.len = pos as u64;
            }
            // Zeros to the end: the frames end here.
            Err(_) if bytes[pos..].iter().all(|&b| b == 0) => break,
            // Torn only if this frame was not written whole and none follows: a power cut
            // tears the last write, nothing before it.
            Err(why) if last && !format::written_whole(&bytes[pos..], pos as u64) => {
                let torn = (bytes.len() - pos) as u64;
                tracing::warn!(segment = name, offset = pos, reason = %why, "a torn last write");
                file.set_len(pos as u64)
                    .map_err(io_error(format!("cutting {name}")))?;
                file.sync_data()
                    .map_err(io_error(format!("syncing {name}")))?;
                segment.written = pos as u64;
                return Ok(Scanned {
                    segment,
                    last_id,
                    markers,
                    torn_bytes: torn,
                });
            }
            Err(why) => return Err(frame_damage(name, pos, &why)),
        }
    }
    // What the last segment holds may be in the page cache only: a process killed between a
    // frame's write and its fdatasync leaves the frame readable and not durable. Everything
    // the log holds at open counts as durable (a leader's durable mark starts there,
    // `crate::local_durable`), so make it so.
    if last {
        file.sync_data()
            .map_err(io_error(format!("syncing {name}")))?;
    }
    Ok(Scanned {
        segment,
        last_id,
        markers,
        torn_bytes: 0,
    })
}

/// The id of the entry at `loc` in a segment's bytes (the start of its encoding).
fn id_at(bytes: &[u8], loc: Loc) -> Result<LogId<NodeId>, String> {
    let start = loc.frame as usize + loc.record as usize + RECORD_HEADER_BYTES;
    let payload = bytes
        .get(start..start + loc.len as usize)
        .ok_or("an entry past the end")?;
    postcard::take_from_bytes::<LogId<NodeId>>(payload)
        .map(|(id, _)| id)
        .map_err(|e| e.to_string())
}

fn frame_damage(name: &str, pos: usize, why: &str) -> StoreError {
    StoreError::DamagedFile {
        file: name.into(),
        detail: format!("the frame at byte {pos}: {why}"),
    }
}

/// The body of the frame at `pos`, checked whole: its header, its CRC, every record's.
fn check_frame(bytes: &[u8], pos: usize) -> Result<&[u8], String> {
    let header: &[u8; FRAME_HEADER_BYTES] = bytes
        .get(pos..pos + FRAME_HEADER_BYTES)
        .ok_or("a frame header cut short")?
        .try_into()
        .expect("12 bytes");
    let (len, crc) = format::parse_frame_header(header)?;
    let start = pos + FRAME_HEADER_BYTES;
    let body = bytes.get(start..start + len).ok_or("a frame cut short")?;
    if crc32c::crc32c(body) != crc {
        return Err("frame checksum mismatch".into());
    }
    format::records(body)?;
    let trailer = bytes
        .get(start + len..start + len + FRAME_TRAILER_BYTES)
        .ok_or("a frame trailer cut short")?;
    let header_crc = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
    if trailer[..4] != (len as u32).to_le_bytes() || header_crc != crc32c::crc32c(header) {
        return Err("a frame trailer that does not match its header".into());
    }
    Ok(body)
}

/// Segments follow each other, and the purge point, without a gap.
fn check_contiguous(inner: &Inner) -> Result<(), StoreError> {
    if let (Some(first), Some(purged)) = (inner.segments.first(), inner.state.last_purged) {
        if first.first_index > purged.index + 1 {
            return Err(StoreError::DamagedFile {
                file: first.name.clone(),
                detail: format!(
                    "the log has a gap: purged up to {}, and the first segment starts at {}",
                    purged.index, first.first_index
                ),
            });
        }
    }
    for pair in inner.segments.windows(2) {
        if pair[1].first_index != pair[0].end_index() {
            return Err(StoreError::DamagedFile {
                file: pair[1].name.clone(),
                detail: format!(
                    "the log has a gap: {} ends before entry {}, {} starts at {}",
                    pair[0].name,
                    pair[0].end_index(),
                    pair[1].name,
                    pair[1].first_index
                ),
            });
        }
    }
    Ok(())
}

fn read_state(disk: &dyn Disk, exists: bool) -> Result<LogState, StoreError> {
    if !exists {
        return Ok(LogState::default());
    }
    let file = disk
        .open(STATE_FILE, false)
        .map_err(io_error(STATE_FILE.into()))?;
    let len = file.len().map_err(io_error(STATE_FILE.into()))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_at(0, &mut bytes)
        .map_err(io_error(STATE_FILE.into()))?;
    let damaged = |why: &str| StoreError::DamagedFile {
        file: format!("{}/{STATE_FILE}", disk.describe()),
        detail: why.into(),
    };
    if bytes.len() < 4 {
        return Err(damaged("shorter than its checksum"));
    }
    let (crc, body) = bytes.split_at(4);
    if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != crc32c::crc32c(body) {
        return Err(damaged("checksum mismatch"));
    }
    serde_json::from_slice(body).map_err(|e| damaged(&e.to_string()))
}

/// Replace the state file: written beside it, synced, renamed over it, the folder synced.
fn write_state(disk: &dyn Disk, state: &LogState) -> Result<(), StoreError> {
    let body = serde_json::to_vec(state).expect("the log state serializes");
    let mut bytes = crc32c::crc32c(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let file = disk
        .open(STATE_TMP, true)
        .map_err(io_error(STATE_TMP.into()))?;
    file.set_len(0).map_err(io_error(STATE_TMP.into()))?;
    file.write_at(0, &bytes)
        .map_err(io_error(STATE_TMP.into()))?;
    file.sync_data().map_err(io_error(STATE_TMP.into()))?;
    disk.rename(STATE_TMP, STATE_FILE)
        .map_err(io_error(STATE_FILE.into()))?;
    disk.sync_dir().map_err(io_error(disk.describe()))?;
    Ok(())
}
