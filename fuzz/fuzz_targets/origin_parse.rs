//! Origin parsing: `Origin::parse`, `Origin::from_uri` and `with_sni` never
//! panic on any input, and every origin they accept is a well-formed pool
//! key: its Display form parses back to an equal origin (same hash), scheme
//! and host are case-insensitive, and an SNI override is part of the key.
//!
//! Input: the bytes as one string (lossy UTF-8); the same bytes as an
//! `http::Uri`; and, split at the first `\n`, an origin and an SNI name.
#![no_main]

use std::hash::{BuildHasher, Hash, Hasher};

use edgepool::{Origin, Scheme};
use http::Uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = check_text(&text);

    // The same bytes as a URI, as a request would carry it.
    if let Ok(uri) = Uri::try_from(data) {
        check_uri(&uri);
    }

    // `origin\nsni`.
    if let Some((origin, sni)) = text.split_once('\n') {
        if let Ok(o) = check_text(origin) {
            check_sni(&o, sni);
        }
    }
});

/// Parses `s`; if it is accepted, checks the origin; returns it.
fn check_text(s: &str) -> Result<Origin, ()> {
    let parsed = Origin::parse(s);
    // `FromStr` is the same parser.
    assert_eq!(
        parsed.is_ok(),
        s.parse::<Origin>().is_ok(),
        "parse and FromStr disagree on {s:?}"
    );
    let uri = s.parse::<Uri>();
    let origin = match parsed {
        Ok(o) => o,
        Err(e) => {
            // The error must render (it carries the input).
            let _ = e.to_string();
            let _ = format!("{e:?}");
            return Err(());
        }
    };
    check_origin(&origin, s);
    // parse = URI parse + "no path" + from_uri: the URI must agree.
    let uri = uri.unwrap_or_else(|e| panic!("{s:?}: parse accepted what Uri rejects: {e}"));
    let from_uri = Origin::from_uri(&uri)
        .unwrap_or_else(|e| panic!("{s:?}: parse accepted it, from_uri rejected it: {e}"));
    assert_eq!(from_uri, origin, "{s:?}: from_uri and parse differ");
    check_authority(&uri, &origin);
    // Scheme and host are case-insensitive (ports and separators have no case).
    let upper = s.to_ascii_uppercase();
    match Origin::parse(&upper) {
        Ok(u) => assert_eq!(u, origin, "{s:?} and {upper:?} give different keys"),
        Err(e) => panic!("{s:?} parses but its upper-case form {upper:?} does not: {e}"),
    }
    Ok(origin)
}

