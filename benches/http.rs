//! Requests per second over loopback against an in-process hyper origin
//! returning a small body, edgepool against what a Rust user would pick
//! instead, measured in the same run:
//!
//! - HTTP/1.1: edgepool vs hyper-util's legacy `Client` vs raw pre-opened
//!   hyper connections, one per task, no pool at all (the limit: pool
//!   overhead = 0);
//! - HTTP/2 (h2c): edgepool vs hyper-util's `Client` with `http2_only` vs
//!   one raw pre-opened h2 connection shared by all tasks;
//! - TLS: edgepool over TLS vs a new TCP+TLS connection per request (the
//!   handshake cost a pool exists to remove);
//! - HTTP/3 (QUIC, feature `http3`, against the tests' quinn+h3 origin):
//!   edgepool vs one raw pre-opened h3 connection shared by all tasks vs a
//!   new QUIC connection per request.
//!
//! A reported time is per request, all tasks together: requests/s = 1 / time.
//! The origin runs on its own single-worker runtime; clients on a 2-worker one.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use edgepool::Pool;
use edgepool::transport::http1::Http1;
use edgepool::transport::http2::Http2;
use edgepool::transport::{ConnEvents, Connection, Transport};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Options, TestOrigin, certs};
use tokio::runtime::Runtime;

const CONCURRENCY: [usize; 3] = [1, 64, 256];

fn client_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An origin on a runtime of its own, kept alive as long as the value.
struct Server {
    origin: TestOrigin,
    _rt: Runtime,
}

fn server(options: Options) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let origin = rt.block_on(TestOrigin::start(options));
    Server { origin, _rt: rt }
}

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).body(Empty::new()).expect("request")
}

fn get_uri(uri: &http::Uri) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri.clone())
        .body(Empty::new())
        .expect("request")
}

type Http1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn raw_http1_connections(addr: std::net::SocketAddr, n: usize) -> Vec<Http1Sender> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        senders.push(sender);
    }
    senders
}

/// Runs `iters` requests over one task per state (a connection, or a handle
/// to a shared client); each task runs `run(state, n)` for its share.
/// Returns the wall time, scaled to `iters`.
async fn spread<S, F, Fut>(iters: u64, states: Vec<S>, run: F) -> Duration
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks = states.len() as u64;
    let per_task = iters.div_ceil(tasks).max(1);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for state in states {
        set.spawn(run(state, per_task));
    }
    while set.join_next().await.is_some() {}
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks) as f64)
}

async fn read_all<B: http_body::Body>(body: B)
where
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body");
}

/// Connects `transport` to `origin`, sends one GET for `uri` and reads the
/// body; the connection closes when it drops. Returns whether the
/// connection was made with 0-RTT.
async fn get_on_new_connection<T: Transport>(
    transport: &T,
    origin: &edgepool::Origin,
    uri: &str,
) -> bool {
    let conn = transport
        .connect(origin, ConnEvents::detached())
        .await
        .expect("connect");
    let used_0rtt = conn.used_0rtt();
    let request = get(uri).map(|b| b.map_err(|never| match never {}).boxed_unsync());
    let response = conn
        .send(request)
        .await
        .map_err(|e| e.error)
        .expect("request");
    if let Err(e) = response.into_body().collect().await {
        panic!("body: {}", e.into());
    }
    used_0rtt
}

/// A benchmark group with the timings every group here uses.
fn configured_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group
}

/// The `edgepool/conc` bench: `conc` tasks sending GETs through `pool`.
fn bench_edgepool<T: Transport>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    pool: &Pool<T>,
    uri: &Arc<str>,
    conc: usize,
) {
    group.bench_with_input(BenchmarkId::new("edgepool", conc), &conc, |b, &conc| {
        b.iter_custom(|iters| {
            let states = vec![(pool.clone(), uri.clone()); conc];
            rt.block_on(spread(iters, states, |(pool, uri), n| async move {
                for _ in 0..n {
                    read_all(pool.request(get(&uri)).await.expect("request").into_body()).await;
                }
            }))
        })
    });
}

/// The `hyper_util/conc` bench: `conc` tasks sending GETs through
/// hyper-util's legacy `Client`.
fn bench_hyper_util(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    client: &HyperUtilClient,
    uri: &Arc<str>,
    conc: usize,
) {
    group.bench_with_input(BenchmarkId::new("hyper_util", conc), &conc, |b, &conc| {
        b.iter_custom(|iters| {
            let states = vec![(client.clone(), uri.clone()); conc];
            rt.block_on(spread(iters, states, |(client, uri), n| async move {
                let uri: http::Uri = uri.parse().expect("uri");
                for _ in 0..n {
                    read_all(
                        client
                            .request(get_uri(&uri))
                            .await
                            .expect("request")
                            .into_body(),
                    )
                    .await;
                }
            }))
        })
    });
}

type HyperUtilClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http1(c: &mut Criterion) {
    let server = server(Options::plain());
    let uri: Arc<str> = server.origin.url("/").into();
    let rt = client_runtime();
    let mut group = configured_group(c, "http1");
    for conc in CONCURRENCY {
        let pool = rt.block_on(async {
            Pool::builder(Http1::new())
                .max_connections_per_origin(conc)
                .build()
                .expect("pool")
        });
        bench_edgepool(&mut group, &rt, &pool, &uri, conc);

        let client: HyperUtilClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(conc)
            .build_http();
        bench_hyper_util(&mut group, &rt, &client, &uri, conc);

        // The limit: `conc` connections opened once, one per task, no pool.
        let senders = rt.block_on(raw_http1_connections(server.origin.addr, conc));
        let senders = Arc::new(std::sync::Mutex::new(senders));
        group.bench_with_input(BenchmarkId::new("raw_connections", conc), &conc, |b, _| {
            b.iter_custom(|iters| {
                let states: Vec<_> = std::mem::take(&mut *senders.lock().expect("senders"));
                let uri = uri.clone();
                let (elapsed, back) = rt.block_on(async {
                    let back = Arc::new(std::sync::Mutex::new(Vec::new()));
                    let elapsed = spread(iters, states, |mut sender: Http1Sender, n| {
                        let (uri, back) = (uri.clone(), back.clone());
                        async move {
                            for _ in 0..n {
                                sender.ready().await.expect("ready");
                                let response =
                                    sender.send_request(get(&uri)).await.expect("request");
                                read_all(response.into_body()).await;
                            }
                            back.lock().expect("back").push(sender);
                        }
                    })
                    .await;
                    let back = std::mem::take(&mut *back.lock().expect("back"));
                    (elapsed, back)
                });
                *senders.lock().expect("senders") = back;
                elapsed
            })
        });
    }
    group.finish();
}

fn tls(c: &mut Criterion) {
    let server = server(Options::tls());
    let uri: Arc<str> = server.origin.url("/").into();
    let rt = client_runtime();
    let mut group = configured_group(c, "tls");
    for conc in [1usize, 64] {
        let pool = rt.block_on(async {
            Pool::builder(Http1::with_tls(certs::test_ca_tls()))
                .max_connections_per_origin(conc)
                .build()
                .expect("pool")
        });
        bench_edgepool(&mut group, &rt, &pool, &uri, conc);

        // The seed's case: a new TCP + TLS connection for every request,
        // with the same transport (and so the same TLS session cache).
        let transport = Arc::new(Http1::with_tls(certs::test_ca_tls()));
        let origin = server.origin.origin();
        group.bench_with_input(
            BenchmarkId::new("new_connection_per_request", conc),
            &conc,
            |b, &conc| {
                b.iter_custom(|iters| {
                    let states = vec![(transport.clone(), origin.clone(), uri.clone()); conc];
                    rt.block_on(spread(
                        iters,
                        states,
                        |(transport, origin, uri), n| async move {
                            for _ in 0..n {
                                get_on_new_connection(&*transport, &origin, &uri).await;
                            }
                        },
                    ))
                })
            },
        );
    }
    group.finish();
}

/// HTTP/2 (h2c, prior knowledge): many streams on few connections.
fn http2(c: &mut Criterion) {
    let server = server(Options {
        http2: true,
        ..Options::plain()
    });
    let uri: Arc<str> = server.origin.url("/").into();
    let rt = client_runtime();
    let mut group = configured_group(c, "http2");
    let pool = rt.block_on(async { Pool::builder(Http2::new()).build().expect("pool") });
    let client: HyperUtilClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // The limit: one h2 connection opened once, shared by every task.
    let raw = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.origin.addr)
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender
    });
    for conc in CONCURRENCY {
        bench_edgepool(&mut group, &rt, &pool, &uri, conc);
        bench_hyper_util(&mut group, &rt, &client, &uri, conc);
        group.bench_with_input(
            BenchmarkId::new("raw_connection", conc),
            &conc,
            |b, &conc| {
                b.iter_custom(|iters| {
                    let states = vec![(raw.clone(), uri.clone()); conc];
                    rt.block_on(spread(iters, states, |(mut sender, uri), n| async move {
                        for _ in 0..n {
                            sender.ready().await.expect("ready");
                            let response = sender.send_request(get(&uri)).await.expect("request");
                            read_all(response.into_body()).await;
                        }
                    }))
                })
            },
        );
    }
    group.finish();
}

