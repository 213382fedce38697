//! A pass-through layer between h3 and h3-quinn that lets the connection see
//! two things h3 0.0.8 keeps to itself: the server's GOAWAY, and a request
//! stream that cannot be opened because the peer's stream limit is reached.
//!
//! Why a layer: h3 handles GOAWAY inside its connection driver and records
//! it only in a crate-private "closing" flag (its `ConnectionState` trait is
//! public only behind an opt-in "breaking changes" feature). A pool must stop
//! lending a connection the moment the server says GOAWAY, not when the next
//! request on it fails. So [`WatchedRecv`] reads the bytes h3 reads, without
//! changing or delaying them, and parses just enough of the peer's control
//! stream (RFC 9114 §6.2.1, §7.2.6) to spot GOAWAY frames.
//!
//! Likewise quinn 0.11 has no getter for the peer's `MAX_STREAMS`;
//! [`WatchedOpener`] notices when opening a request stream has to wait for
//! stream credit, which is the one moment the limit becomes visible, and
//! counts the request streams open ([`CountedBidi`]) so the limit can be
//! read off at that moment.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId};

/// What the layer reports to the connection that owns it.
pub(super) trait Observer: Send + Sync + 'static {
    /// The peer sent GOAWAY: it processes no request on a stream at or above
    /// `stream_id` (a later GOAWAY may lower it).
    fn goaway(&self, stream_id: u64);
    /// Opening a request stream is waiting for the peer's stream credit. May
    /// be called more than once for the same open.
    fn open_blocked(&self);
    /// A request stream was opened.
    fn stream_opened(&self);
    /// A request stream's last handle (of both halves) was dropped.
    fn stream_closed(&self);
}

/// The h3 client's QUIC connection: h3-quinn's, watched.
pub(super) struct Watched {
    inner: h3_quinn::Connection,
    observer: Arc<dyn Observer>,
}

impl Watched {
    pub(super) fn new(conn: quinn::Connection, observer: Arc<dyn Observer>) -> Self {
        Watched {
            inner: h3_quinn::Connection::new(conn),
            observer,
        }
    }
}

type Inner = h3_quinn::Connection;

impl quic::Connection<Bytes> for Watched {
    type RecvStream = WatchedRecv;
    type OpenStreams = WatchedOpener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<WatchedRecv, ConnectionErrorIncoming>> {
        let inner = ready!(<Inner as quic::Connection<Bytes>>::poll_accept_recv(
            &mut self.inner,
            cx
        ))?;
        Poll::Ready(Ok(WatchedRecv {
            inner,
            parser: Some(ControlParser::default()),
            observer: Arc::clone(&self.observer),
        }))
    }

    // A server never opens bidirectional streams to an HTTP/3 client; h3
    // treats one as a connection error. Passed through for h3 to see.
    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountedBidi, ConnectionErrorIncoming>> {
        let inner = ready!(<Inner as quic::Connection<Bytes>>::poll_accept_bidi(
            &mut self.inner,
            cx
        ))?;
        Poll::Ready(Ok(CountedBidi::new(inner, &self.observer)))
    }

    fn opener(&self) -> WatchedOpener {
        WatchedOpener {
            inner: <Inner as quic::Connection<Bytes>>::opener(&self.inner),
            observer: Arc::clone(&self.observer),
        }
    }
}

