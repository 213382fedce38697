//! A progress line on stderr while a run goes: `label: done/total`, redrawn
//! in place with `\r` when stderr is a terminal, printed once at the end
//! otherwise (so logs stay readable).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(100);

/// A progress line being drawn.
pub struct Progress {
    label: String,
    total: usize,
    done: Arc<AtomicUsize>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing; `done` is the counter the workers bump.
    pub fn start(label: &str, total: usize, done: Arc<AtomicUsize>) -> Progress {
        let ticker = std::io::stderr().is_terminal().then(|| {
            let label = label.to_string();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    draw(&label, done.load(Ordering::Relaxed), total, "");
                }
            })
        });
        Progress {
            label: label.to_string(),
            total,
            done,
            ticker,
        }
    }

    /// Draws the final state and ends the line.
    pub fn finish(mut self, elapsed: Duration) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        let suffix = format!(" in {:.2} s\n", elapsed.as_secs_f64());
        draw(
            &self.label,
            self.done.load(Ordering::Relaxed),
            self.total,
            &suffix,
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

fn draw(label: &str, done: usize, total: usize, suffix: &str) {
    let mut err = std::io::stderr().lock();
    // A progress line that cannot be written is no reason to stop the run.
    let _ = write!(err, "\r  {label}: {done}/{total}{suffix}");
    let _ = err.flush();
}
