//! The embedded HTTP/3 origin: quinn + h3 on 127.0.0.1 (UDP), the same
//! certificate as the TCP origin, ALPN `h3`, up to
//! [`MAX_CONCURRENT_STREAMS`] request streams per connection. It answers
//! exactly as the TCP origin does (the same body, `/slow?ms=N`), accepts
//! 0-RTT from clients that resume a session, and counts the QUIC
//! connections it accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Response, header};
use quinn::crypto::rustls::QuicServerConfig;

use crate::certs::Certs;
use crate::origin::{BODY, MAX_CONCURRENT_STREAMS, requested_delay};

/// A running HTTP/3 origin. It serves until the process exits.
pub struct H3Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl H3Origin {
    /// Binds a UDP port on 127.0.0.1 and starts serving.
    pub async fn start(certs: &Certs) -> Result<H3Origin, Box<dyn std::error::Error>> {
        // QUIC runs TLS 1.3 only; the 1.2 the configuration also allows is
        // never negotiated over it.
        let mut tls = certs.server_config(vec![b"h3".to_vec()])?;
        // QUIC takes 0 (no early data) or u32::MAX (early data accepted):
        // the cold-connect section measures a resumed client's 0-RTT.
        tls.max_early_data_size = u32::MAX;
        let crypto = QuicServerConfig::try_from(tls)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = endpoint.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept_loop(endpoint, Arc::clone(&accepted)));
        Ok(H3Origin { addr, accepted })
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// QUIC connections accepted since it started.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, accepted: Arc<AtomicU64>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(connecting) = incoming.accept() else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(connecting));
    }
}

/// One connection. `into_0rtt` (which always succeeds on a server) hands
/// the connection over before the handshake completes, so requests that
/// came as early data are answered at once, as a server that accepts 0-RTT
/// does.
async fn serve(connecting: quinn::Connecting) {
    let quic = match connecting.into_0rtt() {
        Ok((quic, _accepted)) => quic,
        Err(connecting) => match connecting.await {
            Ok(quic) => quic,
            Err(_) => return,
        },
    };
    let Ok(mut h3) = h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(quic))
        .await
    else {
        return;
    };
    // Until the client closes the connection (or it fails).
    while let Ok(Some(resolver)) = h3.accept().await {
        tokio::spawn(async move {
            let Ok((head, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            let delay = requested_delay(head.uri());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let response = Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(())
                .expect("a static response head is valid");
            // Errors here are clients going away mid-exchange.
            if stream.send_response(response).await.is_ok()
                && stream.send_data(Bytes::from_static(&BODY)).await.is_ok()
            {
                let _ = stream.finish().await;
            }
        });
    }
}
