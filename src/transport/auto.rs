//! ALPN auto: HTTP/2 where the origin offers it, HTTP/1.1 where it does not.
//!
//! For `https://` origins the TLS handshake offers `h2` and `http/1.1`; the
//! server picks, and the connection speaks what it picked over the same TLS
//! stream (no second handshake). The pool needs no special case: an HTTP/2
//! connection brings its stream limit as slots, an HTTP/1.1 one brings one.
//!
//! `http://` origins always get HTTP/1.1. A plaintext connection has no ALPN
//! to ask the server with, and sending an HTTP/2 preface to an HTTP/1.1
//! server just fails; use [`Http2`] for origins known to speak h2c.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::connector::{Connector, TcpConnector};
use super::http1::{Http1, Http1Connection};
use super::http2::{Http2, Http2Body, Http2Connection};
use super::tls::{Alpn, TlsConfig};
use super::{ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError, Transport};
use crate::{BoxError, Error, Origin, Scheme};

/// Opens HTTP/2 or HTTP/1.1 connections as each `https://` origin chooses
/// through ALPN, and remembers per origin what it chose
/// ([`negotiated`](Auto::negotiated)). `http://` origins get HTTP/1.1.
/// Cheap to clone; clones share what they learned.
///
/// Until an origin's first connection has said how many streams it allows,
/// the pool assumes HTTP/2's local cap ([`Transport::expected_slots`]), so a
/// burst to a new origin starts `burst / cap` connects; an HTTP/1.1 origin
/// then reports one slot per connection and the pool opens more as needed.
#[derive(Clone)]
pub struct Auto<C = TcpConnector> {
    connector: C,
    http1: Http1<C>,
    http2: Http2<C>,
    /// One entry per origin ever connected to: a pool talks to a bounded set
    /// of origins, so this stays as small as the pool's own origin map.
    negotiated: Arc<Mutex<HashMap<Origin, Protocol>>>,
}

impl Auto<TcpConnector> {
    /// A transport that verifies origins against the webpki roots, unless an
    /// origin carries its own configuration ([`Origin::with_tls`]).
    pub fn new() -> Self {
        Auto {
            connector: TcpConnector::new(),
            http1: Http1::new(),
            http2: Http2::new(),
            negotiated: Arc::default(),
        }
    }

    /// A transport whose TLS connections use `tls`, unless an origin carries
    /// its own configuration, which always wins.
    pub fn with_tls(tls: TlsConfig) -> Self {
        Auto {
            connector: TcpConnector::new(),
            http1: Http1::with_tls(tls.clone()),
            http2: Http2::with_tls(tls),
            negotiated: Arc::default(),
        }
    }
}

impl Default for Auto {
    fn default() -> Self {
        Auto::new()
    }
}

impl<C: Connector> Auto<C> {
    /// The same transport over another connector (your own DNS, a Unix
    /// socket, a proxy hop, or [`TcpConnector`] wrapped in tower middleware).
    pub fn with_connector<C2: Connector>(self, connector: C2) -> Auto<C2> {
        Auto {
            http1: self.http1.with_connector(connector.clone()),
            http2: self.http2.with_connector(connector.clone()),
            connector,
            negotiated: self.negotiated,
        }
    }

    /// The local cap on concurrent streams of HTTP/2 connections (default
    /// 100); see [`Http2::max_concurrent_streams`]. Rejects 0.
    pub fn max_concurrent_streams(mut self, streams: usize) -> Result<Self, Error> {
        self.http2 = self.http2.max_concurrent_streams(streams)?;
        Ok(self)
    }

    /// Sets HTTP/1.1 options (header limits) for origins that pick it:
    /// `auto.http1_options(|h| h.max_headers(200))`. The connector and TLS
    /// configuration stay the transport's own.
    pub fn http1_options(
        mut self,
        configure: impl FnOnce(Http1<C>) -> Result<Http1<C>, Error>,
    ) -> Result<Self, Error> {
        self.http1 = configure(self.http1)?;
        Ok(self)
    }

    /// Sets HTTP/2 options (windows, header limits) for origins that pick
    /// it: `auto.http2_options(|h| h.initial_stream_window(1 << 20))`.
    pub fn http2_options(
        mut self,
        configure: impl FnOnce(Http2<C>) -> Result<Http2<C>, Error>,
    ) -> Result<Self, Error> {
        self.http2 = configure(self.http2)?;
        Ok(self)
    }

    /// The protocol of the last connection opened to `origin`, or None if
    /// none was opened yet: what the server chose via ALPN (or HTTP/1.1 for
    /// `http://` origins). For logs, metrics, and deciding whether an origin
    /// is worth a dedicated [`Http2`] pool.
    pub fn negotiated(&self, origin: &Origin) -> Option<Protocol> {
        self.negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(origin)
            .copied()
    }

