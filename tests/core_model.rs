//! Model test of the sans-IO core: random operation sequences, with the
//! core's invariants and a reference model checked after every step.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use edgepool::core::{
    Action, BackoffConfig, CloseReason, ConnId, CoreConfig, OriginPool, Phase, RecycleConfig,
    RetireReason, WaiterId,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    SetTargets {
        warm: usize,
        max: usize,
    },
    Checkout {
        deadline_ms: u64,
    },
    Release {
        pick: usize,
        reusable: bool,
    },
    ConnectOk {
        pick: usize,
        slots: usize,
    },
    ConnectFail {
        pick: usize,
    },
    PeerClose {
        pick: usize,
    },
    Drain {
        pick: usize,
    },
    SetSlots {
        pick: usize,
        slots: usize,
    },
    Advance {
        ms: u64,
    },
    ExpireWaiter {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Reserve,
    ReleaseFailed {
        pick: usize,
    },
    KeepAliveHint {
        pick: usize,
        timeout_ms: Option<u64>,
        max: Option<u64>,
    },
    Retire {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..200).prop_map(|deadline_ms| Op::Checkout { deadline_ms }),
        5 => (any::<usize>(), prop::bool::weighted(0.9))
            .prop_map(|(pick, reusable)| Op::Release { pick, reusable }),
        3 => (any::<usize>(), 0usize..4).prop_map(|(pick, slots)| Op::ConnectOk { pick, slots }),
        1 => any::<usize>().prop_map(|pick| Op::ConnectFail { pick }),
        1 => any::<usize>().prop_map(|pick| Op::PeerClose { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Drain { pick }),
        1 => (any::<usize>(), 0usize..4).prop_map(|(pick, slots)| Op::SetSlots { pick, slots }),
        2 => (0u64..120).prop_map(|ms| Op::Advance { ms }),
        1 => any::<usize>().prop_map(|pick| Op::ExpireWaiter { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => Just(Op::Reserve),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseFailed { pick }),
        1 => (any::<usize>(), prop::option::of(0u64..300), prop::option::of(0u64..4))
            .prop_map(|(pick, timeout_ms, max)| Op::KeepAliveHint { pick, timeout_ms, max }),
        1 => any::<usize>().prop_map(|pick| Op::Retire { pick }),
        1 => (0usize..5, 0usize..6).prop_map(|(warm, max)| Op::SetTargets { warm, max }),
    ]
}

fn config() -> impl Strategy<Value = CoreConfig> {
    let limits = (
        1usize..5,
        1usize..6,
        prop::option::of(1u64..150),
        any::<bool>(),
        1usize..4,
    );
    let recycle = (
        prop::option::of(1u64..400),
        prop::option::of(1u64..5),
        prop::option::of(1u32..4),
    );
    let backoff = (1u64..50, 1u32..4, any::<u64>());
    let growth = (prop::sample::select(vec![1.0f64, 1.5, 3.0]), 1usize..3);
    (limits, recycle, backoff, growth).prop_map(
        |(
            (max_connections, max_pending, idle_ms, open_more, expected_slots),
            (max_age_ms, max_requests, max_errors),
            (base_ms, failure_threshold, seed),
            (preconnect_ratio, warm_concurrency),
        )| CoreConfig {
            preconnect_ratio,
            warm_concurrency,
            max_connections,
            max_pending,
            idle_timeout: idle_ms.map(Duration::from_millis),
            open_more_when_saturated: open_more,
            expected_slots,
            recycle: RecycleConfig {
                max_age: max_age_ms.map(Duration::from_millis),
                max_requests,
                max_consecutive_errors: max_errors,
                keep_alive_margin: Duration::from_millis(20),
                ..RecycleConfig::default()
            },
            backoff: BackoffConfig {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(base_ms * 8),
                failure_threshold,
            },
            seed,
        },
    )
}

/// What the test believes, built only from the actions the core emitted.
struct Model {
    core: OriginPool<u64, u64>,
    now: Instant,
    /// Connect attempts the core asked for and we have not answered.
    attempts: Vec<ConnId>,
    /// Reserved connect attempts (for a retrying request) not yet answered.
    reserved: Vec<ConnId>,
    /// Requests the core refused at once (full queue, open circuit).
    refused: u64,
    /// `cx_retired.max_requests` before the current step.
    retired_max_requests: u64,
    /// Connections we reported open and the core has not closed.
    open: HashSet<ConnId>,
    /// Leases we hold.
    leases: Vec<ConnId>,
    /// Waiters queued and not yet resolved: payload -> core id.
    waiting: HashMap<u64, WaiterId>,
    /// Payloads resolved, to catch a waiter resolved twice.
    resolved: HashSet<u64>,
    next_payload: u64,
}

impl Model {
    fn new(config: CoreConfig) -> Self {
        Model {
            core: OriginPool::new(config).unwrap(),
            now: Instant::now(),
            attempts: Vec::new(),
            reserved: Vec::new(),
            refused: 0,
            retired_max_requests: 0,
            open: HashSet::new(),
            leases: Vec::new(),
            waiting: HashMap::new(),
            resolved: HashSet::new(),
            next_payload: 0,
        }
    }

    fn resolve(&mut self, payload: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            self.waiting.remove(&payload).is_some(),
            "waiter {payload} resolved but not waiting"
        );
        prop_assert!(
            self.resolved.insert(payload),
            "waiter {payload} resolved twice"
        );
        Ok(())
    }

    fn take_lease(&mut self, conn: ConnId) -> Result<(), TestCaseError> {
        // A lease is only ever granted on a ready connection. The one way a
        // connection is draining right after a grant: that grant was its
        // last allowed request (max requests), retired in the same step.
        let phase = self.core.phase(conn);
        let last_allowed = self.core.stats().cx_retired.max_requests > self.retired_max_requests;
        prop_assert!(
            phase == Some(Phase::Ready) || (phase == Some(Phase::Draining) && last_allowed),
            "lease on a connection that is {:?}",
            phase
        );
        let (leases, slots) = self.core.load(conn).unwrap();
        prop_assert!(leases <= slots, "{} leases > {} slots", leases, slots);
        self.leases.push(conn);
        Ok(())
    }

    fn drain_actions(&mut self) -> Result<(), TestCaseError> {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect(id) => self.attempts.push(id),
                Action::Wake { waiter, grant } => {
                    self.resolve(waiter)?;
                    self.take_lease(grant.conn)?;
                }
                Action::Fail { waiter, .. } => self.resolve(waiter)?,
                Action::Close { conn, handle, .. } => {
                    prop_assert!(self.open.remove(&conn), "closed {conn:?} that was not open");
                    prop_assert!(handle.is_some());
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        self.retired_max_requests = self.core.stats().cx_retired.max_requests;
        match *op {
            Op::Checkout { deadline_ms } => {
                if let Some(grant) = self.core.try_checkout(now) {
                    self.take_lease(grant.conn)?;
                } else {
                    let payload = self.next_payload;
                    self.next_payload += 1;
                    let deadline = now + Duration::from_millis(deadline_ms);
                    match self.core.enqueue(now, deadline, payload) {
                        Ok(id) => {
                            self.waiting.insert(payload, id);
                        }
                        Err(rejected) => {
                            prop_assert_eq!(
                                rejected.waiter,
                                payload,
                                "the refused waiter is handed back"
                            );
                            self.refused += 1;
                        }
                    }
                }
            }
            Op::Release { pick, reusable } => {
                if !self.leases.is_empty() {
                    let conn = self.leases.swap_remove(pick % self.leases.len());
                    self.core.release(conn, now, reusable);
                }
            }
            Op::ConnectOk { pick, slots } => {
                let all = self.attempts.len() + self.reserved.len();
                if all > 0 {
                    let i = pick % all;
                    let (id, reserved) = if i < self.attempts.len() {
                        (self.attempts.swap_remove(i), false)
                    } else {
                        (self.reserved.swap_remove(i - self.attempts.len()), true)
                    };
                    match self.core.connected(id, now, slots, id.as_u64()) {
                        Ok(grant) => {
                            self.open.insert(id);
                            prop_assert_eq!(
                                grant.is_some(),
                                reserved && slots > 0,
                                "only a reserved attempt hands its slot back"
                            );
                            if let Some(grant) = grant {
                                prop_assert_eq!(grant.conn, id);
                                self.take_lease(grant.conn)?;
                            }
                        }
                        Err(_) => prop_assert!(false, "connected() refused a live attempt"),
                    }
                }
            }
            Op::ConnectFail { pick } => {
                let all = self.attempts.len() + self.reserved.len();
                if all > 0 {
                    let i = pick % all;
                    let id = if i < self.attempts.len() {
                        self.attempts.swap_remove(i)
                    } else {
                        self.reserved.swap_remove(i - self.attempts.len())
                    };
                    self.core.connect_failed(id, now);
                }
            }
            Op::Reserve => {
                if let Some(id) = self.core.reserve_connect(now) {
                    self.reserved.push(id);
                }
            }
            Op::ReleaseFailed { pick } => {
                if !self.leases.is_empty() {
                    let conn = self.leases.swap_remove(pick % self.leases.len());
                    self.core.release_failed(conn, now);
                }
            }
            Op::KeepAliveHint {
                pick,
                timeout_ms,
                max,
            } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core
                        .keep_alive_hint(id, now, timeout_ms.map(Duration::from_millis), max);
                }
            }
            Op::SetTargets { warm, max } => {
                self.core.set_targets(now, warm, max);
                let (w, m) = self.core.targets();
                prop_assert!(w <= m, "warm {w} above max {m}");
            }
            Op::Retire { pick } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.retire(id, now, RetireReason::Application);
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
                }
            }
            Op::SetSlots { pick, slots } => {
                if let Some(id) = pick_from(&self.open, pick) {
                    self.core.set_slots(id, now, slots);
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(ms);
                self.core.handle_timeout(self.now);
            }
            Op::ExpireWaiter { pick } => {
                let mut ids: Vec<WaiterId> = self.waiting.values().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    self.core.expire(ids[pick % ids.len()], now);
                }
            }
            Op::Cancel { pick } => {
                let mut all: Vec<(u64, WaiterId)> =
                    self.waiting.iter().map(|(p, w)| (*p, *w)).collect();
                all.sort();
                if !all.is_empty() {
                    let (payload, id) = all[pick % all.len()];
                    prop_assert_eq!(self.core.cancel(id), Some(payload));
                    self.resolve(payload)?;
                }
            }
        }
        self.drain_actions()?;
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.core.check_invariants().map_err(TestCaseError::fail)?;
        let s = self.core.stats();
        prop_assert!(self.core.connection_count() <= self.core.config().max_connections);
        prop_assert_eq!(s.rq_active, self.leases.len() as u64);
        prop_assert_eq!(s.rq_pending, self.waiting.len() as u64);
        prop_assert_eq!(
            s.cx_connecting,
            (self.attempts.len() + self.reserved.len()) as u64
        );
        prop_assert_eq!(s.cx_active, self.open.len() as u64);
        Ok(())
    }

    /// Releases every lease, answers every attempt, shuts down: every gauge
    /// must be zero and every waiter resolved exactly once.
    fn teardown(&mut self) -> Result<(), TestCaseError> {
        self.core.shutdown(self.now);
        self.drain_actions()?;
        for conn in std::mem::take(&mut self.leases) {
            self.core.release(conn, self.now, true);
            self.drain_actions()?;
        }
        let attempts: Vec<ConnId> = self
            .attempts
            .drain(..)
            .chain(self.reserved.drain(..))
            .collect();
        for id in attempts {
            prop_assert!(
                self.core.connected(id, self.now, 1, 0).is_err(),
                "shut down pool accepted a connection"
            );
            self.drain_actions()?;
        }
        self.check()?;
        prop_assert!(
            self.waiting.is_empty(),
            "unresolved waiters: {:?}",
            self.waiting
        );
        prop_assert_eq!(self.resolved.len() as u64, self.next_payload - self.refused);
        let s = self.core.stats();
        prop_assert!(
            s.gauges_are_zero(),
            "gauges not zero after teardown: {:?}",
            s
        );
        prop_assert!(self.core.is_empty());
        Ok(())
    }
}

fn pick_from(set: &HashSet<ConnId>, pick: usize) -> Option<ConnId> {
    let mut ids: Vec<ConnId> = set.iter().copied().collect();
    ids.sort_by_key(|c| c.as_u64());
    (!ids.is_empty()).then(|| ids[pick % ids.len()])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        max_shrink_iters: 10_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_keeps_its_invariants(config in config(), ops in prop::collection::vec(op(), 1..80)) {
        let mut model = Model::new(config);
        for op in &ops {
            model.apply(op)?;
        }
        model.teardown()?;
    }
}
