//! Certificates made at startup: a private CA, and a server certificate it
//! signed for `localhost` and 127.0.0.1. Clients trust the CA through
//! edgepool's own TLS configuration; verification is never turned off.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// The CA (for clients) and the server's identity (for the origin).
pub struct Certs {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate, DER.
    pub server_cert: CertificateDer<'static>,
    /// The server certificate's private key, PKCS#8 DER.
    pub server_key: PrivateKeyDer<'static>,
}

impl Certs {
    /// A rustls server configuration presenting the server certificate
    /// (ring provider, TLS 1.3 and 1.2), offering `alpn` in that order.
    pub fn server_config(&self, alpn: Vec<Vec<u8>>) -> Result<ServerConfig, rustls::Error> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![self.server_cert.clone()], self.server_key.clone_key())?;
        config.alpn_protocols = alpn;
        Ok(config)
    }

    /// Generates fresh keys and certificates. Fails only if the crypto
    /// library does, which is not expected on any supported platform.
    pub fn generate() -> Result<Certs, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "edgepool demo CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        // rcgen turns "127.0.0.1" into an IP-address SAN, "localhost" into a DNS one.
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server_params.signed_by(&server_key, &ca)?;

        Ok(Certs {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: PrivateKeyDer::from(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        })
    }
}
