//! The pool's background task: closes idle connections at their deadline,
//! and forgets origins that have nothing left (so a stream of distinct
//! origins does not grow the map forever).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{PoolInner, lock, read, write};
use crate::transport::Transport;

/// The longest the reaper sleeps, so origins created while it sleeps are
/// looked at soon enough.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub(crate) async fn run<T: Transport>(pool: Weak<PoolInner<T>>, mut stop: oneshot::Receiver<()>) {
    let mut last_maintenance = tokio::time::Instant::now();
    loop {
        let Some(inner) = pool.upgrade() else { return };
        if last_maintenance.elapsed() >= inner.maintenance_interval {
            last_maintenance = tokio::time::Instant::now();
            let shards: Vec<_> = read(&inner.shards).values().cloned().collect();
            for shard in shards {
                shard.maintain();
            }
        }
        let next = pass(&inner);
        // A connection that goes idle after this pass expires no sooner than
        // now + idle_timeout, so sleeping at most that long misses nothing.
        // ...and the maintenance pass must run on its interval.
        let cap = inner
            .core_config
            .idle_timeout
            .map_or(MAX_SLEEP, |t| t.min(MAX_SLEEP))
            .min(inner.maintenance_interval);
        drop(inner);
        let now = tokio::time::Instant::now();
        let wake = next
            .map(tokio::time::Instant::from_std)
            .map_or(now + cap, |n| n.min(now + cap))
            .max(now + Duration::from_millis(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = &mut stop => return, // the pool was dropped
        }
    }
}

/// One pass over every origin; returns the earliest next deadline.
fn pass<T: Transport>(inner: &Arc<PoolInner<T>>) -> Option<std::time::Instant> {
    let shards: Vec<_> = read(&inner.shards).values().cloned().collect();
    let mut next: Option<std::time::Instant> = None;
    let mut empty = false;
    if let Some(interval) = inner.ping_interval {
        for shard in &shards {
            shard.health_pass(interval);
        }
    }
    for shard in &shards {
        if let Some(t) = shard.handle_timeout() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        empty |= shard.is_forgettable();
    }
    drop(shards);
    if empty {
        forget_empty_origins(inner);
    }
    next
}

fn forget_empty_origins<T: Transport>(inner: &Arc<PoolInner<T>>) {
    let mut shards = write(&inner.shards);
    // Only entries nobody else holds: a request that has just looked its
    // shard up holds a clone, and that clone is taken under the read lock,
    // so under the write lock the count cannot grow.
    shards.retain(|_, shard| {
        if Arc::strong_count(shard) == 1 && shard.is_forgettable() {
            lock(&inner.retired).add(&shard.stats());
            false
        } else {
            true
        }
    });
}
