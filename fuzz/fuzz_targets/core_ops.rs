//! The sans-IO core as a model, driven by arbitrary operation sequences.
//!
//! Mirrors tests/core_model.rs (same operations, same reference
//! bookkeeping built only from the actions the core emits) and adds a few
//! the proptest does not drive: enqueue without try_checkout, closing a
//! connect attempt, stale connection ids, health checks, load samples,
//! advancing exactly to `next_timeout()`, and `force_close_all`.
//!
//! After every step: `check_invariants()`, and the model's view of leases,
//! waiters, attempts and open connections equals the core's gauges. At each
//! grant: the lease is on a ready connection (or one that this very grant
//! retired for max requests) and leases ≤ slots. Every waiter is resolved
//! exactly once. Teardown (shutdown, release everything, answer every
//! attempt) leaves every gauge at zero.
//!
//! Configurations cover the same ground as the proptest with wider ranges;
//! durations stay within hours so that this target explores the state
//! machine (the `config` target takes extreme values). Invalid ones are
//! skipped.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use edgepool::core::{
    Action, BackoffConfig, CloseReason, ConnId, CoreConfig, OriginPool, Phase, RecycleConfig,
    RetireReason, WaiterId,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct RawConfig {
    max_connections: u8,
    max_pending: u8,
    idle_ms: Option<u16>,
    open_more: bool,
    expected_slots: u8,
    max_age_ms: Option<u16>,
    jitter: u8,
    max_requests: Option<u8>,
    max_errors: Option<u8>,
    margin_ms: u8,
    base_ms: u16,
    cap_factor: u8,
    failure_threshold: u8,
    ratio: u8,
    warm_concurrency: u8,
    seed: u64,
}

