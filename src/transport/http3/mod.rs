//! HTTP/3 over QUIC, on quinn + h3 + h3-quinn.
//!
//! One [`Http3`] transport owns one quinn [`Endpoint`](quinn::Endpoint): one
//! UDP socket that every connection of the transport (and so of the pool)
//! shares. Each pooled connection is one QUIC connection with an h3 client
//! on it, whose driver runs on its own task and reports
//! [`ConnEvent::Closed`](super::ConnEvent::Closed) when it ends and
//! [`ConnEvent::Draining`](super::ConnEvent::Draining) on GOAWAY.
//!
//! # Stream slots
//!
//! A connection offers `max_concurrent_streams` slots (default 100). quinn
//! 0.11 does not expose the peer's bidirectional stream limit, so the pool
//! cannot be told it up front; set `max_concurrent_streams` to your origins'
//! limit. If a peer allows fewer, a request over its limit waits inside
//! QUIC for a stream to end (as HTTP/2 does), and the connection lowers its
//! slots to what it observed (once, see `open_blocked` in `conn.rs`).
//!
//! # 0-RTT
//!
//! TLS session tickets are kept in the [`TlsConfig`]'s resumption store,
//! which every configuration derived from it shares. A new connection to a
//! server that issued a ticket allowing early data is returned before its
//! handshake completes ([`Connecting::into_0rtt`](quinn::Connecting::into_0rtt)),
//! and carries replay-safe requests at once: GET, HEAD, OPTIONS, or any
//! request marked [`EarlyDataSafe`]. Other requests on it wait for the
//! handshake. Each response says whether its request went early
//! ([`EarlyData`]). If the server rejects the early data, the connection is
//! closed and its requests that provably went unprocessed are handed back
//! to the pool, which sends them on another connection.
//!
//! # Idle connections: the pool's clock and QUIC's
//!
//! The pool decides when an unused connection is closed
//! ([`PoolBuilder::idle_timeout`](crate::PoolBuilder::idle_timeout), default
//! 90 s), as for every protocol. QUIC has an idle timeout of its own (the
//! smaller of both peers', here [`Http3Builder::idle_timeout`], default
//! 60 s) after which a silent connection is gone without a packet. The
//! keep-alive ([`Http3Builder::keep_alive_interval`], default 15 s) keeps a
//! pooled connection alive until the pool's own clock retires it, and keeps
//! the NAT mapping on the path open. `build` checks it against this side's
//! idle timeout only; the server's is unknown until a connection is open,
//! so if your origins use a QUIC idle timeout below 15 s, lower the
//! keep-alive interval below it too, or their connections will close
//! between requests. With keep-alive off, a connection idle past QUIC's timeout
//! closes by itself; the pool sees it close and opens a new one when it is
//! next needed, so nothing is lost, but that request pays a handshake.
//!
//! # Connection migration
//!
//! [`Http3::rebind`] moves the endpoint to another UDP socket (a new local
//! address or port); open connections migrate with it and keep serving.

mod body;
mod conn;
mod request;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::ServerName;

pub use body::Http3Body;
pub use conn::Http3Connection;
pub use request::{EarlyData, EarlyDataSafe};

use super::tls::{Alpn, TlsConfig, TransportTls};
use super::{ConnEvents, Transport};
use crate::{Error, Origin, Scheme};
use conn::{Handshake, Shared, h3_no_error};
use watch::Watched;

/// Default QUIC keep-alive interval.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default QUIC idle timeout.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default slots per connection: what quinn and most HTTP/3 servers allow.
const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 100;
/// Default bound on the QUIC handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on a response's header section (QPACK-decoded size).
const DEFAULT_MAX_RESPONSE_HEADER_BYTES: u64 = 64 * 1024;
/// How many derived QUIC client configurations to keep (one per distinct
/// [`TlsConfig`] in use); past it the cache starts over, which costs one
/// rebuild per configuration and loses nothing (tickets live in the
/// `TlsConfig`, not here).
const CLIENT_CONFIG_CACHE: usize = 64;

