//! Shared helpers for integration tests: an in-process origin server and the
//! test certificates it presents.
//!
//! Each test file does `mod support;` and uses what it needs, so items unused
//! by one file are expected.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod chaos;
pub mod h2_origin;
#[cfg(feature = "http3")]
pub mod h3_origin;
pub mod origin;

use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::RequestBody;
use http_body_util::{BodyExt, Empty};

pub use origin::{Options, TestOrigin};

/// The longest any single wait in a test may take before the test fails
/// instead of hanging. Generous: it only bounds failures, never success.
pub const WAIT: Duration = Duration::from_secs(10);

/// An empty request body in the type every transport takes.
pub fn empty_body() -> RequestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A GET request for an absolute URI, as the pool hands it to a transport.
pub fn get(uri: &str) -> http::Request<RequestBody> {
    http::Request::get(uri)
        .body(empty_body())
        .expect("valid test request")
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, failing the test
/// after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
pub mod mock;
