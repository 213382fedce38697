//! HTTP/1.1 over TCP or TLS, on hyper's client connection.
//!
//! One connection carries one request at a time (one slot). hyper's
//! connection future runs on its own task; when it ends (the peer closed
//! the connection, an I/O error, `Connection: close`, or every handle was
//! dropped) the task reports [`ConnEvent::Closed`].

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{CONNECTION, HOST, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use super::connector::{Connector, TcpConnector};
use super::stream::MaybeTlsStream;
#[cfg(feature = "tls")]
use super::tls::{Alpn, TlsConfig, TransportTls};
use super::{
    ConnEvent, ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError, Transport,
};
use crate::{Error, Origin, Scheme};

/// Default cap on a response head (status line plus headers), in bytes.
const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Largest accepted cap on a response head, in bytes.
const MAX_RESPONSE_HEADER_BYTES_LIMIT: usize = 1024 * 1024;
/// hyper's own cap on the header count; kept unless changed because hyper
/// parses up to this many on the stack and any explicit value moves that
/// buffer to the heap for every response.
const DEFAULT_MAX_HEADERS: usize = 100;
/// Largest accepted cap on the header count.
const MAX_HEADERS_LIMIT: usize = 10_000;
/// hyper's default read buffer cap (8 KiB + 100 × 4 KiB); a larger head cap
/// must raise it, or the buffer limit would win.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// Opens HTTP/1.1 connections: plaintext for `http://` origins, TLS (ALPN
/// `http/1.1`) for `https://` ones. Cheap to clone.
///
/// Response heads are bounded so a broken or hostile origin cannot make the
/// proxy buffer without limit: by default at most 64 KiB and 100 headers.
#[derive(Clone, Debug)]
pub struct Http1<C = TcpConnector> {
    connector: C,
    max_response_header_bytes: usize,
    max_headers: usize,
    #[cfg(feature = "tls")]
    tls: TransportTls,
}

impl Http1<TcpConnector> {
    /// A transport that verifies `https://` origins against the webpki roots,
    /// unless an origin carries its own configuration ([`Origin::with_tls`]).
    pub fn new() -> Self {
        Http1 {
            connector: TcpConnector::new(),
            max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            #[cfg(feature = "tls")]
            tls: TransportTls::default(),
        }
    }

    /// A transport whose `https://` connections use `tls` (private roots, a
    /// client certificate), unless an origin carries its own configuration,
    /// which always wins: the origin's configuration is part of its pool key.
    #[cfg(feature = "tls")]
    pub fn with_tls(tls: TlsConfig) -> Self {
        Http1 {
            tls: TransportTls::new(Some(tls)),
            ..Http1::new()
        }
    }
}

impl<C: Connector> Http1<C> {
    /// The same transport over another connector (your own DNS, a Unix
    /// socket, a proxy hop, or [`TcpConnector`] wrapped in tower middleware).
    pub fn with_connector<C2: Connector>(self, connector: C2) -> Http1<C2> {
        Http1 {
            connector,
            max_response_header_bytes: self.max_response_header_bytes,
            max_headers: self.max_headers,
            #[cfg(feature = "tls")]
            tls: self.tls,
        }
    }

    /// Caps a response's status line plus headers, in bytes (default 64 KiB,
    /// at most 1 MiB). A larger head fails the request instead of growing
    /// the read buffer. Rejects 0 and values above the maximum.
    pub fn max_response_header_bytes(mut self, bytes: usize) -> Result<Self, Error> {
        if bytes == 0 || bytes > MAX_RESPONSE_HEADER_BYTES_LIMIT {
            return Err(Error::config(
                "max_response_header_bytes",
                bytes,
                "must be between 1 and 1048576",
            ));
        }
        self.max_response_header_bytes = bytes;
        Ok(self)
    }

    /// Caps how many headers a response may have (default 100, hyper's own
    /// limit, parsed on the stack; any other value makes hyper allocate the
    /// parse buffer per response). Rejects 0 and values above 10000.
    pub fn max_headers(mut self, count: usize) -> Result<Self, Error> {
        if count == 0 || count > MAX_HEADERS_LIMIT {
            return Err(Error::config(
                "max_headers",
                count,
                "must be between 1 and 10000",
            ));
        }
        self.max_headers = count;
        Ok(self)
    }

    fn hyper_builder(&self) -> Builder {
        let mut builder = Builder::new();
        builder.max_header_size(self.max_response_header_bytes);
        if self.max_response_header_bytes > HYPER_DEFAULT_MAX_BUF {
            // Checked in the setter: always above hyper's 8 KiB minimum here,
            // so this cannot hit hyper's assertion.
            builder.max_buf_size(self.max_response_header_bytes + 8192);
        }
        if self.max_headers != DEFAULT_MAX_HEADERS {
            builder.max_headers(self.max_headers);
        }
        builder
    }

    async fn open_stream(&self, origin: &Origin) -> Result<MaybeTlsStream<C::Io>, Error> {
        match origin.scheme() {
            Scheme::Http => Ok(MaybeTlsStream::Plain(self.connector.connect(origin).await?)),
            #[cfg(feature = "tls")]
            Scheme::Https => {
                let tls = self.tls.for_origin(origin)?;
                let tcp = self.connector.connect(origin).await?;
                let (stream, _alpn) = tls.connect(tcp, origin, Alpn::Http1).await?;
                // rustls refuses a server-selected protocol we did not offer,
                // so the connection speaks HTTP/1.1 whether or not ALPN ran.
                Ok(MaybeTlsStream::Tls(Box::new(stream)))
            }
            #[cfg(not(feature = "tls"))]
            Scheme::Https => Err(Error::InvalidOrigin {
                uri: origin.to_string(),
                reason: "https origins need edgepool's `tls` feature",
            }),
        }
    }
}

impl Default for Http1 {
    fn default() -> Self {
        Http1::new()
    }
}

impl<C: Connector> Transport for Http1<C> {
    type Conn = Http1Connection;

    async fn connect(&self, origin: &Origin, events: ConnEvents) -> Result<Http1Connection, Error> {
        let stream = self.open_stream(origin).await?;
        self.connect_over(stream, origin, events).await
    }
}

impl<C: Connector> Http1<C> {
    /// Runs the HTTP/1.1 handshake over an already open stream and starts
    /// the connection's task. Shared with the ALPN-auto transport, which
    /// opens the TLS stream itself and learns only then which protocol to
    /// speak on it.
    pub(crate) async fn connect_over<IO>(
        &self,
        io: IO,
        origin: &Origin,
        events: ConnEvents,
    ) -> Result<Http1Connection, Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // tokio::spawn would panic outside a runtime; say so instead.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown {
            reason: "no tokio runtime is running",
        })?;
        let (sender, conn) = self
            .hyper_builder()
            .handshake::<_, RequestBody>(TokioIo::new(io))
            .await
            .map_err(|e| Error::connect(origin, e))?;

        let lifecycle = Arc::new(Lifecycle {
            state: AtomicU8::new(READY),
            order: Mutex::new(()),
            events,
        });
        let task_lifecycle = lifecycle.clone();
        let task_origin = origin.clone();
        let abort = Arc::new(tokio::sync::Notify::new());
        let task_abort = abort.clone();
        runtime.spawn(async move {
            tokio::select! {
                result = conn => match result {
                    Ok(()) => tracing::debug!(origin = %task_origin, "HTTP/1.1 connection closed"),
                    Err(error) => {
                        tracing::debug!(origin = %task_origin, %error, "HTTP/1.1 connection failed")
                    }
                },
                // Dropping hyper's connection future closes the socket; the
                // request in flight, if any, fails.
                () = task_abort.notified() => {
                    tracing::debug!(origin = %task_origin, "HTTP/1.1 connection aborted")
                }
            }
            task_lifecycle.to_closed();
        });
        tracing::debug!(%origin, "HTTP/1.1 connection open");

        Ok(Http1Connection {
            abort,
            origin: origin.clone(),
            sender: Mutex::new(Some(sender)),
            lifecycle,
        })
    }
}

