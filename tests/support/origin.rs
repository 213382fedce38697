//! [`TestOrigin`]: an in-process HTTP origin on 127.0.0.1 that counts what
//! it sees and misbehaves on request.
//!
//! Every response echoes what the server saw, in headers:
//! - `x-conn-id`: the server-side connection number (1, 2, ... in accept order)
//! - `x-request-n`: the request's number on its connection (1, 2, ...)
//! - `x-seen-host`: the `Host` header (HTTP/1.x) or the URI authority (h2)
//! - `x-seen-uri`: the request target as received
//! - `x-seen-version`: `HTTP/1.1`, `HTTP/2.0`, ...
//! - `x-body-bytes`: how many request body bytes arrived
//! - `x-client-cert`: `present` or `absent` (TLS only)
//!
//! Query parameters change the response:
//! - `delay_ms=N`: wait N ms before answering
//! - `bytes=N`: answer with N bytes of `x` (default: `hello`)
//! - `status=N`: answer with status N (default 200)
//! - `close=1`: answer with `Connection: close` (HTTP/1.x), so the server
//!   closes the connection after the response
//! - `keep_alive=timeout=N,max=M`: answer with that `Keep-Alive` header
//! - `big_header=N`: add a header of N bytes (to test head size limits)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How a [`TestOrigin`] behaves. `Options::default()` is plaintext HTTP/1.1
/// with keep-alive and no idle timeout.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve TLS with the test CA's certificate (see [`super::certs`]).
    pub tls: bool,
    /// Also serve HTTP/2 (prior knowledge on plaintext; ALPN `h2` on TLS).
    pub http2: bool,
    /// Require a client certificate signed by the test CA (TLS only).
    pub require_client_cert: bool,
    /// Close every connection after its first response (no keep-alive).
    pub close_after_each_response: bool,
    /// Close a connection that has served nothing for about this long
    /// (checked once per period, so it closes after 1–2 periods).
    pub idle_timeout: Option<Duration>,
}

impl Options {
    /// Plaintext HTTP/1.1.
    pub fn plain() -> Self {
        Options::default()
    }

