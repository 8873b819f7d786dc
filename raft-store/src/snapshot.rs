//! Snapshots as files: written from one consistent redb read transaction, streamed record by
//! record, never the whole store in memory.
//!
//! Format (version 4, which carries `stream_heads`; 3 carried format 2's `streams`): the
//! magic `UQSNAP` and a format byte, the openraft `SnapshotMeta` as
//! length-prefixed JSON and its CRC-32C (over the magic too), then one record per state-machine
//! row (`table tag`,
//! key bytes, value bytes, each length-prefixed, in redb's own encoding of the table's types,
//! then the record's CRC-32C over tag, key and value), then an end marker with the record
//! count so a truncated file is detected. A snapshot is checked whole when a node starts on
//! it, and record by record as it is installed (inside the install's transaction, so a
//! damaged one changes nothing).
//!
//! The events are in the log, not in the state (`crate::events`), so a snapshot carries them
//! rendered, as rows of the archive tables (`events`, `event_secrets`), beside the runs: a
//! follower that installs it has every event without the entries. Version 2, from before
//! `event_runs`, had the same rows and no runs, and is still read (backups).

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openraft::SnapshotMeta;
use redb::{
    Key, ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle, Value,
    WriteTransaction,
};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::checksum;
use crate::disk::{Disk, DiskFile};
use crate::error::StoreError;
use crate::events::{EntryReader, Events};
use crate::tables::state_machine_tables;
use crate::tables::*;
use crate::types::{Node, NodeId};
use crate::well_formed::WellFormed;

const MAGIC: &[u8; 7] = b"UQSNAP\x04";
/// The format before `event_runs`: read, never written.
const FORMAT_V2: u8 = 2;
/// The format of state format 2's tables (`streams`, a `stream_index` row for every version):
/// read, never written; its rows are converted as they are installed
/// (`tables::move_streams_to_heads`). Its header is checked as format 4's.
const FORMAT_V3: u8 = 3;
const END_TAG: u8 = 0xFF;
/// No key or value of a state-machine row is this large.
const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
const CURRENT: &str = crate::SNAPSHOT_FILE;

/// The current snapshot file of the node whose data dir is `data_dir`.
pub(crate) fn current_path(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::SNAPSHOT_DIR).join(CURRENT)
}

pub type Meta = SnapshotMeta<NodeId, Node>;

/// A file of the snapshot folder read and written from a position, as `std::io` expects. The
/// folder is a [`Disk`], so the simulator's disk (which loses what was not synced, tears
/// writes and fails syncs) holds snapshots as it holds the log.
pub(crate) struct Cursor {
    file: Arc<dyn DiskFile>,
    pos: u64,
    /// The file's length while only reads happen (a `stat` per read would be one per 8 KiB).
    len: Option<u64>,
}

impl Cursor {
    fn new(file: Arc<dyn DiskFile>) -> Self {
        Cursor {
            file,
            pos: 0,
            len: None,
        }
    }

    fn len(&mut self) -> io::Result<u64> {
        match self.len {
            Some(len) => Ok(len),
            None => {
                let len = self.file.len()?;
                self.len = Some(len);
                Ok(len)
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor at {}", self.pos)
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.len()?;
        let n = (len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n > 0 {
            self.file.read_at(self.pos, &mut buf[..n])?;
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Write for Cursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.len = None;
        self.file.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => (self.len()?, d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Snapshot data as openraft sees it: a file read and written synchronously in the chunks
/// openraft asks for. `tokio::fs::File` would hand each call to a blocking thread, which
/// madsim forbids; chunks are bounded by `snapshot_max_chunk_size`, so inline I/O is short.
#[derive(Debug)]
pub struct SnapshotFile {
    file: Cursor,
    pending_seek: Option<io::Result<u64>>,
}

impl SnapshotFile {
    pub(crate) fn from_file(file: Arc<dyn DiskFile>) -> Self {
        SnapshotFile {
            file: Cursor::new(file),
            pending_seek: None,
        }
    }

    /// A reader positioned at the start of the file.
    pub(crate) fn rewound(&mut self) -> io::Result<&mut Cursor> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok(&mut self.file)
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.file.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().file.write(buf))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().file.flush())
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().file.sync_data())
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        this.pending_seek = Some(this.file.seek(position));
        Ok(())
    }
    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        Poll::Ready(match this.pending_seek.take() {
            Some(r) => r,
            None => this.file.stream_position(),
        })
    }
}

/// The folder of a node's snapshot files: `current.snap` and transient temporaries.
pub(crate) struct SnapshotDir {
    disk: Arc<dyn Disk>,
    seq: AtomicU64,
    /// The last log index the current snapshot covers. Publishing is monotonic: a slow build
    /// must not replace a newer installed snapshot.
    current_index: Mutex<Option<u64>>,
}

impl std::fmt::Debug for SnapshotDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotDir({})", self.disk.describe())
    }
}

