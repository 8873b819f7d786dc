//! Backups: a consistent copy of a node's state machine in one file, and a fresh data dir
//! made from one (restore).
//!
//! A backup *is* a snapshot file (`snapshot.rs`: a format byte, a checksum per record and over
//! the header, a record count at the end), written from one read transaction of the applied
//! state, so it is consistent and checked the same way. Applied means committed: a backup
//! never holds an entry the cluster could still lose.
//!
//! Restoring writes it as the initial state of a new node whose membership is that node
//! alone. Its log starts empty after the backup's last log id, marked purged (so a node that
//! joins later gets the state as a snapshot); its vote names the backup's term, so its first
//! election is in a later term than any entry it holds. Log indexes, offsets, stream versions,
//! uniq owners and idempotency records are all kept as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::{LogId, Membership, StoredMembership, Vote};
use redb::{Durability, ReadableDatabase};

use crate::error::StoreError;
use crate::snapshot::{self, Meta, SnapshotFile};
use crate::tables::{get_json, put_json, KEY_LAST_APPLIED, KEY_MEMBERSHIP, SM_META};
use crate::tables::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, RAFT_META};
use crate::types::{Node, NodeId};
use crate::{StateReader, Storage};

/// What a backup holds, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The last log index applied in the backup.
    pub log_index: u64,
    /// The term of that entry, and the leader that proposed it.
    pub term: u64,
    pub leader: NodeId,
    /// The voters of the cluster it was taken from.
    pub voters: BTreeSet<NodeId>,
}

impl BackupInfo {
    fn of(meta: &Meta) -> Result<Self, StoreError> {
        let last = meta.last_log_id.ok_or_else(|| {
            StoreError::Unsupported("the backup holds no applied entry: nothing to restore".into())
        })?;
        Ok(BackupInfo {
            log_index: last.index,
            term: last.leader_id.term,
            leader: last.leader_id.node_id,
            voters: meta.last_membership.membership().voter_ids().collect(),
        })
    }
}

/// A backup written to a temporary file, ready to be read from its start. The file is
/// removed when this is dropped (it lives in the snapshot folder, whose temporaries a
/// restart clears too).
pub struct BackupFile {
    file: BufReader<File>,
    path: PathBuf,
    pub info: BackupInfo,
    /// Its size.
    pub bytes: u64,
    /// CRC-32C of the whole file, for the copy's end-to-end check.
    pub crc32c: u32,
}

impl Read for BackupFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A writer that counts and checksums what passes through.
struct Summing<W> {
    inner: W,
    bytes: u64,
    crc: u32,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StateReader {
    /// Write a backup of the state this node has applied, as one read transaction sees it.
    /// Applies go on meanwhile.
    pub fn backup(&self) -> Result<BackupFile, StoreError> {
        let path = self.snapshots.temp_path("backup");
        let written = crate::files::catching(crate::DATA_FILE, "writing a backup", || {
            let txn = self.db.begin_read()?;
            let (last_log_id, last_membership) = {
                let t = txn.open_table(SM_META)?;
                let last: Option<LogId<NodeId>> =
                    get_json(&t, "sm_meta", KEY_LAST_APPLIED)?.flatten();
                let membership: StoredMembership<NodeId, Node> =
                    get_json(&t, "sm_meta", KEY_MEMBERSHIP)?.unwrap_or_default();
                (last, membership)
            };
            let meta = Meta {
                snapshot_id: format!(
                    "backup-{}",
                    last_log_id.map_or("none".into(), |l| l.index.to_string())
                ),
                last_log_id,
                last_membership,
            };
            let info = BackupInfo::of(&meta)?;
            let mut w = Summing {
                inner: BufWriter::new(File::create(&path)?),
                bytes: 0,
                crc: 0,
            };
            snapshot::write_snapshot(&txn, &meta, &mut w)?;
            Ok((info, w.bytes, w.crc))
        });
        let (info, bytes, crc32c) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(self.damage.saw(e));
            }
        };
        Ok(BackupFile {
            file: BufReader::new(File::open(&path)?),
            path,
            info,
            bytes,
            crc32c,
        })
    }
}

/// Check every record of the backup at `path`, changing nothing, and say what it holds.
pub fn verify_backup(path: &Path) -> Result<BackupInfo, StoreError> {
    let name = path.display().to_string();
    let mut file = SnapshotFile::from_file(File::open(path).map_err(|e| not_readable(path, e))?);
    let meta = snapshot::verify(&mut file).map_err(|e| e.in_file(&name))?;
    BackupInfo::of(&meta)
}

fn not_readable(path: &Path, e: io::Error) -> StoreError {
    StoreError::Unsupported(format!("cannot read {}: {e}", path.display()))
}

/// Make `data_dir` the data dir of node `id` (at `node`) holding the backup at `backup`, as
/// a one-node cluster. `data_dir` must be missing or empty: a snapshot or a file left there
/// from another life would be taken for part of this one.
pub fn restore(
    data_dir: &Path,
    backup: &Path,
    id: NodeId,
    node: Node,
) -> Result<BackupInfo, StoreError> {
    let held: Vec<String> = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if !held.is_empty() {
        return Err(StoreError::Unsupported(format!(
            "{} already holds a node's files ({}): restore writes a new data dir; move this \
             one away first",
            data_dir.display(),
            held.join(", ")
        )));
    }
    let info = verify_backup(backup)?;
    let storage = Storage::open(data_dir)?;
    let name = backup.display().to_string();
    let mut file =
        SnapshotFile::from_file(File::open(backup).map_err(|e| not_readable(backup, e))?);
    let db = storage.state_machine.db.clone();
    // The log first: empty, everything up to the backup's entry purged and committed, and a
    // vote in the backup's term so the next election starts after it. Interrupted before the
    // state below is committed, the data dir is a purged log beside a state that applied
    // nothing, which a node refuses to start on (`files::check_pair`).
    let last = LogId::new(
        openraft::CommittedLeaderId::new(info.term, info.leader),
        info.log_index,
    );
    let log_db = storage.log.db.clone();
    let txn = crate::files::write_txn(&log_db, Durability::Immediate)?;
    {
        let mut m = txn.open_table(RAFT_META)?;
        put_json(&mut m, KEY_LAST_PURGED, &last)?;
        put_json(&mut m, KEY_COMMITTED, &Some(last))?;
        put_json(&mut m, KEY_VOTE, &Vote::new(info.term, id))?;
    }
    txn.commit()?;
    // The state: the backup's rows, then this node alone as the membership, effective from
    // the backup's last entry on.
    let txn = crate::files::write_txn(&db, Durability::Immediate)?;
    let meta = snapshot::load_snapshot(&txn, &mut file).map_err(|e| e.in_file(&name))?;
    if meta.last_log_id != Some(last) {
        return Err(StoreError::Snapshot(format!(
            "{name} changed while it was being restored"
        )));
    }
    let alone = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]));
    {
        let mut m = txn.open_table(SM_META)?;
        put_json(&mut m, KEY_LAST_APPLIED, &Some(last))?;
        put_json(
            &mut m,
            KEY_MEMBERSHIP,
            &StoredMembership::new(Some(last), alone),
        )?;
    }
    txn.commit()?;
    // A snapshot of the restored state, for the nodes that join (the log has no entry for
    // them to replay).
    crate::state_machine::build(&db, &storage.state_machine.snapshots)?;
    Ok(info)
}
