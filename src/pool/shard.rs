//! One origin's pool in the async world: the sans-IO core behind a mutex,
//! and the code that carries out its actions (spawn connects, wake waiters,
//! close connections).
//!
//! Locking: one `std::sync::Mutex` per origin, held for one core call plus
//! the actions it queued (oneshot sends and task spawns, all non-blocking),
//! never across an `.await`. Connection handles the core asks to close are
//! dropped after the lock is released, so a transport whose drop reports an
//! event cannot deadlock on this mutex.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::core::{
    Action, CloseReason, ConnId, CoreConfig, Grant, OriginPool, RejectReason, RetireReason,
    WaitFailure, WaiterId,
};
use crate::health::HealthCheck;
use crate::recycle::RetirePolicy;
use crate::sizing::SizingPolicy;
use crate::transport::{ConnEvent, ConnEvents, ConnState, Connection, Transport};
use crate::{Error, Origin};

/// What a waiting request receives: its slot and the connection, or why not.
pub(crate) type Served<C> = Result<(Grant, ConnRef<C>), Error>;

/// A pooled connection, shared by the pool and the leases on it.
pub(crate) type ConnRef<C> = Arc<CacheLine<C>>;

/// Gives each connection's reference count a cache line of its own: every
/// checkout and release touches it, and with small connection types two
/// connections' counts shared a line, so two workers using two different
/// connections still invalidated each other's caches.
#[repr(align(64))]
pub(crate) struct CacheLine<C>(C);

impl<C> std::ops::Deref for CacheLine<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.0
    }
}
type WaiterTx<C> = oneshot::Sender<Served<C>>;
type Core<C> = OriginPool<ConnRef<C>, WaiterTx<C>>;

/// The pool's clock. tokio's, so tests with paused time drive the core too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Shard<T: Transport> {
    pub(crate) origin: Origin,
    locked: Mutex<Locked<T::Conn>>,
    /// Woken when a shut-down origin has nothing left (graceful shutdown).
    drained: tokio::sync::Notify,
    /// Woken when a connect succeeds or fails (for `Pool::warm`).
    progress: tokio::sync::Notify,
    /// The warm level asked for with `Pool::warm`: the policy's target never
    /// goes below it.
    pinned_warm: std::sync::atomic::AtomicUsize,
    /// The last connect error, reported by `Pool::warm`.
    last_connect_error: Mutex<Option<Error>>,
    settings: Arc<Settings<T>>,
}

/// What every origin of a pool shares.
pub(crate) struct Settings<T: Transport> {
    pub(crate) transport: T,
    pub(crate) connect_timeout: Duration,
    pub(crate) check_after_idle: Option<Duration>,
    pub(crate) health: Arc<dyn HealthCheck<T::Conn>>,
    pub(crate) retire: Option<Arc<dyn RetirePolicy<T::Conn>>>,
    pub(crate) sizing: Arc<dyn SizingPolicy>,
}

/// What the shard's mutex guards.
struct Locked<C> {
    core: Core<C>,
    /// Tasks waiting for the pending queue to have room (tower's poll_ready).
    /// Under the same lock as the core, so a task cannot register just after
    /// the queue drained and miss its wake-up.
    room_wakers: Vec<Waker>,
}

impl<T: Transport> Shard<T> {
    pub(crate) fn new(
        origin: Origin,
        config: CoreConfig,
        settings: Arc<Settings<T>>,
    ) -> Result<Self, Error> {
        Ok(Shard {
            origin,
            locked: Mutex::new(Locked {
                core: OriginPool::new(config)?,
                room_wakers: Vec::new(),
            }),
            settings,
            drained: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
            pinned_warm: std::sync::atomic::AtomicUsize::new(0),
            last_connect_error: Mutex::new(None),
        })
    }

