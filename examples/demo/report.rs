//! The results: the parameters, one table row per scenario, and how each
//! scenario compares with the first (the baseline).

use std::time::Duration;

use crate::args::Params;

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario's name.
    pub name: &'static str,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Mean latency (Little's L for the sizing check).
    pub mean: Duration,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// TCP connections the origin accepted during the run.
    pub origin_connections: u64,
    /// Share of requests served on a connection that had served before.
    pub reuse_ratio: f64,
    /// Requests that failed.
    pub errors: usize,
    /// The pool's `cx_warm_target` gauge at the end of the run, for a
    /// scenario whose pool ran its sizing policy during the run.
    pub warm_target: Option<u64>,
}

/// The parameters, above the table.
pub fn print_params(params: &Params) {
    println!(
        "simulated rtt: {} ms   requests per run: {}   concurrency: {}",
        params.rtt.as_millis(),
        params.requests,
        params.concurrency
    );
    println!();
}

const HEADERS: [&str; 7] = [
    "scenario",
    "req/s",
    "p50 ms",
    "p99 ms",
    "origin conns",
    "reuse",
    "errors",
];

/// The table: one line per row, columns sized to fit.
pub fn print_table(rows: &[Row]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.name.to_string(),
                format!("{:.0}", row.requests_per_sec),
                format!("{:.1}", millis(row.p50)),
                format!("{:.1}", millis(row.p99)),
                row.origin_connections.to_string(),
                format!("{:.2}", row.reuse_ratio),
                row.errors.to_string(),
            ]
        })
        .collect();
    print_grid(&HEADERS, &cells);
}

/// Any table: a header, a rule, and one line per row; the first column is
/// text (left-aligned), the others numbers (right-aligned), each as wide as
/// its widest cell.
pub fn print_grid(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for line in rows {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_line = |line: &[String]| {
        line.iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &width))| {
                if i == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let header = format_line(&header_cells);
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for line in rows {
        println!("{}", format_line(line));
    }
}

/// Remarks under the table, one per line.
pub fn print_notes(notes: &[String]) {
    if !notes.is_empty() {
        println!();
    }
    for note in notes {
        println!("note: {note}");
    }
}

/// One line per row after the first: its throughput over the baseline's,
/// and how many times lower its median latency is.
pub fn print_speedups(rows: &[Row]) {
    let Some((baseline, others)) = rows.split_first() else {
        return;
    };
    println!();
    for row in others {
        println!(
            "speed-up: {} vs {}: {} req/s, {} lower p50",
            row.name,
            baseline.name,
            ratio(row.requests_per_sec, baseline.requests_per_sec),
            ratio(millis(baseline.p50), millis(row.p50)),
        );
    }
}

/// A duration in milliseconds, for printing with a decimal.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b` as `N.NNx`, or `n/a` when either side measured nothing.
fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".to_string()
    }
}
