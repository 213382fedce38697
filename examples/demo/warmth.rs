//! Cold vs warm: the latency of the first request a pool serves, with and
//! without `Pool::warm` first, at start-up and after an idle lull.
//!
//! Every trial has a fresh HTTP/1.1 pool of its own. A cold first request
//! pays the TCP and TLS handshakes on top of its own round trip; a warmed
//! pool has the connection open already. After a lull longer than the idle
//! timeout, an unwarmed pool has closed its idle connection, whereas a
//! warmed one keeps its warm level open whatever the idle timeout.
//!
//! One first request is one sample, so each case is tried a few times and
//! the table shows the median with the extremes.

use std::time::Duration;

use edgepool::Pool;
use edgepool::transport::http1::Http1;
use edgepool::transport::tls::TlsConfig;
use http::Uri;

use crate::report::{millis, print_grid};
use crate::scenario::{Setup, timed_get};
use crate::workload::{RequestError, describe};

/// Connections `Pool::warm` opens in the warmed cases.
pub const WARM: usize = 4;
/// How long the pool sits unused before the measured request.
pub const LULL: Duration = Duration::from_secs(2);
/// The idle timeout of the lull cases' pools: shorter than the lull.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Trials of each start-up case (one after the other).
const STARTUP_TRIALS: usize = 5;
/// Trials of each lull case. They run side by side, so the section waits
/// out the lull once; each starts this much after the one before, so their
/// measured requests do not go at the same instant.
const LULL_TRIALS: usize = 3;
const LULL_STAGGER: Duration = Duration::from_millis(100);

/// What one trial saw.
struct Trial {
    /// The measured request's latency and whether it went on a connection
    /// that was open when it asked; or why it (or the request before the
    /// lull) failed.
    first: Result<(Duration, Option<bool>), String>,
    /// Connections the pool opened (`cx_total`).
    opened: u64,
    /// Connections it closed for idleness (`cx_destroy.idle_timeout`).
    closed_idle: u64,
}

/// One case: its name and trials.
pub struct Case {
    name: String,
    trials: Vec<Trial>,
}

impl Case {
    /// Trials whose requests failed.
    pub fn errors(&self) -> usize {
        self.trials.iter().filter(|t| t.first.is_err()).count()
    }
}

/// Runs the four cases: the start-up ones trial after trial, then the lull
/// ones all side by side, staggered.
pub async fn run(setup: &Setup) -> Result<Vec<Case>, edgepool::Error> {
    let mut cases: Vec<Case> = [(0, None), (WARM, None), (0, Some(LULL)), (WARM, Some(LULL))]
        .into_iter()
        .map(|(warm, lull)| Case {
            name: case_name(warm, lull),
            trials: Vec::new(),
        })
        .collect();
    for _ in 0..STARTUP_TRIALS {
        for (case, warm) in [(0, 0), (1, WARM)] {
            let trial = one_trial(setup.tls.clone(), setup.url.clone(), warm, None).await?;
            cases[case].trials.push(trial);
        }
    }
    let mut lull_trials = Vec::with_capacity(2 * LULL_TRIALS);
    for _ in 0..LULL_TRIALS {
        for (case, warm) in [(2, 0), (3, WARM)] {
            let start_after = LULL_STAGGER * u32::try_from(lull_trials.len()).unwrap_or(0);
            let (tls, url) = (setup.tls.clone(), setup.url.clone());
            let task = tokio::spawn(async move {
                tokio::time::sleep(start_after).await;
                one_trial(tls, url, warm, Some(LULL)).await
            });
            lull_trials.push((case, task));
        }
    }
    for (case, task) in lull_trials {
        let trial = match task.await {
            Ok(trial) => trial?,
            Err(e) => Trial {
                first: Err(format!("the trial's task failed: {e}")),
                opened: 0,
                closed_idle: 0,
            },
        };
        cases[case].trials.push(trial);
    }
    for case in &cases {
        if let Some(Err(e)) = case.trials.iter().map(|t| &t.first).find(|f| f.is_err()) {
            eprintln!(
                "  cold vs warm, {}: {} of {} trials failed; first error: {e}",
                case.name,
                case.errors(),
                case.trials.len()
            );
        }
    }
    Ok(cases)
}

