//! Damaged files on a stopped node: every damage that touches data is detected at start and
//! named (file, and table and key when a record can be named), the node refuses to start
//! with the repair steps, the other two keep serving, and the documented repair (remove,
//! wipe, new id, add-learner, promote) brings back three identical replicas.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "c";

fn uid(i: usize) -> String {
    format!("corrupt-{i:04}")
}

/// Every byte offset in `file` where `needle` starts.
fn occurrences(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == &needle)
        .map(|(i, _)| i)
        .collect()
}

/// Change the last character of every copy of `needle` in `file` (a digit, so a text
/// record stays well-formed JSON: only a checksum can tell). Returns how many copies.
fn damage_text(file: &Path, needle: &str) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let found = occurrences(&bytes, needle.as_bytes());
    for at in &found {
        let last = at + needle.len() - 1;
        bytes[last] = if bytes[last] == b'9' {
            b'8'
        } else {
            bytes[last] + 1
        };
    }
    std::fs::write(file, bytes).unwrap();
    found.len()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Put back the copy of node 3's files taken when it last stopped. Only ever to the state it
/// had when it stopped: an older one would forget entries it acknowledged.
fn restore(pristine: &Path, data_dir: &Path) {
    std::fs::remove_dir_all(data_dir).unwrap();
    copy_dir(pristine, data_dir);
}

/// Start node 3 on damaged files: it must exit with an error that names `names`, and print the
/// repair steps. The other nodes keep taking writes meanwhile.
fn assert_refused(c: &mut Cluster, names: &[&str], write_seq: &mut usize) {
    let before = c.log(3).len();
    c.spawn(3);
    let status = c.wait_exit(3, Duration::from_secs(60));
    let log = c.log(3)[before..].to_string();
    assert!(
        !status.success(),
        "node 3 started on damaged files; its log:\n{log}"
    );
    assert!(log.contains("node 3 refuses to start"), "{log}");
    for name in names {
        assert!(
            log.contains(name),
            "the refusal does not name {name:?}:\n{log}"
        );
    }
    assert!(
        log.contains("uniqlog cluster remove"),
        "no repair steps:\n{log}"
    );
    assert!(
        log.contains("add-learner") && log.contains("promote"),
        "{log}"
    );
    let leader = c.wait_leader(&[1, 2]);
    append_ok(&c.addr(leader), TOPIC, &uid(*write_seq), None);
    *write_seq += 1;
}

