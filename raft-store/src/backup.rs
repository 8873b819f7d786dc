//! Backups: a consistent copy of a node's state machine in one file, and a fresh data dir
//! made from one (restore).
//!
//! A backup *is* a snapshot file (`snapshot.rs`: a format byte, a checksum per record and over
//! the header, a record count at the end), written from one read transaction of the applied
//! state, so it is consistent and checked the same way. Applied means committed: a backup
//! never holds an entry the cluster could still lose.
//!
//! After the snapshot comes a trailer: a magic, whether the backup is signed, and an
//! HMAC-SHA256 of everything before it under the cluster secret (zeros when the cluster has
//! none). The CRC-32C of the records catches damage; the MAC catches a file someone edited,
//! who could recompute every CRC. Restore checks it whenever it is given a secret.
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

use hmac::Mac;
use openraft::{LogId, Membership, StoredMembership, Vote};

use crate::error::StoreError;
use crate::snapshot::{self, Meta};
use crate::tables::{get_json, put_json, KEY_LAST_APPLIED, KEY_MEMBERSHIP, SM_META};
use crate::types::{Node, NodeId};
use crate::{StateReader, Storage};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The start of a backup's trailer.
const TRAILER_MAGIC: &[u8; 8] = b"UQBKMAC1";
/// Magic, signed flag, MAC.
const TRAILER_BYTES: usize = 8 + 1 + 32;

/// The MAC of a backup's bytes under the cluster secret `key` (domain-separated, so it is
/// never a MAC of anything else under that secret).
fn backup_mac(key: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"uniqlog-backup-v1\0");
    mac
}

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
    /// Whether it carries a MAC under a cluster secret (checked when one was given).
    pub signed: bool,
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
            signed: false,
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