/// Opens HTTP/3 connections over one shared QUIC endpoint. Cheap to clone;
/// clones share the endpoint, the configuration and the session tickets.
///
/// Build it inside a tokio runtime (the endpoint's socket is registered
/// with it):
///
/// ```no_run
/// # async fn f() -> Result<(), edgepool::Error> {
/// use std::time::Duration;
/// use edgepool::{Pool, transport::http3::Http3};
/// let transport = Http3::builder()
///     .max_concurrent_streams(100)
///     .keep_alive_interval(Some(Duration::from_secs(15)))
///     .idle_timeout(Duration::from_secs(60))
///     .build()?;
/// let pool = Pool::builder(transport).build()?;
/// let response = pool
///     .request(http::Request::get("https://origin.example/").body(String::new()).unwrap())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Http3 {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    tls: TransportTls,
    /// QUIC client configurations by [`TlsConfig::id`].
    client_configs: Mutex<HashMap<u64, quinn::ClientConfig>>,
    transport_config: Arc<quinn::TransportConfig>,
    max_concurrent_streams: usize,
    zero_rtt: bool,
    handshake_timeout: Duration,
    max_response_header_bytes: u64,
}

impl Http3 {
    /// Starts a configuration; see [`Http3Builder`] for the defaults.
    pub fn builder() -> Http3Builder {
        Http3Builder::default()
    }

    /// A transport with every default: bound to `0.0.0.0:0`, webpki roots,
    /// 0-RTT on. Needs a tokio runtime.
    pub fn new() -> Result<Http3, Error> {
        Http3::builder().build()
    }

    /// Moves the transport's endpoint to `socket`. Open connections migrate
    /// to it (QUIC connection migration, RFC 9000 §9): their next packets
    /// leave from the new address, the servers validate the new path, and
    /// requests in flight carry on. Use it when the host's address changes,
    /// or to move off a port that a middlebox started dropping.
    ///
    /// A server that disables migration (or a NAT that loses the mapping)
    /// closes the connection instead; the pool then opens a new one.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), Error> {
        self.inner.endpoint.rebind(socket).map_err(|e| {
            Error::config(
                "socket",
                format_args!("{e}"),
                "quinn could not take over this UDP socket",
            )
        })
    }

    /// The local address of the endpoint's socket.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.inner.endpoint.local_addr().map_err(|e| {
            Error::config(
                "socket",
                format_args!("{e}"),
                "the endpoint's socket has no local address",
            )
        })
    }

    /// QUIC connections open on the endpoint (all origins, any state).
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// The QUIC client configuration for `tls`, derived once per
    /// configuration.
    ///
    /// It is the `TlsConfig`'s own rustls configuration with ALPN `h3` and
    /// early data enabled. rustls offers only TLS 1.3 on QUIC whatever the
    /// configuration allows, so TLS 1.2 in it does no harm; and its
    /// resumption store is shared by `Arc` with the TCP variants, so tickets
    /// are kept per `TlsConfig`. Trade-off: TCP and QUIC connections to the
    /// same server name draw from one store of single-use tickets; a TLS
    /// 1.3 ticket from a TCP connection offered over QUIC just resumes
    /// without early data (rustls sends early data only with a ticket that
    /// carries QUIC transport parameters).
    fn client_config(&self, tls: &TlsConfig) -> Result<quinn::ClientConfig, Error> {
        let mut cache = self
            .inner
            .client_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = cache.get(&tls.id()) {
            return Ok(config.clone());
        }
        let mut rustls_config = (*tls.client_config(Alpn::Http1)).clone();
        rustls_config.alpn_protocols = vec![b"h3".to_vec()];
        rustls_config.enable_early_data = self.inner.zero_rtt;
        let quic = QuicClientConfig::try_from(Arc::new(rustls_config)).map_err(|e| {
            Error::config(
                "tls",
                format_args!("{e}"),
                "the TLS configuration cannot be used for QUIC (it needs TLS 1.3 with AES-128-GCM)",
            )
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::clone(&self.inner.transport_config));
        if cache.len() >= CLIENT_CONFIG_CACHE {
            cache.clear();
        }
        cache.insert(tls.id(), config.clone());
        Ok(config)
    }

    /// The server's address, in the endpoint's address family where the
    /// name has one. No Happy Eyeballs: a QUIC attempt to an unreachable
    /// address costs a handshake timeout, so the first address is used and
    /// the pool's backoff handles a dead one.
    async fn resolve(&self, origin: &Origin) -> Result<SocketAddr, Error> {
        let ipv4_endpoint = self
            .inner
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((origin.connect_host(), origin.port()))
                .await
                .map_err(|e| Error::connect(origin, e))?
                .collect();
        let preferred = addrs.iter().find(|a| a.is_ipv4() == ipv4_endpoint).copied();
        match (preferred, addrs.first()) {
            (Some(addr), _) => Ok(addr),
            // An IPv6 endpoint reaches IPv4 addresses (quinn maps them);
            // an IPv4 one cannot reach IPv6 addresses.
            (None, Some(&addr)) if !ipv4_endpoint => Ok(addr),
            (None, Some(_)) => Err(Error::connect(
                origin,
                "the host has only IPv6 addresses but the HTTP/3 endpoint is bound to IPv4 (bind it to [::]:0)",
            )),
            (None, None) => Err(Error::connect(origin, "the host has no address")),
        }
    }
}

