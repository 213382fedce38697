//! Health checks: finding dead and half-open connections before a request does.
//!
//! Two moments: before lending a connection that sat idle longer than
//! `check_after_idle`, and periodically (`ping_interval`) for idle
//! connections. A connection that fails a check is closed; the request that
//! was about to use it takes another.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Error;
use crate::transport::{ConnState, Connection, Protocol};

/// A boxed future, so health checks can be stored as trait objects.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Decides whether a connection is fit to be lent. Implement it for your own
/// probe (e.g. an HTTP/1.1 `HEAD /health` over the connection).
pub trait HealthCheck<C>: Send + Sync + 'static {
    /// Ok if the connection may carry a request.
    fn check<'a>(&'a self, conn: &'a C) -> CheckFuture<'a>;
}

/// The default check: for HTTP/2 and HTTP/3, a PING answered within
/// `ping_timeout`; for HTTP/1.1, which has no PING, the transport's own
/// dead-socket detection (hyper closes an idle connection whose peer closed
/// it or sent bytes nobody asked for, and the connection reports Closed).
#[derive(Debug, Clone)]
pub struct DefaultHealthCheck {
    /// How long a PING may take (default 5 s).
    pub ping_timeout: Duration,
}

impl Default for DefaultHealthCheck {
    fn default() -> Self {
        DefaultHealthCheck {
            ping_timeout: Duration::from_secs(5),
        }
    }
}

impl<C: Connection> HealthCheck<C> for DefaultHealthCheck {
    fn check<'a>(&'a self, conn: &'a C) -> CheckFuture<'a> {
        Box::pin(async move {
            if conn.state() != ConnState::Ready {
                return Err(unhealthy("the connection is no longer ready"));
            }
            if conn.protocol() == Protocol::Http1 {
                return Ok(());
            }
            match tokio::time::timeout(self.ping_timeout, conn.ping()).await {
                Ok(Ok(_rtt)) => Ok(()),
                Ok(Err(e)) => Err(unhealthy(&format!("PING failed: {e}"))),
                Err(_) => Err(unhealthy(&format!(
                    "no PING answer within {:?}",
                    self.ping_timeout
                ))),
            }
        })
    }
}

/// A failed check; the driver fills in the origin when it logs it.
pub(crate) fn unhealthy(reason: &str) -> Error {
    Error::HealthCheckFailed {
        origin: String::new(),
        reason: reason.to_string(),
    }
}
