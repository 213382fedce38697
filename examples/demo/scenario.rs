//! The named scenarios, each a way of sending the same workload, and what
//! each one measures into a [`Row`]: the rows of the main table. New rows
//! are new variants here; the sections below the table (head-of-line, cold
//! vs warm, cold connect) have modules of their own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::http1::Http1;
use edgepool::transport::http2::Http2;
use edgepool::transport::http3::{EarlyData, Http3};
use edgepool::transport::tls::TlsConfig;
use edgepool::transport::{ConnEvents, Connection, RequestBody, Transport};
use edgepool::{ConnectionInfo, Pool, Stats};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;

use crate::args::Params;
use crate::h3_origin::H3Origin;
use crate::origin::{BODY_LEN, Origin};
use crate::report::Row;
use crate::workload::{self, Measurement, RequestError};

/// What every scenario runs against.
pub struct Setup {
    /// The origin, for its accept counter.
    pub origin: Origin,
    /// The URL requests go to (through the relay).
    pub url: Uri,
    /// The HTTP/3 origin, for its accept counter.
    pub h3_origin: H3Origin,
    /// The URL HTTP/3 requests go to (through the UDP relay).
    pub h3_url: Uri,
    /// Trusts the demo CA, and nothing else.
    pub tls: TlsConfig,
    /// The demo CA, PEM, for sections that need TLS configurations of
    /// their own (a fresh session store each).
    pub ca_pem: String,
    /// How much load.
    pub params: Params,
}

impl Setup {
    /// A TLS configuration that trusts the demo CA (and nothing else), with
    /// a session store of its own: nothing to resume.
    pub fn fresh_tls(&self) -> Result<TlsConfig, edgepool::Error> {
        demo_tls(&self.ca_pem)
    }
}

/// A TLS configuration that trusts the CA `ca_pem` and nothing else.
pub fn demo_tls(ca_pem: &str) -> Result<TlsConfig, edgepool::Error> {
    TlsConfig::builder()
        .webpki_roots(false)
        .add_ca_pem(ca_pem.as_bytes())?
        .build()
}

/// A way of sending the workload.
#[derive(Debug, Clone, Copy)]
pub enum Scenario {
    /// A fresh TCP+TLS connection for every request, closed after it: what a
    /// proxy without a pool pays.
    NewConnectionPerRequest,
    /// One edgepool pool over HTTP/1.1, starting empty. It is built with a
    /// [`SIZING_INTERVAL`] maintenance interval, so the run also shows what
    /// target its sizing policy computes from this load.
    PooledHttp1,
    /// One edgepool pool over HTTP/2 (TLS, ALPN h2), starting empty: one
    /// connection carries up to 100 requests at once.
    PooledHttp2,
    /// One edgepool pool over HTTP/3 (QUIC, through the UDP relay), starting
    /// empty: one connection carries up to 100 requests at once.
    PooledHttp3,
}

/// The HTTP/1.1 pool's `maintenance_interval`: how often it is to re-evaluate
/// its sizing policy (the default, 10 s, is longer than the whole run).
pub const SIZING_INTERVAL: Duration = Duration::from_millis(500);

impl Scenario {
    /// Every scenario, baseline first.
    pub const ALL: [Scenario; 4] = [
        Scenario::NewConnectionPerRequest,
        Scenario::PooledHttp1,
        Scenario::PooledHttp2,
        Scenario::PooledHttp3,
    ];

    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NewConnectionPerRequest => "new TCP+TLS per request",
            Scenario::PooledHttp1 => "edgepool (HTTP/1.1, pooled)",
            Scenario::PooledHttp2 => "edgepool (HTTP/2, pooled)",
            Scenario::PooledHttp3 => "edgepool (HTTP/3, pooled)",
        }
    }

    /// What a reader of the table should know about this scenario's row.
    pub fn note(self, row: &Row, params: &Params) -> Option<String> {
        match self {
            Scenario::NewConnectionPerRequest => None,
            Scenario::PooledHttp1 => Some(format!(
                "{}: the pool starts empty; the {} requests that opened its connections are counted in its latencies",
                self.name(),
                row.origin_connections
            )),
            Scenario::PooledHttp2 => Some(format!(
                "{}: the pool starts empty; one connection carries up to {} streams, so the {} requests in flight at once went on {} connection(s); those that waited for its handshake (TCP, TLS, HTTP/2 settings) are counted in its latencies",
                self.name(),
                crate::origin::MAX_CONCURRENT_STREAMS,
                params.concurrency.min(params.requests),
                row.origin_connections
            )),
            Scenario::PooledHttp3 => Some(format!(
                "{}: the same, over QUIC through a UDP relay with the same delay (origin conns are QUIC connections); quinn does not expose the server's stream limit, so a connection lends 100 streams and lowers that once if opening a stream has to wait for the server's credit, which returns about a round trip after a stream ends: {} connection(s) here",
                self.name(),
                row.origin_connections
            )),
        }
    }

    /// Runs the workload and measures it.
    pub async fn run(self, setup: &Setup) -> Result<Row, edgepool::Error> {
        let accepted = || match self {
            Scenario::PooledHttp3 => setup.h3_origin.connections_accepted(),
            _ => setup.origin.connections_accepted(),
        };
        let accepted_before = accepted();
        let (measurement, stats) = match self {
            Scenario::NewConnectionPerRequest => (per_request(self.name(), setup).await?, None),
            Scenario::PooledHttp1 => {
                let pool = Pool::builder(Http1::with_tls(setup.tls.clone()))
                    .maintenance_interval(SIZING_INTERVAL)
                    .build()?;
                let (measurement, stats) = pooled(self.name(), setup, &setup.url, pool).await;
                (measurement, Some(stats))
            }
            Scenario::PooledHttp2 => {
                let pool = Pool::builder(Http2::with_tls(setup.tls.clone())).build()?;
                let (measurement, stats) = pooled(self.name(), setup, &setup.url, pool).await;
                (measurement, Some(stats))
            }
            Scenario::PooledHttp3 => {
                let transport = Http3::builder().tls(setup.tls.clone()).build()?;
                let pool = Pool::builder(transport).build()?;
                let (measurement, stats) = pooled(self.name(), setup, &setup.h3_url, pool).await;
                (measurement, Some(stats))
            }
        };
        if let Some(error) = &measurement.first_error {
            eprintln!(
                "  {}: {} of {} requests failed; first error: {error}",
                self.name(),
                measurement.errors,
                setup.params.requests
            );
        }
        Ok(Row {
            name: self.name(),
            requests_per_sec: measurement.requests_per_sec(),
            p50: measurement.percentile(50.0),
            p99: measurement.percentile(99.0),
            mean: measurement.mean(),
            elapsed: measurement.elapsed,
            origin_connections: accepted() - accepted_before,
            reuse_ratio: stats.map_or(0.0, |s| s.reuse_ratio()),
            errors: measurement.errors,
            warm_target: match self {
                Scenario::PooledHttp1 => stats.map(|s| s.cx_warm_target),
                _ => None,
            },
        })
    }
}

