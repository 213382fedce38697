//! Counters and gauges of one origin's pool, with the names a proxy
//! operator knows from Envoy's cluster statistics.

/// Why a connection was closed (each reason has its own `cx_destroy_*` counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// It sat idle longer than the idle timeout.
    IdleTimeout,
    /// The peer closed it (or it was found closed before it was lent).
    PeerClosed,
    /// A request or response on it failed, or a response body was abandoned
    /// where the protocol cannot recover the connection (HTTP/1.1).
    Error,
    /// It was draining (GOAWAY, recycling) and its last lease ended.
    Drained,
    /// It failed a health check (PING unanswered, found dead when idle).
    HealthCheck,
    /// The pool was shut down.
    Shutdown,
}

impl CloseReason {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Error => "error",
            CloseReason::Drained => "drained",
            CloseReason::HealthCheck => "health_check",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a connection was retired (drained before it could fail a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetireReason {
    /// It reached its (jittered) max age.
    MaxAge,
    /// It carried its maximum number of requests.
    MaxRequests,
    /// The origin's `Keep-Alive` header said it will close it soon.
    KeepAlive,
    /// Too many requests in a row failed on it.
    Errors,
    /// The application's own policy retired it.
    Application,
    /// The peer said it takes no new requests (GOAWAY, `Connection: close`).
    Peer,
}

/// Connections retired (drained gracefully), by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RetireCounts {
    /// Reached max age.
    pub max_age: u64,
    /// Reached max requests.
    pub max_requests: u64,
    /// Retired ahead of the origin's Keep-Alive timeout or max.
    pub keep_alive: u64,
    /// Too many consecutive errors.
    pub errors: u64,
    /// Retired by the application's policy.
    pub application: u64,
    /// Drained by the peer (GOAWAY, Connection: close).
    pub peer: u64,
}

impl RetireCounts {
    pub(crate) fn count(&mut self, reason: RetireReason) {
        match reason {
            RetireReason::MaxAge => self.max_age += 1,
            RetireReason::MaxRequests => self.max_requests += 1,
            RetireReason::KeepAlive => self.keep_alive += 1,
            RetireReason::Errors => self.errors += 1,
            RetireReason::Application => self.application += 1,
            RetireReason::Peer => self.peer += 1,
        }
    }

    fn add(&mut self, o: &RetireCounts) {
        self.max_age += o.max_age;
        self.max_requests += o.max_requests;
        self.keep_alive += o.keep_alive;
        self.errors += o.errors;
        self.application += o.application;
        self.peer += o.peer;
    }
}

/// Connections destroyed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DestroyCounts {
    /// Closed after sitting idle past the idle timeout.
    pub idle_timeout: u64,
    /// Closed by the origin.
    pub remote: u64,
    /// Closed after an error on a request or response.
    pub error: u64,
    /// Closed after draining (GOAWAY, recycling).
    pub drained: u64,
    /// Closed after failing a health check.
    pub health_check: u64,
    /// Closed by pool shutdown.
    pub local: u64,
}

impl DestroyCounts {
    /// All destroyed connections.
    pub fn total(&self) -> u64 {
        self.idle_timeout + self.remote + self.error + self.drained + self.health_check + self.local
    }

    pub(crate) fn count(&mut self, reason: CloseReason) {
        match reason {
            CloseReason::IdleTimeout => self.idle_timeout += 1,
            CloseReason::PeerClosed => self.remote += 1,
            CloseReason::Error => self.error += 1,
            CloseReason::Drained => self.drained += 1,
            CloseReason::HealthCheck => self.health_check += 1,
            CloseReason::Shutdown => self.local += 1,
        }
    }

    fn add(&mut self, o: &DestroyCounts) {
        self.idle_timeout += o.idle_timeout;
        self.remote += o.remote;
        self.error += o.error;
        self.drained += o.drained;
        self.health_check += o.health_check;
        self.local += o.local;
    }
}

