//! Unit tests of the core with explicit instants.

use std::time::{Duration, Instant};

use super::*;

type Core = OriginPool<&'static str, u32>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn core(config: CoreConfig) -> Core {
    OriginPool::new(config).unwrap()
}

fn actions(core: &mut Core) -> Vec<Action<&'static str, u32>> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

/// Opens one connection with `slots` and returns its id, leaving it idle.
fn open(core: &mut Core, t: Instant, slots: usize) -> ConnId {
    let w = core.enqueue(t, t + ms(1000), 999).unwrap();
    let conn = match actions(core).as_slice() {
        [Action::Connect(c)] => *c,
        other => panic!("expected one connect, got {other:?}"),
    };
    core.connected(conn, t, slots, "conn").unwrap();
    match actions(core).as_slice() {
        [Action::Wake { waiter: 999, grant }] => core.release(grant.conn, t, true),
        other => panic!("expected a wake, got {other:?} for {w:?}"),
    }
    conn
}

#[test]
fn idle_timeout_closes_exactly_at_the_deadline() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        idle_timeout: Some(ms(100)),
        ..CoreConfig::default()
    });
    let conn = open(&mut c, t0, 1);
    assert_eq!(c.next_timeout(), Some(t0 + ms(100)));
    c.handle_timeout(t0 + ms(99));
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.stats().cx_idle, 1);
    c.handle_timeout(t0 + ms(100));
    match actions(&mut c).as_slice() {
        [
            Action::Close {
                conn: closed,
                reason: CloseReason::IdleTimeout,
                handle: Some("conn"),
            },
        ] => {
            assert_eq!(*closed, conn)
        }
        other => panic!("{other:?}"),
    }
    let s = c.stats();
    assert_eq!(s.cx_destroy.idle_timeout, 1);
    assert!(s.gauges_are_zero(), "{s:?}");
}

#[test]
fn use_pushes_the_idle_deadline_back() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        idle_timeout: Some(ms(100)),
        ..CoreConfig::default()
    });
    open(&mut c, t0, 1);
    let g = c.try_checkout(t0 + ms(80)).unwrap();
    assert!(g.reused);
    assert_eq!(g.idle_for, ms(80));
    c.release(g.conn, t0 + ms(90), true);
    c.handle_timeout(t0 + ms(150));
    assert!(
        actions(&mut c).is_empty(),
        "used at 90 ms, so idle until 190 ms"
    );
    assert_eq!(c.next_timeout(), Some(t0 + ms(190)));
    c.handle_timeout(t0 + ms(190));
    assert_eq!(actions(&mut c).len(), 1);
}

#[test]
fn busy_connections_never_idle_out() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        idle_timeout: Some(ms(10)),
        ..CoreConfig::default()
    });
    open(&mut c, t0, 1);
    let g = c.try_checkout(t0).unwrap();
    c.handle_timeout(t0 + ms(1000));
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.next_timeout(), None);
    c.release(g.conn, t0 + ms(1000), true);
    assert_eq!(c.next_timeout(), Some(t0 + ms(1010)));
}

#[test]
fn waiter_deadline_fails_it_with_the_time_waited() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    let conn = open(&mut c, t0, 1);
    let held = c.try_checkout(t0).unwrap();
    assert!(c.try_checkout(t0).is_none());
    let w = c.enqueue(t0 + ms(5), t0 + ms(55), 1).unwrap();
    assert!(actions(&mut c).is_empty(), "at the limit: no connect");
    assert_eq!(c.next_timeout(), Some(t0 + ms(55)));
    assert!(!c.expire(w, t0 + ms(54)), "not yet due");
    c.handle_timeout(t0 + ms(54));
    assert!(actions(&mut c).is_empty());
    assert!(c.expire(w, t0 + ms(55)));
    match actions(&mut c).as_slice() {
        [
            Action::Fail {
                waiter: 1,
                reason: WaitFailure::Timeout { waited },
            },
        ] => {
            assert_eq!(*waited, ms(50))
        }
        other => panic!("{other:?}"),
    }
    assert!(!c.expire(w, t0 + ms(56)), "resolved exactly once");
    assert_eq!(c.stats().rq_pending_timeout, 1);
    // The slot released later goes back to the pool, not to the dead waiter.
    c.release(held.conn, t0 + ms(60), true);
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.try_checkout(t0 + ms(61)).unwrap().conn, conn);
}

