//! The fault-injecting relay of `tests/support/chaos.rs` on its own: each
//! control against a [`TestOrigin`], driven by raw TCP clients speaking
//! HTTP/1.1 (so every byte, EOF and reset is visible) and by hyper's client.
//!
//! Waits are bounded (`within`, `eventually`); nothing asserts on elapsed
//! time. Where a test checks that something does *not* happen (a black hole
//! answers nothing), it looks for a short while: with a correct relay that
//! can never fail, it only limits how long the test looks.

mod support;

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::chaos::{ChaosRelay, RestartableOrigin};
use support::{Options, TestOrigin, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a test looks for something that must not happen.
const QUIET: Duration = Duration::from_millis(100);

/// An HTTP/1.1 GET for `path`, as bytes on the wire.
fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: chaos.test\r\n\r\n").into_bytes()
}

/// One HTTP/1.1 response as it came off the wire.
struct Reply {
    head: String,
    body: Vec<u8>,
    /// Bytes on the wire: head, blank line and body.
    wire_len: usize,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or_else(|| panic!("no {name} header in\n{}", self.head))
    }
}

/// A raw TCP client of the relay, keeping bytes read past one response
/// (pipelined responses can arrive in one read).
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect to the relay");
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, path: &str) -> io::Result<()> {
        self.stream.write_all(&request(path)).await
    }

    /// Reads one response with a `content-length` body (all `TestOrigin`
    /// sends).
    async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let buf = &self.pending;
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end].to_vec()).expect("ascii head");
                let len: usize = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse().expect("numeric content-length"))
                    .expect("content-length");
                let wire_len = end + 4 + len;
                if buf.len() >= wire_len {
                    let body = buf[end + 4..wire_len].to_vec();
                    self.pending.drain(..wire_len);
                    return Ok(Reply {
                        head,
                        body,
                        wire_len,
                    });
                }
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one response, bounded.
    async fn reply(&mut self) -> Reply {
        within("response", self.read_reply())
            .await
            .expect("read response")
    }

    /// Sends a GET for `path` and reads its response, bounded.
    async fn get(&mut self, path: &str) -> Reply {
        self.send(path).await.expect("write request");
        self.reply().await
    }

    /// Waits (bounded) for the connection to end and says how. Data
    /// arriving first is a test failure.
    async fn wait_end(&mut self) -> End {
        assert!(self.pending.is_empty(), "unread response bytes");
        let mut buf = [0u8; 1024];
        within("the connection to end", async {
            match self.stream.read(&mut buf).await {
                Ok(0) => End::Eof,
                Ok(n) => panic!(
                    "expected the connection to end, got {n} bytes: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => End::Reset,
                Err(e) => panic!("expected EOF or a reset, got {e}"),
            }
        })
        .await
    }

    /// Asserts nothing arrives for [`QUIET`].
    async fn assert_silent(&mut self, what: &str) {
        assert!(self.pending.is_empty(), "{what}: unread response bytes");
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(QUIET, self.stream.read(&mut buf)).await {
            Err(_elapsed) => {}
            Ok(Ok(n)) => panic!("{what}: expected silence, read {n} bytes"),
            Ok(Err(e)) => panic!("{what}: expected silence, got {e}"),
        }
    }
}

#[derive(Debug, PartialEq)]
enum End {
    /// A clean close: read returned 0.
    Eof,
    /// Read failed with ECONNRESET.
    Reset,
}

