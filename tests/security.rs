//! Security properties, each with a test: verification on by default, the
//! pool key keeps differently-verified connections apart, and everything
//! the pool holds is bounded by configuration.

mod support;

use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http1::Http1;
use edgepool::transport::tls::TlsConfig;
use edgepool::{Error, Origin, Pool};
use http_body_util::{BodyExt, Empty};
use support::mock::MockTransport;
use support::{Options, TestOrigin, certs, within};

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).body(Empty::new()).expect("request")
}

async fn fetch_to(pool: &Pool<Http1>, origin: &Origin, path: &str) -> Result<String, Error> {
    let response = within("request", pool.request_to(origin, get(path))).await?;
    let conn = response.headers()["x-conn-id"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    within("body", response.into_body().collect()).await?;
    Ok(conn)
}

#[test]
fn the_library_forbids_unsafe_code() {
    let lib = include_str!("../src/lib.rs");
    assert!(lib.contains("#![forbid(unsafe_code)]"));
}

#[tokio::test]
async fn tls_verification_is_on_by_default() {
    let origin = TestOrigin::start(Options::tls()).await;
    // Default roots only: the test CA is unknown, so the handshake fails.
    let pool = Pool::builder(Http1::new()).build().unwrap();
    let err = fetch_to(&pool, &origin.origin(), "/").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains("UnknownIssuer"),
        "a clear reason: {err}"
    );
    assert_eq!(
        origin.requests(),
        0,
        "nothing was sent over the unverified connection"
    );
    // Only an explicitly added CA makes it trusted.
    let trusted = Pool::builder(Http1::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    fetch_to(&trusted, &origin.origin(), "/").await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let origin = TestOrigin::start(Options::tls()).await;
    let pool = Pool::builder(Http1::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    // The certificate names localhost and 127.0.0.1, not this SNI.
    let wrong = origin.origin().with_sni("b.example").unwrap();
    let err = fetch_to(&pool, &wrong, "/").await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not valid for name \"b.example\""),
        "{err}"
    );
}

