//! tower integration: the pool as a [`tower_service::Service`], and a
//! [`tower::Layer`] that builds a pool over a connector service.
//!
//! A proxy that already stacks tower middleware (timeouts, retries, load
//! shedding, concurrency limits) wants its upstream client to be one more
//! service in that stack. [`PoolService`] is that client: it sends each
//! `http::Request` on a pooled connection, and its `poll_ready` reports the
//! pool's backpressure so `load_shed`, `buffer` and friends can act on it.
//! [`PoolLayer`] goes one step further down: it turns a connector (any
//! `tower::Service<Origin>` returning a byte stream) into the pooled client,
//! so connection establishment can be wrapped in middleware too.
//!
//! # Readiness: per service, while pools are per origin
//!
//! tower asks a service whether it is ready *before* it sees the request,
//! but the pool's limits belong to the origin the request is for. There are
//! therefore two services:
//!
//! - [`PoolService::for_origin`] sends every request to one origin, so its
//!   `poll_ready` is exact: it is `Pending` while that origin's pending queue
//!   is full (the next request would be refused with
//!   [`Error::PendingOverflow`]) and the task is woken when the queue has room
//!   again. Requests may be origin-form (`/path?query`), as a proxy receives
//!   them. Use one per origin when backpressure matters, e.g. behind
//!   `tower::steer::Steer` or in a map keyed by origin.
//! - [`PoolService::new`] (and `From<Pool<T>>`) routes each request by its
//!   absolute URI. Its `poll_ready` cannot know the next request's origin, so
//!   it is `Ready` unless this service has found the pool shut down (see
//!   [`PoolService::new`] for the exact contract and why it does not guess).
//!   A full origin shows up as a fast [`Error::PendingOverflow`] from `call`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use edgepool::service::PoolService;
//! use edgepool::{Origin, Pool, transport::http1::Http1};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn f() -> Result<(), tower::BoxError> {
//! let pool = Pool::builder(Http1::new()).max_pending_per_origin(64).build()?;
//! let origin = Origin::parse("http://127.0.0.1:8080")?;
//! let client = ServiceBuilder::new()
//!     .load_shed() // refuse at once while the origin's queue is full
//!     .timeout(Duration::from_secs(10))
//!     .service(PoolService::for_origin(pool, origin));
//! let response = client
//!     .oneshot(http::Request::get("/health").body(String::new())?)
//!     .await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

mod future;
mod layer;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_service::Service;

pub use future::ResponseFuture;
pub use layer::{PoolLayer, PoolLayerBuilder, WithConnector};

use crate::transport::Transport;
use crate::{BoxError, Error, Origin, Pool, ResponseBody};

/// The pool as a tower service: `http::Request<B>` in,
/// `http::Response<ResponseBody<T>>` out, errors as [`Error`].
///
/// It exists so a pool can sit under tower middleware as a proxy's upstream
/// client, with the pool's backpressure visible to that middleware through
/// `poll_ready` (see the [module documentation](self) for how readiness maps
/// onto per-origin queues).
///
/// Cloning is cheap (one reference count) and every clone shares the pool,
/// its connections and its queues: clones do not reserve capacity for
/// themselves. The response body holds its connection's slot until it has
/// been read to its end or dropped, so read or drop bodies promptly.
///
/// Every tower middleware that needs a `Clone`, `Send + 'static` service
/// with a `Send` future and an `Into<BoxError>` error works on top of it:
///
/// - `load_shed`: sheds while `poll_ready` is `Pending`. Over
///   [`for_origin`](Self::for_origin) that is exactly "the origin's pending
///   queue is full"; over [`new`](Self::new) it never sheds (a full queue
///   fails the call with [`Error::PendingOverflow`] instead, just as fast).
/// - `buffer`: the worker stops taking requests while `poll_ready` is
///   `Pending` and fails them all with the error once it returns `Err`
///   (the pool was shut down).
/// - `timeout`: dropping the future cancels the request; a request still
///   queued for a connection leaves the queue, and one already sent gives up
///   its stream (an HTTP/1.1 connection is closed rather than reused
///   mid-exchange; an HTTP/2 stream is reset and its connection stays).
/// - `concurrency_limit`: bounds requests in flight through this service;
///   the permit is held until the response future completes, not until the
///   body has been read (the slot itself is held by the body).
/// - `retry`: works with a policy that can clone the request (`http::Request`
///   is not `Clone`, so the policy rebuilds it, e.g. from a `Full` body).
///   [`Error::kind`] tells a policy what is worth retrying.
///
/// ```
/// use edgepool::service::PoolService;
/// use edgepool::{Origin, Pool, transport::http1::Http1};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), edgepool::Error> {
/// let pool = Pool::builder(Http1::new()).build()?;
/// // Routes every request by its absolute URI.
/// let any: PoolService<Http1> = PoolService::from(pool.clone());
/// assert!(any.origin().is_none());
/// // Sends everything to one origin; exact backpressure.
/// let one = PoolService::for_origin(pool, Origin::parse("http://127.0.0.1:8080")?);
/// assert_eq!(one.origin().map(|o| o.port()), Some(8080));
/// # drop((any, one)); Ok(()) }
/// ```
pub struct PoolService<T: Transport> {
    shared: Arc<Shared<T>>,
}