/// A snapshot of one origin's pool (or of a whole pool, summed).
///
/// `cx_*` are connections, `rq_*` requests. Counters only grow; gauges
/// (`cx_active`, `cx_idle`, `cx_connecting`, `cx_draining`, `rq_active`,
/// `rq_pending`) go back to zero when the pool is idle and shut down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// Connections opened successfully (counter).
    pub cx_total: u64,
    /// Open connections, ready or draining (gauge).
    pub cx_active: u64,
    /// Open connections carrying no request (gauge).
    pub cx_idle: u64,
    /// Connect attempts in flight (gauge).
    pub cx_connecting: u64,
    /// Open connections that take no new requests (gauge).
    pub cx_draining: u64,
    /// Connections the sizing policy (or an explicit warm-up) keeps ready (gauge).
    pub cx_warm_target: u64,
    /// Connections opened with 0-RTT, no handshake round trip (counter).
    pub cx_connect_0rtt: u64,
    /// Connect attempts that failed (counter).
    pub cx_connect_fail: u64,
    /// Connections closed, by reason (counters).
    pub cx_destroy: DestroyCounts,
    /// Connections retired before they could fail, by reason (counters).
    pub cx_retired: RetireCounts,
    /// Connect attempts that succeeded while the circuit was half-open,
    /// closing it (counter).
    pub cx_circuit_closed: u64,
    /// Times the connect circuit opened (counter).
    pub cx_circuit_opened: u64,
    /// Requests that asked for a connection (counter).
    pub rq_total: u64,
    /// Requests holding a slot now (gauge).
    pub rq_active: u64,
    /// Requests waiting for a slot now (gauge).
    pub rq_pending: u64,
    /// Requests rejected because the pending queue was full (counter).
    pub rq_pending_overflow: u64,
    /// Requests that waited past their deadline (counter).
    pub rq_pending_timeout: u64,
    /// Requests that failed while waiting because connects failed (counter).
    pub rq_pending_failure: u64,
    /// Requests refused at once because the connect circuit was open (counter).
    pub rq_circuit_open: u64,
    /// Requests served on a connection that was already open when they
    /// asked, paying no handshake (counter).
    pub rq_reused: u64,
    /// Requests sent again after a failure that proved them unsent (counter).
    pub rq_retry: u64,
}

impl Stats {
    /// `rq_reused / rq_total`: the share of requests that paid no handshake.
    pub fn reuse_ratio(&self) -> f64 {
        if self.rq_total == 0 {
            0.0
        } else {
            self.rq_reused as f64 / self.rq_total as f64
        }
    }

    /// Adds another snapshot into this one (for pool-wide totals).
    pub fn add(&mut self, o: &Stats) {
        self.cx_total += o.cx_total;
        self.cx_active += o.cx_active;
        self.cx_idle += o.cx_idle;
        self.cx_connecting += o.cx_connecting;
        self.cx_draining += o.cx_draining;
        self.cx_warm_target += o.cx_warm_target;
        self.cx_connect_fail += o.cx_connect_fail;
        self.cx_connect_0rtt += o.cx_connect_0rtt;
        self.cx_destroy.add(&o.cx_destroy);
        self.cx_retired.add(&o.cx_retired);
        self.cx_circuit_closed += o.cx_circuit_closed;
        self.cx_circuit_opened += o.cx_circuit_opened;
        self.rq_total += o.rq_total;
        self.rq_active += o.rq_active;
        self.rq_pending += o.rq_pending;
        self.rq_pending_overflow += o.rq_pending_overflow;
        self.rq_pending_timeout += o.rq_pending_timeout;
        self.rq_pending_failure += o.rq_pending_failure;
        self.rq_circuit_open += o.rq_circuit_open;
        self.rq_reused += o.rq_reused;
        self.rq_retry += o.rq_retry;
    }

    /// True when every gauge is zero.
    pub fn gauges_are_zero(&self) -> bool {
        self.cx_active == 0
            && self.cx_idle == 0
            && self.cx_connecting == 0
            && self.cx_draining == 0
            && self.rq_active == 0
            && self.rq_pending == 0
    }
}
