//! [`Http3Connection`]: one QUIC connection carrying HTTP/3 requests.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h3::error::{Code, StreamError};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use tokio::sync::watch;

use super::body::{Http3Body, StreamTicket};
use super::request::{EarlyData, h3_head, may_send_early};
use super::watch::{Observer, WatchedOpener};
use crate::transport::{
    ConnEvent, ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError,
};
use crate::{Error, Origin};

/// h3's request sender over our watched opener.
pub(super) type Sender = h3::client::SendRequest<WatchedOpener, Bytes>;

/// The QUIC application error code for a clean close (H3_NO_ERROR).
pub(super) fn h3_no_error() -> quinn::VarInt {
    quinn::VarInt::from_u32(0x100)
}

/// A reserved ("grease") unidirectional stream type, RFC 9114 §6.2.3: the
/// peer must ignore the stream, so it can carry a PING.
const GREASE_STREAM_TYPE: u8 = 0x21;

const READY: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

/// Where the handshake of a connection made with 0-RTT stands. Connections
/// made with a full handshake start at `Confirmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// Early data may be in flight; the server has not answered yet.
    Pending,
    /// The handshake is done (and any early data was accepted).
    Confirmed,
    /// The server rejected the early data: everything sent early was
    /// discarded unprocessed, h3's own streams included, so the connection
    /// is closed and its requests go elsewhere.
    Rejected,
    /// The handshake failed; the connection is closed.
    Failed,
}

/// What a connection's handles and its tasks share.
pub(super) struct Shared {
    origin: Origin,
    quic: quinn::Connection,
    /// `READY`, `DRAINING` or `CLOSED`; moves forward only.
    state: AtomicU8,
    /// Serializes a transition with its report, so the pool never hears
    /// `Draining` or `SlotsChanged` after `Closed` (see `Lifecycle` in the
    /// HTTP/1.1 transport for the same race). `state()` never takes it, so
    /// an event sink may call back into the connection.
    order: Mutex<()>,
    events: ConnEvents,
    /// The slots this connection offers (see [`Http3Connection::slots`]).
    slots: AtomicUsize,
    /// Request streams open now (opened by h3 and not yet over).
    open_streams: AtomicUsize,
    /// Whether the peer's limit was already learned from a blocked open.
    limit_learned: AtomicBool,
    handshake: watch::Sender<Handshake>,
}

impl Shared {
    pub(super) fn new(
        origin: Origin,
        quic: quinn::Connection,
        events: ConnEvents,
        slots: usize,
        handshake: Handshake,
    ) -> Arc<Self> {
        Arc::new(Shared {
            origin,
            quic,
            state: AtomicU8::new(READY),
            order: Mutex::new(()),
            events,
            slots: AtomicUsize::new(slots),
            open_streams: AtomicUsize::new(0),
            limit_learned: AtomicBool::new(false),
            handshake: watch::Sender::new(handshake),
        })
    }

    pub(super) fn origin(&self) -> &Origin {
        &self.origin
    }

    pub(super) fn quic(&self) -> &quinn::Connection {
        &self.quic
    }

    fn lock_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn to_draining(&self) {
        let _order = self.lock_order();
        if self
            .state
            .compare_exchange(READY, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::debug!(origin = %self.origin, "HTTP/3 connection draining (GOAWAY)");
            self.events.report(ConnEvent::Draining);
        }
    }

    pub(super) fn to_closed(&self) {
        let _order = self.lock_order();
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            self.events.report(ConnEvent::Closed);
        }
    }

    fn state(&self) -> ConnState {
        match self.state.load(Ordering::Acquire) {
            // quinn knows of a close (idle timeout, peer's CONNECTION_CLOSE)
            // before our driver task has run to report it.
            _ if self.quic.close_reason().is_some() => ConnState::Closed,
            READY => ConnState::Ready,
            DRAINING => ConnState::Draining,
            _ => ConnState::Closed,
        }
    }

    pub(super) fn set_handshake(&self, outcome: Handshake) {
        self.handshake.send_replace(outcome);
    }

    fn handshake_now(&self) -> Handshake {
        *self.handshake.borrow()
    }

    /// Waits until the handshake is no longer pending (bounded by `limit`;
    /// quinn resolves it on completion and on failure alike, so the bound
    /// only guards against a bug).
    async fn handshake_outcome(&self, limit: Duration) -> Handshake {
        let mut rx = self.handshake.subscribe();
        match tokio::time::timeout(limit, rx.wait_for(|h| *h != Handshake::Pending)).await {
            Ok(Ok(outcome)) => *outcome,
            _ => Handshake::Failed,
        }
    }
}

