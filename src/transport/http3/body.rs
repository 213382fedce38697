//! Bodies on an HTTP/3 request stream: the response body the pool hands
//! out, and the task that streams a request body up.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::client::RequestStream;
use h3::error::Code;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::watch::{CountedRecv, CountedSend};
use crate::transport::RequestBody;
use crate::{BoxError, Origin};

/// The receive half of a request stream.
pub(super) type RecvHalf = RequestStream<CountedRecv, Bytes>;
/// The send half of a request stream.
pub(super) type SendHalf = RequestStream<CountedSend, Bytes>;

/// One exchange's hold on its request body upload: dropping it (the
/// response body ended or was dropped, or `send` was cancelled) stops a
/// request body still being uploaded, because once nobody waits for the
/// response the rest of the upload is waste.
pub(super) struct StreamTicket {
    origin: Origin,
    /// Dropped with the ticket, which wakes the upload task to reset the
    /// stream if it is still sending.
    _stop_upload: Option<oneshot::Sender<()>>,
}

impl StreamTicket {
    pub(super) fn new(origin: Origin) -> Self {
        StreamTicket {
            origin,
            _stop_upload: None,
        }
    }

    /// Streams `body` up on its own task, so the response can arrive (and be
    /// read) while the upload goes on, as a server answering early expects.
    pub(super) fn spawn_upload(&mut self, mut send: SendHalf, body: RequestBody) {
        let (stop, stopped) = oneshot::channel();
        self._stop_upload = Some(stop);
        let origin = self.origin.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                result = upload(&mut send, body) => Some(result),
                _ = stopped => None,
            };
            match outcome {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    tracing::debug!(%origin, %error, "HTTP/3 request body failed; resetting the stream");
                    send.stop_stream(Code::H3_REQUEST_CANCELLED);
                }
                None => send.stop_stream(Code::H3_REQUEST_CANCELLED),
            }
        });
    }
}

/// Sends every frame of `body`, then ends the stream (trailers end it too).
async fn upload(send: &mut SendHalf, mut body: RequestBody) -> Result<(), BoxError> {
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    return Ok(());
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// The body of a response on an HTTP/3 connection: the receive half of its
/// request stream. Data frames are handed out as they arrive, then the
/// trailers, if any.
///
/// Dropping it before its end stops the stream (quinn sends STOP_SENDING);
/// the connection carries on with its other streams.
pub struct Http3Body {
    recv: RecvHalf,
    phase: Phase,
    _ticket: StreamTicket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

impl Http3Body {
    pub(super) fn new(recv: RecvHalf, ticket: StreamTicket) -> Self {
        Http3Body {
            recv,
            phase: Phase::Data,
            _ticket: ticket,
        }
    }
}

impl Body for Http3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Data => match ready!(this.recv.poll_recv_data(cx)) {
                    Ok(Some(mut chunk)) => {
                        // Zero-copy when h3 hands out `Bytes`, as with quinn.
                        let data = chunk.copy_to_bytes(chunk.remaining());
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Ok(None) => this.phase = Phase::Trailers,
                    Err(error) => {
                        this.phase = Phase::Done;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                },
                Phase::Trailers => {
                    let polled = ready!(this.recv.poll_recv_trailers(cx));
                    this.phase = Phase::Done;
                    return Poll::Ready(match polled {
                        Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                        Ok(None) => None,
                        Err(error) => Some(Err(error.into())),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

impl fmt::Debug for Http3Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http3Body")
            .field("phase", &self.phase)
            .finish()
    }
}
