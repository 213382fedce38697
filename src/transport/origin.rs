//! [`Origin`]: the pool key.
//!
//! Two requests may share a connection only if their origins are equal, and
//! equality covers everything that makes two connections not interchangeable:
//! scheme, host, port, the TLS server name (SNI) and the identity of the TLS
//! configuration (trust roots, client certificate). This is a security
//! property: a connection verified for one name is never lent for another.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use http::Uri;

use crate::Error;
#[cfg(feature = "tls")]
use crate::transport::tls::TlsConfig;

/// The scheme of an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plaintext (`http://`).
    Http,
    /// TLS (`https://`).
    Https,
}

impl Scheme {
    /// The scheme as written in a URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port used when a URI names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where connections go, and everything that decides whether two of them are
/// interchangeable. Cheap to clone (one reference count).
///
/// ```
/// use edgepool::Origin;
/// let o = Origin::parse("https://Example.com").unwrap();
/// assert_eq!(o.host(), "example.com");
/// assert_eq!(o.port(), 443);
/// assert_eq!(o.to_string(), "https://example.com:443");
/// assert!(Origin::parse("ftp://example.com").is_err());
/// ```
#[derive(Clone)]
pub struct Origin {
    inner: Arc<OriginInner>,
}

struct OriginInner {
    scheme: Scheme,
    /// Lower-cased; IPv6 literals keep their brackets, as in a URI.
    host: Box<str>,
    port: u16,
    /// TLS server name when it differs from the host.
    sni: Option<Box<str>>,
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
    /// `scheme://host:port`, made once: it is in every error and log line.
    display: Box<str>,
    /// The key's hash, made once with a process-wide random key: the pool
    /// looks an origin up on every request, and hashing the host each time
    /// cost more than the rest of the lookup. Keyed (SipHash), so origins
    /// taken from untrusted URIs cannot be chosen to collide.
    hash: u64,
}

impl Origin {
    /// Parses an origin such as `https://example.com` or `http://127.0.0.1:8080`.
    ///
    /// Only `http` and `https` are accepted; the host must be present, the port
    /// must not be 0, and there must be no user info, path, query or fragment.
    pub fn parse(s: &str) -> Result<Origin, Error> {
        let uri: Uri = s.parse().map_err(|_| invalid(s, "not a valid URI"))?;
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(invalid(s, "an origin has no path or query"));
            }
        }
        Origin::from_uri(&uri)
    }

    /// Takes the origin of a request URI (its path and query are ignored).
    ///
    /// The URI must be absolute: scheme `http` or `https` and a host.
    pub fn from_uri(uri: &Uri) -> Result<Origin, Error> {
        let text = || uri.to_string();
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(_) => return Err(invalid(&text(), "scheme must be http or https")),
            None => {
                return Err(invalid(
                    &text(),
                    "missing scheme (expected http:// or https://)",
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| invalid(&text(), "missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(&text(), "user info is not allowed in an origin"));
        }
        let host = authority.host();
        if host.is_empty() || host == "[]" {
            return Err(invalid(&text(), "missing host"));
        }
        if !is_valid_host(host) {
            return Err(invalid(&text(), "host is not a DNS name or an IP address"));
        }
        // Read the port text ourselves: `http::Uri` accepts `host:abc` and
        // `host:65536`, for which `port_u16()` is None, and falling back to
        // the default port then would send the request somewhere the URI
        // never named (found by fuzzing).
        let after_host = authority.as_str().get(host.len()..).unwrap_or("");
        let port = match after_host.strip_prefix(':') {
            None if after_host.is_empty() => scheme.default_port(),
            None => return Err(invalid(&text(), "unexpected text after the host")),
            Some("") => return Err(invalid(&text(), "empty port")),
            Some(digits) => match digits.parse::<u16>() {
                _ if !digits.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(invalid(&text(), "port is not a number"));
                }
                Ok(0) => return Err(invalid(&text(), "port 0 is not a valid port")),
                Ok(p) => p,
                Err(_) => return Err(invalid(&text(), "port is above 65535")),
            },
        };
        Ok(Origin::new(scheme, &host.to_ascii_lowercase(), port))
    }

    fn new(scheme: Scheme, host: &str, port: u16) -> Origin {
        Origin {
            inner: Arc::new(OriginInner {
                scheme,
                host: host.into(),
                port,
                sni: None,
                #[cfg(feature = "tls")]
                tls: None,
                display: format!("{}://{}:{}", scheme.as_str(), host, port).into(),
                hash: 0,
            }),
        }
        .with_hash()
    }

    fn with_hash(mut self) -> Origin {
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let hash = KEYS.get_or_init(Default::default).hash_one(self.key());
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.hash = hash;
        }
        self
    }

    /// Returns this origin with a TLS server name other than the host (for
    /// example when connecting to an IP address that serves a named
    /// certificate). The name is part of the key: origins with different SNI
    /// never share a connection.
    pub fn with_sni(&self, name: &str) -> Result<Origin, Error> {
        // A DNS name or an IP address (unbracketed: a TLS server name is
        // never bracketed); found by fuzzing that control characters and
        // ':' were accepted.
        let valid = !name.is_empty()
            && (name.parse::<std::net::IpAddr>().is_ok()
                || (!name.starts_with('[') && is_valid_host(name)));
        if !valid {
            return Err(Error::config(
                "sni",
                name,
                "not a valid DNS name or IP address",
            ));
        }
        Ok(self.rebuild(|inner| inner.sni = Some(name.to_ascii_lowercase().into())))
    }

    /// Returns this origin with its own TLS configuration (trust roots, client
    /// identity). The configuration's identity is part of the key.
    #[cfg(feature = "tls")]
    pub fn with_tls(&self, tls: TlsConfig) -> Origin {
        self.rebuild(|inner| inner.tls = Some(tls))
    }

    fn rebuild(&self, change: impl FnOnce(&mut OriginInner)) -> Origin {
        let mut inner = OriginInner {
            scheme: self.inner.scheme,
            host: self.inner.host.clone(),
            port: self.inner.port,
            sni: self.inner.sni.clone(),
            #[cfg(feature = "tls")]
            tls: self.inner.tls.clone(),
            display: self.inner.display.clone(),
            hash: 0,
        };
        change(&mut inner);
        Origin {
            inner: Arc::new(inner),
        }
        .with_hash()
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.inner.scheme
    }

    /// The host, lower-cased (IPv6 literals in brackets, as in a URI).
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The host as a socket address would take it (IPv6 without brackets).
    pub fn connect_host(&self) -> &str {
        let h = self.host();
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    }

    /// The port (the scheme's default when the URI named none).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The TLS server name: the SNI override if set, else the host.
    pub fn server_name(&self) -> &str {
        self.inner
            .sni
            .as_deref()
            .unwrap_or_else(|| self.connect_host())
    }

    /// The origin's own TLS configuration, if one was set with [`Origin::with_tls`].
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.inner.tls.as_ref()
    }

    /// `host` or `host:port` (port omitted when it is the scheme's default), as
    /// an HTTP Host header or `:authority` carries it.
    pub fn authority(&self) -> String {
        if self.port() == self.scheme().default_port() {
            self.host().to_string()
        } else {
            format!("{}:{}", self.host(), self.port())
        }
    }

    fn tls_identity(&self) -> u64 {
        #[cfg(feature = "tls")]
        {
            self.inner.tls.as_ref().map_or(0, TlsConfig::id)
        }
        #[cfg(not(feature = "tls"))]
        {
            0
        }
    }

    fn key(&self) -> (Scheme, &str, u16, Option<&str>, u64) {
        (
            self.inner.scheme,
            &self.inner.host,
            self.inner.port,
            self.inner.sni.as_deref(),
            self.tls_identity(),
        )
    }
}

