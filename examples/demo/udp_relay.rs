//! A UDP relay on 127.0.0.1 in front of the HTTP/3 origin: the same network
//! model as the TCP [relay](crate::relay), for datagrams.
//!
//! - **Propagation delay.** Every datagram is passed on one-way time
//!   (rtt / 2) after it arrived, in both directions. Each direction of each
//!   flow has a writer task that sleeps until each datagram is due, so
//!   datagrams in flight overlap and keep their order. No loss, no
//!   reordering, no bandwidth limit.
//! - **No handshake of its own.** UDP has none: a QUIC client's first
//!   datagram carries its TLS ClientHello, so the QUIC handshake costs one
//!   round trip through the relay, and 0-RTT data goes out with it.
//! - **Flows.** Each client address (one per QUIC endpoint, which all the
//!   connections of one edgepool `Http3` transport share) gets a socket of
//!   its own towards the origin, so replies find their way back. Flows are
//!   kept until the process exits: the demo makes a few dozen.
//! - **Precision.** As for the TCP relay, tokio's millisecond timer makes a
//!   round trip about rtt + 2 ms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// A running relay. It serves until the process exits.
pub struct UdpRelay {
    addr: SocketAddr,
}

impl UdpRelay {
    /// Binds 127.0.0.1 on a free UDP port and relays every flow to `upstream`.
    pub async fn start(upstream: SocketAddr, rtt: Duration) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?);
        let addr = front.local_addr()?;
        tokio::spawn(from_clients(front, upstream, rtt / 2));
        Ok(UdpRelay { addr })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A datagram and when to pass it on.
type Timed = (Instant, Bytes);

/// Reads what clients send; each client's datagrams go to its flow's
/// upstream delay line.
async fn from_clients(front: Arc<UdpSocket>, upstream: SocketAddr, one_way: Duration) {
    let mut flows: HashMap<SocketAddr, mpsc::UnboundedSender<Timed>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match front.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors from a client that went away surface here on
            // some systems; they concern that client only.
            Err(_) => continue,
        };
        let due = Instant::now() + one_way;
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(flow) = flows.get(&client) {
            if flow.send((due, datagram.clone())).is_ok() {
                continue;
            }
        }
        match open_flow(&front, client, upstream, one_way).await {
            Ok(flow) => {
                let _ = flow.send((due, datagram));
                flows.insert(client, flow);
            }
            Err(e) => eprintln!("udp relay: cannot open a flow for {client}: {e}"),
        }
    }
}

/// A socket towards the origin for one client, its two delay lines, and
/// the task that reads the origin's replies.
async fn open_flow(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    one_way: Duration,
) -> std::io::Result<mpsc::UnboundedSender<Timed>> {
    let back = Arc::new(UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?);
    back.connect(upstream).await?;
    // Unbounded: the model has no bandwidth limit, and what is in flight is
    // at most one RTT's worth of the demo's traffic.
    let (to_origin, upstream_line) = mpsc::unbounded_channel::<Timed>();
    let (to_client, downstream_line) = mpsc::unbounded_channel::<Timed>();
    tokio::spawn(deliver(upstream_line, Arc::clone(&back), None));
    tokio::spawn(deliver(downstream_line, Arc::clone(front), Some(client)));
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match back.recv(&mut buf).await {
                Ok(n) => {
                    let due = Instant::now() + one_way;
                    if to_client
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                // The origin's port refused a datagram (ICMP): keep going,
                // as a real path would.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    Ok(to_origin)
}

/// Sends each datagram when it is due, in order: on the connected `socket`,
/// or to `to`.
async fn deliver(
    mut line: mpsc::UnboundedReceiver<Timed>,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
) {
    while let Some((due, datagram)) = line.recv().await {
        // A sleep always waits for the next timer tick, even when the
        // deadline has passed (or with --rtt-ms 0); skip it then.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        // A datagram that cannot be sent is lost, as on a real path; QUIC
        // retransmits it.
        let _ = match to {
            Some(to) => socket.send_to(&datagram, to).await,
            None => socket.send(&datagram).await,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clients behind one relay each get their own replies back: the
    /// relay keeps a flow (and an origin-side socket) per client address.
    #[tokio::test]
    async fn each_client_gets_its_own_replies() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.expect("echo socket");
        let echo_addr = echo.local_addr().expect("echo address");
        let echo_task = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let Ok((n, from)) = echo.recv_from(&mut buf).await else {
                    return;
                };
                // The reply names the origin-side address it came from, so
                // the test can tell the flows apart.
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!("@{from}").as_bytes());
                let _ = echo.send_to(&reply, from).await;
            }
        });
        let relay = UdpRelay::start(echo_addr, Duration::ZERO)
            .await
            .expect("relay");
        let mut replies = Vec::new();
        for name in ["a", "b"] {
            let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
            client.connect(relay.addr()).await.expect("connect");
            client.send(name.as_bytes()).await.expect("send");
            let mut buf = [0u8; 128];
            let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
                .await
                .expect("a reply within 10 s")
                .expect("recv");
            replies.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        echo_task.abort();
        let (a, b) = (&replies[0], &replies[1]);
        assert!(a.starts_with("a@"), "{a}");
        assert!(b.starts_with("b@"), "{b}");
        assert_ne!(
            a[1..],
            b[1..],
            "the two clients shared one origin-side socket"
        );
    }
}