#[test]
fn waiters_are_served_in_fifo_order() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    open(&mut c, t0, 1);
    let g = c.try_checkout(t0).unwrap();
    for w in 1..=3 {
        c.enqueue(t0, t0 + ms(100), w).unwrap();
    }
    let mut order = Vec::new();
    let mut conn = g.conn;
    for _ in 0..3 {
        c.release(conn, t0, true);
        match actions(&mut c).as_slice() {
            [Action::Wake { waiter, grant }] => {
                order.push(*waiter);
                conn = grant.conn;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(order, vec![1, 2, 3]);
}

#[test]
fn full_queue_overflows_at_once_and_hands_the_waiter_back() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        max_pending: 2,
        ..CoreConfig::default()
    });
    c.enqueue(t0, t0 + ms(10), 1).unwrap();
    c.enqueue(t0, t0 + ms(10), 2).unwrap();
    let rejected = c.enqueue(t0, t0 + ms(10), 3).unwrap_err();
    assert_eq!(rejected.reason, RejectReason::Overflow);
    assert_eq!(rejected.waiter, 3);
    assert_eq!(c.stats().rq_pending_overflow, 1);
}

#[test]
fn prefers_the_most_recently_used_connection() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let a = c.enqueue(t0, t0 + ms(100), 1).unwrap();
    let b = c.enqueue(t0, t0 + ms(100), 2).unwrap();
    let conns: Vec<ConnId> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Connect(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        conns.len(),
        2,
        "two waiters on 1-slot connections: two connects"
    );
    c.connected(conns[0], t0, 1, "a").unwrap();
    c.connected(conns[1], t0, 1, "b").unwrap();
    let grants: Vec<Grant> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Wake { grant, .. } => grant,
            other => panic!("{other:?}"),
        })
        .collect();
    c.release(grants[0].conn, t0 + ms(1), true);
    c.release(grants[1].conn, t0 + ms(2), true);
    assert_eq!(c.try_checkout(t0 + ms(3)).unwrap().conn, grants[1].conn);
    assert_eq!(c.try_checkout(t0 + ms(3)).unwrap().conn, grants[0].conn);
    let _ = (a, b);
}

#[test]
fn multiplexed_connection_lends_up_to_its_slots_then_opens_another() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        expected_slots: 3,
        ..CoreConfig::default()
    });
    for w in 0..3 {
        c.enqueue(t0, t0 + ms(100), w).unwrap();
    }
    let connects = actions(&mut c);
    assert_eq!(
        connects.len(),
        1,
        "one connection is expected to carry three"
    );
    let Action::Connect(conn) = connects[0] else {
        panic!()
    };
    c.connected(conn, t0, 3, "h2").unwrap();
    assert_eq!(actions(&mut c).len(), 3);
    assert_eq!(c.load(conn), Some((3, 3)));
    assert!(c.try_checkout(t0).is_none());
    c.enqueue(t0, t0 + ms(100), 3).unwrap();
    assert!(matches!(actions(&mut c).as_slice(), [Action::Connect(_)]));
}

#[test]
fn queue_only_mode_never_opens_a_second_connection() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        expected_slots: 2,
        open_more_when_saturated: false,
        ..CoreConfig::default()
    });
    for w in 0..5 {
        c.enqueue(t0, t0 + ms(100), w).unwrap();
    }
    let Some(Action::Connect(conn)) = c.poll_action() else {
        panic!()
    };
    assert!(c.poll_action().is_none());
    c.connected(conn, t0, 2, "h2").unwrap();
    assert_eq!(actions(&mut c).len(), 2);
    assert_eq!(c.stats().rq_pending, 3);
    assert_eq!(c.connection_count(), 1);
}

#[test]
fn failed_connect_fails_its_waiter_quickly() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    c.enqueue(t0, t0 + ms(1000), 1).unwrap();
    let Some(Action::Connect(conn)) = c.poll_action() else {
        panic!()
    };
    c.connect_failed(conn, t0 + ms(1));
    match actions(&mut c).as_slice() {
        [
            Action::Fail {
                waiter: 1,
                reason: WaitFailure::ConnectFailed,
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    let s = c.stats();
    assert_eq!((s.cx_connect_fail, s.rq_pending_failure), (1, 1));
    assert!(s.gauges_are_zero());
}

#[test]
fn lowered_slots_are_respected_for_new_grants() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        expected_slots: 4,
        ..CoreConfig::default()
    });
    let conn = open(&mut c, t0, 4);
    let g1 = c.try_checkout(t0).unwrap();
    let _g2 = c.try_checkout(t0).unwrap();
    c.set_slots(conn, t0, 1);
    assert!(c.try_checkout(t0).is_none(), "2 leases >= 1 slot");
    c.release(g1.conn, t0, true);
    assert!(c.try_checkout(t0).is_none(), "1 lease >= 1 slot");
    c.set_slots(conn, t0, 0);
    c.check_invariants().unwrap();
}

