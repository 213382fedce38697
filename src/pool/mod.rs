//! [`Pool`]: the async driver around the sans-IO core, keyed by [`Origin`].

mod body;
mod builder;
mod reaper;
mod replay;
mod shard;
mod stats;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;

pub use body::ResponseBody;
pub use builder::PoolBuilder;
#[cfg(feature = "tower")]
pub(crate) use builder::validate_core;
pub use shard::Lease;
pub use stats::{OriginStats, PoolStats};

use crate::core::{CoreConfig, Stats};
use crate::recycle::KeepAlive;
use crate::transport::{ConnState, Connection, Protocol, RequestBody, SendError, Transport};
use crate::{BoxError, Error, Origin};
use replay::Replay;
use shard::Settings;
use shard::Shard;

/// Origin → shard. `Origin` hashes to its precomputed keyed hash, so the map
/// passes that through instead of hashing it again.
pub(crate) type ShardMap<T> = HashMap<Origin, Arc<Shard<T>>, BuildHasherDefault<PrehashedOrigin>>;

/// A hasher that takes the one `u64` an [`Origin`] writes as the hash.
#[derive(Default)]
pub(crate) struct PrehashedOrigin(u64);

impl Hasher for PrehashedOrigin {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than an Origin is hashed with it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How often a request whose connection turned out closed before anything
/// was sent is moved to another connection before giving up.
const MAX_UNSENT_RETRIES: usize = 3;

/// A pool of warm connections to many origins.
///
/// Cheap to clone (one reference count); all clones share the connections.
/// A background task closes idle connections; it stops when the last clone
/// is dropped.
///
/// ```no_run
/// use edgepool::{Pool, transport::http1::Http1};
/// # async fn f() -> Result<(), edgepool::Error> {
/// let pool = Pool::builder(Http1::new()).max_connections_per_origin(64).build()?;
/// let response = pool
///     .request(http::Request::get("http://127.0.0.1:8080/").body(String::new()).unwrap())
///     .await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
pub struct Pool<T: Transport> {
    inner: Arc<PoolInner<T>>,
}

impl<T: Transport> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct PoolInner<T: Transport> {
    settings: Arc<Settings<T>>,
    core_config: CoreConfig,
    checkout_timeout: Duration,
    request_timeout: Option<Duration>,
    retry_idempotent: bool,
    ping_interval: Option<Duration>,
    maintenance_interval: Duration,
    max_origins: usize,
    shards: RwLock<ShardMap<T>>,
    /// Counters of origins whose idle entries were removed, so totals never
    /// go backwards.
    retired: Mutex<Stats>,
    shut_down: std::sync::atomic::AtomicBool,
    /// Dropped with the pool; the reaper task stops when it sees that.
    _reaper_stop: tokio::sync::oneshot::Sender<()>,
}

impl<T: Transport> Pool<T> {
    /// Starts configuring a pool over `transport`.
    pub fn builder(transport: T) -> PoolBuilder<T> {
        PoolBuilder::new(transport)
    }

    /// Sends a request to the origin named by its absolute URI, on a pooled
    /// connection, and returns the response. The connection's slot is held
    /// until the response body has been read to its end or dropped.
    pub async fn request<B>(&self, request: Request<B>) -> Result<Response<ResponseBody<T>>, Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let origin = Origin::from_uri(request.uri())?;
        self.send_to(origin, request).await
    }

