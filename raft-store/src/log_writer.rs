//! Group commit of the Raft log: one writer owns every write to the log and fsyncs many
//! appends at once.
//!
//! openraft's `append` is meant to return once the entries are readable and to report
//! durability later through its callback. [`LogWriter::append`] does exactly that: the entries
//! go into an in-memory tail ([`LogCache`]) that readers consult, and onto a queue. The writer
//! takes everything queued, writes it as one frame of the active segment with one
//! `fdatasync` (`crate::segments`), and only then reports each append flushed, in order. While
//! one fsync runs the next batch builds up, so the number of fsyncs per second stays near what
//! the disk does, not what clients send.
//! Nothing is reported flushed before it is durable: a failed write fails every append in it,
//! and the log refuses every later write (openraft stops Raft on the first error).
//!
//! A leader enabled to overlap its fsync with its followers' (`crate::local_durable`) is told
//! flushed at once for its own appends; the writer still syncs them in order, and moves the
//! durable mark that its quorum waits on.
//!
//! Truncate, purge and vote go through the same queue as barriers: they run after every
//! append queued before them, and their callers wait for them.
//!
//! Recent entries stay in memory after they are durable ([`LogCache`]), so replicating them
//! costs no read of the file.
//!
//! In real builds the writer is an OS thread of its own that sleeps on the queue: its work is
//! a blocking write and fsync, and a tokio task that handed each frame to the blocking pool
//! cost two more thread wake-ups a frame (a sixth of a follower's CPU went to switching
//! threads, bench/README.md step 9). madsim has no OS threads, so simulated builds drive the
//! same [`Writer::write_ops`] from a task and sleep the simulated fsync time before each batch.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock};

use openraft::storage::LogFlushed;
use openraft::{Entry, EntryPayload, LogId};
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::local_durable::DurableMark;
use crate::segments::SegmentLog;
use crate::types::{NodeId, TypeConfig};

/// Most appends written in one frame: bounds one write's size and time.
const APPENDS_PER_COMMIT_MAX: usize = 1024;

/// Flushed entries kept in memory at most (count and bytes): replication of recent entries,
/// the steady state, never reads the file. Small on purpose: once full, each append evicts
/// as many entries as it adds, and at 8,192 those had gone cold in the CPU's caches (a
/// follower's malloc and free went from 8 to 14 % of its CPU; bench/README.md, step 9).
const CACHED_ENTRIES_MAX: usize = 1024;
const CACHED_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The tail of the log in memory, decoded, by index: every entry appended but not yet durable,
/// and the most recent durable ones. It always holds one contiguous run of indexes, so a read
/// that starts inside it needs nothing from the file, and nothing is decoded again: followers
/// apply, and the leader replicates, straight from here.
#[derive(Default)]
pub(crate) struct LogCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Each entry with its approximate size.
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
    /// Entries up to here are durable and may be evicted.
    flushed_upto: u64,
}

impl CacheInner {
    fn remove_from(&mut self, index: u64) {
        for (_, (_, size)) in self.entries.split_off(&index) {
            self.bytes -= size;
        }
    }

    fn remove_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.bytes -= dropped.values().map(|(_, size)| size).sum::<usize>();
    }

    fn evict(&mut self) {
        while self.entries.len() > CACHED_ENTRIES_MAX || self.bytes > CACHED_BYTES_MAX {
            match self.entries.first_key_value() {
                Some((k, _)) if *k <= self.flushed_upto => {
                    let (_, (_, size)) = self.entries.pop_first().expect("not empty");
                    self.bytes -= size;
                }
                _ => break,
            }
        }
    }
}

