//! Fault injection: the pool against an origin behind a loopback chaos relay
//! that closes idle connections, resets, blackholes, refuses and restarts.
//! Every scenario asserts counts, never timings; every wait is bounded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http1::Http1;
use edgepool::{Error, Pool, PoolBuilder};
use http_body_util::{BodyExt, Empty, Full};
use support::chaos::{ChaosRelay, RestartableOrigin};
use support::{Options, TestOrigin, eventually, within};

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).body(Empty::new()).expect("request")
}

fn builder() -> PoolBuilder<Http1> {
    Pool::builder(Http1::new()).max_pending_per_origin(10_000)
}

async fn fetch(pool: &Pool<Http1>, uri: &str) -> Result<(), Error> {
    let response = pool.request(get(uri)).await?;
    response.into_body().collect().await?;
    Ok(())
}

/// Polls with a request until one succeeds (bounded by `within`).
async fn until_ok(pool: &Pool<Http1>, uri: &str) {
    within("a request succeeds again", async {
        while fetch(pool, uri).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// `clients` tasks each send `rounds` GETs, sleeping a gap of 0.9–1.1 × `t`
/// between them (a fixed pseudo-random sequence). Returns the failures.
async fn idle_race(
    pool: &Pool<Http1>,
    uri: &str,
    clients: usize,
    rounds: usize,
    t: Duration,
) -> usize {
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (pool, uri, failures) = (pool.clone(), uri.to_string(), failures.clone());
        tasks.spawn(async move {
            let mut x = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for _ in 0..rounds {
                if let Err(e) = fetch(&pool, &uri).await {
                    eprintln!("request failed: {e}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let factor = 0.9 + 0.2 * (x % 1000) as f64 / 1000.0;
                tokio::time::sleep(t.mul_f64(factor)).await;
            }
        });
    }
    // rounds x t plus slack: a bound on hangs, not a timing assertion.
    let bound = t * (rounds as u32 * 2) + Duration::from_secs(20);
    tokio::time::timeout(bound, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("client task");
        }
    })
    .await
    .expect("the idle race finished");
    failures.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_idle_close_loses_nothing_with_keep_alive_hints_alone() {
    // The origin closes connections idle 1 s and says so (`Keep-Alive:
    // timeout=1`); requests come at 0.9–1.1 s gaps. Retry is off: only the
    // hint (retire 200 ms before the origin would close) keeps them safe.
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let t = Duration::from_secs(1);
    relay.close_idle_after(Some(t));
    let pool = builder()
        .retry_idempotent(false)
        .recycle(edgepool::core::RecycleConfig {
            keep_alive_margin: Duration::from_millis(200),
            ..Default::default()
        })
        .build()
        .unwrap();
    let uri = format!("http://{}/?keep_alive=timeout=1", relay.addr());
    let failures = idle_race(&pool, &uri, 100, 10, t).await;
    let s = pool.stats().total;
    assert_eq!(failures, 0, "{s:?}");
    assert_eq!(s.rq_total, 1000);
    assert_eq!(s.rq_retry, 0, "retry was off");
    assert!(
        s.cx_destroy.idle_timeout > 0,
        "the hint retired connections: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_idle_close_loses_nothing_with_retry_alone() {
    // The origin closes connections idle 100 ms without saying so; requests
    // come at 90–110 ms gaps, so reuses race the close. Only the safe retry
    // (GET, on a fresh connection) keeps them from failing.
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let t = Duration::from_millis(100);
    relay.close_idle_after(Some(t));
    let pool = builder().build().unwrap();
    let uri = format!("http://{}/", relay.addr());
    let failures = idle_race(&pool, &uri, 50, 20, t).await;
    let s = pool.stats().total;
    assert_eq!(failures, 0, "{s:?}");
    assert!(s.rq_total >= 1000, "{s:?}");
    assert!(
        relay.stats().idle_closed > 0,
        "the origin did close idle connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_idle_close_loses_nothing_with_both() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let t = Duration::from_secs(1);
    relay.close_idle_after(Some(t));
    let pool = builder()
        .recycle(edgepool::core::RecycleConfig {
            keep_alive_margin: Duration::from_millis(200),
            ..Default::default()
        })
        .build()
        .unwrap();
    let uri = format!("http://{}/?keep_alive=timeout=1", relay.addr());
    let failures = idle_race(&pool, &uri, 100, 10, t).await;
    assert_eq!(failures, 0, "{:?}", pool.stats().total);
}

#[tokio::test]
async fn a_get_on_a_connection_that_dies_mid_request_is_retried_on_a_fresh_one() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let pool = builder().build().unwrap();
    let uri = format!("http://{}/", relay.addr());
    fetch(&pool, &uri).await.unwrap();
    // The next request is written into a connection that then dies: the
    // relay holds its bytes (a delay of an hour), then resets everything.
    relay.delay(Duration::from_secs(3600));
    let request = tokio::spawn({
        let (pool, uri) = (pool.clone(), uri.clone());
        async move { fetch(&pool, &uri).await }
    });
    eventually("the GET is held by the relay", || {
        relay.stats().queued_to_upstream > 0
    })
    .await;
    relay.reset_all();
    relay.delay(Duration::ZERO);
    within("retried GET", request).await.unwrap().unwrap();
    let s = pool.stats().total;
    assert_eq!(s.rq_retry, 1, "{s:?}");
    assert_eq!(
        origin.requests(),
        2,
        "the first GET and the retry; the held one never arrived"
    );
}

#[tokio::test]
async fn a_post_without_idempotency_key_on_a_dying_connection_is_not_retried() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let pool = builder().build().unwrap();
    let uri = format!("http://{}/", relay.addr());
    fetch(&pool, &uri).await.unwrap();
    relay.delay(Duration::from_secs(3600));
    let post = tokio::spawn({
        let (pool, uri) = (pool.clone(), uri.clone());
        async move {
            let request = http::Request::post(uri)
                .body(Full::new(Bytes::from("charge the card")))
                .unwrap();
            pool.request(request).await.map(|_| ())
        }
    });
    eventually("the POST is held by the relay", || {
        relay.stats().queued_to_upstream > 0
    })
    .await;
    relay.reset_all();
    relay.delay(Duration::ZERO);
    let err = within("POST", post).await.unwrap().unwrap_err();
    assert!(err.is_origin_failure(), "the error comes back: {err:?}");
    assert_eq!(pool.stats().total.rq_retry, 0);
    assert_eq!(
        origin.requests(),
        1,
        "only the first GET: the POST was never sent again"
    );

    // The same POST with an Idempotency-Key is retried.
    fetch(&pool, &uri).await.unwrap();
    let held_before = relay.stats().queued_to_upstream;
    relay.delay(Duration::from_secs(3600));
    let keyed = tokio::spawn({
        let (pool, uri) = (pool.clone(), uri.clone());
        async move {
            let request = http::Request::post(uri)
                .header("idempotency-key", "order-17")
                .body(Full::new(Bytes::from("charge the card")))
                .unwrap();
            let response = pool.request(request).await?;
            response.into_body().collect().await.map(|b| b.to_bytes())
        }
    });
    eventually("the keyed POST is held", || {
        relay.stats().queued_to_upstream > held_before
    })
    .await;
    relay.reset_all();
    relay.delay(Duration::ZERO);
    within("keyed POST", keyed).await.unwrap().unwrap();
    assert_eq!(pool.stats().total.rq_retry, 1);
}

#[tokio::test]
async fn a_blackholed_http1_connection_is_cut_by_the_request_timeout() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let pool = builder()
        .request_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let uri = format!("http://{}/", relay.addr());
    fetch(&pool, &uri).await.unwrap();
    relay.blackhole(true);
    let err = within("blackholed request", fetch(&pool, &uri))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RequestTimeout { .. }), "{err:?}");
    let s = pool.stats().total;
    assert_eq!(
        (s.rq_active, s.cx_active),
        (0, 0),
        "the connection was closed: {s:?}"
    );
    relay.blackhole(false);
    fetch(&pool, &uri).await.unwrap();
}