    /// Sends a request to `origin`, which may carry its own SNI or TLS
    /// configuration. The request URI may be origin-form (`/path?q`), as a
    /// proxy receives it; an absolute URI must name the same scheme, host and
    /// port as `origin`, so a request is never carried on a connection
    /// verified for another name.
    pub async fn request_to<B>(
        &self,
        origin: &Origin,
        mut request: Request<B>,
    ) -> Result<Response<ResponseBody<T>>, Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let uri = request.uri();
        if uri.scheme().is_some() || uri.authority().is_some() {
            let named = Origin::from_uri(uri)?;
            if (named.scheme(), named.host(), named.port())
                != (origin.scheme(), origin.host(), origin.port())
            {
                return Err(Error::InvalidOrigin {
                    uri: uri.to_string(),
                    reason: "request URI names another origin than the one it is sent to",
                });
            }
        } else {
            *request.uri_mut() = absolute_uri(origin, uri)?;
        }
        self.send_to(origin.clone(), request).await
    }

    async fn send_to<B>(
        &self,
        origin: Origin,
        request: Request<B>,
    ) -> Result<Response<ResponseBody<T>>, Error>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let shard = self.shard(&origin)?;
        let mut deadline = shard::Deadline::after(self.inner.checkout_timeout);
        let mut request = request;
        let replay = if self.inner.retry_idempotent {
            Replay::capture(&mut request)
        } else {
            None
        };
        let mut request = request.map(|b| RequestBody::new(b.map_err(Into::into)));
        let mut unsent_retries = 0;
        let mut retried = false;
        loop {
            let lease = if retried {
                shard.checkout_fresh(&mut deadline).await?
            } else {
                shard.checkout(&mut deadline).await?
            };
            let conn = lease.connection_arc();
            let grant = lease.grant();
            let sent = match self.inner.request_timeout {
                None => conn.send(request).await,
                Some(timeout) => match tokio::time::timeout(timeout, conn.send(request)).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        // No answer: a blackholed or stuck peer. The request
                        // may have been processed, so it is not retried.
                        lease.discard();
                        return Err(Error::RequestTimeout {
                            origin: origin.to_string(),
                            timeout,
                        });
                    }
                },
            };
            match sent {
                Ok(response) => {
                    if grant.reused {
                        tracing::trace!(origin = %origin, conn = %grant.conn, idle_ms = grant.idle_for.as_millis() as u64, "reused connection");
                    }
                    if conn.protocol() == Protocol::Http1 {
                        if let Some(hint) = KeepAlive::from_headers(response.headers()) {
                            shard.keep_alive_hint(grant.conn, hint);
                        }
                    }
                    let (mut parts, body) = response.into_parts();
                    parts.extensions.insert(lease.info());
                    return Ok(Response::from_parts(parts, ResponseBody::new(body, lease)));
                }
                Err(SendError {
                    unsent: Some(unsent),
                    error,
                }) if unsent_retries < MAX_UNSENT_RETRIES => {
                    // The connection was closed before the request left: it
                    // is safe to send on another one, whatever the method.
                    tracing::debug!(origin = %origin, conn = %grant.conn, %error, "request not sent (connection closed, stream refused or above GOAWAY); retrying");
                    // release() asks the connection: a closed HTTP/1.1 one is
                    // forgotten, a refused HTTP/2 stream leaves it serving.
                    lease.release();
                    shard.record_retry();
                    unsent_retries += 1;
                    request = unsent;
                }
                Err(SendError { error, .. }) => {
                    tracing::debug!(origin = %origin, conn = %grant.conn, %error, "request failed");
                    // A multiplexed connection survives one failed stream.
                    if conn.reusable_after_abandoned_body() && conn.state() == ConnState::Ready {
                        lease.release_failed();
                    } else {
                        lease.discard();
                    }
                    match &replay {
                        // Failed on a reused connection before any byte of
                        // a response: most likely the origin closed it just
                        // as we sent (hyper #2136). The request is safe to
                        // send twice and its body is in memory, so it goes
                        // once more, on a fresh connection.
                        Some(replay) if grant.reused && !retried => {
                            tracing::debug!(origin = %origin, conn = %grant.conn, "retrying an idempotent request on a fresh connection");
                            shard.record_retry();
                            retried = true;
                            request = replay.request();
                        }
                        _ => return Err(error),
                    }
                }
            }
        }
    }

    /// Borrows one slot on a connection to `origin` without sending anything:
    /// for protocols or request flows the pool does not drive itself. Waits
    /// like a request would (FIFO, up to the checkout timeout).
    ///
    /// ```no_run
    /// # async fn f(pool: edgepool::Pool<edgepool::transport::http1::Http1>) -> Result<(), edgepool::Error> {
    /// let origin = edgepool::Origin::parse("http://127.0.0.1:8080")?;
    /// let lease = pool.checkout(&origin).await?;
    /// println!("connection {} reused: {}", lease.id(), lease.reused());
    /// lease.release();
    /// # Ok(()) }
    /// ```
    pub async fn checkout(&self, origin: &Origin) -> Result<Lease<T>, Error> {
        let shard = self.shard(origin)?;
        shard
            .checkout(&mut shard::Deadline::after(self.inner.checkout_timeout))
            .await
    }

    /// Backpressure for `origin`: Ready while a request to it would not be
    /// refused with [`Error::PendingOverflow`]; Pending (and woken when the
    /// queue has room) while its pending queue is full. Errors once the pool
    /// is shut down.
    ///
    /// Race window: readiness is a moment's truth. Between Ready and the
    /// request, other tasks may fill the queue; the request then fails with
    /// `PendingOverflow` rather than waiting, exactly as without this check.
    pub fn poll_ready_for(
        &self,
        origin: &Origin,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        match self.shard(origin) {
            Ok(shard) => shard.poll_room(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    /// The shard of an origin, created on first use.
    fn shard(&self, origin: &Origin) -> Result<Arc<Shard<T>>, Error> {
        if let Some(shard) = read(&self.inner.shards).get(origin) {
            return Ok(Arc::clone(shard));
        }
        if self
            .inner
            .shut_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Error::Shutdown {
                reason: "the pool is shut down",
            });
        }
        let mut shards = write(&self.inner.shards);
        if let Some(shard) = shards.get(origin) {
            return Ok(Arc::clone(shard));
        }
        if shards.len() >= self.inner.max_origins {
            self.evict_idle_origins(&mut shards);
            if shards.len() >= self.inner.max_origins {
                return Err(Error::TooManyOrigins {
                    max: self.inner.max_origins,
                });
            }
        }
        let mut config = self.inner.core_config.clone();
        // Each origin's jitter draws from its own sequence.
        config.seed ^= origin_seed(origin);
        let shard = Arc::new(Shard::new(
            origin.clone(),
            config,
            Arc::clone(&self.inner.settings),
        )?);
        shards.insert(origin.clone(), Arc::clone(&shard));
        Ok(shard)
    }

    /// Makes room in the origin map: drops the least recently used tenth of
    /// the evictable origins (no request holding or waiting, no connect in
    /// flight, not warmed explicitly), closing their idle connections.
    /// Batched, so a stream of new origins costs O(log n) each, amortized.
    /// Called under the map's write lock; takes each shard's lock inside it
    /// (the only place the two nest, always in this order).
    // Origin holds a TlsConfig whose session cache mutates, but its Hash and
    // Eq read only the key fields (scheme, host, port, SNI, config id),
    // which never change: the map's invariants hold.
    #[allow(clippy::mutable_key_type)]
    fn evict_idle_origins(&self, shards: &mut ShardMap<T>) {
        let mut candidates: Vec<(Option<std::time::Instant>, Origin)> = shards
            .iter()
            .filter(|(_, shard)| Arc::strong_count(shard) == 1)
            .filter_map(|(origin, shard)| shard.evictable_since().map(|t| (t, origin.clone())))
            .collect();
        candidates.sort_by_key(|(t, _)| *t);
        let batch = (self.inner.max_origins / 10).max(1);
        for (_, origin) in candidates.into_iter().take(batch) {
            if let Some(shard) = shards.get(&origin) {
                if let Some(stats) = shard.evict() {
                    lock(&self.inner.retired).add(&stats);
                    shards.remove(&origin);
                }
            }
        }
    }

    /// Whether [`shutdown`](Pool::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner
            .shut_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A snapshot of the counters, per origin and in total.
    pub fn stats(&self) -> PoolStats {
        let mut total = *lock(&self.inner.retired);
        let origins: Vec<OriginStats> = read(&self.inner.shards)
            .values()
            .map(|shard| OriginStats {
                origin: shard.origin.clone(),
                stats: shard.stats(),
            })
            .collect();
        for o in &origins {
            total.add(&o.stats);
        }
        PoolStats { total, origins }
    }

    /// Stops lending: waiting requests fail, idle connections close, busy
    /// ones close when their response ends, and new requests are refused
    /// with [`Error::Shutdown`].
    pub fn shutdown(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::Release);
        let shards: Vec<Arc<Shard<T>>> = read(&self.inner.shards).values().cloned().collect();
        for shard in shards {
            shard.shutdown();
        }
    }

    /// Opens connections to `origin` until `connections` are ready, and keeps
    /// at least that many warm from now on (the sizing policy may keep
    /// more). Returns once they are ready, or with the connect error if one
    /// fails: a warming failure is reported, not swallowed.
    ///
    /// ```no_run
    /// # async fn f(pool: edgepool::Pool<edgepool::transport::http1::Http1>) -> Result<(), edgepool::Error> {
    /// let origin = edgepool::Origin::parse("https://api.example.com")?;
    /// pool.warm(&origin, 8).await?; // the first 8 requests pay no handshake
    /// # Ok(()) }
    /// ```
    pub async fn warm(&self, origin: &Origin, connections: usize) -> Result<(), Error> {
        let shard = self.shard(origin)?;
        shard.warm(connections).await
    }

    /// Shuts down gracefully: stops lending (as [`shutdown`](Pool::shutdown)),
    /// lets requests in flight finish for up to `grace`, then closes every
    /// connection, failing what is still in flight. Returns true if
    /// everything finished within `grace`.
    ///
    /// Connect attempts in flight are closed when they complete; their
    /// connections never carry a request.
    pub async fn shutdown_gracefully(&self, grace: Duration) -> bool {
        self.shutdown();
        let shards: Vec<Arc<Shard<T>>> = read(&self.inner.shards).values().cloned().collect();
        let all_drained = async {
            for shard in &shards {
                shard.drained().await;
            }
        };
        let finished = tokio::time::timeout(grace, all_drained).await.is_ok();
        if !finished {
            for shard in &shards {
                shard.force_close();
            }
        }
        finished
    }

    /// The transport this pool opens connections with.
    pub fn transport(&self) -> &T {
        &self.inner.settings.transport
    }
}

impl<T: Transport> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origins", &read(&self.inner.shards).len())
            .finish()
    }
}

fn origin_seed(origin: &Origin) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(origin)
}

fn absolute_uri(origin: &Origin, uri: &Uri) -> Result<Uri, Error> {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme(origin.scheme().as_str())
        .authority(origin.authority())
        .path_and_query(path)
        .build()
        .map_err(|_| Error::InvalidOrigin {
            uri: uri.to_string(),
            reason: "cannot combine this path with the origin",
        })
}

// Poisoned locks are taken over: every structure behind them stays
// consistent between statements (see Shard::lock).
fn read<V>(l: &RwLock<V>) -> std::sync::RwLockReadGuard<'_, V> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<V>(l: &RwLock<V>) -> std::sync::RwLockWriteGuard<'_, V> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<V>(l: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_uri_is_made_absolute_for_the_origin() {
        let o = Origin::parse("https://a.example:8443").unwrap();
        let uri = absolute_uri(&o, &"/p?q=1".parse().unwrap()).unwrap();
        assert_eq!(uri, "https://a.example:8443/p?q=1");
    }
}
