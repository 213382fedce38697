//! The state machine of one origin's pool.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::conn_table::{Conn, ConnTable, Phase};
use super::counters::{CloseReason, RetireReason, Stats};
use super::ids::{ConnId, WaiterId};
use super::load::{LoadMeter, LoadSample};
use super::policy::Circuit;
use super::rng::Rng;
use super::waiters::{Waiter, WaiterQueue};
use super::{CoreConfig, later};
use crate::Error;

/// The most slots one connection is counted with. Far above any real stream
/// limit (HTTP/2 peers default to 100), and small enough that sums over many
/// connections cannot overflow (found by fuzzing with `usize::MAX` slots).
const MAX_SLOTS: usize = 1 << 24;

/// One slot on one connection, granted to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The connection the slot is on.
    pub conn: ConnId,
    /// Whether the connection was already open when the request asked for
    /// it, so the request paid no handshake (false when it waited for this
    /// connection to open).
    pub reused: bool,
    /// How long the connection had been idle (no request on it) before this
    /// grant; zero when it was busy or new.
    pub idle_for: Duration,
    /// When the slot was granted (for measuring how long requests hold it).
    pub at: Instant,
}

/// Why a waiting request was failed by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitFailure {
    /// Its deadline passed.
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// The connect attempt that was to serve it failed.
    ConnectFailed,
    /// Connects to the origin kept failing and the circuit opened.
    CircuitOpen {
        /// When a new attempt will be allowed.
        retry_after: Duration,
    },
    /// The pool was shut down.
    Shutdown,
}

/// Why a request could not even join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The pending queue is at `max_pending`.
    Overflow,
    /// Connects to the origin kept failing; no new ones until the backoff is over.
    CircuitOpen {
        /// When a new attempt will be allowed.
        retry_after: Duration,
    },
    /// The pool is shut down.
    Shutdown,
}

/// A request the core would not queue; the payload is handed back.
#[derive(Debug)]
pub struct Rejected<W> {
    /// Why.
    pub reason: RejectReason,
    /// The waiter payload, returned untouched.
    pub waiter: W,
}

/// What the driver must do. `C` is the driver's connection handle, `W` its
/// waiter handle (a channel sender, say); the core stores them and never
/// looks inside.
#[derive(Debug)]
pub enum Action<C, W> {
    /// Open a connection; report back with [`OriginPool::connected`] or
    /// [`OriginPool::connect_failed`] under this id.
    Connect(ConnId),
    /// Hand this grant to this waiter.
    Wake {
        /// The waiter's handle.
        waiter: W,
        /// Its slot.
        grant: Grant,
    },
    /// Fail this waiter.
    Fail {
        /// The waiter's handle.
        waiter: W,
        /// Why.
        reason: WaitFailure,
    },
    /// Close this connection and drop its handle.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
        /// The handle, for the driver to drop (None for a connect attempt).
        handle: Option<C>,
    },
}

/// The pool of one origin, as plain data: connections and their slots, the
/// waiter queue, connect attempts in flight, deadlines and counters. Every
/// method takes `now` and queues [`Action`]s; read them with
/// [`poll_action`](OriginPool::poll_action) after each call.
pub struct OriginPool<C, W> {
    config: CoreConfig,
    conns: ConnTable<C>,
    waiters: WaiterQueue<W>,
    actions: VecDeque<Action<C, W>>,
    /// Slots a new connection is expected to bring (learned from the last
    /// connection that opened).
    expected_slots: usize,
    connecting: usize,
    /// Attempts among `connecting` that are reserved for one retrying
    /// request, and so cover no waiter.
    reserved: usize,
    ready: usize,
    draining: usize,
    /// Leases granted and not yet released, including those on connections
    /// that have since closed.
    rq_active: usize,
    shut_down: bool,
    /// When a request last asked for a slot (for evicting the least recently
    /// used origin when the pool tracks too many).
    last_request: Option<Instant>,
    /// Connections to keep ready even without demand (the sizing policy's
    /// warm level, or an explicit warm-up).
    warm_target: usize,
    /// The sizing policy's most connections (never above the configured limit).
    max_target: usize,
    /// Slots of all ready connections, kept up to date for preconnect.
    ready_slots: usize,
    load: LoadMeter,
    circuit: Circuit,
    connect_failures: u32,
    rng: Rng,
    stats: Stats,
}