/// Each request: connect (TCP, TLS) with the library's transport, send, read
/// the whole body, drop the connection.
async fn per_request(name: &str, setup: &Setup) -> Result<Measurement, edgepool::Error> {
    let transport = Arc::new(Http1::with_tls(setup.tls.clone()));
    let origin = edgepool::Origin::from_uri(&setup.url)?;
    let url = setup.url.clone();
    let params = setup.params;
    let measurement = workload::run(name, params.requests, params.concurrency, move || {
        let transport = Arc::clone(&transport);
        let origin = origin.clone();
        let url = url.clone();
        async move {
            let conn = transport.connect(&origin, ConnEvents::detached()).await?;
            let request = Request::get(url).body(empty_body())?;
            let response = conn.send(request).await.map_err(|e| e.error)?;
            let status = response.status();
            check(status, response.into_body().collect().await?.to_bytes())
            // `conn` drops here: the connection closes.
        }
    })
    .await;
    Ok(measurement)
}

/// Each request through one shared pool, its body read to the end so the
/// connection goes back to the pool. Also returns the pool's counters as
/// they were when the last request ended (before the pool shuts down, which
/// zeroes its gauges).
async fn pooled<T: Transport>(
    name: &str,
    setup: &Setup,
    url: &Uri,
    pool: Pool<T>,
) -> (Measurement, Stats) {
    let url = url.clone();
    let params = setup.params;
    let client = pool.clone();
    let measurement = workload::run(name, params.requests, params.concurrency, move || {
        let pool = client.clone();
        let url = url.clone();
        async move {
            let request = Request::get(url).body(Empty::<Bytes>::new())?;
            let response = pool.request(request).await?;
            let status = response.status();
            // Read to the end: that is what hands the connection back.
            check(status, response.into_body().collect().await?.to_bytes())
        }
    })
    .await;
    let stats = pool.stats().total;
    pool.shutdown();
    (measurement, stats)
}

/// What [`timed_get`] saw of one request.
pub struct Served {
    /// From the call to the last byte of the body.
    pub latency: Duration,
    /// The connection it went on.
    pub info: Option<ConnectionInfo>,
    /// Whether it went as TLS early data (HTTP/3 only; `None` on the others).
    pub early_data: Option<bool>,
}

/// One GET through `pool`, timed from the call to the last byte of the body
/// (read to the end, so the connection goes back), with the connection it
/// went on. A request that takes longer than the load generator's limit
/// counts as failed.
pub async fn timed_get<T: Transport>(pool: &Pool<T>, url: Uri) -> Result<Served, RequestError> {
    let started = Instant::now();
    let exchange = async {
        let request = Request::get(url).body(Empty::<Bytes>::new())?;
        let response = pool.request(request).await?;
        let info = response.extensions().get::<ConnectionInfo>().cloned();
        let early_data = response.extensions().get::<EarlyData>().map(|e| e.0);
        let status = response.status();
        check(status, response.into_body().collect().await?.to_bytes())?;
        Ok::<_, RequestError>((info, early_data))
    };
    match tokio::time::timeout(workload::REQUEST_TIMEOUT, exchange).await {
        Ok(Ok((info, early_data))) => Ok(Served {
            latency: started.elapsed(),
            info,
            early_data,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no response within {} s",
            workload::REQUEST_TIMEOUT.as_secs()
        )
        .into()),
    }
}

fn empty_body() -> RequestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request counts as served only with a 200 and the whole body.
fn check(status: http::StatusCode, body: Bytes) -> Result<(), RequestError> {
    if status != http::StatusCode::OK {
        return Err(format!("the origin answered {status}").into());
    }
    if body.len() != BODY_LEN {
        return Err(format!("expected a {BODY_LEN}-byte body, got {} bytes", body.len()).into());
    }
    Ok(())
}
