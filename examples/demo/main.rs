//! edgepool demo: what a warm connection pool saves a proxy.
//!
//! Starts an HTTPS origin (HTTP/2 and HTTP/1.1 over TCP), an HTTP/3 origin
//! (QUIC over UDP), and a relay in front of each that simulates a network
//! round-trip time (all on 127.0.0.1, nothing leaves the machine), then
//! sends the same workload opening a new TCP+TLS connection per request,
//! and through an edgepool pool over HTTP/1.1, HTTP/2 and HTTP/3, and
//! prints a table comparing them. Below it: the sizing policy's target for
//! the HTTP/1.1 load, head-of-line blocking on one connection (HTTP/1.1 vs
//! HTTP/2), cold vs warm first requests, and the cold connect (TCP+TLS vs
//! QUIC vs QUIC 0-RTT) in round trips.
//!
//! ```text
//! cargo run --release --example demo -- [--requests N] [--concurrency N] [--rtt-ms N]
//! ```

mod args;
mod certs;
mod cold_connect;
mod h3_origin;
mod hol;
mod origin;
mod progress;
mod relay;
mod report;
mod scenario;
mod sizing_check;
mod udp_relay;
mod warmth;
mod workload;

use std::process::ExitCode;

use args::{Command, Params};
use certs::Certs;
use h3_origin::H3Origin;
use origin::Origin;
use relay::Relay;
use scenario::{Scenario, Setup};
use udp_relay::UdpRelay;

fn main() -> ExitCode {
    // Non-UTF-8 arguments are kept (lossily) so they are reported as unknown.
    let arguments = std::env::args_os().skip(1).map(|a| {
        a.into_string()
            .unwrap_or_else(|a| a.to_string_lossy().into_owned())
    });
    let params = match args::parse(arguments) {
        Ok(Command::Run(params)) => params,
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be started (only fails if the OS refuses threads or timers)");
    match runtime.block_on(run(params)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("demo: {failed} requests failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up, runs every scenario and section, prints the report. Returns how
/// many requests failed in all.
async fn run(params: Params) -> Result<usize, Box<dyn std::error::Error>> {
    let certs = Certs::generate().expect("rcgen can generate a CA and a server certificate");
    let origin = Origin::start(&certs).await?;
    let relay = Relay::start(origin.addr(), params.rtt).await?;
    let h3_origin = H3Origin::start(&certs).await?;
    let udp_relay = UdpRelay::start(h3_origin.addr(), params.rtt).await?;
    let tls = scenario::demo_tls(&certs.ca_pem)?;
    // The certificate names 127.0.0.1, so it verifies for the relay's address.
    let url = format!("https://{}/", relay.addr()).parse()?;
    let h3_url = format!("https://{}/", udp_relay.addr()).parse()?;
    let setup = Setup {
        origin,
        url,
        h3_origin,
        h3_url,
        tls,
        ca_pem: certs.ca_pem.clone(),
        params,
    };

    let mut rows = Vec::with_capacity(Scenario::ALL.len());
    let mut notes = Vec::new();
    for scenario in Scenario::ALL {
        let row = scenario.run(&setup).await?;
        notes.extend(scenario.note(&row, &params));
        rows.push(row);
    }
    let hol = hol::run(&setup).await?;
    let warmth = warmth::run(&setup).await?;
    let cold = cold_connect::run(&setup).await?;

    println!();
    report::print_params(&params);
    report::print_table(&rows);
    report::print_notes(&notes);
    report::print_speedups(&rows);
    sizing_check::print(&rows);
    hol::print(&hol, params.rtt);
    warmth::print(&warmth, params.rtt);
    cold_connect::print(&cold, params.rtt);
    Ok(rows.iter().map(|row| row.errors).sum::<usize>()
        + hol.iter().map(hol::HolRow::errors).sum::<usize>()
        + warmth.iter().map(warmth::Case::errors).sum::<usize>()
        + cold.iter().map(cold_connect::Case::errors).sum::<usize>())
}
