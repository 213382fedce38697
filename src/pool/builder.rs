//! [`PoolBuilder`]: configuration, validated when the pool is built.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::shard::Settings;
use super::{Pool, PoolInner, reaper};
use crate::Error;
use crate::Origin;
use crate::core::{BackoffConfig, CoreConfig, RecycleConfig, Stats};

/// Validates a core configuration, naming a rejected field as the
/// [`PoolBuilder`] method that sets it (the core's own names are shorter),
/// so an error points at what the user wrote.
pub(crate) fn validate_core(core: &CoreConfig) -> Result<(), Error> {
    core.validate().map_err(|e| match e {
        Error::InvalidConfig {
            field,
            value,
            reason,
        } => Error::InvalidConfig {
            field: match field {
                "max_connections" => "max_connections_per_origin",
                "max_pending" => "max_pending_per_origin",
                other => other,
            },
            value,
            reason,
        },
        other => other,
    })
}
use crate::health::{DefaultHealthCheck, HealthCheck};
use crate::recycle::RetirePolicy;
use crate::sizing::{ByProtocol, DEFAULT_MAINTENANCE_INTERVAL, SizingPolicy};
use crate::transport::Transport;

/// Configures a [`Pool`]. Every limit applies per origin.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use edgepool::{Pool, transport::http1::Http1};
/// let err = Pool::builder(Http1::new()).max_connections_per_origin(0).build().unwrap_err();
/// assert_eq!(err.to_string(), "invalid configuration: max_connections_per_origin = 0: must be at least 1");
/// let pool = Pool::builder(Http1::new())
///     .max_connections_per_origin(32)
///     .max_pending_per_origin(256)
///     .checkout_timeout(Duration::from_millis(500))
///     .idle_timeout(Some(Duration::from_secs(30)))
///     .max_age(Some(Duration::from_secs(300)))
///     .request_timeout(Some(Duration::from_secs(10)))
///     .build()
///     .unwrap();
/// # drop(pool); }
/// ```
pub struct PoolBuilder<T: Transport> {
    transport: T,
    core: CoreConfig,
    checkout_timeout: Duration,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    retry_idempotent: bool,
    check_after_idle: Option<Duration>,
    ping_interval: Option<Duration>,
    health: Arc<dyn HealthCheck<T::Conn>>,
    retire: Option<Arc<dyn RetirePolicy<T::Conn>>>,
    sizing: Arc<dyn SizingPolicy>,
    maintenance_interval: Duration,
    warm_origins: Vec<(Origin, usize)>,
    max_origins: usize,
}

impl<T: Transport> PoolBuilder<T> {
    pub(crate) fn new(transport: T) -> Self {
        let core = CoreConfig {
            expected_slots: transport.expected_slots().max(1),
            seed: random_seed(),
            ..CoreConfig::default()
        };
        PoolBuilder {
            transport,
            core,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            retry_idempotent: true,
            check_after_idle: None,
            ping_interval: Some(Duration::from_secs(30)),
            health: Arc::new(DefaultHealthCheck::default()),
            retire: None,
            sizing: Arc::new(ByProtocol::default()),
            maintenance_interval: DEFAULT_MAINTENANCE_INTERVAL,
            warm_origins: Vec::new(),
            max_origins: 10_000,
        }
    }

    /// Most connections open or being opened per origin (default 100).
    pub fn max_connections_per_origin(mut self, n: usize) -> Self {
        self.core.max_connections = n;
        self
    }

    /// Most origins tracked at once (default 10,000). A new origin beyond it
    /// evicts the least recently used idle ones (their idle connections
    /// close); if every origin is busy, the request fails with
    /// [`Error::TooManyOrigins`]. Bounds memory under a stream of distinct
    /// origins.
    pub fn max_origins(mut self, n: usize) -> Self {
        self.max_origins = n;
        self
    }

    /// Most requests waiting for a connection per origin; one more fails at
    /// once with [`Error::PendingOverflow`] (default 1,024; at least 1, since
    /// a request on a cold pool waits for the connect it starts).
    pub fn max_pending_per_origin(mut self, n: usize) -> Self {
        self.core.max_pending = n;
        self
    }

