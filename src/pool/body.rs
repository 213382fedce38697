//! [`ResponseBody`]: a response body that holds its connection's slot until
//! it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::shard::Lease;
use crate::transport::{ConnState, Connection, Transport};
use crate::{BoxError, Error};

pin_project! {
    /// The body of a pooled response. It holds the request's slot until the
    /// body has been read to its end (then the connection is reused) or is
    /// dropped (then an HTTP/1.1 connection is closed rather than reused with
    /// half a body still on the wire; a multiplexed one just loses the stream).
    pub struct ResponseBody<T: Transport> {
        #[pin]
        inner: <T::Conn as Connection>::ResponseBody,
        lease: Option<Lease<T>>,
    }
}

impl<T: Transport> ResponseBody<T> {
    pub(crate) fn new(inner: <T::Conn as Connection>::ResponseBody, lease: Lease<T>) -> Self {
        let mut body = ResponseBody {
            inner,
            lease: Some(lease),
        };
        // An empty body (204, Content-Length: 0) is finished already: free
        // the slot now rather than when the caller gets round to it.
        if body.inner.is_end_stream() {
            release(&mut body.lease);
        }
        body
    }
}

impl<T: Transport> Body for ResponseBody<T> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut this = self.as_mut().project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                release(this.lease);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let error: BoxError = e.into();
                let origin = this.lease.as_ref().map(|l| l.shard().origin.clone());
                if let Some(lease) = this.lease.take() {
                    // A reset stream spoils one stream, not a multiplexed
                    // connection; an HTTP/1.1 body error spoils the connection.
                    let conn = lease.connection();
                    if conn.reusable_after_abandoned_body() && conn.state() == ConnState::Ready {
                        lease.release_failed();
                    } else {
                        lease.discard();
                    }
                }
                Poll::Ready(Some(Err(match origin {
                    Some(origin) => Error::body(&origin, error),
                    None => Error::Body {
                        origin: String::new(),
                        source: std::sync::Arc::new(error),
                    },
                })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    release(this.lease);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body ended cleanly: the slot goes back.
fn release<T: Transport>(lease: &mut Option<Lease<T>>) {
    if let Some(lease) = lease.take() {
        lease.release();
    }
}

impl<T: Transport> std::fmt::Debug for ResponseBody<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("holds_slot", &self.lease.is_some())
            .finish()
    }
}
