//! The sans-IO core: one origin's pool as a plain state machine.
//!
//! [`OriginPool`] holds connections and their stream slots, the FIFO queue of
//! waiting requests, connect attempts in flight, deadlines and counters. It
//! never spawns, sleeps, reads a clock or touches a socket: every method takes
//! `now` and queues [`Action`]s that the driver ([`Pool`](crate::Pool)) carries
//! out. That makes it testable as a model (random operation sequences, with
//! [`OriginPool::check_invariants`] after every step) and with simulated time,
//! and keeps the hot path to one short critical section per checkout and per
//! release.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use edgepool::core::{Action, CoreConfig, OriginPool};
//!
//! let mut pool: OriginPool<&str, u32> = OriginPool::new(CoreConfig::default()).unwrap();
//! let t0 = Instant::now();
//! // Nothing is open: the request queues and the core asks for a connect.
//! assert!(pool.try_checkout(t0).is_none());
//! let waiter = pool.enqueue(t0, t0 + Duration::from_secs(1), 7).unwrap();
//! let Some(Action::Connect(conn)) = pool.poll_action() else { panic!() };
//! // The driver connected; the waiter is served from the new connection.
//! pool.connected(conn, t0, 1, "an http/1.1 connection").unwrap();
//! let Some(Action::Wake { waiter: 7, grant }) = pool.poll_action() else { panic!() };
//! pool.release(grant.conn, t0, true);
//! // The next request reuses it without waiting.
//! assert!(pool.try_checkout(t0).unwrap().reused);
//! # let _ = waiter;
//! ```

mod conn_table;
mod counters;
mod ids;
mod load;
mod origin_pool;
mod policy;
mod rng;
mod waiters;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use conn_table::Phase;
pub use counters::{CloseReason, DestroyCounts, RetireCounts, RetireReason, Stats};
pub use ids::{ConnId, WaiterId};
pub use load::LoadSample;
pub use origin_pool::{Action, Grant, OriginPool, RejectReason, Rejected, WaitFailure};
pub use policy::{BackoffConfig, Circuit, RecycleConfig};

use crate::Error;

/// `t + d`, or a century ahead when `t + d` is not representable, instead
/// of panicking:
/// durations reach the core from configuration and from origins (a
/// `Keep-Alive: timeout=99999999999999999999` header must not crash the
/// proxy; found by fuzzing).
pub(crate) fn later(t: std::time::Instant, d: Duration) -> std::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t.checked_add(d)
        .or_else(|| t.checked_add(CENTURY))
        .unwrap_or(t)
}

/// Limits and timeouts of one origin's pool.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreConfig {
    /// Most connections open or being opened at once (default 100).
    pub max_connections: usize,
    /// Most requests waiting for a slot; one more is rejected at once (default 1,024).
    pub max_pending: usize,
    /// Close a connection that carried no request for this long (default 90 s; None keeps it).
    pub idle_timeout: Option<Duration>,
    /// When every slot is in use, open another connection (true, default) or
    /// queue on the ones there are (false: the RFC 9113 reading for HTTP/2).
    pub open_more_when_saturated: bool,
    /// Slots a new connection is assumed to bring until one has said (1 for
    /// HTTP/1.1, the local stream maximum for multiplexed protocols).
    pub expected_slots: usize,
    /// How a connection is retired before it fails.
    pub recycle: RecycleConfig,
    /// How connect failures are backed off.
    pub backoff: BackoffConfig,
    /// Keep capacity for this many times the requests in use or waiting,
    /// opening connections ahead of demand (Envoy's preconnect ratio;
    /// default 1.0 = only on demand; at least 1.0).
    pub preconnect_ratio: f64,
    /// Most connects in flight at once for warming (default 4), so warming
    /// an origin does not open a burst of handshakes.
    pub warm_concurrency: usize,
    /// Seed of the core's random numbers (max-age jitter, backoff jitter), so
    /// a test can replay a run exactly. The pool seeds it randomly.
    pub seed: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_connections: 100,
            max_pending: 1024,
            idle_timeout: Some(Duration::from_secs(90)),
            open_more_when_saturated: true,
            expected_slots: 1,
            recycle: RecycleConfig::default(),
            backoff: BackoffConfig::default(),
            preconnect_ratio: 1.0,
            warm_concurrency: 4,
            seed: 0x5eed,
        }
    }
}

impl CoreConfig {
    /// Rejects values the pool cannot work with, naming the field and value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 {
            return Err(Error::config("max_connections", 0, "must be at least 1"));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "idle_timeout",
                Duration::ZERO,
                "must be above zero (use None to keep idle connections)",
            ));
        }
        if self.max_pending == 0 {
            // A request that finds no free slot must wait at least for the
            // connect it starts; with no queue a cold pool could serve nothing.
            return Err(Error::config("max_pending", 0, "must be at least 1"));
        }
        if self.expected_slots == 0 {
            return Err(Error::config("expected_slots", 0, "must be at least 1"));
        }
        if !(self.preconnect_ratio >= 1.0 && self.preconnect_ratio.is_finite()) {
            return Err(Error::config(
                "preconnect_ratio",
                self.preconnect_ratio,
                "must be a number of at least 1.0",
            ));
        }
        if self.warm_concurrency == 0 {
            return Err(Error::config("warm_concurrency", 0, "must be at least 1"));
        }
        self.recycle.validate()?;
        self.backoff.validate()
    }
}
