//! The embedded origin: an HTTP/1.1 server over TLS on 127.0.0.1 that answers
//! every request with the same small body, and counts the TCP connections it
//! accepts (the "origin connections opened" figure).

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
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::certs::Certs;

/// Size of every response body, in bytes.
pub const BODY_LEN: usize = 64;

/// A running origin. It serves until the process exits.
pub struct Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Origin {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start(certs: &Certs) -> Result<Origin, Box<dyn std::error::Error>> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![certs.server_cert.clone()],
                    certs.server_key.clone_key(),
                )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
/// behind each other), then HTTP/1.1 with keep-alive until the client leaves.
async fn serve(tcp: TcpStream, acceptor: TlsAcceptor) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let service = service_fn(|_request: Request<Incoming>| async {
        static BODY: [u8; BODY_LEN] = [b'e'; BODY_LEN];
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(&BODY)))
            .expect("a static response head is valid");
        Ok::<_, Infallible>(response)
    });
    // Errors here are clients going away mid-exchange; nothing to report.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}