impl SnapshotDir {
    pub(crate) fn open(disk: Arc<dyn Disk>) -> Result<Self, StoreError> {
        // Temporaries of an interrupted build or transfer are garbage after a restart.
        for name in disk.list()? {
            if name.ends_with(".tmp") {
                disk.remove(&name)?;
            }
        }
        let dir = SnapshotDir {
            disk,
            seq: AtomicU64::new(0),
            current_index: Mutex::new(None),
        };
        let current = dir.current()?;
        if let Some((_, mut file)) = current {
            verify(&mut file).map_err(|e| e.in_file(&dir.current_name()))?;
        }
        let index = dir
            .current()?
            .and_then(|(m, _)| m.last_log_id.map(|l| l.index));
        *dir.current_index.lock().expect("snapshot lock") = index;
        Ok(dir)
    }

    /// The current snapshot's file as messages name it.
    fn current_name(&self) -> String {
        format!("{}/{CURRENT}", self.disk.describe())
    }

    /// Drop the current snapshot if it covers less than `applied_index`: after a crash between
    /// installing a snapshot's state and keeping its file, the file is older than the state
    /// machine, and openraft would purge the log beyond it. It builds a new one when needed.
    pub(crate) fn forget_if_older_than(
        &self,
        applied_index: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut current = self.current_index.lock().expect("snapshot lock");
        if let (Some(snap), Some(applied)) = (*current, applied_index) {
            if snap < applied {
                self.disk.remove(CURRENT)?;
                *current = None;
            }
        }
        Ok(())
    }

    /// A path for a temporary file beside the snapshots (cleaned up at the next open), when the
    /// folder is on the file system.
    pub(crate) fn temp_path(&self, kind: &str) -> Option<PathBuf> {
        let dir = self.disk.local_dir()?;
        Some(dir.join(self.temp_name(kind)))
    }

    fn temp_name(&self, kind: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{n}.tmp")
    }

