//! Free space on the disk that holds a node's data, and whether writes may go on.
//!
//! A write that meets a full disk part way through a commit fails, and a failed commit stops
//! Raft on the node (after a failed write nothing since the last good fsync can be trusted).
//! So writes are refused *before* they are proposed, while enough space is left for what is
//! already in flight: the entries queued, their apply, and the next snapshot, which is about
//! as large as the current one. Reads need no space and go on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a measure of the free space stands for. Every write asks; measuring is two system
/// calls (`statvfs`, and `stat` of the snapshot), which cost about 3 % of a busy leader's CPU
/// when made for every request. At most this long of writes goes by unmeasured, far less than
/// `disk_free_min_bytes` at any rate this disk can take.
const MEASURE_EVERY: Duration = Duration::from_millis(100);

/// A node's disk, as far as writes care. Cheap to clone: clones share the last measure.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    source: Source,
    /// When free space and snapshot size were last read, and what they were.
    last: Arc<Mutex<Option<Measure>>>,
}

/// Where free space is read from.
#[derive(Clone)]
enum Source {
    /// A disk that never fills (tests over disks whose space is not modelled).
    Unlimited,
    /// The file system holding this data dir (`statvfs`).
    Dir(PathBuf),
    /// Disks that are not the file system's: the simulator's, whose capacity it sets.
    Probe(Arc<dyn SpaceProbe>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Unlimited => f.write_str("Unlimited"),
            Source::Dir(dir) => write!(f, "Dir({})", dir.display()),
            Source::Probe(p) => write!(f, "Probe({})", p.describe()),
        }
    }
}

/// Free space of disks the node does not reach through the file system.
pub trait SpaceProbe: Send + Sync + 'static {
    /// Bytes that may still be written; `None` when unknown (writes then go through).
    fn free(&self) -> Option<u64>;
    /// Size of the current snapshot (the next one needs about as much).
    fn snapshot_len(&self) -> u64;
    /// The disk, for messages.
    fn describe(&self) -> String;
}

/// A reading and when it was taken; `None` when the free space could not be read.
type Measure = (Instant, Option<Space>);

#[derive(Debug, Clone, Copy)]
struct Space {
    free: u64,
    snapshot: u64,
}

/// Free space below what writes need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowDisk {
    pub dir: PathBuf,
    pub free: u64,
    pub needed: u64,
}

impl std::fmt::Display for LowDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the disk of {} has {} MiB free, and writes need {} MiB (disk_free_min_bytes plus \
             the size of the last snapshot): writes are refused until space is freed; reads go on",
            self.dir.display(),
            self.free / (1024 * 1024),
            self.needed.div_ceil(1024 * 1024),
        )
    }
}

impl DiskSpace {
    pub(crate) fn at(dir: &Path) -> Self {
        Self::of(Source::Dir(dir.to_path_buf()))
    }

    pub(crate) fn unlimited() -> Self {
        Self::of(Source::Unlimited)
    }

    /// Free space as `probe` reports it.
    pub fn probe(probe: Arc<dyn SpaceProbe>) -> Self {
        Self::of(Source::Probe(probe))
    }

    fn of(source: Source) -> Self {
        DiskSpace {
            source,
            last: Arc::default(),
        }
    }

    /// Free space and snapshot size, read at most every [`MEASURE_EVERY`] while they allow
    /// writes under `min_free`; a reading that refused them is never reused, so writes resume
    /// as soon as space is freed. `None` when the free space cannot be read.
    fn measure(&self, min_free: u64) -> Option<Space> {
        let mut last = self.last.lock().expect("disk space lock");
        if let Some((at, space)) = *last {
            let allowed = space.is_none_or(|s| s.free >= min_free.saturating_add(s.snapshot));
            if allowed && at.elapsed() < MEASURE_EVERY {
                return space;
            }
        }
        let space = match &self.source {
            Source::Unlimited => None,
            Source::Dir(dir) => free_bytes(dir).map(|free| Space {
                free,
                snapshot: std::fs::metadata(crate::snapshot::current_path(dir))
                    .map_or(0, |m| m.len()),
            }),
            Source::Probe(probe) => probe.free().map(|free| Space {
                free,
                snapshot: probe.snapshot_len(),
            }),
        };
        *last = Some((Instant::now(), space));
        space
    }

    /// Whether a write may be proposed: at least `min_free` bytes free beyond the size of the
    /// current snapshot, as last measured. An error reading the free space lets writes
    /// through: the commit itself then reports what is wrong with the disk.
    pub fn check(&self, min_free: u64) -> Result<(), LowDisk> {
        if matches!(self.source, Source::Unlimited) {
            return Ok(());
        }
        let Some(Space { free, snapshot }) = self.measure(min_free) else {
            return Ok(());
        };
        let needed = min_free.saturating_add(snapshot);
        if free < needed {
            return Err(LowDisk {
                dir: match &self.source {
                    Source::Dir(dir) => dir.clone(),
                    Source::Probe(probe) => PathBuf::from(probe.describe()),
                    Source::Unlimited => PathBuf::new(),
                },
                free,
                needed,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged process may still write on the filesystem of `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_directory_has_free_space_and_an_impossible_reserve_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSpace::at(dir.path());
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(disk.check(0).is_ok());
        let low = disk.check(u64::MAX).unwrap_err();
        assert_eq!(low.needed, u64::MAX);
        assert!(low.to_string().contains("writes are refused"), "{low}");
        assert!(DiskSpace::unlimited().check(u64::MAX).is_ok());
    }
}