    /// Locks the core. A panic while the lock was held cannot leave the core
    /// half-updated in a way later calls rely on (each call re-checks its
    /// ids), so a poisoned lock is taken over rather than spread.
    fn lock(&self) -> MutexGuard<'_, Locked<T::Conn>> {
        self.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the core, then carries out the actions it queued. Handles
    /// of closed connections are dropped after the lock is released.
    /// `connect_error` is handed to waiters failed because a connect failed.
    fn with_core<R>(
        self: &Arc<Self>,
        connect_error: Option<&Error>,
        f: impl FnOnce(&mut Core<T::Conn>, Instant) -> R,
    ) -> R {
        let mut closed: Vec<ConnRef<T::Conn>> = Vec::new();
        // The clock is read before locking, to keep the critical section short.
        // Two threads may then enter with their instants in the other order;
        // the core only ever compares instants with saturating arithmetic,
        // so a microsecond of disorder shifts an idle deadline by as much.
        let now = now();
        let result = {
            let mut locked = self.lock();
            let Locked { core, room_wakers } = &mut *locked;
            let result = f(core, now);
            while let Some(action) = core.poll_action() {
                match action {
                    Action::Connect(id) => self.spawn_connect(id, None),
                    Action::Wake { waiter, grant } => {
                        let conn = core.conn(grant.conn).cloned();
                        let sent = match conn {
                            Some(conn) => waiter.send(Ok((grant, conn))),
                            None => Err(Err(Error::Shutdown {
                                reason: "connection vanished while being lent",
                            })),
                        };
                        if sent.is_err() {
                            // The waiter gave up between being served and
                            // receiving: its slot goes straight back.
                            core.release(grant.conn, now, true);
                        }
                    }
                    Action::Fail { waiter, reason } => {
                        let _ = waiter.send(Err(self.wait_error(reason, connect_error)));
                    }
                    Action::Close {
                        conn,
                        reason,
                        handle,
                    } => {
                        tracing::debug!(origin = %self.origin, %conn, reason = reason.as_str(), "closing connection");
                        closed.extend(handle);
                    }
                }
            }
            if !room_wakers.is_empty() && core.has_room() {
                room_wakers.drain(..).for_each(Waker::wake);
            }
            if core.is_shut_down() && core.is_empty() {
                self.drained.notify_waiters();
            }
            result
        };
        drop(closed);
        result
    }

    fn wait_error(&self, reason: WaitFailure, connect_error: Option<&Error>) -> Error {
        match reason {
            WaitFailure::Timeout { waited } => Error::CheckoutTimeout {
                origin: self.origin.to_string(),
                waited,
            },
            WaitFailure::ConnectFailed => connect_error.cloned().unwrap_or_else(|| {
                Error::connect(&self.origin, "connection closed during its handshake")
            }),
            WaitFailure::CircuitOpen { retry_after } => Error::OriginUnavailable {
                origin: self.origin.to_string(),
                retry_after,
            },
            _ => Error::Shutdown {
                reason: "the pool was shut down while the request waited",
            },
        }
    }