#[test]
fn damaged_files_are_refused_by_name_and_the_documented_repair_restores_three_replicas() {
    let tuning = Tuning {
        raft: "snapshot_every_entries = 50\nentries_kept_after_snapshot = 20\n",
        ..Default::default()
    };
    let mut c = Cluster::start(3, tuning.clone());
    let leader = c.wait_leader(&[1, 2, 3]);
    let mut seq = 0;
    while seq < 200 {
        append_ok(&c.addr(leader), TOPIC, &uid(seq), None);
        seq += 1;
    }
    c.wait_converged(&[1, 2, 3]);
    let data_dir: PathBuf = c.dir.path().join("node3");
    c.stop(3);
    // The Raft log's newest segment: it holds the newest entries.
    let log = {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        segments.pop().expect("node 3 has a log segment")
    };
    let (state, snapshot) = (
        data_dir.join("uniqlog.redb"),
        data_dir.join("snapshots/current.snap"),
    );
    assert!(snapshot.exists(), "node 3 built no snapshot");
    let pristine = c.dir.path().join("node3-pristine");
    copy_dir(&data_dir, &pristine);

    // An event behind openraft's purge point: the log keeps it (the log is the event store;
    // the state file holds no copy) and checks it at start like every other frame.
    assert!(
        occurrences(&std::fs::read(&state).unwrap(), uid(5).as_bytes()).is_empty(),
        "the state file holds a copy of an event"
    );
    let holding: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !occurrences(&std::fs::read(p).unwrap(), uid(5).as_bytes()).is_empty())
        .collect();
    assert_eq!(holding.len(), 1, "one segment holds event 5: {holding:?}");
    assert!(damage_text(&holding[0], &uid(5)) > 0);
    let name = holding[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_refused(&mut c, &[name.as_str(), "frame"], &mut seq);
    restore(&pristine, &data_dir);

    // A Raft log entry: the newest entries are still in the log. Its frame was written whole
    // (its trailer says so): damage, never taken for a torn write.
    assert!(damage_text(&log, &uid(199)) > 0);
    let name = log.file_name().unwrap().to_str().unwrap().to_string();
    assert_refused(&mut c, &[name.as_str(), "frame"], &mut seq);
    restore(&pristine, &data_dir);

    // A snapshot record.
    assert!(damage_text(&snapshot, &uid(5)) > 0);
    assert_refused(&mut c, &["current.snap", "snapshot", "record"], &mut seq);
    restore(&pristine, &data_dir);

    // Random single-byte damage anywhere in each file. A flip that lands on live data must
    // be refused naming the file; one that lands on free space changes nothing, and then
    // node 3 must serve exactly what the others serve.
    // A failure prints its seed; CORRUPTION_SEED=<seed> replays it.
    let seed: u64 = std::env::var("CORRUPTION_SEED")
        .map(|s| s.parse().expect("CORRUPTION_SEED is a number"))
        .unwrap_or_else(|_| rand::random());
    eprintln!("random damage seed {seed} (CORRUPTION_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut refused, mut harmless) = (0, 0);
    for file in [&state, &log, &snapshot] {
        for _ in 0..5 {
            let mut bytes = std::fs::read(file).unwrap();
            // A log segment ends in zeros written ahead of its frames: the flips go before.
            let end = if file == &log {
                bytes.iter().rposition(|&b| b != 0).unwrap() + 1
            } else {
                bytes.len()
            };
            let at = rng.gen_range(0..end);
            bytes[at] ^= 1 << rng.gen_range(0..8);
            std::fs::write(file, bytes).unwrap();
            let before = c.log(3).len();
            c.spawn(3);
            let started = wait_for("node 3 to refuse or serve", Duration::from_secs(60), || {
                if get(&c.addr(3), "/health").is_ok_and(|r| r.status == 200) {
                    return Some(true);
                }
                let exited = c.log(3)[before..].contains("refuses to start");
                exited.then_some(false)
            });
            if started {
                harmless += 1;
                c.wait_converged(&[1, 2, 3]);
                assert_eq!(
                    c.read_topic(3, TOPIC),
                    c.read_topic(1, TOPIC),
                    "node 3 serves other events after byte {at} of {} flipped (seed {seed})",
                    file.display()
                );
                c.stop(3);
                // Node 3 has caught up and acknowledged newer entries: going back to the older
                // copy would make it forget them (a log reversion that the leader refuses).
                // Its files are intact, so they are the new reference.
                std::fs::remove_dir_all(&pristine).unwrap();
                copy_dir(&data_dir, &pristine);
            } else {
                refused += 1;
                c.wait_exit(3, Duration::from_secs(30));
                let log = &c.log(3)[before..];
                let name = file.file_name().unwrap().to_str().unwrap();
                assert!(
                    log.contains(name),
                    "byte {at} (seed {seed}): refusal does not name {name}:\n{log}"
                );
            }
            restore(&pristine, &data_dir);
        }
    }
    eprintln!("random damage: {refused} refused, {harmless} on free space");
    // Ten of the flips are in the snapshot file and the log segment's frames, where every
    // byte is covered.
    assert!(
        refused >= 10,
        "seed {seed}: only {refused} random flips were refused"
    );

    // The documented repair, on a node left damaged.
    damage_text(&state, &uid(5));
    let out = c.cli(&c.config.clone(), &["cluster", "remove", "--id", "3"]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&data_dir).unwrap();
    let new = c.add_process(&tuning);
    let config = c.node(new).config.clone();
    let id = new.to_string();
    let out = c.cli(&config, &["cluster", "add-learner", "--id", &id]);
    assert!(
        out.status.success(),
        "add-learner: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_converged(&[1, 2, new]);
    let out = c.cli(&config, &["cluster", "promote", "--id", &id]);
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: BTreeMap<u64, bool> = [(1, true), (2, true), (new, true)].into();
    wait_for(
        "voters 1, 2 and the new node",
        Duration::from_secs(30),
        || (c.members(1) == expected).then_some(()),
    );
    let leader = c.wait_leader(&[1, 2, new]);
    append_ok(&c.addr(leader), TOPIC, "after-repair", None);
    c.wait_converged(&[1, 2, new]);
    let first = c.read_topic(1, TOPIC);
    assert_eq!(first.len(), seq + 1);
    for other in [2, new] {
        assert!(
            first == c.read_topic(other, TOPIC),
            "node {other} differs from node 1"
        );
    }
}
