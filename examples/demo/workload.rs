//! The load generator: `total` requests, `concurrency` at a time, each one
//! timed from start to the last byte of its body.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::progress::Progress;

/// What one request may fail with.
pub type RequestError = Box<dyn std::error::Error + Send + Sync>;

/// A request that takes longer than this is counted as failed, so a stuck
/// request shows up in the table instead of hanging the demo.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run measured.
#[derive(Debug)]
pub struct Measurement {
    /// Wall-clock time from the first request's start to the last one's end.
    pub elapsed: Duration,
    /// Latencies of the requests that succeeded, sorted.
    pub latencies: Vec<Duration>,
    /// Requests that failed.
    pub errors: usize,
    /// The first failure, with its causes, for the report.
    pub first_error: Option<String>,
}

impl Measurement {
    /// Successful requests per second of wall-clock time.
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.latencies.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// The mean latency of the requests that succeeded; zero when none did.
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.latencies.len()) {
            Ok(n) if n > 0 => self.latencies.iter().sum::<Duration>() / n,
            _ => Duration::ZERO,
        }
    }

    /// The `p`-th percentile latency (nearest rank), `p` in 0..=100; zero
    /// when nothing succeeded.
    pub fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1]
    }
}

/// What one worker saw.
#[derive(Default)]
struct WorkerLog {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl WorkerLog {
    fn failed(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Runs `request` `total` times with at most `concurrency` in flight, showing
/// progress under `label`.
pub async fn run<F, Fut>(label: &str, total: usize, concurrency: usize, request: F) -> Measurement
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RequestError>> + Send + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start(label, total, Arc::clone(&done));
    let started = Instant::now();

    let workers: Vec<_> = (0..concurrency.min(total))
        .map(|_| {
            let request = Arc::clone(&request);
            let next = Arc::clone(&next);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut log = WorkerLog::default();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let start = Instant::now();
                    match tokio::time::timeout(REQUEST_TIMEOUT, request()).await {
                        Ok(Ok(())) => log.latencies.push(start.elapsed()),
                        Ok(Err(e)) => log.failed(describe(e.as_ref())),
                        Err(_) => log.failed(format!(
                            "no response within {} s",
                            REQUEST_TIMEOUT.as_secs()
                        )),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                log
            })
        })
        .collect();

    let mut all = WorkerLog::default();
    for worker in workers {
        match worker.await {
            Ok(log) => {
                all.latencies.extend(log.latencies);
                all.errors += log.errors;
                if let Some(e) = log.first_error {
                    all.first_error.get_or_insert(e);
                }
            }
            // A worker's requests are lost with it; count the run as failed.
            Err(e) => all.failed(format!("a load-generator task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    progress.finish(elapsed);
    all.latencies.sort_unstable();
    Measurement {
        elapsed,
        latencies: all.latencies,
        errors: all.errors,
        first_error: all.first_error,
    }
}

/// An error and its chain of causes, on one line.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
