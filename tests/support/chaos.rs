//! Fault injection on loopback TCP, for tests of how the pool survives a
//! misbehaving network or origin.
//!
//! - [`ChaosRelay`]: a TCP relay on 127.0.0.1 that forwards byte streams both
//!   ways between its clients (the pool under test) and an upstream (usually a
//!   [`TestOrigin`]), and misbehaves on command: idle timeouts, resets, black
//!   holes, latency, refused connects. Every control works through `&self`, at
//!   any time, and is safe to call from any task.
//! - [`RestartableOrigin`]: a [`TestOrigin`] behind a [`ChaosRelay`], so the
//!   origin can be stopped and started again while clients keep dialing one
//!   fixed address.
//!
//! The relay knows nothing about HTTP or TLS: it moves bytes, so it works the
//! same under HTTP/1.1, HTTP/2 and TLS (the certificate names 127.0.0.1 and
//! `localhost`, not a port, so TLS through the relay verifies as usual).
//!
//! # Writing tests against it
//!
//! The relay's effects are asynchronous: a control takes effect when each
//! connection's task next runs, normally within microseconds. Observe them
//! with bounded waits (`support::eventually` on [`ChaosRelay::stats`], or
//! `support::within` around a read that must end in EOF or a reset), never
//! with a sleep and a hope, and never assert on elapsed time.
//!
//! ```ignore
//! let origin = TestOrigin::start(Options::plain()).await;
//! let relay = ChaosRelay::start(origin.addr);
//! // point the client (the pool) at `relay.addr()` instead of `origin.addr`
//! relay.close_idle_after(Some(Duration::from_millis(50)));
//! eventually("idle close", || relay.stats().idle_closed == 1).await;
//! ```
//!
//! # Which connections a control affects
//!
//! A connection belongs to the relay from the moment the relay `accept()`s it,
//! which is when it is counted in [`RelayStats::accepted`] and
//! [`RelayStats::open`]. A client's `connect()` can return slightly before
//! that (the kernel completes the handshake on its own), so a test that wants
//! [`ChaosRelay::reset_all`] to hit a connection it just opened should first
//! wait for `stats().open` to count it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

use super::origin::{Options, TestOrigin};

/// How many bytes one direction of one connection may hold (read but not yet
/// delivered, e.g. while delayed or black-holed) before the relay stops
/// reading from that side. Past this, TCP flow control pushes back on the
/// sender, as it would on a real slow path.
const MAX_QUEUED: usize = 1 << 20;

/// Size of one read; a "chunk" below is whatever one read returned.
const READ_SIZE: usize = 16 * 1024;

/// How long [`ChaosRelay::refuse`]`(false)` keeps retrying to re-bind the
/// port before it panics.
const REBIND_PATIENCE: Duration = Duration::from_secs(2);

/// A snapshot of a relay's counters, from [`ChaosRelay::stats`].
///
/// Counters only grow; `open` and the `queued_*` gauges go up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    /// Client connections accepted so far (including ones later reset because
    /// the upstream could not be reached).
    pub accepted: usize,
    /// Client connections currently open (accepted and not yet closed or
    /// reset by the relay).
    pub open: usize,
    /// Connections the relay closed because they went idle
    /// ([`ChaosRelay::close_idle_after`]).
    pub idle_closed: usize,
    /// Connections the relay reset on purpose: by [`ChaosRelay::reset_all`],
    /// or because it could not connect to the upstream. A reset the relay
    /// merely passes on (one side failed, so it resets the other) is not
    /// counted here.
    pub reset: usize,
    /// Connections reset because the upstream connect failed (or there was no
    /// upstream, see [`ChaosRelay::clear_upstream`]); also counted in `reset`.
    pub upstream_connect_failed: usize,
    /// Bytes delivered to the upstream (written to its socket).
    pub bytes_to_upstream: u64,
    /// Bytes delivered to clients (written to their sockets).
    pub bytes_to_client: u64,
    /// Bytes read from clients but not yet delivered (delayed or black-holed).
    pub queued_to_upstream: u64,
    /// Bytes read from the upstream but not yet delivered.
    pub queued_to_client: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    idle_closed: AtomicUsize,
    reset: AtomicUsize,
    upstream_connect_failed: AtomicUsize,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    queued_to_upstream: AtomicU64,
    queued_to_client: AtomicU64,
}

