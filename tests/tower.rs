//! The pool under tower: `PoolService` readiness as per-origin backpressure,
//! tower middleware on top of it, and `PoolLayer` over a connector service.
#![cfg(all(feature = "tower", feature = "http1"))]

mod support;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use edgepool::service::{PoolLayer, PoolService};
use edgepool::transport::connector::TcpConnector;
use edgepool::transport::http1::Http1;
use edgepool::{Error, ErrorKind, Origin, Pool, PoolBuilder, Stats};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Options, TestOrigin, eventually, within};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("valid request")
}

/// An origin whose `/hold` requests wait until [`GateOrigin::release`]
/// lets one through; anything else is answered at once. It makes "a request
/// holds the only connection" deterministic, with no timing involved.
struct GateOrigin {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl GateOrigin {
    async fn start() -> GateOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Arc::new(Semaphore::new(0));
        let task_gate = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let gate = task_gate.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let gate = gate.clone();
                        async move {
                            if request.uri().path() == "/hold" {
                                if let Ok(permit) = gate.acquire().await {
                                    permit.forget();
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http1_only()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        GateOrigin { addr, gate, task }
    }

    fn origin(&self) -> Origin {
        Origin::parse(&format!("http://{}", self.addr)).expect("origin")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Lets one held request answer.
    fn release(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for GateOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection, one waiting request: the second request to the origin
/// fills the pending queue.
fn tight_pool() -> Pool<Http1> {
    Pool::builder(Http1::new())
        .max_connections_per_origin(1)
        .max_pending_per_origin(1)
        .checkout_timeout(support::WAIT * 2)
        .build()
        .expect("pool")
}

fn stats_of(pool: &Pool<Http1>, origin: &Origin) -> Stats {
    pool.stats().origin(origin).copied().unwrap_or_default()
}

/// Sends through a clone of `service` on its own task and reads the body.
fn spawn_request<S>(service: &S, uri: String) -> tokio::task::JoinHandle<Result<Bytes, BoxError>>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<edgepool::ResponseBody<Http1>>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let service = service.clone();
    tokio::spawn(async move {
        let response = service.oneshot(get(&uri)).await.map_err(Into::into)?;
        Ok(response.into_body().collect().await?.to_bytes())
    })
}

/// Fills the origin's only connection (a held request) and its one-place
/// queue (a second request), and waits until the pool shows both.
async fn fill(
    service: &PoolService<Http1>,
    gate: &GateOrigin,
) -> [tokio::task::JoinHandle<Result<Bytes, BoxError>>; 2] {
    let pool = service.pool().clone();
    let origin = gate.origin();
    let held = spawn_request(service, gate.url("/hold"));
    eventually("the held request to take the connection", || {
        stats_of(&pool, &origin).rq_active == 1
    })
    .await;
    let queued = spawn_request(service, gate.url("/"));
    eventually("the second request to queue", || {
        stats_of(&pool, &origin).rq_pending == 1
    })
    .await;
    [held, queued]
}

#[tokio::test]
async fn poll_ready_is_pending_while_the_origin_queue_is_full_and_woken_when_it_drains() {
    let gate = GateOrigin::start().await;
    let pool = tight_pool();
    let mut service = PoolService::for_origin(pool.clone(), gate.origin());

    let mut ready = tokio_test::task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| service.poll_ready(cx)));
    // A clone that was told Ready before the queue filled: readiness is not
    // a reservation (the documented race window).
    let mut early = service.clone();
    assert_ready_ok!(ready.enter(|cx, _| early.poll_ready(cx)));

    let [held, queued] = fill(&service, &gate).await;

    assert_pending!(ready.enter(|cx, _| service.poll_ready(cx)));
    assert!(!ready.is_woken());
    // The early clone's call is refused at once rather than waiting.
    let refused = within("a refused request", early.call(get("/")))
        .await
        .expect_err("the queue is full");
    assert!(
        matches!(refused, Error::PendingOverflow { max_pending: 1, .. }),
        "{refused:?}"
    );

    // The held response ends, the queued request takes the connection, and
    // the queue has room: the task that saw Pending is woken.
    gate.release();
    let body = within("held request", held).await.expect("task");
    assert_eq!(body.expect("held response"), "ok");
    eventually("poll_ready's waker to be woken", || ready.is_woken()).await;
    assert_ready_ok!(ready.enter(|cx, _| service.poll_ready(cx)));

    within("queued request", queued)
        .await
        .expect("task")
        .expect("queued response");
    let s = stats_of(&pool, &gate.origin());
    assert_eq!((s.rq_total, s.rq_pending_overflow), (3, 1));
    assert_eq!((s.rq_active, s.rq_pending), (0, 0));
}

#[tokio::test]
async fn the_uri_routed_service_stays_ready_and_a_full_origin_fails_fast() {
    let gate = GateOrigin::start().await;
    let other = TestOrigin::start(Options::plain()).await;
    let pool = tight_pool();
    let bound = PoolService::for_origin(pool.clone(), gate.origin());
    let [held, queued] = fill(&bound, &gate).await;

    // By contract, never Pending: a full origin must not hold back requests
    // to another one.
    let mut any = PoolService::from(pool.clone());
    let mut task = tokio_test::task::spawn(());
    assert_ready_ok!(task.enter(|cx, _| any.poll_ready(cx)));
    let response = within("other origin", any.call(get(&other.url("/"))))
        .await
        .expect("another origin is served");
    assert_eq!(response.status(), 200);

    assert_ready_ok!(task.enter(|cx, _| any.poll_ready(cx)));
    let err = within("full origin", any.call(get(&gate.url("/"))))
        .await
        .expect_err("the full origin refuses");
    assert_eq!(err.kind(), ErrorKind::PoolFull, "{err:?}");

    gate.release();
    within("held", held).await.expect("task").expect("held");
    within("queued", queued)
        .await
        .expect("task")
        .expect("queued");
}

#[tokio::test]
async fn load_shed_sheds_while_the_origin_is_full_and_serves_once_it_drains() {
    let gate = GateOrigin::start().await;
    let pool = tight_pool();
    let service = PoolService::for_origin(pool.clone(), gate.origin());
    let [held, queued] = fill(&service, &gate).await;

    let mut shed = ServiceBuilder::new().load_shed().service(service.clone());
    let err = within("shed request", async {
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut shed)
            .await?
            .call(get("/"))
            .await
            .map(|_| ())
    })
    .await
    .expect_err("shed");
    assert!(
        err.downcast_ref::<tower::load_shed::error::Overloaded>()
            .is_some(),
        "{err:?}"
    );
    // Shed before reaching the pool: not counted as an overflow.
    assert_eq!(stats_of(&pool, &gate.origin()).rq_pending_overflow, 0);

    gate.release();
    within("held", held).await.expect("task").expect("held");
    within("queued", queued)
        .await
        .expect("task")
        .expect("queued");
    let response = within("after drain", async {
        ServiceExt::<Request<Empty<Bytes>>>::ready(&mut shed)
            .await?
            .call(get("/"))
            .await
    })
    .await
    .expect("served once the queue drained");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn timeout_cancels_a_queued_request_and_frees_its_queue_place() {
    let gate = GateOrigin::start().await;
    let pool = tight_pool();
    let service = PoolService::for_origin(pool.clone(), gate.origin());
    let held = spawn_request(&service, gate.url("/hold"));
    let origin = gate.origin();
    eventually("the held request to take the connection", || {
        stats_of(&pool, &origin).rq_active == 1
    })
    .await;

    let timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .service(service.clone());
    let err = within("timed out request", timed.oneshot(get("/")))
        .await
        .expect_err("the only connection is held, so it times out");
    assert!(
        err.downcast_ref::<tower::timeout::error::Elapsed>()
            .is_some(),
        "{err:?}"
    );
    // The cancelled waiter left the queue: room again, nothing pending.
    let s = stats_of(&pool, &origin);
    assert_eq!((s.rq_pending, s.rq_active), (0, 1));
    let mut task = tokio_test::task::spawn(());
    let mut probe = service.clone();
    assert_ready_ok!(task.enter(|cx, _| probe.poll_ready(cx)));

    gate.release();
    within("held", held).await.expect("task").expect("held");
}

#[tokio::test]
async fn buffer_and_concurrency_limit_carry_concurrent_requests() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = Pool::builder(Http1::new()).build().expect("pool");
    let service = ServiceBuilder::new()
        .buffer(16)
        .concurrency_limit(3)
        .service(PoolService::for_origin(pool.clone(), origin.origin()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(get(&format!("/?n={i}"))).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(status)
        });
    }
    while let Some(done) = within("buffered requests", tasks.join_next()).await {
        assert_eq!(done.expect("task").expect("response"), 200);
    }
    let s = pool.stats().total;
    assert_eq!((s.rq_total, s.rq_active, s.rq_pending), (20, 0, 0));
}

#[tokio::test]
async fn shutdown_fails_poll_ready_so_buffer_stops() {
    let origin = TestOrigin::start(Options::plain()).await;
    let pool = Pool::builder(Http1::new()).build().expect("pool");
    let mut bound = PoolService::for_origin(pool.clone(), origin.origin());
    let mut any = PoolService::new(pool.clone());
    within("warm", any.call(get(&origin.url("/"))))
        .await
        .expect("served");
    pool.shutdown();

    let mut task = tokio_test::task::spawn(());
    let Poll::Ready(Err(Error::Shutdown { .. })) = task.enter(|cx, _| bound.poll_ready(cx)) else {
        panic!("the origin-bound service reports shutdown from poll_ready");
    };
    // The URI-routed service learns it from the first refused call (its
    // documented race window), then reports it from poll_ready.
    let err = within("refused", any.call(get(&origin.url("/"))))
        .await
        .expect_err("shut down");
    assert_eq!(err.kind(), ErrorKind::Shutdown);
    let Poll::Ready(Err(Error::Shutdown { .. })) = task.enter(|cx, _| any.poll_ready(cx)) else {
        panic!("the URI-routed service reports shutdown after a refused call");
    };

    let buffered = ServiceBuilder::new().buffer(4).service(any.clone());
    let err = within(
        "buffered after shutdown",
        buffered.oneshot(get(&origin.url("/"))),
    )
    .await
    .expect_err("buffer fails");
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[tokio::test]
async fn request_targets_are_checked_against_the_route() {
    let origin = TestOrigin::start(Options::plain()).await;
    let other = TestOrigin::start(Options::plain()).await;
    let pool = Pool::builder(Http1::new()).build().expect("pool");

    let bound = PoolService::for_origin(pool.clone(), origin.origin());
    let response = within("origin-form", bound.clone().oneshot(get("/a?b=c")))
        .await
        .expect("origin-form is fine when the origin is bound");
    assert_eq!(response.headers()["x-seen-uri"], "/a?b=c");
    let err = within("other origin", bound.oneshot(get(&other.url("/"))))
        .await
        .expect_err("a bound service never carries another origin's request");
    assert!(matches!(err, Error::InvalidOrigin { .. }), "{err:?}");

    let err = within("origin-form", PoolService::new(pool).oneshot(get("/")))
        .await
        .expect_err("a URI-routed service needs an absolute URI");
    assert!(err.is_invalid_input(), "{err:?}");
    assert_eq!(other.requests(), 0);
}

/// A connector service that counts its calls and fails the first
/// `fail_first` of them, then defers to TCP.
#[derive(Clone)]
struct CountingConnector {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}

impl CountingConnector {
    fn new(fail_first: usize) -> Self {
        CountingConnector {
            calls: Arc::new(AtomicUsize::new(0)),
            fail_first,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Origin> for CountingConnector {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TcpStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, origin: Origin) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = n <= self.fail_first;
        Box::pin(async move {
            if fail {
                return Err("refused by the test connector".into());
            }
            Ok(TcpConnector::new().call(origin).await?)
        })
    }
}

#[tokio::test]
async fn pool_layer_builds_the_client_over_a_connector_service() {
    let origin = TestOrigin::start(Options::plain()).await;
    let connector = CountingConnector::new(0);
    let layer = PoolLayer::builder(Http1::new())
        .max_connections_per_origin(2)
        .build()
        .expect("valid layer");
    let client = ServiceBuilder::new()
        .timeout(support::WAIT)
        .layer(layer)
        .service(connector.clone());
    for _ in 0..5 {
        let response = within("request", client.clone().oneshot(get(&origin.url("/"))))
            .await
            .expect("response");
        response.into_body().collect().await.expect("body");
    }
    assert_eq!(connector.calls(), 1, "one connect, reused four times");
    assert_eq!(origin.connections_accepted(), 1);
}

#[tokio::test]
async fn pool_layer_can_bind_an_origin_and_take_a_transport_closure() {
    let origin = TestOrigin::start(Options::plain()).await;
    let connector = CountingConnector::new(0);
    let layer = PoolLayer::builder(|c: CountingConnector| Http1::new().with_connector(c))
        .origin(origin.origin())
        .build()
        .expect("valid layer");
    let client = layer.layer(connector.clone());
    assert_eq!(client.origin(), Some(&origin.origin()));
    let response = within("request", client.oneshot(get("/x")))
        .await
        .expect("response");
    assert_eq!(response.headers()["x-seen-uri"], "/x");
    assert_eq!(connector.calls(), 1);
}

/// Retries origin failures (a refused connect here) up to `left` times,
/// rebuilding the request, which is not `Clone`.
#[derive(Clone)]
struct RetryOriginFailures {
    left: usize,
}

impl<Res> tower::retry::Policy<Request<Full<Bytes>>, Res, Error> for RetryOriginFailures {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<Full<Bytes>>,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        match result {
            Err(e) if e.is_origin_failure() && self.left > 0 => {
                self.left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }
}

#[tokio::test]
async fn retry_resends_after_a_failed_connect() {
    let origin = TestOrigin::start(Options::plain()).await;
    let connector = CountingConnector::new(1);
    let layer = PoolLayer::builder(Http1::new()).build().expect("layer");
    let client = ServiceBuilder::new()
        .retry(RetryOriginFailures { left: 2 })
        .layer(layer)
        .service(connector.clone());
    let request = Request::post(origin.url("/"))
        .body(Full::new(Bytes::from_static(b"12345")))
        .expect("request");
    let response = within("retried request", client.oneshot(request))
        .await
        .expect("the second attempt connects");
    assert_eq!(response.headers()["x-body-bytes"], "5");
    assert_eq!(connector.calls(), 2);
}

#[tokio::test]
async fn a_failing_connector_surfaces_as_a_connect_error() {
    let origin = TestOrigin::start(Options::plain()).await;
    let client = PoolLayer::http1().layer(CountingConnector::new(usize::MAX));
    let err = within("refused", client.oneshot(get(&origin.url("/"))))
        .await
        .expect_err("the connector refuses");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains("refused by the test connector"),
        "{err}"
    );
}

/// The layer validates when it is built, with exactly the builder's
/// messages, so a misconfiguration never waits for the first pool.
#[tokio::test]
async fn pool_layer_refuses_what_the_pool_builder_refuses() {
    type Tweak = (
        fn(PoolBuilder<Http1>) -> PoolBuilder<Http1>,
        fn(
            edgepool::service::PoolLayerBuilder<Http1>,
        ) -> edgepool::service::PoolLayerBuilder<Http1>,
    );
    let cases: [Tweak; 5] = [
        (
            |b| b.max_connections_per_origin(0),
            |b| b.max_connections_per_origin(0),
        ),
        (
            |b| b.checkout_timeout(Duration::ZERO),
            |b| b.checkout_timeout(Duration::ZERO),
        ),
        (
            |b| b.connect_timeout(Duration::ZERO),
            |b| b.connect_timeout(Duration::ZERO),
        ),
        (
            |b| b.idle_timeout(Some(Duration::ZERO)),
            |b| b.idle_timeout(Some(Duration::ZERO)),
        ),
        (
            |b| b.request_timeout(Some(Duration::ZERO)),
            |b| b.request_timeout(Some(Duration::ZERO)),
        ),
    ];
    for (pool_tweak, layer_tweak) in cases {
        let from_pool = pool_tweak(Pool::builder(Http1::new()))
            .build()
            .expect_err("builder refuses");
        let from_layer = layer_tweak(PoolLayer::builder(Http1::new()))
            .build()
            .expect_err("layer refuses");
        assert_eq!(from_layer.to_string(), from_pool.to_string());
    }
    // And what the builder accepts, the layer accepts.
    PoolLayer::builder(Http1::new())
        .max_pending_per_origin(1)
        .idle_timeout(None)
        .request_timeout(None)
        .open_more_when_saturated(false)
        .build()
        .expect("valid");
}

#[test]
fn try_layer_outside_a_runtime_is_an_error_not_a_panic() {
    let layer = PoolLayer::http1();
    let err = layer
        .try_layer(TcpConnector::new())
        .expect_err("no runtime");
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}

#[tokio::test]
async fn pool_service_is_send_sync_clone_and_its_future_is_send() {
    fn assert_traits<S: Send + Sync + Clone + 'static>(_: &S) {}
    fn assert_send<F: Send>(_: &F) {}
    let pool = Pool::builder(Http1::new()).build().expect("pool");
    let mut service = PoolService::new(pool);
    assert_traits(&service);
    let future = service.call(get("http://127.0.0.1:9/"));
    assert_send(&future);
    drop(future);
    within("ready", poll_fn(|cx| service.poll_ready(cx)))
        .await
        .expect("ready");
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn pool_layer_builds_an_http2_client_over_a_connector_service() {
    use edgepool::transport::http2::Http2;
    let origin = TestOrigin::start(Options {
        http2: true,
        ..Options::plain()
    })
    .await;
    let connector = CountingConnector::new(0);
    let layer = PoolLayer::builder(Http2::new())
        .origin(origin.origin())
        .build()
        .expect("valid layer");
    let client = ServiceBuilder::new()
        .concurrency_limit(8)
        .layer(layer)
        .service(connector.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            let response = client.oneshot(get("/")).await?;
            let version = response.headers()["x-seen-version"].clone();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(version)
        });
    }
    while let Some(done) = within("h2 requests", tasks.join_next()).await {
        assert_eq!(done.expect("task").expect("response"), "HTTP/2.0");
    }
    assert_eq!(connector.calls(), 1, "one h2 connection carries them all");
}
