//! Transports: what a connection is, and how one is opened.
//!
//! The pool knows nothing of protocols. It asks a [`Transport`] to open a
//! [`Connection`] to an [`Origin`], asks the connection how many stream slots
//! it has, and sends requests over it. The connection's own background task
//! reports what happens to it later (peer closed it, GOAWAY, a new stream
//! limit) through the [`ConnEvents`] handle it was given at connect time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};

use crate::{BoxError, Error};

#[cfg(all(feature = "http2", feature = "http1", feature = "tls"))]
pub mod auto;
pub mod connector;
#[cfg(feature = "http1")]
pub mod http1;
#[cfg(feature = "http2")]
pub mod http2;
#[cfg(feature = "http3")]
pub mod http3;
pub mod origin;
pub(crate) mod stream;
#[cfg(feature = "tls")]
pub mod tls;

pub use origin::{Origin, Scheme};

/// The request body every transport accepts: any body, boxed once.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The wire protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1: one request at a time.
    Http1,
    /// HTTP/2: many concurrent streams.
    Http2,
    /// HTTP/3 over QUIC: many concurrent streams.
    Http3,
}

impl Protocol {
    /// The protocol's name as ALPN and humans spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
        }
    }
}

/// Whether a connection may carry new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// It may carry new requests.
    Ready,
    /// It finishes what it carries but takes nothing new (GOAWAY, `Connection: close`).
    Draining,
    /// It is gone.
    Closed,
}

/// Opens connections to origins.
pub trait Transport: Send + Sync + 'static {
    /// The connection type this transport opens.
    type Conn: Connection;

    /// How many slots a connection is expected to have before it has said
    /// (1 for HTTP/1.1; the local stream maximum for HTTP/2 and HTTP/3). The
    /// pool uses it to decide how many connects to start for a queue of
    /// waiting requests, until a real connection reports its real number.
    fn expected_slots(&self) -> usize {
        1
    }

    /// Opens a connection. It returns once the connection can carry a request
    /// (TCP and TLS done; for HTTP/2, the peer's SETTINGS received).
    ///
    /// `events` is where the connection's background task reports what
    /// happens to it later; a transport that has no background task may
    /// ignore it, and then must report the truth through
    /// [`Connection::state`].
    fn connect(
        &self,
        origin: &Origin,
        events: ConnEvents,
    ) -> impl Future<Output = Result<Self::Conn, Error>> + Send;
}

/// An open connection to an origin.
pub trait Connection: Send + Sync + 'static {
    /// The body of responses on this connection.
    type ResponseBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;

    /// The connection's protocol.
    fn protocol(&self) -> Protocol;

    /// How many requests it can carry at once, right now.
    fn slots(&self) -> usize;

    /// Whether it may carry new requests. The pool asks just before lending
    /// it, so this must be cheap and must not block.
    fn state(&self) -> ConnState;

    /// Sends a request. The request's URI is absolute; the transport turns it
    /// into what its protocol sends (origin-form and `Host` for HTTP/1.1).
    fn send(
        &self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Self::ResponseBody>, SendError>> + Send;

    /// Measures the round-trip time with a protocol-level PING, where the
    /// protocol has one.
    fn ping(&self) -> impl Future<Output = Result<Duration, Error>> + Send {
        let protocol = self.protocol().as_str();
        async move {
            Err(Error::Unsupported {
                operation: "ping",
                protocol,
            })
        }
    }

    /// Whether the connection was opened with 0-RTT (a resumed TLS session
    /// that let requests go before the handshake finished). Only QUIC does
    /// this; the default is false.
    fn used_0rtt(&self) -> bool {
        false
    }

    /// Closes the connection now, failing whatever it carries. The pool
    /// calls it when a graceful shutdown's deadline has passed. The default
    /// does nothing: the connection then closes when its last handle is
    /// dropped, i.e. when its requests end.
    fn abort(&self) {}

    /// Whether the connection may carry another request after a response
    /// body was dropped before its end. HTTP/1.1 cannot (the rest of the body
    /// is still on the wire); multiplexed protocols reset the one stream.
    fn reusable_after_abandoned_body(&self) -> bool;
}

/// A failed send. When the transport can prove the request never left (the
/// connection was already closed), it hands the request back so the caller
/// loses nothing and may send it elsewhere.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: Error,
    /// The request, if it was provably not sent.
    pub unsent: Option<Request<RequestBody>>,
}

impl SendError {
    /// A failure after the request may have been (partly) sent.
    pub fn sent(error: Error) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// For tests: an origin on a 127.0.0.1 port that was just free (bound, then
/// released), so a connect to it is refused.
#[cfg(test)]
pub(crate) async fn closed_port_origin() -> (Origin, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    (
        Origin::parse(&format!("http://127.0.0.1:{port}")).expect("origin"),
        port,
    )
}

/// Something that happened to an open connection, reported by its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEvent {
    /// The connection is gone (peer closed it, an I/O error, or it was shut down).
    Closed,
    /// The connection takes no new requests (GOAWAY and the like).
    Draining,
    /// The peer changed how many concurrent requests it allows.
    SlotsChanged(usize),
}

/// Where a connection reports what happens to it. Cheap to clone.
#[derive(Clone)]
pub struct ConnEvents {
    sink: Arc<dyn Fn(ConnEvent) + Send + Sync>,
}

impl ConnEvents {
    /// A handle that calls `f` for every event.
    pub fn new(f: impl Fn(ConnEvent) + Send + Sync + 'static) -> Self {
        ConnEvents { sink: Arc::new(f) }
    }

    /// A handle that drops every event (for a connection used outside a pool).
    pub fn detached() -> Self {
        ConnEvents::new(|_| {})
    }

    /// Reports an event.
    pub fn report(&self, event: ConnEvent) {
        (self.sink)(event)
    }
}

impl std::fmt::Debug for ConnEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnEvents")
    }
}