    pub(crate) fn next_id(&self, meta_index: Option<u64>) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{n}",
            meta_index.map_or("none".to_string(), |i| i.to_string())
        )
    }

    /// An empty file for a snapshot arriving from the leader. It is unlinked at once: the
    /// handle is all we need, and an aborted transfer leaves nothing behind.
    pub(crate) fn receiving(&self) -> Result<SnapshotFile, StoreError> {
        let name = self.temp_name("recv");
        let file = self.disk.open(&name, true)?;
        self.disk.remove(&name)?;
        Ok(SnapshotFile::from_file(file))
    }

    /// The current snapshot, if any.
    pub(crate) fn current(&self) -> Result<Option<(Meta, SnapshotFile)>, StoreError> {
        let file = match self.disk.open(CURRENT, false) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut file = SnapshotFile::from_file(file);
        let meta = read_header(&mut BufReader::new(file.rewound()?))
            .map_err(|e| e.in_file(&self.current_name()))?;
        file.rewound()?;
        Ok(Some((meta, file)))
    }

    /// The current snapshot, checked whole first: it is about to be sent to a peer, which
    /// would otherwise find the damage and take it for its own.
    pub(crate) fn current_checked(&self) -> Result<Option<(Meta, SnapshotFile)>, StoreError> {
        let Some((meta, mut file)) = self.current()? else {
            return Ok(None);
        };
        verify(&mut file).map_err(|e| e.in_file(&self.current_name()))?;
        file.rewound()?;
        Ok(Some((meta, file)))
    }

    /// Write a snapshot of `txn`'s view of the state machine and make it the current one.
    pub(crate) fn build(
        &self,
        txn: &ReadTransaction,
        entries: &EntryReader,
        meta: &Meta,
    ) -> Result<(), StoreError> {
        let tmp = self.temp_name("build");
        self.removed_on_error(&tmp, || {
            let mut w = BufWriter::new(Cursor::new(self.disk.open(&tmp, true)?));
            write_snapshot(txn, entries, meta, &mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            #[cfg(madsim)]
            let planted = crate::planted::is(crate::planted::Bug::SnapshotNotSynced);
            #[cfg(not(madsim))]
            let planted = false;
            if !planted {
                file.sync_data()?;
            }
            Ok(())
        })?;
        self.publish(&tmp, meta)
    }

    /// Run `write` of the temporary `tmp`; if it fails, remove `tmp` (best effort): a build
    /// that failed on a full disk must not keep the space it took until the next restart.
    fn removed_on_error(
        &self,
        tmp: &str,
        write: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        write().inspect_err(|_| {
            let _ = self.disk.remove(tmp);
        })
    }

    /// Copy a received (and installed) snapshot into place as the current one.
    pub(crate) fn keep(&self, data: &mut SnapshotFile, meta: &Meta) -> Result<(), StoreError> {
        let tmp = self.temp_name("keep");
        self.removed_on_error(&tmp, || {
            let mut out = Cursor::new(self.disk.open(&tmp, true)?);
            io::copy(data.rewound()?, &mut out)?;
            out.sync_data()?;
            Ok(())
        })?;
        self.publish(&tmp, meta)
    }

    /// Make `tmp` the current snapshot, unless the current one is at least as new.
    fn publish(&self, tmp: &str, meta: &Meta) -> Result<(), StoreError> {
        let index = meta.last_log_id.map(|l| l.index);
        let mut current = self.current_index.lock().expect("snapshot lock");
        if current.is_some() && *current >= index {
            self.disk.remove(tmp)?;
            return Ok(());
        }
        self.disk.rename(tmp, CURRENT)?;
        self.disk.sync_dir()?;
        *current = index;
        Ok(())
    }
}

fn write_len_prefixed(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "snapshot record too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

fn read_len_prefixed(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    // A damaged length must not become a huge allocation.
    if len > RECORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot record of {len} bytes"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
}

fn dump_table<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    tag: u8,
    w: &mut impl Write,
) -> Result<u64, StoreError> {
    let table = txn.open_table(def)?;
    let mut n = 0;
    for row in table.iter()? {
        let (k, v) = row?;
        let (kv, vv) = (k.value(), v.value());
        let (k, v) = (K::as_bytes(&kv), V::as_bytes(&vv));
        let (k, v) = (k.as_ref(), v.as_ref());
        verify_row(def.name(), k, v)?;
        write_record(w, tag, k, v)?;
        n += 1;
    }
    Ok(n)
}

fn write_record(w: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
    w.write_all(&[tag])?;
    write_len_prefixed(w, k)?;
    write_len_prefixed(w, v)?;
    w.write_all(&checksum::sum(&[&[tag], k, v]).to_le_bytes())?;
    Ok(())
}

/// The snapshot tags of `events` and `event_secrets`, whose rows are rendered from the log
/// (or copied from the archive) rather than dumped.
const EVENTS_TAG: u8 = 2;
const EVENT_SECRETS_TAG: u8 = 9;

