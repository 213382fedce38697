//! A TCP or TLS byte stream, so a transport drives one type whatever the scheme.
// Only the HTTP/1.1 transport uses this today; without it the items are idle.
#![cfg_attr(not(feature = "http1"), allow(dead_code))]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::{Error, Origin};

/// A connected stream, plaintext or TLS. An enum rather than a boxed trait
/// object so the hot read/write path stays a direct call.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// Plain TCP (`http://` origins).
    Plain(TcpStream),
    /// TLS over TCP (`https://` origins). Boxed: the TLS state is large and
    /// would otherwise make every plaintext stream as big.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens a TCP connection to the origin with Nagle's algorithm off, since
/// request heads are small writes that must not wait for an ACK. Connect
/// timeouts are the pool's job, not this function's.
pub async fn connect_tcp(origin: &Origin) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect((origin.connect_host(), origin.port()))
        .await
        .map_err(|e| Error::connect(origin, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::connect(origin, e))?;
    Ok(stream)
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_stream_round_trips_and_sets_nodelay() {
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
        let tcp = connect_tcp(&origin).await.expect("connect");
        assert!(tcp.nodelay().expect("nodelay"));
        let mut stream = MaybeTlsStream::Plain(tcp);
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        echo.await.expect("echo task");
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        // Bind then drop, so the port is very likely closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).expect("origin");
        let err = connect_tcp(&origin).await.expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&port.to_string()));
    }
}
