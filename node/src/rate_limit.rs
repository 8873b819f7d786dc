//! Per-client rate limits of anonymous requests (sign-up, activation, activation-email
//! resends when `[auth] anonymous_signup` is on): a token bucket per client address, so one
//! client cannot fill the log with accounts or a mailbox with emails.
//!
//! A client is its IPv4 address, or its IPv6 /64 (one host usually holds a whole /64). The
//! clock is the runtime's, so the simulator controls it. Hand-written rather than a crate
//! (governor) because it must run on that clock and needs no more than this.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use api::error::ApiError;

/// Clients remembered at most; past it, the buckets that are full again are forgotten first.
const CLIENTS_MAX: usize = 100_000;

pub struct RateLimiter {
    /// Requests a client may make in a burst, and per minute after it.
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second();
        Bucket {
            tokens: (b.tokens + gained).min(f64::from(self.per_minute)),
            at: now,
        }
    }

    /// Take one request of `client` (unknown clients share one bucket), or 429 with how long
    /// until the next one is allowed.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        let key = client.map_or(IpAddr::from([0, 0, 0, 0]), client_key);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= CLIENTS_MAX && !buckets.contains_key(&key) {
            let full = f64::from(self.per_minute);
            buckets.retain(|_, b| self.refilled(*b, now).tokens < full);
        }
        let fresh = Bucket {
            tokens: f64::from(self.per_minute),
            at: now,
        };
        let bucket = buckets.entry(key).or_insert(fresh);
        *bucket = self.refilled(*bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second());
        Err(ApiError::RateLimited {
            message: format!(
                "too many anonymous requests from this client (at most {} a minute)",
                self.per_minute
            ),
            retry_after_s: wait.as_secs().max(1),
        })
    }
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_for_refills_and_others_are_not_affected() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limiter.check_at(Some(a), t0).unwrap();
        }
        let e = limiter.check_at(Some(a), t0).unwrap_err();
        assert_eq!(e.status().as_u16(), 429);
        assert!(
            matches!(
                e,
                ApiError::RateLimited {
                    retry_after_s: 20,
                    ..
                }
            ),
            "{e:?}"
        );
        limiter.check_at(Some(b), t0).unwrap();
        // One request back every 20 s.
        let later = t0 + Duration::from_secs(20);
        limiter.check_at(Some(a), later).unwrap();
        assert!(limiter.check_at(Some(a), later).is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        let check = |ip: &str| limiter.check_at(Some(ip.parse().unwrap()), t0);
        check("2001:db8::1").unwrap();
        assert!(check("2001:db8::ffff:1").is_err());
        check("2001:db8:0:1::1").unwrap();
    }
}