#[test]
fn drain_closes_after_the_last_lease() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let conn = open(&mut c, t0, 1);
    let g = c.try_checkout(t0).unwrap();
    c.drain(conn, t0);
    assert!(actions(&mut c).is_empty());
    assert!(c.try_checkout(t0).is_none());
    c.release(g.conn, t0, true);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Close {
            reason: CloseReason::Drained,
            ..
        }]
    ));
    assert!(c.stats().gauges_are_zero());
}

#[test]
fn unreusable_release_closes_and_replaces_for_waiters() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    open(&mut c, t0, 1);
    let g = c.try_checkout(t0).unwrap();
    c.enqueue(t0, t0 + ms(10), 5).unwrap();
    c.release(g.conn, t0, false);
    let acts = actions(&mut c);
    assert!(matches!(
        acts[0],
        Action::Close {
            reason: CloseReason::Error,
            ..
        }
    ));
    assert!(matches!(acts[1], Action::Connect(_)), "{acts:?}");
}

#[test]
fn peer_close_of_a_busy_connection_keeps_the_lease_counted() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let conn = open(&mut c, t0, 1);
    let g = c.try_checkout(t0).unwrap();
    c.close(conn, t0, CloseReason::PeerClosed);
    assert_eq!(c.stats().rq_active, 1);
    assert_eq!(c.stats().cx_active, 0);
    c.release(g.conn, t0, true);
    assert!(c.stats().gauges_are_zero());
    assert_eq!(c.stats().cx_destroy.remote, 1);
}

#[test]
fn shutdown_fails_waiters_and_closes_attempts_when_they_report() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    c.enqueue(t0, t0 + ms(10), 1).unwrap();
    let Some(Action::Connect(conn)) = c.poll_action() else {
        panic!()
    };
    c.shutdown(t0);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Fail {
            waiter: 1,
            reason: WaitFailure::Shutdown
        }]
    ));
    assert_eq!(c.connected(conn, t0, 1, "late"), Err("late"));
    assert!(c.stats().gauges_are_zero());
    assert_eq!(
        c.enqueue(t0, t0, 2).unwrap_err().reason,
        RejectReason::Shutdown
    );
}

#[test]
fn config_rejects_zero_limits_naming_the_field() {
    let err = CoreConfig {
        max_connections: 0,
        ..CoreConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("max_connections = 0"), "{err}");
    let err = CoreConfig {
        idle_timeout: Some(Duration::ZERO),
        ..CoreConfig::default()
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("idle_timeout"), "{err}");
}

/// Regression (found by the model test): raising a connection's slot count
/// with no waiters left it off the free list, so its new slots were never lent.
#[test]
fn raised_slots_put_the_connection_back_on_the_free_list() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let conn = open(&mut c, t0, 1);
    let _held = c.try_checkout(t0).unwrap();
    c.set_slots(conn, t0, 2);
    c.check_invariants().unwrap();
    assert_eq!(c.try_checkout(t0).unwrap().conn, conn);
}

fn open_one(c: &mut Core, t: Instant) -> ConnId {
    open(c, t, 1)
}