/// A loopback port nothing listens on (as long as nobody takes it meanwhile).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_both_ways_and_counts_every_byte() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    assert_eq!(relay.upstream(), Some(origin.addr));

    let mut client = Client::connect(relay.addr()).await;
    let (mut sent, mut received) = (0, 0);
    for n in 1..=3 {
        let reply = client.get("/?bytes=1000").await;
        assert_eq!(reply.header("x-conn-id"), "1");
        assert_eq!(reply.header("x-request-n"), n.to_string());
        assert_eq!(reply.body, vec![b'x'; 1000]);
        sent += request("/?bytes=1000").len() as u64;
        received += reply.wire_len as u64;
    }
    // The counters move just after the bytes, on the relay's own task.
    eventually("every byte counted", || {
        let s = relay.stats();
        (s.bytes_to_upstream, s.bytes_to_client) == (sent, received)
    })
    .await;
    let s = relay.stats();
    assert_eq!((s.accepted, s.open), (1, 1));
    assert_eq!((s.queued_to_upstream, s.queued_to_client), (0, 0));
    assert_eq!(origin.connections_accepted(), 1);

    // A second client gets its own upstream connection.
    let mut second = Client::connect(relay.addr()).await;
    assert_eq!(second.get("/").await.header("x-conn-id"), "2");

    // Clients closing (FIN) is passed on; the origin closes in turn.
    drop(client);
    drop(second);
    eventually("both relayed connections close", || relay.stats().open == 0).await;
    eventually("the origin sees both close", || {
        origin.open_connections() == 0
    })
    .await;
    let s = relay.stats();
    assert_eq!((s.accepted, s.idle_closed, s.reset), (2, 0, 0));
}

#[tokio::test]
async fn a_hyper_client_works_through_the_relay() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let tcp = Client::connect(relay.addr()).await.stream;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    for _ in 0..2 {
        let request = http::Request::get("/?bytes=300000")
            .header("host", "chaos.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("response", sender.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-conn-id"], "1");
        let body = within("body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body.len(), 300_000);
    }
    drop(sender);
    within("hyper connection ends", driver)
        .await
        .unwrap()
        .unwrap();
    eventually("relay connection closes", || relay.stats().open == 0).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_is_closed_when_idle() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.close_idle_after(Some(Duration::from_millis(50)));
    let mut client = Client::connect(relay.addr()).await;
    assert_eq!(client.wait_end().await, End::Eof);
    eventually("idle close counted", || {
        let s = relay.stats();
        (s.idle_closed, s.open) == (1, 0)
    })
    .await;
    // FIN both ways: the origin saw its client go away too.
    eventually("origin side closed", || origin.open_connections() == 0).await;
    assert_eq!(origin.connections_accepted(), 1);
    assert_eq!(relay.stats().reset, 0);
}

#[tokio::test]
async fn changing_the_idle_timeout_reaches_existing_connections() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.close_idle_after(Some(Duration::from_secs(3600)));
    let mut client = Client::connect(relay.addr()).await;
    client.get("/").await;
    // Still open under the long timeout: a second request reuses it.
    assert_eq!(client.get("/").await.header("x-request-n"), "2");
    assert_eq!(relay.stats().idle_closed, 0);

    // Shortening it re-arms the existing connection's timer.
    relay.close_idle_after(Some(Duration::from_millis(20)));
    assert_eq!(client.wait_end().await, End::Eof);
    eventually("idle close counted", || relay.stats().idle_closed == 1).await;
    eventually("origin side closed", || origin.open_connections() == 0).await;

    // Turned off again, new connections are not closed for idleness
    // (checked by reusing one; the assertion cannot depend on timing).
    relay.close_idle_after(None);
    let mut client = Client::connect(relay.addr()).await;
    client.get("/").await;
    assert_eq!(client.get("/").await.header("x-request-n"), "2");
    assert_eq!(relay.stats().idle_closed, 1);
}

