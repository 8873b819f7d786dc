//! What the simulator controls outside Raft: the wall clock and the random source. In real
//! builds these are the system's; under `--cfg madsim` they are the simulation's, so a seed
//! replays. Apply uses neither (its time comes in the entry, stamped by the leader).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (under the simulator, as the calling node's own clock
/// reads them: [`clocks`]).
pub fn now_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    #[cfg(madsim)]
    let ms = clocks::read(ms);
    ms
}

/// Each simulated node's wall clock runs with an offset and a drift of its own, as real
/// clocks do between NTP corrections: the harness picks them per seed ([`clocks::skew`]), and
/// every [`now_ms`] on that node reads through them. Timers (`Instant`, sleeps) are not
/// skewed: openraft's elections and the node's timeouts measure intervals, which a drift of
/// a few hundred ppm barely changes. Nodes the harness did not skew (the clients, which
/// record real time for the checkers) read the true simulated time.
#[cfg(madsim)]
pub mod clocks {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// One node's clock: `offset_ms` ahead (or behind) of true time from `since_ms` on, and
    /// `drift_ppm` millionths faster (or slower) than it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Skew {
        pub offset_ms: i64,
        pub drift_ppm: i64,
        pub since_ms: u64,
    }

    thread_local! {
        // One simulation runs on one thread; tests run several at once on others.
        static SKEWS: RefCell<BTreeMap<madsim::task::NodeId, Skew>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Give `node` a clock of its own (for the rest of this simulation, on this thread).
    pub fn skew(node: madsim::task::NodeId, skew: Skew) {
        SKEWS.with(|s| s.borrow_mut().insert(node, skew));
    }

    /// What the calling node's clock reads when true time is `ms`.
    pub(super) fn read(ms: u64) -> u64 {
        SKEWS.with(|s| {
            let skews = s.borrow();
            if skews.is_empty() {
                return ms;
            }
            let Some(k) = skews.get(&madsim::plugin::node()) else {
                return ms;
            };
            let drift = (ms.saturating_sub(k.since_ms) as i128 * k.drift_ppm as i128) / 1_000_000;
            (ms as i128 + k.offset_ms as i128 + drift).max(0) as u64
        })
    }
}

/// A fault point (FoundationDB's BUGGIFY): true with probability `p` when the simulator turned
/// fault points on for this run ([`fault_points`], half the seeds), never otherwise and never
/// in real builds, where it compiles to `false`. At a fault point the code does something
/// legal but rare (waits, gives up early, serves a short page, retries), so the rare paths
/// run in every simulated run instead of once a month in production. Not madsim's own
/// `buggify` switch: that one also holds one network operation in ten for 1-5 s, which no
/// peer timeout of a real deployment is sized for.
#[inline]
pub fn buggify(p: f64) -> bool {
    #[cfg(madsim)]
    return FAULT_POINTS.with(|on| on.get()) && {
        use rand::Rng;
        rng().gen_bool(p)
    };
    #[cfg(not(madsim))]
    {
        let _ = p;
        false
    }
}

#[cfg(madsim)]
thread_local! {
    // One simulation runs on one thread.
    static FAULT_POINTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turn this thread's simulation's fault points on or off (`raft_store` has its own).
#[cfg(madsim)]
pub fn fault_points(on: bool) {
    FAULT_POINTS.with(|f| f.set(on));
}

/// The wait a fault point adds: 1 to 50 ms.
pub fn buggify_delay() -> std::time::Duration {
    use rand::Rng;
    std::time::Duration::from_millis(rng().gen_range(1..=50))
}

/// The random source for everything outside apply (ids, salts, tokens, jitter). rand's
/// thread generator is seeded with a raw `getrandom` syscall, which madsim cannot intercept;
/// madsim's global generator is derived from the seed.
#[cfg(not(madsim))]
pub fn rng() -> rand::rngs::ThreadRng {
    rand::thread_rng()
}

/// The random source for everything outside apply (ids, salts, tokens, jitter): the
/// simulation's seeded generator.
#[cfg(madsim)]
pub fn rng() -> madsim::rand::GlobalRng {
    madsim::rand::thread_rng()
}