#[test]
fn circuit_opens_after_the_threshold_and_a_probe_closes_it() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        backoff: BackoffConfig {
            base: ms(100),
            cap: ms(1000),
            failure_threshold: 3,
        },
        ..CoreConfig::default()
    });
    for i in 0..3 {
        c.enqueue(t0, t0 + ms(1000), i).unwrap();
        let Some(Action::Connect(conn)) = c.poll_action() else {
            panic!("attempt {i}")
        };
        c.connect_failed(conn, t0);
        actions(&mut c);
    }
    let Circuit::Open { until } = c.circuit() else {
        panic!("{:?}", c.circuit())
    };
    assert!(until <= t0 + ms(100), "first delay is at most base");
    assert_eq!(c.stats().cx_circuit_opened, 1);
    // While open: refused at once, with the time to wait, and no connect.
    if until > t0 {
        let rejected = c.enqueue(t0, t0 + ms(1000), 10).unwrap_err();
        assert_eq!(
            rejected.reason,
            RejectReason::CircuitOpen {
                retry_after: until - t0
            }
        );
        assert_eq!(c.stats().rq_circuit_open, 1);
        assert!(actions(&mut c).is_empty());
    }
    // After it: one probe, whatever the demand.
    for w in 11..14 {
        c.enqueue(until, until + ms(1000), w).unwrap();
    }
    let connects = actions(&mut c);
    assert_eq!(connects.len(), 1, "one probe: {connects:?}");
    assert_eq!(c.circuit(), Circuit::HalfOpen { probing: true });
    let Action::Connect(probe) = connects[0] else {
        panic!()
    };
    c.connected(probe, until, 1, "probe").unwrap();
    assert_eq!(c.circuit(), Circuit::Closed);
    assert_eq!(c.stats().cx_circuit_closed, 1);
}

#[test]
fn a_failed_probe_reopens_with_a_longer_bound_and_fails_the_waiters() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        backoff: BackoffConfig {
            base: ms(100),
            cap: ms(100_000),
            failure_threshold: 1,
        },
        ..CoreConfig::default()
    });
    c.enqueue(t0, t0 + ms(10_000), 1).unwrap();
    let Some(Action::Connect(first)) = c.poll_action() else {
        panic!()
    };
    c.connect_failed(first, t0);
    // The waiter whose connect failed hears that failure; the circuit is open.
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Fail {
            waiter: 1,
            reason: WaitFailure::ConnectFailed
        }]
    ));
    assert!(matches!(c.circuit(), Circuit::Open { .. }));
    let mut at = t0;
    for round in 1..6u32 {
        let Circuit::Open { until } = c.circuit() else {
            panic!()
        };
        // Full jitter: anywhere in [0, base * 2^round).
        assert!(until - at <= ms(100) * 2u32.pow(round - 1), "round {round}");
        at = until;
        c.enqueue(at, at + ms(10_000), 2).unwrap();
        let Some(Action::Connect(probe)) = c.poll_action() else {
            panic!()
        };
        c.connect_failed(probe, at);
        assert!(matches!(
            actions(&mut c).as_slice(),
            [Action::Fail { waiter: 2, .. }]
        ));
    }
    assert_eq!(c.stats().cx_circuit_opened, 6);
}

#[test]
fn max_requests_retires_after_the_last_one() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        recycle: RecycleConfig {
            max_requests: Some(3),
            ..RecycleConfig::default()
        },
        ..CoreConfig::default()
    });
    let conn = open_one(&mut c, t0); // served 1
    let g = c.try_checkout(t0).unwrap(); // 2
    c.release(g.conn, t0, true);
    let g = c.try_checkout(t0).unwrap(); // 3: its last
    assert_eq!(c.phase(conn), Some(Phase::Draining));
    assert!(c.try_checkout(t0).is_none());
    c.release(g.conn, t0, true);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Close {
            reason: CloseReason::Drained,
            ..
        }]
    ));
    assert_eq!(c.stats().cx_retired.max_requests, 1);
}

#[test]
fn max_age_is_jittered_and_retires_gracefully() {
    let t0 = Instant::now();
    let mut expiries = Vec::new();
    for seed in 0..20 {
        let mut c = core(CoreConfig {
            seed,
            recycle: RecycleConfig {
                max_age: Some(ms(1000)),
                ..RecycleConfig::default()
            },
            ..CoreConfig::default()
        });
        let conn = open_one(&mut c, t0);
        let due = c.next_timeout().unwrap();
        assert!(
            due >= t0 + ms(900) && due <= t0 + ms(1100),
            "±10%: {:?}",
            due - t0
        );
        expiries.push(due);
        let g = c.try_checkout(due).unwrap();
        c.handle_timeout(due);
        assert_eq!(c.phase(conn), Some(Phase::Draining), "busy: drains");
        c.release(g.conn, due, true);
        assert_eq!(c.stats().cx_retired.max_age, 1);
        assert_eq!(c.stats().cx_destroy.drained, 1);
    }
    expiries.sort();
    expiries.dedup();
    assert!(expiries.len() > 10, "jitter spreads retirements");
}