impl Observer for Shared {
    fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
    }

    fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::AcqRel);
    }

    fn goaway(&self, stream_id: u64) {
        tracing::debug!(origin = %self.origin, stream_id, "HTTP/3 GOAWAY received");
        self.to_draining();
    }

    /// The peer's stream limit became visible: opening a stream waits for
    /// credit while `open_streams` streams are open.
    ///
    /// Trade-off: quinn 0.11 exposes neither the peer's `MAX_STREAMS` nor
    /// when its credit returns. The server returns a stream's credit about
    /// one round trip after the stream ended on our side, so a count taken
    /// while blocked may miss streams that just ended: it can be lower than
    /// the true limit, never higher. To keep that error from compounding
    /// (each later block could lower the count again, down to one), the
    /// limit is learned once per connection, and only ever lowers `slots`.
    /// The request that hit the limit waits inside QUIC for credit, as an
    /// HTTP/2 request over the peer's limit waits in h2; it is not lost.
    fn open_blocked(&self) {
        if self.limit_learned.swap(true, Ordering::AcqRel) {
            return;
        }
        let limit = self.open_streams.load(Ordering::Acquire).max(1);
        let _order = self.lock_order();
        let slots = self.slots.load(Ordering::Acquire);
        if limit >= slots || self.state.load(Ordering::Acquire) == CLOSED {
            return;
        }
        self.slots.store(limit, Ordering::Release);
        tracing::debug!(origin = %self.origin, limit, configured = slots, "the peer allows fewer concurrent streams than max_concurrent_streams");
        self.events.report(ConnEvent::SlotsChanged(limit));
    }
}

/// One HTTP/3 connection: a QUIC connection on the transport's shared
/// endpoint, with an h3 client on it. Dropping it closes the QUIC
/// connection, failing any response still being read on it; the pool drops
/// it only once no response body on it is left (bodies hold its lease).
pub struct Http3Connection {
    shared: Arc<Shared>,
    sender: Sender,
    /// Tells the driver task to close the connection now.
    abort: Arc<tokio::sync::Notify>,
    zero_rtt: bool,
    handshake_timeout: Duration,
}

impl Http3Connection {
    pub(super) fn new(
        shared: Arc<Shared>,
        sender: Sender,
        abort: Arc<tokio::sync::Notify>,
        zero_rtt: bool,
        handshake_timeout: Duration,
    ) -> Self {
        Http3Connection {
            shared,
            sender,
            abort,
            zero_rtt,
            handshake_timeout,
        }
    }

    /// The origin this connection was opened to.
    pub fn origin(&self) -> &Origin {
        &self.shared.origin
    }

    /// Whether the connection was opened with 0-RTT: a resumed TLS session
    /// let it carry replay-safe requests before the handshake completed.
    pub fn used_0rtt(&self) -> bool {
        self.zero_rtt
    }

    /// Whether the server accepted the early data: `None` while the
    /// handshake is still going (or for a connection not made with 0-RTT,
    /// which sent none), `Some(false)` if it was rejected (the connection is
    /// then closed and its requests retried elsewhere).
    pub fn early_data_accepted(&self) -> Option<bool> {
        if !self.zero_rtt {
            return None;
        }
        match self.shared.handshake_now() {
            Handshake::Pending => None,
            Handshake::Confirmed => Some(true),
            Handshake::Rejected | Handshake::Failed => Some(false),
        }
    }