/// Traffic more often than the idle timeout keeps a connection open: the
/// timer re-arms on every byte instead of firing a fixed time after the
/// connection opened. If the test itself stalls long enough to leave a real
/// idle gap, the relay may rightly close the connection; the test then
/// cannot conclude and says so instead of failing.
#[tokio::test]
async fn activity_rearms_the_idle_timer() {
    let idle = Duration::from_millis(300);
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let mut client = Client::connect(relay.addr()).await;
    client.get("/").await;
    relay.close_idle_after(Some(idle));

    let mut last_event = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut note = |longest_gap: &mut Duration| {
        let now = Instant::now();
        *longest_gap = (*longest_gap).max(now - last_event);
        last_event = now;
    };
    // Twenty requests 25 ms apart: together well past the idle timeout,
    // each gap far below it.
    for n in 2..=21 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        note(&mut longest_gap);
        let written = client.send("/").await;
        note(&mut longest_gap);
        let reply = match written {
            Ok(()) => within("reply", client.read_reply()).await,
            Err(e) => Err(e),
        };
        note(&mut longest_gap);
        match reply {
            Ok(reply) => assert_eq!(reply.header("x-request-n"), n.to_string()),
            Err(e) if longest_gap >= idle / 2 => {
                eprintln!(
                    "inconclusive: the test stalled for {longest_gap:?} (idle timeout \
                     {idle:?}) and the connection was closed ({e})"
                );
                return;
            }
            Err(e) => panic!(
                "closed after request {} although no gap exceeded {longest_gap:?} \
                 (idle timeout {idle:?}): {e}",
                n - 1
            ),
        }
    }
    assert!(
        relay.stats().idle_closed == 0 || longest_gap >= idle / 2,
        "{:?}",
        relay.stats()
    );
    // And once the traffic stops, the timer does fire.
    assert_eq!(client.wait_end().await, End::Eof);
    eventually("idle close counted", || relay.stats().idle_closed == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_resets_clients_and_upstreams() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let mut a = Client::connect(relay.addr()).await;
    let mut b = Client::connect(relay.addr()).await;
    a.get("/").await;
    b.get("/").await;
    assert_eq!(relay.stats().open, 2);
    assert_eq!(origin.open_connections(), 2);

    relay.reset_all();
    assert_eq!(a.wait_end().await, End::Reset);
    assert_eq!(b.wait_end().await, End::Reset);
    eventually("both counted as reset", || {
        let s = relay.stats();
        (s.reset, s.open) == (2, 0)
    })
    .await;
    // The origin's side was reset as well.
    eventually("origin side closed", || origin.open_connections() == 0).await;

    // Only connections open at the time are reset.
    let mut c = Client::connect(relay.addr()).await;
    assert_eq!(c.get("/").await.header("x-conn-id"), "3");
    assert_eq!(relay.stats().reset, 2);
}

#[tokio::test]
async fn a_blackhole_accepts_new_connections_but_forwards_nothing() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.blackhole(true);

    let mut client = Client::connect(relay.addr()).await;
    client.send("/").await.unwrap();
    eventually("the relay accepted", || relay.stats().open == 1).await;
    client.assert_silent("black-holed new connection").await;
    // The origin never even saw a connection.
    assert_eq!(origin.connections_accepted(), 0);
    let s = relay.stats();
    assert_eq!((s.bytes_to_upstream, s.bytes_to_client), (0, 0));

    // Lifted: the request written meanwhile goes through.
    relay.blackhole(false);
    let reply = client.reply().await;
    assert_eq!(reply.header("x-request-n"), "1");
    assert_eq!(origin.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_stalls_existing_connections_without_closing_them() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let mut client = Client::connect(relay.addr()).await;
    client.get("/").await;
    let before = relay.stats();

    relay.blackhole(true);
    // Idle timeouts are suspended too: a black hole never closes anything.
    relay.close_idle_after(Some(Duration::from_millis(10)));
    client.send("/").await.unwrap();
    client
        .assert_silent("black-holed existing connection")
        .await;
    assert_eq!(origin.requests(), 1);
    let s = relay.stats();
    assert_eq!(
        (s.bytes_to_upstream, s.bytes_to_client, s.idle_closed),
        (before.bytes_to_upstream, before.bytes_to_client, 0)
    );

    relay.close_idle_after(None);
    relay.blackhole(false);
    let reply = client.reply().await;
    assert_eq!(reply.header("x-request-n"), "2");

    // reset_all still reaches a black-holed connection.
    relay.blackhole(true);
    relay.reset_all();
    assert_eq!(client.wait_end().await, End::Reset);
    eventually("counted", || relay.stats().reset == 1).await;
}

