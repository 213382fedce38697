//! The pool over HTTP/2: stream slots from the peer's SETTINGS, GOAWAY,
//! refused and reset streams, PING, ALPN auto. Against a raw h2 origin
//! whose responses wait at a gate (so concurrency is counted, not timed),
//! and against hyper's origin for bodies, TLS and ALPN.
#![cfg(all(feature = "http1", feature = "http2", feature = "tls"))]

mod support;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::auto::Auto;
use edgepool::transport::http2::Http2;
use edgepool::transport::{ConnEvent, ConnEvents, ConnState, Connection, Transport};
use edgepool::{ConnectionInfo, Error, Pool, Protocol};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use support::h2_origin::{H2Options, H2Origin};
use support::{Options, TestOrigin, certs, eventually, within};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri)
        .body(Empty::new())
        .expect("valid request")
}

/// What a test needs from a response: the server's connection number, the
/// pool's ConnectionInfo and the whole body.
struct Fetched {
    conn: String,
    info: ConnectionInfo,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn fetch<T: Transport>(
    pool: &Pool<T>,
    request: http::Request<
        impl Body<Data = Bytes, Error: Into<edgepool::BoxError>> + Send + 'static,
    >,
) -> Result<Fetched, Error> {
    let response = pool.request(request).await?;
    assert!(response.status().is_success(), "{}", response.status());
    let conn = response
        .headers()
        .get("x-conn-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let info = response
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .expect("ConnectionInfo");
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Fetched {
        conn,
        info,
        headers: parts.headers,
        body,
    })
}

/// Starts `n` GETs of `uri`, each on its own task.
fn spawn_gets(pool: &Pool<Http2>, uri: &str, n: usize) -> JoinSet<Result<Fetched, Error>> {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let (pool, uri) = (pool.clone(), uri.to_string());
        tasks.spawn(async move { fetch(&pool, get(&uri)).await });
    }
    tasks
}

/// Waits for every task and returns their results, failing on a panic.
async fn join_all(mut tasks: JoinSet<Result<Fetched, Error>>) -> Vec<Fetched> {
    let mut done = Vec::new();
    while let Some(joined) = within("requests", tasks.join_next()).await {
        done.push(joined.expect("request task").expect("request"));
    }
    done
}

fn gated(max_concurrent_streams: u32) -> H2Options {
    H2Options {
        max_concurrent_streams,
        gate_open: false,
        ..H2Options::default()
    }
}

