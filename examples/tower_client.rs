//! tower_client: edgepool as the bottom of a tower stack.
//!
//! ```text
//! cargo run --example tower_client --features tower
//! ```
//!
//! Starts an origin on 127.0.0.1 (no network needed), then sends requests
//! through `ServiceBuilder` with retry, timeout and a concurrency limit over
//! a `PoolService`, and prints what happened to each.

#[cfg(not(all(feature = "tower", feature = "http1")))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "tower_client needs edgepool's `tower` and `http1` features: \
         cargo run --example tower_client --features tower"
    );
    std::process::ExitCode::from(2)
}

#[cfg(all(feature = "tower", feature = "http1"))]
fn main() -> Result<(), tower::BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::run())
}

#[cfg(all(feature = "tower", feature = "http1"))]
mod app {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use edgepool::service::PoolService;
    use edgepool::transport::http1::Http1;
    use edgepool::{Origin, Pool, ResponseBody};
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tower::{BoxError, ServiceBuilder, ServiceExt};

    /// How long each attempt may take, end to end.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

    pub async fn run() -> Result<(), BoxError> {
        let (addr, flaky_calls) = start_origin().await?;
        let origin = Origin::parse(&format!("http://{addr}"))?;
        println!("origin listening on {origin}");

        let pool = Pool::builder(Http1::new())
            .max_connections_per_origin(4)
            .build()?;
        // Outermost first: each retry is a fresh attempt with its own
        // timeout, and every attempt waits for one of 4 permits.
        let client = ServiceBuilder::new()
            .retry(RetryUnavailable { attempts_left: 3 })
            .timeout(ATTEMPT_TIMEOUT)
            .concurrency_limit(4)
            .service(PoolService::for_origin(pool.clone(), origin.clone()));

        // 1. A burst: 20 requests, at most 4 in flight, so at most 4 connections.
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = client.clone();
            burst.spawn(async move {
                let response = client.oneshot(get(&format!("/?n={i}"))?).await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok::<_, BoxError>(status)
            });
        }
        let mut ok = 0;
        while let Some(done) = burst.join_next().await {
            if done?? == StatusCode::OK {
                ok += 1;
            }
        }
        let stats = pool.stats().total;
        println!(
            "burst:   20 x GET /     -> {ok} x 200 over {} connection(s), {} reused",
            stats.cx_total, stats.rq_reused
        );

        // 2. Retry: the origin answers 503 twice, then 200.
        let response = client.clone().oneshot(get("/flaky")?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "retry:   GET /flaky     -> {status} {:?} after {} attempt(s)",
            String::from_utf8_lossy(&body),
            flaky_calls.load(Ordering::SeqCst)
        );

        // 3. Timeout: the origin takes 2 s; the attempt is cut at 500 ms and
        //    the policy does not retry a timeout.
        match client.clone().oneshot(get("/slow")?).await {
            Ok(response) => println!(
                "timeout: GET /slow      -> {} (unexpected)",
                response.status()
            ),
            Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
                println!("timeout: GET /slow      -> gave up after {ATTEMPT_TIMEOUT:?}")
            }
            Err(e) => println!("timeout: GET /slow      -> error: {e}"),
        }

        let s = pool.stats().total;
        println!(
            "pool:    rq_total={} rq_reused={} cx_total={} cx_active={} reuse_ratio={:.2}",
            s.rq_total,
            s.rq_reused,
            s.cx_total,
            s.cx_active,
            s.reuse_ratio()
        );
        pool.shutdown();
        Ok(())
    }

    fn get(path: &str) -> Result<Request<Full<Bytes>>, http::Error> {
        Request::get(path).body(Full::new(Bytes::new()))
    }

    /// Retries 503 responses and the pool's "try again" errors (origin
    /// failures, origin backed off), up to `attempts_left` more times. A
    /// timeout is not retried: the deadline is the caller's.
    #[derive(Clone)]
    struct RetryUnavailable {
        attempts_left: usize,
    }

    type PoolResponse = Response<ResponseBody<Http1>>;

    impl tower::retry::Policy<Request<Full<Bytes>>, PoolResponse, BoxError> for RetryUnavailable {
        type Future = std::future::Ready<()>;

        fn retry(
            &mut self,
            _request: &mut Request<Full<Bytes>>,
            result: &mut Result<PoolResponse, BoxError>,
        ) -> Option<Self::Future> {
            let worth_retrying = match result {
                Ok(response) => response.status() == StatusCode::SERVICE_UNAVAILABLE,
                Err(e) => e
                    .downcast_ref::<edgepool::Error>()
                    .is_some_and(|e| e.is_origin_failure() || e.retry_after().is_some()),
            };
            if worth_retrying && self.attempts_left > 0 {
                self.attempts_left -= 1;
                Some(std::future::ready(()))
            } else {
                None
            }
        }

        /// `http::Request` is not `Clone`; with a `Full` body it can be rebuilt.
        fn clone_request(
            &mut self,
            request: &Request<Full<Bytes>>,
        ) -> Option<Request<Full<Bytes>>> {
            let mut copy = Request::new(request.body().clone());
            *copy.method_mut() = request.method().clone();
            *copy.uri_mut() = request.uri().clone();
            *copy.headers_mut() = request.headers().clone();
            Some(copy)
        }
    }

    /// An origin on 127.0.0.1:0: `/slow` answers after 2 s, `/flaky` answers
    /// 503 (empty body) twice and then 200, anything else "hello" at once.
    /// Returns its address and how many `/flaky` requests it has seen.
    async fn start_origin() -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let flaky_calls = Arc::new(AtomicUsize::new(0));
        let calls = flaky_calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let calls = calls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| respond(request, calls.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok((addr, flaky_calls))
    }

    async fn respond(
        request: Request<Incoming>,
        flaky_calls: Arc<AtomicUsize>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, body) = match request.uri().path() {
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                (StatusCode::OK, "slow")
            }
            "/flaky" => {
                if flaky_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "")
                } else {
                    (StatusCode::OK, "finally")
                }
            }
            _ => (StatusCode::OK, "hello"),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        Ok(response)
    }
}
