//! Bytes of client memory per idle pooled connection: RSS growth while the
//! pool holds 1,000 idle connections, divided by 1,000.
//!
//! The origin runs in a child process (this same binary with `--serve`), so
//! its memory is not counted. Kernel socket buffers are not in RSS either;
//! what is measured is what edgepool, hyper, h2, quinn and rustls keep per
//! connection in the proxy's own heap.
//!
//! Each measurement runs in a fresh process (`--measure KIND`): measured one
//! after another in one process, later kinds reused heap that earlier ones
//! had freed and came out low by up to half. Each kind is measured
//! [`RUNS`] times and the median and range printed, so a reader can see
//! the spread rather than trust one figure.
//!
//! Run: `cargo bench --bench memory`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgepool::transport::Transport;
use edgepool::transport::http1::Http1;
use edgepool::transport::http2::Http2;
use edgepool::{Origin, Pool};
use support::{Options, TestOrigin, certs};

const CONNECTIONS: usize = 1000;
/// Measurements of each kind, each in its own process.
const RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(args.get(i + 1).map(String::as_str).unwrap_or("plain"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let per_conn = measure(args.get(i + 1).map(String::as_str).unwrap_or("plain"));
        println!("{per_conn:.0}");
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // cargo test --benches / cargo bench --list: nothing to list
    }
    println!(
        "{:<22} {:>18} {:>22}",
        "connection kind",
        "median bytes/conn",
        format!("range of {RUNS} runs")
    );
    for (name, kind) in cases() {
        let mut runs: Vec<f64> = (0..RUNS).map(|_| measure_in_child(&kind)).collect();
        runs.sort_unstable_by(f64::total_cmp);
        println!(
            "{name:<22} {:>18.0} {:>22}",
            runs[RUNS / 2],
            format!("{:.0} - {:.0}", runs[0], runs[RUNS - 1])
        );
    }
}

/// One measurement of `kind`, in a fresh process.
fn measure_in_child(kind: &str) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let output = Command::new(exe)
        .args(["--measure", kind])
        .stderr(Stdio::inherit())
        .output()
        .expect("run a measurement");
    assert!(output.status.success(), "measuring {kind} failed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a number of bytes")
}

fn cases() -> Vec<(&'static str, String)> {
    let mut cases = vec![
        ("http/1.1 plaintext", "plain".to_string()),
        ("http/1.1 over TLS", "tls".to_string()),
    ];
    cases.extend(extra_cases());
    cases
}

/// HTTP/2 over TLS, and HTTP/3 when built in (one stream per connection
/// here, so that 1,000 checkouts hold 1,000 connections).
fn extra_cases() -> Vec<(&'static str, String)> {
    let mut cases = vec![("http/2 over TLS", "h2tls".to_string())];
    if cfg!(feature = "http3") {
        cases.push(("http/3 (QUIC)", "h3".to_string()));
    }
    cases
}

/// The HTTP/3 origin, in the child; its URL, for the parent.
#[cfg(feature = "http3")]
async fn start_h3() -> (String, Box<dyn std::any::Any>) {
    use support::h3_origin::{H3Options, H3Origin};
    let origin = H3Origin::start(H3Options::default()).await;
    (origin.url(), Box::new(origin))
}

#[cfg(not(feature = "http3"))]
async fn start_h3() -> (String, Box<dyn std::any::Any>) {
    panic!("this bench was built without the http3 feature");
}

fn serve(kind: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let options = match kind {
            "tls" => Options::tls(),
            "h2tls" => Options {
                tls: true,
                http2: true,
                ..Options::default()
            },
            _ => Options::plain(),
        };
        let (url, origin): (String, Box<dyn std::any::Any>) = if kind == "h3" {
            start_h3().await
        } else {
            let origin = TestOrigin::start(options).await;
            (origin.url(""), Box::new(origin))
        };
        // The test CA is made per process: hand ours to the parent.
        println!("{url}");
        // Nothing may follow the CA's END line: the parent stops reading
        // there, and a write into the closed pipe would kill this process.
        let ca = certs::ca_pem();
        let _ = write!(
            std::io::stdout(),
            "{}{}",
            ca,
            if ca.ends_with('\n') { "" } else { "\n" }
        );
        let _ = std::io::stdout().flush();
        // Serve until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        drop(origin);
    });
}

fn spawn_origin(kind: &str) -> (Child, String, String) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--serve", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn origin");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = lines.next().expect("origin url").expect("origin url");
    let mut ca = String::new();
    for line in lines {
        let line = line.expect("ca line");
        ca.push_str(&line);
        ca.push('\n');
        if line.starts_with("-----END") {
            break;
        }
    }
    (child, url.trim().to_string(), ca)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("rss pages");
    pages * 4096
}

fn measure(kind: &str) -> f64 {
    let (mut child, url, ca) = spawn_origin(kind);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let per_conn = rt.block_on(async {
        let origin = Origin::parse(&url).expect("origin url");
        let tls = edgepool::transport::tls::TlsConfig::builder()
            .webpki_roots(false)
            .add_ca_pem(ca.as_bytes())
            .expect("child's CA")
            .build()
            .expect("tls config");
        if kind == "h2tls" {
            let h2 = Http2::with_tls(tls)
                .max_concurrent_streams(1)
                .expect("one stream");
            hold_idle(h2, &origin).await
        } else if kind == "h3" {
            hold_idle_h3(tls, &origin).await
        } else {
            hold_idle(Http1::with_tls(tls), &origin).await
        }
    });
    drop(child.stdin.take());
    let _ = child.wait();
    per_conn
}

#[cfg(feature = "http3")]
async fn hold_idle_h3(tls: edgepool::transport::tls::TlsConfig, origin: &Origin) -> f64 {
    let h3 = edgepool::transport::http3::Http3::builder()
        .tls(tls)
        .max_concurrent_streams(1)
        .build()
        .expect("http3 transport");
    hold_idle(h3, origin).await
}

#[cfg(not(feature = "http3"))]
async fn hold_idle_h3(_tls: edgepool::transport::tls::TlsConfig, _origin: &Origin) -> f64 {
    unreachable!("the h3 case is listed only with the http3 feature")
}

/// Opens `CONNECTIONS` connections through the pool (all checked out at
/// once, so each is a new one), lets them go idle, and returns the RSS
/// growth per connection.
async fn hold_idle<T: Transport>(transport: T, origin: &Origin) -> f64 {
    let pool = Pool::builder(transport)
        .max_connections_per_origin(CONNECTIONS)
        .max_pending_per_origin(CONNECTIONS)
        .checkout_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(60))
        .build()
        .expect("pool");
    // Warm the allocator and the TLS machinery with one connection first.
    drop(pool.checkout(origin).await.expect("first"));
    let before = rss_bytes();
    let mut leases = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        leases.push(pool.checkout(origin));
    }
    let mut held = Vec::with_capacity(CONNECTIONS);
    for lease in leases {
        held.push(lease.await.expect("checkout"));
    }
    let opened = pool.stats().total.cx_active as usize;
    assert!(opened >= CONNECTIONS, "only {opened} connections opened");
    for lease in held {
        lease.release();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    after.saturating_sub(before) as f64 / CONNECTIONS as f64
}