#[tokio::test]
async fn origins_differing_in_sni_or_tls_config_never_share_a_connection() {
    let origin = TestOrigin::start(Options::tls()).await;
    let pool = Pool::builder(Http1::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    let plain = origin.origin(); // https://127.0.0.1:port, SNI 127.0.0.1
    let by_name = plain.with_sni("localhost").unwrap();
    let other_roots = plain.with_tls(certs::test_ca_tls()); // same roots, another config
    let (client_cert, client_key) = certs::client_identity_pem();
    let with_identity = plain.with_tls(
        TlsConfig::builder()
            .webpki_roots(false)
            .add_ca_pem(certs::ca_pem().as_bytes())
            .unwrap()
            .client_identity_pem(client_cert.as_bytes(), client_key.as_bytes())
            .unwrap()
            .build()
            .unwrap(),
    );
    let mut seen = std::collections::HashSet::new();
    for origin_key in [&plain, &by_name, &other_roots, &with_identity] {
        for _ in 0..2 {
            seen.insert((
                origin_key.to_string(),
                fetch_to(&pool, origin_key, "/").await.unwrap(),
            ));
        }
    }
    assert_eq!(
        origin.connections_accepted(),
        4,
        "one connection per distinct key"
    );
    assert_eq!(pool.stats().origins.len(), 4);
    let conns: std::collections::HashSet<&String> = seen.iter().map(|(_, c)| c).collect();
    assert_eq!(
        conns.len(),
        4,
        "each key reused only its own connection: {seen:?}"
    );
}

#[tokio::test]
async fn a_connection_for_one_name_is_never_lent_for_another_at_the_same_address() {
    // localhost and 127.0.0.1 reach the same server and both are on its
    // certificate; still, each name gets its own verified connection.
    let origin = TestOrigin::start(Options::tls()).await;
    let pool = Pool::builder(Http1::with_tls(certs::test_ca_tls()))
        .build()
        .unwrap();
    let by_ip = Origin::parse(&format!("https://127.0.0.1:{}", origin.addr.port())).unwrap();
    let by_name = Origin::parse(&format!("https://localhost:{}", origin.addr.port())).unwrap();
    let a = fetch_to(&pool, &by_ip, "/").await.unwrap();
    let b = fetch_to(&pool, &by_name, "/").await.unwrap();
    assert_ne!(a, b);
    assert_eq!(origin.connections_accepted(), 2);
    // And a request naming one origin cannot be sent to the other's pool entry.
    let err = pool
        .request_to(
            &by_ip,
            get(&format!("https://localhost:{}/", origin.addr.port())),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn distinct_origins_stay_bounded_by_evicting_idle_ones() {
    let transport = MockTransport::new(Duration::ZERO);
    let pool = Pool::builder(transport)
        .max_origins(1_000)
        .ping_interval(None)
        .build()
        .unwrap();
    for i in 0..100_000u32 {
        let uri = format!("http://o{i}.test/");
        let response = pool.request(get(&uri)).await.unwrap();
        response.into_body().collect().await.unwrap();
        if i % 10_000 == 0 {
            assert!(pool.stats().origins.len() <= 1_000);
        }
    }
    let stats = pool.stats();
    assert!(
        stats.origins.len() <= 1_000,
        "{} origins tracked",
        stats.origins.len()
    );
    assert_eq!(
        stats.total.rq_total, 100_000,
        "evicted origins' counters are kept in the totals"
    );
    assert!(stats.total.cx_active <= 1_000);
}

#[tokio::test(start_paused = true)]
async fn when_every_tracked_origin_is_busy_a_new_one_is_refused_not_tracked() {
    let transport = MockTransport::new(Duration::from_secs(60));
    let pool = Pool::builder(transport)
        .max_origins(2)
        .ping_interval(None)
        .build()
        .unwrap();
    let mut busy = Vec::new();
    for i in 0..2 {
        let pool = pool.clone();
        busy.push(tokio::spawn(async move {
            pool.request(get(&format!("http://busy{i}.test/")))
                .await
                .map(|_| ())
        }));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = pool.request(get("http://third.test/")).await.unwrap_err();
    assert!(matches!(err, Error::TooManyOrigins { max: 2 }), "{err:?}");
    assert!(err.is_pool_full());
    assert_eq!(pool.stats().origins.len(), 2);
    for b in busy {
        b.abort();
    }
}

#[tokio::test]
async fn pending_requests_and_connections_per_origin_are_bounded() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = Pool::builder(Http1::new())
        .max_connections_per_origin(2)
        .max_pending_per_origin(3)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    let spawn = |tasks: &mut Vec<_>| {
        let (pool, uri) = (pool.clone(), origin.url("/?delay_ms=30000"));
        tasks.push(tokio::spawn(async move {
            pool.request(get(&uri)).await.map(|_| ())
        }));
    };
    spawn(&mut tasks);
    spawn(&mut tasks);
    let p = pool.clone();
    support::eventually("2 in flight", move || p.stats().total.rq_active == 2).await;
    for _ in 0..3 {
        spawn(&mut tasks);
    }
    let p = pool.clone();
    support::eventually("3 queued", move || p.stats().total.rq_pending == 3).await;
    let err = pool.request(get(&origin.url("/"))).await.unwrap_err();
    assert!(
        matches!(err, Error::PendingOverflow { max_pending: 3, .. }),
        "{err:?}"
    );
    assert!(origin.connections_accepted() <= 2);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn an_oversized_response_head_is_refused_not_buffered() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = Pool::builder(Http1::new().max_response_header_bytes(16 * 1024).unwrap())
        .build()
        .unwrap();
    // Within the limit: fine.
    fetch_to(&pool, &origin.origin(), "/?big_header=1000")
        .await
        .unwrap();
    // Beyond it: a typed error, and the connection is not reused.
    let err = fetch_to(&pool, &origin.origin(), "/?big_header=100000")
        .await
        .unwrap_err();
    assert!(err.is_origin_failure(), "{err:?}");
    assert_eq!(pool.stats().total.rq_active, 0);
    fetch_to(&pool, &origin.origin(), "/").await.unwrap();
}