#[tokio::test]
async fn five_connect_failures_open_the_circuit_and_recovery_closes_it() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let pool = builder()
        .connect_backoff(edgepool::core::BackoffConfig {
            base: Duration::from_millis(200),
            cap: Duration::from_millis(200),
            failure_threshold: 5,
        })
        .build()
        .unwrap();
    let uri = format!("http://{}/", relay.addr());
    relay.refuse(true);
    for i in 0..5 {
        let err = within("refused", fetch(&pool, &uri)).await.unwrap_err();
        assert!(
            matches!(err, Error::Connect { .. }),
            "attempt {i}: {err:?} {:?}",
            pool.stats().total
        );
    }
    let s = pool.stats().total;
    assert_eq!((s.cx_connect_fail, s.cx_circuit_opened), (5, 1), "{s:?}");
    // While open: refused at once, with the time to retry.
    let err = within("circuit open", fetch(&pool, &uri))
        .await
        .unwrap_err();
    match &err {
        Error::OriginUnavailable { retry_after, .. } => {
            assert!(*retry_after <= Duration::from_millis(200));
            assert_eq!(err.retry_after(), Some(*retry_after));
        }
        other => panic!("expected OriginUnavailable, got {other:?}"),
    }
    assert_eq!(
        pool.stats().total.cx_connect_fail,
        5,
        "no connect while open"
    );
    // The origin recovers: after the backoff, one probe closes the circuit.
    relay.refuse(false);
    until_ok(&pool, &uri).await;
    assert_eq!(pool.stats().total.cx_circuit_closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_killed_and_restarted_under_load() {
    let mut origin = RestartableOrigin::start(Options::plain()).await;
    let checkout = Duration::from_millis(500);
    let request_timeout = Duration::from_secs(2);
    let pool = builder()
        .checkout_timeout(checkout)
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Some(request_timeout))
        .connect_backoff(edgepool::core::BackoffConfig {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            failure_threshold: 3,
        })
        .build()
        .unwrap();
    let uri = origin.url("/?delay_ms=20");
    // Every request ends within its deadlines (checkout + connect + response);
    // `within` fails the test if one hangs past that bound with slack.
    let bound = checkout + Duration::from_secs(1) + request_timeout + Duration::from_secs(2);
    let run = |n: usize| {
        let (pool, uri) = (pool.clone(), uri.clone());
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (pool, uri) = (pool.clone(), uri.clone());
                tasks.spawn(async move { tokio::time::timeout(bound, fetch(&pool, &uri)).await });
            }
            let (mut ok, mut failed) = (0, Vec::new());
            while let Some(done) = tasks.join_next().await {
                match done
                    .expect("task")
                    .expect("a request waited past its deadline")
                {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }
    };
    let (ok, failed) = run(50).await;
    assert_eq!((ok, failed.len()), (50, 0));

    // Kill it mid-load.
    let load = tokio::spawn(run(100));
    eventually("requests in flight", || pool.stats().total.rq_active > 0).await;
    origin.stop();
    origin.relay().refuse(true);
    let (_, failed) = within("load during the outage", load).await.unwrap();
    for e in &failed {
        assert!(
            matches!(
                e.kind(),
                edgepool::ErrorKind::Origin | edgepool::ErrorKind::Unavailable
            ),
            "failures are typed origin errors: {e:?}"
        );
    }
    let (ok, failed) = run(20).await;
    assert_eq!(ok, 0, "the origin is down");
    assert!(
        failed
            .iter()
            .any(|e| matches!(e, Error::OriginUnavailable { .. })),
        "backoff observed: {failed:?}"
    );
    assert!(pool.stats().total.cx_circuit_opened >= 1);

    // Back: later requests succeed.
    origin.relay().refuse(false);
    origin.start_again().await;
    until_ok(&pool, &uri).await;
    let (ok, failed) = run(50).await;
    assert_eq!((ok, failed.len()), (50, 0), "{failed:?}");
}

#[tokio::test]
async fn a_blackholed_http2_connection_is_found_by_ping_and_closed() {
    use edgepool::health::DefaultHealthCheck;
    use edgepool::transport::http2::Http2;
    let origin = TestOrigin::start(Options {
        http2: true,
        ..Options::plain()
    })
    .await;
    let relay = ChaosRelay::start(origin.addr);
    let pool = Pool::builder(Http2::new())
        .ping_interval(Some(Duration::from_millis(100)))
        .health_check(DefaultHealthCheck {
            ping_timeout: Duration::from_millis(200),
        })
        .build()
        .unwrap();
    let uri = format!("http://{}/", relay.addr());
    let response = pool.request(get(&uri)).await.unwrap();
    response.into_body().collect().await.unwrap();
    // The peer goes silent: no request is in flight, only the PING notices.
    relay.blackhole(true);
    let p = pool.clone();
    eventually("the PING found the dead connection", move || {
        p.stats().total.cx_destroy.health_check == 1
    })
    .await;
    assert_eq!(pool.stats().total.cx_active, 0);
    relay.blackhole(false);
    let response = within("a request on a new connection", pool.request(get(&uri)))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
}
