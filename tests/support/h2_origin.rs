//! [`H2Origin`]: an in-process HTTP/2 origin on 127.0.0.1, built on
//! `h2::server` directly so a test controls what hyper would hide: the
//! advertised `SETTINGS_MAX_CONCURRENT_STREAMS` (initially and mid-flight),
//! GOAWAY (graceful, or with a chosen last-stream-id), refused and reset
//! streams, and a gate that holds every response until released, so
//! concurrency is deterministic instead of timed.
//!
//! Each accepted connection runs the h2 server on one end of an in-memory
//! pipe; a small frame-aware relay between the client's socket and the pipe
//! can inject frames the h2 server has no API for (a new SETTINGS, a GOAWAY
//! with a chosen last-stream-id) at frame boundaries, and hides their side
//! effects from the h2 server (it drops the client's SETTINGS ACKs for
//! injected SETTINGS, and the server's frames on streams an injected GOAWAY
//! declared unprocessed).
//!
//! Responses: status 200, body `hello`, headers `x-conn-id` (1, 2, ... in
//! accept order), `x-stream-id`, `x-body-bytes` (request body bytes read).
//! Paths: `/reset` is answered with `RST_STREAM(INTERNAL_ERROR)` before any
//! response.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How an [`H2Origin`] starts.
#[derive(Debug, Clone)]
pub struct H2Options {
    /// Serve TLS with ALPN `h2` only (test CA certificate); else h2c.
    pub tls: bool,
    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` new connections advertise.
    pub max_concurrent_streams: u32,
    /// Whether responses flow at once (true) or wait for [`H2Origin::open_gate`].
    pub gate_open: bool,
}

impl Default for H2Options {
    fn default() -> Self {
        H2Options {
            tls: false,
            max_concurrent_streams: 100,
            gate_open: true,
        }
    }
}

/// A command for one connection's relay.
#[derive(Debug, Clone, Copy)]
enum RelayCommand {
    /// Send the client SETTINGS_MAX_CONCURRENT_STREAMS = n.
    MaxStreams(u32),
    /// Send the client GOAWAY(last_stream_id, NO_ERROR) and drop the
    /// server's later frames on streams above it.
    GoAway { last_stream_id: u32 },
}

/// One accepted connection, as the origin's handle sees it.
struct ConnHandle {
    /// Streams above this were declared unprocessed by an injected GOAWAY.
    goaway_last: AtomicU32,
    in_flight: AtomicUsize,
    /// Most streams in flight at once when a stream arrived, since the last reset.
    high_water: AtomicUsize,
    relay: mpsc::UnboundedSender<RelayCommand>,
    graceful: mpsc::UnboundedSender<()>,
}

struct Shared {
    tls: bool,
    max_streams: watch::Sender<u32>,
    gate: watch::Sender<bool>,
    accepted: AtomicUsize,
    streams: AtomicUsize,
    in_flight: AtomicUsize,
    refuse_next: AtomicUsize,
    settings_acks: AtomicUsize,
    conns: Mutex<Vec<Arc<ConnHandle>>>,
}

/// A running HTTP/2 origin. Everything it started stops when it is dropped.
pub struct H2Origin {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl H2Origin {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(options: H2Options) -> H2Origin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            tls: options.tls,
            max_streams: watch::Sender::new(options.max_concurrent_streams),
            gate: watch::Sender::new(options.gate_open),
            accepted: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            refuse_next: AtomicUsize::new(0),
            settings_acks: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        H2Origin { addr, shared, task }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.shared.tls { "https" } else { "http" }
    }

    /// An absolute URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.addr, path_and_query)
    }

    /// The edgepool origin for this server.
    pub fn origin(&self) -> edgepool::Origin {
        edgepool::Origin::parse(&self.url("")).expect("test origin parses")
    }

    /// Lets every held response (and every later one) go.
    pub fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Holds every response not yet sent until [`open_gate`](Self::open_gate).
    pub fn close_gate(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Advertises a new `SETTINGS_MAX_CONCURRENT_STREAMS`: to open
    /// connections at once (an injected SETTINGS frame; the h2 server keeps
    /// enforcing its initial value, so only lower it), and to new ones in
    /// their initial SETTINGS.
    pub fn set_max_concurrent_streams(&self, n: u32) {
        self.shared.max_streams.send_replace(n);
        for conn in self.conns() {
            let _ = conn.relay.send(RelayCommand::MaxStreams(n));
        }
    }

    /// Starts h2's graceful shutdown on every open connection: GOAWAY, then
    /// in-flight streams finish and the connection closes.
    pub fn graceful_goaway(&self) {
        for conn in self.conns() {
            let _ = conn.graceful.send(());
        }
    }

    /// Sends every open connection a GOAWAY whose last-stream-id covers its
    /// first `keep` client streams (ids 1, 3, ...): the client must treat
    /// every later stream as unprocessed. The server's responses on those
    /// later streams never reach the client.
    pub fn goaway_keeping(&self, keep: u32) {
        let last_stream_id = (2 * keep).saturating_sub(1);
        for conn in self.conns() {
            conn.goaway_last.fetch_min(last_stream_id, Ordering::SeqCst);
            let _ = conn.relay.send(RelayCommand::GoAway { last_stream_id });
        }
    }

    /// Answers the next `n` streams with `RST_STREAM(REFUSED_STREAM)`.
    pub fn refuse_next(&self, n: usize) {
        self.shared.refuse_next.store(n, Ordering::SeqCst);
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Streams (requests) seen so far, refused and reset ones included.
    pub fn streams_seen(&self) -> usize {
        self.shared.streams.load(Ordering::SeqCst)
    }

    /// Streams received and not yet answered, over all connections.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Streams in flight per connection, in accept order.
    pub fn in_flight_per_connection(&self) -> Vec<usize> {
        self.conns()
            .iter()
            .map(|c| c.in_flight.load(Ordering::SeqCst))
            .collect()
    }

    /// Client ACKs of injected SETTINGS frames: the client has applied them.
    pub fn settings_acks(&self) -> usize {
        self.shared.settings_acks.load(Ordering::SeqCst)
    }

    /// Per connection (accept order), the most streams it had in flight at
    /// once, counted when a stream arrived, since the last reset.
    pub fn high_water_per_connection(&self) -> Vec<usize> {
        self.conns()
            .iter()
            .map(|c| c.high_water.load(Ordering::SeqCst))
            .collect()
    }

    /// Starts counting [`high_water_per_connection`](Self::high_water_per_connection) afresh.
    pub fn reset_high_water(&self) {
        for conn in self.conns() {
            conn.high_water.store(0, Ordering::SeqCst);
        }
    }

    fn conns(&self) -> Vec<Arc<ConnHandle>> {
        self.shared.conns.lock().expect("conns lock").clone()
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet).
        self.task.abort();
    }
}

#[cfg(feature = "tls")]
fn tls_acceptor(tls: bool) -> Option<tokio_rustls::TlsAcceptor> {
    tls.then(|| {
        tokio_rustls::TlsAcceptor::from(super::certs::server_config(vec![b"h2".to_vec()], false))
    })
}

#[cfg(not(feature = "tls"))]
fn tls_acceptor(tls: bool) -> Option<std::convert::Infallible> {
    assert!(!tls, "H2Origin with TLS needs the `tls` feature");
    None
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let acceptor = tls_acceptor(shared.tls);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                connections.spawn(accept_one(tcp, acceptor.clone(), shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(feature = "tls")]
async fn accept_one(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    match acceptor {
        None => connection(tcp, shared).await,
        Some(acceptor) => {
            if let Ok(tls) = acceptor.accept(tcp).await {
                connection(tls, shared).await
            }
        }
    }
}

#[cfg(not(feature = "tls"))]
async fn accept_one(tcp: TcpStream, _: Option<std::convert::Infallible>, shared: Arc<Shared>) {
    connection(tcp, shared).await
}

async fn connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (relay_tx, relay_rx) = mpsc::unbounded_channel();
    let (graceful_tx, graceful_rx) = mpsc::unbounded_channel();
    let handle = Arc::new(ConnHandle {
        goaway_last: AtomicU32::new(u32::MAX),
        in_flight: AtomicUsize::new(0),
        high_water: AtomicUsize::new(0),
        relay: relay_tx,
        graceful: graceful_tx,
    });
    let id = {
        let mut conns = shared.conns.lock().expect("conns lock");
        conns.push(handle.clone());
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        conns.len()
    };
    let (server_io, relay_io) = tokio::io::duplex(256 * 1024);
    let (client_read, client_write) = tokio::io::split(io);
    let (relay_read, relay_write) = tokio::io::split(relay_io);
    tokio::join!(
        client_to_server(client_read, relay_write, shared.clone()),
        server_to_client(relay_read, client_write, relay_rx),
        serve(server_io, id, handle, shared, graceful_rx),
    );
}

/// Drives the h2 server side of one connection.
async fn serve(
    io: tokio::io::DuplexStream,
    id: usize,
    conn: Arc<ConnHandle>,
    shared: Arc<Shared>,
    mut graceful: mpsc::UnboundedReceiver<()>,
) {
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(*shared.max_streams.borrow());
    let Ok(mut h2) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    let mut handlers = JoinSet::new();
    let mut commands_open = true;
    loop {
        tokio::select! {
            accepted = h2.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    handlers.spawn(handle(request, respond, id, conn.clone(), shared.clone()));
                }
                Some(Err(_)) | None => break,
            },
            command = graceful.recv(), if commands_open => match command {
                Some(()) => h2.graceful_shutdown(),
                None => commands_open = false,
            },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
}

/// Decrements the in-flight gauges however a handler ends.
struct InFlight(Arc<ConnHandle>, Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.1.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    id: usize,
    conn: Arc<ConnHandle>,
    shared: Arc<Shared>,
) {
    shared.streams.fetch_add(1, Ordering::SeqCst);
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    let now = conn.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    conn.high_water.fetch_max(now, Ordering::SeqCst);
    let in_flight = InFlight(conn, shared.clone());

    let refuse = shared
        .refuse_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refuse {
        drop(in_flight);
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    if request.uri().path() == "/reset" {
        drop(in_flight);
        respond.send_reset(Reason::INTERNAL_ERROR);
        return;
    }
    let mut body = request.into_body();
    let mut body_bytes = 0;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        body_bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let mut gate = shared.gate.subscribe();
    if gate.wait_for(|open| *open).await.is_err() {
        return;
    }
    if respond.stream_id().as_u32() > in_flight.0.goaway_last.load(Ordering::SeqCst) {
        // Declared unprocessed by an injected GOAWAY: a real server would
        // never answer it. Its HEADERS must not be sent and then dropped by
        // the relay either, or the client's HPACK table would go out of
        // step with ours; a reset carries no header block, so the relay can
        // drop it safely.
        drop(in_flight);
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let response = Response::builder()
        .header("x-conn-id", id)
        .header("x-stream-id", respond.stream_id().as_u32())
        .header("x-body-bytes", body_bytes)
        .body(())
        .expect("valid test response");
    // No longer counted before the client can see the end of the stream:
    // otherwise the client could open its next stream before this one left
    // the gauge, and the gauge would over-count the peer's concurrency.
    drop(in_flight);
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from_static(b"hello"), true);
    }
}

/// HTTP/2 frame header length.
const FRAME_HEADER: usize = 9;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const PREFACE_LEN: usize = 24;

/// The length of the first complete frame in `buf`, with its type, flags
/// and stream id, if a whole frame is there.
fn next_frame(buf: &[u8]) -> Option<(usize, u8, u8, u32)> {
    if buf.len() < FRAME_HEADER {
        return None;
    }
    let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
    if buf.len() < FRAME_HEADER + len {
        return None;
    }
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
    Some((FRAME_HEADER + len, buf[3], buf[4], stream))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER + payload.len());
    let len = payload.len() as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
    out.freeze()
}

/// Client → server: forwards everything but the client's ACKs of injected
/// SETTINGS (the h2 server sent only its initial SETTINGS and would treat a
/// second ACK as a protocol error).
async fn client_to_server<R, W>(mut from: R, mut to: W, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut preface_left = PREFACE_LEN;
    let mut acks = 0usize;
    loop {
        if preface_left > 0 {
            let n = preface_left.min(buf.len());
            if n > 0 {
                let preface = buf.split_to(n);
                if to.write_all(&preface).await.is_err() {
                    return;
                }
                preface_left -= n;
            }
        }
        while let Some((len, kind, flags, _)) = next_frame(&buf).filter(|_| preface_left == 0) {
            let frame = buf.split_to(len);
            if kind == TYPE_SETTINGS && flags & FLAG_ACK != 0 {
                acks += 1;
                if acks > 1 {
                    shared.settings_acks.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
        if to.flush().await.is_err() {
            return;
        }
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Server → client: forwards whole frames and writes injected ones between
/// them. Injections wait until the server's initial SETTINGS went out, so
/// the client still sees the server's SETTINGS first.
async fn server_to_client<R, W>(
    mut from: R,
    mut to: W,
    mut commands: mpsc::UnboundedReceiver<RelayCommand>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut pending: VecDeque<RelayCommand> = VecDeque::new();
    let mut forwarded_any = false;
    let mut drop_above: Option<u32> = None;
    let mut commands_open = true;
    loop {
        while let Some((len, kind, _, stream)) = next_frame(&buf) {
            let frame = buf.split_to(len);
            let dropped = match drop_above {
                // Unprocessed per our GOAWAY: the client already failed
                // them. (The handler answers them with a reset only, never
                // HEADERS: dropping a header block would desynchronize HPACK.)
                Some(last) if stream > last => true,
                // The server's own GOAWAY would name a higher last-stream-id
                // than ours, which the client must treat as a protocol error.
                Some(_) => kind == TYPE_GOAWAY,
                None => false,
            };
            if !dropped && to.write_all(&frame).await.is_err() {
                return;
            }
            forwarded_any = true;
        }
        while forwarded_any && !pending.is_empty() {
            let Some(command) = pending.pop_front() else {
                break;
            };
            let injected = match command {
                RelayCommand::MaxStreams(n) => {
                    let mut payload = BytesMut::new();
                    payload.put_u16(SETTINGS_MAX_CONCURRENT_STREAMS);
                    payload.put_u32(n);
                    frame(TYPE_SETTINGS, 0, 0, &payload)
                }
                RelayCommand::GoAway { last_stream_id } => {
                    drop_above = Some(drop_above.map_or(last_stream_id, |l| l.min(last_stream_id)));
                    let mut payload = BytesMut::new();
                    payload.put_u32(last_stream_id);
                    payload.put_u32(u32::from(Reason::NO_ERROR));
                    frame(TYPE_GOAWAY, 0, 0, &payload)
                }
            };
            if to.write_all(&injected).await.is_err() {
                return;
            }
        }
        if to.flush().await.is_err() {
            return;
        }
        tokio::select! {
            command = commands.recv(), if commands_open => match command {
                Some(command) => pending.push_back(command),
                None => commands_open = false,
            },
            read = from.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(_) => {}
            },
        }
    }
}
