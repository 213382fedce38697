//! The pool over HTTP/1.1, against an in-process hyper origin, plaintext and TLS.

mod support;

use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http1::Http1;
use edgepool::{ConnectionInfo, Error, Pool, PoolBuilder};
use http_body_util::{BodyExt, Empty};
use support::{Options, TestOrigin, certs, eventually, within};

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri)
        .body(Empty::new())
        .expect("valid request")
}

fn builder(origin: &TestOrigin) -> PoolBuilder<Http1> {
    let transport = if origin.scheme() == "https" {
        Http1::with_tls(certs::test_ca_tls())
    } else {
        Http1::new()
    };
    Pool::builder(transport)
}

/// Sends a GET and reads the whole body; returns the server's connection
/// number and the pool's ConnectionInfo.
async fn fetch(pool: &Pool<Http1>, uri: &str) -> Result<(String, ConnectionInfo), Error> {
    let response = within(uri, pool.request(get(uri))).await?;
    assert!(response.status().is_success(), "{}", response.status());
    let conn = response.headers()["x-conn-id"]
        .to_str()
        .unwrap()
        .to_string();
    let info = response
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .expect("ConnectionInfo");
    within("body", response.into_body().collect()).await?;
    Ok((conn, info))
}

async fn sequential_requests_reuse_one_connection(options: Options) {
    let origin = TestOrigin::start(options).await;
    let pool = builder(&origin).build().unwrap();
    let mut seen = Vec::new();
    for i in 0..10 {
        let (conn, info) = fetch(&pool, &origin.url("/")).await.unwrap();
        assert_eq!(info.reused, i > 0, "request {i}");
        assert_eq!(info.protocol, edgepool::Protocol::Http1);
        seen.push(conn);
    }
    assert!(
        seen.iter().all(|c| c == &seen[0]),
        "one server connection: {seen:?}"
    );
    assert_eq!(origin.connections_accepted(), 1);
    let s = pool.stats().total;
    assert_eq!((s.rq_total, s.rq_reused, s.cx_total), (10, 9, 1));
    assert_eq!(s.reuse_ratio(), 0.9);
    assert_eq!((s.rq_active, s.cx_active, s.cx_idle), (0, 1, 1));
}

#[tokio::test]
async fn plaintext_requests_reuse_one_connection() {
    sequential_requests_reuse_one_connection(Options::plain()).await;
}

#[tokio::test]
async fn tls_requests_reuse_one_connection() {
    sequential_requests_reuse_one_connection(Options::tls()).await;
}

#[tokio::test]
async fn host_header_and_origin_form_reach_the_origin() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let response = pool.request(get(&origin.url("/a/b?c=d"))).await.unwrap();
    assert_eq!(response.headers()["x-seen-uri"], "/a/b?c=d");
    assert_eq!(
        response.headers()["x-seen-host"],
        origin.addr.to_string().as_str()
    );
}

#[tokio::test]
async fn concurrency_is_bounded_by_max_connections() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin)
        .max_connections_per_origin(3)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let pool = pool.clone();
        let uri = origin.url("/?delay_ms=20");
        tasks.spawn(async move { fetch(&pool, &uri).await.map(|_| ()) });
    }
    while let Some(done) = within("requests", tasks.join_next()).await {
        done.unwrap().unwrap();
    }
    assert!(
        origin.connections_accepted() <= 3,
        "{}",
        origin.connections_accepted()
    );
    let s = pool.stats().total;
    assert_eq!(s.rq_total, 30);
    assert!(s.cx_total <= 3);
    assert_eq!(
        s.rq_total - s.rq_reused,
        s.cx_total,
        "every request not reused opened a connection"
    );
    assert_eq!((s.rq_active, s.rq_pending), (0, 0));
}