    /// quinn's smoothed round-trip time estimate (no packet is sent).
    pub fn rtt(&self) -> Duration {
        self.shared.quic.rtt()
    }

    /// The server's current UDP address (it changes if the server migrates).
    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.shared.quic.remote_address()
    }

    /// Request streams open on this connection now: opened by h3 and not
    /// yet dropped (a response body being read holds its stream open).
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Acquire)
    }

    fn unsent(&self, request: Request<RequestBody>, why: impl Into<crate::BoxError>) -> SendError {
        SendError {
            error: Error::request(&self.shared.origin, why),
            unsent: Some(request),
        }
    }

    fn failed(&self, why: impl Into<crate::BoxError>) -> SendError {
        SendError::sent(Error::request(&self.shared.origin, why))
    }
}

impl fmt::Debug for Http3Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http3Connection")
            .field("origin", &self.shared.origin)
            .field("state", &self.shared.state())
            .field("zero_rtt", &self.zero_rtt)
            .finish()
    }
}

impl Drop for Http3Connection {
    fn drop(&mut self) {
        // Without this the close would wait for h3's driver to notice the
        // last sender is gone; closing here does not depend on that task.
        self.shared.quic.close(h3_no_error(), b"");
    }
}

/// An empty request body, for a request handed back unsent whose own body
/// was empty (its frames were never polled, so nothing is lost).
fn empty_body() -> RequestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Connection for Http3Connection {
    type ResponseBody = Http3Body;

    fn used_0rtt(&self) -> bool {
        self.zero_rtt
    }

    fn protocol(&self) -> Protocol {
        Protocol::Http3
    }

    /// The configured `max_concurrent_streams` (quinn 0.11 has no getter for
    /// the peer's stream limit), lowered once the peer's limit shows itself
    /// by a stream open that has to wait.
    fn slots(&self) -> usize {
        self.shared.slots.load(Ordering::Acquire)
    }

    fn state(&self) -> ConnState {
        self.shared.state()
    }

    async fn send(&self, request: Request<RequestBody>) -> Result<Response<Http3Body>, SendError> {
        let shared = &self.shared;
        match shared.state() {
            ConnState::Ready => {}
            ConnState::Draining => {
                return Err(self.unsent(request, "the HTTP/3 connection is draining (GOAWAY)"));
            }
            ConnState::Closed => {
                return Err(self.unsent(request, "the HTTP/3 connection is closed"));
            }
        }
        let (parts, body) = request.into_parts();
        let head = match h3_head(&parts, &shared.origin) {
            Ok(head) => head,
            // Wrong input fails the same way on every connection.
            Err(error) => return Err(SendError::sent(error)),
        };

        // 0-RTT: a request goes before the handshake is confirmed only if
        // replaying it is harmless; any other waits for the confirmation.
        let early = match shared.handshake_now() {
            Handshake::Confirmed => false,
            Handshake::Pending if may_send_early(&parts) => true,
            Handshake::Pending => match shared.handshake_outcome(self.handshake_timeout).await {
                Handshake::Confirmed => false,
                _ => {
                    return Err(self.unsent(
                        Request::from_parts(parts, body),
                        "the HTTP/3 handshake did not complete",
                    ));
                }
            },
            Handshake::Rejected | Handshake::Failed => {
                return Err(self.unsent(
                    Request::from_parts(parts, body),
                    "the HTTP/3 handshake did not complete",
                ));
            }
        };

        let mut sender = self.sender.clone();
        let stream = match sender.send_request(head).await {
            Ok(stream) => stream,
            Err(error) => {
                // h3 returns an error here only before the request header
                // was complete on the stream (opening failed, or the write
                // of the HEADERS frame did): no server processes a request
                // whose header it has not received, so it goes back.
                if matches!(error, StreamError::RemoteClosing { .. }) {
                    shared.to_draining();
                }
                if matches!(error, StreamError::HeaderTooBig { .. }) {
                    // The request itself is too big for this server.
                    return Err(self.failed(error));
                }
                return Err(self.unsent(Request::from_parts(parts, body), error));
            }
        };
        let mut ticket = StreamTicket::new(shared.origin.clone());
        let (mut send, mut recv) = stream.split();

        // Kept for as long as the request could still be handed back: its
        // body is empty (so nothing was consumed) or not yet touched.
        let mut kept = Some(parts);
        if body.is_end_stream() {
            if let Err(error) = send.finish().await {
                return Err(self.classify(kept.take(), early, error).await);
            }
        } else {
            // The body streams up on its own task from here; a request
            // whose body is gone can no longer be handed back.
            ticket.spawn_upload(send, body);
            kept = None;
        }

        match recv.recv_response().await {
            Ok(head) => {
                let (mut parts, ()) = head.into_parts();
                parts.extensions.insert(EarlyData(early));
                Ok(Response::from_parts(parts, Http3Body::new(recv, ticket)))
            }
            Err(error) => Err(self.classify(kept, early, error).await),
        }
    }

    async fn ping(&self) -> Result<Duration, Error> {
        let origin = &self.shared.origin;
        let quic = &self.shared.quic;
        // A QUIC PING frame is what this wants, but quinn 0.11 has no API to
        // send one. The next best real round trip: a reserved-type
        // unidirectional stream (the peer must ignore it, RFC 9114 §6.2.3),
        // finished at once; `stopped()` resolves when the peer has
        // acknowledged it (or sent STOP_SENDING), which proves the peer is
        // alive. The value returned is quinn's RTT estimate, fresh from that
        // exchange's ACK and, unlike a stopwatch, free of the peer's ACK delay.
        //
        // If the peer's unidirectional stream credit is used up right now,
        // waiting for it could fail a healthy connection, so the check
        // falls back to the connection state and the estimate.
        let Some(opened) = now_or_never(quic.open_uni()) else {
            return Ok(quic.rtt());
        };
        let mut stream = opened.map_err(|e| Error::request(origin, e))?;
        stream
            .write_all(&[GREASE_STREAM_TYPE])
            .await
            .map_err(|e| Error::request(origin, e))?;
        stream.finish().map_err(|e| Error::request(origin, e))?;
        stream
            .stopped()
            .await
            .map_err(|e| Error::request(origin, e))?;
        Ok(quic.rtt())
    }

    fn abort(&self) {
        // notify_one keeps a permit if the task is not waiting yet.
        self.abort.notify_one();
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        true
    }
}

