//! openraft's `RaftLogStorage` over the segment files (`crate::segments`): the log, the vote
//! and the commit marker.
//!
//! Every append is written and `fdatasync`ed before openraft is told it is flushed: nothing is
//! acknowledged to a leader (and so to a client) before it is on disk. The one exception is a
//! leader's own appends once the node overlaps its fsync with its followers'
//! ([`LogStore::overlap_leader_fsync`], `crate::local_durable`): openraft hears of those at
//! once, and what it counts is held back elsewhere until they are durable. Appends are
//! group-committed by [`crate::log_writer`]; reads see appended entries at once, flushed or
//! not.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};

use crate::error::{logs_read, logs_write, vote_write, StoreError};
use crate::local_durable::{DurableMark, LocalDurable};
use crate::log_writer::{LogCache, LogWriter};
use crate::runtime::blocking;
use crate::segments::SegmentLog;
use crate::types::{NodeId, TypeConfig};

/// The Raft log of one node. Cheap to clone: clones share the files and the writer.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) log: Arc<SegmentLog>,
    writer: Arc<LogWriter>,
    damage: crate::Damage,
    /// How far the state machine holds the entries (`state_machine::PurgeGate`).
    purge_gate: tokio::sync::watch::Receiver<crate::state_machine::PurgeGate>,
    /// The vote last saved: whether this node leads, for [`LogStore::overlap_leader_fsync`].
    vote: Arc<std::sync::Mutex<Option<Vote<NodeId>>>>,
}

impl LogStore {
    /// The log in `log`; `state` is the state machine's, made durable before any purge.
    pub(crate) fn new(
        log: Arc<SegmentLog>,
        state: Arc<crate::live::LiveState>,
        damage: crate::Damage,
        metrics: crate::StoreMetrics,
        purge_gate: tokio::sync::watch::Receiver<crate::state_machine::PurgeGate>,
        durable: Arc<DurableMark>,
    ) -> Self {
        LogStore {
            writer: Arc::new(LogWriter::new(log.clone(), state, metrics, durable)),
            log,
            damage,
            purge_gate,
            vote: Arc::default(),
        }
    }

    /// Let this node, as leader, send its entries to its followers while its own fsync of
    /// them runs, instead of after it (`crate::local_durable`). The answer must go to the peer
    /// network, which holds each follower's answer back until this log is durable that far:
    /// without that, an index could commit on fewer synced copies than a quorum.
    pub fn overlap_leader_fsync(&self, me: NodeId) -> LocalDurable {
        self.writer.durable.enable(me);
        LocalDurable {
            mark: self.writer.durable.clone(),
        }
    }

    /// Whether `entries` are this node's own, appended as the leader of the vote it last
    /// saved, with early reports enabled: only those are reported flushed before the fsync.
    /// A follower's appends never are, whoever created the entries: its answer to the leader
    /// is its promise that they are on its disk.
    fn leaders_own(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(me) = self.writer.durable.early_leader() else {
            return false;
        };
        let Some(vote) = *self.vote.lock().expect("vote lock") else {
            return false;
        };
        vote.is_committed()
            && vote.leader_id().voted_for() == Some(me)
            && !entries.is_empty()
            && entries
                .iter()
                .all(|e| e.log_id.leader_id == *vote.leader_id())
    }

    /// Reads entries for the event store, which is this log.
    pub(crate) fn entry_reader(&self) -> crate::events::EntryReader {
        crate::events::EntryReader {
            log: self.log.clone(),
            cache: self.writer.cache.clone(),
        }
    }
}