/// Every event of every topic, and its secret, as archive rows, in key order.
fn write_events(
    txn: &ReadTransaction,
    entries: &EntryReader,
    w: &mut impl Write,
) -> Result<u64, StoreError> {
    let view = crate::live::View::file(txn);
    let mut events = Events::open(&view, entries)?;
    let topics = txn.open_table(TOPICS)?;
    let mut n = 0;
    for row in topics.iter()? {
        let (topic, len) = row?;
        let (topic, len) = (topic.value(), len.value());
        for offset in 0..len {
            let key = <(&str, u64) as Value>::as_bytes(&(topic, offset));
            let (text, secret) = events
                .event_and_secret(topic, offset)?
                .ok_or_else(|| crate::events::missing(topic, offset))?;
            let crc = checksum::event_sum(topic, offset, &text);
            let value = <(u32, &str) as Value>::as_bytes(&(crc, text.as_str()));
            write_record(w, EVENTS_TAG, &key, &value)?;
            n += 1;
            if let Some(secret) = secret {
                let crc = checksum::event_sum(topic, offset, &secret);
                let value = <(u32, &str) as Value>::as_bytes(&(crc, secret.as_str()));
                write_record(w, EVENT_SECRETS_TAG, &key, &value)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Check a sealed row before it goes into a snapshot: a record damaged on this node must not
/// leave it with a fresh, valid snapshot checksum, to be found (and blamed) elsewhere.
fn verify_row(table: &str, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
    match table {
        "sm_meta" => {
            let key = String::from_utf8_lossy(k);
            checksum::open(table, &key, k, v).map(drop)
        }
        "events" | "event_secrets" => {
            let (topic, offset) = <(&str, u64) as Value>::from_bytes(k);
            let sealed = <(u32, &str) as Value>::from_bytes(v);
            checksum::check_event(table, topic, offset, sealed).map(drop)
        }
        _ => Ok(()),
    }
}

/// Every state-machine table, each under a stable tag, then every event and secret rendered
/// as archive rows (whether this node reads them from its log or from its archive, the rows
/// are the same: two nodes that applied the same entries in the same state format write the
/// same records; after an upgrade in place, `event_runs` rows written before it are one per
/// append, and those after it one per entry and topic, on each node from its own last
/// checkpoint, so the runs of two upgraded nodes may differ while every event reads alike). A table
/// added later gets a new tag; the end marker's count guards against truncation.
pub(crate) fn write_records(
    txn: &ReadTransaction,
    entries: &EntryReader,
    w: &mut impl Write,
) -> Result<u64, StoreError> {
    let mut n = 0;
    macro_rules! dump {
        ($($tag:literal $table:ident $name:ident),*) => {
            $( if $tag != EVENTS_TAG && $tag != EVENT_SECRETS_TAG {
                n += dump_table(txn, $table, $tag, w)?;
            } )*
        };
    }
    state_machine_tables!(dump);
    n += write_events(txn, entries, w)?;
    Ok(n)
}

/// What a node holds in each replicated table: its rows and the SHA-256 of them in the
/// canonical record form [`write_records`] writes, by table name (`events` holds every event
/// and secret, rendered). Two nodes that applied the same entries hold the same hashes; a
/// table that differs names itself.
pub(crate) fn table_hashes(
    txn: &ReadTransaction,
    entries: &EntryReader,
) -> Result<BTreeMap<&'static str, (u64, String)>, StoreError> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, h: Sha256Writer, rows: u64| {
        let hex: String = sha2::Digest::finalize(h.0)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.insert(name, (rows, hex));
    };
    macro_rules! hash {
        ($($tag:literal $table:ident $name:ident),*) => {
            $( if $tag != EVENTS_TAG && $tag != EVENT_SECRETS_TAG {
                let mut h = Sha256Writer::default();
                let rows = dump_table(txn, $table, $tag, &mut h)?;
                put(stringify!($name), h, rows);
            } )*
        };
    }
    state_machine_tables!(hash);
    let mut h = Sha256Writer::default();
    let rows = write_events(txn, entries, &mut h)?;
    put("events", h, rows);
    Ok(out)
}

/// A `Write` that hashes what is written.
#[derive(Default)]
struct Sha256Writer(sha2::Sha256);

impl Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn write_snapshot(
    txn: &ReadTransaction,
    entries: &EntryReader,
    meta: &Meta,
    w: &mut impl Write,
) -> Result<(), StoreError> {
    w.write_all(MAGIC)?;
    let meta = serde_json::to_vec(meta).expect("snapshot meta serializes");
    write_len_prefixed(w, &meta)?;
    w.write_all(&checksum::sum(&[MAGIC, &meta]).to_le_bytes())?;
    let n = write_records(txn, entries, w)?;
    w.write_all(&[END_TAG])?;
    w.write_all(&n.to_be_bytes())?;
    w.flush()?;
    Ok(())
}

/// A damaged part of a snapshot (`in_file` names the file once it is known).
fn damaged(part: impl ToString, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        file: "a snapshot".into(),
        table: "snapshot".into(),
        key: part.to_string(),
        reason: reason.to_string(),
    }
}

/// Reading a snapshot's bytes: running out early is damage (a truncated file), anything
/// else an I/O error.
fn read_part(part: impl ToString, read: io::Result<()>) -> Result<(), StoreError> {
    match read {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(damaged(part, "truncated")),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(damaged(part, e)),
        Err(e) => Err(e.into()),
    }
}

fn read_crc(r: &mut impl Read, part: impl ToString) -> Result<u32, StoreError> {
    let mut crc = [0u8; 4];
    read_part(part, r.read_exact(&mut crc))?;
    Ok(u32::from_le_bytes(crc))
}

fn read_header(r: &mut impl Read) -> Result<Meta, StoreError> {
    let mut magic = [0u8; 7];
    read_part("header", r.read_exact(&mut magic))?;
    if magic[..6] != MAGIC[..6] {
        return Err(damaged("header", "not a uniqlog snapshot"));
    }
    if ![FORMAT_V2, FORMAT_V3, MAGIC[6]].contains(&magic[6]) {
        return Err(StoreError::Unsupported(format!(
            "a snapshot in format {}; this build reads snapshot formats {FORMAT_V2} to {}",
            magic[6], MAGIC[6]
        )));
    }
    let mut buf = Vec::new();
    read_part("header", read_len_prefixed(r, &mut buf))?;
    let sum = if magic[6] == FORMAT_V2 {
        checksum::sum(&[&buf])
    } else {
        checksum::sum(&[&magic, &buf])
    };
    if read_crc(r, "header")? != sum {
        return Err(damaged("header", "checksum mismatch"));
    }
    serde_json::from_slice(&buf).map_err(|e| damaged("header", e))
}

/// Check every record of a snapshot file, changing nothing.
pub(crate) fn verify(data: &mut SnapshotFile) -> Result<Meta, StoreError> {
    let mut r = BufReader::new(data.rewound()?);
    let meta = verify_from(&mut r)?;
    expect_end(&mut r)?;
    Ok(meta)
}

/// Check the records of the snapshot `r` holds up to its end marker, changing nothing.
pub(crate) fn verify_from(r: &mut impl Read) -> Result<Meta, StoreError> {
    let meta = read_header(r)?;
    read_records(r, |_, _, _| Ok(()))?;
    Ok(meta)
}

/// Nothing may follow a snapshot's end marker.
fn expect_end(r: &mut impl Read) -> Result<(), StoreError> {
    let mut rest = [0u8; 1];
    if r.read(&mut rest)? != 0 {
        return Err(damaged("end marker", "bytes after it"));
    }
    Ok(())
}

/// Insert a record's bytes, once its checksum passed. A key or value that does not decode as
/// its table's type (the wrong width, a string that is not UTF-8, a length past its end) would
/// make redb panic: refuse it as damage. The checksum is no proof of a well-formed record: a
/// snapshot comes from a peer, a backup from a file anyone may have edited.
fn insert_raw<K, V>(t: &mut Table<'_, K, V>, n: u64, k: &[u8], v: &[u8]) -> Result<(), StoreError>
where
    K: Key + WellFormed + 'static,
    V: Value + WellFormed + 'static,
{
    if !K::well_formed(k) || !V::well_formed(v) {
        return Err(damaged(
            format!("record {n}"),
            "a key or value that does not decode as its table's type",
        ));
    }
    t.insert(K::from_bytes(k), V::from_bytes(v))?;
    Ok(())
}

/// Replace the state machine's tables with the snapshot's rows, inside `txn`. Returns the
/// snapshot's meta. Reads the file record by record.
pub(crate) fn load_snapshot(
    txn: &WriteTransaction,
    data: &mut SnapshotFile,
) -> Result<Meta, StoreError> {
    let mut r = BufReader::new(data.rewound()?);
    let meta = load_snapshot_from(txn, &mut r)?;
    expect_end(&mut r)?;
    Ok(meta)
}

/// [`load_snapshot`] from a reader, up to the snapshot's end marker.
pub(crate) fn load_snapshot_from(
    txn: &WriteTransaction,
    r: &mut impl Read,
) -> Result<Meta, StoreError> {
    let meta = read_header(r)?;
    macro_rules! load {
        ($($tag:literal $table:ident $name:ident),*) => {{
            $( txn.delete_table($table)?; )*
            $( let mut $name = txn.open_table($table)?; )*
            read_records(r, |n, k, v| match k.0 {
                $( $tag => insert_raw(&mut $name, n, k.1, v), )*
                t => Err(damaged(format!("record {n}"), format!("unknown table tag {t}"))),
            })?;
        }};
    }
    state_machine_tables!(load);
    Ok(meta)
}

/// Read records until the end marker, checking each record's checksum and the count, handing
/// each checked record (its number, (tag, key), value) to `insert`.
fn read_records(
    r: &mut impl Read,
    mut insert: impl FnMut(u64, (u8, &[u8]), &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut n: u64 = 0;
    loop {
        let part = || format!("record {n}");
        let mut tag = [0u8; 1];
        read_part(part(), r.read_exact(&mut tag))?;
        if tag[0] == END_TAG {
            let mut count = [0u8; 8];
            read_part("end marker", r.read_exact(&mut count))?;
            if u64::from_be_bytes(count) != n {
                return Err(damaged(
                    "end marker",
                    format!(
                        "says {} records, the file holds {n}",
                        u64::from_be_bytes(count)
                    ),
                ));
            }
            break;
        }
        read_part(part(), read_len_prefixed(r, &mut k))?;
        read_part(part(), read_len_prefixed(r, &mut v))?;
        if read_crc(r, part())? != checksum::sum(&[&tag, &k, &v]) {
            return Err(damaged(part(), "checksum mismatch"));
        }
        insert(n, (tag[0], &k), &v)?;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` opened through the file system's [`Disk`].
    fn fs_file(path: &Path) -> Arc<dyn DiskFile> {
        let dir = crate::disk::FsDisk::new(path.parent().unwrap()).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        dir.open(name, false).unwrap()
    }

    use redb::ReadableDatabase;

    fn check(bytes: &[u8]) -> Result<Meta, StoreError> {
        let mut r = io::Cursor::new(bytes);
        let meta = verify_from(&mut r)?;
        expect_end(&mut r)?;
        Ok(meta)
    }

    /// A snapshot whose one record (of `topics`) has `key` and `value`, checksums all good.
    fn with_record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        w.write_all(MAGIC).unwrap();
        let meta = serde_json::to_vec(&Meta::default()).unwrap();
        write_len_prefixed(&mut w, &meta).unwrap();
        w.write_all(&checksum::sum(&[MAGIC, &meta]).to_le_bytes())
            .unwrap();
        let tag = 1u8;
        w.write_all(&[tag]).unwrap();
        write_len_prefixed(&mut w, key).unwrap();
        write_len_prefixed(&mut w, value).unwrap();
        w.write_all(&checksum::sum(&[&[tag], key, value]).to_le_bytes())
            .unwrap();
        w.write_all(&[END_TAG]).unwrap();
        w.write_all(&1u64.to_be_bytes()).unwrap();
        w
    }

    /// Snapshots of format 3 (written by builds before `stream_heads`, and their backups) are
    /// read; a format this build does not know is refused by number, not as damage.
    #[test]
    fn older_snapshot_formats_are_read_and_unknown_ones_refused_by_number() {
        let with_format = |format: u8| {
            let mut bytes = with_record(b"t", &[0; 12]);
            bytes[6] = format;
            let meta = serde_json::to_vec(&Meta::default()).unwrap();
            let at = 7 + 4 + meta.len();
            let sum = checksum::sum(&[&bytes[..7], &meta]);
            bytes[at..at + 4].copy_from_slice(&sum.to_le_bytes());
            read_header(&mut io::Cursor::new(bytes))
        };
        assert_eq!(with_format(3).unwrap(), Meta::default());
        assert_eq!(with_format(MAGIC[6]).unwrap(), Meta::default());
        let err = with_format(MAGIC[6] + 1).unwrap_err();
        assert!(matches!(err, StoreError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("format 5"), "{err}");
    }

    /// A record whose checksum passes but whose key is not UTF-8 is refused as damage, not a
    /// panic in redb's decoder: a snapshot from a peer and a backup file are input.
    #[test]
    fn a_record_that_does_not_decode_is_refused_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let db = &storage.state_machine.live.db;
        let mut sealed = Vec::new();
        let count = 3u64.to_le_bytes();
        sealed.extend_from_slice(&crc32c::crc32c(&count).to_le_bytes());
        sealed.extend_from_slice(&count);
        for (key, value) in [(&b"\xff\xfe"[..], &sealed[..]), (b"t", &sealed[..7])] {
            let bytes = with_record(key, value);
            let path = dir.path().join("bad.snap");
            std::fs::write(&path, &bytes).unwrap();
            let mut file = SnapshotFile::from_file(fs_file(&path));
            let txn = db.begin_write().unwrap();
            let err = load_snapshot(&txn, &mut file).unwrap_err();
            assert!(err.is_damage(), "{err}");
            assert!(err.to_string().contains("record 0"), "{err}");
        }
        // The same record well formed loads.
        let path = dir.path().join("good.snap");
        std::fs::write(&path, with_record(b"t", &sealed)).unwrap();
        let mut file = SnapshotFile::from_file(fs_file(&path));
        let txn = db.begin_write().unwrap();
        load_snapshot(&txn, &mut file).unwrap();
    }

    /// Every single-bit flip anywhere in a snapshot file is found, whatever it hits: magic,
    /// header, a tag, a length, a key, a value, a checksum, the end marker.
    #[test]
    fn every_bit_flip_in_a_snapshot_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let db = &storage.state_machine.live.db;
        {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(EVENTS).unwrap();
                for i in 0..3u64 {
                    let text = format!(r#"{{"offset":{i}}}"#);
                    let crc = checksum::event_sum("t", i, &text);
                    t.insert(("t", i), (crc, text.as_str())).unwrap();
                }
                txn.open_table(TOPICS).unwrap().insert("t", 3).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut bytes = Vec::new();
        let meta = Meta::default();
        let entries = storage.state_machine.entries.clone();
        write_snapshot(&db.begin_read().unwrap(), &entries, &meta, &mut bytes).unwrap();
        assert_eq!(check(&bytes).unwrap(), meta);
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = check(&bad).expect_err(&format!("bit {i} flipped went unnoticed"));
            assert!(
                err.is_damage() || matches!(err, StoreError::Unsupported(_)),
                "bit {i}: {err}"
            );
        }
        // Truncated anywhere, or with bytes added at the end.
        for len in 0..bytes.len() {
            assert!(check(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(check(&longer).is_err());
    }
}
