//! The state machine of one origin's pool.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::CoreConfig;
use super::conn_table::{Conn, ConnTable, Phase};
use super::counters::{CloseReason, Stats};
use super::ids::{ConnId, WaiterId};
use super::waiters::{Waiter, WaiterQueue};
use crate::Error;

/// One slot on one connection, granted to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The connection the slot is on.
    pub conn: ConnId,
    /// Whether the connection had carried a request before this one.
    pub reused: bool,
    /// How long the connection had been idle (no request on it) before this
    /// grant; zero when it was busy or new.
    pub idle_for: Duration,
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
    /// The pool was shut down.
    Shutdown,
}

/// Why a request could not even join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The pending queue is at `max_pending`.
    Overflow,
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
    ready: usize,
    draining: usize,
    /// Leases granted and not yet released, including those on connections
    /// that have since closed.
    rq_active: usize,
    shut_down: bool,
    stats: Stats,
}

impl<C, W> OriginPool<C, W> {
    /// Builds an empty pool, rejecting an invalid configuration.
    pub fn new(config: CoreConfig) -> Result<Self, Error> {
        config.validate()?;
        let expected_slots = config.expected_slots;
        Ok(OriginPool {
            config,
            conns: ConnTable::new(),
            waiters: WaiterQueue::new(),
            actions: VecDeque::new(),
            expected_slots,
            connecting: 0,
            ready: 0,
            draining: 0,
            rq_active: 0,
            shut_down: false,
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
        if self.shut_down || !self.waiters.is_empty() {
            return None;
        }
        let id = self.conns.head()?;
        self.stats.rq_total += 1;
        Some(self.grant(id, now))
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
        if self.shut_down {
            return Err(Rejected {
                reason: RejectReason::Shutdown,
                waiter,
            });
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
            self.serve_waiters(conn, now);
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
        match conn.phase {
            Phase::Ready => self.offer(id, now),
            Phase::Draining if conn.leases == 0 => self.close_conn(id, CloseReason::Drained, now),
            Phase::Draining | Phase::Connecting => {}
        }
    }

    /// A connect attempt succeeded. The connection starts lending its slots;
    /// waiters are served from it first. Returns the handle back if the
    /// attempt was abandoned meanwhile (closed, or the pool shut down): the
    /// driver then closes it.
    pub fn connected(
        &mut self,
        id: ConnId,
        now: Instant,
        slots: usize,
        handle: C,
    ) -> Result<(), C> {
        let shut_down = self.shut_down;
        let Some(conn) = self.conns.get_mut(id) else {
            return Err(handle);
        };
        if conn.phase != Phase::Connecting {
            return Err(handle);
        }
        self.connecting -= 1;
        if shut_down {
            self.conns.remove(id);
            return Err(handle);
        }
        conn.phase = Phase::Ready;
        conn.handle = Some(handle);
        conn.slots = slots;
        conn.opened_at = now;
        conn.touched = now;
        self.ready += 1;
        self.stats.cx_total += 1;
        if slots > 0 {
            self.expected_slots = slots;
        }
        self.offer(id, now);
        Ok(())
    }

    /// A connect attempt failed. Waiters that this attempt was to serve, and
    /// that no other attempt in flight covers, are failed at once rather than
    /// left to time out: an origin that refuses connections gives a quick
    /// error, not a hang. Other waiters may start new attempts.
    pub fn connect_failed(&mut self, id: ConnId, now: Instant) {
        match self.conns.get(id) {
            Some(c) if c.phase == Phase::Connecting => {}
            _ => return,
        }
        self.conns.remove(id);
        self.connecting -= 1;
        self.stats.cx_connect_fail += 1;
        let covered = self.connecting * self.expected_slots.max(1);
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
        self.start_connects(now);
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

    /// The connection takes no new requests (GOAWAY, recycling); it closes
    /// when its last lease is released.
    pub fn drain(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.phase != Phase::Ready {
            return;
        }
        conn.phase = Phase::Draining;
        let idle = conn.leases == 0;
        self.ready -= 1;
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
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        conn.slots = slots;
        if conn.phase != Phase::Ready {
            return;
        }
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

    /// Counts a request that was sent again on another connection.
    pub fn record_retry(&mut self) {
        self.stats.rq_retry += 1;
    }

    /// Fails waiters whose deadline has passed and closes connections idle
    /// longer than the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.waiters.take_expired(now, |w| expired.push(w));
        for w in expired {
            self.fail_timeout(w, now);
        }
        let Some(idle_timeout) = self.config.idle_timeout else {
            return;
        };
        let mut to_close = Vec::new();
        for (id, conn) in self.conns.iter_from_tail() {
            if conn.leases > 0 {
                continue;
            }
            if now.saturating_duration_since(conn.touched) < idle_timeout {
                break; // the rest were used more recently
            }
            to_close.push(id);
        }
        for id in to_close {
            self.close_conn(id, CloseReason::IdleTimeout, now);
        }
    }

    /// When [`handle_timeout`](OriginPool::handle_timeout) next has work: the
    /// earliest waiter deadline or idle expiry.
    pub fn next_timeout(&self) -> Option<Instant> {
        let idle = self.config.idle_timeout.and_then(|t| {
            self.conns
                .iter_from_tail()
                .find(|(_, c)| c.leases == 0)
                .map(|(_, c)| c.touched + t)
        });
        match (self.waiters.earliest_deadline(), idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stops lending: waiters fail, idle connections close, busy ones drain
    /// and close when their last lease is released, attempts in flight are
    /// closed when they report.
    pub fn shutdown(&mut self, now: Instant) {
        self.shut_down = true;
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

    fn grant(&mut self, id: ConnId, now: Instant) -> Grant {
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
        let reused = conn.served > 0;
        conn.leases += 1;
        conn.served += 1;
        conn.touched = now;
        let still_free = conn.has_free_slot();
        self.rq_active += 1;
        if reused {
            self.stats.rq_reused += 1;
        }
        if still_free {
            self.conns.push_front(id);
        } else {
            self.conns.unlink(id);
        }
        Grant {
            conn: id,
            reused,
            idle_for: if reused { idle_for } else { Duration::ZERO },
        }
    }

    /// A ready connection has (maybe) a free slot: serve waiters, then list it.
    fn offer(&mut self, id: ConnId, now: Instant) {
        self.serve_waiters(id, now);
        match self.conns.get(id) {
            Some(c) if c.has_free_slot() => self.conns.push_front(id),
            Some(_) => self.conns.unlink(id),
            None => {}
        }
    }

    fn serve_waiters(&mut self, id: ConnId, now: Instant) {
        while self.conns.get(id).is_some_and(|c| c.has_free_slot()) {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            let grant = self.grant(id, now);
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
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        match conn.phase {
            Phase::Connecting => self.connecting -= 1,
            Phase::Ready => self.ready -= 1,
            Phase::Draining => self.draining -= 1,
        }
        self.stats.cx_destroy.count(reason);
        self.actions.push_back(Action::Close {
            conn: id,
            reason,
            handle: conn.handle,
        });
        self.start_connects(now);
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
        while self.waiters.len() > self.connecting * per_conn
            && self.connection_count() < self.config.max_connections
            && (self.config.open_more_when_saturated || self.ready + self.connecting == 0)
        {
            let id = self.conns.insert(Conn::connecting(now));
            self.connecting += 1;
            self.actions.push_back(Action::Connect(id));
        }
    }
}