impl fmt::Debug for Http3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http3")
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .field("max_concurrent_streams", &self.inner.max_concurrent_streams)
            .field("zero_rtt", &self.inner.zero_rtt)
            .finish()
    }
}

/// A failed QUIC handshake, kept as the error's source so callers can
/// downcast to quinn's `ConnectionError`.
#[derive(Debug, thiserror::Error)]
#[error("QUIC handshake for server name {server_name:?} failed: {source}")]
struct HandshakeError {
    server_name: String,
    #[source]
    source: quinn::ConnectionError,
}

impl Transport for Http3 {
    type Conn = Http3Connection;

    fn expected_slots(&self) -> usize {
        self.inner.max_concurrent_streams
    }

    async fn connect(&self, origin: &Origin, events: ConnEvents) -> Result<Http3Connection, Error> {
        // tokio::spawn would panic outside a runtime; say so instead.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown {
            reason: "no tokio runtime is running",
        })?;
        if origin.scheme() != Scheme::Https {
            return Err(Error::InvalidOrigin {
                uri: origin.to_string(),
                reason: "HTTP/3 runs over QUIC, which always uses TLS: use an https:// origin",
            });
        }
        let server_name = origin.server_name();
        if ServerName::try_from(server_name).is_err() {
            return Err(Error::InvalidOrigin {
                uri: origin.to_string(),
                reason: "the TLS server name is not a DNS name or an IP address",
            });
        }
        let tls = self.inner.tls.for_origin(origin)?;
        let config = self.client_config(&tls)?;
        let addr = self.resolve(origin).await?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(config, addr, server_name)
            .map_err(|e| Error::connect(origin, e))?;
        let handshake_failed = |source| {
            tracing::debug!(%origin, server_name, error = %source, "QUIC handshake failed");
            Error::connect(
                origin,
                HandshakeError {
                    server_name: server_name.to_string(),
                    source,
                },
            )
        };
        let handshake_timeout = self.inner.handshake_timeout;
        let timed_out = || Error::ConnectTimeout {
            origin: origin.to_string(),
            timeout: handshake_timeout,
        };

        // With a ticket that allows early data, the connection is usable at
        // once; the handshake's outcome arrives later (see `Handshake`).
        let (quic, zero_rtt_accepted) = match connecting.into_0rtt() {
            Ok((quic, accepted)) if self.inner.zero_rtt => (quic, Some(accepted)),
            Ok((quic, accepted)) => {
                // Not reached: without `enable_early_data` rustls offers no
                // early data, so quinn refuses `into_0rtt`. Kept correct
                // anyway: wait for the handshake as a full one would.
                if !accepted.await {
                    return Err(handshake_failed(
                        quic.close_reason()
                            .unwrap_or(quinn::ConnectionError::LocallyClosed),
                    ));
                }
                (quic, None)
            }
            Err(connecting) => match tokio::time::timeout(handshake_timeout, connecting).await {
                Ok(Ok(quic)) => (quic, None),
                Ok(Err(source)) => return Err(handshake_failed(source)),
                Err(_) => return Err(timed_out()),
            },
        };
        let zero_rtt = zero_rtt_accepted.is_some();
        let shared = Shared::new(
            origin.clone(),
            quic.clone(),
            events,
            self.inner.max_concurrent_streams,
            if zero_rtt {
                Handshake::Pending
            } else {
                Handshake::Confirmed
            },
        );

        let observer: Arc<dyn watch::Observer> = shared.clone();
        let built = h3::client::builder()
            .max_field_section_size(self.inner.max_response_header_bytes)
            .build::<_, _, bytes::Bytes>(Watched::new(quic.clone(), observer))
            .await;
        let (mut driver, sender) = match built {
            Ok(built) => built,
            Err(error) => {
                quic.close(h3_no_error(), b"");
                return Err(Error::connect(origin, error));
            }
        };

        if let Some(accepted) = zero_rtt_accepted {
            let shared = Arc::clone(&shared);
            runtime.spawn(async move {
                let accepted = match tokio::time::timeout(handshake_timeout, accepted).await {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        shared.quic().close(h3_no_error(), b"handshake timed out");
                        false
                    }
                };
                let outcome = if shared.quic().close_reason().is_some() {
                    Handshake::Failed
                } else if accepted {
                    Handshake::Confirmed
                } else {
                    Handshake::Rejected
                };
                tracing::debug!(origin = %shared.origin(), ?outcome, "0-RTT handshake finished");
                // Published before the close below, so requests failing
                // from that close can tell "rejected, unprocessed" apart.
                shared.set_handshake(outcome);
                if outcome == Handshake::Rejected {
                    // h3's control and QPACK streams went in the rejected
                    // early data and are gone: this h3 connection cannot
                    // work. Its requests go elsewhere.
                    shared.to_closed();
                    shared.quic().close(h3_no_error(), b"0-RTT rejected");
                }
            });
        }

        let abort = Arc::new(tokio::sync::Notify::new());
        let task_abort = Arc::clone(&abort);
        let task_shared = Arc::clone(&shared);
        runtime.spawn(async move {
            let quic = task_shared.quic().clone();
            tokio::select! {
                error = driver.wait_idle() => {
                    tracing::debug!(origin = %task_shared.origin(), %error, "HTTP/3 connection closed");
                }
                error = quic.closed() => {
                    tracing::debug!(origin = %task_shared.origin(), %error, "QUIC connection closed");
                }
                () = task_abort.notified() => {
                    tracing::debug!(origin = %task_shared.origin(), "HTTP/3 connection aborted");
                    quic.close(h3_no_error(), b"aborted");
                }
            }
            task_shared.to_closed();
        });
        tracing::debug!(%origin, %addr, zero_rtt, "HTTP/3 connection open");
        Ok(Http3Connection::new(
            shared,
            sender,
            abort,
            zero_rtt,
            handshake_timeout,
        ))
    }
}

