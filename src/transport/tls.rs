//! TLS for origin connections: rustls with the ring provider.
//!
//! A [`TlsConfig`] is the trust and identity a pool uses to talk to an
//! origin. It is built once and shared: its three precomputed rustls client
//! configurations (one per ALPN offer) share one session-resumption store, so
//! a second connection to the same server resumes the first one's session
//! whichever protocol it asks for, and pays one round trip less.
//!
//! There is deliberately no way to turn certificate verification off: a pool
//! lends one verified connection to many requests, so a verification hole
//! would be shared as widely as the connection is.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{Error, Origin};

/// Source of [`TlsConfig::id`]. Starts at 1 because 0 means "no TLS
/// configuration of its own" in the pool key.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Which TLS configuration a transport uses for an `https://` origin: the
/// origin's own (it is part of the pool key, so it always wins), else the
/// one the transport was given, else the webpki roots. One type for every
/// transport, so they cannot disagree on that order.
// Only the transports use it; a build with `tls` alone has none.
#[cfg_attr(
    not(any(feature = "http1", feature = "http2", feature = "http3")),
    allow(dead_code)
)]
#[derive(Clone, Debug, Default)]
pub(crate) struct TransportTls {
    configured: Option<TlsConfig>,
    /// The webpki-roots configuration, built on first use by an `https://`
    /// origin (and shared by clones), so plaintext-only users never pay for it.
    default_roots: Arc<OnceLock<Result<TlsConfig, Error>>>,
}

#[cfg_attr(
    not(any(feature = "http1", feature = "http2", feature = "http3")),
    allow(dead_code)
)]
impl TransportTls {
    /// Uses `configured` for origins without their own; `None`: webpki roots.
    pub(crate) fn new(configured: Option<TlsConfig>) -> Self {
        TransportTls {
            configured,
            default_roots: Arc::default(),
        }
    }

    /// The configuration for `origin`.
    pub(crate) fn for_origin(&self, origin: &Origin) -> Result<TlsConfig, Error> {
        if let Some(tls) = origin.tls() {
            return Ok(tls.clone());
        }
        if let Some(tls) = &self.configured {
            return Ok(tls.clone());
        }
        self.default_roots
            .get_or_init(TlsConfig::default_roots)
            .clone()
    }
}

/// The resumption cache size used unless [`TlsConfigBuilder::session_cache_size`] says otherwise.
const DEFAULT_SESSION_CACHE_SIZE: usize = 256;

/// Which application protocols a TLS handshake offers via ALPN.
///
/// The offer decides what the connection will speak, so it is chosen by the
/// transport, not by the user: an HTTP/1.1 transport must never end up on a
/// connection where the server picked `h2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Offer `http/1.1` only.
    Http1,
    /// Offer `h2` only.
    Http2,
    /// Offer `h2` first and `http/1.1` as fallback (the server chooses).
    Http2OrHttp1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Http2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The TLS trust and identity used for connections to an origin. Cheap to
/// clone (one reference count), so it can sit in every [`Origin`] that uses it.
///
/// Each built configuration has its own [`id`](TlsConfig::id), and the id is
/// part of the pool key: connections made under different trust settings
/// are never lent to each other, even for the same host.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    http2_or_http1: Arc<ClientConfig>,
}

impl TlsConfig {
    /// Starts a configuration; see [`TlsConfigBuilder`] for the defaults.
    pub fn builder() -> TlsConfigBuilder {
        TlsConfigBuilder::new()
    }

    /// The public web's trust (the webpki root set), no client certificate and
    /// the default resumption cache: what an origin on the internet needs.
    pub fn default_roots() -> Result<TlsConfig, Error> {
        TlsConfig::builder().build()
    }

    /// A process-unique, nonzero identity, so the pool key can tell two
    /// configurations apart without comparing their contents. Clones share it.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The rustls configuration offering `alpn`, for transports that drive
    /// rustls themselves (QUIC, for one). All variants share one resumption
    /// store.
    pub fn client_config(&self, alpn: Alpn) -> Arc<ClientConfig> {
        match alpn {
            Alpn::Http1 => self.inner.http1.clone(),
            Alpn::Http2 => self.inner.http2.clone(),
            Alpn::Http2OrHttp1 => self.inner.http2_or_http1.clone(),
        }
    }