    /// Opens a connection for the core's attempt `id`. A reserved attempt
    /// (for one retrying request) sends its first slot, or its failure, to
    /// `reply`. Either way the connect runs to its end on its own task, even
    /// if the request that caused it is cancelled: it then joins the pool
    /// (aborting handshakes under load only causes more of them).
    fn spawn_connect(
        self: &Arc<Self>,
        id: ConnId,
        reply: Option<oneshot::Sender<Served<T::Conn>>>,
    ) {
        let shard = Arc::clone(self);
        tracing::debug!(origin = %self.origin, conn = %id, "connecting");
        tokio::spawn(async move {
            let events = shard.events_for(id);
            let timeout = shard.settings.connect_timeout;
            let outcome = tokio::time::timeout(
                timeout,
                shard.settings.transport.connect(&shard.origin, events),
            )
            .await;
            let result = outcome.unwrap_or_else(|_| {
                Err(Error::ConnectTimeout {
                    origin: shard.origin.to_string(),
                    timeout,
                })
            });
            match result {
                Ok(conn) => {
                    let slots = conn.slots();
                    let conn = Arc::new(CacheLine(conn));
                    tracing::debug!(origin = %shard.origin, conn = %id, slots, "connected");
                    let handle = Arc::clone(&conn);
                    let zero_rtt = handle.used_0rtt();
                    let outcome = shard.with_core(None, |core, now| {
                        if zero_rtt {
                            core.record_connect_0rtt();
                        }
                        let outcome = core.connected(id, now, slots, conn);
                        // A SlotsChanged that arrived while the attempt was
                        // still connecting was dropped; read the live value.
                        let live = handle.slots();
                        if outcome.is_ok() && live != slots {
                            core.set_slots(id, now, live);
                        }
                        outcome
                    });
                    shard.progress.notify_waiters();
                    match (outcome, reply) {
                        (Ok(Some(grant)), Some(reply)) => {
                            if reply.send(Ok((grant, handle))).is_err() {
                                shard.with_core(None, |core, now| {
                                    core.release(grant.conn, now, true)
                                });
                            }
                        }
                        (Ok(Some(grant)), None) => {
                            shard.with_core(None, |core, now| core.release(grant.conn, now, true));
                        }
                        (Ok(None), Some(reply)) => {
                            // Reserved, but the peer allows no stream: the
                            // requester falls back to waiting.
                            let _ = reply.send(Err(Error::connect(
                                &shard.origin,
                                "the new connection allows no requests",
                            )));
                        }
                        (Ok(None), None) => {}
                        (Err(rejected), reply) => {
                            drop(rejected); // abandoned meanwhile (pool shut down): close it
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(Error::Shutdown {
                                    reason: "the pool was shut down while connecting",
                                }));
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(origin = %shard.origin, conn = %id, %error, "connect failed");
                    *shard
                        .last_connect_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
                    shard.with_core(Some(&error), |core, now| core.connect_failed(id, now));
                    shard.progress.notify_waiters();
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(error));
                    }
                }
            }
        });
    }

    /// The event handle for one connection: holds the shard weakly, so a
    /// connection task outliving the pool reports into nothing.
    fn events_for(self: &Arc<Self>, id: ConnId) -> ConnEvents {
        let shard: Weak<Self> = Arc::downgrade(self);
        ConnEvents::new(move |event| {
            let Some(shard) = shard.upgrade() else { return };
            tracing::trace!(origin = %shard.origin, conn = %id, ?event, "connection event");
            shard.with_core(None, |core, now| match event {
                ConnEvent::Closed => core.close(id, now, CloseReason::PeerClosed),
                ConnEvent::Draining => core.drain(id, now),
                ConnEvent::SlotsChanged(n) => core.set_slots(id, now, n),
            });
        })
    }

    /// Gets a slot: at once if one is free, else by waiting in FIFO order
    /// until `deadline`. A connection found closed or draining at the moment
    /// of lending is reported to the core and skipped, so a connection whose
    /// peer closed it is never lent, even if its close event is still on
    /// its way.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        deadline: &mut Deadline,
    ) -> Result<Lease<T>, Error> {
        loop {
            let (grant, conn) = self.checkout_once(deadline).await?;
            match conn.state() {
                ConnState::Ready => {
                    let lease = Lease {
                        shard: Arc::clone(self),
                        conn,
                        grant,
                        released: false,
                    };
                    if self
                        .settings
                        .check_after_idle
                        .is_some_and(|after| grant.idle_for >= after)
                    {
                        if let Err(error) = self.settings.health.check(&lease.conn).await {
                            tracing::debug!(origin = %self.origin, conn = %grant.conn, %error, "idle connection failed its check; not lending it");
                            lease.discard_as(CloseReason::HealthCheck);
                            continue;
                        }
                        self.with_core(None, |core, now| core.checked(grant.conn, now));
                    }
                    return Ok(lease);
                }
                state => {
                    tracing::debug!(origin = %self.origin, conn = %grant.conn, ?state, "skipping a connection that is no longer ready");
                    self.with_core(None, |core, now| {
                        match state {
                            ConnState::Draining => core.drain(grant.conn, now),
                            _ => core.close(grant.conn, now, CloseReason::PeerClosed),
                        }
                        core.release(grant.conn, now, true);
                    });
                }
            }
        }
    }

    async fn checkout_once(
        self: &Arc<Self>,
        deadline: &mut Deadline,
    ) -> Result<(Grant, ConnRef<T::Conn>), Error> {
        // The fast path (a free slot) allocates nothing: the channel a
        // waiter needs is made only once it is clear the request must wait.
        let attempt = self.with_core(None, |core, now| {
            if let Some(grant) = core.try_checkout(now) {
                return match core.conn(grant.conn) {
                    Some(conn) => Checkout::Granted(grant, Arc::clone(conn)),
                    None => Checkout::Rejected(RejectReason::Shutdown),
                };
            }
            let (tx, rx) = oneshot::channel();
            let at = deadline.at(now);
            match core.enqueue(now, at, tx) {
                Ok(id) => Checkout::Queued(id, rx, at),
                Err(rejected) => Checkout::Rejected(rejected.reason),
            }
        });
        let (id, rx, at) = match attempt {
            Checkout::Granted(grant, conn) => return Ok((grant, conn)),
            Checkout::Queued(id, rx, at) => (id, rx, at),
            Checkout::Rejected(RejectReason::CircuitOpen { retry_after }) => {
                return Err(Error::OriginUnavailable {
                    origin: self.origin.to_string(),
                    retry_after,
                });
            }
            Checkout::Rejected(RejectReason::Overflow) => {
                return Err(Error::PendingOverflow {
                    origin: self.origin.to_string(),
                    max_pending: self.lock().core.config().max_pending,
                });
            }
            Checkout::Rejected(_) => {
                return Err(Error::Shutdown {
                    reason: "the pool is shut down",
                });
            }
        };
        let mut guard = WaitGuard {
            shard: Arc::clone(self),
            id,
            rx: Some(rx),
        };
        guard.wait(tokio::time::Instant::from_std(at)).await
    }

    /// A slot on a connection opened for this request alone (a safe retry
    /// after a reused connection failed). Falls back to an ordinary
    /// checkout when no fresh connection can be had (circuit open, or the
    /// limit reached with nothing idle to close).
    pub(crate) async fn checkout_fresh(
        self: &Arc<Self>,
        deadline: &mut Deadline,
    ) -> Result<Lease<T>, Error> {
        let Some(id) = self.with_core(None, |core, now| core.reserve_connect(now)) else {
            return self.checkout(deadline).await;
        };
        let (tx, rx) = oneshot::channel();
        self.spawn_connect(id, Some(tx));
        match rx.await {
            Ok(Ok((grant, conn))) => Ok(Lease {
                shard: Arc::clone(self),
                conn,
                grant,
                released: false,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Shutdown {
                reason: "the pool was dropped while connecting",
            }),
        }
    }

    /// The periodic health check of idle connections: multiplexed ones are
    /// PINGed, HTTP/1.1 ones asked for their state. Checks run on their own
    /// tasks; a failed one closes its connection.
    pub(crate) fn health_pass(self: &Arc<Self>, interval: Duration) {
        let due: Vec<(ConnId, ConnRef<T::Conn>)> = self.with_core(None, |core, now| {
            core.due_for_check(now, interval)
                .into_iter()
                .filter_map(|id| core.conn(id).map(|c| (id, Arc::clone(c))))
                .collect()
        });
        for (id, conn) in due {
            let shard = Arc::clone(self);
            tokio::spawn(async move {
                match shard.settings.health.check(&conn).await {
                    Ok(()) => shard.with_core(None, |core, now| core.checked(id, now)),
                    Err(error) => {
                        tracing::debug!(origin = %shard.origin, conn = %id, %error, "idle connection failed its periodic check");
                        shard.with_core(None, |core, now| {
                            core.close(id, now, CloseReason::HealthCheck)
                        });
                    }
                }
            });
        }
    }

    /// Re-sizes the origin: samples its load, asks the policy (outside the
    /// lock: it is the application's code), applies the target.
    pub(crate) fn maintain(self: &Arc<Self>) {
        let sample = self.with_core(None, |core, now| core.load_sample(now));
        let target = self.settings.sizing.target(&sample);
        let pinned = self.pinned_warm.load(std::sync::atomic::Ordering::Relaxed);
        self.with_core(None, |core, now| {
            core.set_targets(now, target.warm.max(pinned), target.max.max(pinned))
        });
    }

    /// Opens connections until `n` are ready, and keeps at least `n` warm
    /// from now on. Fails with the connect error if a connect fails.
    pub(crate) async fn warm(self: &Arc<Self>, n: usize) -> Result<(), Error> {
        self.pinned_warm
            .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        let failures_before = self.stats().cx_connect_fail;
        self.with_core(None, |core, now| {
            let (warm, max) = core.targets();
            core.set_targets(now, warm.max(n), max.max(n));
        });
        loop {
            let notified = self.progress.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let (ready, failures, shut_down, circuit) = {
                let locked = self.lock();
                let core = &locked.core;
                (
                    core.ready_count(),
                    core.stats().cx_connect_fail,
                    core.is_shut_down(),
                    core.circuit(),
                )
            };
            if ready >= n {
                return Ok(());
            }
            if shut_down {
                return Err(Error::Shutdown {
                    reason: "the pool was shut down while warming",
                });
            }
            if failures > failures_before {
                let error = self
                    .last_connect_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return Err(error.unwrap_or_else(|| {
                    Error::connect(&self.origin, "connect failed while warming")
                }));
            }
            if let crate::core::Circuit::Open { until } = circuit {
                return Err(Error::OriginUnavailable {
                    origin: self.origin.to_string(),
                    retry_after: until.saturating_duration_since(now()),
                });
            }
            notified.await;
        }
    }

    /// Applies an origin's Keep-Alive hint to a connection.
    pub(crate) fn keep_alive_hint(self: &Arc<Self>, conn: ConnId, hint: crate::recycle::KeepAlive) {
        self.with_core(None, |core, now| {
            core.keep_alive_hint(conn, now, hint.timeout, hint.max)
        });
    }

    pub(crate) fn record_retry(self: &Arc<Self>) {
        self.with_core(None, |core, _| core.record_retry());
    }

    /// Expires deadlines and idle connections; returns when next to call.
    pub(crate) fn handle_timeout(self: &Arc<Self>) -> Option<Instant> {
        self.with_core(None, |core, now| {
            core.handle_timeout(now);
            core.next_timeout()
        })
    }

    pub(crate) fn shutdown(self: &Arc<Self>) {
        self.with_core(None, |core, now| core.shutdown(now));
    }

    /// Waits until this (shut down) origin has nothing open or leased.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a drain in between still wakes us.
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Closes every connection now, aborting what they carry.
    pub(crate) fn force_close(self: &Arc<Self>) {
        let handles: Vec<ConnRef<T::Conn>> = self.with_core(None, |core, now| {
            let handles = core.handles().map(|(_, h)| Arc::clone(h)).collect();
            core.force_close_all(now);
            handles
        });
        for conn in handles {
            conn.abort();
        }
    }

    pub(crate) fn stats(&self) -> crate::core::Stats {
        self.lock().core.stats()
    }

    /// True when the origin has nothing open, leased, connecting or waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().core.is_empty()
    }

    /// When this origin was last asked for, if it could be evicted now.
    pub(crate) fn evictable_since(&self) -> Option<Option<Instant>> {
        if self.pinned_warm.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return None;
        }
        let locked = self.lock();
        locked
            .core
            .is_evictable()
            .then(|| locked.core.last_request())
    }

    /// Closes this origin's idle connections and returns its final counters,
    /// if it is still evictable.
    pub(crate) fn evict(self: &Arc<Self>) -> Option<crate::core::Stats> {
        self.with_core(None, |core, now| {
            if !core.is_evictable() {
                return None;
            }
            core.shutdown(now);
            Some(core.stats())
        })
    }

    /// True when the origin's entry can be dropped without losing anything:
    /// see [`OriginPool::is_forgettable`]; and no warm level was asked for.
    pub(crate) fn is_forgettable(&self) -> bool {
        self.pinned_warm.load(std::sync::atomic::Ordering::Relaxed) == 0
            && self.lock().core.is_forgettable(now())
    }

    /// Ready while a new request would not be refused for a full pending
    /// queue; otherwise registers `cx` to be woken when the queue has room.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut locked = self.lock();
        if locked.core.is_shut_down() {
            return Poll::Ready(Err(Error::Shutdown {
                reason: "the pool is shut down",
            }));
        }
        if locked.core.has_room() {
            return Poll::Ready(Ok(()));
        }
        if !locked.room_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            locked.room_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// When a request stops waiting for a slot. Fixed at its first wait (so a