    /// HTTP/1.1 over TLS.
    pub fn tls() -> Self {
        Options {
            tls: true,
            ..Options::default()
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    tls_failures: AtomicUsize,
}

/// A running origin. Everything it started stops when it is dropped.
pub struct TestOrigin {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    tls: bool,
    counters: Arc<Counters>,
    close_idle: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TestOrigin {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(options: Options) -> TestOrigin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let counters = Arc::new(Counters::default());
        let (close_idle, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(
            listener,
            options.clone(),
            counters.clone(),
            close_idle.clone(),
        ));
        TestOrigin {
            addr,
            tls: options.tls,
            counters,
            close_idle,
            task,
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// An absolute URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.addr, path_and_query)
    }

    /// The edgepool origin for this server (no TLS configuration of its own).
    pub fn origin(&self) -> edgepool::Origin {
        edgepool::Origin::parse(&self.url("")).expect("test origin parses")
    }

    /// TCP connections accepted so far (TLS handshakes that failed included).
    pub fn connections_accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open on the server side.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed on the server side.
    pub fn tls_failures(&self) -> usize {
        self.counters.tls_failures.load(Ordering::SeqCst)
    }

    /// Closes every open connection once it is idle: idle ones at once,
    /// busy ones after their response (hyper's graceful shutdown).
    /// Connections accepted later are not affected.
    pub fn close_idle_connections(&self) {
        self.close_idle.send_modify(|generation| *generation += 1);
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so aborting
        // it aborts them too.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    options: Options,
    counters: Arc<Counters>,
    close_idle: watch::Sender<u64>,
) {
    let acceptor = tls_acceptor(&options);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let id = counters.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = tcp.set_nodelay(true);
                connections.spawn(connection(
                    tcp,
                    id,
                    options.clone(),
                    acceptor.clone(),
                    counters.clone(),
                    close_idle.subscribe(),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(feature = "tls")]
type Acceptor = Option<tokio_rustls::TlsAcceptor>;
/// Without the `tls` feature there is no acceptor to have.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum NoTls {}
#[cfg(not(feature = "tls"))]
type Acceptor = Option<NoTls>;

#[cfg(feature = "tls")]
fn tls_acceptor(options: &Options) -> Acceptor {
    if !options.tls {
        return None;
    }
    let alpn = if options.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let config = super::certs::server_config(alpn, options.require_client_cert);
    Some(tokio_rustls::TlsAcceptor::from(config))
}

#[cfg(not(feature = "tls"))]
fn tls_acceptor(options: &Options) -> Acceptor {
    assert!(!options.tls, "TestOrigin with TLS needs the `tls` feature");
    None
}

/// Decrements the open-connection gauge however the task ends (abort included).
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    tcp: TcpStream,
    id: usize,
    options: Options,
    acceptor: Acceptor,
    counters: Arc<Counters>,
    close_idle: watch::Receiver<u64>,
) {
    counters.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(counters.clone());
    match acceptor {
        None => serve(tcp, id, None, &options, counters, close_idle).await,
        #[cfg(feature = "tls")]
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(tls) => {
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                serve(tls, id, Some(client_cert), &options, counters, close_idle).await
            }
            Err(_) => {
                counters.tls_failures.fetch_add(1, Ordering::SeqCst);
            }
        },
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
    }
}

/// What one connection's requests share.
struct ConnInfo {
    id: usize,
    client_cert: Option<bool>,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    counters: Arc<Counters>,
}

async fn serve<IO>(
    io: IO,
    id: usize,
    client_cert: Option<bool>,
    options: &Options,
    counters: Arc<Counters>,
    mut close_idle: watch::Receiver<u64>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(ConnInfo {
        id,
        client_cert,
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        counters,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(!options.close_after_each_response);
    if !options.http2 {
        builder = builder.http1_only();
    }
    let service_info = info.clone();
    let service = service_fn(move |request| respond(request, service_info.clone()));
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));

    let mut shutting_down = false;
    let mut served_at_last_tick = 0;
    loop {
        let tick = if shutting_down {
            None
        } else {
            options.idle_timeout
        };
        let idle_tick = async move {
            match tick {
                Some(period) => tokio::time::sleep(period).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = close_idle.changed(), if !shutting_down => {
                // An error means the TestOrigin is gone; close either way.
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            () = idle_tick => {
                let served = info.requests.load(Ordering::SeqCst);
                if served == served_at_last_tick && info.in_flight.load(Ordering::SeqCst) == 0 {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                served_at_last_tick = served;
            }
        }
    }
}

struct InFlight(Arc<ConnInfo>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads a `key=value` query parameter.
fn param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn respond(
    request: Request<Incoming>,
    info: Arc<ConnInfo>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    info.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(info.clone());
    let request_n = info.requests.fetch_add(1, Ordering::SeqCst) + 1;
    info.counters.requests.fetch_add(1, Ordering::SeqCst);

    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let seen_host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let seen_uri = request.uri().to_string();
    let version = request.version();

    if let Some(ms) = param(query, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body_bytes = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };

    let body = match param(query, "bytes").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from_static(b"hello"),
    };
    let status = param(query, "status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);

    let mut response = Response::builder()
        .status(status)
        .header("x-conn-id", info.id)
        .header("x-request-n", request_n)
        .header("x-seen-host", seen_host)
        .header("x-seen-uri", seen_uri)
        .header("x-seen-version", format!("{version:?}"))
        .header("x-body-bytes", body_bytes);
    if let Some(present) = info.client_cert {
        response = response.header("x-client-cert", if present { "present" } else { "absent" });
    }
    let is_h1 = version == Version::HTTP_11 || version == Version::HTTP_10;
    if is_h1 && param(query, "close") == Some("1") {
        response = response.header(http::header::CONNECTION, "close");
    }
    if let Some(n) = param(query, "big_header").and_then(|v| v.parse::<usize>().ok()) {
        response = response.header("x-big", "a".repeat(n));
    }
    if let Some(hint) = param(query, "keep_alive") {
        // `keep_alive=timeout=1,max=5` becomes `Keep-Alive: timeout=1, max=5`.
        response = response.header("keep-alive", hint.replace(',', ", "));
    }
    Ok(response.body(Full::new(body)).expect("valid test response"))
}
