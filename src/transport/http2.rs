//! HTTP/2 on the `h2` crate: TLS with ALPN `h2` for `https://` origins,
//! prior knowledge (h2c) for `http://` ones.
//!
//! The `h2` crate is used directly rather than through hyper because it
//! exposes what a pool needs and hyper hides: the peer's live
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, PING/PONG, and GOAWAY.
//!
//! A connection is a set of stream slots: `min(peer's max concurrent
//! streams, local cap)`, read live. Its background task drives the h2
//! connection and, after each poll (frames are processed inside poll, so it
//! sees every change), reports to the pool:
//! - [`ConnEvent::SlotsChanged`] when the peer changes its stream limit;
//! - [`ConnEvent::Draining`] once a GOAWAY arrived (in-flight streams finish,
//!   no new ones start);
//! - [`ConnEvent::Closed`] when the connection is gone.
//!
//! Requests the server provably did not process (`REFUSED_STREAM`, or a
//! stream above a GOAWAY's last-stream-id, RFC 9113 §8.7) are handed back
//! as [`SendError::unsent`] when their body can still be given back, so the
//! pool sends them on another connection.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connector::{Connector, TcpConnector};
use super::stream::MaybeTlsStream;
#[cfg(feature = "tls")]
use super::tls::{Alpn, TlsConfig, TransportTls};
use super::{
    ConnEvent, ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError, Transport,
};
use crate::{BoxError, Error, Origin, Scheme};

/// Default local cap on concurrent streams per connection.
const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 100;
/// Largest accepted local cap: stream ids are 31 bits and odd for a client,
/// so a connection can never open more than this many streams in its life.
const MAX_CONCURRENT_STREAMS_LIMIT: usize = 1 << 30;
/// Default per-stream receive window (hyper's client default): large enough
/// that one stream on a fast, distant link is not window-bound.
const DEFAULT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Default connection receive window (hyper's client default): a few
/// streams' worth, so one slow reader cannot stall every stream.
const DEFAULT_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// RFC 9113 §6.9.1: a window may not exceed 2^31 - 1.
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// RFC 9113 §6.9.2: the connection window starts at 65,535 and cannot be
/// made smaller.
const MIN_CONNECTION_WINDOW: u32 = 65_535;
/// Default cap on a response's header list (the same 64 KiB as HTTP/1.1).
const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;
/// Largest accepted cap on a response's header list.
const MAX_RESPONSE_HEADER_BYTES_LIMIT: usize = 1024 * 1024;
/// Send capacity asked for before a streamed request body is first polled.
const FIRST_BODY_RESERVE: usize = 16 * 1024;

/// Opens HTTP/2 connections: TLS with ALPN `h2` for `https://` origins
/// (failing if the server does not select `h2`), prior-knowledge h2c for
/// `http://` ones. Cheap to clone.
///
/// ```
/// use edgepool::transport::http2::Http2;
/// let transport = Http2::new()
///     .max_concurrent_streams(64)?
///     .initial_stream_window(1 << 20)?;
/// # drop(transport);
/// # Ok::<(), edgepool::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Http2<C = TcpConnector> {
    connector: C,
    max_concurrent_streams: usize,
    stream_window: u32,
    connection_window: u32,
    max_response_header_bytes: usize,
    #[cfg(feature = "tls")]
    tls: TransportTls,
}

impl Http2<TcpConnector> {
    /// A transport that verifies `https://` origins against the webpki roots,
    /// unless an origin carries its own configuration ([`Origin::with_tls`]).
    pub fn new() -> Self {
        Http2 {
            connector: TcpConnector::new(),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            #[cfg(feature = "tls")]
            tls: TransportTls::default(),
        }
    }

    /// A transport whose `https://` connections use `tls` (private roots, a
    /// client certificate), unless an origin carries its own configuration,
    /// which always wins: the origin's configuration is part of its pool key.
    #[cfg(feature = "tls")]
    pub fn with_tls(tls: TlsConfig) -> Self {
        Http2 {
            tls: TransportTls::new(Some(tls)),
            ..Http2::new()
        }
    }
}

impl Default for Http2 {
    fn default() -> Self {
        Http2::new()
    }
}

impl<C: Connector> Http2<C> {
    /// The same transport over another connector (your own DNS, a Unix
    /// socket, a proxy hop, or [`TcpConnector`] wrapped in tower middleware).
    pub fn with_connector<C2: Connector>(self, connector: C2) -> Http2<C2> {
        Http2 {
            connector,
            max_concurrent_streams: self.max_concurrent_streams,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            max_response_header_bytes: self.max_response_header_bytes,
            #[cfg(feature = "tls")]
            tls: self.tls,
        }
    }