/// The entries in the range: from the cached tail when it covers the range, else the part
/// before the tail from the files and the rest from the tail. The tail is taken first: an
/// entry evicted from it meanwhile is durable, where the read that follows finds it.
pub(crate) fn read_entries(
    log: &SegmentLog,
    cache: &LogCache,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let (tail, complete) = cache.range(start, end);
    if complete {
        return Ok(tail);
    }
    // The files' part ends where the tail begins.
    let files_end = match tail.first() {
        Some(first) => Bound::Excluded(first.log_id.index),
        None => end,
    };
    let mut out = log.read(start, files_end)?;
    out.extend(tail);
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        // The common case, recent entries, needs no I/O and so no blocking thread.
        if let (entries, true) = self.writer.cache.range(start, end) {
            return Ok(entries);
        }
        let (log, writer) = (self.log.clone(), self.writer.clone());
        blocking(move || read_entries(&log, &writer.cache, start, end))
            .await
            .map_err(|e| logs_read(self.damage.saw(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged = self.log.last_purged();
        let last = self.writer.cache.last().or_else(|| self.log.last_log_id());
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.writer
            .barrier(move |log| log.save_vote(vote))
            .await
            .map_err(|e| vote_write(self.damage.saw(e)))?;
        *self.vote.lock().expect("vote lock") = Some(vote);
        Ok(())
    }

    /// A node that overlaps its fsync as leader reads its own leadership back as a mere vote
    /// for itself. openraft 0.9 resumes a leader whose committed vote it reads at start, in
    /// the same term, from the end of its log; but the followers may hold entries of that
    /// term the leader sent before its crash cut their fsync short here, and new entries at
    /// the same indexes would carry the same log ids: the followers would take them for the
    /// ones they hold, and the logs would diverge. A vote for itself still refuses any other
    /// candidate of that term; leading again takes an election, in a new term.
    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .log
            .vote()
            .map(|v| match self.writer.durable.early_leader() {
                Some(me) if v.is_committed() && v.leader_id().voted_for() == Some(me) => {
                    Vote::new(v.leader_id().get_term(), me)
                }
                _ => v,
            }))
    }

    /// Advisory (openraft re-derives the commit index on election), so it costs no commit of
    /// its own: the log writer writes the latest value with the next batch of entries.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.writer.note_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.log.committed())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let early = self.leaders_own(&entries);
        self.writer.append(entries, callback, early);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.writer
            .truncate(log_id.index)
            .await
            .map_err(|e| logs_write(self.damage.saw(e)))
    }

    /// Durable, and only after the state machine's file holds what was applied up to
    /// `log_id`: the log is never purged past what the state machine kept (its applies live
    /// in memory until a checkpoint, `crate::live`). First, the state
    /// machine must hold everything up to `log_id` (a snapshot queued for install right
    /// before this purge, say), since a purge may remove the entries its runs point at.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // A log that holds `log_id` keeps its files (`SegmentLog::purge`): nothing to wait for.
        let holds = match self.writer.cache.get(log_id.index) {
            Some(e) => e.log_id == log_id,
            None => {
                let log = self.log.clone();
                blocking(move || log.read_kept(log_id.index))
                    .await
                    .map_err(|e| logs_read(self.damage.saw(e)))?
                    .is_some_and(|e| e.log_id == log_id)
            }
        };
        if !holds {
            let held = *self
                .purge_gate
                .wait_for(|g| g.applied >= log_id.index || g.install_failed || !g.receiving)
                .await
                .map_err(|_| logs_write(StoreError::Stopped))?;
            if held.applied < log_id.index && held.install_failed {
                return Err(logs_write(StoreError::Snapshot(format!(
                    "not purging the log up to {}: the snapshot that covers it was not installed",
                    log_id.index
                ))));
            }
        }
        self.writer
            .purge(log_id)
            .await
            .map_err(|e| logs_write(self.damage.saw(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::disk::{Disk, DiskFile, FsDisk};

    /// A folder whose files' `sync_data` fails on demand.
    struct FlakyDisk {
        inner: FsDisk,
        fail: Arc<AtomicBool>,
    }

    struct FlakyFile {
        inner: Arc<dyn DiskFile>,
        fail: Arc<AtomicBool>,
    }

    impl Disk for FlakyDisk {
        fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn DiskFile>> {
            Ok(Arc::new(FlakyFile {
                inner: self.inner.open(name, create)?,
                fail: self.fail.clone(),
            }))
        }
        fn list(&self) -> io::Result<Vec<String>> {
            self.inner.list()
        }
        fn remove(&self, name: &str) -> io::Result<()> {
            self.inner.remove(name)
        }
        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            self.inner.rename(from, to)
        }
        fn sync_dir(&self) -> io::Result<()> {
            self.inner.sync_dir()
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    impl DiskFile for FlakyFile {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.inner.write_at(offset, data)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected fsync failure"));
            }
            self.inner.sync_data()
        }
    }

    /// A purge past what the log holds (a follower's, queued right behind a snapshot install)
    /// removes nothing until the state machine holds that far; if the install failed it fails
    /// and the entries stay.
    #[tokio::test]
    async fn a_purge_past_the_log_waits_for_the_install_and_fails_with_it() {
        use crate::state_machine::PurgeGate;
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::Storage::open(dir.path()).unwrap();
        let log = storage.log.log.clone();
        log.append(&[entry(1), entry(2), entry(3)], None).unwrap();
        let beyond = LogId::new(openraft::CommittedLeaderId::new(2, 1), 10);
        let gate = storage.state_machine.purge_gate.clone();

        gate.send_replace(PurgeGate {
            applied: 3,
            receiving: true,
            install_failed: true,
        });
        let err = storage.log.clone().purge(beyond).await.unwrap_err();
        assert!(err.to_string().contains("not installed"), "{err}");
        assert_eq!(log.read_kept(2).unwrap().unwrap().log_id.index, 2);
        assert_eq!(log.last_purged(), None);

        gate.send_replace(PurgeGate {
            applied: 3,
            receiving: true,
            install_failed: false,
        });
        let purge = tokio::spawn({
            let mut store = storage.log.clone();
            async move { store.purge(beyond).await }
        });
        gate.send_modify(|g| {
            g.applied = 10;
            g.receiving = false;
        });
        purge.await.unwrap().unwrap();
        assert_eq!(log.last_purged(), Some(beyond));
        assert!(log.read_kept(2).unwrap().is_none(), "removed past the log");

        // Purging an entry the log holds keeps the files, whatever the gate says.
        log.append(&[entry(11)], None).unwrap();
        let held = LogId::new(openraft::CommittedLeaderId::new(1, 1), 11);
        storage.log.clone().purge(held).await.unwrap();
        assert_eq!(log.read_kept(11).unwrap().unwrap().log_id, held);
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// A failed fsync fails the append (so openraft hears an error, never "flushed"), and
    /// every later write fails too, even with the disk healthy again: after a failed fsync
    /// nothing since the last good one can be trusted to be on disk.
    #[test]
    fn a_failed_fsync_fails_the_append_and_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let disk = Arc::new(FlakyDisk {
            inner: FsDisk::new(dir.path()).unwrap(),
            fail: fail.clone(),
        });
        let (log, _) = SegmentLog::open(disk).unwrap();
        log.append(&[entry(1), entry(2)], None).unwrap();
        fail.store(true, Ordering::SeqCst);
        let err = log.append(&[entry(3)], None).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        fail.store(false, Ordering::SeqCst);
        assert!(log.append(&[entry(4)], None).is_err());
        assert!(log.save_vote(Vote::new(2, 1)).is_err());
        let got: Vec<u64> = read_entries(
            &log,
            &LogCache::default(),
            Bound::Unbounded,
            Bound::Unbounded,
        )
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
        assert_eq!(got, vec![1, 2]);
    }
}