/// One HTTP/1.1 connection. Dropping it lets the connection finish the
/// response in flight (if any) and close.
pub struct Http1Connection {
    /// Tells the connection task to drop the connection now.
    abort: Arc<tokio::sync::Notify>,
    origin: Origin,
    /// `None` while a send is between taking the sender and handing the
    /// request to hyper; the lock is never held across an await.
    sender: Mutex<Option<SendRequest<RequestBody>>>,
    /// Shared with the connection task, which moves it to closed.
    lifecycle: Arc<Lifecycle>,
}

const READY: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

/// Where a connection is in its life, and the one place that reports it.
///
/// Race: hyper may finish a `Connection: close` exchange (and the task may
/// report `Closed`) before `send` sees the response and would report
/// `Draining`. Each transition and its report happen under `order`, and a
/// transition only moves forward, so the pool never hears `Draining` after
/// `Closed`. Only the report is serialized; `state()` reads the atomic and
/// never takes `order`, so an event sink may call it.
struct Lifecycle {
    state: AtomicU8,
    order: Mutex<()>,
    events: ConnEvents,
}

impl Lifecycle {
    fn load(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Returns whether this call made the transition.
    fn to_draining(&self) -> bool {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = self
            .state
            .compare_exchange(READY, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.events.report(ConnEvent::Draining);
        }
        moved
    }

    fn to_closed(&self) {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            self.events.report(ConnEvent::Closed);
        }
    }
}

