//! Model test of the sans-IO core: random operation sequences, with the
//! core's invariants and a reference model checked after every step.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use edgepool::core::{Action, CloseReason, ConnId, CoreConfig, OriginPool, Phase, WaiterId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Checkout { deadline_ms: u64 },
    Release { pick: usize, reusable: bool },
    ConnectOk { pick: usize, slots: usize },
    ConnectFail { pick: usize },
    PeerClose { pick: usize },
    Drain { pick: usize },
    SetSlots { pick: usize, slots: usize },
    Advance { ms: u64 },
    ExpireWaiter { pick: usize },
    Cancel { pick: usize },
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
    ]
}

fn config() -> impl Strategy<Value = CoreConfig> {
    (
        1usize..5,
        0usize..6,
        prop::option::of(1u64..150),
        any::<bool>(),
        1usize..4,
    )
        .prop_map(
            |(max_connections, max_pending, idle_ms, open_more, expected_slots)| CoreConfig {
                max_connections,
                max_pending,
                idle_timeout: idle_ms.map(Duration::from_millis),
                open_more_when_saturated: open_more,
                expected_slots,
            },
        )
}

/// What the test believes, built only from the actions the core emitted.
struct Model {
    core: OriginPool<u64, u64>,
    now: Instant,
    /// Connect attempts the core asked for and we have not answered.
    attempts: Vec<ConnId>,
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
        prop_assert_eq!(
            self.core.phase(conn),
            Some(Phase::Ready),
            "lease on a connection that is not ready"
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
        match *op {
            Op::Checkout { deadline_ms } => {
                if let Some(grant) = self.core.try_checkout(now) {
                    self.take_lease(grant.conn)?;
                } else {
                    let payload = self.next_payload;
                    self.next_payload += 1;
                    let deadline = now + Duration::from_millis(deadline_ms);
                    if let Ok(id) = self.core.enqueue(now, deadline, payload) {
                        self.waiting.insert(payload, id);
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
                if !self.attempts.is_empty() {
                    let id = self.attempts.swap_remove(pick % self.attempts.len());
                    if self.core.connected(id, now, slots, id.as_u64()).is_ok() {
                        self.open.insert(id);
                    }
                }
            }
            Op::ConnectFail { pick } => {
                if !self.attempts.is_empty() {
                    let id = self.attempts.swap_remove(pick % self.attempts.len());
                    self.core.connect_failed(id, now);
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
        prop_assert_eq!(s.cx_connecting, self.attempts.len() as u64);
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
        for id in std::mem::take(&mut self.attempts) {
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
        prop_assert_eq!(
            self.resolved.len() as u64,
            self.next_payload - self.overflowed()
        );
        let s = self.core.stats();
        prop_assert!(
            s.gauges_are_zero(),
            "gauges not zero after teardown: {:?}",
            s
        );
        prop_assert!(self.core.is_empty());
        Ok(())
    }

    fn overflowed(&self) -> u64 {
        self.core.stats().rq_pending_overflow
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
