//! The Raft log's segment files on the simulated folder (a normal test, no madsim needed):
//! a power cut at every write (torn, or with every unsynced write landing whole, not at all or
//! torn on its own) loses only what was not synced and never serves a torn record; a flipped bit anywhere in what was synced is refused by name, never taken for
//! a torn write and never read as data; truncating inside a frame and purging survive a reopen.

use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, LogId, Vote};
use raft_store::disk::Disk;
use raft_store::segments::SegmentLog;
use raft_store::TypeConfig;
use sim_tests::folder::SimFolder;

mod common;
use common::entry;

fn open(disk: Arc<dyn Disk>) -> SegmentLog {
    SegmentLog::open_sized(disk, 4096).expect("opens").0
}

fn all(log: &SegmentLog) -> Vec<Entry<TypeConfig>> {
    log.read(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
        .expect("reads")
}

/// What a run left: the entries written (acknowledged, then those of the write that failed),
/// how many of them the log must hold, and the vote.
struct Outcome {
    written: Vec<Entry<TypeConfig>>,
    required: usize,
    vote: Option<Vote<u64>>,
    /// The vote whose save failed, if one did: it may or may not have been saved.
    vote_failed: Option<Vote<u64>>,
}

/// The fault a run arms.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// Every sync fails from then on (and the node is cut later, cleanly).
    FailingSyncs,
    /// A power cut at the next sync: its last write torn.
    Torn,
    /// A power cut at the next sync: each unsynced write landed whole, not at all or torn.
    Scrambled,
}

/// A seeded run of appends of varied sizes (several segments), truncations inside frames and
/// votes, with a fault armed before step `cut_at`.
fn run(folder: &SimFolder, cut_at: usize, cut: Cut, seed: u64) -> Outcome {
    let log = open(folder.open());
    let mut acked: Vec<Entry<TypeConfig>> = Vec::new();
    let mut failed: Vec<Entry<TypeConfig>> = Vec::new();
    let mut required = None;
    let mut vote = None;
    let mut vote_failed = None;
    let mut syncs = 0;
    let mut next = 1u64;
    let arm = |syncs: &mut usize| {
        *syncs += 1;
        if *syncs == cut_at {
            let mut flip = seed;
            let coin = Box::new(move |_| {
                flip = flip.wrapping_mul(6364136223846793005).wrapping_add(1);
                flip >> 63 == 1
            });
            match cut {
                Cut::Torn => folder.tear_at_next_sync(coin),
                Cut::Scrambled => folder.scramble_at_next_sync(coin),
                Cut::FailingSyncs => folder.fail_syncs(u64::MAX),
            }
        }
    };
    for step in 0..40u64 {
        arm(&mut syncs);
        let result = match step % 10 {
            7 if next > 3 => {
                let from = next - 2;
                let r = log.truncate(from);
                match r {
                    Ok(()) => {
                        acked.retain(|e| e.log_id.index < from);
                        next = from;
                    }
                    // A truncation that failed may have removed any part of what it was
                    // asked to remove, and nothing else.
                    Err(_) => {
                        required = Some(acked.iter().filter(|e| e.log_id.index < from).count())
                    }
                }
                r
            }
            9 => {
                let v = Vote::new(step, 1);
                let r = log.save_vote(v);
                match r {
                    Ok(()) => vote = Some(v),
                    Err(_) => vote_failed = Some(v),
                }
                r
            }
            _ => {
                let batch: Vec<_> = (0..1 + step % 3)
                    .map(|i| entry(1 + step / 10, next + i, 100 * (step as usize % 7)))
                    .collect();
                let r = log.append(&batch, Some(batch.last().map(|e| e.log_id)));
                match r {
                    Ok(()) => {
                        next += batch.len() as u64;
                        acked.extend(batch);
                    }
                    // Not acknowledged: it may or may not be there.
                    Err(_) => failed = batch,
                }
                r
            }
        };
        if result.is_err() {
            break;
        }
    }
    let required = required.unwrap_or(acked.len());
    acked.extend(failed);
    Outcome {
        written: acked,
        required,
        vote,
        vote_failed,
    }
}

