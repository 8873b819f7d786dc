//! Free space on the disk that holds a node's data, and whether writes may go on.
//!
//! A write that meets a full disk part way through a commit fails, and a failed commit stops
//! Raft on the node (after a failed write nothing since the last good fsync can be trusted).
//! So writes are refused *before* they are proposed, while enough space is left for what is
//! already in flight: the entries queued, their apply, and the next snapshot, which is about
//! as large as the current one. Reads need no space and go on.

use std::path::{Path, PathBuf};

/// A node's disk, as far as writes care.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    /// `None`: a disk that never fills (the simulator's, whose space is not modelled).
    dir: Option<PathBuf>,
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
        DiskSpace {
            dir: Some(dir.to_path_buf()),
        }
    }

    pub(crate) fn unlimited() -> Self {
        DiskSpace { dir: None }
    }

    /// Whether a write may be proposed: at least `min_free` bytes free beyond the size of the
    /// current snapshot. An error reading the free space lets writes through: the commit
    /// itself then reports what is wrong with the disk.
    pub fn check(&self, min_free: u64) -> Result<(), LowDisk> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let Some(free) = free_bytes(dir) else {
            return Ok(());
        };
        let snapshot = std::fs::metadata(crate::snapshot::current_path(dir)).map_or(0, |m| m.len());
        let needed = min_free.saturating_add(snapshot);
        if free < needed {
            return Err(LowDisk {
                dir: dir.clone(),
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