    /// Runs the TLS handshake over an open byte stream, verifying the server
    /// against `origin.server_name()` (the SNI override, or the host).
    ///
    /// Returns the stream and the protocol the server picked from the ALPN
    /// offer (`None` when it picked none, as servers without ALPN support do).
    /// A server name that cannot be a TLS name is invalid input; a failed
    /// handshake (an untrusted certificate, a name mismatch, no common
    /// protocol version) is [`Error::Connect`] with rustls's reason in it.
    pub async fn connect<IO>(
        &self,
        io: IO,
        origin: &Origin,
        alpn: Alpn,
    ) -> Result<(TlsStream<IO>, Option<Vec<u8>>), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let name = server_name(origin)?;
        let connector = TlsConnector::from(self.client_config(alpn));
        let stream = connector
            .connect(name, io)
            .await
            .map_err(|source| {
                tracing::debug!(%origin, server_name = origin.server_name(), error = %source, "TLS handshake failed");
                Error::connect(
                    origin,
                    HandshakeError {
                        server_name: origin.server_name().to_string(),
                        source,
                    },
                )
            })?;
        let (_, session) = stream.get_ref();
        let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
        tracing::debug!(
            %origin,
            server_name = origin.server_name(),
            alpn = negotiated.as_deref().map(String::from_utf8_lossy).as_deref(),
            resumed = matches!(session.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            "TLS handshake done"
        );
        Ok((stream, negotiated))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").field("id", &self.id()).finish()
    }
}

/// Turns the origin's TLS name into what rustls verifies against.
fn server_name(origin: &Origin) -> Result<ServerName<'static>, Error> {
    let name = origin.server_name();
    ServerName::try_from(name.to_string()).map_err(|_| {
        if name == origin.connect_host() {
            Error::InvalidOrigin {
                uri: origin.to_string(),
                reason: "the host is not a valid TLS server name (a DNS name or an IP address)",
            }
        } else {
            Error::config(
                "sni",
                name,
                "not a valid TLS server name (a DNS name or an IP address)",
            )
        }
    })
}

/// A failed TLS handshake, kept as the error's source so callers can
/// downcast to the `std::io::Error` (and from it to the `rustls::Error`).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake for server name {server_name:?} failed: {source}")]
struct HandshakeError {
    server_name: String,
    #[source]
    source: std::io::Error,
}

/// Builds a [`TlsConfig`]. Fallible steps fail at the step that got bad
/// input, naming the field, so a misconfigured proxy says what is wrong at
/// startup rather than at its first connection.
///
/// Defaults: the webpki roots are trusted, no client certificate, a
/// resumption cache of 256 sessions, TLS 1.2 and 1.3.
pub struct TlsConfigBuilder {
    provider: Arc<CryptoProvider>,
    webpki_roots: bool,
    extra_roots: RootCertStore,
    identity: Option<Arc<CertifiedKey>>,
    session_cache_size: usize,
}

impl TlsConfigBuilder {
    fn new() -> Self {
        TlsConfigBuilder {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            webpki_roots: true,
            extra_roots: RootCertStore::empty(),
            identity: None,
            session_cache_size: DEFAULT_SESSION_CACHE_SIZE,
        }
    }

