//! The named scenarios, each a way of sending the same workload, and what
//! each one measures into a [`Row`]. New rows (HTTP/2, HTTP/3, warm vs cold
//! pools) are new variants here.

use std::sync::Arc;

use bytes::Bytes;
use edgepool::Pool;
use edgepool::transport::http1::Http1;
use edgepool::transport::tls::TlsConfig;
use edgepool::transport::{ConnEvents, Connection, RequestBody, Transport};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};

use crate::args::Params;
use crate::origin::{BODY_LEN, Origin};
use crate::report::Row;
use crate::workload::{self, Measurement, RequestError};

/// What every scenario runs against.
pub struct Setup {
    /// The origin, for its accept counter.
    pub origin: Origin,
    /// The URL requests go to (through the relay).
    pub url: Uri,
    /// Trusts the demo CA, and nothing else.
    pub tls: TlsConfig,
    /// How much load.
    pub params: Params,
}

/// A way of sending the workload.
#[derive(Debug, Clone, Copy)]
pub enum Scenario {
    /// A fresh TCP+TLS connection for every request, closed after it: what a
    /// proxy without a pool pays.
    NewConnectionPerRequest,
    /// One edgepool pool over HTTP/1.1, starting empty.
    PooledHttp1,
}

impl Scenario {
    /// Every scenario, baseline first.
    pub const ALL: [Scenario; 2] = [Scenario::NewConnectionPerRequest, Scenario::PooledHttp1];

    /// The name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NewConnectionPerRequest => "new TCP+TLS per request",
            Scenario::PooledHttp1 => "edgepool (HTTP/1.1, pooled)",
        }
    }

    /// What a reader of the table should know about this scenario's row.
    pub fn note(self, row: &Row) -> Option<String> {
        match self {
            Scenario::NewConnectionPerRequest => None,
            Scenario::PooledHttp1 => Some(format!(
                "{}: the pool starts empty; the {} requests that opened its connections are counted in its latencies",
                self.name(),
                row.origin_connections
            )),
        }
    }

    /// Runs the workload and measures it.
    pub async fn run(self, setup: &Setup) -> Result<Row, edgepool::Error> {
        let accepted_before = setup.origin.connections_accepted();
        let (measurement, reuse_ratio) = match self {
            Scenario::NewConnectionPerRequest => (per_request(self.name(), setup).await?, 0.0),
            Scenario::PooledHttp1 => pooled(self.name(), setup).await?,
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
            origin_connections: setup.origin.connections_accepted() - accepted_before,
            reuse_ratio,
            errors: measurement.errors,
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
/// connection goes back to the pool. Also returns the pool's reuse ratio.
async fn pooled(name: &str, setup: &Setup) -> Result<(Measurement, f64), edgepool::Error> {
    let pool = Pool::builder(Http1::with_tls(setup.tls.clone())).build()?;
    let url = setup.url.clone();
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
    let reuse_ratio = pool.stats().total.reuse_ratio();
    pool.shutdown();
    Ok((measurement, reuse_ratio))
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