impl LogCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().expect("log cache lock")
    }

    /// The cached entries in `range`, and whether they are all of the range that exists
    /// (the range starts at or after the first cached index).
    pub(crate) fn range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> (Vec<Entry<TypeConfig>>, bool) {
        let inner = self.lock();
        let first = inner.entries.first_key_value().map(|(k, _)| *k);
        let complete = match (first, start) {
            (None, _) => false,
            (Some(f), Bound::Included(s)) => s >= f,
            (Some(f), Bound::Excluded(s)) => s >= f,
            (Some(_), Bound::Unbounded) => false,
        };
        let out = inner
            .entries
            .range((start, end))
            .map(|(_, (e, _))| e.clone())
            .collect();
        (out, complete)
    }

    /// The last entry, if any is cached (then it is the log's last entry).
    pub(crate) fn last(&self) -> Option<LogId<NodeId>> {
        let inner = self.lock();
        inner.entries.last_key_value().map(|(_, (e, _))| e.log_id)
    }

    fn appended(&self, batch: &[Entry<TypeConfig>]) {
        let Some(first) = batch.first().map(|e| e.log_id.index) else {
            return;
        };
        let mut inner = self.lock();
        // Keep one contiguous run: an append that does not follow the cached tail (after a
        // snapshot, say) starts a new one.
        match inner.entries.last_key_value().map(|(k, _)| *k) {
            Some(last) if last + 1 == first => {}
            Some(last) if first <= last => inner.remove_from(first),
            _ => {
                inner.entries.clear();
                inner.bytes = 0;
            }
        }
        for e in batch {
            let size = approx_bytes(e);
            inner.bytes += size;
            inner.entries.insert(e.log_id.index, (e.clone(), size));
        }
    }

    fn flushed(&self, upto: u64) {
        let mut inner = self.lock();
        inner.flushed_upto = inner.flushed_upto.max(upto);
        inner.evict();
    }

    /// The entry at `index`, if the tail holds it.
    pub(crate) fn get(&self, index: u64) -> Option<Entry<TypeConfig>> {
        self.lock().entries.get(&index).map(|(e, _)| e.clone())
    }

    fn truncated(&self, from: u64) {
        let mut inner = self.lock();
        inner.remove_from(from);
        inner.flushed_upto = inner.flushed_upto.min(from.saturating_sub(1));
    }

    fn purged(&self, upto: u64) {
        self.lock().remove_upto(upto);
    }
}

/// Roughly what an entry holds in memory, for the cache's byte bound.
fn approx_bytes(e: &Entry<TypeConfig>) -> usize {
    match &e.payload {
        EntryPayload::Normal(cmd) => cmd.approx_bytes(),
        _ => 256,
    }
}

type BarrierFn = Box<dyn FnOnce(&SegmentLog) -> Result<(), StoreError> + Send>;