impl<C, W> OriginPool<C, W> {
    /// Builds an empty pool, rejecting an invalid configuration.
    pub fn new(config: CoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let expected_slots = config.expected_slots;
        Ok(OriginPool {
            rng: Rng::new(config.seed),
            config,
            conns: ConnTable::new(),
            waiters: WaiterQueue::new(),
            actions: VecDeque::new(),
            expected_slots: expected_slots.min(MAX_SLOTS),
            connecting: 0,
            reserved: 0,
            ready: 0,
            draining: 0,
            rq_active: 0,
            shut_down: false,
            last_request: None,
            warm_target: 0,
            max_target: usize::MAX,
            ready_slots: 0,
            load: LoadMeter::new(),
            circuit: Circuit::Closed,
            connect_failures: 0,
            stats: Stats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action<C, W>> {
        self.actions.pop_front()
    }

    /// The driver's handle of an open connection.
    pub fn conn(&self, id: ConnId) -> Option<&C> {
        self.conns.get(id)?.handle.as_ref()
    }

    /// The driver's handles of every open connection.
    pub fn handles(&self) -> impl Iterator<Item = (ConnId, &C)> {
        self.conns
            .iter()
            .filter_map(|(id, c)| c.handle.as_ref().map(|h| (id, h)))
    }

    /// The phase of a connection, or None once it is closed.
    pub fn phase(&self, id: ConnId) -> Option<Phase> {
        self.conns.get(id).map(|c| c.phase)
    }

    /// The slot count and leases of a connection, or None once it is closed.
    pub fn load(&self, id: ConnId) -> Option<(usize, usize)> {
        self.conns.get(id).map(|c| (c.leases, c.slots))
    }

    /// Grants a slot at once if a connection has one free, preferring the
    /// most recently used connection. Requests already waiting go first
    /// (FIFO), so this returns None while any are queued.
    pub fn try_checkout(&mut self, now: Instant) -> Option<Grant> {
        self.last_request = Some(now);
        if self.shut_down || !self.waiters.is_empty() {
            return None;
        }
        let id = self.conns.head()?;
        self.stats.rq_total += 1;
        Some(self.grant(id, now, false))
    }

    /// Queues a request that found no free slot, and starts connects if the
    /// queue needs more capacity than is on its way.
    pub fn enqueue(
        &mut self,
        now: Instant,
        deadline: Instant,
        waiter: W,
    ) -> Result<WaiterId, Rejected<W>> {
        self.stats.rq_total += 1;
        self.last_request = Some(now);
        if self.shut_down {
            return Err(Rejected {
                reason: RejectReason::Shutdown,
                waiter,
            });
        }
        if let Circuit::Open { until } = self.circuit {
            if now < until {
                self.stats.rq_circuit_open += 1;
                return Err(Rejected {
                    reason: RejectReason::CircuitOpen {
                        retry_after: until - now,
                    },
                    waiter,
                });
            }
            // The backoff is over: the next connect is the probe.
            self.circuit = Circuit::HalfOpen { probing: false };
        }
        if self.waiters.len() >= self.config.max_pending {
            self.stats.rq_pending_overflow += 1;
            return Err(Rejected {
                reason: RejectReason::Overflow,
                waiter,
            });
        }
        let id = self.waiters.push(now, deadline, waiter);
        // A free slot can exist only if the caller skipped try_checkout;
        // serve from it rather than leave a waiter beside a free slot.
        if let Some(conn) = self.conns.head() {
            self.serve_waiters(conn, now, false);
        }
        self.start_connects(now);
        Ok(id)
    }

    /// Removes a waiting request that its caller gave up on. Returns its
    /// payload, or None if it was already served, failed or timed out.
    pub fn cancel(&mut self, id: WaiterId) -> Option<W> {
        self.waiters.remove(id).map(|w| w.payload)
    }

    /// Fails one waiter whose deadline has passed (the driver calls this when
    /// that waiter's own timer fires). Returns false if it was already
    /// resolved or its deadline is still ahead.
    pub fn expire(&mut self, id: WaiterId, now: Instant) -> bool {
        match self.waiters.get(id) {
            Some(w) if w.deadline <= now => {}
            _ => return false,
        }
        if let Some(w) = self.waiters.remove(id) {
            self.fail_timeout(w, now);
        }
        true
    }

    /// Returns a slot. `reusable` is false when the request or its response
    /// failed in a way that leaves the connection unusable; the connection is
    /// then closed. Releasing a slot on a connection that has since closed
    /// only settles the request count.
    pub fn release(&mut self, id: ConnId, now: Instant, reusable: bool) {
        debug_assert!(self.rq_active > 0, "release without a lease");
        self.rq_active = self.rq_active.saturating_sub(1);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.leases = conn.leases.saturating_sub(1);
        conn.touched = now;
        if !reusable {
            self.close_conn(id, CloseReason::Error, now);
            return;
        }
        conn.consecutive_errors = 0;
        match conn.phase {
            Phase::Ready => self.offer(id, now),
            Phase::Draining if conn.leases == 0 => self.close_conn(id, CloseReason::Drained, now),
            Phase::Draining | Phase::Connecting => {}
        }
    }

    /// Returns a slot after a request failed on a connection that survives
    /// it (a reset stream on a multiplexed connection). After
    /// `max_consecutive_errors` such failures in a row the connection is
    /// retired.
    pub fn release_failed(&mut self, id: ConnId, now: Instant) {
        let limit = self.config.recycle.max_consecutive_errors;
        let errors = match self.conns.get_mut(id) {
            Some(conn) => {
                conn.consecutive_errors = conn.consecutive_errors.saturating_add(1);
                Some(conn.consecutive_errors)
            }
            None => None,
        };
        if errors.zip(limit).is_some_and(|(n, max)| n >= max) {
            self.retire(id, now, RetireReason::Errors);
        }
        self.release(id, now, true);
        if let (Some(errors), Some(conn)) = (errors, self.conns.get_mut(id)) {
            conn.consecutive_errors = errors; // release() counted it a success
        }
    }

    /// A connect attempt succeeded. The connection starts lending its slots;
    /// waiters are served from it first, except for a reserved attempt
    /// ([`reserve_connect`](OriginPool::reserve_connect)), whose first slot
    /// is returned here for the request that reserved it. Returns the handle
    /// back if the attempt was abandoned meanwhile (closed, or the pool shut
    /// down): the driver then closes it.
    pub fn connected(
        &mut self,
        id: ConnId,
        now: Instant,
        slots: usize,
        handle: C,
    ) -> Result<Option<Grant>, C> {
        let slots = slots.min(MAX_SLOTS);
        let reserved = match self.conns.get(id) {
            Some(conn) if conn.phase == Phase::Connecting => conn.reserved,
            _ => return Err(handle),
        };
        self.connecting -= 1;
        if reserved {
            self.reserved -= 1;
        }
        if self.shut_down {
            self.conns.remove(id);
            return Err(handle);
        }
        let expires_at = self.config.recycle.expiry(now, &mut self.rng);
        let served_limit = self.config.recycle.max_requests;
        if let Some(conn) = self.conns.get_mut(id) {
            conn.phase = Phase::Ready;
            conn.handle = Some(handle);
            conn.slots = slots;
            conn.opened_at = now;
            conn.touched = now;
            conn.last_check = now;
            conn.expires_at = expires_at;
            conn.served_limit = served_limit;
        }
        self.ready += 1;
        self.ready_slots += slots;
        self.stats.cx_total += 1;
        if slots > 0 {
            self.expected_slots = slots;
        }
        self.connect_failures = 0;
        if self.circuit != Circuit::Closed {
            self.circuit = Circuit::Closed;
            self.stats.cx_circuit_closed += 1;
        }
        let grant = (reserved && self.conns.get(id).is_some_and(Conn::has_free_slot))
            .then(|| self.grant(id, now, true));
        self.offer_with(id, now, true);
        // Warming continues a few connects at a time. Not after a connection
        // that allows no requests: each would start the next (an origin
        // advertising 0 streams would get max_connections sockets).
        if slots > 0 {
            self.start_connects(now);
        }
        Ok(grant)
    }

    /// A connect attempt failed. Waiters that this attempt was to serve, and
    /// that no other attempt in flight covers, are failed at once rather than
    /// left to time out: an origin that refuses connections gives a quick
    /// error, not a hang. Other waiters may start new attempts.
    pub fn connect_failed(&mut self, id: ConnId, now: Instant) {
        let reserved = match self.conns.get(id) {
            Some(c) if c.phase == Phase::Connecting => c.reserved,
            _ => return,
        };
        self.conns.remove(id);
        self.connecting -= 1;
        if reserved {
            self.reserved -= 1;
        }
        self.stats.cx_connect_fail += 1;
        self.connect_failures = self.connect_failures.saturating_add(1);
        let probe_failed = matches!(self.circuit, Circuit::HalfOpen { probing: true });
        let opens = probe_failed || self.connect_failures >= self.config.backoff.failure_threshold;
        if !reserved {
            // The waiters this attempt was to serve hear of its own failure
            // (a reserved attempt's requester hears it from the driver).
            self.fail_uncovered_waiters();
        }
        if opens {
            // The rest are told to come back after the backoff.
            self.open_circuit(now);
            return;
        }
        self.start_connects(now);
    }

    /// Fails the waiters that the attempts still in flight cannot cover, at
    /// most one connection's worth, with `ConnectFailed`.
    fn fail_uncovered_waiters(&mut self) {
        // Saturating: a transport may announce usize::MAX slots (found by
        // fuzzing: the product overflowed).
        let covered = (self.connecting - self.reserved).saturating_mul(self.expected_slots.max(1));
        let mut to_fail = self
            .waiters
            .len()
            .saturating_sub(covered)
            .min(self.expected_slots.max(1));
        while to_fail > 0 {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            self.stats.rq_pending_failure += 1;
            self.actions.push_back(Action::Fail {
                waiter: w.payload,
                reason: WaitFailure::ConnectFailed,
            });
            to_fail -= 1;
        }
    }

    /// The connection is gone (peer closed it, or it failed). Leases on it
    /// stay counted until released. An attempt still connecting counts as a
    /// failed connect.
    pub fn close(&mut self, id: ConnId, now: Instant, reason: CloseReason) {
        match self.conns.get(id).map(|c| c.phase) {
            None => {}
            Some(Phase::Connecting) => self.connect_failed(id, now),
            Some(_) => self.close_conn(id, reason, now),
        }
    }

    /// The peer said the connection takes no new requests (GOAWAY,
    /// `Connection: close`); it closes when its last lease is released.
    pub fn drain(&mut self, id: ConnId, now: Instant) {
        self.retire(id, now, RetireReason::Peer);
    }

    /// Retires a connection gracefully: no new leases, in-flight ones finish,
    /// then it closes. Waiters get a replacement connection if they need one.
    pub fn retire(&mut self, id: ConnId, now: Instant, reason: RetireReason) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.phase != Phase::Ready {
            return;
        }
        self.stats.cx_retired.count(reason);
        conn.phase = Phase::Draining;
        let idle = conn.leases == 0;
        self.ready -= 1;
        self.ready_slots -= conn.slots;
        self.draining += 1;
        self.conns.unlink(id);
        if idle {
            self.close_conn(id, CloseReason::Drained, now);
        }
        self.start_connects(now);
    }

    /// The peer changed how many requests the connection may carry at once.
    /// Leases above a lowered limit run to completion; no new ones are
    /// granted until the connection is below it.
    pub fn set_slots(&mut self, id: ConnId, now: Instant, slots: usize) {
        let slots = slots.min(MAX_SLOTS);
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut conn.slots, slots);
        if conn.phase != Phase::Ready {
            return;
        }
        self.ready_slots = self.ready_slots - old + slots;
        if slots > 0 {
            self.expected_slots = slots;
        }
        if conn.has_free_slot() {
            self.offer(id, now);
        } else {
            self.conns.unlink(id);
            self.start_connects(now);
        }
    }

    /// Applies an origin's `Keep-Alive: timeout=N, max=M` hint, as seen on a
    /// response on this connection: the connection is retired
    /// `keep_alive_margin` before the origin would close it for idleness, and
    /// after the `M` more requests the origin allows.
    pub fn keep_alive_hint(
        &mut self,
        id: ConnId,
        now: Instant,
        timeout: Option<Duration>,
        max: Option<u64>,
    ) {
        let margin = self.config.recycle.keep_alive_margin;
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let mut retire_now = false;
        if let Some(timeout) = timeout {
            let limit = timeout.saturating_sub(margin);
            retire_now |= limit.is_zero();
            conn.idle_limit = Some(conn.idle_limit.map_or(limit, |l| l.min(limit)));
        }
        if let Some(max) = max {
            // `max` counts the requests still allowed, the next one included;
            // leases in flight have been counted in `served` already.
            let limit = conn.served.saturating_add(max);
            retire_now |= max == 0;
            conn.served_limit = Some(conn.served_limit.map_or(limit, |l| l.min(limit)));
        }
        if retire_now {
            self.retire(id, now, RetireReason::KeepAlive);
        }
    }

    /// Starts a connect reserved for one request (a retry that must go on a
    /// fresh connection): it covers no waiter, and its first slot goes to
    /// the requester via [`connected`](OriginPool::connected). At the
    /// connection limit, the least recently used idle connection is closed
    /// to make room; if none is idle, or connects are backed off, returns
    /// None and the request waits like any other. The driver opens the
    /// connection itself (no [`Action::Connect`] is queued).
    pub fn reserve_connect(&mut self, now: Instant) -> Option<ConnId> {
        if self.shut_down || self.circuit != Circuit::Closed {
            return None;
        }
        if self.connection_count() >= self.config.max_connections {
            let idle = self
                .conns
                .iter_from_tail()
                .find(|(_, c)| c.leases == 0)
                .map(|(id, _)| id)?;
            // Not close_conn: its replanning could take the freed place.
            self.remove_conn(idle, CloseReason::IdleTimeout);
        }
        let mut conn = Conn::connecting(now);
        conn.reserved = true;
        let id = self.conns.insert(conn);
        self.connecting += 1;
        self.reserved += 1;
        self.start_connects(now);
        Some(id)
    }

    /// Closes every connection now, leased or not (the end of a graceful
    /// shutdown whose deadline passed). Leases on them stay counted until
    /// released; the driver aborts the connections so they are.
    pub fn force_close_all(&mut self, now: Instant) {
        self.shutdown(now);
        for id in self.conns.ids() {
            if self
                .conns
                .get(id)
                .is_some_and(|c| c.phase != Phase::Connecting)
            {
                self.close_conn(id, CloseReason::Shutdown, now);
            }
        }
    }

    /// Idle ready connections not checked for `interval` (for the periodic
    /// health check, e.g. a PING on multiplexed connections).
    pub fn due_for_check(&self, now: Instant, interval: Duration) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Ready && c.leases == 0)
            .filter(|(_, c)| now.saturating_duration_since(c.last_check) >= interval)
            .map(|(id, _)| id)
            .collect()
    }

    /// Records a passed health check.
    pub fn checked(&mut self, id: ConnId, now: Instant) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.last_check = now;
        }
    }

    /// Sets how many connections to keep ready without demand (`warm`) and
    /// the most to open (`max`, never above the configured limit), as a
    /// sizing policy computed them. Connects start at once to reach `warm`
    /// (at most `warm_concurrency` at a time); surplus idle connections go
    /// only when their idle timeout passes.
    pub fn set_targets(&mut self, now: Instant, warm: usize, max: usize) {
        self.max_target = max.max(1);
        self.warm_target = warm.min(self.config.max_connections).min(self.max_target);
        self.start_connects(now);
    }

    /// The warm level and most connections currently targeted.
    pub fn targets(&self) -> (usize, usize) {
        (
            self.warm_target,
            self.max_target.min(self.config.max_connections),
        )
    }

    /// Records how long a request held its slot (its latency as the pool
    /// sees it), for the sizing policies' L.
    pub fn observe_latency(&mut self, held: Duration) {
        self.load.observe_latency(held);
    }

    /// The load over the time since the last sample: request rate R and mean
    /// latency L (both exponentially weighted), requests in flight, and the
    /// slots a connection brings.
    pub fn load_sample(&mut self, now: Instant) -> LoadSample {
        let sample = self.load.sample(now, self.stats.rq_total);
        LoadSample {
            rate: sample.0,
            latency: sample.1,
            in_flight: self.rq_active + self.waiters.len(),
            slots_per_connection: self.expected_slots.max(1),
        }
    }

    /// Ready connections.
    pub fn ready_count(&self) -> usize {
        self.ready
    }

    /// The connect circuit's state.
    pub fn circuit(&self) -> Circuit {
        self.circuit
    }

    /// Counts a connection opened with 0-RTT.
    pub fn record_connect_0rtt(&mut self) {
        self.stats.cx_connect_0rtt += 1;
    }

    /// Counts a request that was sent again on another connection.
    pub fn record_retry(&mut self) {
        self.stats.rq_retry += 1;
    }

    /// Fails waiters whose deadline has passed, closes connections idle
    /// longer than their idle limit, and retires connections past their age.
    ///
    /// Cost: O(connections) when any connection has its own idle limit or an
    /// age limit; otherwise it walks only the expired end of the free list.
    /// This runs in the background task, never on the request path.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.waiters.take_expired(now, |w| expired.push(w));
        for w in expired {
            self.fail_timeout(w, now);
        }
        let mut idle = Vec::new();
        for (id, conn) in self.conns.iter_from_tail() {
            if conn.leases > 0 {
                continue;
            }
            match self.idle_deadline(conn) {
                Some(deadline) if deadline <= now => idle.push(id),
                // Uniform limits: the rest of the list was used more recently.
                _ if !self.per_conn_limits() => break,
                _ => {}
            }
        }
        // Idle surplus above the warm level goes; the warm level stays (the
        // periodic health check keeps it honest).
        let surplus = self.ready.saturating_sub(self.warm_target);
        for id in idle.into_iter().take(surplus) {
            self.close_conn(id, CloseReason::IdleTimeout, now);
        }
        if self.config.recycle.max_age.is_some() {
            let old: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Ready && c.expires_at.is_some_and(|t| t <= now))
                .map(|(id, _)| id)
                .collect();
            for id in old {
                self.retire(id, now, RetireReason::MaxAge);
            }
        }
    }

    /// When [`handle_timeout`](OriginPool::handle_timeout) next has work: the
    /// earliest waiter deadline, idle expiry or age limit.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut next = self.waiters.earliest_deadline();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (_, conn) in self.conns.iter_from_tail() {
            if conn.leases > 0 {
                continue;
            }
            if let Some(deadline) = self.idle_deadline(conn) {
                consider(deadline);
                if !self.per_conn_limits() {
                    break;
                }
            }
        }
        if self.config.recycle.max_age.is_some() {
            for (_, conn) in self.conns.iter() {
                if let (Phase::Ready, Some(t)) = (conn.phase, conn.expires_at) {
                    consider(t);
                }
            }
        }
        next
    }

    fn idle_deadline(&self, conn: &Conn<C>) -> Option<Instant> {
        let limit = match (self.config.idle_timeout, conn.idle_limit) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(later(conn.touched, limit))
    }

    /// Whether connections may have idle limits of their own (Keep-Alive
    /// hints), so the free list is not sorted by idle deadline.
    fn per_conn_limits(&self) -> bool {
        self.stats.cx_retired.keep_alive > 0
            || self.conns.iter().any(|(_, c)| c.idle_limit.is_some())
    }

    /// Stops lending: waiters fail, idle connections close, busy ones drain
    /// and close when their last lease is released, attempts in flight are
    /// closed when they report.
    pub fn shutdown(&mut self, now: Instant) {
        self.shut_down = true;
        self.warm_target = 0;
        let waiters: Vec<Waiter<W>> = self.waiters.drain().collect();
        for w in waiters {
            self.actions.push_back(Action::Fail {
                waiter: w.payload,
                reason: WaitFailure::Shutdown,
            });
        }
        for id in self.conns.ids() {
            match self.conns.get(id).map(|c| (c.phase, c.leases)) {
                Some((Phase::Ready | Phase::Draining, 0)) => {
                    self.close_conn(id, CloseReason::Shutdown, now)
                }
                Some((Phase::Ready, _)) => self.drain(id, now),
                _ => {}
            }
        }
    }

    /// When a request last asked this origin for a slot.
    pub fn last_request(&self) -> Option<Instant> {
        self.last_request
    }

    /// True when the origin may be dropped to make room for others: no
    /// request holds or waits for a slot and no connect is in flight (idle
    /// connections are closed by the eviction).
    pub fn is_evictable(&self) -> bool {
        self.rq_active == 0 && self.waiters.is_empty() && self.connecting == 0
    }

    /// Whether a request that finds no free slot would be queued rather than
    /// refused for a full queue. (A request that finds a free slot never
    /// queues, so this is the conservative answer to "would it be refused?".)
    pub fn has_room(&self) -> bool {
        self.waiters.len() < self.config.max_pending
    }

    /// Whether [`shutdown`](OriginPool::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// True when nothing is open, connecting, leased or waiting.
    pub fn is_empty(&self) -> bool {
        self.conns.len() == 0 && self.rq_active == 0 && self.waiters.is_empty()
    }

    /// True when the pool holds nothing worth remembering: it is empty, has
    /// no warm level to keep, and is not backing off. (Forgetting an origin
    /// whose circuit is open would let the next request start afresh and
    /// defeat the backoff; failures below the threshold are not worth an
    /// entry, or every mistyped origin would be kept forever.)
    pub fn is_forgettable(&self, now: Instant) -> bool {
        let backing_off = match self.circuit {
            Circuit::Closed => false,
            Circuit::Open { until } => now < until,
            Circuit::HalfOpen { .. } => true,
        };
        self.is_empty() && self.warm_target == 0 && !backing_off
    }

    /// Connections open or being opened (what the connection limit bounds).
    pub fn connection_count(&self) -> usize {
        self.connecting + self.ready + self.draining
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.cx_active = (self.ready + self.draining) as u64;
        s.cx_connecting = self.connecting as u64;
        s.cx_draining = self.draining as u64;
        s.cx_warm_target = self.warm_target as u64;
        s.cx_idle = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Connecting && c.leases == 0)
            .count() as u64;
        s.rq_active = self.rq_active as u64;
        s.rq_pending = self.waiters.len() as u64;
        s
    }

    /// Checks the core's internal consistency; O(connections + waiters).
    /// Used by the model test and the fuzzer after every operation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut connecting, mut ready, mut draining, mut listed, mut leases) = (0, 0, 0, 0, 0);
        for (id, c) in self.conns.iter() {
            match c.phase {
                Phase::Connecting => connecting += 1,
                Phase::Ready => ready += 1,
                Phase::Draining => draining += 1,
            }
            if c.is_listed() != c.has_free_slot() {
                return Err(format!(
                    "{id:?}: listed={} but phase={:?} leases={} slots={}",
                    c.is_listed(),
                    c.phase,
                    c.leases,
                    c.slots
                ));
            }
            if c.phase == Phase::Connecting && (c.leases > 0 || c.handle.is_some()) {
                return Err(format!("{id:?}: connecting with leases or a handle"));
            }
            if c.phase == Phase::Draining && c.leases == 0 {
                return Err(format!("{id:?}: draining with no leases was not closed"));
            }
            listed += usize::from(c.is_listed());
            leases += c.leases;
        }
        if (connecting, ready, draining) != (self.connecting, self.ready, self.draining) {
            return Err(format!(
                "phase gauges ({}, {}, {}) != counted ({connecting}, {ready}, {draining})",
                self.connecting, self.ready, self.draining
            ));
        }
        if self.reserved > self.connecting {
            return Err(format!(
                "{} reserved attempts > {} connecting",
                self.reserved, self.connecting
            ));
        }
        if self.conns.listed_count_walked() != listed {
            return Err("free list length does not match listed connections".into());
        }
        if connecting + ready + draining > self.config.max_connections {
            return Err(format!(
                "{} connections exceed the limit {}",
                connecting + ready + draining,
                self.config.max_connections
            ));
        }
        if leases > self.rq_active {
            return Err(format!(
                "{leases} leases on connections > rq_active {}",
                self.rq_active
            ));
        }
        if !self.waiters.is_empty() && listed > 0 {
            return Err("a request waits while a connection has a free slot".into());
        }
        if self.waiters.len() > self.config.max_pending {
            return Err("pending queue exceeds max_pending".into());
        }
        if !self.waiters.is_sorted_by_id() {
            return Err("waiter queue is not FIFO".into());
        }
        if self.shut_down && (ready > 0 || !self.waiters.is_empty()) {
            return Err("shut down but still lending or queueing".into());
        }
        Ok(())
    }

    // ---- internals ----

    /// Lends one slot. `handshake` is true when the request waited for this
    /// connection to open: it paid the handshake, so it is not "reused".
    fn grant(&mut self, id: ConnId, now: Instant, handshake: bool) -> Grant {
        let conn = self
            .conns
            .get_mut(id)
            .expect("granting on a listed connection");
        debug_assert!(conn.has_free_slot());
        let idle_for = if conn.leases == 0 {
            now.saturating_duration_since(conn.touched)
        } else {
            Duration::ZERO
        };
        let reused = !handshake;
        conn.leases += 1;
        conn.served += 1;
        conn.touched = now;
        let used_up = conn.served_limit.is_some_and(|max| conn.served >= max);
        let still_free = conn.has_free_slot();
        self.rq_active += 1;
        if reused {
            self.stats.rq_reused += 1;
        }
        if used_up {
            // This is its last request: no new leases, close after this one.
            self.retire(id, now, RetireReason::MaxRequests);
        } else if still_free {
            self.conns.push_front(id);
        } else {
            self.conns.unlink(id);
        }
        Grant {
            conn: id,
            reused,
            idle_for: if reused { idle_for } else { Duration::ZERO },
            at: now,
        }
    }

    /// A ready connection has (maybe) a free slot: serve waiters, then list it.
    fn offer(&mut self, id: ConnId, now: Instant) {
        self.offer_with(id, now, false);
    }

    /// Serves waiters from a connection with free slots, then lists it.
    /// `handshake`: the connection has just opened for these waiters.
    fn offer_with(&mut self, id: ConnId, now: Instant, handshake: bool) {
        self.serve_waiters(id, now, handshake);
        match self.conns.get(id) {
            Some(c) if c.has_free_slot() => self.conns.push_front(id),
            Some(_) => self.conns.unlink(id),
            None => {}
        }
    }

    fn serve_waiters(&mut self, id: ConnId, now: Instant, handshake: bool) {
        while self.conns.get(id).is_some_and(|c| c.has_free_slot()) {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            let grant = self.grant(id, now, handshake);
            self.actions.push_back(Action::Wake {
                waiter: w.payload,
                grant,
            });
        }
    }

    fn fail_timeout(&mut self, w: Waiter<W>, now: Instant) {
        self.stats.rq_pending_timeout += 1;
        self.actions.push_back(Action::Fail {
            waiter: w.payload,
            reason: WaitFailure::Timeout {
                waited: now.saturating_duration_since(w.enqueued),
            },
        });
    }

    fn close_conn(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        self.remove_conn(id, reason);
        self.start_connects(now);
    }

    /// Closes a connection without planning replacements (the caller does,
    /// once its own bookkeeping is done).
    fn remove_conn(&mut self, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        match conn.phase {
            Phase::Connecting => self.connecting -= 1,
            Phase::Ready => {
                self.ready -= 1;
                self.ready_slots -= conn.slots;
            }
            Phase::Draining => self.draining -= 1,
        }
        self.stats.cx_destroy.count(reason);
        self.actions.push_back(Action::Close {
            conn: id,
            reason,
            handle: conn.handle,
        });
    }

    /// Starts connects while the queue wants more slots than the attempts in
    /// flight will bring, up to the connection limit. With
    /// `open_more_when_saturated` off, a new connection is opened only when
    /// none is ready (the RFC 9113 "one connection per origin" reading).
    fn start_connects(&mut self, now: Instant) {
        if self.shut_down {
            return;
        }
        let per_conn = self.expected_slots.max(1);
        let limit = self.config.max_connections.min(self.max_target.max(1));
        let may_open = |pool: &Self| {
            pool.connection_count() < limit
                && (pool.config.open_more_when_saturated || pool.ready + pool.connecting == 0)
        };
        // Demand: waiters beyond what the attempts in flight will bring.
        while self.waiters.len() > self.coming().saturating_mul(per_conn) && may_open(self) {
            if !self.begin_connect(now) {
                return;
            }
        }
        // Preconnect: capacity for `ratio` times what is in use or waiting.
        if self.config.preconnect_ratio > 1.0 {
            let want = ((self.rq_active + self.waiters.len()) as f64 * self.config.preconnect_ratio)
                .ceil() as usize;
            while want
                > self
                    .ready_slots
                    .saturating_add(self.coming().saturating_mul(per_conn))
                && may_open(self)
            {
                if !self.begin_connect(now) {
                    return;
                }
            }
        }
        // Warming: the warm level, a few connects at a time.
        while self.ready + self.coming() < self.warm_target
            && self.coming() < self.config.warm_concurrency
            && may_open(self)
        {
            if !self.begin_connect(now) {
                return;
            }
        }
    }

    /// Attempts in flight that will serve the queue (not reserved ones).
    fn coming(&self) -> usize {
        self.connecting - self.reserved
    }

    /// Starts one connect if the circuit allows; false if it does not.
    fn begin_connect(&mut self, now: Instant) -> bool {
        match self.circuit {
            Circuit::Closed => {}
            // The backoff is over: this connect is the probe. (Requests move
            // the circuit to half-open when they arrive; warming gets here
            // with no request at all.)
            Circuit::HalfOpen { probing: false } => {
                self.circuit = Circuit::HalfOpen { probing: true }
            }
            Circuit::Open { until } if now >= until => {
                self.circuit = Circuit::HalfOpen { probing: true }
            }
            Circuit::HalfOpen { probing: true } | Circuit::Open { .. } => return false,
        }
        let id = self.conns.insert(Conn::connecting(now));
        self.connecting += 1;
        self.actions.push_back(Action::Connect(id));
        true
    }

    /// Opens the circuit after a failed connect: no connects for a jittered,
    /// growing delay; waiters fail now with the time to retry.
    fn open_circuit(&mut self, now: Instant) {
        let delay = self
            .config
            .backoff
            .delay(self.connect_failures, &mut self.rng);
        self.circuit = Circuit::Open {
            until: later(now, delay),
        };
        self.stats.cx_circuit_opened += 1;
        let waiters: Vec<Waiter<W>> = self.waiters.drain().collect();
        for w in waiters {
            self.stats.rq_pending_failure += 1;
            self.actions.push_back(Action::Fail {
                waiter: w.payload,
                reason: WaitFailure::CircuitOpen { retry_after: delay },
            });
        }
    }
}
