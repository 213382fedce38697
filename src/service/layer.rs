//! [`PoolLayer`]: a `tower::Layer` from a connector service to the pooled
//! client service.

use std::fmt;
use std::time::Duration;

use super::PoolService;
use crate::core::CoreConfig;
use crate::transport::Transport;
#[cfg(all(feature = "http2", feature = "http1", feature = "tls"))]
use crate::transport::auto::Auto;
#[cfg(any(feature = "http1", feature = "http2"))]
use crate::transport::connector::Connector;
#[cfg(feature = "http1")]
use crate::transport::http1::Http1;
#[cfg(feature = "http2")]
use crate::transport::http2::Http2;
use crate::{Error, Origin, Pool, PoolBuilder};

/// A transport "template" that can be rebuilt over another connector.
///
/// It exists because a layer receives the connector only in
/// `Layer::layer`, while everything else about the transport (TLS trust,
/// header limits) is decided when the layer is configured. Implemented for
/// the connector-based transports, `Http1`, `Http2` and `Auto` (keeping
/// their TLS configuration and limits, replacing the connector), and for
/// any `Fn(C) -> T` closure that builds a transport, for transports of your
/// own.
///
/// ```
/// use edgepool::service::WithConnector;
/// use edgepool::transport::{connector::TcpConnector, http1::Http1};
///
/// let template = Http1::new().max_headers(50)?;
/// let transport: Http1<TcpConnector> = template.with_connector(TcpConnector::new());
/// # drop(transport); Ok::<(), edgepool::Error>(())
/// ```
pub trait WithConnector<C> {
    /// The transport over connector `C`.
    type Transport: Transport;

    /// Builds the transport over `connector`.
    fn with_connector(&self, connector: C) -> Self::Transport;
}

#[cfg(feature = "http1")]
impl<C0: Connector, C: Connector> WithConnector<C> for Http1<C0> {
    type Transport = Http1<C>;

    fn with_connector(&self, connector: C) -> Http1<C> {
        self.clone().with_connector(connector)
    }
}

#[cfg(feature = "http2")]
impl<C0: Connector, C: Connector> WithConnector<C> for Http2<C0> {
    type Transport = Http2<C>;

    fn with_connector(&self, connector: C) -> Http2<C> {
        self.clone().with_connector(connector)
    }
}

#[cfg(all(feature = "http2", feature = "http1", feature = "tls"))]
impl<C0: Connector, C: Connector> WithConnector<C> for Auto<C0> {
    type Transport = Auto<C>;

    fn with_connector(&self, connector: C) -> Auto<C> {
        self.clone().with_connector(connector)
    }
}

impl<F, C, T> WithConnector<C> for F
where
    F: Fn(C) -> T,
    T: Transport,
{
    type Transport = T;

    fn with_connector(&self, connector: C) -> T {
        self(connector)
    }
}