#[test]
fn a_power_cut_at_every_write_loses_only_what_was_not_acknowledged() {
    // A scrambled cut draws many fates for the same writes: several seeds per step.
    let runs = [(Cut::FailingSyncs, 1), (Cut::Torn, 1), (Cut::Scrambled, 8)];
    for (cut, seeds) in runs {
        for (cut_at, seed) in
            (1..60).flat_map(|c| (0..seeds).map(move |s| (c, c as u64 + 1000 * s)))
        {
            let folder = SimFolder::new("log");
            let out = run(&folder, cut_at, cut, seed);
            folder.crash();
            let log = open(folder.open());
            let got = all(&log);
            let what = format!("cut at step {cut_at}, {cut:?}, seed {seed}");
            // Every acknowledged entry is there, as written, and nothing but what was written.
            assert!(
                got.len() >= out.required,
                "{what}: {} of {}",
                got.len(),
                out.required
            );
            assert!(got.len() <= out.written.len(), "{what}");
            assert_eq!(got, out.written[..got.len()], "{what}");
            // A vote is saved or not, never half, and a saved one is never lost.
            assert!(
                log.vote() == out.vote || (log.vote().is_some() && log.vote() == out.vote_failed),
                "{what}: {:?}",
                log.vote()
            );
            // And it goes on: the next append lands after what survived.
            let next = got.last().map_or(1, |e| e.log_id.index + 1);
            log.append(&[entry(9, next, 10)], None).unwrap();
            assert_eq!(all(&log).last().unwrap().log_id.index, next);
        }
    }
}

/// A fresh folder holding the durable files of `folder`, each passed through `edit` first.
fn copy_of(folder: &SimFolder, edit: impl Fn(&str, &mut Vec<u8>)) -> SimFolder {
    let copy = SimFolder::new("copy");
    let (from, to) = (folder.open(), copy.open());
    for name in from.list().unwrap() {
        let f = from.open(&name, false).unwrap();
        let mut bytes = vec![0u8; f.len().unwrap() as usize];
        f.read_at(0, &mut bytes).unwrap();
        edit(&name, &mut bytes);
        let g = to.open(&name, true).unwrap();
        g.write_at(0, &bytes).unwrap();
        g.sync_data().unwrap();
    }
    to.sync_dir().unwrap();
    copy.crash();
    copy
}

#[test]
fn a_flipped_bit_is_refused_by_name_never_cut_off_or_read_as_data() {
    let folder = SimFolder::new("log");
    let written: Vec<_> = {
        let log = open(folder.open());
        let mut written = Vec::new();
        for i in 0..20 {
            let batch = vec![entry(1, 2 * i + 1, 300), entry(1, 2 * i + 2, 50)];
            log.append(&batch, None).unwrap();
            written.extend(batch);
        }
        log.save_vote(Vote::new(3, 1)).unwrap();
        written
    };
    folder.crash();
    let len = folder.flippable_len() as usize;
    let mut refused = 0;
    for at in (0..len).step_by(7) {
        // The same files on a fresh folder, then one bit flipped.
        let copy = copy_of(&folder, |_, _| {});
        copy.flip_bit(at, (at % 8) as u8);
        match SegmentLog::open_sized(copy.open(), 4096) {
            Err(e) => {
                assert!(e.is_damage(), "byte {at}: {e}");
                assert!(
                    e.to_string().contains(".seg") || e.to_string().contains("state"),
                    "byte {at}: {e}"
                );
                refused += 1;
            }
            // An acknowledged frame taken for a torn write would lose acknowledged entries.
            Ok((log, recovery)) => panic!(
                "byte {at}: opened (cut {} bytes), serving {} of {} entries",
                recovery.torn_bytes,
                all(&log).len(),
                written.len()
            ),
        }
    }
    assert!(refused > 100, "refused {refused}");

    // Two flips: one in a frame of the newest segment, one in the trailer of its last frame,
    // so that the end of the frames no longer names a frame. The damage is still refused.
    let newest = {
        let mut names = folder.open().list().unwrap();
        names.retain(|n| n.ends_with(".seg"));
        names.sort();
        names.pop().unwrap()
    };
    let bytes = {
        let f = folder.open().open(&newest, false).unwrap();
        let mut b = vec![0u8; f.len().unwrap() as usize];
        f.read_at(0, &mut b).unwrap();
        b
    };
    let mut checked = 0;
    // The frames end where the zeros written ahead of them begin.
    let frames_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    for at in (24..frames_end - 8).step_by(5) {
        let copy = copy_of(&folder, |name, b| {
            if name == newest {
                b[at] ^= 1 << (at % 8);
                b[frames_end - 2] ^= 0x20;
            }
        });
        match SegmentLog::open_sized(copy.open(), 4096) {
            Err(e) => assert!(
                e.is_damage() && e.to_string().contains(&newest),
                "byte {at}: {e}"
            ),
            Ok((log, recovery)) => panic!(
                "byte {at} and the last trailer: opened (cut {} bytes), serving {} of {} entries",
                recovery.torn_bytes,
                all(&log).len(),
                written.len()
            ),
        }
        checked += 1;
    }
    assert!(checked > 50, "checked {checked}");
}

