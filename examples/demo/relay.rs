//! A TCP relay on 127.0.0.1 in front of the origin that makes loopback look
//! like a network with a round-trip time.
//!
//! # The model
//!
//! - **Propagation delay.** Every chunk read from one side is written to the
//!   other side one-way time (rtt / 2) after it was read. Each direction has
//!   a reader task that timestamps chunks as they arrive and a writer task
//!   that sleeps until each chunk is due, so chunks in flight overlap as they
//!   do on a real link: a chunk waits for its own deadline, never for the
//!   delays of the chunks before it (pipelining stays intact), and order is
//!   kept. Bandwidth is unlimited; there is no loss, no congestion window.
//! - **TCP handshake.** On loopback `connect` returns at once, whereas on a
//!   real network a client can send its first byte only after the SYN /
//!   SYN-ACK round trip. To stand for it, the first bytes a client sends on a
//!   new connection are held one extra full RTT, so they reach the origin
//!   1.5 RTT after the client sent them, as they would have after a real
//!   handshake. A TLS 1.3 handshake then costs its own round trip on top,
//!   simply by going through the relay.
//! - **Closing.** End of stream is forwarded like data, one-way time later.
//! - **Precision.** tokio's timer ticks in whole milliseconds and rounds a
//!   deadline up to the next tick, so a delayed chunk arrives up to about
//!   1 ms late: the round trip seen by a client is about rtt + 2 ms, for
//!   every scenario alike.
//!
//! The relay connects to the origin when it accepts a client (loopback, so
//! that adds nothing); the origin counts one connection per relayed client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read from a socket at a time, at most.
const READ_CHUNK: usize = 16 * 1024;

/// A running relay. It serves until the process exits.
pub struct Relay {
    addr: SocketAddr,
}

impl Relay {
    /// Binds 127.0.0.1 on a free port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<Relay> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(accept_loop(listener, upstream, rtt));
        Ok(Relay { addr })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, rtt: Duration) {
    loop {
        match listener.accept().await {
            Ok((client, _peer)) => {
                tokio::spawn(relay(client, upstream, rtt));
            }
            Err(e) => {
                eprintln!("relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, rtt: Duration) {
    let server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(e) => {
            // Dropping the client closes it; the client sees a failed connection.
            eprintln!("relay: cannot reach the origin at {upstream}: {e}");
            return;
        }
    };
    // Without this, Nagle's algorithm would hold small writes back and add
    // delays that have nothing to do with the simulated RTT.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let one_way = rtt / 2;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(direction(client_read, server_write, one_way, rtt));
    tokio::spawn(direction(
        server_read,
        client_write,
        one_way,
        Duration::ZERO,
    ));
}

/// What the reader hands the writer: when to deliver, and what (`None` is
/// end of stream).
type Timed = (Instant, Option<Bytes>);

/// One direction of a connection. The first chunk is held `first_extra`
/// longer than the others.
async fn direction(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    one_way: Duration,
    first_extra: Duration,
) {
    // Unbounded: the model has no window or bandwidth limit, and what is in
    // flight is at most one RTT's worth of the demo's small messages.
    let (tx, rx) = mpsc::unbounded_channel::<Timed>();
    tokio::spawn(deliver(rx, to));
    let mut extra = first_extra;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        match from.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {
                let due = Instant::now() + one_way + extra;
                extra = Duration::ZERO;
                if tx.send((due, Some(buf.split().freeze()))).is_err() {
                    return; // The writer is gone: the other side closed.
                }
            }
            // End of stream, or a reset (forwarded as end of stream).
            _ => {
                let _ = tx.send((Instant::now() + one_way, None));
                return;
            }
        }
    }
}

/// Writes each chunk when it is due, in order.
async fn deliver(mut rx: mpsc::UnboundedReceiver<Timed>, mut to: OwnedWriteHalf) {
    while let Some((due, chunk)) = rx.recv().await {
        // A sleep always waits for the next timer tick, even when the
        // deadline has passed (or with --rtt-ms 0); skip it then.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        match chunk {
            Some(bytes) => {
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            None => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}
