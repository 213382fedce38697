//! Cold connect: the first request on a brand-new connection, over each way
//! of connecting, counted in round trips.
//!
//! The round trips before the request can go:
//!
//! | how                 | handshake round trips          |
//! |---------------------|--------------------------------|
//! | TCP + TLS 1.3       | 2: TCP's SYN, then TLS's own (3 for edgepool's HTTP/2, see below) |
//! | QUIC, new session   | 1: QUIC and TLS share it       |
//! | QUIC, resumed 0-RTT | 0: the request rides with the ClientHello |
//!
//! and the request itself takes one more. Round trips are counted against
//! a second request on the same, now warm, connection: one round trip on
//! that path as the client sees it. Every trial has a fresh pool and
//! a fresh TLS configuration (so no session to resume), except the 0-RTT
//! one, whose configuration first served one request through another pool
//! and so holds the origin's session ticket. The HTTP/2 case also shows
//! what waiting for the server's SETTINGS costs (edgepool's HTTP/2 connect
//! ends with a PING round trip, see `transport::http2`).

use std::time::Duration;

use edgepool::Pool;
use edgepool::transport::Transport;
use edgepool::transport::http1::Http1;
use edgepool::transport::http2::Http2;
use edgepool::transport::http3::Http3;

use http::Uri;

use crate::report::{millis, print_grid};
use crate::scenario::{Setup, timed_get};
use crate::workload::{RequestError, describe};

/// Trials of each case, one after the other.
const TRIALS: usize = 5;

/// A way of connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    TcpTlsHttp1,
    TcpTlsHttp2,
    Quic,
    QuicZeroRtt,
}

impl Way {
    const ALL: [Way; 4] = [
        Way::TcpTlsHttp1,
        Way::TcpTlsHttp2,
        Way::Quic,
        Way::QuicZeroRtt,
    ];

    fn name(self) -> &'static str {
        match self {
            Way::TcpTlsHttp1 => "TCP + TLS 1.3, HTTP/1.1",
            Way::TcpTlsHttp2 => "TCP + TLS 1.3, HTTP/2",
            Way::Quic => "QUIC, new session (HTTP/3)",
            Way::QuicZeroRtt => "QUIC, resumed with 0-RTT (HTTP/3)",
        }
    }

    /// The handshake round trips this way needs before the request can go:
    /// TCP's and TLS's, plus for edgepool's HTTP/2 the PING round trip that
    /// brings the server's SETTINGS.
    fn expected(self) -> &'static str {
        match self {
            Way::TcpTlsHttp1 => "2",
            Way::TcpTlsHttp2 => "3",
            Way::Quic => "1",
            Way::QuicZeroRtt => "0",
        }
    }
}

/// What one trial saw, or why it failed.
type Trial = Result<Seen, String>;

/// One trial's measurements.
struct Seen {
    /// The first request's latency.
    first: Duration,
    /// Whether it went as early data (HTTP/3 only).
    early_data: Option<bool>,
    /// The latency of the request after it, on the warm connection.
    warm: Duration,
}

impl Seen {
    /// The first request in round trips of the warm one.
    fn round_trips(&self) -> Option<f64> {
        (!self.warm.is_zero()).then(|| self.first.as_secs_f64() / self.warm.as_secs_f64())
    }
}

/// One way's trials.
pub struct Case {
    way: Way,
    trials: Vec<Trial>,
}

impl Case {
    /// Trials whose request failed.
    pub fn errors(&self) -> usize {
        self.trials.iter().filter(|t| t.is_err()).count()
    }
}

/// Runs every way's trials.
pub async fn run(setup: &Setup) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let mut cases = Vec::with_capacity(Way::ALL.len());
    for way in Way::ALL {
        let mut trials = Vec::with_capacity(TRIALS);
        for _ in 0..TRIALS {
            trials.push(one_trial(setup, way).await?);
        }
        let case = Case { way, trials };
        if let Some(Err(e)) = case.trials.iter().find(|t| t.is_err()) {
            eprintln!(
                "  cold connect, {}: {} of {TRIALS} trials failed; first error: {e}",
                way.name(),
                case.errors()
            );
        }
        cases.push(case);
    }
    Ok(cases)
}

