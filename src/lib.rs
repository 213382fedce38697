//! edgepool: warm, reusable connections from a proxy to its origins.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod core;
mod error;
pub mod transport;

pub use error::{BoxError, Error, ErrorKind};
pub use transport::{ConnState, Connection, Origin, Protocol, Scheme, Transport};
