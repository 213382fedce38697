//! A copy of a request kept so it can be sent again after a failure that
//! may have happened before the origin processed it.
//!
//! Only requests that are safe to send twice are kept: idempotent methods
//! (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or any method
//! carrying an `Idempotency-Key` header, and only when the body is already
//! in memory (empty, `Full<Bytes>`, `String`): a streamed body cannot be
//! replayed, so such a request is never retried.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};

use crate::transport::RequestBody;

pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

/// Whether sending `request` twice has the effect of sending it once.
pub(crate) fn is_idempotent<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || request.headers().contains_key("idempotency-key")
}

impl Replay {
    /// Copies `request` if it may be replayed; its body is left as it was.
    pub(crate) fn capture<B>(request: &mut Request<B>) -> Option<Replay>
    where
        B: Body<Data = Bytes> + 'static,
    {
        if !is_idempotent(request) {
            return None;
        }
        let body = in_memory_bytes(request.body_mut())?;
        Some(Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body,
        })
    }

    pub(crate) fn request(&self) -> Request<RequestBody> {
        let mut request = Request::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }
}

/// The body's bytes if they are all in memory already, leaving the body
/// able to send them (a `Full` is refilled with a cheap `Bytes` clone).
fn in_memory_bytes<B: Body<Data = Bytes> + 'static>(body: &mut B) -> Option<Bytes> {
    if body.is_end_stream() {
        return Some(Bytes::new());
    }
    let any = body as &mut dyn Any;
    if let Some(s) = any.downcast_mut::<String>() {
        return Some(Bytes::copy_from_slice(s.as_bytes()));
    }
    if let Some(full) = any.downcast_mut::<Full<Bytes>>() {
        // A Full yields its one frame at once; take it and put it back.
        let mut cx = Context::from_waker(Waker::noop());
        let data = match Pin::new(&mut *full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        *full = Full::new(data.clone());
        return Some(data);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    #[test]
    fn only_idempotent_or_keyed_requests_are_kept() {
        let mut get = Request::get("http://a/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert!(Replay::capture(&mut get).is_some());
        let mut post = Request::post("http://a/")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        assert!(Replay::capture(&mut post).is_none());
        let mut keyed = Request::post("http://a/")
            .header("Idempotency-Key", "k1")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let replay = Replay::capture(&mut keyed).expect("keyed POST is replayable");
        assert_eq!(replay.body, "x");
    }

    #[tokio::test]
    async fn a_full_body_is_copied_and_still_sent() {
        let mut put = Request::put("http://a/")
            .body(Full::new(Bytes::from("payload")))
            .unwrap();
        let replay = Replay::capture(&mut put).unwrap();
        let original = put.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            original, "payload",
            "the original body still carries its bytes"
        );
        let again = replay
            .request()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(again, "payload");
        assert_eq!(replay.request().method(), Method::PUT);
    }

    /// A body whose bytes arrive later: not in memory, so not replayable.
    struct Streamed;

    impl Body for Streamed {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_streamed_body_is_never_replayed() {
        let mut get = Request::get("http://a/").body(Streamed).unwrap();
        assert!(Replay::capture(&mut get).is_none());
    }
}