/// A fresh pool (and TLS session store) for `way`, and its first request.
/// Fails only if a pool or transport cannot be built.
async fn one_trial(setup: &Setup, way: Way) -> Result<Trial, edgepool::Error> {
    let tls = setup.fresh_tls()?;
    Ok(match way {
        Way::TcpTlsHttp1 => first_request(Http1::with_tls(tls), &setup.url).await?,
        Way::TcpTlsHttp2 => first_request(Http2::with_tls(tls), &setup.url).await?,
        Way::Quic => {
            let transport = Http3::builder().tls(tls).build()?;
            first_request(transport, &setup.h3_url).await?
        }
        Way::QuicZeroRtt => {
            // One request through another pool leaves the origin's session
            // ticket in `tls`'s store; the measured pool shares that store
            // (and the endpoint), not the connection.
            let transport = Http3::builder().tls(tls).build()?;
            if let Err(e) = first_request(transport.clone(), &setup.h3_url).await? {
                return Ok(Err(format!(
                    "the request that fetches a ticket failed: {e}"
                )));
            }
            first_request(transport, &setup.h3_url).await?
        }
    })
}

/// A new pool over `transport`, a GET that opens its connection, one more
/// on that connection, and the pool shut down.
async fn first_request<T: Transport>(transport: T, url: &Uri) -> Result<Trial, edgepool::Error> {
    let pool = Pool::builder(transport).build()?;
    let seen = async {
        let first = timed_get(&pool, url.clone()).await?;
        let warm = timed_get(&pool, url.clone()).await?;
        if warm.info.is_some_and(|info| !info.reused) {
            return Err("the second request did not reuse the first one's connection".into());
        }
        Ok(Seen {
            first: first.latency,
            early_data: first.early_data,
            warm: warm.latency,
        })
    }
    .await
    .map_err(|e: RequestError| describe(e.as_ref()));
    pool.shutdown();
    Ok(seen)
}

/// The section: a heading, the table, how to read it.
pub fn print(cases: &[Case], rtt: Duration) {
    println!();
    println!(
        "cold connect: the first request on a new connection (a fresh pool and TLS session store per trial; the 0-RTT one holds a session ticket); simulated rtt {} ms",
        rtt.as_millis()
    );
    println!();
    let cells: Vec<Vec<String>> = cases
        .iter()
        .map(|case| {
            let seen: Vec<&Seen> = case.trials.iter().filter_map(|t| t.as_ref().ok()).collect();
            let mut latencies: Vec<Duration> = seen.iter().map(|s| s.first).collect();
            latencies.sort_unstable();
            let median = latencies
                .get(latencies.len().saturating_sub(1) / 2)
                .copied();
            let ms =
                |d: Option<Duration>| d.map_or("n/a".to_string(), |d| format!("{:.1}", millis(d)));
            let mut ratios: Vec<f64> = seen.iter().filter_map(|s| s.round_trips()).collect();
            ratios.sort_unstable_by(f64::total_cmp);
            let round_trips = ratios.get(ratios.len().saturating_sub(1) / 2).copied();
            // Only HTTP/3 reports early data; over TCP the column is n/a.
            let early = if seen.iter().any(|s| s.early_data.is_some()) {
                let sent_early = seen.iter().filter(|s| s.early_data == Some(true)).count();
                format!("{sent_early}/{}", seen.len())
            } else {
                "n/a".to_string()
            };
            vec![
                case.way.name().to_string(),
                case.trials.len().to_string(),
                ms(median),
                ms(latencies.first().copied()),
                ms(latencies.last().copied()),
                round_trips.map_or("n/a".to_string(), |n| format!("{n:.1}")),
                round_trips.map_or("n/a".to_string(), |n| format!("{:.1}", n - 1.0)),
                case.way.expected().to_string(),
                early,
                case.errors().to_string(),
            ]
        })
        .collect();
    print_grid(
        &[
            "first request on",
            "trials",
            "median ms",
            "min ms",
            "max ms",
            "RTTs",
            "handshake RTTs",
            "expected",
            "early data",
            "errors",
        ],
        &cells,
    );
    println!();
    println!(
        "note: RTTs is the median of each trial's first request over its second (on the same, warm, connection: one round trip); handshake RTTs is that minus the request's own round trip"
    );
    println!(
        "note: edgepool's HTTP/2 connect ends with a PING round trip, so the pool lends streams only once the server's SETTINGS (its stream limit) are in: one round trip more than HTTP/1.1 on a cold connection, none on a warm one"
    );
}
