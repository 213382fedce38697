//! Head-of-line blocking: one slow request, then a few quick ones right
//! behind it, all on one connection. HTTP/1.1 carries one request at a time,
//! so the quick ones wait for the slow one; HTTP/2 carries them side by side
//! on their own streams.
//!
//! Each pool is limited to one connection per origin and warmed to it first
//! (`Pool::warm(&origin, 1)`), so no handshake is in these figures. The quick
//! requests are issued once the slow one holds its slot, so on HTTP/1.1 it is
//! the one on the wire.

use std::time::Duration;

use edgepool::Pool;
use edgepool::transport::Transport;
use edgepool::transport::http1::Http1;
use edgepool::transport::http2::Http2;
use http::Uri;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::report::{millis, print_grid};
use crate::scenario::{Setup, timed_get};
use crate::workload::{Measurement, describe};

/// How long the origin holds the slow request.
pub const SLOW_MS: u64 = 500;
/// Quick requests issued right after the slow one.
pub const QUICK: usize = 10;

/// How long to wait for the slow request to get its slot before the quick
/// ones go anyway (it gets it at once on a warm connection).
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// One protocol's results.
pub struct HolRow {
    name: &'static str,
    /// The slow request's latency, or why it failed.
    slow: Result<Duration, String>,
    /// The quick requests' latencies and failures.
    quick: Measurement,
    /// TCP connections the origin accepted for this row (warming included).
    origin_connections: u64,
}

impl HolRow {
    /// Requests that failed, slow one included.
    pub fn errors(&self) -> usize {
        self.quick.errors + usize::from(self.slow.is_err())
    }
}

/// Runs the slow-then-quick sequence over HTTP/1.1, then over HTTP/2.
pub async fn run(setup: &Setup) -> Result<Vec<HolRow>, Box<dyn std::error::Error>> {
    let slow_url = with_path(&setup.url, &format!("/slow?ms={SLOW_MS}"))?;
    let http1 = Pool::builder(Http1::with_tls(setup.tls.clone()))
        .max_connections_per_origin(1)
        .build()?;
    let http2 = Pool::builder(Http2::with_tls(setup.tls.clone()))
        .max_connections_per_origin(1)
        .build()?;
    Ok(vec![
        one_connection(
            "HTTP/1.1, max_connections_per_origin(1)",
            setup,
            http1,
            &slow_url,
        )
        .await?,
        one_connection(
            "HTTP/2, max_connections_per_origin(1)",
            setup,
            http2,
            &slow_url,
        )
        .await?,
    ])
}

/// The slow request, then [`QUICK`] quick ones, through `pool` (one warm
/// connection).
async fn one_connection<T: Transport>(
    name: &'static str,
    setup: &Setup,
    pool: Pool<T>,
    slow_url: &Uri,
) -> Result<HolRow, edgepool::Error> {
    let origin = edgepool::Origin::from_uri(&setup.url)?;
    let accepted_before = setup.origin.connections_accepted();
    pool.warm(&origin, 1).await?;

    let started = Instant::now();
    let slow = spawn_get(&pool, slow_url.clone());
    let slot_deadline = Instant::now() + SLOT_WAIT;
    while pool.stats().total.rq_active == 0 && Instant::now() < slot_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let quick: Vec<_> = (0..QUICK)
        .map(|_| spawn_get(&pool, setup.url.clone()))
        .collect();

    let mut measurement = Measurement {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(QUICK),
        errors: 0,
        first_error: None,
    };
    for task in quick {
        match joined(task).await {
            Ok(latency) => measurement.latencies.push(latency),
            Err(e) => {
                measurement.errors += 1;
                measurement.first_error.get_or_insert(e);
            }
        }
    }
    let slow = joined(slow).await;
    measurement.elapsed = started.elapsed();
    measurement.latencies.sort_unstable();
    pool.shutdown();

    if let Err(e) = &slow {
        eprintln!("  head-of-line, {name}: the slow request failed: {e}");
    }
    if let Some(e) = &measurement.first_error {
        eprintln!(
            "  head-of-line, {name}: {} of {QUICK} quick requests failed; first error: {e}",
            measurement.errors
        );
    }
    Ok(HolRow {
        name,
        slow,
        quick: measurement,
        origin_connections: setup.origin.connections_accepted() - accepted_before,
    })
}

type Timed = JoinHandle<Result<Duration, String>>;

/// Starts one timed GET on its own task.
fn spawn_get<T: Transport>(pool: &Pool<T>, url: Uri) -> Timed {
    let pool = pool.clone();
    tokio::spawn(async move {
        timed_get(&pool, url)
            .await
            .map(|served| served.latency)
            .map_err(|e| describe(e.as_ref()))
    })
}

async fn joined(task: Timed) -> Result<Duration, String> {
    task.await
        .unwrap_or_else(|e| Err(format!("the request's task failed: {e}")))
}

/// `url` with another path and query.
fn with_path(url: &Uri, path_and_query: &str) -> Result<Uri, Box<dyn std::error::Error>> {
    let mut parts = url.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// The section: a heading, the table, what to read in it.
pub fn print(rows: &[HolRow], rtt: Duration) {
    println!();
    println!(
        "head-of-line: 1 slow request (the origin holds it {SLOW_MS} ms), then {QUICK} quick ones issued right after it, on one warmed connection; simulated rtt {} ms",
        rtt.as_millis()
    );
    println!();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.name.to_string(),
                match &row.slow {
                    Ok(latency) => format!("{:.1}", millis(*latency)),
                    Err(_) => "failed".to_string(),
                },
                quick_cell(&row.quick, 50.0),
                quick_cell(&row.quick, 100.0),
                row.origin_connections.to_string(),
                row.errors().to_string(),
            ]
        })
        .collect();
    print_grid(
        &[
            "connection",
            "slow ms",
            "quick p50 ms",
            "quick max ms",
            "origin conns",
            "errors",
        ],
        &cells,
    );
    println!();
    println!(
        "note: over HTTP/1.1 each quick request waits for the slow one, then for the quick ones ahead of it (one round trip each); over HTTP/2 each has its own stream"
    );
}

fn quick_cell(quick: &Measurement, p: f64) -> String {
    if quick.latencies.is_empty() {
        "n/a".to_string()
    } else {
        format!("{:.1}", millis(quick.percentile(p)))
    }
}
