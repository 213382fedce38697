//! edge_proxy: a reverse proxy on hyper's server that forwards to one origin
//! through an edgepool pool.
//!
//! ```text
//! cargo run --release --example edge_proxy -- --listen 127.0.0.1:8080 --origin http://127.0.0.1:9000
//! ```
//!
//! `--help` lists every flag. The proxy logic lives in `proxy.rs` (reused
//! in-process by `tests/edge_proxy.rs`); this file turns the command line
//! into a transport and a pool, and runs the serve loop until Ctrl-C or
//! SIGTERM.

// Without HTTP/1.1 and TLS (both default features) the fallback `main`
// says what is missing; the rest stays compiled (and checked) but unused.
#![cfg_attr(
    not(all(feature = "http1", feature = "tls")),
    allow(dead_code, unused_imports)
)]

mod args;
mod proxy;

use std::process::ExitCode;
use std::time::Duration;

use edgepool::{Pool, Transport};
use tokio::net::TcpListener;

use args::{Command, Config, ProtocolArg, UsageError};
use proxy::{Limits, Proxy};

/// How long the origin may take to send a response head.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(not(all(feature = "http1", feature = "tls")))]
fn main() -> ExitCode {
    usage_error(UsageError(
        "this build of edgepool lacks the `http1` or `tls` feature (both are defaults)".to_string(),
    ))
}

#[cfg(all(feature = "http1", feature = "tls"))]
#[tokio::main]
async fn main() -> ExitCode {
    use edgepool::transport::http1::Http1;

    let config = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(e),
    };
    let tls = match tls_config(&config) {
        Ok(tls) => tls,
        Err(e) => return usage_error(e),
    };
    // One arm per protocol: each transport is one `run` call.
    let result = match config.protocol {
        ProtocolArg::H1 => run(&config, tls.map_or_else(Http1::new, Http1::with_tls)).await,
        #[cfg(feature = "http2")]
        ProtocolArg::H2 => {
            use edgepool::transport::http2::Http2;
            run(&config, tls.map_or_else(Http2::new, Http2::with_tls)).await
        }
        #[cfg(feature = "http2")]
        ProtocolArg::Auto => {
            use edgepool::transport::auto::Auto;
            run(&config, tls.map_or_else(Auto::new, Auto::with_tls)).await
        }
        #[cfg(not(feature = "http2"))]
        ProtocolArg::H2 | ProtocolArg::Auto => Err(Failure::Usage(UsageError(format!(
            "--protocol {}: needs edgepool's `http2` feature, which this build lacks",
            config.protocol.as_str()
        )))),
        #[cfg(feature = "http3")]
        ProtocolArg::H3 => {
            use edgepool::transport::http3::Http3;
            let mut builder = Http3::builder();
            if let Some(tls) = tls {
                builder = builder.tls(tls);
            }
            match builder.build() {
                Ok(h3) => run(&config, h3).await,
                Err(e) => Err(Failure::Usage(UsageError(format!("--protocol h3: {e}")))),
            }
        }
        #[cfg(not(feature = "http3"))]
        ProtocolArg::H3 => Err(Failure::Usage(UsageError(
            "--protocol h3: needs edgepool's `http3` feature (cargo run --features http3 ...)"
                .to_string(),
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => usage_error(e),
        Err(Failure::Runtime(message)) => {
            eprintln!("edge_proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why the proxy did not run to a clean shutdown.
enum Failure {
    /// A flag's value cannot be used (exit status 2).
    Usage(UsageError),
    /// Something outside the command line failed (exit status 1).
    Runtime(String),
}

fn usage_error(e: UsageError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

/// The TLS configuration for an https origin with `--ca-file`: the webpki
/// roots plus the file's certificates. `None` keeps the transport's default
/// (webpki roots only); verification is never turned off.
#[cfg(feature = "tls")]
fn tls_config(config: &Config) -> Result<Option<edgepool::transport::tls::TlsConfig>, UsageError> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let flag =
        |why: &dyn std::fmt::Display| UsageError(format!("--ca-file '{}': {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| flag(&format!("cannot read it: {e}")))?;
    let tls = edgepool::transport::tls::TlsConfig::builder()
        .add_ca_pem(&pem)
        .and_then(|b| b.build())
        .map_err(|e| flag(&e))?;
    Ok(Some(tls))
}

/// Builds the pool over `transport`, binds the listener, and serves until
/// Ctrl-C or SIGTERM.
async fn run<T: Transport>(config: &Config, transport: T) -> Result<(), Failure> {
    // A blackholed origin must not hold a client forever: no response head
    // within a minute is a 504 (and that connection is closed).
    let mut builder = Pool::builder(transport).request_timeout(Some(RESPONSE_TIMEOUT));
    if let Some(n) = config.max_connections {
        builder = builder.max_connections_per_origin(n);
    }
    if let Some(idle) = config.idle_timeout {
        builder = builder.idle_timeout(idle);
    }
    let pool = builder.build().map_err(|e| {
        // Values were checked when parsed; name the flag anyway.
        Failure::Usage(UsageError(format!("bad pool setting from the flags: {e}")))
    })?;
    let proxy = Proxy::new(pool, config.origin.clone(), Limits::default())
        .map_err(|e| Failure::Usage(UsageError(format!("--origin: {e}"))))?;
    let pool = proxy.pool().clone();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure::Runtime(format!("--listen {}: cannot bind: {e}", config.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("--listen {}: {e}", config.listen)))?;

    println!(
        "edge_proxy listening on http://{local}, origin {}, protocol {}",
        config.origin,
        config.protocol.as_str()
    );
    if let Some(n) = config.warm.filter(|n| *n > 0) {
        // In the background: clients are served from the first moment, and
        // an origin that is down at startup does not stop the proxy.
        let pool = pool.clone();
        let origin = config.origin.clone();
        tokio::spawn(async move {
            match pool.warm(&origin, n).await {
                Ok(()) => eprintln!("edge_proxy: {n} connection(s) to {origin} are warm"),
                Err(e) => eprintln!("edge_proxy: warming {n} connection(s) failed: {e}"),
            }
        });
    }
    proxy::serve(listener, proxy, async {
        shutdown_signal().await;
        eprintln!("edge_proxy: shutting down: not accepting, finishing requests in flight");
    })
    .await;
    pool.shutdown();
    eprintln!("edge_proxy: stopped");
    Ok(())
}

/// Completes on Ctrl-C, or SIGTERM on Unix. If a signal cannot be
/// listened for, that signal simply never arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