impl Http1Connection {
    /// The origin this connection was opened to.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    fn mark_draining(&self) {
        if self.lifecycle.to_draining() {
            tracing::debug!(origin = %self.origin, "HTTP/1.1 connection will close after this exchange");
        }
    }
}

impl fmt::Debug for Http1Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Connection")
            .field("origin", &self.origin)
            .field("state", &self.state())
            .finish()
    }
}

/// Holds the sender outside the lock and puts it back when dropped, so a
/// cancelled send (dropped while waiting for `ready()`) cannot lose it.
struct SenderGuard<'a> {
    slot: &'a Mutex<Option<SendRequest<RequestBody>>>,
    sender: Option<SendRequest<RequestBody>>,
}

impl<'a> SenderGuard<'a> {
    fn take(slot: &'a Mutex<Option<SendRequest<RequestBody>>>) -> Option<Self> {
        let sender = slot.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(SenderGuard {
            slot,
            sender: Some(sender),
        })
    }

    fn sender(&mut self) -> Option<&mut SendRequest<RequestBody>> {
        self.sender.as_mut()
    }
}

impl Drop for SenderGuard<'_> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        }
    }
}

impl Connection for Http1Connection {
    type ResponseBody = hyper::body::Incoming;

    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn slots(&self) -> usize {
        1
    }

    fn state(&self) -> ConnState {
        let lifecycle = self.lifecycle.load();
        if lifecycle == CLOSED {
            return ConnState::Closed;
        }
        let sender_closed = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(SendRequest::is_closed);
        if sender_closed {
            ConnState::Closed
        } else if lifecycle == DRAINING {
            ConnState::Draining
        } else {
            ConnState::Ready
        }
    }

    async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        let (request, original) = to_origin_form(request, &self.origin);
        let Some(mut guard) = SenderGuard::take(&self.sender) else {
            return Err(SendError {
                error: Error::request(
                    &self.origin,
                    "the HTTP/1.1 connection is busy with another request",
                ),
                unsent: Some(original.restore(request)),
            });
        };
        let Some(sender) = guard.sender() else {
            return Err(SendError {
                error: Error::request(&self.origin, "the HTTP/1.1 connection lost its sender"),
                unsent: Some(original.restore(request)),
            });
        };
        // Waits until the previous response (body included) is done; fails
        // only if the connection is closed, so nothing was written.
        if let Err(e) = sender.ready().await {
            return Err(SendError {
                error: Error::request(&self.origin, e),
                unsent: Some(original.restore(request)),
            });
        }
        if wants_close(request.headers(), request.version()) {
            // The caller asked for this to be the last exchange.
            self.mark_draining();
        }
        // The future does not borrow the sender, so it goes back right away.
        let response = sender.try_send_request(request);
        drop(guard);
        match response.await {
            Ok(response) => {
                if wants_close(response.headers(), response.version()) {
                    self.mark_draining();
                }
                Ok(response)
            }
            Err(mut e) => {
                // hyper hands the request back when it failed before writing it.
                let unsent = e.take_message().map(|r| original.restore(r));
                Err(SendError {
                    error: Error::request(&self.origin, e.into_error()),
                    unsent,
                })
            }
        }
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        false
    }

    fn abort(&self) {
        // notify_one keeps a permit if the task is not waiting yet.
        self.abort.notify_one();
    }
}

/// What [`to_origin_form`] changed, to undo it on a request handed back unsent,
/// so the caller can send it elsewhere exactly as it gave it.
#[derive(Debug)]
struct Original {
    uri: Uri,
    version: Version,
    added_host: bool,
}

impl Original {
    fn restore(self, mut request: Request<RequestBody>) -> Request<RequestBody> {
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        if self.added_host {
            request.headers_mut().remove(HOST);
        }
        request
    }
}

