//! Sizing policies and warming, on tokio's paused clock with a mock
//! transport: the load is synthetic (R and L known), so the policy's target
//! is known too.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use edgepool::sizing::{Fixed, LittlesLaw};
use edgepool::{Error, Origin, Pool};
use http_body_util::{BodyExt, Empty};
use support::mock::MockTransport;

fn origin() -> Origin {
    Origin::parse("http://origin.test").unwrap()
}

fn pool(transport: &MockTransport) -> edgepool::PoolBuilder<MockTransport> {
    Pool::builder(transport.clone())
        .maintenance_interval(Duration::from_secs(1))
        .idle_timeout(Some(Duration::from_secs(30)))
        .max_pending_per_origin(10_000)
        .ping_interval(None)
}

/// Sends `rate` requests per second for `secs` seconds, each read to its end.
async fn load(pool: &Pool<MockTransport>, rate: u64, secs: u64) {
    let gap = Duration::from_secs(1) / rate as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rate * secs {
        let pool = pool.clone();
        tasks.spawn(async move {
            let request = http::Request::get("http://origin.test/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = pool.request(request).await.expect("request");
            response.into_body().collect().await.expect("body");
        });
        tokio::time::sleep(gap).await;
    }
    while tasks.join_next().await.is_some() {}
}

fn stats(pool: &Pool<MockTransport>) -> edgepool::Stats {
    pool.stats().origin(&origin()).copied().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn littles_law_converges_grows_and_shrinks_with_the_load() {
    let transport = MockTransport::new(Duration::from_millis(100));
    let pool = pool(&transport)
        .sizing(LittlesLaw::default())
        .build()
        .unwrap();

    // 100 req/s x 100 ms = 10 in flight; headroom 1.5: 15 warm.
    load(&pool, 100, 60).await;
    let warm = stats(&pool).cx_warm_target;
    assert!(
        (15..=16).contains(&warm),
        "target {warm}, expected ceil(100 x 0.1 x 1.5) = 15"
    );
    assert!(stats(&pool).cx_active >= 15, "{:?}", stats(&pool));

    // Twice the rate: twice the target.
    load(&pool, 200, 60).await;
    let warm = stats(&pool).cx_warm_target;
    assert!((30..=31).contains(&warm), "target {warm}, expected 30");
    assert!(stats(&pool).cx_active >= 30);

    // No load: the target decays; connections above it close once each has
    // been idle for the idle timeout (30 s), never below the target. (Most
    // recently used first means the coldest connections were already idle
    // during the load, so some may go soon after it stops.)
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = stats(&pool);
        assert!(
            s.cx_active >= s.cx_warm_target,
            "below the warm level: {s:?}"
        );
        assert_eq!(
            s.cx_destroy.idle_timeout + s.cx_active,
            30,
            "only idle timeouts close: {s:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    let s = stats(&pool);
    assert_eq!(s.cx_warm_target, 0, "{s:?}");
    assert_eq!(s.cx_active, 0, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn the_warm_level_is_restored_after_the_peer_closes_connections() {
    let transport = MockTransport::new(Duration::from_millis(10));
    let pool = pool(&transport)
        .sizing(Fixed { warm: 4, max: 10 })
        .build()
        .unwrap();
    pool.warm(&origin(), 4).await.unwrap();
    assert_eq!(stats(&pool).cx_active, 4);
    transport.control.close_all();
    assert_eq!(stats(&pool).cx_destroy.remote, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = stats(&pool);
    assert_eq!(s.cx_active, 4, "{s:?}");
    assert_eq!(s.cx_total, 8);
}

#[tokio::test(start_paused = true)]
async fn warm_returns_when_ready_and_the_first_requests_pay_no_connect() {
    let transport = MockTransport::new(Duration::from_millis(10));
    *transport.control.connect_time.lock().unwrap() = Duration::from_millis(300);
    let pool = pool(&transport).build().unwrap();
    pool.warm(&origin(), 3).await.unwrap();
    assert_eq!(transport.control.connects.load(Ordering::SeqCst), 3);
    let started = tokio::time::Instant::now();
    load(&pool, 3, 1).await;
    assert_eq!(
        transport.control.connects.load(Ordering::SeqCst),
        3,
        "no new connects"
    );
    let s = stats(&pool);
    assert_eq!(s.rq_reused, 3, "all three rode warm connections: {s:?}");
    assert!(
        started.elapsed() < Duration::from_millis(300 + 1000),
        "simulated time, not wall time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_preconnect_is_not_aborted_when_its_request_goes_away() {
    let transport = MockTransport::new(Duration::from_millis(10));
    *transport.control.connect_time.lock().unwrap() = Duration::from_secs(1);
    let pool = pool(&transport).build().unwrap();
    let request = http::Request::get("http://origin.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // The request gives up long before its connection is ready.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), pool.request(request)).await;
    assert!(gave_up.is_err());
    assert_eq!(
        stats(&pool).rq_pending,
        0,
        "the cancelled waiter left the queue"
    );
    assert_eq!(stats(&pool).cx_connecting, 1, "its connect goes on");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = stats(&pool);
    assert_eq!(
        (s.cx_total, s.cx_idle, s.cx_connect_fail),
        (1, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn warming_a_refusing_origin_reports_the_error_and_backs_off() {
    let transport = MockTransport::new(Duration::from_millis(10));
    transport.control.refuse.store(true, Ordering::SeqCst);
    let pool = pool(&transport)
        .sizing(Fixed { warm: 3, max: 10 })
        .build()
        .unwrap();
    let err = pool.warm(&origin(), 3).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    // A minute of simulated time: the backoff doubles up to its 10 s cap,
    // so connects stay in the tens, not the thousands a spin would make.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let connects = transport.control.connects.load(Ordering::SeqCst);
    assert!(
        connects <= 40,
        "{connects} connects in 60 s: not backing off"
    );
    assert!(stats(&pool).cx_circuit_opened >= 2, "{:?}", stats(&pool));
    // The origin comes back: warming succeeds again.
    transport.control.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(stats(&pool).cx_active, 3);
}

#[test]
fn bad_sizing_values_are_rejected_at_build_time() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let transport = MockTransport::new(Duration::ZERO);
    let err = pool(&transport).preconnect_ratio(0.5).build().unwrap_err();
    assert!(err.to_string().contains("preconnect_ratio"), "{err}");
    let err = pool(&transport)
        .preconnect_ratio(f64::NAN)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("preconnect_ratio"), "{err}");
    assert!(
        LittlesLaw {
            headroom: 0.5,
            ..LittlesLaw::default()
        }
        .validate()
        .is_err()
    );
}

/// Regression: the background task slept up to 1 s whatever the maintenance
/// interval, and the first measured interval was averaged toward zero, so a
/// short run's target stayed 0.
#[tokio::test(start_paused = true)]
async fn a_sub_second_maintenance_interval_sizes_a_short_run() {
    let transport = MockTransport::new(Duration::from_millis(100));
    let pool = pool(&transport)
        .maintenance_interval(Duration::from_millis(100))
        .sizing(LittlesLaw::default())
        .build()
        .unwrap();
    load(&pool, 100, 2).await;
    let warm = stats(&pool).cx_warm_target;
    assert!(
        (14..=16).contains(&warm),
        "100 req/s x 100 ms x 1.5 = 15, got {warm}"
    );
}