impl Http3Connection {
    /// Sorts a failure after the request stream was opened: hands the
    /// request back when the server provably did not process it and the
    /// request is still whole (`kept`: its body was empty).
    ///
    /// Provably unprocessed: the server reset the stream with
    /// H3_REQUEST_REJECTED (RFC 9114 §4.1.1: no application processing took
    /// place), or the request went as early data and the server rejected
    /// the early data (it was discarded before any processing).
    ///
    /// Not handed back: a stream cut by a connection close, even after a
    /// GOAWAY whose id says the stream was not processed, because some
    /// servers (h3's own, among them) send a GOAWAY id one below what they
    /// still process; a retry could then run the request twice.
    async fn classify(
        &self,
        kept: Option<http::request::Parts>,
        early: bool,
        error: StreamError,
    ) -> SendError {
        let rejected = matches!(&error, StreamError::RemoteTerminate { code, .. } if *code == Code::H3_REQUEST_REJECTED);
        let early_rejected = early
            && self.shared.handshake_outcome(self.handshake_timeout).await == Handshake::Rejected;
        match kept {
            Some(parts) if rejected || early_rejected => {
                let why = if early_rejected {
                    "the server rejected 0-RTT early data; the request was not processed"
                } else {
                    "the server refused the request unprocessed (H3_REQUEST_REJECTED)"
                };
                tracing::debug!(origin = %self.shared.origin, %error, "{why}");
                self.unsent(Request::from_parts(parts, empty_body()), why)
            }
            _ => self.failed(error),
        }
    }
}

/// Polls `future` once; its output if it was ready at once.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
