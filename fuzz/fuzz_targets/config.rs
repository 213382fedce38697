//! Configuration: any values at all in `CoreConfig` (with its
//! `RecycleConfig` and `BackoffConfig`) and in the sizing policies.
//!
//! - `validate()` never panics, and `OriginPool::new` accepts exactly the
//!   configurations `validate()` accepts.
//! - A pool built from a valid configuration runs a short scripted workload
//!   (targets, waiters, connects that succeed or fail, checkouts, releases,
//!   Keep-Alive hints, timeouts at arbitrary later instants, shutdown) with
//!   `check_invariants()` after every step and every gauge zero at the end.
//!   The connection limit is capped at 256 for this part only, so that a
//!   limit of `usize::MAX` with a huge preconnect ratio is not a memory test.
//! - `LittlesLaw`, `StreamCount`, `Fixed` and `ByProtocol`: `validate()`
//!   never panics; for a valid policy `target()` never panics on any load
//!   sample (NaN and infinite rates included) and gives min ≤ warm ≤ max.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use edgepool::core::{Action, BackoffConfig, CoreConfig, OriginPool, RecycleConfig};
use edgepool::sizing::{
    ByProtocol, Fixed, LittlesLaw, LoadSample, SizingPolicy, StreamCount, Target,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    core: RawCore,
    littles: (F, N, N),
    stream: (N, N, N),
    fixed: (N, N),
    load: (F, D, N, N),
    script: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
struct RawCore {
    max_connections: N,
    max_pending: N,
    idle_timeout: Option<D>,
    open_more_when_saturated: bool,
    expected_slots: N,
    max_age: Option<D>,
    max_age_jitter: F,
    max_requests: Option<W>,
    max_consecutive_errors: Option<T>,
    keep_alive_margin: D,
    base: D,
    cap: D,
    failure_threshold: T,
    preconnect_ratio: F,
    warm_concurrency: N,
    seed: u64,
}

impl RawCore {
    fn config(&self) -> CoreConfig {
        CoreConfig {
            max_connections: self.max_connections.0,
            max_pending: self.max_pending.0,
            idle_timeout: self.idle_timeout.map(|d| d.0),
            open_more_when_saturated: self.open_more_when_saturated,
            expected_slots: self.expected_slots.0,
            recycle: RecycleConfig {
                max_age: self.max_age.map(|d| d.0),
                max_age_jitter: self.max_age_jitter.0,
                max_requests: self.max_requests.map(|n| n.0),
                max_consecutive_errors: self.max_consecutive_errors.map(|n| n.0),
                keep_alive_margin: self.keep_alive_margin.0,
            },
            backoff: BackoffConfig {
                base: self.base.0,
                cap: self.cap.0,
                failure_threshold: self.failure_threshold.0,
            },
            preconnect_ratio: self.preconnect_ratio.0,
            warm_concurrency: self.warm_concurrency.0,
            seed: self.seed,
        }
    }
}

// Values drawn as often from the small range a real configuration uses and
// from the boundaries as from the whole range, so that both the valid space
// and the extremes get explored.

/// A usize.
#[derive(Debug, Clone, Copy)]
struct N(usize);
impl<'a> Arbitrary<'a> for N {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(N(match u.int_in_range(0u8..=3)? {
            0 => u.int_in_range(0..=16)?,
            1 => *u.choose(&[usize::MAX, usize::MAX - 1, usize::MAX / 2, 1 << 32, 1 << 31])?,
            2 => u.int_in_range(0..=1_000)?,
            _ => u.arbitrary()?,
        }))
    }
}

/// A u64.
#[derive(Debug, Clone, Copy)]
struct W(u64);
impl<'a> Arbitrary<'a> for W {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(W(match u.int_in_range(0u8..=2)? {
            0 => u.int_in_range(0..=16)?,
            1 => *u.choose(&[u64::MAX, u64::MAX - 1, i64::MAX as u64])?,
            _ => u.arbitrary()?,
        }))
    }
}

/// A u32.
#[derive(Debug, Clone, Copy)]
struct T(u32);
impl<'a> Arbitrary<'a> for T {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(T(match u.int_in_range(0u8..=2)? {
            0 => u.int_in_range(0..=16)?,
            1 => *u.choose(&[u32::MAX, u32::MAX - 1, 31, 32, 33, 64])?,
            _ => u.arbitrary()?,
        }))
    }
}