    /// Caps the streams one connection carries at once, whatever the peer
    /// allows (default 100). A connection's slots are the smaller of this and
    /// the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`; it is also what the pool
    /// assumes a new connection brings before one has said, so a burst of
    /// requests starts `burst / cap` connects, not one per request. Rejects 0
    /// (a connection that may carry nothing) and values above 2^30.
    pub fn max_concurrent_streams(mut self, streams: usize) -> Result<Self, Error> {
        if streams == 0 || streams > MAX_CONCURRENT_STREAMS_LIMIT {
            return Err(Error::config(
                "max_concurrent_streams",
                streams,
                "must be between 1 and 1073741824",
            ));
        }
        self.max_concurrent_streams = streams;
        Ok(self)
    }

    /// How many bytes of one response the origin may send before we read
    /// them (`SETTINGS_INITIAL_WINDOW_SIZE`, default 2 MiB). Larger windows
    /// let one stream use a long fat link; smaller ones bound the memory a
    /// slow reader pins. Rejects 0 (no stream could ever receive data) and
    /// values above 2^31 - 1 (RFC 9113 §6.9.1).
    pub fn initial_stream_window(mut self, bytes: u32) -> Result<Self, Error> {
        if bytes == 0 || bytes > MAX_WINDOW {
            return Err(Error::config(
                "initial_stream_window",
                bytes,
                "must be between 1 and 2147483647",
            ));
        }
        self.stream_window = bytes;
        Ok(self)
    }

    /// How many response bytes, over all streams of a connection, the origin
    /// may send before we read them (default 5 MiB). Rejects values below
    /// 65,535 (the protocol's starting window, which cannot shrink) and
    /// above 2^31 - 1.
    pub fn initial_connection_window(mut self, bytes: u32) -> Result<Self, Error> {
        if !(MIN_CONNECTION_WINDOW..=MAX_WINDOW).contains(&bytes) {
            return Err(Error::config(
                "initial_connection_window",
                bytes,
                "must be between 65535 and 2147483647",
            ));
        }
        self.connection_window = bytes;
        Ok(self)
    }

