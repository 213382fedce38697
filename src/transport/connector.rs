//! Connectors: the byte-stream step under the HTTP/1.1 and HTTP/2 transports.
//!
//! A connector is any `tower::Service<Origin>` whose response is a byte
//! stream, so users can plug in their own DNS, a Unix socket, a SOCKS or
//! CONNECT hop, or wrap the default [`TcpConnector`] in tower middleware
//! (a connect timeout, a rate limit). TLS is layered on top by the transport,
//! because the TLS configuration belongs to the origin.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::{BoxError, Error, Origin};

/// Opens byte streams to origins. Implemented for every cloneable
/// `tower::Service<Origin>` that returns an `AsyncRead + AsyncWrite` stream.
///
/// ```
/// use std::task::{Context, Poll};
/// use edgepool::Origin;
/// use edgepool::transport::{connector::TcpConnector, http1::Http1};
///
/// /// Logs every connect, then defers to TCP.
/// #[derive(Clone)]
/// struct Logged(TcpConnector);
///
/// impl tower_service::Service<Origin> for Logged {
///     type Response = tokio::net::TcpStream;
///     type Error = edgepool::Error;
///     type Future = <TcpConnector as tower_service::Service<Origin>>::Future;
///     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
///         self.0.poll_ready(cx)
///     }
///     fn call(&mut self, origin: Origin) -> Self::Future {
///         eprintln!("connecting to {origin}");
///         self.0.call(origin)
///     }
/// }
///
/// let transport = Http1::new().with_connector(Logged(TcpConnector::new()));
/// # drop(transport);
/// ```
pub trait Connector: Clone + Send + Sync + 'static {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a stream to `origin`'s host and port.
    fn connect(&self, origin: &Origin) -> impl Future<Output = Result<Self::Io, Error>> + Send;
}

impl<S> Connector for S
where
    S: Service<Origin> + Clone + Send + Sync + 'static,
    S::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Io = S::Response;

    async fn connect(&self, origin: &Origin) -> Result<Self::Io, Error> {
        // Service::call takes &mut self and a service must be polled ready
        // before each call, so each connect drives its own clone.
        let mut service = self.clone();
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(|e| connect_error(origin, e))?;
        service
            .call(origin.clone())
            .await
            .map_err(|e| connect_error(origin, e))
    }
}

/// Keeps an edgepool error as it is (a connector built on [`TcpConnector`]
/// already names the origin); wraps anything else as a connect error.
fn connect_error(origin: &Origin, error: impl Into<BoxError>) -> Error {
    match error.into().downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => Error::connect(origin, other),
    }
}

/// The default connector: TCP to the origin's host and port, with
/// `TCP_NODELAY` on, since request heads are small writes that must not wait
/// for an ACK. Name resolution is the system's (`getaddrinfo` via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector {
    _private: (),
}

impl TcpConnector {
    /// The default TCP connector.
    pub fn new() -> Self {
        TcpConnector { _private: () }
    }
}

impl Service<Origin> for TcpConnector {
    type Response = TcpStream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<TcpStream, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, origin: Origin) -> Self::Future {
        Box::pin(async move {
            let stream = TcpStream::connect((origin.connect_host(), origin.port()))
                .await
                .map_err(|e| Error::connect(&origin, e))?;
            stream
                .set_nodelay(true)
                .map_err(|e| Error::connect(&origin, e))?;
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_connector_round_trips_with_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf).await.expect("write");
        });
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).expect("origin");
        let mut tcp = TcpConnector::new().connect(&origin).await.expect("connect");
        assert!(tcp.nodelay().expect("nodelay"));
        tcp.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        tcp.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        echo.await.expect("echo task");
    }

    #[tokio::test]
    async fn refused_connect_is_one_connect_error_naming_the_origin() {
        let (origin, port) = crate::transport::closed_port_origin().await;
        let err = TcpConnector::new()
            .connect(&origin)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        // Not wrapped twice by the blanket Connector impl.
        assert_eq!(err.to_string().matches("connect to").count(), 1, "{err}");
        assert!(err.to_string().contains(&port.to_string()));
    }
}