/// A duration.
#[derive(Debug, Clone, Copy)]
struct D(Duration);
impl<'a> Arbitrary<'a> for D {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(D(match u.int_in_range(0u8..=3)? {
            0 => Duration::from_millis(u.int_in_range(0..=10_000)?),
            1 => *u.choose(&[
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::MAX,
                Duration::from_secs(u64::MAX / 2),
                Duration::from_secs(i64::MAX as u64),
                Duration::from_secs(1 << 40),
            ])?,
            2 => Duration::from_secs(u.int_in_range(0..=10_000_000)?),
            _ => u.arbitrary()?,
        }))
    }
}

/// An f64.
#[derive(Debug, Clone, Copy)]
struct F(f64);
impl<'a> Arbitrary<'a> for F {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(F(match u.int_in_range(0u8..=2)? {
            0 => *u.choose(&[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                -0.0,
                0.5,
                1.0,
                1.0 - f64::EPSILON,
                1.0 + f64::EPSILON,
                0.999_999_999_999,
                f64::MAX,
                f64::MIN_POSITIVE,
                1e300,
            ])?,
            1 => 1.0 + f64::from(u.int_in_range(0u8..=64)?) / 16.0,
            _ => u.arbitrary()?,
        }))
    }
}

/// One step of the scripted workload.
#[derive(Debug, Arbitrary)]
enum Step {
    /// Queue a request (after trying a free slot) with this deadline.
    Request { deadline: D },
    /// Answer the oldest connect: open with these slots, or fail.
    Answer { ok: bool, slots: u8 },
    /// Release the oldest lease.
    Release { reusable: bool, failed: bool },
    /// Keep-Alive hint on the newest open connection.
    Hint { timeout: Option<D>, max: Option<W> },
    /// Move time on and run the timers.
    Advance { by: D },
    /// Warm level and maximum.
    Targets { warm: u8, max: u8 },
    /// Lower or raise a connection's slots.
    Slots { slots: u8 },
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fuzz_target!(|input: Input| {
    let config = input.core.config();
    let valid = config.validate();
    // Both parts validate on their own, and CoreConfig covers both.
    let parts = config.recycle.validate().is_ok() && config.backoff.validate().is_ok();
    if valid.is_ok() {
        assert!(parts, "CoreConfig valid but a part is not: {config:?}");
    }
    match &valid {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            let _ = format!("{e:?}");
            assert!(
                OriginPool::<u64, u64>::new(config.clone()).is_err(),
                "new() accepted what validate() rejects: {config:?}"
            );
        }
        Ok(()) => assert_eq!(config.clone(), config, "PartialEq not reflexive on a valid config"),
    }

    let target = sizing(&input);

    if valid.is_ok() {
        run_pool(config, target, &input.script);
    }
});

/// Checks every sizing policy; returns a valid one's target for a load.
fn sizing(input: &Input) -> Option<Target> {
    let (F(rate), D(latency), N(in_flight), N(slots)) = input.load;
    let load = LoadSample::new(rate, latency, in_flight, slots);
    let _ = load.littles_concurrency();
    let mut last = None;

    let littles = LittlesLaw {
        headroom: input.littles.0.0,
        min: input.littles.1.0,
        max: input.littles.2.0,
    };
    let littles_ok = littles.validate().is_ok();
    if littles_ok {
        let t = littles.target(&load);
        check_target(t, littles.min, littles.max, "LittlesLaw");
        last = Some(t);
    } else {
        let _ = littles.validate().unwrap_err().to_string();
    }

    let stream = StreamCount {
        redundancy: input.stream.0.0,
        min: input.stream.1.0,
        max: input.stream.2.0,
    };
    let stream_ok = stream.validate().is_ok();
    if stream_ok {
        let t = stream.target(&load);
        check_target(t, stream.min, stream.max, "StreamCount");
        // No load at all: no spare connections, only the minimum.
        if !(load.littles_concurrency() > 0.0) && in_flight == 0 {
            assert_eq!(t.warm, stream.min, "StreamCount keeps spares without load");
        }
        last = Some(t);
    }

    let fixed = Fixed {
        warm: input.fixed.0.0,
        max: input.fixed.1.0,
    };
    if fixed.validate().is_ok() {
        let t = fixed.target(&load);
        assert_eq!(t, Target { warm: fixed.warm, max: fixed.max });
        check_target(t, 0, fixed.max, "Fixed");
        last = Some(t);
    }

    if littles_ok && stream_ok {
        let by = ByProtocol {
            one_at_a_time: littles,
            multiplexed: stream,
        };
        let t = by.target(&load);
        let expected = if slots <= 1 {
            littles.target(&load)
        } else {
            stream.target(&load)
        };
        assert_eq!(t, expected, "ByProtocol picked the wrong policy for {slots} slots");
    }
    last
}