#[test]
fn keep_alive_hint_retires_before_the_origin_closes() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        idle_timeout: Some(ms(90_000)),
        recycle: RecycleConfig {
            keep_alive_margin: ms(1000),
            ..RecycleConfig::default()
        },
        ..CoreConfig::default()
    });
    let conn = open_one(&mut c, t0);
    // "Keep-Alive: timeout=5, max=2" on the first response.
    c.keep_alive_hint(conn, t0, Some(ms(5000)), Some(2));
    assert_eq!(
        c.next_timeout(),
        Some(t0 + ms(4000)),
        "5 s minus the 1 s margin"
    );
    c.handle_timeout(t0 + ms(3999));
    assert!(actions(&mut c).is_empty());
    let g = c.try_checkout(t0 + ms(3999)).unwrap(); // 1 of the 2 allowed
    c.release(g.conn, t0 + ms(3999), true);
    let g = c.try_checkout(t0 + ms(3999)).unwrap(); // 2 of 2: the last
    assert_eq!(c.phase(conn), Some(Phase::Draining));
    c.release(g.conn, t0 + ms(3999), true);
    assert_eq!(c.stats().cx_retired.keep_alive, 0);
    assert_eq!(c.stats().cx_retired.max_requests, 1);
    actions(&mut c);
    // A timeout shorter than the margin retires at once.
    let other = open_one(&mut c, t0);
    c.keep_alive_hint(other, t0, Some(ms(500)), None);
    assert_eq!(c.stats().cx_retired.keep_alive, 1);
}

#[test]
fn consecutive_errors_retire_and_a_success_resets_the_count() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        expected_slots: 4,
        recycle: RecycleConfig {
            max_consecutive_errors: Some(2),
            ..RecycleConfig::default()
        },
        ..CoreConfig::default()
    });
    let conn = open(&mut c, t0, 4);
    let g = c.try_checkout(t0).unwrap();
    c.release_failed(g.conn, t0);
    let g = c.try_checkout(t0).unwrap();
    c.release(g.conn, t0, true); // resets
    let g = c.try_checkout(t0).unwrap();
    c.release_failed(g.conn, t0);
    assert_eq!(c.phase(conn), Some(Phase::Ready));
    let g = c.try_checkout(t0).unwrap();
    c.release_failed(g.conn, t0);
    assert_eq!(c.stats().cx_retired.errors, 1);
    assert_eq!(c.phase(conn), None, "idle once retired: closed");
}

#[test]
fn a_reserved_connect_serves_its_requester_first_and_makes_room() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    open_one(&mut c, t0);
    // At the limit, the idle connection is closed to make room.
    let fresh = c
        .reserve_connect(t0)
        .expect("room made by closing the idle one");
    assert!(matches!(actions(&mut c).as_slice(), [Action::Close { .. }]));
    c.enqueue(t0, t0 + ms(100), 7).unwrap();
    assert!(
        actions(&mut c).is_empty(),
        "the reserved attempt covers no waiter, and the limit is reached"
    );
    let grant = c
        .connected(fresh, t0, 1, "fresh")
        .unwrap()
        .expect("the reserver's slot");
    assert_eq!(grant.conn, fresh);
    assert!(!grant.reused);
    assert!(
        actions(&mut c).is_empty(),
        "waiter 7 waits for the slot to come back"
    );
    c.release(fresh, t0, true);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Wake { waiter: 7, .. }]
    ));
    // With every connection busy there is no room: the request waits instead.
    assert_eq!(c.reserve_connect(t0), None);
}

#[test]
fn force_close_closes_busy_connections_too() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let conn = open_one(&mut c, t0);
    let g = c.try_checkout(t0).unwrap();
    c.force_close_all(t0);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Close {
            reason: CloseReason::Shutdown,
            ..
        }]
    ));
    assert_eq!(c.phase(conn), None);
    c.release(g.conn, t0, true);
    assert!(c.stats().gauges_are_zero());
}

