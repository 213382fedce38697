//! The pool over HTTP/3, against an in-process quinn + h3 origin on 127.0.0.1.
#![cfg(feature = "http3")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http3::{EarlyData, EarlyDataSafe, Http3};
use edgepool::{Connection, ConnectionInfo, Error, Origin, Pool, Protocol};
use http_body_util::{BodyExt, Empty, Full};
use support::h3_origin::{H3Options, H3Origin, UdpRelay};
use support::{certs, eventually, within};

/// A transport on loopback that trusts the test CA.
fn transport() -> edgepool::transport::http3::Http3Builder {
    Http3::builder()
        .bind_address(SocketAddr::from(([127, 0, 0, 1], 0)))
        .tls(certs::test_ca_tls())
}

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri)
        .body(Empty::new())
        .expect("valid request")
}

/// What a finished exchange looked like.
#[derive(Debug)]
struct Answer {
    conn: String,
    early: bool,
    server_saw_early: bool,
    info: ConnectionInfo,
    body: Bytes,
}

async fn fetch<B>(pool: &Pool<Http3>, request: http::Request<B>) -> Result<Answer, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<edgepool::BoxError>,
{
    let uri = request.uri().to_string();
    let response = within(&uri, pool.request(request)).await?;
    assert!(response.status().is_success(), "{}", response.status());
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .expect("ascii header")
            .to_string()
    };
    let conn = header("x-conn-id");
    let server_saw_early = header("x-early-data") == "1";
    let early = response
        .extensions()
        .get::<EarlyData>()
        .expect("EarlyData extension")
        .0;
    let info = response
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .expect("ConnectionInfo");
    let body = within("body", response.into_body().collect())
        .await?
        .to_bytes();
    Ok(Answer {
        conn,
        early,
        server_saw_early,
        info,
        body,
    })
}

/// Shuts `server` down, waits until `pool` has seen its one connection
/// close, and starts a new server on the same port: the same certificate,
/// new session-ticket keys, so tickets from the old one do not resume.
async fn restart_on_the_same_port(server: H3Origin, pool: &Pool<Http3>) -> H3Origin {
    let port = server.addr().port();
    server.shut_down().await;
    eventually("the pool sees the close", || {
        pool.stats().total.cx_destroy.remote == 1
    })
    .await;
    H3Origin::start(H3Options {
        port,
        ..H3Options::default()
    })
    .await
}

#[tokio::test]
async fn requests_reuse_one_connection_and_stream_bodies() {
    let server = H3Origin::start(H3Options::default()).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    for i in 0..5 {
        let answer = fetch(&pool, get(&format!("{}/r{i}", server.url())))
            .await
            .unwrap();
        assert_eq!(answer.conn, "1");
        assert_eq!(answer.info.protocol, Protocol::Http3);
        assert_eq!(answer.info.reused, i > 0, "request {i}");
        assert!(!answer.early, "a full handshake sends nothing early");
        assert_eq!(&answer.body[..], b"hello");
    }
    // A request body goes up, a large response body comes down.
    let post = http::Request::post(format!("{}/upload?bytes=300000", server.url()))
        .body(Full::new(Bytes::from(vec![7u8; 200_000])))
        .unwrap();
    let response = within("post", pool.request(post)).await.unwrap();
    assert_eq!(response.headers()["x-body-bytes"], "200000");
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 300_000);

    // The health check's PING: a real round trip on the idle connection.
    let origin = Origin::parse(&server.url()).unwrap();
    let lease = within("checkout", pool.checkout(&origin)).await.unwrap();
    assert!(!lease.connection().used_0rtt());
    assert_eq!(lease.connection().open_streams(), 0);
    within("ping", lease.connection().ping()).await.unwrap();
    lease.release();

    assert_eq!(server.connections(), 1);
    let stats = pool.stats().total;
    assert_eq!(stats.cx_total, 1);
    // Six requests and the checkout, all but the first on a used connection.
    assert_eq!(stats.rq_total, 7);
    assert_eq!(stats.rq_reused, 6);
    assert_eq!(stats.rq_active, 0);
}

