//! What the simulator controls outside Raft: the wall clock and the random source. In real
//! builds these are the system's; under `--cfg madsim` they are the simulation's, so a seed
//! replays. Apply uses neither (its time comes in the entry, stamped by the leader).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