fn case_name(warm: usize, lull: Option<Duration>) -> String {
    let lull = lull.map(|lull| {
        format!(
            "after {} s idle, idle_timeout {} s",
            lull.as_secs(),
            IDLE_TIMEOUT.as_secs()
        )
    });
    match (warm, lull) {
        (0, None) => "at start, fresh pool".to_string(),
        (n, None) => format!("at start, pool.warm(&origin, {n}) first"),
        (0, Some(lull)) => lull,
        (n, Some(lull)) => format!("{lull}, warm(&origin, {n})"),
    }
}

/// A fresh pool, warmed to `warm` connections if above zero; with a `lull`,
/// one request, the lull, then the measured one (and the pool's idle timeout
/// is [`IDLE_TIMEOUT`]); without, the measured request at once. Fails only
/// if the pool cannot be built or warmed; a failed request is recorded.
async fn one_trial(
    tls: TlsConfig,
    url: Uri,
    warm: usize,
    lull: Option<Duration>,
) -> Result<Trial, edgepool::Error> {
    let mut builder = Pool::builder(Http1::with_tls(tls));
    if lull.is_some() {
        builder = builder.idle_timeout(Some(IDLE_TIMEOUT));
    }
    let pool = builder.build()?;
    if warm > 0 {
        pool.warm(&edgepool::Origin::from_uri(&url)?, warm).await?;
    }
    let first = async {
        if let Some(lull) = lull {
            timed_get(&pool, url.clone()).await?;
            tokio::time::sleep(lull).await;
        }
        let served = timed_get(&pool, url).await?;
        Ok((served.latency, served.info.map(|i| i.reused)))
    }
    .await
    .map_err(|e: RequestError| describe(e.as_ref()));
    let stats = pool.stats().total;
    pool.shutdown();
    Ok(Trial {
        first,
        opened: stats.cx_total,
        closed_idle: stats.cx_destroy.idle_timeout,
    })
}

/// The section: a heading and the table.
pub fn print(cases: &[Case], rtt: Duration) {
    println!();
    println!(
        "cold vs warm: latency of a pool's first request (HTTP/1.1, a fresh pool per trial); simulated rtt {} ms",
        rtt.as_millis()
    );
    println!();
    let cells: Vec<Vec<String>> = cases
        .iter()
        .map(|case| {
            let mut latencies: Vec<Duration> = case
                .trials
                .iter()
                .filter_map(|t| t.first.as_ref().ok().map(|(latency, _)| *latency))
                .collect();
            latencies.sort_unstable();
            let ms = |d: Option<&Duration>| {
                d.map_or("n/a".to_string(), |d| format!("{:.1}", millis(*d)))
            };
            let handshakes = case
                .trials
                .iter()
                .filter(|t| matches!(t.first, Ok((_, Some(false)))))
                .count();
            let handshake = if latencies.is_empty() {
                "-".to_string()
            } else if handshakes == latencies.len() {
                "yes".to_string()
            } else if handshakes == 0 {
                "no".to_string()
            } else {
                format!("{handshakes} of {}", latencies.len())
            };
            vec![
                case.name.clone(),
                case.trials.len().to_string(),
                ms(latencies.get(latencies.len().saturating_sub(1) / 2)),
                ms(latencies.first()),
                ms(latencies.last()),
                handshake,
                range(case.trials.iter().map(|t| t.opened)),
                range(case.trials.iter().map(|t| t.closed_idle)),
                case.errors().to_string(),
            ]
        })
        .collect();
    print_grid(
        &[
            "first request",
            "trials",
            "median ms",
            "min ms",
            "max ms",
            "paid handshake",
            "conns opened",
            "closed idle",
            "errors",
        ],
        &cells,
    );
}

/// `n` when every value is n, `a-b` when they span a..b.
fn range(values: impl Iterator<Item = u64>) -> String {
    let (min, max) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    match (min, max) {
        (u64::MAX, _) => "n/a".to_string(),
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{lo}-{hi}"),
    }
}
