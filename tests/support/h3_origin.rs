//! [`H3Origin`]: an in-process HTTP/3 origin (quinn + h3) on 127.0.0.1 that
//! counts what it sees and misbehaves on command; and [`UdpRelay`], a
//! datagram relay that delays the server's packets.
//!
//! Every response echoes what the server saw, in headers:
//! - `x-conn-id`: the server-side connection number (1, 2, ... in accept order)
//! - `x-early-data`: `1` if the request stream arrived before the server's
//!   handshake completed (so in 0-RTT packets), else `0`
//! - `x-body-bytes`: how many request body bytes arrived
//!
//! Query parameters change the response:
//! - `gate=1`: wait until the gate is open ([`H3Origin::open_gate`])
//! - `delay_ms=N`: wait N ms before answering
//! - `bytes=N`: answer with N bytes of `x` (default: `hello`)
//!
//! How "early" is told apart: quinn resolves the server's `ZeroRttAccepted`
//! future when it processes the client's Finished, before it hands out any
//! stream that arrived after it. A request stream accepted while that future
//! is still pending therefore came in 0-RTT. The future is polled right when
//! h3 hands over the stream, on the connection's own task, so no other task's
//! scheduling can blur the answer; but a 0-RTT stream accepted only after
//! the client's Finished arrived is counted as 1-RTT. Put a [`UdpRelay`]
//! with a delay in front of the server to make that impossible.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use http::{Method, Request, Response, StatusCode};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How an [`H3Origin`] behaves.
#[derive(Debug, Clone)]
pub struct H3Options {
    /// The QUIC bidirectional stream limit it grants each connection.
    pub max_concurrent_streams: u32,
    /// Accept TLS early data (0-RTT) on resumed sessions.
    pub zero_rtt: bool,
    /// Bind this port (0: any), to restart a server where one was.
    pub port: u16,
    /// Keep every request in [`H3Origin::seen`]. Benches turn it off: the
    /// list grows without bound and its lock is work the TCP origins do
    /// not do.
    pub record: bool,
}

impl Default for H3Options {
    fn default() -> Self {
        H3Options {
            max_concurrent_streams: 100,
            zero_rtt: true,
            port: 0,
            record: true,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The server-side connection number.
    pub conn: usize,
    /// The request method.
    pub method: Method,
    /// The request path.
    pub path: String,
    /// Whether it arrived as early data.
    pub early: bool,
    /// The client's address when the request was accepted.
    pub remote: SocketAddr,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    rejected: AtomicUsize,
    reject_next: AtomicUsize,
}

struct State {
    counters: Counters,
    seen: Mutex<Vec<Seen>>,
    /// `true` while gated requests may proceed.
    gate: watch::Sender<bool>,
    /// Bumped to make every open connection send GOAWAY and drain.
    goaway: watch::Sender<u64>,
    /// Whether to keep `seen`.
    record: bool,
}

/// A running HTTP/3 origin. Everything it started stops when it is dropped.
pub struct H3Origin {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl H3Origin {
    /// Starts an origin on 127.0.0.1 presenting the test CA's certificate
    /// (valid for `localhost` and 127.0.0.1), ALPN `h3`.
    pub async fn start(options: H3Options) -> H3Origin {
        let mut tls = (*super::certs::server_config(vec![b"h3".to_vec()], false)).clone();
        // quinn accepts only 0 or u32::MAX; u32::MAX accepts 0-RTT.
        tls.max_early_data_size = if options.zero_rtt { u32::MAX } else { 0 };
        // One ticket per handshake, so a client resumes at most once with a
        // given server's ticket (a restarted server then rejects only one
        // 0-RTT attempt, not one per ticket the client still holds).
        tls.send_tls13_tickets = 1;
        let crypto = QuicServerConfig::try_from(tls).expect("QUIC server TLS config");
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(options.max_concurrent_streams.into());
        server.transport_config(Arc::new(transport));
        let bind = SocketAddr::from(([127, 0, 0, 1], options.port));
        // A port just given up by a server that shut down is free once its
        // endpoint task has dropped the socket, which happens asynchronously.
        let mut attempts = 0;
        let endpoint = loop {
            match quinn::Endpoint::server(server.clone(), bind) {
                Ok(endpoint) => break endpoint,
                Err(e) if attempts < 200 && options.port != 0 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("bind the QUIC server on {bind}: {e}"),
            }
        };
        let addr = endpoint.local_addr().expect("server address");
        let state = Arc::new(State {
            counters: Counters::default(),
            seen: Mutex::new(Vec::new()),
            gate: watch::Sender::new(true),
            goaway: watch::Sender::new(0),
            record: options.record,
        });
        let task = tokio::spawn(serve(endpoint.clone(), Arc::clone(&state)));
        H3Origin {
            addr,
            endpoint,
            state,
            task,
        }
    }

    /// The server's UDP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.counters.open.load(Ordering::SeqCst)
    }

    /// Requests whose head arrived (rejected ones included).
    pub fn requests(&self) -> usize {
        self.state.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.state.counters.in_flight.load(Ordering::SeqCst)
    }

    /// Requests refused with H3_REQUEST_REJECTED.
    pub fn rejected(&self) -> usize {
        self.state.counters.rejected.load(Ordering::SeqCst)
    }

    /// Requests that arrived as early data.
    pub fn early_requests(&self) -> usize {
        self.seen().iter().filter(|s| s.early).count()
    }

    /// Every request seen, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// Holds requests with `gate=1` until [`open_gate`](Self::open_gate).
    pub fn close_gate(&self) {
        self.state.gate.send_replace(false);
    }

    /// Lets gated requests proceed.
    pub fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }

    /// Refuses the next `n` requests with H3_REQUEST_REJECTED (as a server
    /// does for requests that arrive after its GOAWAY).
    pub fn reject_next(&self, n: usize) {
        self.state.counters.reject_next.store(n, Ordering::SeqCst);
    }

    /// Every open connection sends GOAWAY, finishes the requests it has,
    /// and closes once its client has (or after 2 s).
    pub fn goaway(&self) {
        self.state.goaway.send_modify(|generation| *generation += 1);
    }

    /// Closes every connection at once (CONNECTION_CLOSE, H3_NO_ERROR) and
    /// stops accepting.
    pub async fn shut_down(self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0x100), b"shut down");
        self.task.abort();
        self.endpoint.wait_idle().await;
    }
}