/// What the relay's tasks share with the [`ChaosRelay`] handle.
struct Shared {
    /// The client-facing listener; `None` while refusing.
    listener: Mutex<Option<TcpListener>>,
    /// Wakes the accept loop when `listener` is replaced (its waker was
    /// registered with the old one).
    listener_changed: Notify,
    /// Serializes [`ChaosRelay::refuse`] calls (the re-bind happens outside
    /// the `listener` lock, which the accept loop takes on every poll).
    refuse_control: Mutex<()>,
    /// Where new connections go; `None`: nowhere (accept, then reset).
    upstream: Mutex<Option<SocketAddr>>,
    /// Controls every connection watches, so changes reach existing ones.
    idle_after: watch::Sender<Option<Duration>>,
    blackhole: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
    /// Bumped by `reset_all`; a connection resets when it sees it change.
    reset_generation: watch::Sender<u64>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test must not turn every later lock into a second panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A loopback TCP relay that injects faults. See the [module docs](self).
///
/// Starts forwarding at once; stops everything (listener, every relayed
/// connection) when dropped.
pub struct ChaosRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    accept_task: JoinHandle<()>,
}

impl ChaosRelay {
    /// Binds 127.0.0.1:0 and forwards every accepted connection to
    /// `upstream`. Must be called inside a tokio runtime.
    ///
    /// The relay connects to the upstream once per accepted client
    /// connection, when it is accepted (or, under [`blackhole`], when the
    /// black hole lifts). If that connect fails, the relay resets the client
    /// connection, so to the client an unreachable upstream looks like a
    /// connection that was accepted and then immediately reset.
    ///
    /// [`blackhole`]: ChaosRelay::blackhole
    pub fn start(upstream: SocketAddr) -> ChaosRelay {
        let listener = bind_listener("127.0.0.1:0".parse().expect("literal address"))
            .expect("bind the chaos relay on 127.0.0.1:0");
        let addr = listener.local_addr().expect("relay local addr");
        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(listener)),
            listener_changed: Notify::new(),
            refuse_control: Mutex::new(()),
            upstream: Mutex::new(Some(upstream)),
            idle_after: watch::Sender::new(None),
            blackhole: watch::Sender::new(false),
            delay: watch::Sender::new(Duration::ZERO),
            reset_generation: watch::Sender::new(0),
            counters: Counters::default(),
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        ChaosRelay {
            addr,
            shared,
            runtime: tokio::runtime::Handle::current(),
            accept_task,
        }
    }

    /// The client-facing address (127.0.0.1, fixed for the relay's life, also
    /// across [`refuse`](ChaosRelay::refuse) on/off).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded, if anywhere.
    pub fn upstream(&self) -> Option<SocketAddr> {
        *lock(&self.shared.upstream)
    }

    /// Forwards connections accepted from now on to `upstream`. Connections
    /// already relayed keep their upstream (reset them with
    /// [`reset_all`](ChaosRelay::reset_all) if they must go).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = Some(upstream);
    }

    /// Forwards connections accepted from now on nowhere: each is accepted
    /// and then reset at once, as if the upstream connect had failed (counted
    /// in [`RelayStats::upstream_connect_failed`]). Deterministic, unlike
    /// pointing at a port that was just closed, which another socket could
    /// take over.
    pub fn clear_upstream(&self) {
        *lock(&self.shared.upstream) = None;
    }

    /// Closes a relayed connection once no byte has moved in either direction
    /// for `after` (`None`: never, the default), like an origin's keep-alive
    /// timeout. The close is a FIN to both sides (shutdown, then close), so
    /// the client sees a clean EOF and the upstream sees its client go away;
    /// a request the client sends at the same moment meets a closed socket
    /// and a reset, which is exactly the race a pool must survive.
    ///
    /// It is a true per-connection idle timer: armed for the last byte read
    /// or written on that connection plus `after`, re-armed on every byte,
    /// fired by a tokio timer (not polled). It applies to existing
    /// connections too: changing it re-arms their timers from their last
    /// activity, so shortening it can close idle connections at once.
    ///
    /// A connection does not count as idle while it holds bytes it has not
    /// delivered yet (see [`delay`](ChaosRelay::delay)), nor while
    /// [black-holed](ChaosRelay::blackhole); its idle clock starts over when
    /// the black hole lifts.
    pub fn close_idle_after(&self, after: Option<Duration>) {
        self.shared.idle_after.send_replace(after);
    }

    /// Resets (TCP RST: `SO_LINGER` 0, then close) every connection the relay
    /// has accepted and not yet closed, on both sides: the client and the
    /// upstream each see "connection reset". Connections accepted afterwards
    /// are unaffected. Counted in [`RelayStats::reset`].
    ///
    /// Each connection's task resets its sockets when it next runs (it checks
    /// for a reset before forwarding anything else), so after `reset_all`
    /// returns no further byte is forwarded on those connections, except one
    /// write that another worker thread may have in progress at that instant.
    pub fn reset_all(&self) {
        self.shared
            .reset_generation
            .send_modify(|generation| *generation += 1);
    }

    /// While `on`, nothing is forwarded in either direction: the relay stops
    /// reading from both sides and holds what it had read but not delivered.
    /// The peer looks alive (connects succeed, writes are accepted until the
    /// socket buffers fill) but never answers, and no FIN or reset is passed
    /// on. Applies to existing connections and to new ones, which are
    /// accepted but not connected to the upstream until the black hole lifts
    /// (so the upstream sees no connection at all meanwhile).
    ///
    /// Turning it off resumes every connection where it stopped, with
    /// nothing lost: bytes the client wrote meanwhile are forwarded then.
    /// [`reset_all`](ChaosRelay::reset_all) and dropping the relay still
    /// work on black-holed connections.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// Adds `latency` to every forwarded chunk, in both directions
    /// (`Duration::ZERO`, the default, forwards at once).
    ///
    /// Each chunk (what one read returned) is stamped when read and delivered
    /// when `read_at + latency` is due, in order; chunks are not serialized
    /// behind each other's delays, so the relay adds latency, not a
    /// bandwidth limit. The latency is looked up when a chunk is delivered,
    /// so changing it affects chunks already held as well: a long delay holds
    /// data (visible as [`RelayStats::queued_to_upstream`] /
    /// [`RelayStats::queued_to_client`]) until it is lowered, which lets a
    /// test hold a request or response deterministically. Order is always
    /// kept.
    pub fn delay(&self, latency: Duration) {
        self.shared.delay.send_replace(latency);
    }

    /// While `on`, the relay is not listening: its listener is closed (before
    /// `refuse(true)` returns), so a connect to [`addr`](ChaosRelay::addr)
    /// fails with `ConnectionRefused`, and connections waiting in the accept
    /// backlog are reset by the kernel. Connections already relayed keep
    /// working.
    ///
    /// `refuse(false)` binds the same port again (with `SO_REUSEADDR`, so
    /// sockets of earlier connections in TIME_WAIT do not stand in the way)
    /// before it returns. If that fails, it retries for about 2 s, blocking
    /// the calling thread, then panics.
    ///
    /// Race: while refusing, the port is free, and another process (or
    /// another test binding 127.0.0.1:0) may be given it. Then re-binding
    /// fails and this panics with a message saying so; worse, in that window
    /// a client connecting to [`addr`](ChaosRelay::addr) reaches that other
    /// socket. The kernel hands out ephemeral ports in rotation, so this is
    /// very unlikely within one test's refusing window, but it is possible.
    pub fn refuse(&self, on: bool) {
        let _serialized = lock(&self.shared.refuse_control);
        if on {
            let listener = lock(&self.shared.listener).take();
            drop(listener);
            return;
        }
        if lock(&self.shared.listener).is_some() {
            return;
        }
        // Registering the new listener needs a runtime; the caller may be on
        // a plain thread.
        let _runtime = self.runtime.enter();
        let started = std::time::Instant::now();
        let listener = loop {
            match bind_listener(self.addr) {
                Ok(listener) => break listener,
                Err(_) if started.elapsed() < REBIND_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => panic!(
                    "ChaosRelay::refuse(false): could not re-bind {} for {REBIND_PATIENCE:?}: \
                     {error} (did another socket take the port while the relay was refusing?)",
                    self.addr
                ),
            }
        };
        *lock(&self.shared.listener) = Some(listener);
        self.shared.listener_changed.notify_one();
    }

    /// Whether the relay is currently refusing connections.
    pub fn is_refusing(&self) -> bool {
        lock(&self.shared.listener).is_none()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        RelayStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            open: c.open.load(Ordering::SeqCst),
            idle_closed: c.idle_closed.load(Ordering::SeqCst),
            reset: c.reset.load(Ordering::SeqCst),
            upstream_connect_failed: c.upstream_connect_failed.load(Ordering::SeqCst),
            bytes_to_upstream: c.bytes_to_upstream.load(Ordering::SeqCst),
            bytes_to_client: c.bytes_to_client.load(Ordering::SeqCst),
            queued_to_upstream: c.queued_to_upstream.load(Ordering::SeqCst),
            queued_to_client: c.queued_to_client.load(Ordering::SeqCst),
        }
    }
}

