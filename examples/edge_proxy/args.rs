//! The command line of `edge_proxy`: parsed and checked before anything
//! starts, so every mistake is one line that names its flag (exit status 2).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgepool::{Origin, Scheme};

/// One line, printed after a bad argument.
pub const USAGE_LINE: &str = "usage: edge_proxy --listen ADDR --origin URL [--protocol h1|h2|h3|auto] \
[--ca-file PEM] [--max-connections N] [--warm N] [--idle-timeout SECS] [--help]";

/// Printed by `--help`.
pub const HELP: &str = "\
edge_proxy: a reverse proxy on hyper's server that forwards every request to
one origin over an edgepool pool of warm connections.

usage: edge_proxy --listen ADDR --origin URL [options]

required:
  --listen ADDR          where to accept clients, IP:PORT (e.g. 127.0.0.1:8080;
                         port 0 picks a free one). Clients may speak HTTP/1.1
                         or HTTP/2 with prior knowledge (h2c).
  --origin URL           http://host[:port] or https://host[:port], no path

options:
  --protocol P           how to talk to the origin: h1, h2, h3 or auto
                         (default: h1 for http origins, auto for https).
                         h2 over http is prior-knowledge h2c; auto offers h2
                         and http/1.1 by TLS ALPN (over http it is h1).
                         h3 needs the `http3` feature (--features http3).
  --ca-file PEM          also trust the CA certificates in this PEM file for an
                         https origin (the public webpki roots stay trusted;
                         certificate verification is never turned off)
  --max-connections N    most connections to the origin (default 100, >= 1)
  --warm N               open N connections to the origin at startup, in the
                         background, and keep at least N warm (default 0); a
                         failure is printed and the proxy serves anyway
  --idle-timeout SECS    close connections idle this long (default 90;
                         0 keeps them until the origin closes them)
  -h, --help             print this help

endpoints:
  GET /_edgepool/stats   the pool's counters as JSON (Envoy names); needs
                         edgepool's `serde` feature (--features serde),
                         otherwise it answers 501
  anything else          forwarded to the origin

failures: 502 origin error; 503 queue for the origin full, origin backed off
after failed connects (with Retry-After), or shutting down; 504 timeout
(connecting, waiting for a free connection, or no response head within 60 s);
each with a one-line text/plain body. Ctrl-C or SIGTERM stops
accepting, finishes requests in flight (up to 30 s), and exits.

exit status: 0 after a clean shutdown, 1 if the listener cannot be bound,
2 for bad arguments.
";

/// How to talk to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolArg {
    /// HTTP/1.1 (over TLS for https origins).
    H1,
    /// HTTP/2: TLS with ALPN h2, or prior-knowledge h2c over http.
    H2,
    /// HTTP/3 over QUIC.
    H3,
    /// TLS with ALPN h2, falling back to HTTP/1.1.
    Auto,
}

impl ProtocolArg {
    /// The name as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolArg::H1 => "h1",
            ProtocolArg::H2 => "h2",
            ProtocolArg::H3 => "h3",
            ProtocolArg::Auto => "auto",
        }
    }
}

/// What the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept clients.
    pub listen: SocketAddr,
    /// Where to forward.
    pub origin: Origin,
    /// How to talk to the origin (the default already resolved).
    pub protocol: ProtocolArg,
    /// Extra CA certificates for an https origin (unused without TLS,
    /// where https origins are refused).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub ca_file: Option<PathBuf>,
    /// Most connections to the origin.
    pub max_connections: Option<usize>,
    /// Connections to open at startup and keep warm.
    pub warm: Option<usize>,
    /// `Some(None)`: never close idle connections; `None`: the pool's default.
    pub idle_timeout: Option<Option<Duration>>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the proxy.
    Run(Config),
    /// Print the help.
    Help,
}

/// A command line that cannot be run: one line naming the flag.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edge_proxy: {}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after the program name. Accepts `--flag value` and
/// `--flag=value`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, UsageError> {
    let mut listen = None;
    let mut origin = None;
    let mut protocol = None;
    let mut ca_file = None;
    let mut max_connections = None;
    let mut warm = None;
    let mut idle_timeout = None;

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
        let known = [
            "--listen",
            "--origin",
            "--protocol",
            "--ca-file",
            "--max-connections",
            "--warm",
            "--idle-timeout",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(UsageError(format!(
                "unknown argument '{flag}'; {USAGE_LINE}"
            )));
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            return Err(UsageError(format!("{flag} needs a value")));
        };
        let bad = |why: &dyn fmt::Display| UsageError(format!("{flag} '{value}': {why}"));
        match flag.as_str() {
            "--listen" => {
                let addr = value
                    .parse::<SocketAddr>()
                    .map_err(|_| bad(&"expected IP:PORT, such as 127.0.0.1:8080"))?;
                listen = Some(addr);
            }
            "--origin" => origin = Some(Origin::parse(&value).map_err(|e| bad(&e))?),
            "--protocol" => {
                protocol = Some(match value.as_str() {
                    "h1" => ProtocolArg::H1,
                    "h2" => ProtocolArg::H2,
                    "h3" => ProtocolArg::H3,
                    "auto" => ProtocolArg::Auto,
                    _ => return Err(bad(&"expected h1, h2, h3 or auto")),
                })
            }
            "--ca-file" => ca_file = Some(PathBuf::from(&value)),
            "--max-connections" => {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| bad(&"expected a whole number"))?;
                if n == 0 {
                    return Err(bad(&"must be at least 1"));
                }
                max_connections = Some(n);
            }
            "--warm" => {
                warm = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| bad(&"expected a whole number"))?,
                )
            }
            "--idle-timeout" => {
                let secs = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| bad(&"expected seconds, such as 90 or 0.5"))?;
                let timeout = Duration::try_from_secs_f64(secs).map_err(|_| bad(&"too large"))?;
                idle_timeout = Some((!timeout.is_zero()).then_some(timeout));
            }
            _ => unreachable!("flag checked against the known list"),
        }
    }

    let listen = listen.ok_or_else(|| UsageError(format!("--listen is required; {USAGE_LINE}")))?;
    let origin = origin.ok_or_else(|| UsageError(format!("--origin is required; {USAGE_LINE}")))?;
    let protocol = protocol.unwrap_or(match origin.scheme() {
        Scheme::Https => ProtocolArg::Auto,
        _ => ProtocolArg::H1,
    });
    if ca_file.is_some() && origin.scheme() != Scheme::Https {
        return Err(UsageError(format!(
            "--ca-file applies to https origins only, and --origin is {origin}"
        )));
    }
    Ok(Command::Run(Config {
        listen,
        origin,
        protocol,
        ca_file,
        max_connections,
        warm,
        idle_timeout,
    }))
}