#[test]
fn recycle_and_backoff_config_reject_bad_values_naming_the_field() {
    let bad = [
        (
            RecycleConfig {
                max_age: Some(Duration::ZERO),
                ..RecycleConfig::default()
            },
            "max_age",
        ),
        (
            RecycleConfig {
                max_age_jitter: 1.0,
                ..RecycleConfig::default()
            },
            "max_age_jitter",
        ),
        (
            RecycleConfig {
                max_age_jitter: f64::NAN,
                ..RecycleConfig::default()
            },
            "max_age_jitter",
        ),
        (
            RecycleConfig {
                max_age_jitter: -0.1,
                ..RecycleConfig::default()
            },
            "max_age_jitter",
        ),
        (
            RecycleConfig {
                max_requests: Some(0),
                ..RecycleConfig::default()
            },
            "max_requests",
        ),
    ];
    for (recycle, field) in bad {
        let err = recycle.validate().unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    let err = BackoffConfig {
        base: ms(10),
        cap: ms(5),
        failure_threshold: 1,
    }
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("backoff_cap"), "{err}");
}

#[test]
fn warming_opens_up_to_the_target_a_few_at_a_time_and_keeps_it() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        warm_concurrency: 2,
        idle_timeout: Some(ms(100)),
        ..CoreConfig::default()
    });
    c.set_targets(t0, 5, 10);
    let first: Vec<ConnId> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Connect(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(first.len(), 2, "two at a time");
    let mut opened = 0;
    let mut pending = first;
    while let Some(id) = pending.pop() {
        c.connected(id, t0, 1, "warm").unwrap();
        opened += 1;
        for a in actions(&mut c) {
            if let Action::Connect(id) = a {
                pending.push(id);
            }
        }
    }
    assert_eq!(opened, 5);
    assert_eq!(c.ready_count(), 5);
    // Idle past the timeout: the warm level stays.
    c.handle_timeout(t0 + ms(1000));
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.ready_count(), 5);
    // A lower target lets the surplus idle out.
    c.set_targets(t0 + ms(1000), 2, 10);
    c.handle_timeout(t0 + ms(1000));
    assert_eq!(actions(&mut c).len(), 3);
    assert_eq!(c.ready_count(), 2);
    // A peer closing one brings a replacement.
    let some = c.handles().next().map(|(id, _)| id).unwrap();
    c.close(some, t0 + ms(1000), CloseReason::PeerClosed);
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Close { .. }, Action::Connect(_)]
    ));
}

#[test]
fn preconnect_opens_ahead_of_demand() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        preconnect_ratio: 2.0,
        ..CoreConfig::default()
    });
    c.enqueue(t0, t0 + ms(100), 1).unwrap();
    let connects: Vec<ConnId> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Connect(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(connects.len(), 2, "1 waiter, times 2: capacity for 2");
    c.connected(connects[0], t0, 1, "a").unwrap();
    assert!(matches!(
        actions(&mut c).as_slice(),
        [Action::Wake { waiter: 1, .. }]
    ));
    c.connected(connects[1], t0, 1, "b").unwrap();
    // 1 in use, times 2 = 2 slots wanted, 2 ready: nothing more.
    assert!(actions(&mut c).is_empty());
    let _g = c.try_checkout(t0).unwrap();
    c.enqueue(t0, t0 + ms(100), 2).unwrap();
    let more = actions(&mut c)
        .into_iter()
        .filter(|a| matches!(a, Action::Connect(_)))
        .count();
    assert_eq!(
        more, 4,
        "2 in use + 1 waiting = 3, times 2 = 6 wanted, 2 ready"
    );
}

#[test]
fn a_failing_origin_warms_with_backoff_not_a_spin() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        backoff: BackoffConfig {
            base: ms(100),
            cap: ms(1000),
            failure_threshold: 3,
        },
        ..CoreConfig::default()
    });
    c.set_targets(t0, 2, 10);
    let mut attempts = 0;
    while let Some(Action::Connect(id)) = c.poll_action() {
        attempts += 1;
        c.connect_failed(id, t0);
        assert!(attempts < 10, "connects must stop once the circuit opens");
    }
    // Two warming connects at a time: the third failure opens the circuit
    // while the fourth is in flight; that one ends too, and nothing follows.
    assert_eq!(
        attempts, 4,
        "stops at the threshold (plus the one in flight)"
    );
    assert!(matches!(c.circuit(), Circuit::Open { .. }));
}

/// Regression (found by the model test): making room for a reserved connect
/// by closing an idle connection let warming take the freed place first,
/// so the reserved attempt went over the connection limit.
#[test]
fn reserving_at_the_limit_never_lets_warming_take_the_freed_place() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        ..CoreConfig::default()
    });
    c.set_targets(t0, 1, 1);
    let Some(Action::Connect(warm)) = c.poll_action() else {
        panic!()
    };
    c.connected(warm, t0, 1, "warm").unwrap();
    actions(&mut c);
    let fresh = c.reserve_connect(t0).unwrap();
    c.check_invariants().unwrap();
    assert_eq!(c.connection_count(), 1);
    assert!(matches!(actions(&mut c).as_slice(), [Action::Close { .. }]));
    let _ = fresh;
}