impl Drop for ChaosRelay {
    /// Stops listening at once (connects are refused from here on), and
    /// aborts the accept task, which owns every connection task, so relayed
    /// connections close as the runtime drops those tasks: a FIN to both
    /// sides, or an RST where received bytes were still unread.
    fn drop(&mut self) {
        drop(lock(&self.shared.listener).take());
        self.accept_task.abort();
    }
}

impl std::fmt::Debug for ChaosRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosRelay")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A listening socket on `addr` with `SO_REUSEADDR`.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn poll_accept(shared: &Shared, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
    match lock(&shared.listener).as_ref() {
        Some(listener) => listener.poll_accept(cx).map_ok(|(stream, _)| stream),
        // Refusing: `listener_changed` wakes us when there is one again.
        None => Poll::Pending,
    }
}

/// The per-connection view of the controls. Subscribed at accept time, so a
/// `reset_all` after the accept reaches the connection even before its task
/// first runs.
struct Controls {
    idle_after: watch::Receiver<Option<Duration>>,
    blackhole: watch::Receiver<bool>,
    delay: watch::Receiver<Duration>,
    reset: watch::Receiver<u64>,
}

/// Counts a connection in `open` for exactly as long as it exists, however
/// its task ends (abort included).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    // Owned here, so aborting this task aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = poll_fn(|cx| poll_accept(&shared, cx)) => accepted,
            () = shared.listener_changed.notified() => continue,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok(client) => {
                let controls = Controls {
                    idle_after: shared.idle_after.subscribe(),
                    blackhole: shared.blackhole.subscribe(),
                    delay: shared.delay.subscribe(),
                    reset: shared.reset_generation.subscribe(),
                };
                shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
                shared.counters.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(shared.clone());
                connections.spawn(relay_connection(shared.clone(), client, controls, guard));
            }
            // E.g. out of file descriptors: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Closes `stream` with a TCP RST instead of a FIN.
