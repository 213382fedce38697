//! The reverse proxy itself, independent of the command line: request
//! rewriting, error mapping, the stats endpoint, and the serve loop over a
//! bound listener with a shutdown signal. `tests/edge_proxy.rs` includes this
//! file as a module and runs it in-process.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgepool::{BoxError, Error, ErrorKind, Origin, Pool, ResponseBody, Transport};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where the pool's counters are served, as JSON.
pub const STATS_PATH: &str = "/_edgepool/stats";

/// Largest request head (request line plus headers) accepted from a client;
/// a larger one gets 431 from hyper.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// The body of every response the proxy sends: the origin's, streamed, or
/// one the proxy wrote itself (errors, stats).
pub type ProxyBody<T> = Either<ResponseBody<T>, Full<Bytes>>;

/// Time limits of the proxy's client side. The origin side's (connect,
/// checkout, response head) are the pool's own settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a shutdown waits for requests in flight before it cuts them.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Forwards requests to one origin through a pool. Cheap to clone.
pub struct Proxy<T: Transport> {
    inner: Arc<Inner<T>>,
}

struct Inner<T: Transport> {
    pool: Pool<T>,
    origin: Origin,
    /// The Host header every forwarded request carries.
    host: HeaderValue,
    limits: Limits,
}

impl<T: Transport> Clone for Proxy<T> {
    fn clone(&self) -> Self {
        Proxy {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Transport> Proxy<T> {
    /// A proxy to `origin` over `pool`.
    pub fn new(pool: Pool<T>, origin: Origin, limits: Limits) -> Result<Self, String> {
        let host = HeaderValue::from_str(&origin.authority())
            .map_err(|_| format!("origin {origin} has no valid Host header form"))?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                pool,
                origin,
                host,
                limits,
            }),
        })
    }

    /// The pool requests go through.
    pub fn pool(&self) -> &Pool<T> {
        &self.inner.pool
    }

    /// Answers one client request: the stats endpoint, or the origin's
    /// response, or an error response. Never fails.
    pub async fn handle<B>(&self, request: Request<B>, client: SocketAddr) -> Response<ProxyBody<T>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if request.uri().path() == STATS_PATH {
            return self.stats(request.method()).map(Either::Right);
        }
        let request = match self.rewrite(request, client) {
            Ok(request) => request,
            Err((status, message)) => return plain(status, message).map(Either::Right),
        };
        let inner = &self.inner;
        match inner.pool.request_to(&inner.origin, request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(error) => {
                eprintln!("edge_proxy: {error}");
                error_response(&error).map(Either::Right)
            }
        }
    }

    /// Turns a client's request into the origin's: origin-form target,
    /// hop-by-hop headers dropped, Host set to the origin, X-Forwarded-*
    /// added. The body is passed on as it is, unread. A request that cannot
    /// be forwarded gets the status and message to answer with instead.
    fn rewrite<B>(
        &self,
        request: Request<B>,
        client: SocketAddr,
    ) -> Result<Request<B>, (StatusCode, &'static str)> {
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: CONNECT is not supported by this reverse proxy",
            ));
        }
        let Some(target) = parts
            .uri
            .path_and_query()
            .filter(|pq| pq.as_str().starts_with('/'))
            .cloned()
        else {
            return Err((
                StatusCode::BAD_REQUEST,
                "bad request: the request target must be a path",
            ));
        };
        // What the client asked for: Host (HTTP/1.1) or :authority (HTTP/2).
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = Uri::from(target);
        parts.version = Version::HTTP_11;
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.inner.host.clone());
        if let Some(host) = client_host {
            parts.headers.insert(X_FORWARDED_HOST, host);
        }
        append_forwarded_for(&mut parts.headers, client);
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        Ok(Request::from_parts(parts, body))
    }

    /// `GET /_edgepool/stats`: the pool's snapshot as JSON.
    fn stats(&self, method: &Method) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: the stats endpoint answers GET",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        stats_json(&self.inner.pool.stats())
    }
}

