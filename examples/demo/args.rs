//! Command-line parameters: `--requests N`, `--concurrency N`, `--rtt-ms N`.

use std::fmt;
use std::time::Duration;

/// One line, printed after a bad argument.
pub const USAGE_LINE: &str = "usage: demo [--requests N] [--concurrency N] [--rtt-ms N] [--help]";

/// Printed by `--help`.
pub const HELP: &str = "\
edgepool demo: the same HTTPS workload with a new TCP+TLS connection per
request, and through an edgepool pool over HTTP/1.1, HTTP/2 and HTTP/3,
against embedded origins (TCP and QUIC) behind relays that simulate a network
round trip. Then: the sizing policy's target for that HTTP/1.1 load,
head-of-line blocking on one connection (HTTP/1.1 vs HTTP/2), cold vs warm
first requests, and a cold connect over TCP+TLS, QUIC and QUIC 0-RTT.
Loopback only; no network needed.

usage: demo [--requests N] [--concurrency N] [--rtt-ms N]

options:
  --requests N      GET requests per run (default 2000; 1 to 10000000)
  --concurrency N   requests in flight at once (default 50; 1 to 10000)
  --rtt-ms N        simulated round-trip time in ms (default 20; 0 to 60000)
  -h, --help        print this help
";

/// Upper bounds, so a typo cannot ask for hours of work, more sockets than
/// the OS allows, or a delay that overflows the clock.
const MAX_REQUESTS: u64 = 10_000_000;
const MAX_CONCURRENCY: u64 = 10_000;
const MAX_RTT_MS: u64 = 60_000;

/// What the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub requests: usize,
    pub concurrency: usize,
    pub rtt: Duration,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            requests: 2_000,
            concurrency: 50,
            rtt: Duration::from_millis(20),
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Params),
    Help,
}

/// A command line that cannot be run, in one line.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}; {USAGE_LINE}", self.0)
    }
}

/// Parses the arguments after the program name. Accepts `--flag N` and
/// `--flag=N`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut params = Params::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        };
        if !matches!(flag.as_str(), "--requests" | "--concurrency" | "--rtt-ms") {
            return Err(UsageError(format!("unknown argument '{flag}'")));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(UsageError(format!("{flag} needs a value"))),
        };
        let number: u64 = value.parse().map_err(|_| {
            UsageError(format!(
                "{flag} wants a non-negative whole number, not '{value}'"
            ))
        })?;
        let (min, max) = match flag.as_str() {
            "--requests" => (1, MAX_REQUESTS),
            "--concurrency" => (1, MAX_CONCURRENCY),
            _ => (0, MAX_RTT_MS),
        };
        if !(min..=max).contains(&number) {
            return Err(UsageError(format!(
                "{flag} must be between {min} and {max}, not {number}"
            )));
        }
        // In range, so it fits a usize on every platform the demo builds for.
        let as_usize = usize::try_from(number).unwrap_or(usize::MAX);
        match flag.as_str() {
            "--requests" => params.requests = as_usize,
            "--concurrency" => params.concurrency = as_usize,
            _ => params.rtt = Duration::from_millis(number),
        }
    }
    Ok(Command::Run(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse_strs(&[]), Ok(Command::Run(Params::default())));
        let expected = Params {
            requests: 200,
            concurrency: 10,
            rtt: Duration::from_millis(5),
        };
        assert_eq!(
            parse_strs(&["--requests", "200", "--concurrency=10", "--rtt-ms", "5"]),
            Ok(Command::Run(expected))
        );
        assert_eq!(parse_strs(&["--rtt-ms", "3", "--help"]), Ok(Command::Help));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(parse_strs(&["--nope"]).is_err());
        assert!(parse_strs(&["--requests"]).is_err());
        assert!(parse_strs(&["--requests", "many"]).is_err());
        assert!(parse_strs(&["--requests", "-1"]).is_err());
        assert!(parse_strs(&["--concurrency", "0"]).is_err());
        assert!(parse_strs(&["--concurrency", "10001"]).is_err());
        assert!(parse_strs(&["--rtt-ms", "18446744073709551615"]).is_err());
        assert!(parse_strs(&["--rtt-ms", "18446744073709551616"]).is_err());
        assert!(parse_strs(&["stray"]).is_err());
    }
}