enum Op {
    Append {
        entries: Vec<Entry<TypeConfig>>,
        /// None when openraft was told at once (a leader's own append).
        callback: Option<LogFlushed<TypeConfig>>,
    },
    Barrier {
        run: BarrierFn,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The queue in front of the writer, started on first use (under madsim inside the node's own
/// runtime, so a killed node's writer dies with it; in real builds its thread ends when this
/// queue is dropped).
pub(crate) struct LogWriter {
    log: Arc<SegmentLog>,
    state: Arc<crate::live::LiveState>,
    pub(crate) cache: Arc<LogCache>,
    /// The latest commit marker not yet written; goes out with the next batch.
    committed: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
    queue: OnceLock<mpsc::UnboundedSender<Op>>,
    metrics: crate::StoreMetrics,
    pub(crate) durable: Arc<DurableMark>,
}

impl LogWriter {
    pub(crate) fn new(
        log: Arc<SegmentLog>,
        state: Arc<crate::live::LiveState>,
        metrics: crate::StoreMetrics,
        durable: Arc<DurableMark>,
    ) -> Self {
        LogWriter {
            log,
            state,
            metrics,
            durable,
            cache: Arc::default(),
            committed: Arc::default(),
            queue: OnceLock::new(),
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Op> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let writer = Writer {
                log: self.log.clone(),
                cache: self.cache.clone(),
                committed: self.committed.clone(),
                metrics: self.metrics.clone(),
                durable: self.durable.clone(),
            };
            #[cfg(not(madsim))]
            {
                let started = std::thread::Builder::new()
                    .name("raft-log-writer".into())
                    .spawn(move || writer.run_on_thread(rx));
                // Without its thread the queue is closed (the receiver is gone): every append
                // fails, and openraft stops Raft on the first error.
                if let Err(e) = started {
                    tracing::error!(error = %e, "starting the raft log writer thread failed");
                }
            }
            #[cfg(madsim)]
            tokio::spawn(writer.run_in_simulation(rx));
            tx
        })
    }

    /// Remember the commit marker; it is written with the next batch of entries.
    pub(crate) fn note_committed(&self, committed: Option<LogId<NodeId>>) {
        *self.committed.lock().expect("committed lock") = Some(committed);
    }

    /// Make `entries` readable now and durable soon; `callback` hears once they are durable,
    /// or at once if `early` (a leader's own entries, `crate::local_durable`).
    pub(crate) fn append(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        callback: LogFlushed<TypeConfig>,
        early: bool,
    ) {
        if self.durable.has_failed() {
            callback.log_io_completed(Err(std::io::Error::other("writing the log failed")));
            return;
        }
        self.cache.appended(&entries);
        let (callback, told) = if early {
            (None, Some(callback))
        } else {
            (Some(callback), None)
        };
        match self.queue().send(Op::Append { entries, callback }) {
            Ok(()) => {
                if let Some(cb) = told {
                    cb.log_io_completed(Ok(()));
                }
            }
            Err(mpsc::error::SendError(op)) => {
                let callback = match op {
                    Op::Append { callback, .. } => callback.or(told),
                    Op::Barrier { .. } => told,
                };
                if let Some(cb) = callback {
                    cb.log_io_completed(Err(std::io::Error::other("the log writer stopped")));
                }
            }
        }
    }

    /// Remove entries from `index` on, durably, after every append queued before.
    pub(crate) async fn truncate(&self, index: u64) -> Result<(), StoreError> {
        self.barrier(move |log| log.truncate(index)).await?;
        self.cache.truncated(index);
        self.durable.truncated(index);
        Ok(())
    }

    /// Remove entries up to `log_id`, durably, after every append queued before, and after
    /// the state machine's applies are durable: a restart re-applies from the log what the
    /// state file lost, so the log must still hold it.
    pub(crate) async fn purge(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        let state = self.state.clone();
        self.barrier(move |log| {
            state.durable_upto(log_id.index)?;
            log.purge(log_id)
        })
        .await?;
        self.metrics.purged();
        self.cache.purged(log_id.index);
        Ok(())
    }

    /// Run `f` after every append queued so far is durable, and wait for it.
    pub(crate) async fn barrier(
        &self,
        f: impl FnOnce(&SegmentLog) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.queue()
            .send(Op::Barrier {
                run: Box::new(f),
                done,
            })
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The writer's side.
struct Writer {
    log: Arc<SegmentLog>,
    cache: Arc<LogCache>,
    committed: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
    metrics: crate::StoreMetrics,
    durable: Arc<DurableMark>,
}

impl Writer {
    /// Real builds: sleep on the queue, then write everything queued by then.
    #[cfg(not(madsim))]
    fn run_on_thread(self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut ops = Vec::new();
        while let Some(op) = rx.blocking_recv() {
            ops.push(op);
            while ops.len() < APPENDS_PER_COMMIT_MAX {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.write_ops(&mut ops);
        }
    }

    /// Simulated builds: the same, on a task, after the simulated disk's fsync time when
    /// there are appends to write.
    #[cfg(madsim)]
    async fn run_in_simulation(self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut ops = Vec::new();
        while rx.recv_many(&mut ops, APPENDS_PER_COMMIT_MAX).await > 0 {
            if ops.iter().any(|op| matches!(op, Op::Append { .. })) {
                crate::runtime::simulated_sync_time().await;
            }
            self.write_ops(&mut ops);
        }
    }

    /// The appends in `ops` as one frame, or as one frame before and one after each barrier,
    /// which runs once everything before it is durable.
    fn write_ops(&self, ops: &mut Vec<Op>) {
        let mut batch: Vec<Entry<TypeConfig>> = Vec::new();
        let mut callbacks = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Append { entries, callback } => {
                    batch.extend(entries);
                    callbacks.extend(callback);
                }
                Op::Barrier { run, done } => {
                    self.commit(std::mem::take(&mut batch), &mut callbacks);
                    let _ = done.send(run(&self.log));
                }
            }
        }
        self.commit(batch, &mut callbacks);
    }

    /// One durable frame for `batch` (with the latest commit marker), then every callback
    /// hears the result, in order.
    fn commit(&self, batch: Vec<Entry<TypeConfig>>, callbacks: &mut Vec<LogFlushed<TypeConfig>>) {
        if callbacks.is_empty() && batch.is_empty() {
            return;
        }
        let upto = batch.last().map(|e| e.log_id.index);
        let committed = {
            let end = batch
                .last()
                .map(|e| e.log_id)
                .or_else(|| self.log.last_log_id());
            let mut pending = self.committed.lock().expect("committed lock");
            let (write, keep) = marker_for(*pending, end);
            *pending = keep;
            write
        };
        let started = std::time::Instant::now();
        match self.log.append(&batch, committed) {
            Ok(()) => {
                self.metrics.log_committed(started, batch.len());
                if let Some(upto) = upto {
                    self.cache.flushed(upto);
                    self.durable.synced_through(upto);
                }
                for cb in callbacks.drain(..) {
                    cb.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the raft log failed");
                self.durable.failed();
                for cb in callbacks.drain(..) {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}

/// The commit marker to write with a frame that ends the log at `end`, and what stays pending
/// for a later frame. A leader that reports its appends flushed before its fsync
/// (`crate::local_durable`) can learn, with a single voter, that an entry is committed before
/// the writer has taken it into a frame; a marker past the log's end would make a restart
/// after a crash re-apply entries the log never got (openraft's `reapply_committed` fails and
/// the node cannot start). So the marker written never passes the frame's end, and the rest
/// waits for the frame that holds it.
#[allow(clippy::type_complexity)]
fn marker_for(
    pending: Option<Option<LogId<NodeId>>>,
    end: Option<LogId<NodeId>>,
) -> (Option<Option<LogId<NodeId>>>, Option<Option<LogId<NodeId>>>) {
    match (pending, end) {
        (Some(Some(c)), Some(end)) if c.index > end.index => (Some(Some(end)), pending),
        (Some(Some(_)), None) => (None, pending),
        _ => (pending, None),
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(cache: &LogCache, from: u64) -> (Vec<u64>, bool) {
        let (entries, complete) = cache.range(Bound::Included(from), Bound::Unbounded);
        (entries.iter().map(|e| e.log_id.index).collect(), complete)
    }

    #[test]
    fn the_cache_is_one_contiguous_run_that_answers_only_what_it_covers() {
        let cache = LogCache::default();
        cache.appended(&(5..=9).map(|i| entry(1, i)).collect::<Vec<_>>());
        assert_eq!(indexes(&cache, 7), (vec![7, 8, 9], true));
        // Before the run: the caller must read the file for 3 and 4.
        assert_eq!(indexes(&cache, 3), (vec![5, 6, 7, 8, 9], false));
        // An append after a gap (a snapshot was installed) starts a new run.
        cache.appended(&[entry(1, 20)]);
        assert_eq!(indexes(&cache, 0), (vec![20], false));
        assert_eq!(indexes(&cache, 20), (vec![20], true));
        // An append that overwrites the tail replaces it from there on.
        cache.appended(&[entry(1, 21), entry(1, 22)]);
        cache.appended(&[entry(2, 22)]);
        let (tail, _) = cache.range(Bound::Included(20), Bound::Unbounded);
        let ids: Vec<_> = tail
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect();
        assert_eq!(ids, vec![(20, 1), (21, 1), (22, 2)]);
        cache.truncated(21);
        assert_eq!(indexes(&cache, 20), (vec![20], true));
        assert_eq!(cache.last().map(|l| l.index), Some(20));
        cache.purged(20);
        assert_eq!(cache.last(), None);
    }

    #[test]
    fn the_commit_marker_never_passes_the_end_of_its_frame() {
        let id = |i| entry(1, i).log_id;
        // Within the frame: written as is, nothing left.
        assert_eq!(
            marker_for(Some(Some(id(5))), Some(id(7))),
            (Some(Some(id(5))), None)
        );
        // Past it: the frame's end is written, the marker waits for a later frame.
        assert_eq!(
            marker_for(Some(Some(id(9))), Some(id(7))),
            (Some(Some(id(7))), Some(Some(id(9))))
        );
        // An empty log writes none; no marker, or an empty one, goes out as it is.
        assert_eq!(
            marker_for(Some(Some(id(1))), None),
            (None, Some(Some(id(1))))
        );
        assert_eq!(marker_for(None, Some(id(7))), (None, None));
        assert_eq!(marker_for(Some(None), None), (Some(None), None));
    }

    #[test]
    fn only_durable_entries_are_evicted() {
        let cache = LogCache::default();
        let n = CACHED_ENTRIES_MAX as u64 + 100;
        cache.appended(&(1..=n).map(|i| entry(1, i)).collect::<Vec<_>>());
        // Nothing is durable yet: everything stays, over the bound.
        assert_eq!(indexes(&cache, 1).0.len() as u64, n);
        cache.flushed(50);
        let (kept, _) = indexes(&cache, 0);
        assert_eq!(
            kept.first(),
            Some(&51),
            "evicts the durable prefix, no more"
        );
        cache.flushed(n);
        let (kept, _) = indexes(&cache, 0);
        assert_eq!(kept.len(), CACHED_ENTRIES_MAX);
        assert_eq!(kept.last(), Some(&n));
        // A truncation below the durable point makes the rest not durable again.
        cache.truncated(n - 10);
        cache.appended(&(n - 10..n + 200).map(|i| entry(2, i)).collect::<Vec<_>>());
        cache.flushed(n - 11);
        let (kept, _) = indexes(&cache, 0);
        assert_eq!(kept.last(), Some(&(n + 199)));
        assert!(
            kept.contains(&(n - 10)),
            "an entry not durable again is kept"
        );
    }
}