#[test]
fn truncating_inside_a_frame_and_purging_survive_a_reopen() {
    let folder = SimFolder::new("log");
    let log = open(folder.open());
    let batch: Vec<_> = (1..=5).map(|i| entry(1, i, 700)).collect();
    log.append(&batch, None).unwrap();
    log.append(&[entry(1, 6, 10), entry(1, 7, 10)], None)
        .unwrap();
    // Entries 3.. are cut from the middle of the first frame; 1 and 2 stay.
    log.truncate(3).unwrap();
    log.append(&[entry(2, 3, 10)], None).unwrap();
    let id = |e: &Entry<TypeConfig>| (e.log_id.index, e.log_id.leader_id.term);
    let ids: Vec<_> = all(&log).iter().map(id).collect();
    assert_eq!(ids, vec![(1, 1), (2, 1), (3, 2)]);
    for i in 4..40 {
        log.append(&[entry(2, i, 400)], None).unwrap();
    }
    drop(log);
    folder.crash();
    let segments = |disk: Arc<dyn Disk>| {
        let names = disk.list().unwrap();
        names.iter().filter(|n| n.ends_with(".seg")).count()
    };
    let files = segments(folder.open());
    assert!(files > 5, "several segments: {files}");
    let log = open(folder.open());
    // openraft's purge hides the entries from openraft; the files keep them, since the log is
    // the event store, and the event store's reads still find them.
    log.purge(LogId::new(CommittedLeaderId::new(2, 1), 30))
        .unwrap();
    drop(log);
    folder.crash();
    assert_eq!(segments(folder.open()), files, "segments kept");
    let log = open(folder.open());
    let got: Vec<_> = all(&log).iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, (31..40).collect::<Vec<_>>());
    assert_eq!(log.last_purged().unwrap().index, 30);
    for i in [1, 2, 3, 17, 30, 31, 39] {
        let e = log.read_kept(i).unwrap().expect("kept");
        assert_eq!(e.log_id.index, i);
    }
    assert!(log.read_kept(40).unwrap().is_none());

    // A purge past what the log holds (a snapshot installed beyond it, which brought the
    // events) removes the files up to it, and they stay gone for every reader.
    log.purge(LogId::new(CommittedLeaderId::new(3, 1), 45))
        .unwrap();
    drop(log);
    folder.crash();
    assert_eq!(segments(folder.open()), 0, "removed segments are gone");
    let log = open(folder.open());
    assert!(all(&log).is_empty());
    assert_eq!(log.last_purged().unwrap().index, 45);
    assert!(log.read_kept(39).unwrap().is_none());
    log.append(&[entry(3, 46, 10)], None).unwrap();
    let got: Vec<_> = all(&log).iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, vec![46]);
}