/// Turns a connector service into a pooled client service: `layer(connector)`
/// builds a [`Pool`] over `template.with_connector(connector)` and returns
/// a [`PoolService`] on it.
///
/// It exists so that connection establishment can be wrapped in tower
/// middleware (a connect rate limit, your own DNS, a proxy hop) and the pool
/// stacked on top in the same `ServiceBuilder` chain.
///
/// # When errors surface
///
/// A `PoolLayer` is only made by [`PoolLayerBuilder::build`], which
/// validates every setting (naming the field and value, with the same
/// messages as [`PoolBuilder::build`]). After that the one thing
/// `layer(connector)` still needs is a tokio runtime, because a pool spawns
/// its idle reaper there: like `tower::buffer::Buffer::new`,
/// [`Layer::layer`](tower::Layer::layer) **panics when called outside a
/// tokio runtime**. [`try_layer`](Self::try_layer) returns
/// [`Error::NoRuntime`] instead. Building lazily on the first `poll_ready`
/// was rejected: it would turn a misconfiguration into a failure at the
/// first request, and put a check on every request's path.
///
/// Each call to `layer` builds a separate pool (separate connections and
/// counters); clone the resulting service to share one.
///
/// The layer carries the settings most stacks need
/// ([`PoolLayerBuilder`]'s methods). For the others (recycling, health
/// checks, retire policies, backoff), build the pool yourself and wrap it:
/// `PoolService::new(Pool::builder(Http1::new().with_connector(connector))
/// ...build()?)`; the layer is only a shorthand for that.
///
/// ```
/// use std::time::Duration;
/// use edgepool::service::{PoolLayer, PoolService};
/// use edgepool::transport::{connector::TcpConnector, http1::Http1};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), edgepool::Error> {
/// // Invalid settings are refused here, naming the field.
/// let err = PoolLayer::builder(Http1::new()).max_connections_per_origin(0).build().unwrap_err();
/// assert!(err.to_string().contains("max_connections_per_origin"));
///
/// let layer = PoolLayer::builder(Http1::new())
///     .max_connections_per_origin(16)
///     .checkout_timeout(Duration::from_secs(1))
///     .build()?;
/// let client: PoolService<Http1<_>> = ServiceBuilder::new()
///     .layer(layer)
///     // The connector, under its own middleware: a TCP connect timeout.
///     .timeout(Duration::from_millis(500))
///     .service(TcpConnector::new());
/// # drop(client); Ok(()) }
/// ```
#[derive(Clone)]
pub struct PoolLayer<M> {
    template: M,
    settings: Settings,
}

/// Configures a [`PoolLayer`]: the [`PoolBuilder`] settings a tower stack
/// usually needs, applied to every pool the layer builds. Settings left
/// alone keep the pool's defaults.
///
/// ```
/// use std::time::Duration;
/// use edgepool::service::PoolLayer;
/// use edgepool::transport::http1::Http1;
///
/// let layer = PoolLayer::builder(Http1::new())
///     .max_connections_per_origin(8)
///     .max_pending_per_origin(32)
///     .idle_timeout(Some(Duration::from_secs(30)))
///     .build()?;
/// # drop(layer); Ok::<(), edgepool::Error>(())
/// ```
#[derive(Clone)]
pub struct PoolLayerBuilder<M> {
    template: M,
    settings: Settings,
}

/// The builder settings a layer replays onto each [`PoolBuilder`]; `None`
/// keeps the builder's default.
#[derive(Clone, Debug, Default)]
struct Settings {
    max_connections: Option<usize>,
    max_pending: Option<usize>,
    checkout_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Option<Duration>>,
    idle_timeout: Option<Option<Duration>>,
    open_more_when_saturated: Option<bool>,
    origin: Option<Origin>,
}

impl Settings {
    fn apply<T: Transport>(&self, mut builder: PoolBuilder<T>) -> PoolBuilder<T> {
        if let Some(n) = self.max_connections {
            builder = builder.max_connections_per_origin(n);
        }
        if let Some(n) = self.max_pending {
            builder = builder.max_pending_per_origin(n);
        }
        if let Some(t) = self.checkout_timeout {
            builder = builder.checkout_timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            builder = builder.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            builder = builder.request_timeout(t);
        }
        if let Some(t) = self.idle_timeout {
            builder = builder.idle_timeout(t);
        }
        if let Some(b) = self.open_more_when_saturated {
            builder = builder.open_more_when_saturated(b);
        }
        builder
    }

    /// The checks [`PoolBuilder::build`] makes, with its field names and
    /// messages, so a layer is refused when it is configured rather than
    /// when its first pool is built. (A test pins the two to each other.)
    fn validate(&self) -> Result<(), Error> {
        let defaults = CoreConfig::default();
        let core = CoreConfig {
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
            ..defaults
        };
        crate::pool::validate_core(&core)?;
        for (field, timeout) in [
            ("checkout_timeout", self.checkout_timeout),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout.flatten()),
        ] {
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::config(field, Duration::ZERO, "must be above zero"));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "http1")]
impl PoolLayer<Http1> {
    /// A layer with the pool's default settings over HTTP/1.1 (TLS for
    /// `https://` origins verified against the webpki roots). Infallible,
    /// since the defaults are valid; use [`PoolLayer::builder`] to configure.
    pub fn http1() -> Self {
        PoolLayer {
            template: Http1::new(),
            settings: Settings::default(),
        }
    }
}

