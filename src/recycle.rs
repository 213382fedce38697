//! Recycling: retiring connections before they fail a request.
//!
//! The limits themselves (max age with jitter, max requests, consecutive
//! errors) are [`RecycleConfig`](crate::core::RecycleConfig), enforced by the
//! core. This module adds what comes from outside the pool: the origin's
//! `Keep-Alive` hints, and the application's own reasons ([`RetirePolicy`]).

use std::time::Duration;

use http::HeaderMap;

use crate::ConnectionInfo;

/// What an origin's `Keep-Alive` response header promises (RFC 9110
/// §7.6.1 leaves the header to implementations; Apache, nginx and many
/// frameworks send `Keep-Alive: timeout=5, max=100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAlive {
    /// The origin closes the connection after this long idle.
    pub timeout: Option<Duration>,
    /// The origin allows this many more requests on the connection.
    pub max: Option<u64>,
}

impl KeepAlive {
    /// Reads the `Keep-Alive` headers of a response. Unknown parameters are
    /// skipped; a malformed value is ignored (with a debug event), never an
    /// error: a hint that cannot be read is a hint not taken. Returns None
    /// when there is no usable hint.
    ///
    /// ```
    /// use edgepool::recycle::KeepAlive;
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("keep-alive", "timeout=5, max=99".parse().unwrap());
    /// let hint = KeepAlive::from_headers(&headers).unwrap();
    /// assert_eq!(hint.timeout, Some(std::time::Duration::from_secs(5)));
    /// assert_eq!(hint.max, Some(99));
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Option<KeepAlive> {
        let mut hint = KeepAlive::default();
        for value in headers.get_all("keep-alive") {
            match value.to_str() {
                Ok(text) => hint.merge(KeepAlive::parse(text)),
                Err(_) => tracing::debug!("ignoring a Keep-Alive header that is not ASCII"),
            }
        }
        (hint != KeepAlive::default()).then_some(hint)
    }

    /// Parses one header value, such as `timeout=5, max=100`.
    pub fn parse(value: &str) -> KeepAlive {
        let mut hint = KeepAlive::default();
        for param in value.split(',') {
            let Some((name, raw)) = param.split_once('=') else {
                continue;
            };
            let raw = raw.trim().trim_matches('"');
            let name = name.trim();
            let number = raw.parse::<u64>();
            if name.eq_ignore_ascii_case("timeout") {
                match number {
                    Ok(secs) => hint.timeout = Some(Duration::from_secs(secs)),
                    Err(_) => tracing::debug!(value, "ignoring an unreadable Keep-Alive timeout"),
                }
            } else if name.eq_ignore_ascii_case("max") {
                match number {
                    Ok(max) => hint.max = Some(max),
                    Err(_) => tracing::debug!(value, "ignoring an unreadable Keep-Alive max"),
                }
            }
        }
        hint
    }

    /// Keeps the stricter of two hints.
    fn merge(&mut self, other: KeepAlive) {
        self.timeout = min_some(self.timeout, other.timeout);
        self.max = min_some(self.max, other.max);
    }
}

fn min_some<V: Ord>(a: Option<V>, b: Option<V>) -> Option<V> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The application's own reason to retire a connection, asked each time a
/// request on it ends cleanly. Retiring is graceful: the connection lends
/// nothing new, finishes what it carries, then closes.
///
/// ```
/// use edgepool::{ConnectionInfo, recycle::RetirePolicy};
/// /// Retire connections to origins a config reload removed.
/// struct Removed(std::collections::HashSet<String>);
/// impl<C> RetirePolicy<C> for Removed {
///     fn should_retire(&self, _conn: &C, info: &ConnectionInfo) -> bool {
///         self.0.contains(info.origin.host())
///     }
/// }
/// ```
pub trait RetirePolicy<C>: Send + Sync + 'static {
    /// True to retire this connection now.
    fn should_retire(&self, conn: &C, info: &ConnectionInfo) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_timeout_and_max_in_any_case_and_order() {
        let k = KeepAlive::parse("MAX=7 ,Timeout = 15");
        assert_eq!(k.timeout, Some(Duration::from_secs(15)));
        assert_eq!(k.max, Some(7));
        assert_eq!(
            KeepAlive::parse("timeout=\"3\"").timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn malformed_values_are_ignored_not_errors() {
        for v in [
            "",
            "timeout",
            "timeout=",
            "timeout=-1",
            "timeout=5s",
            "max=1e3",
            "=,=,",
            "timeout=99999999999999999999999",
        ] {
            assert_eq!(KeepAlive::parse(v), KeepAlive::default(), "{v:?}");
        }
        assert_eq!(
            KeepAlive::parse("timeout=abc, max=4").max,
            Some(4),
            "the good part is kept"
        );
    }

    #[test]
    fn the_stricter_of_several_headers_wins() {
        let mut h = HeaderMap::new();
        h.append("keep-alive", "timeout=10, max=50".parse().unwrap());
        h.append("keep-alive", "timeout=4".parse().unwrap());
        let k = KeepAlive::from_headers(&h).unwrap();
        assert_eq!((k.timeout, k.max), (Some(Duration::from_secs(4)), Some(50)));
        assert_eq!(KeepAlive::from_headers(&HeaderMap::new()), None);
    }
}
