//! [`PoolBuilder`]: configuration, validated when the pool is built.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{Pool, PoolInner, reaper};
use crate::Error;
use crate::core::{CoreConfig, Stats};
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
///     .build()
///     .unwrap();
/// # drop(pool); }
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder<T> {
    transport: T,
    core: CoreConfig,
    checkout_timeout: Duration,
    connect_timeout: Duration,
}

impl<T: Transport> PoolBuilder<T> {
    pub(crate) fn new(transport: T) -> Self {
        let core = CoreConfig {
            expected_slots: transport.expected_slots().max(1),
            ..CoreConfig::default()
        };
        PoolBuilder {
            transport,
            core,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Most connections open or being opened per origin (default 100).
    pub fn max_connections_per_origin(mut self, n: usize) -> Self {
        self.core.max_connections = n;
        self
    }

    /// Most requests waiting for a connection per origin; one more fails at
    /// once with [`Error::PendingOverflow`] (default 1,024; 0 means never wait).
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

    /// Close connections idle this long (default 90 s, which is below the
    /// keep-alive timeouts common origins use... for nginx 75 s, lower it;
    /// `None` keeps idle connections until the peer closes them).
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

    /// Validates the configuration and starts the pool. Must be called
    /// inside a tokio runtime (the pool spawns its idle reaper there).
    pub fn build(self) -> Result<Pool<T>, Error> {
        let field = |name: &'static str, e: Error| match e {
            Error::InvalidConfig { value, reason, .. } => Error::InvalidConfig {
                field: name,
                value,
                reason,
            },
            other => other,
        };
        self.core.validate().map_err(|e| match &e {
            Error::InvalidConfig {
                field: "max_connections",
                ..
            } => field("max_connections_per_origin", e),
            _ => e,
        })?;
        if self.checkout_timeout.is_zero() {
            return Err(Error::config(
                "checkout_timeout",
                self.checkout_timeout,
                "must be above zero",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                self.connect_timeout,
                "must be above zero",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = Arc::new(PoolInner {
            transport: Arc::new(self.transport),
            core_config: self.core,
            checkout_timeout: self.checkout_timeout,
            connect_timeout: self.connect_timeout,
            shards: RwLock::new(HashMap::default()),
            retired: Mutex::new(Stats::default()),
            shut_down: AtomicBool::new(false),
            _reaper_stop: stop_tx,
        });
        runtime.spawn(reaper::run(Arc::downgrade(&inner), stop_rx));
        Ok(Pool { inner })
    }
}