#[tokio::test]
async fn reset_all_reaches_connections_parked_in_a_blackhole() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.blackhole(true);
    let mut client = Client::connect(relay.addr()).await;
    eventually("the relay accepted", || relay.stats().open == 1).await;
    relay.reset_all();
    assert_eq!(client.wait_end().await, End::Reset);
    eventually("counted", || relay.stats() == reset_stats(1)).await;
    assert_eq!(origin.connections_accepted(), 0);
}

/// Stats after `n` connections that were accepted and reset, nothing else.
fn reset_stats(n: usize) -> support::chaos::RelayStats {
    support::chaos::RelayStats {
        accepted: n,
        reset: n,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_long_delay_holds_bytes_until_it_is_lowered() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.delay(Duration::from_secs(3600));
    let mut client = Client::connect(relay.addr()).await;
    let wire = request("/");
    client.stream.write_all(&wire).await.unwrap();
    eventually("the request is held", || {
        relay.stats().queued_to_upstream == wire.len() as u64
    })
    .await;
    assert_eq!(relay.stats().bytes_to_upstream, 0);
    assert_eq!(origin.requests(), 0);

    // Lowering the delay releases what is already held.
    relay.delay(Duration::ZERO);
    let reply = client.reply().await;
    assert_eq!(reply.body, b"hello");
    eventually("nothing left held", || {
        let s = relay.stats();
        (s.queued_to_upstream, s.queued_to_client) == (0, 0)
    })
    .await;
    assert_eq!(relay.stats().bytes_to_upstream, wire.len() as u64);
}

#[tokio::test]
async fn delayed_chunks_arrive_whole_and_in_order() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    relay.delay(Duration::from_millis(5));
    let mut client = Client::connect(relay.addr()).await;

    // A large response crosses the relay in many chunks.
    let reply = client.get("/?bytes=500000").await;
    assert_eq!(reply.body.len(), 500_000);
    assert!(reply.body.iter().all(|&b| b == b'x'));

    // Pipelined requests, written separately, reach the origin in order.
    for i in 0..20 {
        client.send(&format!("/?i={i}")).await.unwrap();
    }
    for i in 0..20 {
        let reply = client.reply().await;
        assert_eq!(reply.header("x-seen-uri"), format!("/?i={i}"));
    }
    let s = relay.stats();
    assert_eq!((s.queued_to_upstream, s.queued_to_client), (0, 0));
}

#[tokio::test]
async fn refusing_closes_the_port_and_rebinds_the_same_one() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let addr = relay.addr();
    let mut existing = Client::connect(addr).await;
    existing.get("/").await;

    for round in 0..2 {
        relay.refuse(true);
        relay.refuse(true); // idempotent
        assert!(relay.is_refusing());
        let refused = within("refused connect", TcpStream::connect(addr)).await;
        match refused {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "round {round}"),
            Ok(_) => panic!("round {round}: connect succeeded while refusing"),
        }
        // Connections already relayed keep working.
        existing.get("/").await;

        relay.refuse(false);
        relay.refuse(false); // idempotent
        assert!(!relay.is_refusing());
        assert_eq!(relay.addr(), addr);
        let mut fresh = Client::connect(addr).await;
        assert_eq!(fresh.get("/").await.header("x-request-n"), "1");
    }
    assert_eq!(relay.stats().accepted, 3);
}

