//! The HTTP/1.1 transport on its own (no pool), against an in-process origin
//! over plaintext and TLS.
#![cfg(feature = "http1")]

mod support;

#[cfg(feature = "tls")]
use edgepool::Error;
use edgepool::transport::http1::{Http1, Http1Connection};
use edgepool::transport::{ConnEvent, ConnEvents};
use edgepool::{ConnState, Connection, Origin, Protocol, Transport};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{Options, TestOrigin, get, within};
use tokio::sync::mpsc;

/// Connection events, collected on a channel.
fn event_channel() -> (ConnEvents, mpsc::UnboundedReceiver<ConnEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = ConnEvents::new(move |event| {
        let _ = tx.send(event);
    });
    (events, rx)
}

async fn wait_closed_event(rx: &mut mpsc::UnboundedReceiver<ConnEvent>) {
    within("ConnEvent::Closed", async {
        loop {
            match rx.recv().await {
                Some(ConnEvent::Closed) => return,
                Some(_) => continue,
                None => panic!("event sink dropped before Closed"),
            }
        }
    })
    .await
}

fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("response has no {name} header"))
}

async fn body_of(response: Response<Incoming>) -> bytes::Bytes {
    within("response body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes()
}

async fn connect(transport: &Http1, origin: &Origin) -> Http1Connection {
    within("connect", transport.connect(origin, ConnEvents::detached()))
        .await
        .expect("connect")
}

async fn send(conn: &Http1Connection, uri: &str) -> Response<Incoming> {
    match within("response", conn.send(get(uri))).await {
        Ok(response) => response,
        Err(e) => panic!("send {uri} failed: {}", e.error),
    }
}

/// Two GETs in a row on one connection: both answered on the same server
/// connection, with the Host header and origin-form target the server expects.
async fn two_gets_share_one_connection(server: &TestOrigin, transport: &Http1, origin: &Origin) {
    let conn = connect(transport, origin).await;
    assert_eq!(conn.protocol(), Protocol::Http1);
    assert_eq!(conn.slots(), 1);
    assert_eq!(conn.state(), ConnState::Ready);

    let first = send(&conn, &server.url("/first?x=1")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-conn-id"), "1");
    assert_eq!(header(&first, "x-request-n"), "1");
    assert_eq!(header(&first, "x-seen-host"), server.addr.to_string());
    assert_eq!(header(&first, "x-seen-uri"), "/first?x=1");
    assert_eq!(header(&first, "x-seen-version"), "HTTP/1.1");
    assert_eq!(&body_of(first).await[..], b"hello");

    let second = send(&conn, &server.url("/second")).await;
    assert_eq!(header(&second, "x-conn-id"), "1");
    assert_eq!(header(&second, "x-request-n"), "2");
    assert_eq!(&body_of(second).await[..], b"hello");

    assert_eq!(conn.state(), ConnState::Ready);
    assert_eq!(server.connections_accepted(), 1);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn plaintext_get_twice_on_one_connection() {
    let server = TestOrigin::start(Options::plain()).await;
    two_gets_share_one_connection(&server, &Http1::new(), &server.origin()).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_get_twice_on_one_connection() {
    let server = TestOrigin::start(Options::tls()).await;
    let transport = Http1::with_tls(support::certs::test_ca_tls());
    two_gets_share_one_connection(&server, &transport, &server.origin()).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn origin_tls_config_overrides_the_transport_default() {
    let server = TestOrigin::start(Options::tls()).await;
    // The transport trusts only the webpki roots; the origin brings the test CA.
    let origin = server.origin().with_tls(support::certs::test_ca_tls());
    two_gets_share_one_connection(&server, &Http1::new(), &origin).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn untrusted_certificate_fails_with_connect_error() {
    let server = TestOrigin::start(Options::tls()).await;
    for transport in [
        Http1::new(),
        Http1::with_tls(edgepool::transport::tls::TlsConfig::default_roots().expect("roots")),
    ] {
        let result = within(
            "connect",
            transport.connect(&server.origin(), ConnEvents::detached()),
        )
        .await;
        match result {
            Err(err @ Error::Connect { .. }) => {
                assert!(err.is_origin_failure());
                let text = err.to_string();
                assert!(text.contains("certificate"), "{text}");
                assert!(text.contains(&server.addr.to_string()), "{text}");
            }
            other => panic!("expected Error::Connect, got {other:?}"),
        }
    }
    assert_eq!(server.requests(), 0);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn client_certificate_is_presented() {
    let server = TestOrigin::start(Options {
        require_client_cert: true,
        ..Options::tls()
    })
    .await;
    let (cert, key) = support::certs::client_identity_pem();
    let tls = edgepool::transport::tls::TlsConfig::builder()
        .webpki_roots(false)
        .add_ca_pem(support::certs::ca_pem().as_bytes())
        .expect("ca")
        .client_identity_pem(cert.as_bytes(), key.as_bytes())
        .expect("identity")
        .build()
        .expect("config");
    let conn = connect(&Http1::with_tls(tls), &server.origin()).await;
    let response = send(&conn, &server.url("/")).await;
    assert_eq!(header(&response, "x-client-cert"), "present");

    // Without the identity the server refuses. With TLS 1.3 the client learns
    // it after its side of the handshake, so either step may fail.
    let transport = Http1::with_tls(support::certs::test_ca_tls());
    let refused = match within(
        "connect",
        transport.connect(&server.origin(), ConnEvents::detached()),
    )
    .await
    {
        Err(_) => true,
        Ok(conn) => within("response", conn.send(get(&server.url("/"))))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
}

#[tokio::test]
async fn explicit_host_header_is_kept() {
    let server = TestOrigin::start(Options::plain()).await;
    let conn = connect(&Http1::new(), &server.origin()).await;
    let mut request = get(&server.url("/"));
    request.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_static("virtual.example"),
    );
    let response = within("response", conn.send(request)).await.expect("send");
    assert_eq!(header(&response, "x-seen-host"), "virtual.example");
}

#[tokio::test]
async fn large_body_is_streamed_whole() {
    let server = TestOrigin::start(Options::plain()).await;
    let conn = connect(&Http1::new(), &server.origin()).await;
    let response = send(&conn, &server.url("/?bytes=1048576")).await;
    assert_eq!(body_of(response).await.len(), 1 << 20);
    let response = send(&conn, &server.url("/")).await;
    assert_eq!(header(&response, "x-request-n"), "2");
}

/// Regression guard for "a peer-closed idle connection is not reused": once
/// the server closes an idle connection the transport says so, both through
/// `state()` and an event, and a send hands the request back unsent.
#[tokio::test]
async fn server_closing_an_idle_connection_is_reported() {
    let server = TestOrigin::start(Options::plain()).await;
    let (events, mut rx) = event_channel();
    let conn = within("connect", Http1::new().connect(&server.origin(), events))
        .await
        .expect("connect");
    let response = send(&conn, &server.url("/")).await;
    body_of(response).await;
    assert_eq!(conn.state(), ConnState::Ready);

    server.close_idle_connections();
    wait_closed_event(&mut rx).await;
    assert_eq!(conn.state(), ConnState::Closed);

    let uri = server.url("/again");
    let err = within("send on closed", conn.send(get(&uri)))
        .await
        .expect_err("send on a closed connection");
    let unsent = err.unsent.expect("request handed back unsent");
    assert_eq!(unsent.uri().to_string(), uri);
    assert!(err.error.is_origin_failure());
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn server_idle_timeout_closes_and_is_reported() {
    let server = TestOrigin::start(Options {
        idle_timeout: Some(std::time::Duration::from_millis(20)),
        ..Options::plain()
    })
    .await;
    let (events, mut rx) = event_channel();
    let conn = within("connect", Http1::new().connect(&server.origin(), events))
        .await
        .expect("connect");
    body_of(send(&conn, &server.url("/")).await).await;
    wait_closed_event(&mut rx).await;
    assert_eq!(conn.state(), ConnState::Closed);
    support::eventually("server-side close", || server.open_connections() == 0).await;
}

#[tokio::test]
async fn connection_close_response_ends_the_connection() {
    let server = TestOrigin::start(Options::plain()).await;
    let (events, mut rx) = event_channel();
    let conn = within("connect", Http1::new().connect(&server.origin(), events))
        .await
        .expect("connect");
    let response = send(&conn, &server.url("/?close=1")).await;
    assert_eq!(header(&response, "connection"), "close");
    // Told before the body is read: the connection takes no new request.
    assert_ne!(conn.state(), ConnState::Ready);
    body_of(response).await;
    wait_closed_event(&mut rx).await;
    assert_eq!(conn.state(), ConnState::Closed);
}

#[tokio::test]
async fn dropping_the_connection_closes_it() {
    let server = TestOrigin::start(Options::plain()).await;
    let (events, mut rx) = event_channel();
    let conn = within("connect", Http1::new().connect(&server.origin(), events))
        .await
        .expect("connect");
    body_of(send(&conn, &server.url("/")).await).await;
    drop(conn);
    wait_closed_event(&mut rx).await;
    support::eventually("server-side close", || server.open_connections() == 0).await;
}