    /// Caps a response's header list, in bytes as HTTP/2 counts them
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`, default 64 KiB, at most 1 MiB), so a
    /// broken or hostile origin cannot make the proxy buffer without limit.
    /// Rejects 0 and values above the maximum.
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

    fn h2_builder(&self) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            // A pool forwards responses; pushed streams would have no taker.
            .enable_push(false)
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            // Bounded by the setter, so the cast cannot truncate.
            .max_header_list_size(
                u32::try_from(self.max_response_header_bytes).unwrap_or(u32::MAX),
            );
        builder
    }

    /// The TLS configuration for `origin` (shared with the ALPN-auto transport).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_for(&self, origin: &Origin) -> Result<TlsConfig, Error> {
        self.tls.for_origin(origin)
    }

    async fn open_stream(&self, origin: &Origin) -> Result<MaybeTlsStream<C::Io>, Error> {
        match origin.scheme() {
            // h2c with prior knowledge: the caller chose HTTP/2 by choosing
            // this transport; there is no negotiation on a plaintext stream.
            Scheme::Http => Ok(MaybeTlsStream::Plain(self.connector.connect(origin).await?)),
            #[cfg(feature = "tls")]
            Scheme::Https => {
                let tls = self.tls_for(origin)?;
                let tcp = self.connector.connect(origin).await?;
                let (stream, alpn) = tls.connect(tcp, origin, Alpn::Http2).await?;
                // A server without ALPN answers nothing and may still speak
                // only HTTP/1.1: sending it an h2 preface would fail later
                // and less clearly.
                if alpn.as_deref() != Some(b"h2".as_slice()) {
                    return Err(Error::connect(
                        origin,
                        NotH2 {
                            selected: alpn.map(|p| String::from_utf8_lossy(&p).into_owned()),
                        },
                    ));
                }
                Ok(MaybeTlsStream::Tls(Box::new(stream)))
            }
            #[cfg(not(feature = "tls"))]
            Scheme::Https => Err(Error::InvalidOrigin {
                uri: origin.to_string(),
                reason: "https origins need edgepool's `tls` feature",
            }),
        }
    }

    /// Runs the HTTP/2 handshake over an open stream (plaintext, or TLS that
    /// selected `h2`), starts the connection's task and returns once the
    /// peer's SETTINGS are known. Shared with the ALPN-auto transport.
    pub(crate) async fn connect_over<IO>(
        &self,
        io: IO,
        origin: &Origin,
        events: ConnEvents,
    ) -> Result<Http2Connection, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // tokio::spawn would panic outside a runtime; say so instead.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown {
            reason: "no tokio runtime is running",
        })?;
        let (sender, mut conn) = self
            .h2_builder()
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| Error::connect(origin, e))?;
        let Some(mut ping_pong) = conn.ping_pong() else {
            return Err(Error::connect(origin, "h2 handed out no PING handle"));
        };
        let cap = self.max_concurrent_streams;
        let lifecycle = Arc::new(Lifecycle::new(events));
        let sender = Arc::new(sender);
        runtime.spawn(drive(
            conn,
            Arc::downgrade(&sender),
            Arc::clone(&lifecycle),
            cap,
            origin.clone(),
        ));

        // The server's SETTINGS are the first frame it sends, so they precede
        // its answer to our PING on the wire, and h2 applies frames in order:
        // once the PONG is in, the peer's stream limit is known. Returning
        // earlier would report h2's placeholder ("unlimited") as the slots.
        // If this future is dropped here (connect timeout), dropping `sender`
        // lets the connection task finish and close the socket.
        let started = Instant::now();
        ping_pong
            .ping(Ping::opaque())
            .await
            .map_err(|e| Error::connect(origin, e))?;
        // Race: the pool reads `slots()` after this returns and records the
        // connection a moment later. A SETTINGS change in between is
        // reported while the pool still counts the connection as
        // connecting, and can be overwritten by the value read before it.
        // h2 itself never exceeds the peer's limit (extra streams wait in
        // its queue), so the cost is at most a few requests waiting there
        // until the next change is reported.
        let slots = sender.current_max_send_streams().min(cap);
        if !lifecycle.announce(slots) {
            return Err(Error::connect(
                origin,
                "the connection closed during its handshake",
            ));
        }
        tracing::debug!(%origin, slots, peer_max_streams = sender.current_max_send_streams(), rtt_us = started.elapsed().as_micros() as u64, "HTTP/2 connection open");
        Ok(Http2Connection {
            origin: origin.clone(),
            sender,
            lifecycle,
            pinger: Arc::new(tokio::sync::Mutex::new(ping_pong)),
            cap,
        })
    }
}

impl<C: Connector> Transport for Http2<C> {
    type Conn = Http2Connection;

    fn expected_slots(&self) -> usize {
        self.max_concurrent_streams
    }

    async fn connect(&self, origin: &Origin, events: ConnEvents) -> Result<Http2Connection, Error> {
        let stream = self.open_stream(origin).await?;
        self.connect_over(stream, origin, events).await
    }
}

/// The server picked no protocol or another one than the `h2` we offered.
#[cfg(feature = "tls")]
#[derive(Debug, thiserror::Error)]
#[error("the server did not select HTTP/2 via ALPN (selected: {})", selected.as_deref().unwrap_or("nothing"))]
struct NotH2 {
    selected: Option<String>,
}

/// Drives the h2 connection until it ends, reporting what happens to it.
///
/// After each poll (frames are processed inside poll, so this sees every
/// change) it reads the peer's current stream limit and asks a clone of the
/// request handle whether new streams may still start (they may not once a
/// GOAWAY arrived or the connection failed). It holds that handle weakly: h2 keeps a connection open while
/// any handle lives, so a strong one here would keep every connection the
/// pool dropped open forever.
async fn drive<IO>(
    conn: h2::client::Connection<IO, Bytes>,
    sender: Weak<SendRequest<Bytes>>,
    lifecycle: Arc<Lifecycle>,
    cap: usize,
    origin: Origin,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Box::pin(conn);
    let run = poll_fn(|cx| {
        let polled = conn.as_mut().poll(cx);
        if polled.is_pending() {
            lifecycle.slots_changed(conn.max_concurrent_send_streams().min(cap));
        }
        if lifecycle.load() == READY {
            // A GOAWAY with no stream left to finish ends the connection in
            // the same poll; it is still reported as Draining, then Closed,
            // so the pool counts a peer's GOAWAY the same way every time.
            // A connection failing for another reason is just Closed.
            let refused = refuses_new_streams(&sender, cx)
                .filter(|e| polled.is_pending() || (e.is_go_away() && e.is_remote()));
            if let Some(refused) = refused {
                if lifecycle.to_draining() {
                    tracing::debug!(%origin, reason = %refused, "HTTP/2 connection draining");
                }
            }
        }
        polled
    });
    tokio::select! {
        result = run => match result {
            Ok(()) => tracing::debug!(%origin, "HTTP/2 connection closed"),
            Err(error) => tracing::debug!(%origin, %error, "HTTP/2 connection failed"),
        },
        () = lifecycle.abort.notified() => {
            tracing::debug!(%origin, "HTTP/2 connection aborted");
        }
    }
    // Dropping h2's connection closes the socket and fails every stream
    // still open (an aborted connection's requests end here, not later).
    drop(conn);
    lifecycle.to_closed();
}

/// Why the connection takes no new streams (GOAWAY received, or it failed),
/// or None while it does. A fresh clone of the handle has no stream of its
/// own pending, so `poll_ready` only checks the connection's error state and
/// registers no wake-up.
fn refuses_new_streams(
    sender: &Weak<SendRequest<Bytes>>,
    cx: &mut Context<'_>,
) -> Option<h2::Error> {
    let mut probe = SendRequest::clone(&*sender.upgrade()?);
    match probe.poll_ready(cx) {
        Poll::Ready(Err(e)) => Some(e),
        _ => None,
    }
    // Dropping `probe` when it is the last handle wakes the connection task,
    // which then sees no handles and closes: the pool's drop is not missed.
}

const READY: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

/// Where a connection is in its life, and the one place that reports it.
///
/// Race: the connection task and a `send` that met a GOAWAY may both move a
/// connection to draining, and the task may close it meanwhile. Each
/// transition and its report happen under `order`, and a transition only
/// moves forward, so the pool never hears `Draining` after `Closed` or a
/// `SlotsChanged` after either. `state()` reads the atomic and never takes
/// `order`, so an event sink may call it.
///
/// Events are held back until `connect` has returned the connection
/// (`announce`): before that the pool knows only a connect attempt, and a
/// `Closed` would be counted as a connect failure without its error. A
/// connection that closed before it was announced fails its connect instead.
struct Lifecycle {
    state: AtomicU8,
    order: Mutex<Reported>,
    events: ConnEvents,
    /// Tells the connection task to drop the connection now.
    abort: tokio::sync::Notify,
}

/// What the pool has been told.
struct Reported {
    announced: bool,
    slots: usize,
}

impl Lifecycle {
    fn new(events: ConnEvents) -> Self {
        Lifecycle {
            state: AtomicU8::new(READY),
            order: Mutex::new(Reported {
                announced: false,
                slots: 0,
            }),
            events,
            abort: tokio::sync::Notify::new(),
        }
    }

    fn load(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection is handed to the pool with `slots`; later changes are
    /// reported from here on. False if it already closed.
    fn announce(&self, slots: usize) -> bool {
        let mut reported = self.reported();
        reported.announced = true;
        reported.slots = slots;
        self.load() != CLOSED
    }

    /// Returns whether this call made the transition.
    fn to_draining(&self) -> bool {
        let reported = self.reported();
        let moved = self
            .state
            .compare_exchange(READY, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved && reported.announced {
            self.events.report(ConnEvent::Draining);
        }
        moved
    }

    fn to_closed(&self) {
        let reported = self.reported();
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED && reported.announced {
            self.events.report(ConnEvent::Closed);
        }
    }

    /// Reports a new slot count if it differs from the last one reported.
    /// Called by the connection task after every poll, so it is cheap when
    /// nothing changed: one uncontended lock.
    fn slots_changed(&self, slots: usize) {
        let mut reported = self.reported();
        if !reported.announced || reported.slots == slots || self.load() != READY {
            return;
        }
        reported.slots = slots;
        self.events.report(ConnEvent::SlotsChanged(slots));
    }
}

/// One HTTP/2 connection. Dropping it (and every response body from it)
/// lets the connection close.
pub struct Http2Connection {
    origin: Origin,
    /// Cloned per request. The connection task holds it weakly (see [`drive`]).
    sender: Arc<SendRequest<Bytes>>,
    /// Shared with the connection task, which moves it to draining and closed.
    lifecycle: Arc<Lifecycle>,
    /// h2 hands out one PING handle per connection, and it allows one PING
    /// in flight: an async mutex serializes callers. Shared with the task
    /// that runs each PING, so a caller that gives up does not leave a PING
    /// half done for the next one to trip over.
    pinger: Arc<tokio::sync::Mutex<PingPong>>,
    /// The local cap on concurrent streams.
    cap: usize,
}

impl Http2Connection {
    /// The origin this connection was opened to.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The peer's current `SETTINGS_MAX_CONCURRENT_STREAMS` (before the
    /// local cap is applied); `usize::MAX` if it set none.
    pub fn peer_max_concurrent_streams(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    fn mark_draining(&self, why: &h2::Error) {
        if self.lifecycle.to_draining() {
            tracing::debug!(origin = %self.origin, reason = %why, "HTTP/2 connection draining");
        }
    }

    /// A failure before the stream existed: h2 refused to open it, so
    /// nothing of the request left and it goes back whole.
    fn not_opened(&self, error: h2::Error, parts: Parts, body: RequestBody) -> SendError {
        if is_user_error(&error) {
            // The request itself is malformed for HTTP/2: another
            // connection would refuse it too.
            return SendError::sent(Error::request(&self.origin, error));
        }
        self.mark_draining(&error);
        SendError {
            error: Error::request(&self.origin, error),
            unsent: Some(Request::from_parts(parts, body)),
        }
    }
}

impl fmt::Debug for Http2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection")
            .field("origin", &self.origin)
            .field("state", &self.state())
            .field("slots", &self.slots())
            .finish()
    }
}

impl Connection for Http2Connection {
    type ResponseBody = Http2Body;

    fn protocol(&self) -> Protocol {
        Protocol::Http2
    }

    fn slots(&self) -> usize {
        self.sender.current_max_send_streams().min(self.cap)
    }

    fn state(&self) -> ConnState {
        match self.lifecycle.load() {
            READY => ConnState::Ready,
            DRAINING => ConnState::Draining,
            _ => ConnState::Closed,
        }
    }

    async fn send(&self, request: Request<RequestBody>) -> Result<Response<Http2Body>, SendError> {
        let (parts, body) = request.into_parts();
        let head = match to_h2_request(&parts, &self.origin) {
            Ok(head) => head,
            Err(reason) => return Err(SendError::sent(Error::request(&self.origin, reason))),
        };
        let mut sender = SendRequest::clone(&self.sender);
        // A fresh clone has no stream of its own pending open, so this only
        // asks whether the connection still takes new streams (no GOAWAY,
        // not failed); it does not wait for a free stream.
        //
        // Race: a GOAWAY can arrive between the pool's lend-time state check
        // and here, or just after the stream is created below. Either way
        // nothing reached the server: here h2 refuses to open the stream,
        // and a stream opened after the GOAWAY's last-stream-id fails with
        // the GOAWAY's error. Both hand the request back (see
        // `not_processed`), so the pool moves it to another connection.
        if let Err(error) = poll_fn(|cx| sender.poll_ready(cx)).await {
            return Err(self.not_opened(error, parts, body));
        }
        let end_of_stream = body.is_end_stream();
        let (response, mut stream) = match sender.send_request(head, end_of_stream) {
            Ok(pair) => pair,
            // h2 checks and refuses before it queues any frame of the stream.
            Err(error) => return Err(self.not_opened(error, parts, body)),
        };
        drop(sender);

        let body = if end_of_stream {
            drop(stream);
            Outgoing::Kept(body)
        } else {
            let slot = Arc::new(Mutex::new(BodyState::Waiting(body)));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(pump_body(Arc::clone(&slot), stream));
                }
                Err(_) => {
                    // Nothing of the body can be sent; the headers went out,
                    // so reset the stream rather than leave it hanging.
                    stream.send_reset(Reason::CANCEL);
                    return Err(SendError::sent(Error::Shutdown {
                        reason: "no tokio runtime is running",
                    }));
                }
            }
            Outgoing::Pumped(slot)
        };

        match response.await {
            Ok(response) => Ok(response.map(Http2Body::new)),
            Err(error) => {
                if let Some(body_error) = body.failure() {
                    // Our own reset after the request body failed: report
                    // the body's error, not the reset it caused.
                    return Err(SendError::sent(Error::request(&self.origin, body_error)));
                }
                if !not_processed(&error) {
                    return Err(SendError::sent(Error::request(&self.origin, error)));
                }
                if error.is_go_away() {
                    self.mark_draining(&error);
                }
                // The server did not process it; it goes back if its body
                // can (see `Outgoing::take_back` for when it cannot).
                let unsent = body
                    .take_back()
                    .map(|body| Request::from_parts(parts, body));
                Err(SendError {
                    error: Error::request(&self.origin, error),
                    unsent,
                })
            }
        }
    }

    async fn ping(&self) -> Result<Duration, Error> {
        // The PING runs on its own task, holding the lock until its PONG (or
        // the connection's end): h2 allows one PING in flight, and a caller
        // that stops waiting (a health check timing out) must not leave one
        // outstanding, or every later PING would fail at once.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown {
            reason: "no tokio runtime is running",
        })?;
        let mut pinger = Arc::clone(&self.pinger).lock_owned().await;
        let round_trip = runtime.spawn(async move {
            let started = Instant::now();
            pinger
                .ping(Ping::opaque())
                .await
                .map(|_pong| started.elapsed())
        });
        match round_trip.await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(error)) => Err(Error::request(&self.origin, error)),
            Err(join) => Err(Error::request(&self.origin, join)),
        }
    }

    fn abort(&self) {
        // notify_one keeps a permit if the task is not waiting yet.
        self.lifecycle.abort.notify_one();
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        // Dropping a response body resets that one stream; the connection
        // and its other streams carry on.
        true
    }
}

/// Whether the server provably did not process the stream, so the request
/// may be sent elsewhere whatever its method (RFC 9113 §8.7):
/// - the server reset it with `REFUSED_STREAM`;
/// - a GOAWAY arrived whose last-stream-id is below it: h2 fails exactly
///   those streams with the GOAWAY's (remote) error. Streams at or below it
///   continue; if the connection then dies they fail with an I/O error,
///   which is (rightly) not counted here.
fn not_processed(error: &h2::Error) -> bool {
    if !error.is_remote() {
        return false;
    }
    error.is_go_away() || (error.is_reset() && error.reason() == Some(Reason::REFUSED_STREAM))
}

/// An error h2 raises for a request it will never send anywhere (malformed
/// for HTTP/2), as opposed to one about the connection or stream.
fn is_user_error(error: &h2::Error) -> bool {
    !(error.is_go_away() || error.is_io() || error.is_reset() || error.reason().is_some())
}

/// The request body, as `send` keeps track of it while it waits for the
/// response.
enum Outgoing {
    /// Empty: h2 sent END_STREAM with the headers; the body was never polled.
    Kept(RequestBody),
    /// Streamed by its own task (see [`pump_body`]).
    Pumped(Arc<Mutex<BodyState>>),
}

/// A streamed body, shared by `send` and the task that streams it.
enum BodyState {
    /// Not touched yet: the stream has had no send capacity.
    Waiting(RequestBody),
    /// Being (or done being) streamed, or handed back.
    Taken,
    /// Polling it failed; the stream was reset because of this.
    Failed(BoxError),
}

impl Outgoing {
    /// The body, if it can be sent again.
    ///
    /// Race: the streaming task takes the body once the stream has send
    /// capacity, which h2 grants only once the stream is open (its HEADERS
    /// about to be written). A refusal before that (a stream queued behind
    /// the peer's limit, then caught by a GOAWAY) gets the body back. A
    /// refusal after it (`REFUSED_STREAM` for a stream whose first bytes
    /// were sent) cannot: those bytes are consumed and not kept, so the
    /// request fails with `unsent: None` rather than being replayed with a
    /// truncated body.
    fn take_back(self) -> Option<RequestBody> {
        match self {
            Outgoing::Kept(body) => Some(body),
            Outgoing::Pumped(slot) => {
                let mut state = slot.lock().unwrap_or_else(PoisonError::into_inner);
                match std::mem::replace(&mut *state, BodyState::Taken) {
                    BodyState::Waiting(body) => Some(body),
                    other => {
                        *state = other;
                        None
                    }
                }
            }
        }
    }

    /// The body's own error, if streaming it failed.
    fn failure(&self) -> Option<BoxError> {
        let Outgoing::Pumped(slot) = self else {
            return None;
        };
        let mut state = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, BodyState::Taken) {
            BodyState::Failed(error) => Some(error),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// Streams a request body into its h2 stream, within the peer's flow-control
/// windows: capacity is reserved for each chunk and only as much is sent as
/// was granted, so a large body is never buffered whole inside h2. Ends with
/// trailers if the body has them. Stops if the peer resets the stream; a
/// failing body resets the stream with `CANCEL`.
async fn pump_body(slot: Arc<Mutex<BodyState>>, mut stream: SendStream<Bytes>) {
    // Until the stream may carry data, the body stays untouched in `slot`,
    // so `send` can still hand it back if the stream is refused.
    stream.reserve_capacity(FIRST_BODY_RESERVE);
    if wait_capacity(&mut stream).await.is_none() {
        return;
    }
    let mut body = {
        let mut state = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, BodyState::Taken) {
            BodyState::Waiting(body) => body,
            other => {
                *state = other;
                return;
            }
        }
    };
    loop {
        // Watch for a reset while waiting on the body: a body that never
        // ends would otherwise keep this task alive after its stream died.
        let next = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match next {
            None => return,
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Ok(frame))) => frame,
            Some(Some(Err(error))) => {
                tracing::debug!(%error, "request body failed; resetting its stream");
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = BodyState::Failed(error);
                stream.send_reset(Reason::CANCEL);
                return;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if send_chunk(&mut stream, data, body.is_end_stream())
                    .await
                    .is_none()
                {
                    return;
                }
                if body.is_end_stream() {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
        // Unknown frame kinds carry nothing HTTP/2 can send; skip them.
    }
}

/// Sends one chunk in pieces as flow control allows. None if the stream is
/// gone.
async fn send_chunk(stream: &mut SendStream<Bytes>, mut data: Bytes, last: bool) -> Option<()> {
    if data.is_empty() {
        if last {
            stream.send_data(data, true).ok()?;
        }
        return Some(());
    }
    while data.has_remaining() {
        stream.reserve_capacity(data.len().min(MAX_WINDOW as usize));
        let granted = match stream.capacity() {
            0 => wait_capacity(stream).await?,
            n => n,
        };
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, last && data.is_empty()).ok()?;
    }
    Some(())
}

/// Waits until the stream has send capacity; None if it was closed or reset.
async fn wait_capacity(stream: &mut SendStream<Bytes>) -> Option<usize> {
    match poll_fn(|cx| stream.poll_capacity(cx)).await {
        Some(Ok(n)) => Some(n),
        _ => None,
    }
}

/// The body of a response on an HTTP/2 connection.
///
/// It gives flow-control credit back as data is read, so the origin can keep
/// sending; a body nobody reads stops the origin at the stream window
/// instead of filling memory. Dropping it before its end resets the stream
/// (`CANCEL`), which frees the slot without harming the connection.
pub struct Http2Body {
    recv: RecvStream,
    /// Data is done; trailers (if any) come next.
    data_done: bool,
    done: bool,
}

impl Http2Body {
    fn new(recv: RecvStream) -> Self {
        Http2Body {
            recv,
            data_done: false,
            done: false,
        }
    }
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Credit goes back as soon as the bytes are ours, or the
                    // window closes after 2 MiB and the stream stalls. Fails
                    // only if the stream is already gone, and then nothing
                    // is owed.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => this.data_done = true,
            }
        }
        let trailers = match this.recv.poll_trailers(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(trailers) => trailers,
        };
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

impl fmt::Debug for Http2Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Body")
            .field("stream", &self.recv.stream_id())
            .field("done", &self.done)
            .finish()
    }
}

/// The request head as h2 sends it: version 2, an absolute URI (h2 derives
/// `:scheme`, `:authority` and `:path` from it), and no connection-specific
/// headers. The `Host` header, if any, names the virtual host as it does on
/// HTTP/1.1, so it becomes `:authority` (RFC 9113 §8.3.1 prefers
/// `:authority` and forbids the two to differ).
fn to_h2_request(parts: &Parts, origin: &Origin) -> Result<Request<()>, &'static str> {
    let mut headers = parts.headers.clone();
    strip_connection_headers(&mut headers);
    let host = headers.remove(HOST);
    let uri = if parts.method == Method::CONNECT {
        // Authority-form, sent as h2 sends CONNECT: `:authority` only.
        parts.uri.clone()
    } else {
        h2_uri(&parts.uri, host.as_ref().map(|h| h.as_bytes()), origin)?
    };
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The absolute URI for the request's pseudo-headers: the origin's scheme,
/// the `Host` header's authority (else the URI's, else the origin's), user
/// info dropped (RFC 9113 §8.3.1 forbids it in `:authority`), and `/` for
/// an empty path.
fn h2_uri(uri: &Uri, host: Option<&[u8]>, origin: &Origin) -> Result<Uri, &'static str> {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(match origin.scheme() {
        Scheme::Http => http::uri::Scheme::HTTP,
        Scheme::Https => http::uri::Scheme::HTTPS,
    });
    let authority = host
        .and_then(|h| Authority::try_from(h).ok())
        .or(parts.authority.take());
    let authority = match authority {
        Some(a) if a.as_str().contains('@') => {
            let bare = match a.port() {
                Some(port) => format!("{}:{}", a.host(), port.as_str()),
                None => a.host().to_string(),
            };
            Authority::try_from(bare).map_err(|_| "the request's authority is not valid")?
        }
        Some(a) => a,
        None => Authority::try_from(origin.authority())
            .map_err(|_| "the origin's authority is not valid")?,
    };
    parts.authority = Some(authority);
    match &parts.path_and_query {
        Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => {}
        Some(pq) => {
            // `?q` with no path: the path is `/`.
            let fixed = PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| "the request's path is not valid")?;
            parts.path_and_query = Some(fixed);
        }
        None => parts.path_and_query = Some(PathAndQuery::from_static("/")),
    }
    Uri::from_parts(parts).map_err(|_| "the request's URI cannot be made absolute")
}

/// Removes the headers that only mean something on one HTTP/1.x hop (RFC
/// 9113 §8.2.2): `Connection` and every header it names (RFC 9110 §7.6.1),
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and
/// `TE` unless it is exactly `trailers`. h2 refuses a request carrying any
/// of them, and a proxy forwarding an HTTP/1.1 request usually has some.
fn strip_connection_headers(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    let te_is_trailers = {
        let mut values = headers.get_all(TE).iter();
        match (values.next(), values.next()) {
            (None, _) => true,
            (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"trailers"),
            _ => false,
        }
    };
    if !te_is_trailers {
        headers.remove(TE);
    } else if let Some(te) = headers.get(TE) {
        if te != "trailers" {
            // h2 compares byte for byte; `Trailers` means the same thing.
            headers.insert(TE, http::HeaderValue::from_static("trailers"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty};

    fn origin() -> Origin {
        Origin::parse("http://127.0.0.1:8080").expect("origin")
    }

    fn parts(uri: &str) -> Parts {
        let request = Request::builder()
            .uri(uri)
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request");
        request.into_parts().0
    }

    #[test]
    fn connection_specific_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-end-to-end", HeaderValue::from_static("2"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_connection_headers(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "2");
    }

    #[test]
    fn te_trailers_is_kept_and_normalized() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("Trailers"));
        strip_connection_headers(&mut h);
        assert_eq!(h[TE], "trailers");

        let mut h = HeaderMap::new();
        h.append(TE, HeaderValue::from_static("trailers"));
        h.append(TE, HeaderValue::from_static("deflate"));
        strip_connection_headers(&mut h);
        assert!(!h.contains_key(TE));
    }

    #[test]
    fn stripped_head_passes_h2s_own_check() {
        let mut p = parts("http://127.0.0.1:8080/a?b=c");
        p.headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        p.headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        p.headers
            .insert(TE, HeaderValue::from_static("trailers, deflate"));
        let head = to_h2_request(&p, &origin()).expect("head");
        assert_eq!(head.version(), Version::HTTP_2);
        assert_eq!(head.uri().to_string(), "http://127.0.0.1:8080/a?b=c");
        for name in [CONNECTION, TRANSFER_ENCODING, TE, UPGRADE] {
            assert!(!head.headers().contains_key(&name), "{name}");
        }
        // The original stays as given, to be handed back if unsent.
        assert!(p.headers.contains_key(CONNECTION));
    }

    #[test]
    fn host_header_becomes_the_authority() {
        let mut p = parts("http://127.0.0.1:8080/x");
        p.headers
            .insert(HOST, HeaderValue::from_static("virtual.example"));
        let head = to_h2_request(&p, &origin()).expect("head");
        assert_eq!(head.uri().to_string(), "http://virtual.example/x");
        assert!(!head.headers().contains_key(HOST));
    }

    #[test]
    fn uris_are_made_absolute_without_user_info() {
        let o = origin();
        let head = to_h2_request(&parts("/only/path?q"), &o).expect("head");
        assert_eq!(head.uri().to_string(), "http://127.0.0.1:8080/only/path?q");
        let head = to_h2_request(&parts("http://user:pw@example.com:81/"), &o).expect("head");
        assert_eq!(
            head.uri().authority().map(|a| a.as_str()),
            Some("example.com:81")
        );
        let head = to_h2_request(&parts("http://example.com"), &o).expect("head");
        assert_eq!(head.uri().path(), "/");
        // The scheme is the connection's, whatever the URI said.
        let tls = Origin::parse("https://example.com").expect("origin");
        let head = to_h2_request(&parts("http://example.com/"), &tls).expect("head");
        assert_eq!(head.uri().scheme_str(), Some("https"));
    }

    #[test]
    fn options_reject_out_of_range_values() {
        let field = |r: Result<Http2, Error>| match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(
            field(Http2::new().max_concurrent_streams(0)),
            "max_concurrent_streams"
        );
        assert_eq!(
            field(Http2::new().max_concurrent_streams(MAX_CONCURRENT_STREAMS_LIMIT + 1)),
            "max_concurrent_streams"
        );
        assert_eq!(
            field(Http2::new().initial_stream_window(0)),
            "initial_stream_window"
        );
        assert_eq!(
            field(Http2::new().initial_stream_window(MAX_WINDOW + 1)),
            "initial_stream_window"
        );
        assert_eq!(
            field(Http2::new().initial_connection_window(1024)),
            "initial_connection_window"
        );
        assert_eq!(
            field(Http2::new().max_response_header_bytes(0)),
            "max_response_header_bytes"
        );
        let t = Http2::new()
            .max_concurrent_streams(7)
            .and_then(|t| t.initial_stream_window(MAX_WINDOW))
            .and_then(|t| t.initial_connection_window(MAX_WINDOW))
            .expect("valid");
        assert_eq!(t.expected_slots(), 7);
        // Values h2 would assert on never reach it.
        let _ = t.h2_builder();
    }

    #[test]
    fn refused_and_unprocessed_streams_are_recognized() {
        let refused = h2::Error::from(Reason::REFUSED_STREAM);
        // A bare reason is not a remote reset: not proof of anything.
        assert!(!not_processed(&refused));
        assert!(!is_user_error(&refused));
    }

    #[tokio::test]
    async fn connect_refused_is_a_connect_error() {
        let (origin, _) = crate::transport::closed_port_origin().await;
        let err = Http2::new()
            .connect(&origin, ConnEvents::detached())
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    }
}