/// request that skips a dead connection and waits again keeps its
/// deadline), and never computed on the fast path, which needs no clock
/// beyond the one the core reads.
pub(crate) struct Deadline {
    timeout: Duration,
    at: Option<Instant>,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline { timeout, at: None }
    }

    fn at(&mut self, now: Instant) -> Instant {
        *self
            .at
            .get_or_insert_with(|| crate::core::later(now, self.timeout))
    }
}

/// What one locked checkout attempt came to.
enum Checkout<C> {
    Granted(Grant, ConnRef<C>),
    Queued(WaiterId, oneshot::Receiver<Served<C>>, Instant),
    Rejected(RejectReason),
}

/// A request waiting in the core's queue. Dropping it (the request's future
/// was cancelled) takes the waiter out of the queue, or, if it was served in
/// the meantime, gives the slot back.
struct WaitGuard<T: Transport> {
    shard: Arc<Shard<T>>,
    id: WaiterId,
    rx: Option<oneshot::Receiver<Served<T::Conn>>>,
}

impl<T: Transport> WaitGuard<T> {
    async fn wait(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(Grant, ConnRef<T::Conn>), Error> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(Error::Shutdown {
                reason: "waiter polled twice",
            });
        };
        let served = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(served)) => served,
            Ok(Err(_)) => Err(Error::Shutdown {
                reason: "the pool was dropped while the request waited",
            }),
            Err(_) => {
                // Our timer fired. The core decides: either it fails us now
                // (the failure lands in our channel), or we were served just
                // before and the grant is already in the channel.
                let id = self.id;
                self.shard.with_core(None, |core, now| core.expire(id, now));
                match self.rx.as_mut().map(|rx| rx.try_recv()) {
                    Some(Ok(served)) => served,
                    _ => {
                        self.shard.with_core(None, |core, _| core.cancel(id));
                        Err(Error::CheckoutTimeout {
                            origin: self.shard.origin.to_string(),
                            waited: Duration::ZERO,
                        })
                    }
                }
            }
        };
        self.rx = None;
        served
    }
}