#[tokio::test]
async fn a_waiter_times_out_with_a_typed_error_naming_the_origin() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin)
        .max_connections_per_origin(1)
        .checkout_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    // Holds the only connection for far longer than the waiter's deadline.
    let slow = tokio::spawn({
        let (pool, uri) = (pool.clone(), origin.url("/?delay_ms=30000"));
        async move { pool.request(get(&uri)).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("the slow request holds the connection", move || {
        p.stats().total.rq_active == 1
    })
    .await;
    let err = within("waiter", pool.request(get(&origin.url("/"))))
        .await
        .unwrap_err();
    match &err {
        Error::CheckoutTimeout { origin: o, waited } => {
            assert_eq!(o, &origin.origin().to_string());
            assert!(*waited >= Duration::from_millis(100), "{waited:?}");
        }
        other => panic!("expected CheckoutTimeout, got {other:?}"),
    }
    assert!(err.is_pool_full());
    assert_eq!(pool.stats().total.rq_pending_timeout, 1);
    slow.abort();
}

#[tokio::test]
async fn a_full_pending_queue_overflows_at_once() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin)
        .max_connections_per_origin(1)
        .max_pending_per_origin(1)
        .build()
        .unwrap();
    let uri = origin.url("/?delay_ms=30000");
    let holder = tokio::spawn({
        let (pool, uri) = (pool.clone(), uri.clone());
        async move { pool.request(get(&uri)).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("the holder has the connection", move || {
        p.stats().total.rq_active == 1
    })
    .await;
    let waiter = tokio::spawn({
        let (pool, uri) = (pool.clone(), uri.clone());
        async move { pool.request(get(&uri)).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("one request queued", move || {
        p.stats().total.rq_pending == 1
    })
    .await;
    let err = within("overflow", pool.request(get(&uri)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PendingOverflow { max_pending: 1, .. }),
        "{err:?}"
    );
    assert_eq!(pool.stats().total.rq_pending_overflow, 1);
    // A cancelled waiter leaves the queue: the gauge goes back down.
    waiter.abort();
    let p = pool.clone();
    eventually("the cancelled waiter is gone", move || {
        p.stats().total.rq_pending == 0
    })
    .await;
    holder.abort();
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin)
        .max_connections_per_origin(1)
        .build()
        .unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let first = tokio::spawn({
        let (pool, uri) = (pool.clone(), origin.url("/?delay_ms=50"));
        async move { fetch(&pool, &uri).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("first holds the connection", move || {
        p.stats().total.rq_active == 1
    })
    .await;
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (p, uri, order) = (pool.clone(), origin.url("/"), order.clone());
        waiters.push(tokio::spawn(async move {
            let response = p.request(get(&uri)).await?;
            order.lock().unwrap().push(i);
            response.into_body().collect().await?;
            Ok::<_, Error>(())
        }));
        let p = pool.clone();
        let queued = i + 1;
        eventually("waiter queued", move || {
            p.stats().total.rq_pending == queued
        })
        .await;
    }
    within("first", first).await.unwrap().unwrap();
    for w in waiters {
        within("waiter", w).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(origin.connections_accepted(), 1);
}

#[tokio::test]
async fn a_peer_closed_idle_connection_is_not_reused() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let (first, _) = fetch(&pool, &origin.url("/")).await.unwrap();
    origin.close_idle_connections();
    let p = pool.clone();
    eventually("the pool noticed the close", move || {
        p.stats().total.cx_active == 0
    })
    .await;
    let (second, info) = fetch(&pool, &origin.url("/")).await.unwrap();
    assert_ne!(first, second);
    assert!(!info.reused);
    let s = pool.stats().total;
    assert_eq!(s.cx_destroy.remote, 1);
    assert_eq!(s.cx_total, 2);
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let (a, _) = fetch(&pool, &origin.url("/?close=1")).await.unwrap();
    let (b, info) = fetch(&pool, &origin.url("/")).await.unwrap();
    assert_ne!(a, b);
    assert!(!info.reused);
    // Counted as `error` (the pool retired it) or `remote` (hyper's close
    // event got there first); either way exactly one connection was destroyed.
    assert_eq!(pool.stats().total.cx_destroy.total(), 1);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_the_connection() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let response = pool
        .request(get(&origin.url("/?bytes=1000000")))
        .await
        .unwrap();
    let first = response.headers()["x-conn-id"].clone();
    drop(response);
    let s = pool.stats().total;
    assert_eq!((s.rq_active, s.cx_destroy.error), (0, 1), "{s:?}");
    let (second, _) = fetch(&pool, &origin.url("/")).await.unwrap();
    assert_ne!(first.to_str().unwrap(), second);
}

#[tokio::test]
async fn a_refused_connect_fails_fast_with_a_typed_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let pool = Pool::builder(Http1::new()).build().unwrap();
    let err = within(
        "refused connect",
        pool.request(get(&format!("http://127.0.0.1:{port}/"))),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_origin_failure());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let s = pool.stats().total;
    assert_eq!((s.cx_connect_fail, s.rq_pending_failure), (1, 1));
    assert!(s.gauges_are_zero(), "{s:?}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let origin = TestOrigin::start(Options::tls()).await;
    // webpki roots only: the test CA is not trusted.
    let pool = Pool::builder(Http1::new()).build().unwrap();
    let err = within("tls", pool.request(get(&origin.url("/"))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_brings_every_gauge_to_zero_and_refuses_new_requests() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    for _ in 0..3 {
        fetch(&pool, &origin.url("/")).await.unwrap();
    }
    pool.shutdown();
    let s = pool.stats().total;
    assert!(s.gauges_are_zero(), "{s:?}");
    assert_eq!(s.cx_destroy.local, 1);
    let err = pool.request(get(&origin.url("/"))).await.unwrap_err();
    assert!(matches!(err, Error::Shutdown { .. }), "{err:?}");
    eventually("the origin saw the close", || {
        origin.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_reaped() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin)
        .idle_timeout(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    fetch(&pool, &origin.url("/")).await.unwrap();
    let p = pool.clone();
    eventually("the idle connection was closed", move || {
        p.stats().total.cx_destroy.idle_timeout == 1
    })
    .await;
    assert!(pool.stats().total.gauges_are_zero());
    eventually("the origin saw the close", || {
        origin.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn request_to_refuses_a_uri_for_another_origin() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let err = pool
        .request_to(&origin.origin(), get("http://other.example/"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    // An origin-form URI is completed with the origin.
    let response = pool.request_to(&origin.origin(), get("/x")).await.unwrap();
    assert_eq!(response.headers()["x-seen-uri"], "/x");
}

#[test]
fn bad_configuration_is_rejected_naming_the_field() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cases: [(PoolBuilder<Http1>, &str); 3] = [
        (
            Pool::builder(Http1::new()).max_connections_per_origin(0),
            "max_connections_per_origin = 0",
        ),
        (
            Pool::builder(Http1::new()).checkout_timeout(Duration::ZERO),
            "checkout_timeout = 0ns",
        ),
        (
            Pool::builder(Http1::new()).idle_timeout(Some(Duration::ZERO)),
            "idle_timeout = 0ns",
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().unwrap_err();
        assert!(err.is_invalid_input());
        assert!(
            err.to_string().contains(expected),
            "{err} should name {expected}"
        );
    }
}

#[test]
fn building_outside_a_runtime_is_a_typed_error() {
    let err = Pool::builder(Http1::new()).build().unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}

#[test]
fn the_reaper_stops_when_the_last_handle_is_dropped() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let pool = Pool::builder(Http1::new()).build().unwrap();
        let clone = pool.clone();
        tokio::task::yield_now().await;
        assert_eq!(metrics.num_alive_tasks(), before + 1, "the reaper runs");
        drop(pool);
        tokio::task::yield_now().await;
        assert_eq!(metrics.num_alive_tasks(), before + 1, "a clone keeps it");
        drop(clone);
        eventually("the reaper stopped", || metrics.num_alive_tasks() == before).await;
    });
}

#[tokio::test]
async fn a_get_racing_the_peer_close_never_fails() {
    // No waiting for the close event: whichever of the pool's defences sees
    // it first (the close event, the state check at lend time, the transport
    // handing back an unsent request, or the idempotent retry on a fresh
    // connection), every GET succeeds (hyper #2136).
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    for i in 0..50 {
        fetch(&pool, &origin.url("/"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        origin.close_idle_connections();
    }
    let s = pool.stats().total;
    assert_eq!(s.rq_active, 0);
    assert!(s.cx_total >= 2, "{s:?}");
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_not_retried() {
    // A POST races the origin closing its connection: the error comes back
    // rather than risk sending it twice. (The race is not always lost; the
    // assertion is that no POST was ever sent twice.)
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let mut failures = 0usize;
    for _ in 0..30 {
        fetch(&pool, &origin.url("/")).await.unwrap();
        origin.close_idle_connections();
        let post = http::Request::post(origin.url("/"))
            .body(http_body_util::Full::new(Bytes::from("x")))
            .unwrap();
        match within("post", pool.request(post)).await {
            Ok(r) => drop(within("body", r.into_body().collect()).await),
            Err(e) => {
                assert!(e.is_origin_failure(), "{e:?}");
                failures += 1;
            }
        }
    }
    let s = pool.stats().total;
    // Retries only ever come from requests the transport proved unsent.
    assert!(s.rq_retry <= 30 + failures as u64, "{s:?}");
    assert_eq!(
        origin.requests(),
        30 + (30 - failures),
        "no POST reached the origin twice"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let slow = tokio::spawn({
        let (pool, uri) = (pool.clone(), origin.url("/?delay_ms=200"));
        async move { fetch(&pool, &uri).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("the request is in flight", move || {
        p.stats().total.rq_active == 1
    })
    .await;
    let finished = within(
        "graceful shutdown",
        pool.shutdown_gracefully(Duration::from_secs(20)),
    )
    .await;
    assert!(finished, "everything finished within the grace period");
    within("slow request", slow).await.unwrap().unwrap();
    let s = pool.stats().total;
    assert!(s.gauges_are_zero(), "{s:?}");
    assert_eq!(s.cx_destroy.drained, 1);
}

#[tokio::test]
async fn graceful_shutdown_closes_what_outlives_the_grace_period() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = builder(&origin).build().unwrap();
    let stuck = tokio::spawn({
        let (pool, uri) = (pool.clone(), origin.url("/?delay_ms=60000"));
        async move { pool.request(get(&uri)).await.map(|_| ()) }
    });
    let p = pool.clone();
    eventually("the request is in flight", move || {
        p.stats().total.rq_active == 1
    })
    .await;
    let finished = within(
        "shutdown",
        pool.shutdown_gracefully(Duration::from_millis(50)),
    )
    .await;
    assert!(!finished);
    let err = within("stuck request", stuck).await.unwrap().unwrap_err();
    assert!(err.is_origin_failure(), "{err:?}");
    let s = pool.stats().total;
    assert!(s.gauges_are_zero(), "{s:?}");
    assert_eq!(s.cx_destroy.local, 1);
    eventually("the origin saw the close", || {
        origin.open_connections() == 0
    })
    .await;
}