#[tokio::test]
async fn a_forced_shutdown_aborts_the_quic_connection() {
    let server = H3Origin::start(H3Options::default()).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    server.close_gate();
    let stuck = {
        let pool = pool.clone();
        let uri = format!("{}/stuck?gate=1", server.url());
        tokio::spawn(async move { fetch(&pool, get(&uri)).await })
    };
    eventually("the request at the server", || server.in_flight() == 1).await;
    let finished = within(
        "forced shutdown",
        pool.shutdown_gracefully(Duration::from_millis(50)),
    )
    .await;
    assert!(!finished, "the gated request could not finish");
    let err = within("aborted request", stuck).await.unwrap().unwrap_err();
    assert!(err.is_origin_failure(), "{err:?}");
    eventually("the server sees the close", || {
        server.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn requests_beyond_the_stream_limit_open_more_connections() {
    let server = H3Origin::start(H3Options {
        max_concurrent_streams: 5,
        ..H3Options::default()
    })
    .await;
    let transport = transport().max_concurrent_streams(5).build().unwrap();
    let pool = Pool::builder(transport).build().unwrap();
    server.close_gate();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pool = pool.clone();
        let uri = format!("{}/g{i}?gate=1", server.url());
        tasks.push(tokio::spawn(async move { fetch(&pool, get(&uri)).await }));
    }
    // All twenty at the server at once: only possible across 4 connections.
    eventually("20 requests in flight at the server", || {
        server.in_flight() == 20
    })
    .await;
    assert!(server.connections() >= 2, "{}", server.connections());
    server.open_gate();
    for task in tasks {
        within("gated request", task).await.unwrap().unwrap();
    }
    assert_eq!(pool.stats().total.cx_total as usize, server.connections());
}

#[tokio::test]
async fn a_peer_limit_below_the_configured_one_is_learned_without_loss() {
    let server = H3Origin::start(H3Options {
        max_concurrent_streams: 5,
        ..H3Options::default()
    })
    .await;
    // The transport assumes 100 streams; the server grants 5.
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    server.close_gate();
    let spawn = |n: usize, tag: &str| {
        (0..n)
            .map(|i| {
                let pool = pool.clone();
                let uri = format!("{}/{tag}{i}?gate=1", server.url());
                tokio::spawn(async move { fetch(&pool, get(&uri)).await })
            })
            .collect::<Vec<_>>()
    };
    // Eight requests on one connection: five streams open, three wait in
    // QUIC for credit, and the connection learns the limit.
    let first = spawn(8, "a");
    eventually("5 requests at the server", || server.in_flight() == 5).await;
    server.open_gate();
    for task in first {
        within("first wave", task).await.unwrap().unwrap();
    }
    assert_eq!(server.connections(), 1);

    // Now ten: the first connection takes five, a second one the rest,
    // so all ten reach the server together.
    server.close_gate();
    let second = spawn(10, "b");
    eventually("10 requests at the server", || server.in_flight() == 10).await;
    assert_eq!(server.connections(), 2);
    server.open_gate();
    for task in second {
        within("second wave", task).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_new_connection_to_a_known_origin_uses_0rtt_for_safe_requests_only() {
    let server = H3Origin::start(H3Options::default()).await;
    // The relay holds the server's packets for 50 ms, so the server sees
    // early data well before the client's Finished (see h3_origin's docs).
    let relay = UdpRelay::start(server.addr(), Duration::from_millis(50)).await;
    let transport = transport().max_concurrent_streams(2).build().unwrap();
    let pool = Pool::builder(transport).build().unwrap();

    let first = fetch(&pool, get(&format!("{}/first", relay.url())))
        .await
        .unwrap();
    assert!(!first.early && !first.server_saw_early);
    // The session tickets come right after the handshake, ahead of the
    // first response; this pause only covers a reordered datagram.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Hold both slots of the first connection...
    server.close_gate();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let pool = pool.clone();
            let uri = format!("{}/held{i}?gate=1", relay.url());
            tokio::spawn(async move { fetch(&pool, get(&uri)).await })
        })
        .collect();
    eventually("2 held requests", || server.in_flight() == 2).await;

    // ...so these two open a second connection, which resumes the session.
    let get_task = {
        let pool = pool.clone();
        let uri = format!("{}/early", relay.url());
        tokio::spawn(async move { fetch(&pool, get(&uri)).await })
    };
    let post_task = {
        let pool = pool.clone();
        let post = http::Request::post(format!("{}/late", relay.url()))
            .body(Full::new(Bytes::from_static(b"not replay-safe")))
            .unwrap();
        tokio::spawn(async move { fetch(&pool, post).await })
    };
    let early_get = within("GET", get_task).await.unwrap().unwrap();
    let late_post = within("POST", post_task).await.unwrap().unwrap();
    server.open_gate();
    for task in held {
        within("held", task).await.unwrap().unwrap();
    }

    assert_eq!(early_get.conn, "2");
    assert!(early_get.early, "the GET went as early data");
    assert!(early_get.server_saw_early, "and the server saw it so");
    assert_eq!(late_post.conn, "2");
    assert!(!late_post.early, "a POST waits for the handshake");
    assert!(!late_post.server_saw_early);
    let seen = server.seen();
    assert!(
        seen.iter()
            .all(|s| s.method != http::Method::POST || !s.early),
        "{seen:?}"
    );
    assert_eq!(server.early_requests(), 1, "{seen:?}");
    assert_eq!(server.connections(), 2);
    assert_eq!(
        pool.stats().total.cx_connect_0rtt,
        1,
        "the second connection was made with 0-RTT"
    );
}

#[tokio::test]
async fn a_marked_request_may_go_early_and_a_rejected_0rtt_loses_nothing() {
    let server = H3Origin::start(H3Options::default()).await;
    let transport = transport().build().unwrap();
    let pool = Pool::builder(transport.clone())
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    fetch(&pool, get(&format!("{}/ticket", server.url())))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Restart the server on the same port: the new one cannot resume the
    // old session, so it rejects the early data of the next connection.
    let server = restart_on_the_same_port(server, &pool).await;

    // A POST marked replay-safe goes early, is rejected with the early
    // data, comes back unsent and succeeds on a fresh connection.
    let mut post = http::Request::post(format!("{}/marked", server.url()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    post.extensions_mut().insert(EarlyDataSafe);
    let answer = fetch(&pool, post).await.unwrap();
    assert!(!answer.early, "the successful attempt was not early");
    assert_eq!(
        server.requests(),
        1,
        "the rejected attempt never reached the server"
    );
    assert!(pool.stats().total.rq_retry >= 1);
}

#[tokio::test]
async fn rebinding_mid_traffic_loses_no_request() {
    let server = H3Origin::start(H3Options::default()).await;
    let transport = transport().build().unwrap();
    let pool = Pool::builder(transport.clone()).build().unwrap();
    let before = transport.local_addr().unwrap();

    let mut workers = Vec::new();
    for w in 0..4 {
        let pool = pool.clone();
        let base = server.url();
        workers.push(tokio::spawn(async move {
            for i in 0..25 {
                let answer = fetch(&pool, get(&format!("{base}/w{w}/{i}?delay_ms=2"))).await?;
                assert_eq!(&answer.body[..], b"hello");
            }
            Ok::<(), Error>(())
        }));
    }
    eventually("traffic under way", || server.requests() >= 20).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    transport.rebind(socket).unwrap();
    let after = transport.local_addr().unwrap();
    assert_ne!(before, after);
    for worker in workers {
        within("worker", worker).await.unwrap().unwrap();
    }
    // One connection throughout, seen from both addresses.
    assert_eq!(server.connections(), 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().any(|s| s.remote == before), "{before}");
    assert!(seen.iter().any(|s| s.remote == after), "{after}");
    assert_eq!(pool.stats().total.cx_total, 1);
}

#[tokio::test]
async fn goaway_drains_without_losing_in_flight_requests() {
    let server = H3Origin::start(H3Options::default()).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    server.close_gate();
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            let uri = format!("{}/f{i}?gate=1", server.url());
            tokio::spawn(async move { fetch(&pool, get(&uri)).await })
        })
        .collect();
    eventually("3 requests in flight", || server.in_flight() == 3).await;

    server.goaway();
    eventually("the pool sees the connection draining", || {
        pool.stats().total.cx_draining == 1
    })
    .await;
    // New requests go to a new connection while the old one drains.
    let fresh = fetch(&pool, get(&format!("{}/fresh", server.url())))
        .await
        .unwrap();
    assert_eq!(fresh.conn, "2");

    server.open_gate();
    for task in in_flight {
        let answer = within("in-flight", task).await.unwrap().unwrap();
        assert_eq!(answer.conn, "1");
    }
    eventually("the drained connection closes", || {
        server.open_connections() == 1 && pool.stats().total.cx_destroy.drained == 1
    })
    .await;
}

#[tokio::test]
async fn a_request_the_server_refused_unprocessed_is_retried() {
    let server = H3Origin::start(H3Options::default()).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    fetch(&pool, get(&format!("{}/warm", server.url())))
        .await
        .unwrap();
    server.reject_next(1);
    let answer = fetch(&pool, get(&format!("{}/refused-once", server.url())))
        .await
        .unwrap();
    assert_eq!(&answer.body[..], b"hello");
    assert_eq!(server.rejected(), 1);
    assert_eq!(server.requests(), 3, "warm-up, refused, retried");
    assert_eq!(pool.stats().total.rq_retry, 1);
}

#[tokio::test]
async fn a_server_close_is_noticed_and_the_next_request_reconnects() {
    let server = H3Origin::start(H3Options::default()).await;
    // Without 0-RTT, so the reconnect is one plain handshake.
    let pool = Pool::builder(transport().zero_rtt(false).build().unwrap())
        .build()
        .unwrap();
    fetch(&pool, get(&format!("{}/a", server.url())))
        .await
        .unwrap();
    let server = restart_on_the_same_port(server, &pool).await;
    let answer = fetch(&pool, get(&format!("{}/b", server.url())))
        .await
        .unwrap();
    assert_eq!(answer.conn, "1");
}

#[tokio::test]
async fn nothing_listening_is_a_typed_connect_error() {
    let port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let pool = Pool::builder(transport().build().unwrap())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = within(
        "connect failure",
        pool.request(get(&format!("https://127.0.0.1:{port}/"))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::ConnectTimeout { .. }),
        "{err:?}"
    );
    assert!(err.is_origin_failure());
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_verification() {
    let server = H3Origin::start(H3Options::default()).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    let origin = Origin::parse(&server.url())
        .unwrap()
        .with_sni("wrong.example")
        .unwrap();
    let err = within("handshake", pool.request_to(&origin, get("/")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wrong.example"), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn an_http_origin_and_bad_settings_are_rejected() {
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    let err = pool.request(get("http://127.0.0.1:1/")).await.unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");

    let field = |b: edgepool::transport::http3::Http3Builder| match b.build() {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(
        field(transport().max_concurrent_streams(0)),
        "max_concurrent_streams"
    );
    assert_eq!(
        field(transport().idle_timeout(Duration::ZERO)),
        "idle_timeout"
    );
    assert_eq!(
        field(
            transport()
                .idle_timeout(Duration::from_secs(5))
                .keep_alive_interval(Some(Duration::from_secs(5)))
        ),
        "keep_alive_interval"
    );
}

#[tokio::test]
async fn datagram_loss_loses_no_request_and_sends_none_twice() {
    let server = H3Origin::start(H3Options::default()).await;
    // Every 13th datagram each way is lost (about 8%), handshake included.
    let relay = UdpRelay::start_lossy(server.addr(), Duration::ZERO, 13).await;
    let pool = Pool::builder(transport().build().unwrap()).build().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120 {
        let pool = pool.clone();
        let base = relay.url();
        tasks.spawn(async move {
            // Bodies of several packets each way, so stream data, not just
            // whole small requests, is what gets lost and resent.
            let response = if i % 4 == 0 {
                let body = Full::new(Bytes::from(vec![b'p'; 6_000]));
                let request = http::Request::post(format!("{base}/post/{i}?bytes=5000"))
                    .body(body)
                    .unwrap();
                fetch(&pool, request).await
            } else {
                fetch(&pool, get(&format!("{base}/get/{i}?bytes=5000"))).await
            };
            (i, response)
        });
    }
    while let Some(joined) = within("every request", tasks.join_next()).await {
        let (i, answer) = joined.unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("request {i} failed: {e:?}"));
        assert_eq!(answer.body.len(), 5_000, "request {i}");
    }
    // Each request reached the server exactly once: the loss was repaired
    // inside QUIC, and nothing was retried (a retried POST would be a bug).
    let seen = server.seen();
    assert_eq!(seen.len(), 120);
    let mut paths: Vec<String> = seen.into_iter().map(|s| s.path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 120, "a request arrived twice");
    assert_eq!(pool.stats().total.rq_retry, 0);
    assert!(
        relay.dropped() >= 20,
        "only {} datagrams lost",
        relay.dropped()
    );
}
