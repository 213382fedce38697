//! The `edge_proxy` example's proxy logic, run in-process between a hyper
//! client and an origin: what is forwarded, what is dropped, streaming both
//! ways, failures mapped to statuses, the stats endpoint, draining, and the
//! command line.
#![cfg(feature = "http1")]

mod support;

#[allow(dead_code)]
#[path = "../examples/edge_proxy/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../examples/edge_proxy/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http1::Http1;
use edgepool::{Error, Origin, Pool, PoolBuilder, Transport};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Options, TestOrigin, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// A request body fed chunk by chunk from the test, so the test decides
/// when each part of the body exists.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

type TestClient<B> = Client<HttpConnector, B>;

fn client<B>(http2: bool) -> TestClient<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

/// An origin that streams every request body back as the response body and
/// describes the request in headers: `x-seen-method`, `x-seen-uri`,
/// `x-seen-version`, and `x-req-NAME` for each request header. A request
/// with `x-send-hop: 1` gets hop-by-hop headers in its response.
struct EchoOrigin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoOrigin {
    async fn start() -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service_fn(echo))
                        .await;
                });
            }
        });
        EchoOrigin { addr, task }
    }

    fn origin(&self) -> Origin {
        Origin::parse(&format!("http://{}", self.addr)).expect("origin")
    }
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(request: Request<Incoming>) -> Result<Response<Incoming>, Infallible> {
    let mut response = Response::builder()
        .header("x-seen-method", request.method().as_str())
        .header("x-seen-uri", request.uri().to_string())
        .header("x-seen-version", format!("{:?}", request.version()));
    for (name, value) in request.headers() {
        response = response.header(format!("x-req-{name}"), value);
    }
    if request.headers().contains_key("x-send-hop") {
        response = response
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive");
    }
    Ok(response
        .body(request.into_body())
        .expect("valid echo response"))
}

/// The proxy logic serving on 127.0.0.1:0 until [`RunningProxy::stop`].
struct RunningProxy<T: Transport = Http1> {
    addr: SocketAddr,
    pool: Pool<T>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningProxy {
    async fn start(origin: Origin) -> RunningProxy {
        Self::start_with(origin, Pool::builder(Http1::new())).await
    }
}

impl<T: Transport> RunningProxy<T> {
    async fn start_with(origin: Origin, builder: PoolBuilder<T>) -> RunningProxy<T> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = builder.build().expect("pool");
        let proxy =
            proxy::Proxy::new(pool.clone(), origin, proxy::Limits::default()).expect("proxy");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::serve(listener, proxy, async {
            let _ = stopped.await;
        }));
        RunningProxy {
            addr,
            pool,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Signals shutdown; the serve loop then drains.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the serve loop to return.
    async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            within("the proxy to stop", task).await.expect("serve task");
        }
    }
}

