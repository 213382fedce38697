//! What a request becomes on an HTTP/3 wire, and whether it may go as early data.

use http::header::{CONNECTION, HOST, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Uri, Version, request};

use crate::{Error, Origin};

/// Marks a request as safe to send in TLS early data (0-RTT) although its
/// method is not one of GET, HEAD and OPTIONS. Insert it into the request's
/// extensions only if sending the request twice does no harm: early data
/// can be replayed by an attacker who captured it (RFC 8446 §8, RFC 9114
/// §10.9).
///
/// ```
/// use edgepool::transport::http3::EarlyDataSafe;
/// let mut request = http::Request::post("https://origin.example/search").body(()).unwrap();
/// request.extensions_mut().insert(EarlyDataSafe);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlyDataSafe;

/// Whether a response's request was sent as TLS early data (0-RTT), before
/// the QUIC handshake was confirmed. Every response from an HTTP/3
/// connection carries it in its extensions.
///
/// `true` means the request left before the client saw the handshake
/// complete; if the handshake completed in the microseconds between that
/// check and the stream being opened, the request may in fact have gone in
/// 1-RTT packets. The flag errs on the side that matters for replay: a
/// request reported `false` was never sent as early data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlyData(pub bool);

/// Whether `parts` may be sent before the handshake is confirmed: the safe
/// methods of RFC 9110 §9.2.1 that a proxy would forward without side effects
/// (GET, HEAD, OPTIONS), or any request the caller marked [`EarlyDataSafe`].
///
/// PUT and DELETE are idempotent but not safe; they are not sent early
/// unless marked, because a replayed early request may arrive after a later
/// one and undo it.
pub(super) fn may_send_early(parts: &request::Parts) -> bool {
    matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        || parts.extensions.get::<EarlyDataSafe>().is_some()
}

/// Headers that are about one HTTP/1.1 hop and that HTTP/3 forbids
/// (RFC 9114 §4.2): a peer treats a request carrying them as malformed.
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The request head h3 sends for `parts`: method, an `https` URI whose
/// authority becomes `:authority`, and the headers minus connection-specific
/// ones. The caller keeps `parts` untouched, so a request that turns out
/// unsent goes back exactly as given.
///
/// The authority is the `Host` header when there is one (a proxy forwarding
/// a virtual host), else the URI's, else the origin's; `Host` itself is
/// dropped, because h3 fails the whole connection, not just the request,
/// when `Host` and `:authority` disagree.
pub(super) fn h3_head(parts: &request::Parts, origin: &Origin) -> Result<Request<()>, Error> {
    let invalid = |reason: &'static str| Error::InvalidOrigin {
        uri: parts.uri.to_string(),
        reason,
    };
    let authority = match parts.headers.get(HOST) {
        Some(host) => host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or_else(|| invalid("the Host header is not a valid authority"))?,
        None => match parts.uri.authority() {
            Some(authority) => authority.clone(),
            None => origin
                .authority()
                .parse::<Authority>()
                .map_err(|_| invalid("the origin is not a valid authority"))?,
        },
    };
    // `:authority` must not carry user info (RFC 9114 §4.3.1).
    let authority = match authority.as_str().rsplit_once('@') {
        Some((_, host)) => host
            .parse::<Authority>()
            .map_err(|_| invalid("the authority is not valid without its user info"))?,
        None => authority,
    };
    let path = match parts.uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => pq.clone(),
        Some(pq) if pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| invalid("the query is not valid"))?
        }
        _ => PathAndQuery::from_static("/"),
    };
    let uri = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| invalid("cannot make an https URI of this request"))?;

    let mut headers = parts.headers.clone();
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
    headers.remove(HOST);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // `TE` may only say `trailers` (RFC 9114 §4.2).
    let te_trailers_only = headers
        .get_all(TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers_only {
        headers.remove(TE);
    }

    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = uri;
    *head.version_mut() = Version::HTTP_3;
    *head.headers_mut() = headers;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parts(request: Request<()>) -> request::Parts {
        request.into_parts().0
    }

    fn origin() -> Origin {
        Origin::parse("https://origin.example:8443").expect("origin")
    }

    #[test]
    fn only_safe_or_marked_requests_go_early() {
        assert!(may_send_early(&parts(Request::get("/").body(()).unwrap())));
        assert!(may_send_early(&parts(Request::head("/").body(()).unwrap())));
        assert!(may_send_early(&parts(
            Request::options("/").body(()).unwrap()
        )));
        assert!(!may_send_early(&parts(
            Request::post("/").body(()).unwrap()
        )));
        assert!(!may_send_early(&parts(Request::put("/").body(()).unwrap())));
        assert!(!may_send_early(&parts(
            Request::delete("/").body(()).unwrap()
        )));
        let mut marked = Request::post("/").body(()).unwrap();
        marked.extensions_mut().insert(EarlyDataSafe);
        assert!(may_send_early(&parts(marked)));
    }

    #[test]
    fn authority_comes_from_host_then_uri_then_origin() {
        let head = h3_head(
            &parts(
                Request::get("https://a.example/p?q=1")
                    .header(HOST, "virtual.example")
                    .body(())
                    .unwrap(),
            ),
            &origin(),
        )
        .unwrap();
        assert_eq!(head.uri(), "https://virtual.example/p?q=1");
        assert!(!head.headers().contains_key(HOST));
        assert_eq!(head.version(), Version::HTTP_3);

        let head = h3_head(
            &parts(Request::get("http://u:pw@a.example:81").body(()).unwrap()),
            &origin(),
        )
        .unwrap();
        assert_eq!(head.uri(), "https://a.example:81/");

        let head = h3_head(&parts(Request::get("/x").body(()).unwrap()), &origin()).unwrap();
        assert_eq!(head.uri(), "https://origin.example:8443/x");

        let bad = h3_head(
            &parts(
                Request::get("/")
                    .header(HOST, HeaderValue::from_static("a b"))
                    .body(())
                    .unwrap(),
            ),
            &origin(),
        );
        assert!(bad.unwrap_err().is_invalid_input());
    }

    #[test]
    fn connection_specific_headers_are_dropped() {
        let head = h3_head(
            &parts(
                Request::get("https://a.example/")
                    .header(CONNECTION, "keep-alive, x-hop")
                    .header("keep-alive", "timeout=5")
                    .header("x-hop", "1")
                    .header(TRANSFER_ENCODING, "chunked")
                    .header(TE, "gzip")
                    .header("x-end-to-end", "kept")
                    .body(())
                    .unwrap(),
            ),
            &origin(),
        )
        .unwrap();
        let names: Vec<&str> = head.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-end-to-end"]);

        let head = h3_head(
            &parts(
                Request::get("https://a.example/")
                    .header(TE, "trailers")
                    .body(())
                    .unwrap(),
            ),
            &origin(),
        )
        .unwrap();
        assert_eq!(head.headers()[TE], "trailers");
    }
}
