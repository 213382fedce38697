//! `Keep-Alive` hints: an origin chooses these bytes, so reading them must
//! never panic, and what is read must be consistent all the way into the
//! core.
//!
//! - `KeepAlive::parse` on the lossy string never panics and agrees with a
//!   small reference reader written here (last readable `timeout=`/`max=`
//!   wins; whole seconds; unreadable values ignored).
//! - `KeepAlive::from_headers` over the lines of the input as `keep-alive`
//!   header values (those `HeaderValue::from_bytes` accepts) keeps the
//!   stricter of each (min timeout, min max), and None only when no value
//!   said anything; other headers are ignored.
//! - The hint applied to a connection in the core (`keep_alive_hint`) keeps
//!   the core's invariants and takes effect as documented: `max=0` or a
//!   timeout within the margin retires at once, `max=M` allows M more
//!   requests, `timeout=T` closes the idle connection at T minus the margin
//!   (capped by the pool's idle timeout). Checked with the pool's idle
//!   timeout set and unset.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edgepool::core::{Action, CoreConfig, OriginPool, Phase};
use edgepool::recycle::KeepAlive;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let hint = KeepAlive::parse(&text);
    assert_eq!(hint, reference(&text), "parse({text:?}) differs from the reference");
    check_hint(&hint);

    // Each line is one header value.
    let mut headers = HeaderMap::new();
    let mut expected: Option<KeepAlive> = None;
    for line in data.split(|&b| b == b'\n').take(8) {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        if let Ok(s) = value.to_str() {
            let one = KeepAlive::parse(s);
            assert_eq!(one, reference(s));
            expected = Some(match expected {
                None => one,
                Some(e) => KeepAlive {
                    timeout: min_some(e.timeout, one.timeout),
                    max: min_some(e.max, one.max),
                },
            });
        }
        // Not a Keep-Alive header: must not count.
        headers.append("connection", value.clone());
        headers.append("x-keep-alive", value.clone());
        headers.append("keep-alive", value);
    }
    let got = KeepAlive::from_headers(&headers);
    let want = expected.filter(|k| *k != KeepAlive::default());
    assert_eq!(got, want, "from_headers over {data:?}");
    if let Some(k) = got {
        assert_ne!(k, KeepAlive::default(), "Some(default) is not a hint");
        check_hint(&k);
    }

    // Into the core, with and without the pool's own idle timeout.
    for idle in [Some(Duration::from_secs(90)), None] {
        apply_to_core(hint, idle);
        if let Some(k) = got {
            apply_to_core(k, idle);
        }
    }
});

fn check_hint(k: &KeepAlive) {
    if let Some(t) = k.timeout {
        assert_eq!(t.subsec_nanos(), 0, "a Keep-Alive timeout is whole seconds");
    }
}

/// The reference reader: comma-separated `name=value` parameters, names
/// case-insensitive, values trimmed of whitespace and quotes, decimal u64
/// (an optional `+`, as Rust's integer parser takes); later parameters win.
fn reference(value: &str) -> KeepAlive {
    let mut k = KeepAlive::default();
    for param in value.split(',') {
        let Some(eq) = param.find('=') else { continue };
        let name = param[..eq].trim().to_ascii_lowercase();
        let raw = param[eq + 1..].trim().trim_matches('"');
        let digits = raw.strip_prefix('+').unwrap_or(raw);
        let number = if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            digits.bytes().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        };
        match (name.as_str(), number) {
            ("timeout", Some(n)) => k.timeout = Some(Duration::from_secs(n)),
            ("max", Some(n)) => k.max = Some(n),
            _ => {}
        }
    }
    k
}

fn min_some<V: Ord>(a: Option<V>, b: Option<V>) -> Option<V> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn invariants(pool: &OriginPool<u64, u64>, step: &str) {
    if let Err(e) = pool.check_invariants() {
        panic!("invariant broken after {step}: {e}");
    }
}