impl<T: Transport> Drop for WaitGuard<T> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let id = self.id;
        self.shard.with_core(None, |core, now| {
            if core.cancel(id).is_none() {
                // Served (or failed) before we could cancel: return the slot.
                if let Ok(Ok((grant, _conn))) = rx.try_recv() {
                    core.release(grant.conn, now, true);
                }
            }
        });
    }
}

/// One slot on one connection, lent to one request: what
/// [`Pool::checkout`](crate::Pool::checkout) returns, and what a pooled
/// response body holds until it ends.
///
/// Give it back with [`release`](Lease::release) when the connection is fit
/// for another request, or [`discard`](Lease::discard) when it is not.
/// Dropped without either, it is treated as abandoned mid-request: an
/// HTTP/1.1 connection is then closed (half a response may still be on the
/// wire), a multiplexed one keeps serving.
pub struct Lease<T: Transport> {
    shard: Arc<Shard<T>>,
    conn: ConnRef<T::Conn>,
    grant: Grant,
    released: bool,
}

impl<T: Transport> Lease<T> {
    pub(crate) fn shard(&self) -> &Arc<Shard<T>> {
        &self.shard
    }

    pub(crate) fn grant(&self) -> Grant {
        self.grant
    }

    /// The connection this slot is on.
    pub fn connection(&self) -> &T::Conn {
        &self.conn
    }