    fn remember(&self, origin: &Origin, protocol: Protocol) {
        let previous = self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(origin.clone(), protocol);
        if previous.is_some_and(|p| p != protocol) {
            tracing::debug!(%origin, ?previous, now = ?protocol, "origin changed its protocol");
        }
    }
}

impl<C> fmt::Debug for Auto<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins = self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Auto")
            .field("known_origins", &origins)
            .finish()
    }
}

impl<C: Connector> Transport for Auto<C> {
    type Conn = AutoConnection;

    fn expected_slots(&self) -> usize {
        self.http2.expected_slots()
    }

    async fn connect(&self, origin: &Origin, events: ConnEvents) -> Result<AutoConnection, Error> {
        let conn = match origin.scheme() {
            Scheme::Http => AutoConnection::Http1(self.http1.connect(origin, events).await?),
            Scheme::Https => {
                let tls = self.http2.tls_for(origin)?;
                let tcp = self.connector.connect(origin).await?;
                let (stream, alpn) = tls.connect(tcp, origin, Alpn::Http2OrHttp1).await?;
                // rustls refuses a protocol we did not offer, so anything but
                // `h2` is `http/1.1` or no ALPN at all (a server without
                // ALPN support, which speaks HTTP/1.1).
                if alpn.as_deref() == Some(b"h2".as_slice()) {
                    AutoConnection::Http2(self.http2.connect_over(stream, origin, events).await?)
                } else {
                    AutoConnection::Http1(self.http1.connect_over(stream, origin, events).await?)
                }
            }
        };
        self.remember(origin, conn.protocol());
        Ok(conn)
    }
}

/// A connection opened by [`Auto`]: whichever protocol the origin chose.
#[derive(Debug)]
pub enum AutoConnection {
    /// The origin chose HTTP/1.1 (or has no ALPN, or is `http://`).
    Http1(Http1Connection),
    /// The origin chose HTTP/2.
    Http2(Http2Connection),
}

impl Connection for AutoConnection {
    type ResponseBody = AutoBody;

    fn protocol(&self) -> Protocol {
        match self {
            AutoConnection::Http1(c) => c.protocol(),
            AutoConnection::Http2(c) => c.protocol(),
        }
    }

    fn slots(&self) -> usize {
        match self {
            AutoConnection::Http1(c) => c.slots(),
            AutoConnection::Http2(c) => c.slots(),
        }
    }

    fn state(&self) -> ConnState {
        match self {
            AutoConnection::Http1(c) => c.state(),
            AutoConnection::Http2(c) => c.state(),
        }
    }

    async fn send(&self, request: Request<RequestBody>) -> Result<Response<AutoBody>, SendError> {
        match self {
            AutoConnection::Http1(c) => Ok(c.send(request).await?.map(AutoBody::Http1)),
            AutoConnection::Http2(c) => Ok(c.send(request).await?.map(AutoBody::Http2)),
        }
    }

    async fn ping(&self) -> Result<Duration, Error> {
        match self {
            AutoConnection::Http1(c) => c.ping().await,
            AutoConnection::Http2(c) => c.ping().await,
        }
    }

    fn abort(&self) {
        match self {
            AutoConnection::Http1(c) => c.abort(),
            AutoConnection::Http2(c) => c.abort(),
        }
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        match self {
            AutoConnection::Http1(c) => c.reusable_after_abandoned_body(),
            AutoConnection::Http2(c) => c.reusable_after_abandoned_body(),
        }
    }
}

/// The body of a response on an [`AutoConnection`].
#[derive(Debug)]
pub enum AutoBody {
    /// From an HTTP/1.1 connection.
    Http1(hyper::body::Incoming),
    /// From an HTTP/2 connection.
    Http2(Http2Body),
}

impl Body for AutoBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Both bodies are Unpin, so the enum is too.
        match self.get_mut() {
            AutoBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            AutoBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AutoBody::Http1(b) => b.is_end_stream(),
            AutoBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AutoBody::Http1(b) => b.size_hint(),
            AutoBody::Http2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated_and_learned_protocols_shared_by_clones() {
        let err = Auto::new().max_concurrent_streams(0).expect_err("zero");
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "max_concurrent_streams",
                    ..
                }
            ),
            "{err:?}"
        );
        let auto = Auto::new()
            .max_concurrent_streams(8)
            .expect("valid")
            .http2_options(|h| h.initial_stream_window(1 << 20))
            .expect("valid")
            .http1_options(|h| h.max_headers(200))
            .expect("valid");
        assert_eq!(auto.expected_slots(), 8);
        let origin = Origin::parse("https://example.com").expect("origin");
        assert_eq!(auto.negotiated(&origin), None);
        let clone = auto.clone();
        auto.remember(&origin, Protocol::Http2);
        assert_eq!(clone.negotiated(&origin), Some(Protocol::Http2));
    }
}