/// One connection carrying one request sees the hint on its response.
fn apply_to_core(hint: KeepAlive, idle_timeout: Option<Duration>) {
    let margin = Duration::from_secs(1);
    let config = CoreConfig {
        max_connections: 1,
        idle_timeout,
        ..CoreConfig::default()
    };
    assert_eq!(config.recycle.keep_alive_margin, margin);
    let mut pool: OriginPool<u64, u64> = OriginPool::new(config).unwrap();
    let t0 = base();
    assert!(pool.try_checkout(t0).is_none());
    pool.enqueue(t0, t0 + Duration::from_secs(1), 1).unwrap();
    let Some(Action::Connect(conn)) = pool.poll_action() else {
        panic!("no connect for a waiter")
    };
    pool.connected(conn, t0, 1, 10).unwrap();
    let Some(Action::Wake { grant, .. }) = pool.poll_action() else {
        panic!("the waiter was not served")
    };
    assert_eq!(grant.conn, conn);
    invariants(&pool, "connect");

    pool.keep_alive_hint(conn, t0, hint.timeout, hint.max);
    invariants(&pool, "keep_alive_hint");
    let _ = pool.next_timeout();
    let retire_now =
        hint.max == Some(0) || hint.timeout.is_some_and(|t| t.saturating_sub(margin).is_zero());
    let expect = if retire_now { Phase::Draining } else { Phase::Ready };
    assert_eq!(pool.phase(conn), Some(expect), "after hint {hint:?}");

    pool.release(conn, t0, true);
    invariants(&pool, "release");
    let _ = pool.next_timeout();
    if retire_now {
        assert_eq!(pool.phase(conn), None, "retired connection not closed on release");
        settle(&mut pool);
        return;
    }

    // `max=M`: M more requests after the one that carried the hint; the
    // grant of the Mth retires the connection and its release closes it.
    let mut open = true;
    if let Some(m) = hint.max {
        for i in 1..=m.min(5) {
            let g = pool
                .try_checkout(t0)
                .unwrap_or_else(|| panic!("max={m}: request {i} after the hint refused"));
            assert_eq!(g.conn, conn);
            let phase = if i == m { Phase::Draining } else { Phase::Ready };
            assert_eq!(pool.phase(conn), Some(phase), "max={m}: grant {i}");
            pool.release(conn, t0, true);
            invariants(&pool, "checkout under max");
            if i == m {
                assert_eq!(pool.phase(conn), None, "max={m}: not closed after {m} requests");
                assert!(pool.try_checkout(t0).is_none());
                open = false;
            }
        }
    }
    let _ = pool.next_timeout();

    // `timeout=T`: the idle connection closes T - margin after its last use
    // (or at the pool's idle timeout, if earlier).
    if open {
        let limit = hint.timeout.map(|t| t.saturating_sub(margin));
        let idle = match (idle_timeout, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Exact wherever the deadline is a representable Instant (the core
        // saturates only where it is not); there, a decade idle must not
        // close it.
        const DECADE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        match idle.and_then(|idle| t0.checked_add(idle).map(|at| (idle, at))) {
            Some((idle, at)) => {
                pool.handle_timeout(at - Duration::from_nanos(1));
                invariants(&pool, "handle_timeout before the idle limit");
                assert_eq!(pool.phase(conn), Some(Phase::Ready), "closed before {idle:?}");
                pool.handle_timeout(at);
                invariants(&pool, "handle_timeout at the idle limit");
                assert_eq!(pool.phase(conn), None, "not closed at {idle:?} idle");
            }
            None => {
                pool.handle_timeout(t0 + DECADE);
                invariants(&pool, "handle_timeout a decade later");
                assert_eq!(pool.phase(conn), Some(Phase::Ready), "closed before {idle:?}");
            }
        }
    }
    settle(&mut pool);
}

fn settle(pool: &mut OriginPool<u64, u64>) {
    pool.shutdown(base());
    while pool.poll_action().is_some() {}
    invariants(pool, "shutdown");
    assert!(pool.stats().gauges_are_zero(), "{:?}", pool.stats());
    assert!(pool.is_empty());
}
