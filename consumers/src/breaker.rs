//! A circuit breaker in front of an unreliable provider: closed while it works, open after
//! `failures_to_open` consecutive failures (no calls at all), half-open after `cool_down`
//! (exactly one probe), closed again when the probe succeeds, open again when it fails. Time
//! is passed in, so the state machine is tested without sleeping.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    cool_down: Duration,
    consecutive_failures: u32,
    state: State,
}

impl Breaker {
    pub fn new(failures_to_open: u32, cool_down: Duration) -> Self {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            cool_down,
            consecutive_failures: 0,
            state: State::Closed,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state's name, for health and metrics.
    pub fn name(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// May a call go out now? In half-open only one probe is allowed until it reports.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                true
            }
        }
    }

    /// When the next call may go out (now if allowed).
    pub fn ready_at(&self, now: Instant) -> Instant {
        match self.state {
            State::Open { until } => until.max(now),
            _ => now,
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = State::Closed;
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            State::HalfOpen { .. } => self.open(now),
            State::Closed if self.consecutive_failures >= self.failures_to_open => self.open(now),
            State::Closed | State::Open { .. } => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.cool_down,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_k_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, COOL);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), State::Closed, "a success resets the count");
        assert!(b.allow(t0));
        b.on_failure(t0);
        assert_eq!(b.state(), State::Open { until: t0 + COOL });
        assert!(!b.allow(t0 + COOL / 2), "no calls while open");
        assert_eq!(b.ready_at(t0), t0 + COOL);
    }

    #[test]
    fn a_successful_probe_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0);
        assert!(b.allow(t0 + COOL), "half-open after the cool-down");
        assert_eq!(b.name(), "half_open");
        assert!(!b.allow(t0 + COOL), "one probe at a time");
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(t0 + COOL));
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_cool_down() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, COOL);
        b.on_failure(t0);
        b.on_failure(t0);
        let t1 = t0 + COOL + Duration::from_secs(1);
        assert!(b.allow(t1));
        b.on_failure(t1);
        assert_eq!(b.state(), State::Open { until: t1 + COOL });
        assert!(!b.allow(t1 + COOL - Duration::from_millis(1)));
        assert!(b.allow(t1 + COOL));
    }
}