/// HTTP/3: many streams on few QUIC connections, against an in-process
/// quinn+h3 origin (100 streams per connection).
#[cfg(feature = "http3")]
fn http3(c: &mut Criterion) {
    use edgepool::transport::http3::Http3;
    use support::h3_origin::{H3Options, H3Origin};

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let server = server_rt.block_on(H3Origin::start(H3Options {
        record: false,
        ..H3Options::default()
    }));
    let uri: Arc<str> = format!("{}/", server.url()).into();
    let rt = client_runtime();
    let mut group = configured_group(c, "http3");
    let pool = rt.block_on(async {
        let transport = Http3::builder()
            .tls(certs::test_ca_tls())
            .build()
            .expect("transport");
        Pool::builder(transport).build().expect("pool")
    });
    let raw = rt.block_on(raw_h3::connect(server.addr()));
    for conc in CONCURRENCY {
        bench_edgepool(&mut group, &rt, &pool, &uri, conc);
        group.bench_with_input(
            BenchmarkId::new("raw_connection", conc),
            &conc,
            |b, &conc| {
                b.iter_custom(|iters| {
                    let states = vec![(raw.clone(), uri.clone()); conc];
                    rt.block_on(spread(iters, states, |(sender, uri), n| async move {
                        for _ in 0..n {
                            raw_h3::get(&sender, &uri).await;
                        }
                    }))
                })
            },
        );
    }

    // A new QUIC connection for every request, each a full handshake: no
    // session cache, so no resumption and no 0-RTT. (With a cache, whether
    // a connection resumes depends on whether the previous one lived long
    // enough to receive its ticket, which varies run to run.)
    let transport = rt.block_on(async {
        let no_resumption = edgepool::transport::tls::TlsConfig::builder()
            .webpki_roots(false)
            .add_ca_pem(certs::ca_pem().as_bytes())
            .expect("test CA")
            .session_cache_size(0)
            .build()
            .expect("tls");
        Http3::builder()
            .tls(no_resumption)
            .build()
            .expect("transport")
    });
    let origin =
        edgepool::Origin::from_uri(&uri.parse::<http::Uri>().expect("uri")).expect("origin");
    group.bench_function(BenchmarkId::new("new_connection_per_request", 1), |b| {
        b.iter_custom(|iters| {
            let states = vec![(transport.clone(), origin.clone(), uri.clone())];
            rt.block_on(spread(
                iters,
                states,
                |(transport, origin, uri), n| async move {
                    for _ in 0..n {
                        let used_0rtt = get_on_new_connection(&transport, &origin, &uri).await;
                        assert!(!used_0rtt, "a full handshake was meant");
                    }
                },
            ))
        })
    });
    group.finish();
    drop(pool);
    drop(server);
}

/// The HTTP/3 baseline: one quinn connection with an h3 client, no pool.
#[cfg(feature = "http3")]
mod raw_h3 {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::{Buf, Bytes};
    use edgepool::transport::tls::Alpn;
    use quinn::crypto::rustls::QuicClientConfig;

    use super::support::certs;

    pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

    /// Connects to `server` and drives the h3 connection on its own task.
    pub async fn connect(server: SocketAddr) -> Sender {
        let mut tls = (*certs::test_ca_tls().client_config(Alpn::Http1)).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC client TLS");
        let mut endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let quic = endpoint
            .connect(server, "127.0.0.1")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(quic))
            .await
            .expect("h3 client");
        tokio::spawn(async move {
            let _endpoint = endpoint;
            let _ = driver.wait_idle().await;
        });
        sender
    }

    /// One GET, its body read to the end.
    pub async fn get(sender: &Sender, uri: &str) {
        let mut sender = sender.clone();
        let request = http::Request::get(uri).body(()).expect("request");
        let mut stream = sender.send_request(request).await.expect("send");
        stream.finish().await.expect("finish");
        let response = stream.recv_response().await.expect("response");
        assert_eq!(response.status(), http::StatusCode::OK);
        while let Some(mut chunk) = stream.recv_data().await.expect("body") {
            chunk.advance(chunk.remaining());
        }
    }
}

#[cfg(feature = "http3")]
criterion_group!(benches, http1, http2, tls, http3);
#[cfg(not(feature = "http3"))]
criterion_group!(benches, http1, http2, tls);

criterion_main!(benches);