/// A DNS name (letters, digits, `-`, `.`, `_`), an IPv4 address, or an IPv6
/// address in brackets. `http::Uri` accepts more (percent-escapes, sub-
/// delimiters, `[$]`), none of which can name a host to connect to or a TLS
/// server name; found by fuzzing.
fn is_valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn invalid(uri: &str, reason: &'static str) -> Error {
    Error::InvalidOrigin {
        uri: uri.to_string(),
        reason,
    }
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.key() == other.key()
    }
}

impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.inner.hash);
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.display)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Origin");
        d.field("origin", &self.inner.display);
        if let Some(sni) = &self.inner.sni {
            d.field("sni", sni);
        }
        let tls = self.tls_identity();
        if tls != 0 {
            d.field("tls_config", &tls);
        }
        d.finish()
    }
}

impl std::str::FromStr for Origin {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> &'static str {
        match Origin::parse(s) {
            Err(Error::InvalidOrigin { reason, .. }) => reason,
            other => panic!("{s}: expected InvalidOrigin, got {other:?}"),
        }
    }

    #[test]
    fn parses_defaults_and_lowercases() {
        let o = Origin::parse("HTTP://Example.COM").unwrap();
        assert_eq!(o.scheme(), Scheme::Http);
        assert_eq!(o.host(), "example.com");
        assert_eq!(o.port(), 80);
        assert_eq!(o.authority(), "example.com");
        let o = Origin::parse("https://[::1]:8443/").unwrap();
        assert_eq!(o.host(), "[::1]");
        assert_eq!(o.connect_host(), "::1");
        assert_eq!(o.port(), 8443);
        assert_eq!(o.authority(), "[::1]:8443");
        assert_eq!(o.server_name(), "::1");
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert_eq!(reason("ftp://x"), "scheme must be http or https");
        assert_eq!(reason("http://"), "not a valid URI");
        assert_eq!(reason("http://x:0"), "port 0 is not a valid port");
        assert_eq!(
            reason("example.com"),
            "missing scheme (expected http:// or https://)"
        );
        assert_eq!(
            reason("http://u:p@x"),
            "user info is not allowed in an origin"
        );
        assert_eq!(reason("http://x/path"), "an origin has no path or query");
        assert_eq!(reason("http://x:"), "empty port");
    }

    /// Regression (fuzz/origin_parse): `http::Uri` takes `host:abc` and
    /// `host:65536`, and the origin used to fall back to the default port.
    #[test]
    fn fuzz_found_unreadable_ports_are_errors_not_the_default_port() {
        for (uri, reason) in [
            ("https://pq:a/", "port is not a number"),
            ("https://10.0.0.1:+1441/", "port is not a number"),
            ("http://a:65536/", "port is above 65535"),
            ("https://10.0.0.1:443l/", "port is not a number"),
        ] {
            let parsed: Uri = match uri.parse() {
                Ok(u) => u,
                Err(_) => continue, // rejected even earlier: fine
            };
            match Origin::from_uri(&parsed) {
                Err(Error::InvalidOrigin { reason: r, .. }) => assert_eq!(r, reason, "{uri}"),
                other => panic!("{uri}: expected an error, got {other:?}"),
            }
        }
        assert_eq!(Origin::parse("http://a:8080").unwrap().port(), 8080);
    }

    /// Regression (fuzz/origin_parse): `http::Uri` takes `https://[$]/`, and
    /// the origin used to keep `[$]` as its host.
    #[test]
    fn fuzz_found_bracketed_non_ipv6_hosts_are_rejected() {
        for bad in [
            "https://[$]/",
            "http://[::1%eth0]/",
            "http://a%20b/",
            "http://a!b/",
            "http://[zz]/",
        ] {
            let uri: Result<Uri, _> = bad.parse();
            if let Ok(uri) = uri {
                assert!(Origin::from_uri(&uri).is_err(), "{bad} must be rejected");
            }
        }
        assert!(Origin::parse("http://under_score.example").is_ok());
        assert!(Origin::parse("http://[2001:db8::1]:8080").is_ok());
    }

    #[test]
    fn request_uri_keeps_only_the_origin() {
        let uri: Uri = "http://a.example:8080/p?q=1".parse().unwrap();
        let o = Origin::from_uri(&uri).unwrap();
        assert_eq!(o, Origin::parse("http://A.example:8080").unwrap());
        let rel: Uri = "/just/a/path".parse().unwrap();
        assert!(Origin::from_uri(&rel).unwrap_err().is_invalid_input());
    }

    #[test]
    fn sni_is_part_of_the_key() {
        let a = Origin::parse("https://10.0.0.1").unwrap();
        let b = a.with_sni("a.example").unwrap();
        let c = a.with_sni("b.example").unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(b, a.with_sni("A.example").unwrap());
        assert_eq!(b.server_name(), "a.example");
        assert!(a.with_sni("").is_err());
        // Found by fuzzing: control characters and ':' were accepted.
        for bad in ["a\u{7}b", "a:b", "[::1]", "a b", "a/b"] {
            assert!(a.with_sni(bad).is_err(), "{bad:?}");
        }
        assert!(a.with_sni("::1").is_ok());
    }
}