#[test]
fn when_the_circuit_opens_the_other_waiters_are_told_when_to_come_back() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        max_connections: 1,
        backoff: BackoffConfig {
            base: ms(100),
            cap: ms(100),
            failure_threshold: 1,
        },
        ..CoreConfig::default()
    });
    for w in 1..=3 {
        c.enqueue(t0, t0 + ms(1000), w).unwrap();
    }
    let Some(Action::Connect(attempt)) = c.poll_action() else {
        panic!()
    };
    c.connect_failed(attempt, t0);
    let acts = actions(&mut c);
    assert!(
        matches!(
            acts[0],
            Action::Fail {
                waiter: 1,
                reason: WaitFailure::ConnectFailed
            }
        ),
        "{acts:?}"
    );
    assert!(
        matches!(
            acts[1],
            Action::Fail {
                waiter: 2,
                reason: WaitFailure::CircuitOpen { .. }
            }
        ),
        "{acts:?}"
    );
    assert!(
        matches!(
            acts[2],
            Action::Fail {
                waiter: 3,
                reason: WaitFailure::CircuitOpen { .. }
            }
        ),
        "{acts:?}"
    );
}

/// Regression (fuzz/keep_alive): `Keep-Alive: timeout=99999999999999999991`
/// made the idle deadline overflow `Instant` and panic; a malicious origin
/// could crash the proxy with one header.
#[test]
fn fuzz_found_a_huge_keep_alive_timeout_does_not_overflow() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig::default());
    let conn = open_one(&mut c, t0);
    c.keep_alive_hint(
        conn,
        t0,
        Some(Duration::from_secs(99_999_999_999_999_999)),
        None,
    );
    c.handle_timeout(t0 + ms(1));
    assert!(c.next_timeout().is_some());
    c.check_invariants().unwrap();
    // And huge configured durations do not overflow either.
    let mut c = core(CoreConfig {
        recycle: RecycleConfig {
            max_age: Some(Duration::MAX),
            ..RecycleConfig::default()
        },
        backoff: BackoffConfig {
            base: Duration::MAX,
            cap: Duration::MAX,
            failure_threshold: 1,
        },
        ..CoreConfig::default()
    });
    open_one(&mut c, t0);
    c.enqueue(t0, t0 + ms(1), 1).ok();
    c.handle_timeout(t0 + ms(2));
    c.check_invariants().unwrap();
}

/// Regression (fuzz/keep_alive, second run): a representable but huge
/// Keep-Alive timeout was clamped to a century, so the connection closed
/// before the deadline the hint gave.
#[test]
fn fuzz_found_a_representable_deadline_is_kept_exactly() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        idle_timeout: None,
        ..CoreConfig::default()
    });
    let conn = open_one(&mut c, t0);
    let huge = Duration::from_secs(99_999_999_999_999);
    c.keep_alive_hint(conn, t0, Some(huge), None);
    let margin = RecycleConfig::default().keep_alive_margin;
    if let Some(deadline) = t0.checked_add(huge - margin) {
        assert_eq!(c.next_timeout(), Some(deadline));
    }
}

/// Regression (fuzz/config): a transport announcing `usize::MAX` slots made
/// `attempts x expected slots` and the sum of ready slots overflow.
#[test]
fn fuzz_found_huge_slot_counts_do_not_overflow() {
    let t0 = Instant::now();
    let mut c = core(CoreConfig {
        expected_slots: usize::MAX,
        preconnect_ratio: 3.0,
        ..CoreConfig::default()
    });
    for w in 0..3 {
        c.enqueue(t0, t0 + ms(100), w).unwrap();
    }
    let Some(Action::Connect(a)) = c.poll_action() else {
        panic!()
    };
    actions(&mut c);
    c.connected(a, t0, usize::MAX, "a").unwrap();
    actions(&mut c);
    c.set_slots(a, t0, usize::MAX);
    c.set_slots(a, t0, 7);
    c.set_slots(a, t0, usize::MAX);
    c.check_invariants().unwrap();
}
