//! A transport with no sockets, for tests that run on tokio's paused clock:
//! connects and requests take simulated time, connections can be closed "by
//! the peer", and every connect is counted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgepool::transport::{
    ConnEvent, ConnEvents, ConnState, Connection, Protocol, RequestBody, SendError, Transport,
};
use edgepool::{Error, Origin};
use http_body_util::Full;

/// How the mock behaves; shared with the test, which may change it.
#[derive(Default)]
pub struct MockControl {
    /// Simulated connect time.
    pub connect_time: Mutex<Duration>,
    /// Simulated time a request takes before its response.
    pub latency: Mutex<Duration>,
    /// Refuse every connect.
    pub refuse: AtomicBool,
    /// Connect attempts so far.
    pub connects: AtomicUsize,
    /// Slots each new connection has.
    pub slots: AtomicUsize,
    /// Every open connection's event handle and closed flag.
    pub open: Mutex<Vec<(ConnEvents, Arc<AtomicBool>)>>,
}

impl MockControl {
    /// Closes every open connection as a peer would.
    pub fn close_all(&self) {
        for (events, closed) in self.open.lock().unwrap().drain(..) {
            closed.store(true, Ordering::SeqCst);
            events.report(ConnEvent::Closed);
        }
    }
}

/// The transport.
#[derive(Clone)]
pub struct MockTransport {
    pub control: Arc<MockControl>,
}

impl MockTransport {
    pub fn new(latency: Duration) -> Self {
        let control = MockControl::default();
        *control.latency.lock().unwrap() = latency;
        control.slots.store(1, Ordering::SeqCst);
        MockTransport {
            control: Arc::new(control),
        }
    }
}

pub struct MockConn {
    latency: Duration,
    slots: usize,
    closed: Arc<AtomicBool>,
}

impl Transport for MockTransport {
    type Conn = MockConn;

    fn expected_slots(&self) -> usize {
        self.control.slots.load(Ordering::SeqCst)
    }

    async fn connect(&self, origin: &Origin, events: ConnEvents) -> Result<MockConn, Error> {
        self.control.connects.fetch_add(1, Ordering::SeqCst);
        let connect_time = *self.control.connect_time.lock().unwrap();
        tokio::time::sleep(connect_time).await;
        if self.control.refuse.load(Ordering::SeqCst) {
            return Err(Error::Connect {
                origin: origin.to_string(),
                source: Arc::new("connection refused (mock)".into()),
            });
        }
        let closed = Arc::new(AtomicBool::new(false));
        self.control
            .open
            .lock()
            .unwrap()
            .push((events, closed.clone()));
        Ok(MockConn {
            latency: *self.control.latency.lock().unwrap(),
            slots: self.control.slots.load(Ordering::SeqCst),
            closed,
        })
    }
}

impl Connection for MockConn {
    type ResponseBody = Full<Bytes>;

    fn protocol(&self) -> Protocol {
        if self.slots > 1 {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }

    fn slots(&self) -> usize {
        self.slots
    }

    fn state(&self) -> ConnState {
        if self.closed.load(Ordering::SeqCst) {
            ConnState::Closed
        } else {
            ConnState::Ready
        }
    }

    async fn send(
        &self,
        _request: http::Request<RequestBody>,
    ) -> Result<http::Response<Full<Bytes>>, SendError> {
        tokio::time::sleep(self.latency).await;
        Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    }

    fn reusable_after_abandoned_body(&self) -> bool {
        true
    }
}
