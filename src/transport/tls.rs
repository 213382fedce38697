//! TLS.
#![allow(missing_docs)]
/// placeholder
#[derive(Clone, Debug)] pub struct TlsConfig; impl TlsConfig { pub fn id(&self) -> u64 { 0 } }