/// A writer that counts and checksums what passes through, and MACs it while `mac` is set.
struct Summing<W> {
    inner: W,
    bytes: u64,
    crc: u32,
    mac: Option<HmacSha256>,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        if let Some(mac) = &mut self.mac {
            mac.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl StateReader {
    /// Write a backup of the state this node has applied, as one read transaction sees it,
    /// signed under `mac_key` (the cluster secret) when given. Applies go on meanwhile. The
    /// file is readable by this user only: it holds every event and password hash.
    pub fn backup(&self, mac_key: Option<&[u8]>) -> Result<BackupFile, StoreError> {
        let path = self.snapshots.temp_path("backup").ok_or_else(|| {
            StoreError::Unsupported("backups need a data dir on the file system".into())
        })?;
        let written = crate::files::catching(crate::DATA_FILE, "writing a backup", || {
            // A checkpoint first: the backup reads the state file alone.
            let txn = self.live.checkpoint()?;
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
            let mut info = BackupInfo::of(&meta)?;
            let mut w = Summing {
                inner: BufWriter::new(create_private(&path)?),
                bytes: 0,
                crc: 0,
                mac: mac_key.map(backup_mac),
            };
            snapshot::write_snapshot(&txn, &self.entries, &meta, &mut w)?;
            let mac = w.mac.take();
            info.signed = mac.is_some();
            w.write_all(TRAILER_MAGIC)?;
            w.write_all(&[u8::from(info.signed)])?;
            w.write_all(&mac.map_or([0; 32], |m| m.finalize().into_bytes().into()))?;
            w.flush()?;
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

/// Create `path` for writing, readable by its owner only.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// How a backup file must be signed to be accepted.
#[derive(Debug, Clone, Copy)]
pub enum BackupKey<'a> {
    /// Signed under this cluster secret (or unsigned, when `allow_unsigned`).
    Secret { key: &'a [u8], allow_unsigned: bool },
    /// No secret to check against: any signature is taken as it is.
    Unchecked,
}

/// The length of the snapshot part of a backup file and whether it is signed, after checking
/// its MAC as `key` says.
fn check_signature(path: &Path, key: BackupKey<'_>) -> Result<(u64, bool), StoreError> {
    let name = path.display();
    let mut file = File::open(path).map_err(|e| not_readable(path, e))?;
    let len = file.metadata()?.len();
    let mut trailer = [0u8; TRAILER_BYTES];
    let has_trailer = len >= TRAILER_BYTES as u64 && {
        io::Seek::seek(&mut file, io::SeekFrom::Start(len - TRAILER_BYTES as u64))?;
        file.read_exact(&mut trailer)?;
        trailer.starts_with(TRAILER_MAGIC)
    };
    let body = if has_trailer {
        len - TRAILER_BYTES as u64
    } else {
        len
    };
    let signed = has_trailer && trailer[8] == 1;
    let BackupKey::Secret {
        key,
        allow_unsigned,
    } = key
    else {
        return Ok((body, signed));
    };
    if !signed {
        if allow_unsigned {
            return Ok((body, false));
        }
        return Err(StoreError::Unsupported(format!(
            "{name} is not signed, and this cluster has a secret: a backup taken from it would \
             be. If it was taken from a cluster without a cluster secret, restore it with \
             --allow-unsigned"
        )));
    }
    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
    let mut mac = backup_mac(key);
    let mut reader = BufReader::new(file).take(body);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        mac.update(&buf[..n]);
    }
    mac.verify_slice(&trailer[9..]).map_err(|_| {
        StoreError::Unsupported(format!(
            "{name} does not carry a valid MAC under this cluster's secret: it was changed \
             after it was taken, or taken from a cluster with another secret; nothing was \
             restored"
        ))
    })?;
    Ok((body, true))
}

/// Check every record of the backup at `path`, and its MAC as `key` says, changing nothing;
/// say what it holds.
pub fn verify_backup(path: &Path, key: BackupKey<'_>) -> Result<BackupInfo, StoreError> {
    let name = path.display().to_string();
    let (body, signed) = check_signature(path, key)?;
    let file = File::open(path).map_err(|e| not_readable(path, e))?;
    let mut r = BufReader::new(file).take(body);
    let meta = snapshot::verify_from(&mut r).map_err(|e| e.in_file(&name))?;
    let mut rest = [0u8; 1];
    if r.read(&mut rest)? != 0 {
        return Err(StoreError::Unsupported(format!(
            "{name} has bytes after its last record: it is not a uniqlog backup, or damaged"
        )));
    }
    let mut info = BackupInfo::of(&meta)?;
    info.signed = signed;
    Ok(info)
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
    key: BackupKey<'_>,
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
    let info = verify_backup(backup, key)?;
    let (body, _) = check_signature(backup, BackupKey::Unchecked)?;
    let storage = Storage::open(data_dir)?;
    let name = backup.display().to_string();
    let mut file =
        BufReader::new(File::open(backup).map_err(|e| not_readable(backup, e))?).take(body);
    let live = storage.state_machine.live.clone();
    // The log first: empty, everything up to the backup's entry purged and committed, and a
    // vote in the backup's term so the next election starts after it. Interrupted before the
    // state below is committed, the data dir is a purged log beside a state that applied
    // nothing, which a node refuses to start on (`files::check_pair`).
    let last = LogId::new(
        openraft::CommittedLeaderId::new(info.term, info.leader),
        info.log_index,
    );
    let log = storage.log.log.clone();
    log.purge(last)?;
    log.save_vote(Vote::new(info.term, id))?;
    log.append(&[], Some(Some(last)))?;
    // The state: the backup's rows, then this node alone as the membership, effective from
    // the backup's last entry on.
    live.install(|txn| {
        let meta = snapshot::load_snapshot_from(txn, &mut file).map_err(|e| e.in_file(&name))?;
        if meta.last_log_id != Some(last) {
            return Err(StoreError::Snapshot(format!(
                "{name} changed while it was being restored"
            )));
        }
        let alone = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]));
        let mut m = txn.open_table(SM_META)?;
        put_json(&mut m, KEY_LAST_APPLIED, &Some(last))?;
        put_json(
            &mut m,
            KEY_MEMBERSHIP,
            &StoredMembership::new(Some(last), alone),
        )?;
        Ok(())
    })?;
    // A snapshot of the restored state, for the nodes that join (the log has no entry for
    // them to replay).
    crate::state_machine::build(
        &live,
        &storage.state_machine.entries,
        &storage.state_machine.snapshots,
    )?;
    Ok(info)
}