/// Turns a request with an absolute URI into what goes on an HTTP/1.1 wire:
/// origin-form target (`/path?query`), a `Host` header (from the URI's
/// authority without user info, else the origin's) and version 1.1 (1.0 is
/// kept; hyper cannot write any other version).
fn to_origin_form(
    request: Request<RequestBody>,
    origin: &Origin,
) -> (Request<RequestBody>, Original) {
    let (mut parts, body) = request.into_parts();
    let original = Original {
        uri: parts.uri.clone(),
        version: parts.version,
        added_host: !parts.headers.contains_key(HOST),
    };
    if original.added_host {
        let host = match parts.uri.authority() {
            Some(authority) => host_of(authority),
            None => HeaderValue::from_str(&origin.authority()).ok(),
        };
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
    }
    let target = match parts.uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() && pq.as_str().starts_with('/') => pq.clone(),
        Some(pq) if pq.as_str() == "*" => pq.clone(),
        Some(pq) if pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        }
        _ => PathAndQuery::from_static("/"),
    };
    parts.uri = Uri::from(target);
    if parts.version != Version::HTTP_10 {
        parts.version = Version::HTTP_11;
    }
    (Request::from_parts(parts, body), original)
}

/// `host[:port]` of an authority, dropping any user info.
fn host_of(authority: &Authority) -> Option<HeaderValue> {
    let value = match authority.port() {
        Some(port) => format!("{}:{}", authority.host(), port.as_str()),
        None => authority.host().to_string(),
    };
    HeaderValue::from_str(&value).ok()
}

