//! [`ConnectionInfo`]: which connection carried a response, as a response extension.

use std::time::Duration;

use crate::{Origin, Protocol};

/// Which connection carried a response, attached to every response's
/// extensions so a proxy can log reuse per request.
///
/// ```no_run
/// # async fn f(pool: edgepool::Pool<edgepool::transport::http1::Http1>) -> Result<(), edgepool::Error> {
/// let response = pool.request(http::Request::get("http://127.0.0.1:8080/").body(String::new()).unwrap()).await?;
/// let info = response.extensions().get::<edgepool::ConnectionInfo>().unwrap();
/// println!("conn {} reused={} idle {:?}", info.id, info.reused, info.idle_for);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id, unique within its origin.
    pub id: u64,
    /// The origin it is connected to.
    pub origin: Origin,
    /// Its protocol.
    pub protocol: Protocol,
    /// Whether it was already open when the request asked (a warm or
    /// reused connection: no handshake paid), rather than opened for it.
    pub reused: bool,
    /// How long it had been idle before this request (zero if it was busy or new).
    pub idle_for: Duration,
    /// Whether the connection was opened with 0-RTT (HTTP/3 resumption).
    /// Whether this request itself went as early data is in the HTTP/3
    /// transport's `EarlyData` response extension.
    pub zero_rtt: bool,
}