#[tokio::test]
async fn an_unreachable_upstream_means_accept_then_reset() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);

    relay.clear_upstream();
    assert_eq!(relay.upstream(), None);
    let mut client = Client::connect(relay.addr()).await;
    assert_eq!(client.wait_end().await, End::Reset);

    relay.set_upstream(closed_port().await);
    let mut client = Client::connect(relay.addr()).await;
    assert_eq!(client.wait_end().await, End::Reset);

    eventually("both counted", || {
        let s = relay.stats();
        (s.upstream_connect_failed, s.reset, s.open) == (2, 2, 0)
    })
    .await;
    assert_eq!(origin.connections_accepted(), 0);
}

#[tokio::test]
async fn set_upstream_moves_only_new_connections() {
    let first = TestOrigin::start(Options::plain()).await;
    let second = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(first.addr);
    let mut old = Client::connect(relay.addr()).await;
    old.get("/").await;

    relay.set_upstream(second.addr);
    let mut new = Client::connect(relay.addr()).await;
    new.get("/").await;
    old.get("/").await;
    assert_eq!((first.requests(), second.requests()), (2, 1));
    assert_eq!(
        (first.connections_accepted(), second.connections_accepted()),
        (1, 1)
    );
}

#[tokio::test]
async fn a_restartable_origin_keeps_its_address() {
    let mut origin = RestartableOrigin::start(Options::plain()).await;
    let addr = origin.addr();
    assert_eq!(origin.url("/x"), format!("http://{addr}/x"));
    assert_eq!(origin.origin().to_string(), format!("http://{addr}"));

    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("/").await.header("x-conn-id"), "1");

    origin.stop();
    assert!(!origin.is_running());
    // The origin's connections close; the relay passes that on.
    client.wait_end().await;
    // New connections are accepted and reset while it is down.
    let mut refused = Client::connect(addr).await;
    assert_eq!(refused.wait_end().await, End::Reset);
    assert_eq!(origin.relay().stats().upstream_connect_failed, 1);

    origin.start_again().await;
    assert_eq!((origin.is_running(), origin.starts()), (true, 2));
    let mut client = Client::connect(addr).await;
    // A new incarnation, counting from 1 again.
    assert_eq!(client.get("/").await.header("x-conn-id"), "1");
    assert_eq!(origin.current().unwrap().requests(), 1);

    // Restarting while running replaces the running one.
    origin.start_again().await;
    client.wait_end().await;
    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("/").await.header("x-conn-id"), "1");
    assert_eq!(origin.starts(), 3);
}

#[tokio::test]
async fn dropping_the_relay_stops_everything() {
    let origin = TestOrigin::start(Options::plain()).await;
    let relay = ChaosRelay::start(origin.addr);
    let addr = relay.addr();
    let mut client = Client::connect(addr).await;
    client.get("/").await;

    drop(relay);
    let refused = within("connect after drop", TcpStream::connect(addr)).await;
    assert_eq!(
        refused.expect_err("nothing listens any more").kind(),
        ErrorKind::ConnectionRefused
    );
    client.wait_end().await;
    eventually("origin side closed", || origin.open_connections() == 0).await;
}

/// The relay only moves bytes, so TLS verifies through it (the test
/// certificate names 127.0.0.1, not a port), here with the pool as client.
#[cfg(all(feature = "http1", feature = "tls"))]
#[tokio::test]
async fn the_pool_speaks_tls_through_a_restartable_origin() {
    use edgepool::Pool;
    use edgepool::transport::http1::Http1;

    let origin = RestartableOrigin::start(Options::tls()).await;
    let pool = Pool::builder(Http1::with_tls(support::certs::test_ca_tls()))
        .build()
        .unwrap();
    for _ in 0..2 {
        let request = http::Request::get(origin.url("/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("response", pool.request(request)).await.unwrap();
        assert_eq!(response.headers()["x-conn-id"], "1");
        let body = within("body", response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    let current = origin.current().unwrap();
    assert_eq!((current.requests(), current.tls_failures()), (2, 0));
    assert_eq!(origin.relay().stats().accepted, 1);
}