fn check_uri(uri: &Uri) {
    match Origin::from_uri(uri) {
        Ok(o) => {
            check_origin(&o, &uri.to_string());
            check_authority(uri, &o);
            // The path and query of a request URI are ignored: the origin is
            // the same as the one parsed from scheme://authority alone.
            let scheme = uri.scheme_str().expect("accepted without a scheme");
            let authority = uri.authority().expect("accepted without an authority");
            let bare = format!("{scheme}://{authority}");
            let p = Origin::parse(&bare)
                .unwrap_or_else(|e| panic!("{uri}: from_uri accepted it, {bare:?} fails: {e}"));
            assert_eq!(p, o, "{uri}: from_uri differs from parse({bare:?})");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The origin is exactly what the URI's authority names: nothing of the
/// authority is dropped (a port that is not a u16, junk after a literal) and
/// the host is a name or a bracketed IPv6 address.
fn check_authority(uri: &Uri, o: &Origin) {
    let auth = uri.authority().expect("accepted without an authority").as_str();
    let lower = auth.to_ascii_lowercase();
    let host = o.host();
    let rest = lower
        .strip_prefix(host)
        .unwrap_or_else(|| panic!("{uri}: authority {auth:?} does not start with host {host:?}"));
    if rest.is_empty() {
        assert_eq!(o.port(), o.scheme().default_port(), "{uri}: no port, not the default");
    } else {
        let digits = rest
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("{uri}: authority {auth:?} has {rest:?} after host {host:?}"));
        assert!(
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
            "{uri}: port {digits:?} is not a number, origin {o} has port {}",
            o.port()
        );
        assert_eq!(
            digits.parse::<u16>().ok(),
            Some(o.port()),
            "{uri}: port {digits:?} read as {}",
            o.port()
        );
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or_else(|| panic!("{uri}: host {host:?}"));
        assert!(
            inner.parse::<std::net::Ipv6Addr>().is_ok(),
            "{uri}: bracketed host {host:?} is not an IPv6 address"
        );
    } else {
        assert!(!host.contains(['[', ']']), "{uri}: host {host:?} has brackets");
    }
}

/// What every accepted origin must satisfy.
fn check_origin(o: &Origin, input: &str) {
    let host = o.host();
    assert!(!host.is_empty() && host != "[]", "{input:?}: empty host");
    assert_ne!(o.port(), 0, "{input:?}: port 0 accepted");
    assert_eq!(
        host,
        host.to_ascii_lowercase(),
        "{input:?}: host not lower-cased"
    );
    assert!(!host.contains('@'), "{input:?}: user info in the host");
    let scheme = match o.scheme() {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    assert_eq!(scheme, o.scheme().as_str());

    // Display is scheme://host:port, and parses back to the same key.
    let shown = o.to_string();
    assert_eq!(shown, format!("{scheme}://{host}:{}", o.port()), "{input:?}");
    let again = Origin::parse(&shown)
        .unwrap_or_else(|e| panic!("{input:?}: Display {shown:?} does not re-parse: {e}"));
    assert_eq!(&again, o, "{input:?}: Display {shown:?} re-parses to another key");
    assert_eq!(again.to_string(), shown, "{input:?}: Display not stable");
    assert_eq!(again.host(), host);
    assert_eq!(again.port(), o.port());
    assert_eq!(again.scheme(), o.scheme());
    assert_eq!(hash(&again), hash(o), "{input:?}: equal origins, different hashes");

    // authority(): the port is omitted exactly when it is the default, and
    // scheme://authority is the same origin.
    let authority = o.authority();
    if o.port() == o.scheme().default_port() {
        assert_eq!(authority, host);
    } else {
        assert_eq!(authority, format!("{host}:{}", o.port()));
    }
    let via_authority = Origin::parse(&format!("{scheme}://{authority}"))
        .unwrap_or_else(|e| panic!("{input:?}: authority {authority:?} does not re-parse: {e}"));
    assert_eq!(&via_authority, o);

    // connect_host() drops the brackets of an IPv6 literal only.
    let ch = o.connect_host();
    if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
        assert_eq!(ch, &host[1..host.len() - 1]);
    } else {
        assert_eq!(ch, host);
    }
    assert_eq!(o.server_name(), ch, "no SNI override: server name is the host");
    let _ = format!("{o:?}");
}

fn check_sni(o: &Origin, name: &str) {
    match o.with_sni(name) {
        Ok(s) => {
            assert!(!name.is_empty() && !name.contains(['/', ' ', '@']));
            let lower = name.to_ascii_lowercase();
            assert_eq!(s.server_name(), lower, "SNI not lower-cased");
            // The SNI is part of the key, not of the address.
            assert_ne!(&s, o, "an SNI override must change the key");
            assert_eq!(s.host(), o.host());
            assert_eq!(s.port(), o.port());
            assert_eq!(s.scheme(), o.scheme());
            assert_eq!(s.to_string(), o.to_string());
            // Case-insensitive, and repeatable.
            let upper = o
                .with_sni(&name.to_ascii_uppercase())
                .expect("upper-case SNI rejected");
            assert_eq!(upper, s);
            assert_eq!(hash(&upper), hash(&s));
            // Overriding again replaces the name.
            let other = s.with_sni("other.invalid").unwrap();
            assert_eq!(other.server_name(), "other.invalid");
            assert_eq!(other == s, lower == "other.invalid");
            let _ = format!("{s:?}");
        }
        Err(e) => {
            assert!(
                name.is_empty() || name.contains(['/', ' ', '@']),
                "SNI {name:?} rejected: {e}"
            );
        }
    }
}

fn hash(o: &Origin) -> u64 {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    o.hash(&mut h);
    h.finish()
}