    /// A shared handle to the connection (for sending while the lease is
    /// moved into a response body).
    pub(crate) fn connection_arc(&self) -> ConnRef<T::Conn> {
        Arc::clone(&self.conn)
    }

    /// The connection's id, unique within its origin.
    pub fn id(&self) -> u64 {
        self.grant.conn.as_u64()
    }

    /// Whether the connection had carried a request before this lease.
    pub fn reused(&self) -> bool {
        self.grant.reused
    }

    /// How long the connection sat idle before this lease (zero if busy or new).
    pub fn idle_for(&self) -> Duration {
        self.grant.idle_for
    }

    /// Which connection this is, as a response extension carries it.
    pub fn info(&self) -> crate::ConnectionInfo {
        crate::ConnectionInfo {
            id: self.id(),
            origin: self.shard.origin.clone(),
            protocol: self.conn.protocol(),
            reused: self.grant.reused,
            idle_for: self.grant.idle_for,
            zero_rtt: self.conn.used_0rtt(),
        }
    }

    /// Returns the slot after a request that ended cleanly. The connection
    /// is lent again if it is still ready; if it has started draining (GOAWAY,
    /// `Connection: close`) it finishes its other leases and closes; if it
    /// has closed, it is forgotten.
    pub fn release(mut self) {
        self.finish(true);
    }