    /// Whether to trust the public web's roots (Mozilla's set, compiled in).
    /// Turn it off for a private origin fleet whose CA you add with
    /// [`add_ca_pem`](Self::add_ca_pem), so a publicly trusted certificate
    /// cannot impersonate it.
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.webpki_roots = enabled;
        self
    }

    /// Trusts every `CERTIFICATE` block in `pem` as a root (other blocks are
    /// skipped). Rejects, as field `ca_pem`, input with no certificate at all
    /// or with one that does not parse, since silently trusting less than
    /// intended would surface only as handshake failures later.
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        let mut added = 0usize;
        for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = item.map_err(|e| {
                Error::config(
                    "ca_pem",
                    format_args!("PEM block #{} ({e})", index + 1),
                    "not valid PEM",
                )
            })?;
            self.extra_roots.add(der).map_err(|e| {
                Error::config(
                    "ca_pem",
                    format_args!("certificate #{} ({e})", index + 1),
                    "not a usable X.509 CA certificate",
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::config(
                "ca_pem",
                format_args!("{} bytes of PEM", pem.len()),
                "contains no CERTIFICATE block",
            ));
        }
        Ok(self)
    }

    /// Presents a client certificate (mutual TLS), for origins that only
    /// accept known proxies. `cert_chain_pem` holds the leaf first, then any
    /// intermediates; `key_pem` holds its private key (PKCS#8, PKCS#1 or
    /// SEC1). The key is checked against the leaf here, so a mismatched pair
    /// fails now (field `client_identity`) instead of at every handshake.
    pub fn client_identity_pem(
        mut self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::config("client_cert_pem", format_args!("{e}"), "not valid PEM"))?;
        if chain.is_empty() {
            return Err(Error::config(
                "client_cert_pem",
                format_args!("{} bytes of PEM", cert_chain_pem.len()),
                "contains no CERTIFICATE block",
            ));
        }
        // The key's own bytes never go into an error message.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
            Error::config(
                "client_key_pem",
                format_args!("{} bytes of PEM", key_pem.len()),
                "contains no readable PKCS#8, PKCS#1 or SEC1 private key",
            )
        })?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| {
            Error::config(
                "client_identity",
                format_args!("{e}"),
                "the key is not usable or does not belong to the first certificate",
            )
        })?;
        self.identity = Some(Arc::new(certified));
        Ok(self)
    }

    /// How many servers' sessions to remember for resumption (shared by all
    /// connections made with this configuration). Resumption saves a round
    /// trip and the server's signature on every reconnect; 0 disables it.
    pub fn session_cache_size(mut self, sessions: usize) -> Self {
        self.session_cache_size = sessions;
        self
    }

    /// Builds the configuration. Fails (field `roots`) when nothing is
    /// trusted, because no server could then ever be verified.
    pub fn build(self) -> Result<TlsConfig, Error> {
        let mut roots = self.extra_roots;
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if roots.is_empty() {
            return Err(Error::config(
                "roots",
                format_args!("webpki_roots(false) and no add_ca_pem"),
                "nothing is trusted, so no server could be verified",
            ));
        }
        let builder = ClientConfig::builder_with_provider(self.provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                Error::config(
                    "protocol_versions",
                    format_args!("{e}"),
                    "the crypto provider supports none of the safe TLS versions",
                )
            })?
            .with_root_certificates(roots);
        let mut base = match self.identity {
            Some(identity) => {
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
            }
            None => builder.with_no_client_auth(),
        };
        // One store, cloned into every variant: `Resumption` holds it by `Arc`.
        base.resumption = if self.session_cache_size == 0 {
            Resumption::disabled()
        } else {
            Resumption::in_memory_sessions(self.session_cache_size)
        };
        let variant = |alpn: Alpn| {
            let mut config = base.clone();
            config.alpn_protocols = alpn.protocols();
            Arc::new(config)
        };
        Ok(TlsConfig {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                http1: variant(Alpn::Http1),
                http2: variant(Alpn::Http2),
                http2_or_http1: variant(Alpn::Http2OrHttp1),
            }),
        })
    }
}

impl Default for TlsConfigBuilder {
    fn default() -> Self {
        TlsConfigBuilder::new()
    }
}

impl fmt::Debug for TlsConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigBuilder")
            .field("webpki_roots", &self.webpki_roots)
            .field("extra_roots", &self.extra_roots.len())
            .field("client_identity", &self.identity.is_some())
            .field("session_cache_size", &self.session_cache_size)
            .finish()
    }
}

/// Certificates for unit tests: a CA, a server certificate it signed for
/// `localhost` and 127.0.0.1, and a client certificate.
#[cfg(test)]
pub(crate) mod test_certs {
    use std::sync::{Arc, OnceLock};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    pub(crate) struct TestCerts {
        pub(crate) ca_pem: String,
        pub(crate) server_cert: CertificateDer<'static>,
        pub(crate) server_key: Vec<u8>,
        pub(crate) client_cert_pem: String,
        pub(crate) client_key_pem: String,
    }

