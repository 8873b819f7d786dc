//! The openraft `AsyncRuntime` that runs on `tokio`, which in this workspace is `madsim-tokio`:
//! plain tokio in normal builds, the deterministic simulator under `--cfg madsim`.
//!
//! openraft's own `TokioRuntime` calls the real tokio runtime directly, which does not exist in
//! a simulation; routing every spawn, sleep and timeout through this type is what lets the
//! production Raft code run unchanged inside madsim.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

/// The runtime named by [`crate::TypeConfig`].
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct UniqRuntime;

/// Raised when a [`Timeout`] fires before its inner future completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// A named timeout future: madsim's `timeout` returns an unnameable type, and openraft needs
/// one it can name in an associated type.
pub struct Timeout<F> {
    inner: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<R, F: Future<Output = R>> Future for Timeout<F> {
    type Output = Result<R, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.inner.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn until(deadline: TokioInstant) -> Duration {
    deadline.saturating_duration_since(TokioInstant::now())
}

impl AsyncRuntime for UniqRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    #[cfg(not(madsim))]
    type ThreadLocalRng = rand::rngs::ThreadRng;
    /// rand's `ThreadRng` is seeded by the getrandom crate with a raw `getrandom` syscall,
    /// which madsim cannot intercept: election timeouts would differ from run to run with the
    /// same seed. madsim's global generator is derived from the simulation's seed.
    #[cfg(madsim)]
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep(until(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            inner: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        #[cfg(not(madsim))]
        {
            rand::thread_rng()
        }
        #[cfg(madsim)]
        {
            madsim::rand::thread_rng()
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

/// Runs a blocking storage call (redb commits block on fsync).
///
/// Real builds move it to tokio's blocking pool so the Raft and HTTP tasks keep running;
/// madsim forbids OS threads, so simulated builds run it inline.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}

/// Runs a short storage call that may block on a read of the disk, on the calling task's
/// thread: apply, which works on memory and reads the state file only for keys it has not
/// seen since the last checkpoint (mostly from redb's page cache). A round trip through the
/// blocking pool (`blocking`) cost about 90 µs of an append's latency at one client, more
/// than the work.
///
/// On tokio's multi-threaded runtime the worker hands its other tasks away first
/// (`block_in_place`); elsewhere (a current-thread runtime in tests, madsim) it runs inline.
pub fn blocking_in_place<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(not(madsim))]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
            _ => f(),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}

/// A fault point, as `api::runtime::buggify` (this crate does not link `api`): under the
/// simulator, with fault points on for the run ([`fault_points`]), a wait of 1 to 50 ms with
/// probability `p`. Simulation builds only: real builds have no call on their hot paths.
#[cfg(madsim)]
pub(crate) async fn buggify_delay(p: f64) {
    if FAULT_POINTS.with(|on| on.get()) {
        use madsim::rand::Rng;
        let mut rng = madsim::rand::thread_rng();
        if rng.gen_bool(p) {
            let ms = rng.gen_range(1..=50);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
}

#[cfg(madsim)]
thread_local! {
    // One simulation runs on one thread.
    static FAULT_POINTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turn this thread's simulation's fault points in storage on or off.
#[cfg(madsim)]
pub fn fault_points(on: bool) {
    FAULT_POINTS.with(|f| f.set(on));
}

/// How long the simulated disk takes to make a frame of the log durable (simulation builds
/// only). The simulated disk itself syncs in no time; a real one takes from a tenth of a
/// millisecond to a few, and now and then stalls for tens (another writer, the journal).
/// A leader that overlaps its fsync with its followers' (`crate::local_durable`) is only
/// tested by a simulator in which its own fsync can still be running when a follower's
/// answer arrives (madsim's network takes 1-10 ms a message), and be cut short by a crash.
#[cfg(madsim)]
pub(crate) async fn simulated_sync_time() {
    use madsim::rand::Rng;
    let mut rng = madsim::rand::thread_rng();
    let us = if rng.gen_bool(0.2) {
        rng.gen_range(5_000..40_000)
    } else {
        rng.gen_range(200..3_000)
    };
    tokio::time::sleep(std::time::Duration::from_micros(us)).await;
}
