//! Test certificates, generated once per test binary: a CA, a server
//! certificate it signed for `localhost` and 127.0.0.1, and a client
//! certificate for mutual TLS.

use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Generated {
    ca_pem: String,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn generated() -> &'static Generated {
    static CERTS: OnceLock<Generated> = OnceLock::new();
    CERTS.get_or_init(|| {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgepool test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let client_params =
            CertificateParams::new(vec!["proxy.test".to_string()]).expect("client params");
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        Generated {
            ca_pem: ca_cert.pem(),
            server_cert_der: server_cert.der().to_vec(),
            server_key_der: server_key.serialize_der(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    })
}

/// The test CA's certificate, PEM: add it to a client's roots to trust
/// every [`TestOrigin`](super::TestOrigin) with TLS.
pub fn ca_pem() -> String {
    generated().ca_pem.clone()
}

/// A client certificate chain and its key (PEM), signed by the test CA, for
/// origins started with `require_client_cert`.
pub fn client_identity_pem() -> (String, String) {
    let g = generated();
    (g.client_cert_pem.clone(), g.client_key_pem.clone())
}

/// An edgepool TLS configuration that trusts only the test CA.
#[cfg(feature = "tls")]
pub fn test_ca_tls() -> edgepool::transport::tls::TlsConfig {
    edgepool::transport::tls::TlsConfig::builder()
        .webpki_roots(false)
        .add_ca_pem(ca_pem().as_bytes())
        .expect("test CA is valid")
        .build()
        .expect("test TLS config")
}

/// The rustls server configuration a TLS [`TestOrigin`](super::TestOrigin) uses.
#[cfg(feature = "tls")]
pub fn server_config(
    alpn: Vec<Vec<u8>>,
    require_client_cert: bool,
) -> std::sync::Arc<rustls::ServerConfig> {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let g = generated();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(g.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA root");
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(g.server_key_der.clone()));
    let mut config = builder
        .with_single_cert(vec![CertificateDer::from(g.server_cert_der.clone())], key)
        .expect("server certificate");
    config.alpn_protocols = alpn;
    Arc::new(config)
}