/// What every clone of one service shares: the pool, where requests go, and
/// whether a call has found the pool shut down.
struct Shared<T: Transport> {
    pool: Pool<T>,
    origin: Option<Origin>,
    /// Set by a call that failed with [`Error::Shutdown`]; read by the
    /// URI-routed service's `poll_ready` (one atomic load, no lock).
    shut_down: AtomicBool,
}

impl<T: Transport> PoolService<T> {
    /// A service that routes each request by its absolute URI
    /// (`http://host:port/path`); an origin-form URI fails with
    /// [`Error::InvalidOrigin`].
    ///
    /// # `poll_ready` contract
    ///
    /// `Ready(Ok(()))`, unless a call through this service (or a clone of
    /// it) has failed with [`Error::Shutdown`]; from then on
    /// `Ready(Err(Error::Shutdown))`, which tells `buffer` and balancers the
    /// service is finished. It is never `Pending`.
    ///
    /// Why not guess the next request's origin (say, the last one's): a
    /// multi-origin proxy would then stall, shed or buffer requests for a
    /// healthy origin because another origin's queue is full, which is the
    /// head-of-line blocking that per-origin pools exist to prevent. Without
    /// a guess, an overloaded origin costs only its own requests: each fails
    /// at once with [`Error::PendingOverflow`] (kind
    /// [`PoolFull`](crate::ErrorKind::PoolFull)), the same outcome
    /// `load_shed` would have produced, but only for that origin. For
    /// readiness that waits on an origin, use [`for_origin`](Self::for_origin).
    ///
    /// Race window: shutdown is learnt from the first call it fails, so one
    /// call (per service family) fails with `Error::Shutdown` from `call`
    /// rather than from `poll_ready`. The pool refuses nothing it would have
    /// accepted either way.
    pub fn new(pool: Pool<T>) -> Self {
        Self::with_route(pool, None)
    }

    /// A service that sends every request to `origin`, which may carry its
    /// own SNI or TLS configuration. Requests may be origin-form
    /// (`/path?query`); an absolute URI must name this origin's scheme, host
    /// and port, or the call fails with [`Error::InvalidOrigin`].
    ///
    /// # `poll_ready` contract
    ///
    /// Exactly the origin's backpressure, from
    /// [`Pool::poll_ready_for`]: `Ready(Ok(()))` while a request would be
    /// accepted (a connection slot is free, a connection may be opened, or
    /// the pending queue has room), `Pending` while the pending queue is
    /// full, woken as soon as it has room, and `Ready(Err(Error::Shutdown))`
    /// once the pool is shut down.
    ///
    /// Ready means "will be accepted", not "a connection is free": an
    /// accepted request may still wait in the queue, up to the pool's
    /// checkout timeout.
    ///
    /// Race window: readiness is not a reservation. Between `Ready` and
    /// `call`, other clones or other users of the pool may fill the queue;
    /// the call then fails at once with [`Error::PendingOverflow`] rather
    /// than waiting. The window is as wide as the caller makes it, so call
    /// soon after `Ready`.
    pub fn for_origin(pool: Pool<T>, origin: Origin) -> Self {
        Self::with_route(pool, Some(origin))
    }

    fn with_route(pool: Pool<T>, origin: Option<Origin>) -> Self {
        PoolService {
            shared: Arc::new(Shared {
                pool,
                origin,
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// The same as [`Service::poll_ready`], callable without naming the
    /// request body type: the service accepts every body type, so a bare
    /// `service.poll_ready(cx)` through the trait would be ambiguous.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match &self.shared.origin {
            Some(origin) => self.shared.pool.poll_ready_for(origin, cx),
            None if self.shared.shut_down.load(Ordering::Relaxed) => {
                Poll::Ready(Err(Error::Shutdown {
                    reason: "the pool is shut down",
                }))
            }
            None => Poll::Ready(Ok(())),
        }
    }

    /// The pool this service sends on (for stats, or to shut it down).
    pub fn pool(&self) -> &Pool<T> {
        &self.shared.pool
    }

    /// The origin every request goes to, for a service made with
    /// [`for_origin`](Self::for_origin); `None` when requests are routed by
    /// their URI.
    pub fn origin(&self) -> Option<&Origin> {
        self.shared.origin.as_ref()
    }
}

impl<T: Transport> Clone for PoolService<T> {
    fn clone(&self) -> Self {
        PoolService {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Transport> From<Pool<T>> for PoolService<T> {
    /// The same as [`PoolService::new`]: routes each request by its URI.
    fn from(pool: Pool<T>) -> Self {
        PoolService::new(pool)
    }
}

impl<T: Transport> fmt::Debug for PoolService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("origin", &self.shared.origin)
            .field("pool", &self.shared.pool)
            .finish()
    }
}

impl<T, B> Service<Request<B>> for PoolService<T>
where
    T: Transport,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<T>>;
    type Error = Error;
    type Future = ResponseFuture<T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        PoolService::poll_ready(self, cx)
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture<T> {
        let shared = Arc::clone(&self.shared);
        ResponseFuture::new(async move {
            let result = match &shared.origin {
                Some(origin) => shared.pool.request_to(origin, request).await,
                None => shared.pool.request(request).await,
            };
            if let Err(Error::Shutdown { .. }) = &result {
                shared.shut_down.store(true, Ordering::Relaxed);
            }
            result
        })
    }
}
