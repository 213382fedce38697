//! A connection that does nothing, so a bench measures the pool alone.

use std::convert::Infallible;

use bytes::Bytes;
use edgepool::transport::{
    ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError, Transport,
};
use edgepool::{Error, Origin};
use http_body_util::Empty;

/// Opens [`NoopConn`]s instantly.
pub struct NoopTransport;

/// One slot, always ready, answers every request with an empty 200.
pub struct NoopConn;

impl Transport for NoopTransport {
    type Conn = NoopConn;

    async fn connect(&self, _origin: &Origin, _events: ConnEvents) -> Result<NoopConn, Error> {
        Ok(NoopConn)
    }
}

impl Connection for NoopConn {
    type ResponseBody = Empty<Bytes>;

    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn slots(&self) -> usize {
        1
    }

    fn state(&self) -> ConnState {
        ConnState::Ready
    }

    async fn send(
        &self,
        _request: http::Request<RequestBody>,
    ) -> Result<http::Response<Empty<Bytes>>, SendError> {
        Ok(http::Response::new(Empty::new()))
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        true
    }
}

/// The same no-op connection, managed by deadpool.
pub struct NoopDeadpool;

impl deadpool::managed::Manager for NoopDeadpool {
    type Type = NoopConn;
    type Error = Infallible;

    async fn create(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    async fn recycle(
        &self,
        _conn: &mut NoopConn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

/// The same no-op connection, managed by bb8.
pub struct NoopBb8;

impl bb8::ManageConnection for NoopBb8 {
    type Connection = NoopConn;
    type Error = Infallible;

    async fn connect(&self) -> Result<NoopConn, Infallible> {
        Ok(NoopConn)
    }

    async fn is_valid(&self, _conn: &mut NoopConn) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut NoopConn) -> bool {
        false
    }
}