impl RawConfig {
    /// Mostly valid (zeros are mapped away from the fields that reject
    /// them); the rare invalid one (idle or max age of 0 ms) is skipped.
    fn config(&self) -> CoreConfig {
        let base_ms = 1 + u64::from(self.base_ms % 500);
        CoreConfig {
            max_connections: 1 + usize::from(self.max_connections % 6),
            max_pending: usize::from(self.max_pending % 10),
            idle_timeout: self.idle_ms.map(|ms| Duration::from_millis(u64::from(ms % 10_000))),
            open_more_when_saturated: self.open_more,
            expected_slots: 1 + usize::from(self.expected_slots % 4),
            recycle: RecycleConfig {
                max_age: self
                    .max_age_ms
                    .map(|ms| Duration::from_millis(u64::from(ms % 20_000))),
                max_age_jitter: f64::from(self.jitter % 100) / 100.0,
                max_requests: self.max_requests.map(|n| 1 + u64::from(n % 7)),
                max_consecutive_errors: self.max_errors.map(|n| 1 + u32::from(n % 5)),
                keep_alive_margin: Duration::from_millis(u64::from(self.margin_ms)),
            },
            backoff: BackoffConfig {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(base_ms * (1 + u64::from(self.cap_factor % 16))),
                failure_threshold: 1 + u32::from(self.failure_threshold % 5),
            },
            preconnect_ratio: [1.0, 1.0, 1.25, 1.5, 2.0, 3.0][usize::from(self.ratio % 6)],
            warm_concurrency: 1 + usize::from(self.warm_concurrency % 4),
            seed: self.seed,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum Op {
    /// try_checkout, else enqueue (the driver's path).
    Checkout { deadline_ms: u8 },
    /// enqueue without try_checkout first.
    Enqueue { deadline_ms: u8 },
    Release { pick: u8, reusable: bool },
    ReleaseFailed { pick: u8 },
    ConnectOk { pick: u8, slots: u8 },
    ConnectFail { pick: u8 },
    /// close() on an attempt still connecting (counts as a failed connect).
    CloseAttempt { pick: u8 },
    Reserve,
    PeerClose { pick: u8 },
    Drain { pick: u8 },
    Retire { pick: u8 },
    SetSlots { pick: u8, slots: u8 },
    KeepAliveHint { pick: u8, timeout_ms: Option<u16>, max: Option<u8> },
    SetTargets { warm: u8, max: u8 },
    Advance { ms: u16 },
    /// Advance exactly to next_timeout(), if any.
    AdvanceToNext,
    ExpireWaiter { pick: u8 },
    Cancel { pick: u8 },
    /// Operations on a connection the core has closed: all no-ops.
    Stale { pick: u8, what: u8 },
    /// Health check pass over idle connections.
    HealthCheck { interval_ms: u16 },
    Latency { ms: u16 },
    /// End with force_close_all instead of shutdown.
    ForceCloseAll,
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: RawConfig,
    ops: Vec<Op>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

struct Model {
    core: OriginPool<u64, u64>,
    now: Instant,
    attempts: Vec<ConnId>,
    reserved: Vec<ConnId>,
    refused: u64,
    retired_max_requests: u64,
    open: HashSet<ConnId>,
    closed: Vec<ConnId>,
    leases: Vec<ConnId>,
    waiting: HashMap<u64, WaiterId>,
    resolved: HashSet<u64>,
    next_payload: u64,
    /// Handles the core gave back or closed, to catch one given twice.
    handles_back: HashSet<u64>,
}

impl Model {
    fn resolve(&mut self, payload: u64) {
        assert!(
            self.waiting.remove(&payload).is_some(),
            "waiter {payload} resolved but not waiting"
        );
        assert!(self.resolved.insert(payload), "waiter {payload} resolved twice");
    }

    fn take_lease(&mut self, conn: ConnId) {
        let phase = self.core.phase(conn);
        let last_allowed = self.core.stats().cx_retired.max_requests > self.retired_max_requests;
        assert!(
            phase == Some(Phase::Ready) || (phase == Some(Phase::Draining) && last_allowed),
            "lease on {conn:?} which is {phase:?}"
        );
        let (leases, slots) = self
            .core
            .load(conn)
            .unwrap_or_else(|| panic!("lease granted on {conn:?}, which is gone"));
        assert!(leases <= slots, "{conn:?}: {leases} leases > {slots} slots");
        self.leases.push(conn);
    }

    fn drain_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect(id) => {
                    assert!(
                        !self.attempts.contains(&id) && !self.open.contains(&id),
                        "connect {id:?} asked twice"
                    );
                    self.attempts.push(id)
                }
                Action::Wake { waiter, grant } => {
                    assert_eq!(grant.at, self.now, "grant stamped at another time");
                    self.resolve(waiter);
                    self.take_lease(grant.conn);
                }
                Action::Fail { waiter, .. } => self.resolve(waiter),
                Action::Close { conn, handle, .. } => {
                    assert!(self.open.remove(&conn), "closed {conn:?} that was not open");
                    let h = handle.expect("an open connection closed without its handle");
                    assert_eq!(h, conn.as_u64(), "closed with another connection's handle");
                    assert!(self.handles_back.insert(h), "handle {h} closed twice");
                    self.closed.push(conn);
                }
            }
        }
    }

    fn pick_attempt(&mut self, pick: u8) -> Option<(ConnId, bool)> {
        let all = self.attempts.len() + self.reserved.len();
        if all == 0 {
            return None;
        }
        let i = usize::from(pick) % all;
        Some(if i < self.attempts.len() {
            (self.attempts.swap_remove(i), false)
        } else {
            (self.reserved.swap_remove(i - self.attempts.len()), true)
        })
    }

    fn queue(&mut self, deadline_ms: u8, try_first: bool) {
        let now = self.now;
        if try_first {
            if let Some(grant) = self.core.try_checkout(now) {
                assert!(grant.reused, "try_checkout lends only open connections");
                self.take_lease(grant.conn);
                return;
            }
        }
        let payload = self.next_payload;
        self.next_payload += 1;
        let deadline = now + Duration::from_millis(u64::from(deadline_ms));
        match self.core.enqueue(now, deadline, payload) {
            Ok(id) => {
                self.waiting.insert(payload, id);
            }
            Err(rejected) => {
                assert_eq!(rejected.waiter, payload, "the refused waiter is handed back");
                self.refused += 1;
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        self.retired_max_requests = self.core.stats().cx_retired.max_requests;
        match *op {
            Op::Checkout { deadline_ms } => self.queue(deadline_ms, true),
            Op::Enqueue { deadline_ms } => self.queue(deadline_ms, false),
            Op::Release { pick, reusable } => {
                if !self.leases.is_empty() {
                    let conn = self.leases.swap_remove(usize::from(pick) % self.leases.len());
                    self.core.release(conn, now, reusable);
                }
            }
            Op::ReleaseFailed { pick } => {
                if !self.leases.is_empty() {
                    let conn = self.leases.swap_remove(usize::from(pick) % self.leases.len());
                    self.core.release_failed(conn, now);
                }
            }
            Op::ConnectOk { pick, slots } => {
                if let Some((id, reserved)) = self.pick_attempt(pick) {
                    let slots = usize::from(slots % 5);
                    match self.core.connected(id, now, slots, id.as_u64()) {
                        Ok(grant) => {
                            self.open.insert(id);
                            assert_eq!(
                                grant.is_some(),
                                reserved && slots > 0,
                                "only a reserved attempt hands its slot back"
                            );
                            if let Some(grant) = grant {
                                assert_eq!(grant.conn, id);
                                assert!(!grant.reused, "a new connection is not reused");
                                self.take_lease(grant.conn);
                            }
                        }
                        Err(_) => panic!("connected() refused a live attempt {id:?}"),
                    }
                }
            }
            Op::ConnectFail { pick } => {
                if let Some((id, _)) = self.pick_attempt(pick) {
                    self.core.connect_failed(id, now);
                    assert_eq!(self.core.phase(id), None, "failed attempt still there");
                    self.closed.push(id);
                }
            }
            Op::CloseAttempt { pick } => {
                if let Some((id, _)) = self.pick_attempt(pick) {
                    self.core.close(id, now, CloseReason::PeerClosed);
                    assert_eq!(self.core.phase(id), None, "closed attempt still there");
                    self.closed.push(id);
                }
            }
            Op::Reserve => {
                if let Some(id) = self.core.reserve_connect(now) {
                    assert_eq!(self.core.phase(id), Some(Phase::Connecting));
                    self.reserved.push(id);
                }
            }
            Op::PeerClose { pick } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.close(id, now, CloseReason::PeerClosed);
                }
            }
            Op::Drain { pick } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.drain(id, now);
                    assert_ne!(self.core.phase(id), Some(Phase::Ready), "drained but ready");
                }
            }
            Op::Retire { pick } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.retire(id, now, RetireReason::Application);
                    assert_ne!(self.core.phase(id), Some(Phase::Ready), "retired but ready");
                }
            }
            Op::SetSlots { pick, slots } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.set_slots(id, now, usize::from(slots % 5));
                }
            }
            Op::KeepAliveHint {
                pick,
                timeout_ms,
                max,
            } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.keep_alive_hint(
                        id,
                        now,
                        timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
                        max.map(|m| u64::from(m % 6)),
                    );
                }
            }
            Op::SetTargets { warm, max } => {
                self.core
                    .set_targets(now, usize::from(warm % 8), usize::from(max % 10));
                let (w, m) = self.core.targets();
                assert!(w <= m, "warm {w} above max {m}");
                assert!(m <= self.core.config().max_connections);
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms % 2000));
                self.core.handle_timeout(self.now);
            }
            Op::AdvanceToNext => {
                if let Some(t) = self.core.next_timeout() {
                    if t > self.now {
                        self.now = t;
                    }
                    self.core.handle_timeout(self.now);
                }
            }
            Op::ExpireWaiter { pick } => {
                let mut ids: Vec<(WaiterId, u64)> =
                    self.waiting.iter().map(|(p, w)| (*w, *p)).collect();
                ids.sort();
                if !ids.is_empty() {
                    let (id, _) = ids[usize::from(pick) % ids.len()];
                    self.core.expire(id, now);
                }
            }
            Op::Cancel { pick } => {
                let mut all: Vec<(u64, WaiterId)> =
                    self.waiting.iter().map(|(p, w)| (*p, *w)).collect();
                all.sort();
                if !all.is_empty() {
                    let (payload, id) = all[usize::from(pick) % all.len()];
                    assert_eq!(self.core.cancel(id), Some(payload));
                    self.resolve(payload);
                    assert_eq!(self.core.cancel(id), None, "cancelled twice");
                }
            }
            Op::Stale { pick, what } => {
                if !self.closed.is_empty() {
                    let id = self.closed[usize::from(pick) % self.closed.len()];
                    let before = self.core.stats();
                    assert_eq!(self.core.phase(id), None, "{id:?} closed but has a phase");
                    assert!(self.core.conn(id).is_none());
                    match what % 8 {
                        0 => assert_eq!(
                            self.core.connected(id, now, 1, 999),
                            Err(999),
                            "connected() on a stale id must hand the handle back"
                        ),
                        1 => self.core.connect_failed(id, now),
                        2 => self.core.close(id, now, CloseReason::PeerClosed),
                        3 => self.core.drain(id, now),
                        4 => self.core.retire(id, now, RetireReason::Application),
                        5 => self.core.set_slots(id, now, 3),
                        6 => self.core.keep_alive_hint(id, now, Some(Duration::ZERO), Some(0)),
                        _ => self.core.checked(id, now),
                    }
                    let after = self.core.stats();
                    assert_eq!(before, after, "an operation on stale {id:?} changed the stats");
                }
            }
            Op::HealthCheck { interval_ms } => {
                let interval = Duration::from_millis(u64::from(interval_ms));
                for id in self.core.due_for_check(now, interval) {
                    assert_eq!(self.core.phase(id), Some(Phase::Ready));
                    assert_eq!(self.core.load(id).map(|l| l.0), Some(0), "checking a busy one");
                    self.core.checked(id, now);
                }
                assert!(self.core.due_for_check(now, interval.max(Duration::from_nanos(1))).is_empty());
            }
            Op::Latency { ms } => {
                self.core
                    .observe_latency(Duration::from_millis(u64::from(ms)));
                let s = self.core.load_sample(now);
                assert!(s.slots_per_connection >= 1);
                assert_eq!(s.in_flight, self.leases.len() + self.waiting.len());
            }
            Op::ForceCloseAll => {}
        }
        self.drain_actions();
        self.check();
    }

    fn check(&self) {
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant broken: {e}");
        }
        let s = self.core.stats();
        assert!(self.core.connection_count() <= self.core.config().max_connections);
        assert_eq!(s.rq_active, self.leases.len() as u64, "rq_active");
        assert_eq!(s.rq_pending, self.waiting.len() as u64, "rq_pending");
        assert_eq!(
            s.cx_connecting,
            (self.attempts.len() + self.reserved.len()) as u64,
            "cx_connecting"
        );
        assert_eq!(s.cx_active, self.open.len() as u64, "cx_active");
        assert!(s.cx_idle <= s.cx_active);
        assert!(s.cx_draining <= s.cx_active);
        assert_eq!(self.core.ready_count() as u64, s.cx_active - s.cx_draining);
        assert_eq!(self.core.has_room(), self.waiting.len() < self.core.config().max_pending);
        for (id, _) in self.core.handles() {
            assert!(self.open.contains(&id), "{id:?} has a handle but is not open");
        }
    }

    fn teardown(&mut self, force: bool) {
        if force {
            self.core.force_close_all(self.now);
        } else {
            self.core.shutdown(self.now);
        }
        assert!(self.core.is_shut_down());
        self.drain_actions();
        self.check();
        // Nothing new is lent or queued.
        assert!(self.core.try_checkout(self.now).is_none());
        let payload = self.next_payload;
        self.next_payload += 1;
        match self.core.enqueue(self.now, self.now, payload) {
            Ok(_) => panic!("a shut down pool queued a request"),
            Err(r) => {
                assert_eq!(r.waiter, payload);
                self.refused += 1;
            }
        }
        assert!(self.core.reserve_connect(self.now).is_none());
        while let Some(conn) = self.leases.pop() {
            self.core.release(conn, self.now, true);
            self.drain_actions();
            self.check();
        }
        let attempts: Vec<ConnId> = self.attempts.drain(..).chain(self.reserved.drain(..)).collect();
        for id in attempts {
            assert!(
                self.core.connected(id, self.now, 1, 0).is_err(),
                "shut down pool accepted a connection"
            );
            self.drain_actions();
        }
        self.check();
        assert!(self.waiting.is_empty(), "unresolved waiters: {:?}", self.waiting);
        assert_eq!(self.resolved.len() as u64, self.next_payload - self.refused);
        let s = self.core.stats();
        assert!(s.gauges_are_zero(), "gauges not zero after teardown: {s:?}");
        assert!(self.core.is_empty());
        assert!(self.open.is_empty(), "still open: {:?}", self.open);
    }
}

fn pick_from(set: &HashSet<ConnId>, pick: u8) -> Option<ConnId> {
    let mut ids: Vec<ConnId> = set.iter().copied().collect();
    ids.sort_by_key(|c| c.as_u64());
    (!ids.is_empty()).then(|| ids[usize::from(pick) % ids.len()])
}

fuzz_target!(|input: Input| {
    let config = input.config.config();
    if config.validate().is_err() {
        return;
    }
    let mut model = Model {
        core: OriginPool::new(config).expect("valid config rejected"),
        now: base(),
        attempts: Vec::new(),
        reserved: Vec::new(),
        refused: 0,
        retired_max_requests: 0,
        open: HashSet::new(),
        closed: Vec::new(),
        leases: Vec::new(),
        waiting: HashMap::new(),
        resolved: HashSet::new(),
        next_payload: 0,
        handles_back: HashSet::new(),
    };
    let mut force = false;
    for op in input.ops.iter().take(400) {
        if matches!(op, Op::ForceCloseAll) {
            force = true;
            break;
        }
        model.apply(op);
    }
    model.teardown(force);
});
