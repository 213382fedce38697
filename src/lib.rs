#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod core;
mod error;
pub mod health;
mod info;
mod pool;
pub mod recycle;
#[cfg(feature = "tower")]
pub mod service;
pub mod sizing;
pub mod transport;

pub use core::{CloseReason, Stats};
pub use error::{BoxError, Error, ErrorKind};
pub use info::ConnectionInfo;
pub use pool::{Lease, OriginStats, Pool, PoolBuilder, PoolStats, ResponseBody};
#[cfg(feature = "tower")]
pub use service::{PoolLayer, PoolService};
pub use transport::{ConnState, Connection, Origin, Protocol, Scheme, Transport};