fn check_target(t: Target, min: usize, max: usize, what: &str) {
    assert!(t.warm <= t.max, "{what}: warm {} above max {}", t.warm, t.max);
    assert!(t.warm >= min, "{what}: warm {} below min {min}", t.warm);
    assert_eq!(t.max, max, "{what}: max changed");
}

fn invariants(pool: &OriginPool<u64, u64>, step: &str) {
    if let Err(e) = pool.check_invariants() {
        panic!("invariant broken after {step}: {e}");
    }
}

fn run_pool(mut config: CoreConfig, target: Option<Target>, script: &[Step]) {
    config.max_connections = config.max_connections.min(256);
    let mut pool: OriginPool<u64, u64> =
        OriginPool::new(config.clone()).expect("new() rejected a valid config");
    assert_eq!(pool.config(), &config);
    let mut now = base();
    invariants(&pool, "new");

    if let Some(t) = target {
        pool.set_targets(now, t.warm, t.max);
        let (w, m) = pool.targets();
        assert!(w <= m && m <= config.max_connections, "targets ({w}, {m})");
        invariants(&pool, "set_targets from the sizing policy");
    }

    let mut attempts = Vec::new();
    let mut open = Vec::new();
    let mut leases = Vec::new();
    let mut payload = 0u64;
    let drain = |pool: &mut OriginPool<u64, u64>,
                     attempts: &mut Vec<_>,
                     open: &mut Vec<_>,
                     leases: &mut Vec<_>| {
        while let Some(a) = pool.poll_action() {
            match a {
                Action::Connect(id) => attempts.push(id),
                Action::Wake { grant, .. } => leases.push(grant.conn),
                Action::Fail { .. } => {}
                Action::Close { conn, .. } => open.retain(|c| *c != conn),
            }
        }
    };

    for step in script.iter().take(32) {
        let name = match step {
            Step::Request { deadline } => {
                if let Some(g) = pool.try_checkout(now) {
                    leases.push(g.conn);
                } else {
                    let deadline = now.checked_add(deadline.0).unwrap_or(now);
                    payload += 1;
                    let _ = pool.enqueue(now, deadline, payload);
                }
                "request"
            }
            Step::Answer { ok, slots } => {
                if !attempts.is_empty() {
                    let id = attempts.remove(0);
                    if *ok {
                        if pool.connected(id, now, usize::from(*slots), 0).is_ok() {
                            open.push(id);
                        }
                    } else {
                        pool.connect_failed(id, now);
                    }
                }
                "connect answer"
            }
            Step::Release { reusable, failed } => {
                if !leases.is_empty() {
                    let id = leases.remove(0);
                    if *failed {
                        pool.release_failed(id, now);
                    } else {
                        pool.release(id, now, *reusable);
                    }
                }
                "release"
            }
            Step::Hint { timeout, max } => {
                if let Some(&id) = open.last() {
                    pool.keep_alive_hint(id, now, timeout.map(|d| d.0), max.map(|m| m.0));
                }
                "keep_alive_hint"
            }
            Step::Advance { by } => {
                if let Some(t) = now.checked_add(by.0) {
                    now = t;
                }
                pool.handle_timeout(now);
                let _ = pool.next_timeout();
                let _ = pool.load_sample(now);
                "advance"
            }
            Step::Targets { warm, max } => {
                pool.set_targets(now, usize::from(*warm), usize::from(*max));
                let (w, m) = pool.targets();
                assert!(w <= m, "warm {w} above max {m}");
                "set_targets"
            }
            Step::Slots { slots } => {
                if let Some(&id) = open.first() {
                    pool.set_slots(id, now, usize::from(*slots));
                }
                "set_slots"
            }
        };
        drain(&mut pool, &mut attempts, &mut open, &mut leases);
        invariants(&pool, name);
        let _ = pool.next_timeout();
        assert!(pool.connection_count() <= config.max_connections);
    }

    // Teardown: shut down, release every lease, answer every attempt.
    pool.shutdown(now);
    drain(&mut pool, &mut attempts, &mut open, &mut leases);
    invariants(&pool, "shutdown");
    for id in std::mem::take(&mut leases) {
        pool.release(id, now, true);
        drain(&mut pool, &mut attempts, &mut open, &mut leases);
        invariants(&pool, "release after shutdown");
    }
    for id in std::mem::take(&mut attempts) {
        assert!(pool.connected(id, now, 1, 0).is_err(), "shut down pool accepted a connection");
        drain(&mut pool, &mut attempts, &mut open, &mut leases);
    }
    invariants(&pool, "teardown");
    let s = pool.stats();
    assert!(s.gauges_are_zero(), "gauges not zero after teardown: {s:?}");
    assert!(pool.is_empty());
}
