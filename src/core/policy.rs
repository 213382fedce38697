//! Recycling and connect-backoff settings, and the circuit state they drive.

use std::time::{Duration, Instant};

use super::rng::Rng;
use crate::Error;

/// When a connection is retired (drained: no new requests, in-flight ones
/// finish, then it closes) before it can fail a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecycleConfig {
    /// Retire a connection this long after it opened (default None). Each
    /// connection's age limit is jittered by ±`max_age_jitter`, so a pool
    /// whose connections opened together does not retire them together.
    pub max_age: Option<Duration>,
    /// The jitter fraction for `max_age`, in [0, 1) (default 0.1 = ±10%).
    pub max_age_jitter: f64,
    /// Retire a connection after it has carried this many requests (default None).
    pub max_requests: Option<u64>,
    /// Retire a connection after this many requests in a row failed on it
    /// (default Some(5)).
    pub max_consecutive_errors: Option<u32>,
    /// Retire a connection this long before an origin's `Keep-Alive:
    /// timeout=N` says the origin will close it (default 1 s), so the pool
    /// never lends a connection the origin is about to close.
    pub keep_alive_margin: Duration,
}

impl Default for RecycleConfig {
    fn default() -> Self {
        RecycleConfig {
            max_age: None,
            max_age_jitter: 0.1,
            max_requests: None,
            max_consecutive_errors: Some(5),
            keep_alive_margin: Duration::from_secs(1),
        }
    }
}

impl RecycleConfig {
    /// Rejects values that cannot work, naming the field and value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_age == Some(Duration::ZERO) {
            return Err(Error::config(
                "max_age",
                Duration::ZERO,
                "must be above zero (use None for no limit)",
            ));
        }
        if !(0.0..1.0).contains(&self.max_age_jitter) {
            return Err(Error::config(
                "max_age_jitter",
                self.max_age_jitter,
                "must be in 0..1",
            ));
        }
        if self.max_requests == Some(0) {
            return Err(Error::config(
                "max_requests",
                0,
                "must be at least 1 (use None for no limit)",
            ));
        }
        if self.max_consecutive_errors == Some(0) {
            return Err(Error::config(
                "max_consecutive_errors",
                0,
                "must be at least 1 (use None for no limit)",
            ));
        }
        Ok(())
    }

    /// This connection's age limit, jittered.
    pub(crate) fn expiry(&self, opened: Instant, rng: &mut Rng) -> Option<Instant> {
        let age = self.max_age?;
        let factor = 1.0 + self.max_age_jitter * (2.0 * rng.unit() - 1.0);
        // try_from: a huge configured age times 1.1 must not overflow.
        let jittered =
            Duration::try_from_secs_f64(age.as_secs_f64() * factor).unwrap_or(Duration::MAX);
        Some(super::later(opened, jittered))
    }
}

/// How failed connects to an origin are backed off.
///
/// After `failure_threshold` connects in a row fail, the circuit opens: no
/// connects for a delay drawn uniformly from [0, min(cap, base × 2^k)] ("full
/// jitter", k = failures past the threshold), and requests that find no free
/// slot fail at once with the time to retry. When the delay is over, the
/// next request starts one probe connect (half-open); its success closes the
/// circuit, its failure opens it again with a longer delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay's upper bound (default 100 ms).
    pub base: Duration,
    /// The largest delay's upper bound (default 10 s).
    pub cap: Duration,
    /// Connect failures in a row that open the circuit (default 5).
    pub failure_threshold: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            failure_threshold: 5,
        }
    }
}

impl BackoffConfig {
    /// Rejects values that cannot work, naming the field and value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.base.is_zero() {
            return Err(Error::config(
                "backoff_base",
                self.base,
                "must be above zero",
            ));
        }
        if self.cap < self.base {
            return Err(Error::config(
                "backoff_cap",
                self.cap,
                "must be at least backoff_base",
            ));
        }
        if self.failure_threshold == 0 {
            return Err(Error::config(
                "backoff_failure_threshold",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The delay after `failures` connects in a row failed (at or past the threshold).
    pub(crate) fn delay(&self, failures: u32, rng: &mut Rng) -> Duration {
        let past = failures.saturating_sub(self.failure_threshold).min(30);
        let ceiling = self.base.saturating_mul(1u32 << past).min(self.cap);
        ceiling.mul_f64(rng.unit())
    }
}

/// The connect circuit of one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Connects go ahead.
    Closed,
    /// No connects until the instant; requests that find no free slot fail fast.
    Open {
        /// When a probe may be tried.
        until: Instant,
    },
    /// One probe connect is allowed; its outcome decides.
    HalfOpen {
        /// Whether the probe has started.
        probing: bool,
    },
}