    pub(crate) fn get() -> &'static TestCerts {
        static CERTS: OnceLock<TestCerts> = OnceLock::new();
        CERTS.get_or_init(|| {
            let ca_key = KeyPair::generate().expect("CA key");
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
            let issuer = Issuer::new(ca_params, ca_key);

            let server_key = KeyPair::generate().expect("server key");
            let server_params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("params");
            let server_cert = server_params
                .signed_by(&server_key, &issuer)
                .expect("server cert");

            let client_key = KeyPair::generate().expect("client key");
            let client_params =
                CertificateParams::new(vec!["client.test".to_string()]).expect("params");
            let client_cert = client_params
                .signed_by(&client_key, &issuer)
                .expect("client cert");

            TestCerts {
                ca_pem: ca_cert.pem(),
                server_cert: server_cert.der().clone(),
                server_key: server_key.serialize_der(),
                client_cert_pem: client_cert.pem(),
                client_key_pem: client_key.serialize_pem(),
            }
        })
    }

    /// A rustls server config with the test server certificate, offering
    /// `h2` and `http/1.1`. One shared instance, so its session store lets
    /// clients resume across test servers.
    pub(crate) fn server_config() -> Arc<rustls::ServerConfig> {
        static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
        CONFIG.get_or_init(build_server_config).clone()
    }

    fn build_server_config() -> Arc<rustls::ServerConfig> {
        let certs = get();
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(certs.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certs.server_cert.clone()], key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn field_of(result: Result<impl fmt::Debug, Error>) -> &'static str {
        match result {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    fn test_ca_config() -> TlsConfig {
        TlsConfig::builder()
            .webpki_roots(false)
            .add_ca_pem(test_certs::get().ca_pem.as_bytes())
            .expect("test CA")
            .build()
            .expect("config")
    }

    #[test]
    fn ids_are_unique_nonzero_and_shared_by_clones() {
        let a = TlsConfig::default_roots().expect("default");
        let b = TlsConfig::default_roots().expect("default");
        assert_ne!(a.id(), 0);
        assert_ne!(b.id(), 0);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.clone().id(), a.id());
        assert!(format!("{a:?}").contains(&a.id().to_string()));
    }

    #[test]
    fn tls_config_is_part_of_the_origin_key() {
        let a = TlsConfig::default_roots().expect("default");
        let b = TlsConfig::default_roots().expect("default");
        let origin = Origin::parse("https://example.com").expect("origin");
        assert_ne!(origin.with_tls(a.clone()), origin.with_tls(b));
        assert_eq!(origin.with_tls(a.clone()), origin.with_tls(a));
    }

    #[test]
    fn alpn_variants_offer_the_right_protocols() {
        let config = TlsConfig::default_roots().expect("default");
        assert_eq!(
            config.client_config(Alpn::Http1).alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert_eq!(
            config.client_config(Alpn::Http2).alpn_protocols,
            vec![b"h2".to_vec()]
        );
        assert_eq!(
            config.client_config(Alpn::Http2OrHttp1).alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Precomputed, not rebuilt per call.
        assert!(Arc::ptr_eq(
            &config.client_config(Alpn::Http1),
            &config.client_config(Alpn::Http1)
        ));
    }

    #[test]
    fn no_roots_at_all_is_rejected() {
        assert_eq!(
            field_of(TlsConfig::builder().webpki_roots(false).build()),
            "roots"
        );
        assert!(
            TlsConfig::builder()
                .webpki_roots(false)
                .session_cache_size(0)
                .build()
                .is_err()
        );
    }

    #[test]
    fn ca_pem_must_hold_valid_certificates() {
        assert_eq!(field_of(TlsConfig::builder().add_ca_pem(b"")), "ca_pem");
        assert_eq!(
            field_of(TlsConfig::builder().add_ca_pem(b"not pem at all")),
            "ca_pem"
        );
        // A private key alone holds no certificate.
        let key_only = test_certs::get().client_key_pem.as_bytes();
        assert_eq!(
            field_of(TlsConfig::builder().add_ca_pem(key_only)),
            "ca_pem"
        );
        // Well-formed PEM whose contents are not a certificate.
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        let err = TlsConfig::builder()
            .add_ca_pem(garbage)
            .expect_err("garbage");
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("ca_pem"), "{err}");
        // A bundle: every certificate is added.
        let bundle = format!("{0}\n{0}", test_certs::get().ca_pem);
        let builder = TlsConfig::builder()
            .add_ca_pem(bundle.as_bytes())
            .expect("bundle");
        assert_eq!(builder.extra_roots.len(), 2);
    }

    #[test]
    fn client_identity_is_checked_when_given() {
        let certs = test_certs::get();
        let ok = TlsConfig::builder()
            .client_identity_pem(
                certs.client_cert_pem.as_bytes(),
                certs.client_key_pem.as_bytes(),
            )
            .expect("identity");
        assert!(ok.build().is_ok());
        assert_eq!(
            field_of(
                TlsConfig::builder().client_identity_pem(b"", certs.client_key_pem.as_bytes())
            ),
            "client_cert_pem"
        );
        assert_eq!(
            field_of(
                TlsConfig::builder().client_identity_pem(certs.client_cert_pem.as_bytes(), b"nope")
            ),
            "client_key_pem"
        );
        // A key that belongs to another certificate.
        let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        assert_eq!(
            field_of(
                TlsConfig::builder()
                    .client_identity_pem(certs.client_cert_pem.as_bytes(), other_key.as_bytes())
            ),
            "client_identity"
        );
    }

    #[tokio::test]
    async fn invalid_server_name_is_invalid_input() {
        let config = test_ca_config();
        let origin = Origin::parse("https://127.0.0.1:443")
            .expect("origin")
            .with_sni("bad..name")
            .expect("sni accepted by Origin");
        let (client, _server) = tokio::io::duplex(1024);
        let err = config
            .connect(client, &origin, Alpn::Http1)
            .await
            .expect_err("bad name");
        assert!(err.is_invalid_input(), "{err:?}");
        assert!(err.to_string().contains("bad..name"), "{err}");
    }

    /// Runs a TLS server on one end of an in-memory pipe; it writes `hi` once
    /// the handshake is done so the client also reads the session tickets.
    fn serve_once() -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(test_certs::server_config());
        let task = tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(server).await {
                let _ = tls.write_all(b"hi").await;
                let _ = tls.flush().await;
                let mut sink = [0u8; 16];
                let _ = tls.read(&mut sink).await;
            }
        });
        (client, task)
    }

    async fn handshake(
        config: &TlsConfig,
        origin: &Origin,
        alpn: Alpn,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        let (io, server) = serve_once();
        let (mut tls, negotiated) = config.connect(io, origin, alpn).await?;
        let mut hi = [0u8; 2];
        tls.read_exact(&mut hi).await.expect("server greeting");
        assert_eq!(&hi, b"hi");
        let resumed = matches!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        drop(tls);
        server.abort();
        Ok((resumed, negotiated))
    }

    #[tokio::test]
    async fn handshake_negotiates_alpn_and_resumes_across_variants() {
        let config = test_ca_config();
        let origin = Origin::parse("https://127.0.0.1:443").expect("origin");
        let (resumed, alpn) = handshake(&config, &origin, Alpn::Http1)
            .await
            .expect("first");
        assert!(!resumed);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let (resumed, alpn) = handshake(&config, &origin, Alpn::Http2)
            .await
            .expect("second");
        assert!(
            resumed,
            "the h2 variant should resume the http/1.1 variant's session"
        );
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let (_, alpn) = handshake(&config, &origin, Alpn::Http2OrHttp1)
            .await
            .expect("third");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        // With the cache disabled nothing resumes.
        let no_cache = TlsConfig::builder()
            .webpki_roots(false)
            .add_ca_pem(test_certs::get().ca_pem.as_bytes())
            .expect("ca")
            .session_cache_size(0)
            .build()
            .expect("config");
        assert!(
            !handshake(&no_cache, &origin, Alpn::Http1)
                .await
                .expect("a")
                .0
        );
        assert!(
            !handshake(&no_cache, &origin, Alpn::Http1)
                .await
                .expect("b")
                .0
        );
    }

    #[tokio::test]
    async fn sni_override_is_verified() {
        let config = test_ca_config();
        let origin = Origin::parse("https://127.0.0.1:443").expect("origin");
        let named = origin.with_sni("localhost").expect("sni");
        assert!(handshake(&config, &named, Alpn::Http1).await.is_ok());
        let wrong = origin.with_sni("other.example").expect("sni");
        let err = handshake(&config, &wrong, Alpn::Http1)
            .await
            .expect_err("name mismatch");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("other.example"), "{err}");
    }

    #[tokio::test]
    async fn untrusted_server_fails_with_connect_error() {
        let config = TlsConfig::default_roots().expect("default");
        let origin = Origin::parse("https://127.0.0.1:443").expect("origin");
        let err = handshake(&config, &origin, Alpn::Http1)
            .await
            .expect_err("untrusted");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("certificate"), "{text}");
        assert!(err.is_origin_failure());
    }
}