fn reset_stream(stream: TcpStream) {
    // `set_zero_linger` is `set_linger(Some(Duration::ZERO))` without the
    // deprecation (a zero linger never blocks on close).
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// How the forwarding of one connection ended.
enum Outcome {
    /// Both sides sent FIN and it was passed on: close normally.
    Done,
    /// `reset_all`: RST both sides.
    Reset,
    /// The idle timer fired: FIN both sides.
    Idle,
    /// A read or write failed (typically the peer reset): pass the failure
    /// on by resetting both sides.
    Broken,
}

async fn relay_connection(
    shared: Arc<Shared>,
    client: TcpStream,
    mut controls: Controls,
    _open: OpenGuard,
) {
    let counters = &shared.counters;
    let _ = client.set_nodelay(true);

    // Under a black hole, do not even connect upstream: the upstream must
    // see nothing until it lifts.
    while *controls.blackhole.borrow_and_update() {
        tokio::select! {
            biased;
            _ = controls.reset.changed() => {
                counters.reset.fetch_add(1, Ordering::SeqCst);
                reset_stream(client);
                return;
            }
            _ = controls.blackhole.changed() => {}
        }
    }

    let upstream_addr = *lock(&shared.upstream);
    let connected = match upstream_addr {
        None => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the relay has no upstream",
        )),
        Some(addr) => tokio::select! {
            biased;
            _ = controls.reset.changed() => {
                counters.reset.fetch_add(1, Ordering::SeqCst);
                reset_stream(client);
                return;
            }
            connected = TcpStream::connect(addr) => connected,
        },
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(_) => {
            counters
                .upstream_connect_failed
                .fetch_add(1, Ordering::SeqCst);
            counters.reset.fetch_add(1, Ordering::SeqCst);
            reset_stream(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = client;

    match pump(&shared, &mut controls, &mut client, &mut upstream).await {
        Outcome::Done => {}
        Outcome::Idle => {
            counters.idle_closed.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        Outcome::Reset => {
            counters.reset.fetch_add(1, Ordering::SeqCst);
            reset_stream(client);
            reset_stream(upstream);
        }
        Outcome::Broken => {
            reset_stream(client);
            reset_stream(upstream);
        }
    }
}

/// One direction of a connection: bytes read from one side, waiting to be
/// written to the other.
struct Pipe<'a> {
    /// Chunks in order, each with the time it was read.
    queue: VecDeque<(Instant, Bytes)>,
    queued: usize,
    buf: BytesMut,
    /// The source sent FIN.
    read_eof: bool,
    /// The FIN was passed on (write side of the destination shut down).
    shut: bool,
    delivered: &'a AtomicU64,
    queued_gauge: &'a AtomicU64,
}

impl<'a> Pipe<'a> {
    fn new(delivered: &'a AtomicU64, queued_gauge: &'a AtomicU64) -> Self {
        Pipe {
            queue: VecDeque::new(),
            queued: 0,
            buf: BytesMut::new(),
            read_eof: false,
            shut: false,
            delivered,
            queued_gauge,
        }
    }

    fn can_read(&self, blackholed: bool) -> bool {
        !blackholed && !self.read_eof && self.queued < MAX_QUEUED
    }

    fn read_buf(&mut self) -> &mut BytesMut {
        self.buf.reserve(READ_SIZE);
        &mut self.buf
    }

    /// Queues what the last read put in `buf`.
    fn enqueue(&mut self, read_at: Instant) {
        let chunk = self.buf.split().freeze();
        self.queued += chunk.len();
        self.queued_gauge
            .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        self.queue.push_back((read_at, chunk));
    }

    /// The next chunk and when it is due, if any.
    fn next_due(&self, latency: Duration) -> Option<(Instant, Bytes)> {
        self.queue
            .front()
            .map(|(read_at, chunk)| (*read_at + latency, chunk.clone()))
    }

    /// `n` bytes of the front chunk were written.
    fn delivered(&mut self, n: usize) {
        let front = &mut self.queue.front_mut().expect("delivered a queued chunk").1;
        front.advance(n);
        if front.is_empty() {
            self.queue.pop_front();
        }
        self.queued -= n;
        self.queued_gauge.fetch_sub(n as u64, Ordering::SeqCst);
        self.delivered.fetch_add(n as u64, Ordering::SeqCst);
    }
}

impl Drop for Pipe<'_> {
    fn drop(&mut self) {
        self.queued_gauge
            .fetch_sub(self.queued as u64, Ordering::SeqCst);
    }
}

/// Writes (part of) `next` once it is due. Cancel-safe: nothing is consumed
/// unless it returns the number of bytes written.
async fn deliver<W: AsyncWrite + Unpin>(
    writer: &mut W,
    next: Option<(Instant, Bytes)>,
) -> io::Result<usize> {
    let Some((due, chunk)) = next else {
        return std::future::pending().await;
    };
    if due > Instant::now() {
        sleep_until(due).await;
    }
    match writer.write(&chunk).await? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

/// Forwards both directions until the connection ends one way or another.
async fn pump(
    shared: &Shared,
    controls: &mut Controls,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> Outcome {
    let counters = &shared.counters;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut up = Pipe::new(&counters.bytes_to_upstream, &counters.queued_to_upstream);
    let mut down = Pipe::new(&counters.bytes_to_client, &counters.queued_to_client);

    let mut last_activity = Instant::now();
    let idle_timer = sleep_until(last_activity);
    tokio::pin!(idle_timer);
    let mut armed_for: Option<Instant> = None;
    let mut was_blackholed = false;

    loop {
        if controls.reset.has_changed().unwrap_or(false) {
            return Outcome::Reset;
        }
        let blackholed = *controls.blackhole.borrow_and_update();
        if was_blackholed && !blackholed {
            // The idle clock starts over when a black hole lifts.
            last_activity = Instant::now();
        }
        was_blackholed = blackholed;
        let latency = *controls.delay.borrow_and_update();
        let idle_after = *controls.idle_after.borrow_and_update();

        if !blackholed {
            // Pass a FIN on once everything before it was delivered.
            if up.read_eof && up.queue.is_empty() && !up.shut {
                let _ = upstream_write.shutdown().await;
                up.shut = true;
            }
            if down.read_eof && down.queue.is_empty() && !down.shut {
                let _ = client_write.shutdown().await;
                down.shut = true;
            }
            if up.shut && down.shut {
                return Outcome::Done;
            }
        }

        // The idle deadline: last activity + timeout, unless something is
        // still held (then the connection is not idle) or black-holed.
        let idle_deadline = idle_after
            .filter(|_| !blackholed && up.queue.is_empty() && down.queue.is_empty())
            .map(|after| last_activity + after);
        if let Some(deadline) = idle_deadline.filter(|d| armed_for != Some(*d)) {
            armed_for = Some(deadline);
            idle_timer.as_mut().reset(deadline);
        }

        let (next_up, next_down) = if blackholed {
            (None, None)
        } else {
            (up.next_due(latency), down.next_due(latency))
        };
        let read_up = up.can_read(blackholed);
        let read_down = down.can_read(blackholed);

        // Biased: a reset or a control change is seen before any more bytes
        // move, so e.g. nothing is forwarded after `reset_all` or
        // `blackhole(true)` returns.
        tokio::select! {
            biased;
            _ = controls.reset.changed() => return Outcome::Reset,
            _ = controls.blackhole.changed() => {}
            _ = controls.delay.changed() => {}
            _ = controls.idle_after.changed() => {}
            () = &mut idle_timer, if idle_deadline.is_some() => return Outcome::Idle,
            written = deliver(&mut upstream_write, next_up) => match written {
                Ok(n) => {
                    up.delivered(n);
                    last_activity = Instant::now();
                }
                Err(_) => return Outcome::Broken,
            },
            written = deliver(&mut client_write, next_down) => match written {
                Ok(n) => {
                    down.delivered(n);
                    last_activity = Instant::now();
                }
                Err(_) => return Outcome::Broken,
            },
            read = client_read.read_buf(up.read_buf()), if read_up => match read {
                Ok(0) => up.read_eof = true,
                Ok(_) => {
                    last_activity = Instant::now();
                    up.enqueue(last_activity);
                }
                Err(_) => return Outcome::Broken,
            },
            read = upstream_read.read_buf(down.read_buf()), if read_down => match read {
                Ok(0) => down.read_eof = true,
                Ok(_) => {
                    last_activity = Instant::now();
                    down.enqueue(last_activity);
                }
                Err(_) => return Outcome::Broken,
            },
        }
    }
}

/// A [`TestOrigin`] that can be stopped and started again behind one fixed
/// address: the address of a [`ChaosRelay`] in front of it.
///
/// `TestOrigin::start` binds a fresh port each time, so the restart happens
/// behind the relay: [`start_again`](RestartableOrigin::start_again) starts a
/// new `TestOrigin` and points the relay at it. Clients only ever see
/// [`addr`](RestartableOrigin::addr).
///
/// - While stopped, the relay accepts each new connection and resets it at
///   once (it has no upstream to connect to), which a client sees as
///   "connection reset" on its first read or write. For "connection refused"
///   instead, also call `relay().refuse(true)`.
/// - [`stop`](RestartableOrigin::stop) drops the `TestOrigin`, which closes
///   its connections (FIN, or RST where a request was unread); the relay
///   passes that on to its clients.
/// - Each incarnation is a new `TestOrigin` with its own counters
///   (`x-conn-id` starts at 1 again); [`current`](RestartableOrigin::current)
///   is the running one.
/// - All the relay's other faults are available through
///   [`relay`](RestartableOrigin::relay).
pub struct RestartableOrigin {
    options: Options,
    relay: ChaosRelay,
    origin: Option<TestOrigin>,
    starts: usize,
}

impl RestartableOrigin {
    /// Starts a `TestOrigin` with `options` behind a new relay.
    pub async fn start(options: Options) -> RestartableOrigin {
        let origin = TestOrigin::start(options.clone()).await;
        let relay = ChaosRelay::start(origin.addr);
        RestartableOrigin {
            options,
            relay,
            origin: Some(origin),
            starts: 1,
        }
    }

    /// The fixed client-facing address (the relay's).
    pub fn addr(&self) -> SocketAddr {
        self.relay.addr()
    }

    /// `http` or `https`, from the options.
    pub fn scheme(&self) -> &'static str {
        if self.options.tls { "https" } else { "http" }
    }

    /// An absolute URL on the fixed address for `path_and_query` (which
    /// starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.addr(), path_and_query)
    }

    /// The edgepool origin for the fixed address.
    pub fn origin(&self) -> edgepool::Origin {
        edgepool::Origin::parse(&self.url("")).expect("test origin parses")
    }

    /// The relay in front, for its counters and its other faults.
    pub fn relay(&self) -> &ChaosRelay {
        &self.relay
    }

    /// The running incarnation, if any.
    pub fn current(&self) -> Option<&TestOrigin> {
        self.origin.as_ref()
    }

    /// Whether an origin is running.
    pub fn is_running(&self) -> bool {
        self.origin.is_some()
    }

    /// How many times an origin was started (1 after `start`).
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// Stops the origin: from now on the relay resets new connections, and
    /// the origin's connections close as its tasks are aborted (observe it
    /// with `relay().stats().open`). No-op when already stopped.
    pub fn stop(&mut self) {
        // Detach first, so no new connection can reach the dying origin.
        self.relay.clear_upstream();
        self.origin = None;
    }

    /// Starts a new origin (same options, new port) and sends new
    /// connections to it. Stops the running one first, if any.
    pub async fn start_again(&mut self) {
        self.stop();
        let origin = TestOrigin::start(self.options.clone()).await;
        self.relay.set_upstream(origin.addr);
        self.origin = Some(origin);
        self.starts += 1;
    }
}