/// Configures an [`Http3`] transport. Every setter checks its input at
/// [`build`](Http3Builder::build), naming the field.
///
/// Defaults: bound to `0.0.0.0:0`, the webpki roots, 0-RTT on, 100
/// concurrent streams per connection, keep-alive every 15 s, idle timeout
/// 60 s, handshake timeout 5 s, response headers up to 64 KiB.
#[derive(Debug, Clone)]
pub struct Http3Builder {
    bind: SocketAddr,
    tls: Option<TlsConfig>,
    keep_alive_interval: Option<Duration>,
    idle_timeout: Duration,
    max_concurrent_streams: usize,
    zero_rtt: bool,
    handshake_timeout: Duration,
    max_response_header_bytes: u64,
}

impl Default for Http3Builder {
    fn default() -> Self {
        Http3Builder {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            tls: None,
            keep_alive_interval: Some(DEFAULT_KEEP_ALIVE),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            zero_rtt: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
        }
    }
}

impl Http3Builder {
    /// The local address of the endpoint's UDP socket (default
    /// `0.0.0.0:0`: IPv4, any port). Bind `[::]:0` to reach IPv6 origins
    /// (IPv4 ones too, where the OS allows dual-stack sockets).
    pub fn bind_address(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The trust and identity for origins without their own
    /// ([`Origin::with_tls`] always wins). Its session store keeps the
    /// tickets that make 0-RTT possible.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How often to send a QUIC PING on an otherwise quiet connection, so
    /// neither the peer's idle timeout nor a NAT mapping expires (default
    /// 15 s; `None` sends none). Must be shorter than the idle timeout.
    pub fn keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// Close a connection that received nothing for this long (default
    /// 60 s). QUIC uses the smaller of both peers' values.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How many requests one connection carries at once (default 100, the
    /// usual server limit). Also what the pool expects of a connection it
    /// has not opened yet. Set it to your origins' stream limit: quinn
    /// cannot tell the pool the peer's limit.
    pub fn max_concurrent_streams(mut self, streams: usize) -> Self {
        self.max_concurrent_streams = streams;
        self
    }

    /// Whether to send replay-safe requests as TLS early data on
    /// connections to servers that issued a resumption ticket (default on).
    pub fn zero_rtt(mut self, enabled: bool) -> Self {
        self.zero_rtt = enabled;
        self
    }

    /// How long the QUIC handshake may take (default 5 s), so a server that
    /// does not answer fails the connect fast rather than after the idle
    /// timeout. The pool's own connect timeout applies as well.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Caps a response's header section, in bytes as QPACK decodes it
    /// (default 64 KiB). A larger one fails its request.
    pub fn max_response_header_bytes(mut self, bytes: u64) -> Self {
        self.max_response_header_bytes = bytes;
        self
    }

    /// Checks the settings and binds the endpoint's socket. Must run inside
    /// a tokio runtime ([`Error::NoRuntime`] otherwise).
    pub fn build(self) -> Result<Http3, Error> {
        if self.max_concurrent_streams == 0 {
            return Err(Error::config(
                "max_concurrent_streams",
                self.max_concurrent_streams,
                "must be at least 1",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(Error::config(
                "idle_timeout",
                self.idle_timeout,
                "must be above zero",
            ));
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| Error::config("idle_timeout", self.idle_timeout, "too large for QUIC"))?;
        if let Some(interval) = self.keep_alive_interval {
            if interval.is_zero() || interval >= self.idle_timeout {
                return Err(Error::config(
                    "keep_alive_interval",
                    interval,
                    "must be above zero and shorter than idle_timeout",
                ));
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::config(
                "handshake_timeout",
                self.handshake_timeout,
                "must be above zero",
            ));
        }
        if self.max_response_header_bytes == 0 {
            return Err(Error::config(
                "max_response_header_bytes",
                self.max_response_header_bytes,
                "must be above zero",
            ));
        }
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;

        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(self.keep_alive_interval)
            .max_idle_timeout(Some(idle))
            // HTTP/3 servers never open bidirectional streams (RFC 9114 §6.1).
            .max_concurrent_bidi_streams(0u32.into());
        let endpoint = quinn::Endpoint::client(self.bind).map_err(|e| {
            Error::config(
                "bind_address",
                format_args!("{} ({e})", self.bind),
                "cannot bind a UDP socket there",
            )
        })?;
        Ok(Http3 {
            inner: Arc::new(Inner {
                endpoint,
                tls: TransportTls::new(self.tls),
                client_configs: Mutex::new(HashMap::new()),
                transport_config: Arc::new(transport),
                max_concurrent_streams: self.max_concurrent_streams,
                zero_rtt: self.zero_rtt,
                handshake_timeout: self.handshake_timeout,
                max_response_header_bytes: self.max_response_header_bytes,
            }),
        })
    }
}
