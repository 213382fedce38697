//! [`ResponseFuture`]: what [`PoolService::call`](super::PoolService) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::transport::Transport;
use crate::{Error, ResponseBody};

/// The boxed request future inside a [`ResponseFuture`].
type Inner<T> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<T>>, Error>> + Send>>;

/// The response to one request sent through a [`PoolService`](super::PoolService).
///
/// It exists so the service's `Future` type has a name that middleware and
/// users can write down (tower needs `Service::Future` to be a type). Inside
/// is the pool's request future, boxed once per request: that future is an
/// `async fn`'s anonymous type and its size depends on the request body
/// type, so it cannot be named or stored inline. Dropping it cancels the
/// request: a request still queued for a connection leaves the queue.
///
/// ```no_run
/// use edgepool::service::{PoolService, ResponseFuture};
/// use edgepool::transport::http1::Http1;
/// use tower_service::Service;
///
/// # async fn f(pool: edgepool::Pool<Http1>) -> Result<(), edgepool::Error> {
/// let mut service = PoolService::new(pool);
/// std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
/// let future: ResponseFuture<Http1> =
///     service.call(http::Request::get("http://127.0.0.1:8080/").body(String::new()).unwrap());
/// let response = future.await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<T: Transport> {
    inner: Inner<T>,
}

impl<T: Transport> ResponseFuture<T> {
    pub(super) fn new(
        future: impl Future<Output = Result<Response<ResponseBody<T>>, Error>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl<T: Transport> Future for ResponseFuture<T> {
    type Output = Result<Response<ResponseBody<T>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T: Transport> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