impl<T: Transport> Drop for RunningProxy<T> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn body_text(response: Response<Incoming>) -> String {
    let bytes = within("response body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn end_to_end_headers_are_forwarded_and_hop_by_hop_ones_dropped() {
    let origin = EchoOrigin::start().await;
    let proxy = RunningProxy::start(origin.origin()).await;
    let request = Request::patch(proxy.url("/a/b?c=d&e=f"))
        .header("x-custom", "kept")
        .header("connection", "x-hop, keep-alive")
        .header("x-hop", "named by Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("upgrade", "websocket")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-send-hop", "1")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("response", client(false).request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);

    // What the origin saw.
    assert_eq!(header(&response, "x-seen-method"), Some("PATCH"));
    assert_eq!(header(&response, "x-seen-uri"), Some("/a/b?c=d&e=f"));
    assert_eq!(header(&response, "x-seen-version"), Some("HTTP/1.1"));
    assert_eq!(header(&response, "x-req-x-custom"), Some("kept"));
    let origin_host = origin.addr.to_string();
    assert_eq!(header(&response, "x-req-host"), Some(origin_host.as_str()));
    let proxy_host = proxy.addr.to_string();
    assert_eq!(
        header(&response, "x-req-x-forwarded-host"),
        Some(proxy_host.as_str())
    );
    assert_eq!(
        header(&response, "x-req-x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    for dropped in [
        "x-req-connection",
        "x-req-x-hop",
        "x-req-keep-alive",
        "x-req-proxy-connection",
        "x-req-te",
        "x-req-trailer",
        "x-req-upgrade",
        "x-req-transfer-encoding",
    ] {
        assert_eq!(
            header(&response, dropped),
            None,
            "{dropped} reached the origin"
        );
    }
    // What the client saw of the origin's hop-by-hop headers: none.
    for dropped in ["x-secret", "keep-alive", "proxy-connection", "connection"] {
        assert_eq!(
            header(&response, dropped),
            None,
            "{dropped} reached the client"
        );
    }
}

#[tokio::test]
async fn an_h2c_client_is_served_over_the_http1_pool() {
    let origin = TestOrigin::start(Options::plain()).await;
    let proxy = RunningProxy::start(origin.origin()).await;
    let request = Request::get(proxy.url("/h2?x=1"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("h2c response", client(true).request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(header(&response, "x-seen-version"), Some("HTTP/1.1"));
    assert_eq!(header(&response, "x-seen-uri"), Some("/h2?x=1"));
    let origin_host = origin.addr.to_string();
    assert_eq!(header(&response, "x-seen-host"), Some(origin_host.as_str()));
    assert_eq!(body_text(response).await, "hello");
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn an_h2c_origin_is_reached_over_the_http2_transport() {
    use edgepool::transport::http2::Http2;
    let origin = TestOrigin::start(Options {
        http2: true,
        ..Options::plain()
    })
    .await;
    let proxy = RunningProxy::start_with(origin.origin(), Pool::builder(Http2::new())).await;
    for client_h2 in [false, true] {
        let request = Request::get(proxy.url("/p?q=1"))
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = within("response", client(client_h2).request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-seen-version"), Some("HTTP/2.0"));
        assert_eq!(
            header(&response, "x-seen-uri"),
            Some(origin.url("/p?q=1").as_str())
        );
        let origin_host = origin.addr.to_string();
        assert_eq!(header(&response, "x-seen-host"), Some(origin_host.as_str()));
        assert_eq!(body_text(response).await, "hello");
    }
    assert_eq!(
        origin.connections_accepted(),
        1,
        "both requests on one h2 connection"
    );
}

/// 1 MiB in 64 KiB chunks. The second chunk is only sent after the first
/// one has come back, so a proxy that buffered either body whole would
/// deadlock here (and fail the bounded wait) instead of passing.
async fn a_large_body_streams_both_ways(http2: bool) {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;
    let origin = EchoOrigin::start().await;
    let proxy = RunningProxy::start(origin.origin()).await;
    let chunk = |i: usize| -> Bytes { (0..CHUNK).map(|j| ((i * 7 + j) % 251) as u8).collect() };

    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let request = Request::post(proxy.url("/echo"))
        .body(ChannelBody(rx))
        .expect("request");
    let client = client(http2);
    let responding = tokio::spawn(async move { client.request(request).await });
    tx.send(chunk(0)).await.expect("first chunk");
    let response = within("response head", responding)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::with_capacity(CHUNK * CHUNKS);
    while received.len() < CHUNK {
        let frame = within("first echoed bytes", body.frame())
            .await
            .expect("a frame before the end")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let sender = tokio::spawn(async move {
        for i in 1..CHUNKS {
            if tx.send(chunk(i)).await.is_err() {
                break;
            }
        }
    });
    let rest = within("the rest of the echo", body.collect())
        .await
        .expect("body")
        .to_bytes();
    received.extend_from_slice(&rest);
    within("sender", sender).await.expect("sender task");
    let expected: Vec<u8> = (0..CHUNKS).flat_map(|i| chunk(i).to_vec()).collect();
    assert_eq!(received.len(), CHUNK * CHUNKS);
    assert!(
        received == expected,
        "echoed bytes differ from the sent ones"
    );
}

#[tokio::test]
async fn a_1mb_post_streams_both_ways_over_http1() {
    a_large_body_streams_both_ways(false).await;
}

#[tokio::test]
async fn a_1mb_post_streams_both_ways_over_h2c() {
    a_large_body_streams_both_ways(true).await;
}

#[tokio::test]
async fn origin_down_is_a_502_with_a_one_line_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).expect("origin");
    let proxy = RunningProxy::start(origin).await;
    let response = within(
        "502",
        client::<Empty<Bytes>>(false).get(proxy.url("/").parse().expect("uri")),
    )
    .await
    .expect("a response, not a dropped connection");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        header(&response, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    let body = body_text(response).await;
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.starts_with("bad gateway"), "{body:?}");
    assert_eq!(proxy.pool.stats().total.cx_connect_fail, 1);
}

#[tokio::test]
async fn a_full_pending_queue_is_a_503() {
    let origin = EchoOrigin::start().await;
    let proxy = RunningProxy::start_with(
        origin.origin(),
        Pool::builder(Http1::new())
            .max_connections_per_origin(1)
            .max_pending_per_origin(1),
    )
    .await;
    let pool = proxy.pool.clone();
    // Hold the only connection with a request whose body is still open...
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let held = Request::post(proxy.url("/held"))
        .body(ChannelBody(rx))
        .expect("request");
    let client_held = client(false);
    let held = tokio::spawn(async move { client_held.request(held).await });
    eventually("the held request to take the connection", || {
        pool.stats().total.rq_active == 1
    })
    .await;
    // ...and fill the one-place queue behind it.
    let queued_client = client::<Empty<Bytes>>(false);
    let queued_uri = proxy.url("/queued").parse().expect("uri");
    let queued = tokio::spawn(async move { queued_client.get(queued_uri).await });
    eventually("the second request to queue", || {
        pool.stats().total.rq_pending == 1
    })
    .await;

    let response = within(
        "503",
        client::<Empty<Bytes>>(false).get(proxy.url("/").parse().expect("uri")),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_text(response).await;
    assert!(body.starts_with("service unavailable"), "{body:?}");
    assert_eq!(pool.stats().total.rq_pending_overflow, 1);

    drop(tx);
    let held = within("held", held).await.expect("task").expect("response");
    assert_eq!(held.status(), StatusCode::OK);
    body_text(held).await;
    let queued = within("queued", queued)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(queued.status(), StatusCode::OK);
}

#[test]
fn pool_errors_map_to_gateway_statuses() {
    let origin = "http://127.0.0.1:1".to_string();
    let source = Arc::new(Box::<dyn std::error::Error + Send + Sync>::from("boom"));
    let cases = [
        (
            Error::Connect {
                origin: origin.clone(),
                source: source.clone(),
            },
            StatusCode::BAD_GATEWAY,
        ),
        (
            Error::Request {
                origin: origin.clone(),
                source: source.clone(),
            },
            StatusCode::BAD_GATEWAY,
        ),
        (
            Error::PendingOverflow {
                origin: origin.clone(),
                max_pending: 4,
            },
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Error::Shutdown { reason: "test" },
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Error::CheckoutTimeout {
                origin: origin.clone(),
                waited: Duration::from_secs(5),
            },
            StatusCode::GATEWAY_TIMEOUT,
        ),
        (
            Error::ConnectTimeout {
                origin: origin.clone(),
                timeout: Duration::from_secs(5),
            },
            StatusCode::GATEWAY_TIMEOUT,
        ),
        (
            Error::RequestTimeout {
                origin: origin.clone(),
                timeout: Duration::from_secs(60),
            },
            StatusCode::GATEWAY_TIMEOUT,
        ),
        (
            Error::OriginUnavailable {
                origin: origin.clone(),
                retry_after: Duration::from_millis(2_100),
            },
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (error, status) in cases {
        let response = proxy::error_response(&error);
        assert_eq!(response.status(), status, "{error}");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok());
        match &error {
            // Rounded up to whole seconds.
            Error::OriginUnavailable { .. } => assert_eq!(retry_after, Some("3")),
            _ => assert_eq!(retry_after, None, "{error}"),
        }
        let (_, message) = proxy::error_status(&error);
        assert!(!message.contains('\n'), "{message:?}");
        assert!(
            !message.contains("127.0.0.1"),
            "the origin's address stays in the log: {message:?}"
        );
    }
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn the_stats_endpoint_serves_moving_counters_as_json() {
    let origin = TestOrigin::start(Options::plain()).await;
    let proxy = RunningProxy::start(origin.origin()).await;
    let client = client::<Empty<Bytes>>(false);
    let stats = |client: TestClient<Empty<Bytes>>, url: String| async move {
        let response = within("stats", client.get(url.parse().expect("uri")))
            .await
            .expect("stats response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        let json: serde_json::Value =
            serde_json::from_str(&body_text(response).await).expect("valid JSON");
        json
    };

    let before = stats(client.clone(), proxy.url(proxy::STATS_PATH)).await;
    for name in [
        "cx_total",
        "cx_active",
        "cx_idle",
        "cx_connecting",
        "cx_connect_fail",
        "rq_total",
        "rq_active",
        "rq_pending",
        "rq_pending_overflow",
        "rq_reused",
        "rq_retry",
    ] {
        assert!(before["total"][name].is_u64(), "total.{name} in {before}");
    }
    assert!(before["total"]["cx_destroy"]["remote"].is_u64(), "{before}");
    assert_eq!(before["total"]["rq_total"], 0);

    for _ in 0..3 {
        let response = within("proxied", client.get(proxy.url("/").parse().expect("uri")))
            .await
            .expect("response");
        assert_eq!(body_text(response).await, "hello");
    }
    let after = stats(client.clone(), proxy.url(proxy::STATS_PATH)).await;
    assert_eq!(after["total"]["rq_total"], 3, "{after}");
    assert_eq!(after["total"]["rq_reused"], 2, "{after}");
    assert_eq!(after["total"]["cx_total"], 1, "{after}");
    let origin_text = origin.origin().to_string();
    assert_eq!(
        after["origins"][0]["origin"],
        origin_text.as_str(),
        "{after}"
    );
    // The stats request itself never reaches the origin.
    assert_eq!(origin.requests(), 3);

    let post = Request::post(proxy.url(proxy::STATS_PATH))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("POST stats", client.request(post))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Sends raw bytes and returns the status line the proxy answers with.
async fn raw_status_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    // The proxy may answer and close before reading everything we send.
    let _ = tcp.write_all(request).await;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while !reply.contains(&b'\n') {
        match within("reply", tcp.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn malformed_and_oversized_request_heads_get_400_and_431() {
    let origin = TestOrigin::start(Options::plain()).await;
    let proxy = RunningProxy::start(origin.origin()).await;

    let malformed = raw_status_line(proxy.addr, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed:?}");

    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(
        b'a',
        proxy::MAX_REQUEST_HEAD_BYTES + 1024,
    ));
    big.extend_from_slice(b"\r\n\r\n");
    let oversized = raw_status_line(proxy.addr, &big).await;
    assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized:?}");

    // Still serving, and nothing reached the origin.
    let ok = raw_status_line(proxy.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let origin = EchoOrigin::start().await;
    let mut proxy = RunningProxy::start(origin.origin()).await;
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let request = Request::post(proxy.url("/in-flight"))
        .body(ChannelBody(rx))
        .expect("request");
    let client = client(false);
    let in_flight = tokio::spawn(async move {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    });
    tx.send(Bytes::from_static(b"first ")).await.expect("send");
    let pool = proxy.pool.clone();
    eventually("the request to reach the origin", || {
        pool.stats().total.rq_active == 1
    })
    .await;

    proxy.stop();
    let addr = proxy.addr;
    within("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!in_flight.is_finished(), "the request in flight was cut");

    tx.send(Bytes::from_static(b"last")).await.expect("send");
    drop(tx);
    let (status, body) = within("in-flight request", in_flight)
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "first last");
    proxy.stopped().await;
}

fn parse(args: &[&str]) -> Result<args::Command, args::UsageError> {
    args::parse(args.iter().map(|s| s.to_string()))
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
    for (argv, flag) in [
        (
            &["--listen", "127.0.0.1:0", "--origin", "ftp://example.com"][..],
            "--origin",
        ),
        (
            &["--listen", "127.0.0.1:0", "--origin", "not a url"],
            "--origin",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a.example/path",
            ],
            "--origin",
        ),
        (
            &["--listen", "localhost", "--origin", "http://a.example"],
            "--listen",
        ),
        (
            &["--listen=999.0.0.1:80", "--origin=http://a.example"],
            "--listen",
        ),
        (&["--origin", "http://a.example"], "--listen"),
        (&["--listen", "127.0.0.1:0"], "--origin"),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a",
                "--protocol",
                "h4",
            ],
            "--protocol",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a",
                "--max-connections",
                "0",
            ],
            "--max-connections",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a",
                "--idle-timeout",
                "-1",
            ],
            "--idle-timeout",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a",
                "--warm",
                "many",
            ],
            "--warm",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://a",
                "--ca-file",
                "ca.pem",
            ],
            "--ca-file",
        ),
        (&["--listen", "127.0.0.1:0", "--origin"], "--origin"),
    ] {
        let err = parse(argv).expect_err("refused");
        let line = err.to_string();
        assert!(line.contains(flag), "{argv:?}: {line}");
        assert_eq!(line.lines().count(), 1, "{argv:?}: {line}");
    }
}

#[test]
fn protocol_defaults_follow_the_origin_scheme() {
    let run = |argv: &[&str]| match parse(argv) {
        Ok(args::Command::Run(config)) => config,
        other => panic!("{argv:?}: {other:?}"),
    };
    let plain = run(&[
        "--listen",
        "127.0.0.1:8080",
        "--origin",
        "http://127.0.0.1:9000",
    ]);
    assert_eq!(plain.protocol, args::ProtocolArg::H1);
    assert_eq!(plain.listen, "127.0.0.1:8080".parse().expect("addr"));
    let tls = run(&["--listen=[::1]:0", "--origin=https://example.com"]);
    assert_eq!(tls.protocol, args::ProtocolArg::Auto);
    let h2c = run(&[
        "--listen",
        "127.0.0.1:0",
        "--origin",
        "http://a:81",
        "--protocol",
        "h2",
        "--idle-timeout",
        "0",
        "--warm",
        "4",
    ]);
    assert_eq!(h2c.protocol, args::ProtocolArg::H2);
    assert_eq!(h2c.idle_timeout, Some(None));
    assert_eq!(h2c.warm, Some(4));
    assert!(matches!(parse(&["--help"]), Ok(args::Command::Help)));
}
