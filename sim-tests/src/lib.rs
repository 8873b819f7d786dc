//! Deterministic simulation of a uniqlog cluster under madsim.
//!
//! Build and run with `RUSTFLAGS="--cfg madsim"` (see `tests/basic.rs`, `tests/sim.rs` and the
//! `simulate` binary); in a normal build only the simulated disk, the history types and the
//! checkers compile (and their unit tests run).
//!
//! - [`disk`]: `SimDisk`, an in-memory redb backend that loses unsynced writes on a crash;
//! - [`folder`]: `SimFolder`, a folder of such files behind `raft_store::disk::Disk` (the Raft
//!   log's segments), whose listing also needs a sync to survive a crash;
//! - [`history`]: what the clients saw and what the nodes hold at the end;
//! - [`check`]: the checkers, one module per invariant, pure functions of the history;
//! - `cluster` (madsim only): `SimCluster`, production nodes as madsim nodes;
//! - `net_faults` (madsim only): the transport wrapper that loses, delays and duplicates
//!   peer RPC and forwarded requests;
//! - `nemesis` (madsim only): crash, pause, partition, disk and membership episodes drawn
//!   from the seed;
//! - `membership` (madsim only): add a learner, let it catch up, promote it, remove a voter;
//! - `workload` (madsim only): concurrent HTTP clients (appends, users commands) and status
//!   pollers;
//! - `consumers` (madsim only): the query and mail consumers and the provider as madsim
//!   nodes, and their nemesis (consumer kills, a flaky, hanging or down provider);
//! - `space`: one node's disk capacity, shared by its simulated disks (a full disk);
//! - `run` (madsim only): one whole run: safety phase, liveness phase, checkers, trace hash.

pub mod check;
pub mod disk;
pub mod folder;
pub mod history;
pub mod space;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod consumers;
#[cfg(madsim)]
pub mod membership;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod net_faults;
#[cfg(madsim)]
pub mod planted;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod workload;

/// The seed given in `MADSIM_TEST_SEED`, or `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("MADSIM_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("MADSIM_TEST_SEED must be an integer, not {s:?}")),
        Err(_) => default,
    }
}

/// Log to the test output when `RUST_LOG` is set (simulated timestamps, madsim node spans).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Run `f` in madsim runtimes the way `#[madsim::test]` does (`MADSIM_TEST_NUM`,
/// `MADSIM_TEST_CHECK_DETERMINISM`, `MADSIM_TEST_TIME_LIMIT`, `MADSIM_TEST_CONFIG` are
/// honoured), except that without `MADSIM_TEST_SEED` the seed is `default_seed` rather than
/// the clock: a CI run is reproducible, and exploring other seeds is one variable away.
/// madsim prints the seed of a failing run; the scenarios print it in their report line too.
#[cfg(madsim)]
pub fn run_seeded<F>(default_seed: u64, f: fn() -> F) -> F::Output
where
    F: std::future::Future + 'static,
    F::Output: Send,
{
    init_logging();
    let mut builder = madsim::runtime::Builder::from_env();
    builder.seed = seed_from_env(default_seed);
    if builder.time_limit.is_none() {
        // A safety net against a livelock: no scenario needs this much simulated time.
        builder.time_limit = Some(std::time::Duration::from_secs(900));
    }
    eprintln!(
        "madsim: seed {} x {} run(s) (set MADSIM_TEST_SEED / MADSIM_TEST_NUM to change)",
        builder.seed, builder.count
    );
    builder.run(f)
}

/// Run `f` once in a fresh madsim runtime with `seed`, on a fresh thread (thread-local random
/// state such as `rand::thread_rng` and std's `RandomState` keys must start from the seed).
/// A panic names the seed.
#[cfg(madsim)]
pub fn run_once<T, F>(seed: u64, f: fn() -> F) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    init_logging();
    let joined = std::thread::spawn(move || {
        let mut rt =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.set_time_limit(std::time::Duration::from_secs(900));
        rt.block_on(f())
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(e) => {
            eprintln!("note: run with `MADSIM_TEST_SEED={seed}` to reproduce this failure");
            std::panic::resume_unwind(e)
        }
    }
}