/// Whether a message's headers (and version) mean the connection closes
/// after it: `Connection: close`, or HTTP/1.0 without `keep-alive`.
fn wants_close(headers: &HeaderMap, version: Version) -> bool {
    let mut keep_alive = false;
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                return true;
            }
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    version == Version::HTTP_10 && !keep_alive
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    fn empty() -> RequestBody {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn request(uri: &str) -> Request<RequestBody> {
        Request::builder().uri(uri).body(empty()).expect("request")
    }

    fn origin() -> Origin {
        Origin::parse("http://127.0.0.1:8080").expect("origin")
    }

    #[test]
    fn absolute_uri_becomes_origin_form_with_host() {
        let (req, _) = to_origin_form(request("http://127.0.0.1:8080/a/b?q=1"), &origin());
        assert_eq!(req.uri().to_string(), "/a/b?q=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.version(), Version::HTTP_11);

        let (req, _) = to_origin_form(request("http://example.com"), &origin());
        assert_eq!(req.uri().to_string(), "/");
        assert_eq!(req.headers()[HOST], "example.com");

        let (req, _) = to_origin_form(request("http://example.com?x=1"), &origin());
        assert_eq!(req.uri().to_string(), "/?x=1");
    }

    #[test]
    fn host_drops_user_info_and_keeps_a_given_host() {
        let (req, _) = to_origin_form(request("http://user:pw@example.com:81/"), &origin());
        assert_eq!(req.headers()[HOST], "example.com:81");

        let mut given = request("http://127.0.0.1:8080/x");
        given
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("virtual.example"));
        let (req, _) = to_origin_form(given, &origin());
        assert_eq!(req.headers()[HOST], "virtual.example");
    }

    #[test]
    fn origin_form_input_gets_the_origins_host() {
        let (req, _) = to_origin_form(request("/only/path"), &origin());
        assert_eq!(req.uri().to_string(), "/only/path");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
    }

    #[test]
    fn versions_hyper_cannot_write_become_http11() {
        let mut req = request("http://127.0.0.1:8080/");
        *req.version_mut() = Version::HTTP_2;
        assert_eq!(to_origin_form(req, &origin()).0.version(), Version::HTTP_11);
        let mut req = request("http://127.0.0.1:8080/");
        *req.version_mut() = Version::HTTP_3;
        assert_eq!(to_origin_form(req, &origin()).0.version(), Version::HTTP_11);
        let mut req = request("http://127.0.0.1:8080/");
        *req.version_mut() = Version::HTTP_10;
        assert_eq!(to_origin_form(req, &origin()).0.version(), Version::HTTP_10);
    }

    #[test]
    fn restore_gives_back_the_request_as_given() {
        let mut given = request("http://127.0.0.1:8080/p?q");
        *given.version_mut() = Version::HTTP_2;
        let (req, original) = to_origin_form(given, &origin());
        let back = original.restore(req);
        assert_eq!(back.uri().to_string(), "http://127.0.0.1:8080/p?q");
        assert_eq!(back.version(), Version::HTTP_2);
        assert!(!back.headers().contains_key(HOST));

        let mut given = request("http://127.0.0.1:8080/");
        given
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("keep.example"));
        let (req, original) = to_origin_form(given, &origin());
        assert_eq!(original.restore(req).headers()[HOST], "keep.example");
    }

    #[test]
    fn connection_close_detection() {
        let mut h = HeaderMap::new();
        assert!(!wants_close(&h, Version::HTTP_11));
        assert!(wants_close(&h, Version::HTTP_10));
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(!wants_close(&h, Version::HTTP_10));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade, Close"));
        assert!(wants_close(&h, Version::HTTP_11));
    }

    #[test]
    fn limits_reject_out_of_range_values() {
        let field = |r: Result<Http1, Error>| match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(
            field(Http1::new().max_response_header_bytes(0)),
            "max_response_header_bytes"
        );
        assert_eq!(
            field(Http1::new().max_response_header_bytes(MAX_RESPONSE_HEADER_BYTES_LIMIT + 1)),
            "max_response_header_bytes"
        );
        assert_eq!(field(Http1::new().max_headers(0)), "max_headers");
        // Values that hyper would assert on must never reach it.
        let big = Http1::new()
            .max_response_header_bytes(MAX_RESPONSE_HEADER_BYTES_LIMIT)
            .expect("max");
        let _ = big.hyper_builder();
        let small = Http1::new().max_response_header_bytes(1).expect("min");
        let _ = small.hyper_builder();
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        let (origin, _) = crate::transport::closed_port_origin().await;
        let err = Http1::new()
            .connect(&origin, ConnEvents::detached())
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    }

    /// A one-connection server that answers each request head with a fixed
    /// response, then closes after `answers` responses.
    async fn scripted_server(
        response: &'static [u8],
        answers: usize,
    ) -> (Origin, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            for _ in 0..answers {
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return seen;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                s.write_all(response).await.expect("write");
            }
            seen
        });
        (
            Origin::parse(&format!("http://127.0.0.1:{port}")).expect("origin"),
            task,
        )
    }

    #[tokio::test]
    async fn wire_format_and_connection_close_drains() {
        let (origin, server) = scripted_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            1,
        )
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = ConnEvents::new(move |e| {
            let _ = tx.send(e);
        });
        let conn = Http1::new()
            .connect(&origin, events)
            .await
            .expect("connect");
        assert_eq!(conn.state(), ConnState::Ready);
        assert_eq!(conn.slots(), 1);
        assert_eq!(conn.protocol(), Protocol::Http1);
        assert!(!conn.reusable_after_abandoned_body());
        let uri = format!("{origin}/hello?x=1");
        let response = conn.send(request(&uri)).await.expect("send");
        // hyper may already report its sender closed, which is just as final.
        assert_ne!(conn.state(), ConnState::Ready);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
        // Draining is reported only if it came first; Closed always, and last.
        let wait = std::time::Duration::from_secs(10);
        let mut event = tokio::time::timeout(wait, rx.recv()).await.expect("event");
        if event == Some(ConnEvent::Draining) {
            event = tokio::time::timeout(wait, rx.recv()).await.expect("event");
        }
        assert_eq!(event, Some(ConnEvent::Closed));
        assert_eq!(conn.state(), ConnState::Closed);
        let seen = String::from_utf8(server.await.expect("server")).expect("utf8");
        let host = format!("host: {}\r\n", origin.authority());
        assert!(seen.starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.to_ascii_lowercase().contains(&host), "{seen}");

        // A send on the closed connection hands the request back untouched.
        let err = conn.send(request(&uri)).await.expect_err("closed");
        let unsent = err.unsent.expect("request handed back");
        assert_eq!(unsent.uri().to_string(), uri);
        assert!(!unsent.headers().contains_key(HOST));
        assert!(err.error.is_origin_failure());
    }

    #[tokio::test]
    async fn response_head_limit_is_enforced() {
        let (origin, _server) =
            scripted_server(b"HTTP/1.1 200 OK\r\nx-big: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\ncontent-length: 0\r\n\r\n", 1).await;
        let transport = Http1::new().max_response_header_bytes(32).expect("limit");
        let conn = transport
            .connect(&origin, ConnEvents::detached())
            .await
            .expect("connect");
        let err = conn
            .send(request(&format!("{origin}/")))
            .await
            .expect_err("too large");
        assert!(err.unsent.is_none(), "the request was written");
        assert!(
            matches!(err.error, Error::Request { .. }),
            "{:?}",
            err.error
        );
    }
}
