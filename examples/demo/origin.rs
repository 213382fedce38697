//! The embedded origin: an HTTPS server on 127.0.0.1 that speaks HTTP/2 and
//! HTTP/1.1 (ALPN offers `h2` and `http/1.1`; the client's offer decides),
//! answers every request with the same small body, and counts the TCP
//! connections it accepts (the "origin connections opened" figure).
//!
//! `GET /slow?ms=N` answers the same body after N ms (at most
//! [`MAX_DELAY_MS`]): the slow request of the head-of-line section.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::certs::Certs;

/// Size of every response body, in bytes.
pub const BODY_LEN: usize = 64;

/// Every response body (both origins send the same).
pub static BODY: [u8; BODY_LEN] = [b'e'; BODY_LEN];

/// Streams one HTTP/2 connection may carry at once (the same as edgepool's
/// default cap, so both sides agree on 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// The longest delay `/slow?ms=N` honours; larger values are cut to it.
pub const MAX_DELAY_MS: u64 = 10_000;

/// A running origin. It serves until the process exits.
pub struct Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Origin {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start(certs: &Certs) -> Result<Origin, Box<dyn std::error::Error>> {
        // The server picks the first of its own protocols the client offers:
        // h2 for edgepool's HTTP/2 transport, http/1.1 for its HTTP/1.1 one.
        let config = certs.server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&accepted)));
        Ok(Origin { addr, accepted })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted since it started.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, accepted: Arc<AtomicU64>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(tcp, acceptor.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                eprintln!("origin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One connection: TLS handshake (on its own task, so handshakes never queue
/// behind each other), then HTTP/2 or HTTP/1.1 with keep-alive until the
/// client leaves. hyper-util's auto builder tells the two apart by the
/// HTTP/2 connection preface, which a client that negotiated h2 sends first.
async fn serve(tcp: TcpStream, acceptor: TlsAcceptor) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    // Errors here are clients going away mid-exchange; nothing to report.
    let _ = builder
        .serve_connection(TokioIo::new(tls), service_fn(respond))
        .await;
}

/// The body after the delay the request asked for (none unless `/slow`).
async fn respond(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = requested_delay(request.uri());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(&BODY)))
        .expect("a static response head is valid");
    Ok(response)
}

/// `/slow?ms=N` asks for N ms (capped at [`MAX_DELAY_MS`]); any other path,
/// or a missing or malformed `ms`, for none.
pub fn requested_delay(uri: &http::Uri) -> Duration {
    if uri.path() != "/slow" {
        return Duration::ZERO;
    }
    let ms = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms.min(MAX_DELAY_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(uri: &str) -> Duration {
        requested_delay(&uri.parse().expect("a valid test URI"))
    }

    #[test]
    fn only_slow_paths_are_delayed_and_the_delay_is_capped() {
        assert_eq!(delay("/"), Duration::ZERO);
        assert_eq!(delay("/?ms=500"), Duration::ZERO);
        assert_eq!(delay("/slow?ms=500"), Duration::from_millis(500));
        assert_eq!(delay("/slow?x=1&ms=7"), Duration::from_millis(7));
        assert_eq!(delay("/slow"), Duration::ZERO);
        assert_eq!(delay("/slow?ms=soon"), Duration::ZERO);
        assert_eq!(delay("/slow?ms=-1"), Duration::ZERO);
        assert_eq!(
            delay("/slow?ms=99999999999999999999"),
            Duration::ZERO,
            "does not fit a u64"
        );
        assert_eq!(
            delay("/slow?ms=600000"),
            Duration::from_millis(MAX_DELAY_MS)
        );
    }
}
