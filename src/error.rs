//! The one error type of edgepool.
//!
//! Every variant says what happened and, where there is one, to which origin.
//! [`Error::kind`] sorts them into the three questions a proxy asks after a
//! failure: is my input wrong, is the pool full, or should I try elsewhere?

use std::sync::Arc;
use std::time::Duration;

/// A boxed error from a lower layer (hyper, rustls, a user transport).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input (a URI, a configuration value) is wrong; retrying
    /// the same thing will fail the same way.
    InvalidInput,
    /// The pool for this origin is at its limits (pending queue full, or a
    /// waiter's deadline passed); back off or shed load.
    PoolFull,
    /// Reaching or talking to the origin failed; another attempt (on another
    /// connection, or another origin) may succeed.
    Origin,
    /// Connects to the origin keep failing and the pool is backing off:
    /// retry after [`Error::retry_after`], or elsewhere.
    Unavailable,
    /// The pool is shutting down or was dropped.
    Shutdown,
    /// The transport cannot do what was asked (e.g. PING over HTTP/1.1).
    Unsupported,
}

/// Errors returned by edgepool.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URI could not be turned into an [`Origin`](crate::Origin).
    #[error("invalid origin {uri:?}: {reason}")]
    InvalidOrigin {
        /// The URI as given.
        uri: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A configuration value was rejected when the pool or a config was built.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The name of the field, as the builder method spells it.
        field: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Opening a connection (TCP, TLS or protocol handshake) to the origin failed.
    #[error("connect to {origin} failed: {source}")]
    Connect {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The underlying failure.
        #[source]
        source: Arc<BoxError>,
    },

    /// Opening a connection took longer than the configured connect timeout.
    #[error("connect to {origin} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The configured connect timeout.
        timeout: Duration,
    },

    /// A request waited for a connection longer than its deadline.
    #[error("no connection to {origin} became free within {waited:?}")]
    CheckoutTimeout {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// How long the request waited.
        waited: Duration,
    },

    /// The origin's pending queue was full, so the request was rejected at once.
    #[error("pending queue for {origin} is full ({max_pending} waiting)")]
    PendingOverflow {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The configured maximum of pending requests.
        max_pending: usize,
    },

    /// Connects to the origin kept failing; the pool backs off and refuses
    /// requests that find no free connection until `retry_after` has passed.
    #[error("{origin} is unavailable: connects keep failing; retry after {retry_after:?}")]
    OriginUnavailable {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// When the pool will try to connect again.
        retry_after: Duration,
    },

    /// No response head arrived within the configured request timeout (the
    /// connection is closed: a blackholed peer looks exactly like this).
    #[error("no response from {origin} within {timeout:?}")]
    RequestTimeout {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The configured request timeout.
        timeout: Duration,
    },

    /// A connection failed its health check (it is closed, never lent).
    #[error("connection to {origin} failed its health check: {reason}")]
    HealthCheckFailed {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// What the check found.
        reason: String,
    },

    /// The pool tracks its maximum number of origins and none is idle
    /// enough to evict.
    #[error("the pool tracks {max} origins, all busy; no room for another")]
    TooManyOrigins {
        /// The configured maximum.
        max: usize,
    },

    /// The request failed on an established connection.
    #[error("request to {origin} failed: {source}")]
    Request {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The underlying failure.
        #[source]
        source: Arc<BoxError>,
    },

    /// The response body failed while it was being read.
    #[error("response body from {origin} failed: {source}")]
    Body {
        /// The origin, as `scheme://host:port`.
        origin: String,
        /// The underlying failure.
        #[source]
        source: Arc<BoxError>,
    },

    /// The transport does not support the operation.
    #[error("{operation} is not supported by {protocol}")]
    Unsupported {
        /// What was asked for.
        operation: &'static str,
        /// The protocol that cannot do it.
        protocol: &'static str,
    },

    /// The pool was built outside a tokio runtime.
    #[error("edgepool needs a tokio runtime: build the pool inside one")]
    NoRuntime,

    /// The pool was shut down, or the operation needs a tokio runtime and none is running.
    #[error("pool is shut down: {reason}")]
    Shutdown {
        /// Why.
        reason: &'static str,
    },
}

impl Error {
    /// Sorts the error into what a caller should do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidOrigin { .. } | Error::InvalidConfig { .. } | Error::NoRuntime => {
                ErrorKind::InvalidInput
            }
            Error::CheckoutTimeout { .. }
            | Error::PendingOverflow { .. }
            | Error::TooManyOrigins { .. } => ErrorKind::PoolFull,
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Request { .. }
            | Error::RequestTimeout { .. }
            | Error::HealthCheckFailed { .. }
            | Error::Body { .. } => ErrorKind::Origin,
            Error::OriginUnavailable { .. } => ErrorKind::Unavailable,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Shutdown { .. } => ErrorKind::Shutdown,
        }
    }

    /// When a retry may succeed, where the pool knows (an origin whose
    /// connects keep failing is backed off until then): the value for a
    /// `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::OriginUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// True when the caller's input is wrong and retrying cannot help.
    pub fn is_invalid_input(&self) -> bool {
        self.kind() == ErrorKind::InvalidInput
    }

    /// True when the pool for the origin is at its limits.
    pub fn is_pool_full(&self) -> bool {
        self.kind() == ErrorKind::PoolFull
    }

    /// True when the failure came from the origin or the path to it.
    pub fn is_origin_failure(&self) -> bool {
        self.kind() == ErrorKind::Origin
    }

    pub(crate) fn config(
        field: &'static str,
        value: impl std::fmt::Debug,
        reason: &'static str,
    ) -> Self {
        Error::InvalidConfig {
            field,
            value: format!("{value:?}"),
            reason,
        }
    }

    pub(crate) fn connect(origin: &crate::Origin, source: impl Into<BoxError>) -> Self {
        Error::Connect {
            origin: origin.to_string(),
            source: Arc::new(source.into()),
        }
    }

    #[cfg_attr(not(any(feature = "http1", feature = "http2")), allow(dead_code))]
    pub(crate) fn request(origin: &crate::Origin, source: impl Into<BoxError>) -> Self {
        Error::Request {
            origin: origin.to_string(),
            source: Arc::new(source.into()),
        }
    }

    pub(crate) fn body(origin: &crate::Origin, source: impl Into<BoxError>) -> Self {
        Error::Body {
            origin: origin.to_string(),
            source: Arc::new(source.into()),
        }
    }
}