impl Drop for H3Origin {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"");
    }
}

async fn serve(endpoint: quinn::Endpoint, state: Arc<State>) {
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let Ok(connecting) = incoming.accept() else {
            continue;
        };
        connections.spawn(connection(connecting, Arc::clone(&state)));
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
    }
}

/// The server's view of the handshake: done once quinn resolved it.
struct Handshake(Option<quinn::ZeroRttAccepted>);

impl Handshake {
    /// Whether the handshake has completed, asked without waiting.
    fn done(&mut self) -> bool {
        let Some(pending) = self.0.as_mut() else {
            return true;
        };
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(pending).poll(&mut cx).is_ready() {
            self.0 = None;
            true
        } else {
            false
        }
    }
}

struct Open<'a>(&'a Counters);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(connecting: quinn::Connecting, state: Arc<State>) {
    // A server's `into_0rtt` always succeeds: streams sent in 0-RTT are
    // accepted at once instead of after the handshake.
    let (quic, mut handshake) = match connecting.into_0rtt() {
        Ok((quic, accepted)) => (quic, Handshake(Some(accepted))),
        Err(connecting) => match connecting.await {
            Ok(quic) => (quic, Handshake(None)),
            Err(_) => return,
        },
    };
    let id = state.counters.connections.fetch_add(1, Ordering::SeqCst) + 1;
    state.counters.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(&state.counters);
    let Ok(mut h3) = h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(quic.clone()))
        .await
    else {
        return;
    };
    let mut goaway = state.goaway.subscribe();
    goaway.mark_unchanged();
    let mut handlers = JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let early = !handshake.done();
                    let remote = quic.remote_address();
                    handlers.spawn(request(resolver, Arc::clone(&state), id, early, remote));
                }
                _ => break,
            },
            changed = goaway.changed(), if !draining => {
                if changed.is_err() {
                    break;
                }
                draining = true;
                // GOAWAY; h3 then refuses (H3_REQUEST_REJECTED) streams
                // above the last one it accepted.
                if h3.shutdown(0).await.is_err() {
                    break;
                }
            },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {},
        }
        if draining && handlers.is_empty() {
            // Every accepted request is answered. Let the client close (it
            // has its last response's bytes acknowledged by then); closing
            // first could cut the tail of a response still in flight.
            let _ = tokio::time::timeout(Duration::from_secs(2), quic.closed()).await;
            break;
        }
    }
    drop(h3);
    quic.close(quinn::VarInt::from_u32(0x100), b"");
}

struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

async fn request(
    resolver: Resolver,
    state: Arc<State>,
    conn: usize,
    early: bool,
    remote: SocketAddr,
) {
    let Ok((head, mut stream)) = resolver.resolve_request().await else {
        return;
    };
    let counters = &state.counters;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    counters.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(counters);
    if state.record {
        state.seen.lock().expect("seen").push(Seen {
            conn,
            method: head.method().clone(),
            path: head.uri().path().to_string(),
            early,
            remote,
        });
    }
    if counters
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        counters.rejected.fetch_add(1, Ordering::SeqCst);
        stream.stop_sending(Code::H3_REQUEST_REJECTED);
        stream.stop_stream(Code::H3_REQUEST_REJECTED);
        return;
    }
    let query = query(&head);
    let mut body_bytes = 0usize;
    while let Ok(Some(chunk)) = stream.recv_data().await {
        body_bytes += chunk.remaining();
    }
    if query.contains_key("gate") {
        let mut gate = state.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
    }
    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = match query.get("bytes").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from_static(b"hello"),
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("x-conn-id", conn)
        .header("x-early-data", if early { "1" } else { "0" })
        .header("x-body-bytes", body_bytes)
        .body(())
        .expect("response head");
    if stream.send_response(response).await.is_err() {
        return;
    }
    if !body.is_empty() && stream.send_data(body).await.is_err() {
        return;
    }
    let _ = stream.finish().await;
}

fn query(head: &Request<()>) -> HashMap<String, String> {
    head.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A UDP relay between one client and one server that holds every datagram
/// from the server for `delay` before passing it on (the client's go
/// straight through). It stretches the handshake's second half, so the
/// server sees a client's 0-RTT data long before that client's Finished.
pub struct UdpRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
    dropped: Arc<AtomicUsize>,
}

impl UdpRelay {
    /// Starts a relay on 127.0.0.1 in front of `server`.
    pub async fn start(server: SocketAddr, delay: Duration) -> UdpRelay {
        UdpRelay::start_lossy(server, delay, 0).await
    }

    /// Like [`start`](UdpRelay::start), also dropping every `drop_every`th
    /// datagram in each direction (0: none). The pattern is fixed, so a
    /// failure replays: datagram number `drop_every`, `2 * drop_every`, ...
    /// of each direction is lost, handshake packets included.
    pub async fn start_lossy(server: SocketAddr, delay: Duration, drop_every: u64) -> UdpRelay {
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&dropped);
        let lost = move |count: &mut u64| {
            *count += 1;
            let lost = drop_every != 0 && *count % drop_every == 0;
            if lost {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            lost
        };
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("relay front"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("relay back"));
        let addr = front.local_addr().expect("relay address");
        let task = tokio::spawn(async move {
            let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
            let mut from_client = vec![0u8; 65536];
            let mut from_server = vec![0u8; 65536];
            let (mut up, mut down) = (0u64, 0u64);
            loop {
                tokio::select! {
                    received = front.recv_from(&mut from_client) => {
                        let Ok((n, peer)) = received else { continue };
                        *client.lock().expect("client") = Some(peer);
                        if lost(&mut up) {
                            continue;
                        }
                        let _ = back.send_to(&from_client[..n], server).await;
                    }
                    received = back.recv_from(&mut from_server) => {
                        let Ok((n, _)) = received else { continue };
                        if lost(&mut down) {
                            continue;
                        }
                        let Some(peer) = *client.lock().expect("client") else { continue };
                        let datagram = from_server[..n].to_vec();
                        let front = Arc::clone(&front);
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = front.send_to(&datagram, peer).await;
                        });
                    }
                }
            }
        });
        UdpRelay {
            addr,
            task,
            dropped,
        }
    }

    /// Datagrams dropped so far, both ways.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    /// `https://127.0.0.1:PORT` of the relay's client side.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
