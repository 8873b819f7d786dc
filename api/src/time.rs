//! Wall-clock time as the API states it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the simulator's clock under madsim).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