#[cfg(feature = "serde")]
fn stats_json(stats: &edgepool::PoolStats) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(stats) {
        Ok(mut json) => {
            json.push(b'\n');
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("internal error: cannot serialize stats: {e}"),
        ),
    }
}

#[cfg(not(feature = "serde"))]
fn stats_json(_stats: &edgepool::PoolStats) -> Response<Full<Bytes>> {
    plain(
        StatusCode::NOT_IMPLEMENTED,
        "not implemented: the stats endpoint needs edgepool's serde feature (--features serde)",
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1),
/// besides the ones a `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops the hop-by-hop headers: those named in `Connection`, then the
/// fixed set. Used on requests and responses alike.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For` (one combined value).
fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let mut chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    chain.push(&ip);
    if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// The status and one-line message a client gets for a pool failure.
///
/// - 502: the origin could not be reached or failed the request.
/// - 503: the origin's pending queue is full, the origin is backed off after
///   failed connects (circuit open), or the pool is shutting down.
/// - 504: a deadline passed: connecting, waiting for a free connection, or
///   waiting for the response head.
///
/// The message is generic on purpose: the error itself (origin address, OS
/// error) goes to the proxy's log, not to the client.
pub fn error_status(error: &Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match error {
        Error::ConnectTimeout { .. } => (
            S::GATEWAY_TIMEOUT,
            "gateway timeout: connecting to the origin timed out",
        ),
        Error::CheckoutTimeout { .. } => (
            S::GATEWAY_TIMEOUT,
            "gateway timeout: no connection to the origin became free in time",
        ),
        Error::RequestTimeout { .. } => (
            S::GATEWAY_TIMEOUT,
            "gateway timeout: the origin did not answer in time",
        ),
        Error::Connect { .. } => (
            S::BAD_GATEWAY,
            "bad gateway: could not connect to the origin",
        ),
        _ => match error.kind() {
            ErrorKind::PoolFull => (
                S::SERVICE_UNAVAILABLE,
                "service unavailable: too many requests are waiting for the origin",
            ),
            ErrorKind::Unavailable => (
                S::SERVICE_UNAVAILABLE,
                "service unavailable: the origin is refusing connections; backing off",
            ),
            ErrorKind::Shutdown => (
                S::SERVICE_UNAVAILABLE,
                "service unavailable: the proxy is shutting down",
            ),
            ErrorKind::InvalidInput => (
                S::BAD_REQUEST,
                "bad request: the request target cannot be forwarded",
            ),
            _ => (S::BAD_GATEWAY, "bad gateway: the origin failed the request"),
        },
    }
}

/// [`error_status`] as a response, with `Retry-After` (whole seconds,
/// rounded up) when the pool knows when a retry may succeed.
pub fn error_response(error: &Error) -> Response<Full<Bytes>> {
    let (status, message) = error_status(error);
    let mut response = plain(status, message);
    if let Some(after) = error.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// A response with a one-line text/plain body.
fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Accepts clients on `listener` and serves them until `shutdown`
/// completes; then stops accepting, lets every connection finish what it is
/// doing (HTTP/1.1 closes after its response in flight, HTTP/2 sends
/// GOAWAY), and returns once they have, or after the drain timeout.
pub async fn serve<T, S>(listener: TcpListener, proxy: Proxy<T>, shutdown: S)
where
    T: Transport,
    S: Future<Output = ()>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, client)) => {
                    connections.spawn(serve_connection(tcp, client, proxy.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: say so, and do
                    // not spin on it.
                    eprintln!("edge_proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(proxy.inner.limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "edge_proxy: {} connection(s) still busy after {:?}; closing them",
            connections.len(),
            proxy.inner.limits.drain_timeout
        );
        connections.shutdown().await;
    }
}

/// Serves one client connection (HTTP/1.1, or HTTP/2 with prior knowledge)
/// until it ends, or gracefully once `stop` turns true.
async fn serve_connection<T: Transport>(
    tcp: TcpStream,
    client: SocketAddr,
    proxy: Proxy<T>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let limits = proxy.inner.limits;
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, client).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(tcp), service));
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
