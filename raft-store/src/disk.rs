//! The one interface the Raft log's files go through: a folder of files that can be read and
//! written at an offset, cut, synced, listed, renamed and removed. The real implementation is
//! the file system ([`FsDisk`]); the simulator brings its own, whose files lose what was not
//! synced and tear on a crash, so its faults reach the log exactly as they would on a machine.
//!
//! Small on purpose: what a log of append-only segments needs, and nothing a test disk would
//! have to fake without a reason.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of files.
pub trait Disk: Send + Sync + 'static {
    /// Open `name`, creating it empty when `create` and it is missing.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// The names of the files in the folder, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Rename `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Make the folder's entries (files created, renamed, removed) durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Where the folder is, for messages.
    fn describe(&self) -> String;
    /// The folder on the file system, when it is one: backups are plain files written beside
    /// the snapshots (`StateReader::backup`), which a simulated folder does not hold.
    fn local_dir(&self) -> Option<&Path> {
        None
    }
}

/// One open file.
#[allow(clippy::len_without_is_empty)] // a file's length is read to find its end, never to test it
pub trait DiskFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Fill `buf` from `offset`; an error if the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make what was written durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// A folder of the file system.
pub struct FsDisk {
    dir: PathBuf,
}

impl FsDisk {
    /// The folder at `dir`, created if missing.
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FsDisk {
            dir: dir.to_path_buf(),
        })
    }
}

impl Disk for FsDisk {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.dir.join(name))?;
        Ok(Arc::new(FsFile(file)))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

struct FsFile(File);

impl DiskFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_read_cut_renamed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = FsDisk::new(&dir.path().join("log")).unwrap();
        let f = disk.open("a", true).unwrap();
        f.write_at(0, b"hello world").unwrap();
        f.sync_data().unwrap();
        let mut buf = [0u8; 5];
        f.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        assert!(f.read_at(8, &mut buf).is_err(), "past the end");
        f.set_len(5).unwrap();
        assert_eq!(f.len().unwrap(), 5);
        disk.rename("a", "b").unwrap();
        disk.sync_dir().unwrap();
        assert_eq!(disk.list().unwrap(), vec!["b".to_string()]);
        assert!(disk.open("a", false).is_err());
        disk.remove("b").unwrap();
        assert!(disk.list().unwrap().is_empty());
    }
}