/// A pool for a burst: checkouts may wait while a gate holds responses.
fn burst_pool(transport: Http2) -> edgepool::PoolBuilder<Http2> {
    Pool::builder(transport).checkout_timeout(Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_requests_to_a_100_stream_origin_open_exactly_ten_connections() {
    let origin = H2Origin::start(gated(100)).await;
    let pool = burst_pool(Http2::new()).build().unwrap();
    let tasks = spawn_gets(&pool, &origin.url("/"), 1000);
    eventually("1000 streams in flight", || origin.in_flight() == 1000).await;
    assert_eq!(origin.connections_accepted(), 10);
    assert_eq!(origin.in_flight_per_connection(), vec![100; 10]);
    origin.open_gate();
    let done = join_all(tasks).await;
    assert_eq!(done.len(), 1000);
    assert!(done.iter().all(|f| &f.body[..] == b"hello"));
    assert!(done.iter().all(|f| f.info.protocol == Protocol::Http2));
    let s = pool.stats().total;
    assert_eq!(
        (s.rq_total, s.cx_total, s.rq_active),
        (1000, 10, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_requests_queue_on_one_connection_when_told_not_to_open_more() {
    let origin = H2Origin::start(gated(100)).await;
    let pool = burst_pool(Http2::new())
        .open_more_when_saturated(false)
        .max_pending_per_origin(1000)
        .build()
        .unwrap();
    let tasks = spawn_gets(&pool, &origin.url("/"), 1000);
    let p = pool.clone();
    eventually("100 in flight, 900 queued", || {
        origin.in_flight() == 100 && p.stats().total.rq_pending == 900
    })
    .await;
    assert_eq!(origin.connections_accepted(), 1);
    origin.open_gate();
    let done = join_all(tasks).await;
    assert_eq!(done.len(), 1000);
    assert!(done.iter().all(|f| f.conn == "1"));
    assert_eq!(origin.connections_accepted(), 1);
    assert_eq!(origin.high_water_per_connection(), vec![100]);
    let s = pool.stats().total;
    assert_eq!(
        (s.rq_total, s.cx_total, s.rq_active, s.rq_pending),
        (1000, 1, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_lowering_its_stream_limit_mid_flight_is_respected() {
    let origin = H2Origin::start(gated(100)).await;
    let pool = burst_pool(Http2::new()).build().unwrap();
    let first = spawn_gets(&pool, &origin.url("/"), 100);
    eventually("100 in flight on one connection", || {
        origin.in_flight() == 100
    })
    .await;
    assert_eq!(origin.connections_accepted(), 1);

    origin.set_max_concurrent_streams(10);
    // The client's SETTINGS ACK is written in the same poll that applies
    // the new limit and reports it to the pool, before any response below
    // can be read: the pool knows the new limit before a slot frees.
    eventually("the client applied the new limit", || {
        origin.settings_acks() == 1
    })
    .await;
    origin.reset_high_water();
    origin.open_gate();
    join_all(first).await;

    origin.close_gate();
    let second = spawn_gets(&pool, &origin.url("/"), 100);
    eventually("100 more in flight", || origin.in_flight() == 100).await;
    let per_conn = origin.in_flight_per_connection();
    assert_eq!(per_conn[0], 10, "the lowered connection: {per_conn:?}");
    assert!(per_conn.iter().all(|&n| n <= 10), "{per_conn:?}");
    origin.open_gate();
    let done = join_all(second).await;
    assert_eq!(done.len(), 100);
    let high = origin.high_water_per_connection();
    assert!(high.iter().all(|&n| n <= 10), "after lowering: {high:?}");
    assert_eq!(pool.stats().total.rq_active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn goaway_during_200_in_flight_requests_loses_none() {
    let origin = H2Origin::start(gated(100)).await;
    let pool = burst_pool(Http2::new()).build().unwrap();
    let tasks = spawn_gets(&pool, &origin.url("/"), 200);
    eventually("200 in flight", || origin.in_flight() == 200).await;
    assert_eq!(origin.connections_accepted(), 2);

    // Each connection's first 50 streams were processed; its other 50 were
    // not (RFC 9113 §6.8), so the pool must send them again elsewhere.
    origin.goaway_keeping(50);
    let p = pool.clone();
    eventually("the refused half was retried", || {
        p.stats().total.rq_retry == 100 && origin.streams_seen() == 300
    })
    .await;
    assert!(origin.connections_accepted() >= 3);
    origin.open_gate();
    let done = join_all(tasks).await;
    assert_eq!(done.len(), 200);
    let retried_on_new = done
        .iter()
        .filter(|f| f.conn != "1" && f.conn != "2")
        .count();
    assert_eq!(retried_on_new, 100);
    let s = pool.stats().total;
    assert_eq!((s.rq_retry, s.rq_active), (100, 0), "{s:?}");
}

#[tokio::test]
async fn a_graceful_goaway_drains_the_connection_and_new_requests_go_elsewhere() {
    let origin = H2Origin::start(gated(100)).await;
    let pool = burst_pool(Http2::new()).build().unwrap();
    let held = spawn_gets(&pool, &origin.url("/"), 50);
    eventually("50 in flight", || origin.in_flight() == 50).await;
    origin.graceful_goaway();
    let p = pool.clone();
    eventually("the pool heard the GOAWAY", || {
        p.stats().total.cx_retired.peer == 1
    })
    .await;
    let late = spawn_gets(&pool, &origin.url("/"), 1);
    eventually("the late request is in flight", || origin.in_flight() == 51).await;
    assert_eq!(origin.connections_accepted(), 2);
    origin.open_gate();
    let held = join_all(held).await;
    assert!(
        held.iter().all(|f| f.conn == "1"),
        "in-flight streams finish"
    );
    let late = join_all(late).await;
    assert_eq!(late[0].conn, "2");
    let p = pool.clone();
    eventually("the drained connection is closed", || {
        let s = p.stats().total;
        s.cx_active == 1 && s.cx_draining == 0
    })
    .await;
}

#[tokio::test]
async fn a_refused_stream_is_retried_and_counted() {
    let origin = H2Origin::start(H2Options::default()).await;
    let pool = Pool::builder(Http2::new()).build().unwrap();
    fetch(&pool, get(&origin.url("/"))).await.unwrap();
    origin.refuse_next(1);
    let fetched = within("refused then retried", fetch(&pool, get(&origin.url("/"))))
        .await
        .unwrap();
    assert_eq!(&fetched.body[..], b"hello");
    assert_eq!(origin.streams_seen(), 3);
    let s = pool.stats().total;
    assert_eq!((s.rq_retry, s.rq_active), (1, 0), "{s:?}");
}

#[tokio::test]
async fn a_reset_stream_fails_its_request_and_frees_its_slot() {
    let origin = H2Origin::start(H2Options::default()).await;
    let pool = Pool::builder(Http2::new()).build().unwrap();
    let first = fetch(&pool, get(&origin.url("/"))).await.unwrap();
    let post = http::Request::post(origin.url("/reset"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = within("reset", pool.request(post)).await.unwrap_err();
    assert!(matches!(err, Error::Request { .. }), "{err:?}");
    assert!(err.is_origin_failure());
    let reason = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<h2::Error>())
    .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::INTERNAL_ERROR), "{err}");
    let s = pool.stats().total;
    assert_eq!(s.rq_active, 0, "the slot is free again: {s:?}");
    let next = fetch(&pool, get(&origin.url("/"))).await.unwrap();
    assert_eq!(next.conn, first.conn, "same connection");
    assert!(next.info.reused);
    assert_eq!(pool.stats().total.cx_total, 1);
}

#[tokio::test]
async fn ping_measures_a_round_trip_and_survives_a_cancelled_one() {
    let origin = H2Origin::start(H2Options::default()).await;
    let pool = Pool::builder(Http2::new()).build().unwrap();
    let lease = within("checkout", pool.checkout(&origin.origin()))
        .await
        .unwrap();
    let conn = lease.connection();
    let rtt = within("ping", conn.ping()).await.unwrap();
    assert!(rtt < support::WAIT);
    // A caller that stops waiting does not leave a PING outstanding.
    let _ = tokio::time::timeout(Duration::ZERO, conn.ping()).await;
    within("ping after a cancelled one", conn.ping())
        .await
        .unwrap();
    lease.release();
}

#[tokio::test]
async fn an_origin_allowing_zero_streams_gets_nothing_and_waiters_time_out() {
    let origin = H2Origin::start(H2Options {
        max_concurrent_streams: 0,
        ..H2Options::default()
    })
    .await;
    let pool = Pool::builder(Http2::new())
        .checkout_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut tasks = JoinSet::new();
    for _ in 0..3 {
        let (pool, uri) = (pool.clone(), origin.url("/"));
        tasks.spawn(async move { pool.request(get(&uri)).await.map(|_| ()) });
    }
    while let Some(joined) = within("waiters", tasks.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, Error::CheckoutTimeout { .. }), "{err:?}");
    }
    assert_eq!(origin.streams_seen(), 0);
    let s = pool.stats().total;
    assert_eq!((s.rq_active, s.rq_pending, s.rq_pending_timeout), (0, 0, 3));
}

#[tokio::test]
async fn zero_max_concurrent_streams_is_rejected_naming_the_field() {
    let err = Http2::new().max_concurrent_streams(0).unwrap_err();
    match &err {
        Error::InvalidConfig { field, value, .. } => {
            assert_eq!((*field, value.as_str()), ("max_concurrent_streams", "0"));
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(err.is_invalid_input());
    assert!(
        err.to_string().contains("max_concurrent_streams = 0"),
        "{err}"
    );
    let transport = Http2::new().max_concurrent_streams(7).unwrap();
    assert_eq!(transport.expected_slots(), 7);
}

#[tokio::test]
async fn the_connection_reports_new_limits_then_draining_then_closed() {
    let origin = H2Origin::start(H2Options {
        max_concurrent_streams: 50,
        ..H2Options::default()
    })
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let events = ConnEvents::new(move |event| {
        let _ = tx.send(event);
    });
    let transport = Http2::new().max_concurrent_streams(40).unwrap();
    let conn = within("connect", transport.connect(&origin.origin(), events))
        .await
        .unwrap();
    // Known at connect: the peer's 50, capped by our 40.
    assert_eq!(conn.slots(), 40);
    assert_eq!(conn.peer_max_concurrent_streams(), 50);
    assert_eq!(conn.state(), ConnState::Ready);
    origin.set_max_concurrent_streams(10);
    let event = within("slots event", rx.recv()).await;
    assert_eq!(event, Some(ConnEvent::SlotsChanged(10)));
    assert_eq!(conn.slots(), 10);
    origin.graceful_goaway();
    assert_eq!(
        within("draining", rx.recv()).await,
        Some(ConnEvent::Draining)
    );
    assert_ne!(conn.state(), ConnState::Ready);
    assert_eq!(within("closed", rx.recv()).await, Some(ConnEvent::Closed));
    assert_eq!(conn.state(), ConnState::Closed);
    // Nothing can have been sent on it, so the request comes back whole.
    let err = conn
        .send(support::get(&origin.url("/after")))
        .await
        .unwrap_err();
    let unsent = err.unsent.expect("handed back");
    assert_eq!(unsent.uri().to_string(), origin.url("/after"));
}

/// A request body of a few chunks and trailers, streamed (not in memory).
struct Chunks(VecDeque<Frame<Bytes>>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_within_flow_control_over_h2c() {
    let origin = TestOrigin::start(Options {
        http2: true,
        ..Options::plain()
    })
    .await;
    let pool = Pool::builder(Http2::new()).build().unwrap();

    // Larger than the 2 MiB stream window: stalls unless credit goes back.
    let big = within(
        "big response",
        fetch(&pool, get(&origin.url("/?bytes=5000000"))),
    )
    .await
    .unwrap();
    assert_eq!(big.body.len(), 5_000_000);
    assert_eq!(big.headers["x-seen-version"], "HTTP/2.0");

    // Larger than the origin's windows: sent as the origin grants credit.
    let upload = http::Request::post(origin.url("/"))
        .body(Full::new(Bytes::from(vec![7u8; 3 << 20])))
        .unwrap();
    let up = within("big upload", fetch(&pool, upload)).await.unwrap();
    assert_eq!(up.headers["x-body-bytes"], (3 << 20).to_string().as_str());

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    let frames = VecDeque::from([
        Frame::data(Bytes::from_static(b"hello ")),
        Frame::data(Bytes::from_static(b"streamed ")),
        Frame::data(Bytes::from_static(b"world")),
        Frame::trailers(trailers),
    ]);
    let streamed = http::Request::post(origin.url("/"))
        .body(Chunks(frames))
        .unwrap();
    let s = within("streamed upload", fetch(&pool, streamed))
        .await
        .unwrap();
    assert_eq!(s.headers["x-body-bytes"], "20");

    // What a proxy forwards from HTTP/1.1: h2 refuses these unless stripped.
    let hop = http::Request::get(origin.url("/hop"))
        .header("connection", "keep-alive, x-hop")
        .header("keep-alive", "timeout=5")
        .header("x-hop", "1")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    within("hop-by-hop headers", fetch(&pool, hop))
        .await
        .unwrap();
    // All on one connection.
    assert_eq!(origin.connections_accepted(), 1);
    assert_eq!(pool.stats().total.cx_total, 1);
}

#[tokio::test]
async fn http2_over_tls_requires_the_server_to_select_h2() {
    let h2 = H2Origin::start(H2Options {
        tls: true,
        ..H2Options::default()
    })
    .await;
    let pool = Pool::builder(Http2::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    let fetched = within("h2 over TLS", fetch(&pool, get(&h2.url("/"))))
        .await
        .unwrap();
    assert_eq!(fetched.info.protocol, Protocol::Http2);

    let h1_only = TestOrigin::start(Options::tls()).await;
    let err = within("h1-only TLS", pool.request(get(&h1_only.url("/"))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn alpn_auto_picks_h2_or_http1_per_origin_and_remembers() {
    let h2 = TestOrigin::start(Options {
        http2: true,
        ..Options::tls()
    })
    .await;
    let h1 = TestOrigin::start(Options::tls()).await;
    let pool = Pool::builder(Auto::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    assert_eq!(pool.transport().negotiated(&h2.origin()), None);

    for _ in 0..2 {
        let via_h2 = within("h2 origin", fetch(&pool, get(&h2.url("/"))))
            .await
            .unwrap();
        assert_eq!(via_h2.info.protocol, Protocol::Http2);
        assert_eq!(via_h2.headers["x-seen-version"], "HTTP/2.0");
        let via_h1 = within("h1 origin", fetch(&pool, get(&h1.url("/"))))
            .await
            .unwrap();
        assert_eq!(via_h1.info.protocol, Protocol::Http1);
        assert_eq!(via_h1.headers["x-seen-version"], "HTTP/1.1");
    }
    assert_eq!(
        pool.transport().negotiated(&h2.origin()),
        Some(Protocol::Http2)
    );
    assert_eq!(
        pool.transport().negotiated(&h1.origin()),
        Some(Protocol::Http1)
    );
    assert_eq!(
        (h2.connections_accepted(), h1.connections_accepted()),
        (1, 1)
    );
    let s = pool.stats().total;
    assert_eq!((s.cx_total, s.rq_reused), (2, 2));
}