impl<M> PoolLayer<M> {
    /// Starts configuring a layer whose pools use transports made from
    /// `template` ([`Http1`], or a closure `|connector| transport`).
    pub fn builder(template: M) -> PoolLayerBuilder<M> {
        PoolLayerBuilder {
            template,
            settings: Settings::default(),
        }
    }

    /// Builds the pool over `connector` and wraps it, without panicking:
    /// fails with [`Error::NoRuntime`] outside a tokio runtime.
    pub fn try_layer<C>(&self, connector: C) -> Result<PoolService<M::Transport>, Error>
    where
        M: WithConnector<C>,
    {
        let transport = self.template.with_connector(connector);
        let pool = self.settings.apply(Pool::builder(transport)).build()?;
        Ok(match &self.settings.origin {
            Some(origin) => PoolService::for_origin(pool, origin.clone()),
            None => PoolService::new(pool),
        })
    }
}

impl<M, C> tower::Layer<C> for PoolLayer<M>
where
    M: WithConnector<C>,
{
    type Service = PoolService<M::Transport>;

    /// Builds a pool over `connector`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the settings were validated when the layer
    /// was built, so nothing else can fail). Use
    /// [`try_layer`](PoolLayer::try_layer) to get the error instead.
    fn layer(&self, connector: C) -> Self::Service {
        match self.try_layer(connector) {
            Ok(service) => service,
            Err(error) => panic!("edgepool::service::PoolLayer::layer: {error}"),
        }
    }
}

impl<M> PoolLayerBuilder<M> {
    /// See [`PoolBuilder::max_connections_per_origin`].
    pub fn max_connections_per_origin(mut self, n: usize) -> Self {
        self.settings.max_connections = Some(n);
        self
    }

    /// See [`PoolBuilder::max_pending_per_origin`]. This queue is what
    /// `poll_ready` of an origin-bound service reports on.
    pub fn max_pending_per_origin(mut self, n: usize) -> Self {
        self.settings.max_pending = Some(n);
        self
    }

    /// See [`PoolBuilder::checkout_timeout`].
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.settings.checkout_timeout = Some(timeout);
        self
    }

    /// See [`PoolBuilder::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = Some(timeout);
        self
    }

    /// See [`PoolBuilder::request_timeout`]: the pool's own deadline for a
    /// response head, which also closes the (possibly blackholed)
    /// connection. tower's `timeout` layer bounds the whole call instead.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.request_timeout = Some(timeout);
        self
    }

    /// See [`PoolBuilder::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = Some(timeout);
        self
    }

    /// See [`PoolBuilder::open_more_when_saturated`].
    pub fn open_more_when_saturated(mut self, open_more: bool) -> Self {
        self.settings.open_more_when_saturated = Some(open_more);
        self
    }

    /// Makes the layer's services send every request to `origin`
    /// ([`PoolService::for_origin`]: exact `poll_ready`, origin-form request
    /// URIs accepted) instead of routing by URI ([`PoolService::new`]).
    pub fn origin(mut self, origin: Origin) -> Self {
        self.settings.origin = Some(origin);
        self
    }

    /// Validates the settings, naming the field and value of the first bad
    /// one, and returns the layer. Needs no runtime.
    pub fn build(self) -> Result<PoolLayer<M>, Error> {
        self.settings.validate()?;
        Ok(PoolLayer {
            template: self.template,
            settings: self.settings,
        })
    }
}

impl<M> fmt::Debug for PoolLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<M> fmt::Debug for PoolLayerBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    fn zero_timeouts_name_their_field() {
        let s = Settings {
            connect_timeout: Some(Duration::ZERO),
            ..Settings::default()
        };
        let err = s.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: connect_timeout = 0ns: must be above zero"
        );
    }
}