    /// Returns the slot and closes the connection: a request on it failed in
    /// a way that leaves it unfit for another.
    pub fn discard(mut self) {
        self.finish(false);
    }

    /// Returns the slot after a request failed on a connection that
    /// survives it (a reset stream on HTTP/2); too many such failures in a
    /// row retire the connection.
    pub fn release_failed(mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let id = self.grant.conn;
        self.shard
            .with_core(None, |core, now| core.release_failed(id, now));
    }

    pub(crate) fn discard_as(mut self, reason: CloseReason) {
        self.released = true;
        let id = self.grant.conn;
        self.shard.with_core(None, |core, now| {
            core.close(id, now, reason);
            core.release(id, now, true);
        });
    }

    fn finish(&mut self, ok: bool) {
        if self.released {
            return;
        }
        self.released = true;
        let id = self.grant.conn;
        let state = if ok {
            self.conn.state()
        } else {
            ConnState::Closed
        };
        // The application's policy is asked only after a clean end, and
        // only when one is set (building the info costs a clone).
        let retire = ok
            && state == ConnState::Ready
            && self
                .shard
                .settings
                .retire
                .as_ref()
                .is_some_and(|policy| policy.should_retire(&self.conn, &self.info()));
        let granted_at = self.grant.at;
        self.shard.with_core(None, |core, now| {
            core.observe_latency(now.saturating_duration_since(granted_at));
            match state {
                ConnState::Ready if retire => core.retire(id, now, RetireReason::Application),
                ConnState::Ready => {}
                ConnState::Draining => core.drain(id, now),
                ConnState::Closed if ok => core.close(id, now, CloseReason::PeerClosed),
                ConnState::Closed => {}
            }
            core.release(id, now, ok);
        });
    }
}

impl<T: Transport> Drop for Lease<T> {
    fn drop(&mut self) {
        let reusable = self.conn.reusable_after_abandoned_body();
        self.finish(reusable);
    }
}

impl<T: Transport> std::fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("origin", &self.shard.origin)
            .field("conn", &self.grant.conn)
            .field("reused", &self.grant.reused)
            .finish()
    }
}
