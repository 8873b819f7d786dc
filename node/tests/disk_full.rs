//! A node whose disk fills up: writes are refused with 503 before anything is proposed, reads
//! go on, writes resume once space is freed, and after a restart every record passes its
//! checksum and the log holds exactly the acknowledged writes.
//!
//! The node's data dir is a 64 MiB tmpfs mounted by this test in a private mount namespace
//! (`unshare`), so no other test and nothing on the host sees it; the node runs inside that
//! namespace (`nsenter`), and the test reaches the files through `/proc/<pid>/root`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// A process holding a private mount namespace with a size-limited tmpfs at `mount_point`.
struct Tmpfs {
    holder: Child,
    mount_point: PathBuf,
}

impl Tmpfs {
    fn mount(mount_point: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(mount_point).unwrap();
        let script = format!(
            "mount -t tmpfs -o size={size_mib}m tmpfs '{}' && echo mounted && exec sleep 3600",
            mount_point.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("this test needs util-linux unshare (Debian: util-linux)");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "mounted",
            "could not mount a tmpfs in a private mount namespace: this test needs user \
             namespaces or root"
        );
        Tmpfs {
            holder,
            mount_point: mount_point.to_path_buf(),
        }
    }

    /// The command prefix that runs a program inside the namespace.
    fn launcher(&self) -> Vec<String> {
        let pid = self.holder.id().to_string();
        [
            "nsenter",
            "-t",
            &pid,
            "--user",
            "--mount",
            "--preserve-credentials",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The mount point as seen from outside the namespace.
    fn path(&self) -> PathBuf {
        let inside = self.mount_point.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(inside)
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().unwrap());
        parts.next().unwrap() * parts.next().unwrap()
    }

    /// Take all but `leave` bytes of the free space with a file.
    fn fill_leaving(&self, leave: u64) {
        let take = self.free_bytes().saturating_sub(leave);
        let file = std::fs::File::create(self.path().join("filler")).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(file);
        let block = vec![0xAAu8; 1024 * 1024];
        let mut left = take;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            w.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        w.flush().unwrap();
    }

    fn free_filler(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

const MIB: u64 = 1024 * 1024;

fn append(addr: &str, uid: &str) -> Resp {
    post(addr, "/v1/topics/disk/events", &event_body(uid, None)).unwrap()
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_space_is_freed() {
    let mut c = Cluster::prepare(
        1,
        Tuning {
            limits: "disk_free_min_bytes = 8388608",
            ..Default::default()
        },
        None,
        None,
    );
    let disk = Tmpfs::mount(&c.dir.path().join("node1"), 64);
    c.launcher = disk.launcher();
    c.boot();
    let addr = c.addr(1);
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let uid = format!("before-{i}");
        assert_eq!(append(&addr, &uid).status, 201);
        acked.insert(uid);
    }

    // Just above the reserve: writes go on until the node's own files eat the margin, and
    // then every write is refused before it is proposed.
    disk.fill_leaving(8 * MIB + 2 * MIB);
    let mut refused = None;
    for i in 0..200_000 {
        let uid = format!("filling-{i}");
        let r = append(&addr, &uid);
        match r.status {
            201 => {
                acked.insert(uid);
            }
            503 => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected answer {s} while the disk fills: {}", r.text),
        }
    }
    let refused = refused.expect("writes were never refused while the disk filled");
    assert_eq!(refused.body["error"], "unavailable", "{}", refused.text);
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains("writes are refused until space is freed"),
        "{message}"
    );
    assert!(
        disk.free_bytes() < 8 * MIB,
        "refused with {} bytes free",
        disk.free_bytes()
    );

    // Refused every time while the disk stays full, and the node stays up and serves reads.
    for i in 0..5 {
        assert_eq!(append(&addr, &format!("refused-{i}")).status, 503);
    }
    assert_eq!(get(&addr, "/health").unwrap().status, 200);
    let read: BTreeSet<String> = c
        .read_topic(1, "disk")
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        read, acked,
        "reads on a full disk return exactly the acknowledged writes"
    );

    // Space comes back: writes resume without a restart.
    disk.free_filler();
    for i in 0..20 {
        let uid = format!("after-{i}");
        let r = append(&addr, &uid);
        assert_eq!(r.status, 201, "after freeing space: {}", r.text);
        acked.insert(uid);
    }

    // A restart verifies every page and record: nothing was damaged, nothing extra stored.
    c.kill(1);
    c.restart(1);
    c.wait_leader(&[1]);
    let read: BTreeSet<String> = c
        .read_topic(1, "disk")
        .iter()
        .map(|e| e["data"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(read, acked);
    assert!(!c.log(1).contains("damaged"), "{}", c.log(1));
}