    /// How long a request may wait for a connection before it fails with
    /// [`Error::CheckoutTimeout`] (default 5 s; must be above zero).
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// How long opening one connection (TCP, TLS, protocol handshake) may
    /// take before it fails with [`Error::ConnectTimeout`] (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request may wait for its response head once sent, before
    /// it fails with [`Error::RequestTimeout`] and its connection is closed
    /// (default None: tower's `timeout` layer or the caller's own deadline
    /// decides). This is what finds a blackholed HTTP/1.1 connection.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Close connections idle this long (default 90 s; `None` keeps idle
    /// connections until the peer closes them). Keep it below the origin's
    /// keep-alive timeout; an origin that sends `Keep-Alive: timeout=N` is
    /// honoured automatically.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.core.idle_timeout = timeout;
        self
    }

    /// When every slot of every connection is busy: open another connection
    /// (true, the default) or queue on the ones there are (false; with
    /// HTTP/2 that is the RFC 9113 "one connection per origin" reading).
    pub fn open_more_when_saturated(mut self, open_more: bool) -> Self {
        self.core.open_more_when_saturated = open_more;
        self
    }

    /// Retire connections this old (default None), jittered by
    /// `max_age_jitter` so connections opened together retire apart.
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.core.recycle.max_age = age;
        self
    }

    /// The jitter of `max_age`, a fraction in [0, 1) (default 0.1 = ±10%).
    pub fn max_age_jitter(mut self, fraction: f64) -> Self {
        self.core.recycle.max_age_jitter = fraction;
        self
    }

    /// Retire a connection after this many requests (default None).
    pub fn max_requests_per_connection(mut self, n: Option<u64>) -> Self {
        self.core.recycle.max_requests = n;
        self
    }

    /// Retire a connection after this many failed requests in a row
    /// (default Some(5)).
    pub fn max_consecutive_errors(mut self, n: Option<u32>) -> Self {
        self.core.recycle.max_consecutive_errors = n;
        self
    }

    /// All recycling settings at once.
    pub fn recycle(mut self, recycle: RecycleConfig) -> Self {
        self.core.recycle = recycle;
        self
    }

    /// How failed connects back off and when the circuit opens (see
    /// [`BackoffConfig`]; default: base 100 ms, cap 10 s, threshold 5).
    pub fn connect_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.core.backoff = backoff;
        self
    }

    /// Send an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE,
    /// or any method with an `Idempotency-Key` header) whose body is in
    /// memory once more, on a fresh connection, when it failed on a reused
    /// connection before any byte of the response arrived (default true).
    /// Turning it off saves copying such requests' headers.
    pub fn retry_idempotent(mut self, retry: bool) -> Self {
        self.retry_idempotent = retry;
        self
    }

    /// Check a connection idle at least this long before lending it
    /// (default None: the cheap dead-socket check at lend time only).
    pub fn check_after_idle(mut self, after: Option<Duration>) -> Self {
        self.check_after_idle = after;
        self
    }

    /// Check idle connections this often in the background: a PING for
    /// HTTP/2 and HTTP/3, the dead-socket check for HTTP/1.1 (default 30 s).
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Your own health check (default [`DefaultHealthCheck`]).
    pub fn health_check(mut self, check: impl HealthCheck<T::Conn>) -> Self {
        self.health = Arc::new(check);
        self
    }

    /// Your own reason to retire connections, asked after each request.
    pub fn retire_policy(mut self, policy: impl RetirePolicy<T::Conn>) -> Self {
        self.retire = Some(Arc::new(policy));
        self
    }

    /// How many connections each origin keeps warm and may open, from its
    /// measured load (default [`ByProtocol`]: Little's law with headroom 1.5
    /// for HTTP/1.1, stream count plus one spare for HTTP/2 and HTTP/3).
    pub fn sizing(mut self, policy: impl SizingPolicy) -> Self {
        self.sizing = Arc::new(policy);
        self
    }

    /// How often the sizing policy is re-evaluated and the warm level
    /// restored after closes and failures (default 10 s).
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.maintenance_interval = interval;
        self
    }

    /// Open ahead of demand: keep capacity for `ratio` times the requests in
    /// use or waiting (default 1.0 = only on demand; must be at least 1.0).
    /// A connect started for a request that is then served elsewhere or
    /// cancelled is never aborted: it joins the pool.
    pub fn preconnect_ratio(mut self, ratio: f64) -> Self {
        self.core.preconnect_ratio = ratio;
        self
    }

    /// Most connects in flight per origin for warming (default 4).
    pub fn warm_concurrency(mut self, n: usize) -> Self {
        self.core.warm_concurrency = n;
        self
    }

    /// Warm `origin` with `connections` as soon as the pool is built, and
    /// keep at least that many warm. Failures are logged and counted; await
    /// [`Pool::warm`](crate::Pool::warm) instead to be told of them.
    pub fn warm(mut self, origin: Origin, connections: usize) -> Self {
        self.warm_origins.push((origin, connections));
        self
    }

    /// Validates the configuration and starts the pool. Must be called
    /// inside a tokio runtime (the pool spawns its background task there).
    pub fn build(self) -> Result<Pool<T>, Error> {
        validate_core(&self.core)?;
        if self.max_origins == 0 {
            return Err(Error::config("max_origins", 0, "must be at least 1"));
        }
        for (field, value) in [
            ("checkout_timeout", Some(self.checkout_timeout)),
            ("connect_timeout", Some(self.connect_timeout)),
            ("request_timeout", self.request_timeout),
            ("check_after_idle", self.check_after_idle),
            ("ping_interval", self.ping_interval),
            ("maintenance_interval", Some(self.maintenance_interval)),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(Error::config(field, Duration::ZERO, "must be above zero"));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = Arc::new(PoolInner {
            settings: Arc::new(Settings {
                transport: self.transport,
                connect_timeout: self.connect_timeout,
                check_after_idle: self.check_after_idle,
                health: self.health,
                retire: self.retire,
                sizing: self.sizing,
            }),
            core_config: self.core,
            checkout_timeout: self.checkout_timeout,
            request_timeout: self.request_timeout,
            retry_idempotent: self.retry_idempotent,
            ping_interval: self.ping_interval,
            maintenance_interval: self.maintenance_interval,
            max_origins: self.max_origins,
            shards: RwLock::new(HashMap::default()),
            retired: Mutex::new(Stats::default()),
            shut_down: AtomicBool::new(false),
            _reaper_stop: stop_tx,
        });
        runtime.spawn(reaper::run(Arc::downgrade(&inner), stop_rx));
        let pool = Pool { inner };
        for (origin, connections) in self.warm_origins {
            let pool = pool.clone();
            runtime.spawn(async move {
                if let Err(error) = pool.warm(&origin, connections).await {
                    tracing::warn!(%origin, %error, "warming failed");
                }
            });
        }
        Ok(pool)
    }
}

impl<T: Transport + std::fmt::Debug> std::fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("transport", &self.transport)
            .field("core", &self.core)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// A seed for the core's jitter: different in every pool, so pools started
/// together do not retire or back off in step.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}