impl quic::OpenStreams<Bytes> for Watched {
    type BidiStream = CountedBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    // h3 opens its own unidirectional streams (control, QPACK) through the
    // connection itself; request streams go through the opener below.
    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountedBidi, StreamErrorIncoming>> {
        let inner = ready!(<Inner as quic::OpenStreams<Bytes>>::poll_open_bidi(
            &mut self.inner,
            cx
        ))?;
        Poll::Ready(Ok(CountedBidi::new(inner, &self.observer)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        <Inner as quic::OpenStreams<Bytes>>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <Inner as quic::OpenStreams<Bytes>>::close(&mut self.inner, code, reason)
    }
}

/// Opens request streams for h3's `SendRequest`, reporting when an open
/// has to wait for the peer's stream credit.
pub(super) struct WatchedOpener {
    inner: h3_quinn::OpenStreams,
    observer: Arc<dyn Observer>,
}

impl Clone for WatchedOpener {
    fn clone(&self) -> Self {
        WatchedOpener {
            inner: self.inner.clone(),
            observer: Arc::clone(&self.observer),
        }
    }
}

impl quic::OpenStreams<Bytes> for WatchedOpener {
    type BidiStream = CountedBidi;
    type SendStream = h3_quinn::SendStream<Bytes>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountedBidi, StreamErrorIncoming>> {
        let polled = <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::poll_open_bidi(
            &mut self.inner,
            cx,
        );
        match polled {
            // quinn's open only waits for stream credit (an error is
            // returned, not awaited): Pending means the peer's limit is reached.
            Poll::Pending => {
                self.observer.open_blocked();
                Poll::Pending
            }
            Poll::Ready(Ok(inner)) => Poll::Ready(Ok(CountedBidi::new(inner, &self.observer))),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::poll_open_send(&mut self.inner, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <h3_quinn::OpenStreams as quic::OpenStreams<Bytes>>::close(&mut self.inner, code, reason)
    }
}

/// A unidirectional stream from the peer. Until its type says it is not the
/// control stream, its bytes are parsed (and passed on unchanged).
pub(super) struct WatchedRecv {
    inner: h3_quinn::RecvStream,
    /// `None` once the stream turned out not to be a control stream, or to
    /// be malformed (h3 itself closes the connection for the latter).
    parser: Option<ControlParser>,
    observer: Arc<dyn Observer>,
}

impl quic::RecvStream for WatchedRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = ready!(self.inner.poll_data(cx));
        if let (Ok(Some(chunk)), Some(parser)) = (&polled, self.parser.as_mut()) {
            let observer = &self.observer;
            if !parser.feed(chunk, &mut |id| observer.goaway(id)) {
                self.parser = None;
            }
        }
        Poll::Ready(polled)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

/// Counts one request stream open until both its halves are dropped (h3
/// drops the stream itself if sending the request head fails).
///
/// Race window: the count rises just after quinn hands out the stream, so a
/// concurrent open that finds the limit reached in between sees one stream
/// too few. On a current-thread runtime the window does not exist; on a
/// multi-threaded one it is a few instructions wide, and its only effect is
/// a limit learned one too low (see `open_blocked` in `conn.rs`).
struct Count {
    observer: Arc<dyn Observer>,
}

impl Count {
    fn new(observer: Arc<dyn Observer>) -> Self {
        observer.stream_opened();
        Count { observer }
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.observer.stream_closed();
    }
}

/// A request stream, counted while open.
pub(super) struct CountedBidi {
    inner: h3_quinn::BidiStream<Bytes>,
    count: Arc<Count>,
}

/// The send half of a counted request stream.
pub(super) struct CountedSend {
    inner: h3_quinn::SendStream<Bytes>,
    _count: Arc<Count>,
}

/// The receive half of a counted request stream.
pub(super) struct CountedRecv {
    inner: h3_quinn::RecvStream,
    _count: Arc<Count>,
}

impl CountedBidi {
    fn new(inner: h3_quinn::BidiStream<Bytes>, observer: &Arc<dyn Observer>) -> Self {
        CountedBidi {
            inner,
            count: Arc::new(Count::new(Arc::clone(observer))),
        }
    }
}

impl quic::BidiStream<Bytes> for CountedBidi {
    type SendStream = CountedSend;
    type RecvStream = CountedRecv;

    fn split(self) -> (CountedSend, CountedRecv) {
        let (send, recv) = self.inner.split();
        (
            CountedSend {
                inner: send,
                _count: Arc::clone(&self.count),
            },
            CountedRecv {
                inner: recv,
                _count: self.count,
            },
        )
    }
}

/// Forwards `quic::SendStream` to `$field`.
macro_rules! forward_send {
    ($ty:ty, $field:ident) => {
        impl quic::SendStream<Bytes> for $ty {
            fn poll_ready(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<(), StreamErrorIncoming>> {
                self.$field.poll_ready(cx)
            }

            fn send_data<T: Into<quic::WriteBuf<Bytes>>>(
                &mut self,
                data: T,
            ) -> Result<(), StreamErrorIncoming> {
                self.$field.send_data(data)
            }

            fn poll_finish(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<(), StreamErrorIncoming>> {
                self.$field.poll_finish(cx)
            }

            fn reset(&mut self, reset_code: u64) {
                self.$field.reset(reset_code)
            }

            fn send_id(&self) -> StreamId {
                self.$field.send_id()
            }
        }
    };
}

/// Forwards `quic::RecvStream` to `$field`.
macro_rules! forward_recv {
    ($ty:ty, $field:ident) => {
        impl quic::RecvStream for $ty {
            type Buf = Bytes;

            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
                self.$field.poll_data(cx)
            }

            fn stop_sending(&mut self, error_code: u64) {
                self.$field.stop_sending(error_code)
            }

            fn recv_id(&self) -> StreamId {
                self.$field.recv_id()
            }
        }
    };
}

forward_send!(CountedBidi, inner);
forward_recv!(CountedBidi, inner);
forward_send!(CountedSend, inner);
forward_recv!(CountedRecv, inner);

/// HTTP/3 control stream type (RFC 9114 §6.2.1).
const CONTROL_STREAM: u64 = 0x00;
/// HTTP/3 GOAWAY frame type (RFC 9114 §7.2.6).
const GOAWAY_FRAME: u64 = 0x07;

/// Parses a peer's unidirectional stream far enough to find GOAWAY frames:
/// stream type, then frames of (type, length, payload). Only a GOAWAY's
/// payload (one varint, at most 8 bytes) is ever buffered; every other frame
/// is skipped by length, so memory stays constant whatever the peer sends.
#[derive(Debug, Default)]
pub(super) struct ControlParser {
    step: Step,
    varint: VarInt,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    #[default]
    StreamType,
    FrameType,
    FrameLength {
        frame_type: u64,
    },
    Skip {
        remaining: u64,
    },
    GoAway {
        remaining: u64,
    },
}

impl ControlParser {
    /// Feeds the next chunk. Calls `on_goaway` for each complete GOAWAY.
    /// Returns false when there is nothing more to watch: the stream is not
    /// a control stream, or it is malformed.
    pub(super) fn feed(&mut self, mut data: &[u8], on_goaway: &mut dyn FnMut(u64)) -> bool {
        while !data.is_empty() {
            match self.step {
                Step::Skip { remaining } => {
                    let n = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
                    data = &data[n..];
                    let remaining = remaining - n as u64;
                    self.step = if remaining == 0 {
                        Step::FrameType
                    } else {
                        Step::Skip { remaining }
                    };
                }
                Step::GoAway { remaining } => {
                    let byte = data[0];
                    data = &data[1..];
                    let remaining = remaining - 1;
                    match (self.varint.push(byte), remaining) {
                        (Some(id), 0) => {
                            on_goaway(id);
                            self.step = Step::FrameType;
                        }
                        (None, r) if r > 0 => self.step = Step::GoAway { remaining: r },
                        // The varint and the frame length disagree.
                        _ => return false,
                    }
                }
                step => {
                    let byte = data[0];
                    data = &data[1..];
                    let Some(value) = self.varint.push(byte) else {
                        continue;
                    };
                    self.step = match step {
                        Step::StreamType if value == CONTROL_STREAM => Step::FrameType,
                        Step::StreamType => return false,
                        Step::FrameType => Step::FrameLength { frame_type: value },
                        Step::FrameLength { frame_type } if frame_type == GOAWAY_FRAME => {
                            if value == 0 || value > 8 {
                                return false;
                            }
                            Step::GoAway { remaining: value }
                        }
                        Step::FrameLength { .. } if value == 0 => Step::FrameType,
                        Step::FrameLength { .. } => Step::Skip { remaining: value },
                        Step::Skip { .. } | Step::GoAway { .. } => return false,
                    };
                }
            }
        }
        true
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) read one byte at a time.
#[derive(Debug, Default)]
struct VarInt {
    value: u64,
    have: u8,
    need: u8,
}

impl VarInt {
    /// Adds a byte; returns the value once complete.
    fn push(&mut self, byte: u8) -> Option<u64> {
        if self.have == 0 {
            self.need = 1 << (byte >> 6);
            self.value = u64::from(byte & 0x3f);
        } else {
            self.value = (self.value << 8) | u64::from(byte);
        }
        self.have += 1;
        if self.have == self.need {
            self.have = 0;
            Some(self.value)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=63 => vec![v as u8],
            64..=16383 => (0x4000 | v as u16).to_be_bytes().to_vec(),
            16384..=1_073_741_823 => (0x8000_0000 | v as u32).to_be_bytes().to_vec(),
            _ => (0xc000_0000_0000_0000 | v).to_be_bytes().to_vec(),
        }
    }

    fn frame(frame_type: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = varint(frame_type);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; returns the GOAWAY ids and
    /// whether the parser still watches.
    fn run(bytes: &[u8], chunk: usize) -> (Vec<u64>, bool) {
        let mut parser = ControlParser::default();
        let mut seen = Vec::new();
        let mut watching = true;
        for piece in bytes.chunks(chunk) {
            watching = parser.feed(piece, &mut |id| seen.push(id));
            if !watching {
                break;
            }
        }
        (seen, watching)
    }

    #[test]
    fn finds_goaway_after_settings_at_every_split() {
        let mut stream = varint(CONTROL_STREAM);
        // SETTINGS with two parameters, a reserved (grease) frame, GOAWAY(8),
        // then a lower GOAWAY(4) with a 4-byte varint id.
        stream.extend(frame(0x04, &[0x01, 0x40, 0x64, 0x06, 0x44, 0x00]));
        stream.extend(frame(0x21, &[0xaa; 300]));
        stream.extend(frame(GOAWAY_FRAME, &varint(8)));
        stream.extend(frame(GOAWAY_FRAME, &[0x80, 0x00, 0x00, 0x04]));
        for chunk in 1..=stream.len() {
            assert_eq!(
                run(&stream, chunk),
                (vec![8, 4], true),
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn large_goaway_ids_decode() {
        let mut stream = varint(CONTROL_STREAM);
        stream.extend(frame(GOAWAY_FRAME, &varint(4_000_000_000_000)));
        assert_eq!(run(&stream, 3), (vec![4_000_000_000_000], true));
    }

    #[test]
    fn other_stream_types_are_not_watched() {
        // A QPACK encoder stream (type 0x02) carrying bytes that would look
        // like a GOAWAY on a control stream.
        let mut stream = varint(0x02);
        stream.extend(frame(GOAWAY_FRAME, &varint(0)));
        assert_eq!(run(&stream, 1), (vec![], false));
        // A two-byte reserved stream type.
        assert_eq!(run(&varint(0x1f * 3 + 0x21), 1), (vec![], false));
    }

    #[test]
    fn malformed_goaway_stops_watching() {
        let mut stream = varint(CONTROL_STREAM);
        stream.extend(frame(GOAWAY_FRAME, &[]));
        assert_eq!(run(&stream, 1), (vec![], false));
        // Length 2 but a one-byte varint inside.
        let mut stream = varint(CONTROL_STREAM);
        stream.extend(frame(GOAWAY_FRAME, &[0x04, 0x00]));
        assert_eq!(run(&stream, 1), (vec![], false));
    }
}
