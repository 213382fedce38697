//! The FIFO queue of requests waiting for a slot.
//!
//! Ids grow monotonically, so the queue is sorted by id: cancelling or
//! expiring one waiter is a binary search plus one memmove, not a scan.

use std::collections::VecDeque;
use std::time::Instant;

use super::ids::WaiterId;

pub(crate) struct Waiter<W> {
    pub id: WaiterId,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub payload: W,
}

pub(crate) struct WaiterQueue<W> {
    queue: VecDeque<Waiter<W>>,
    next_id: u64,
}

impl<W> WaiterQueue<W> {
    pub fn new() -> Self {
        WaiterQueue {
            queue: VecDeque::new(),
            next_id: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn push(&mut self, now: Instant, deadline: Instant, payload: W) -> WaiterId {
        let id = WaiterId(self.next_id);
        self.next_id += 1;
        self.queue.push_back(Waiter {
            id,
            enqueued: now,
            deadline,
            payload,
        });
        id
    }

    pub fn pop_front(&mut self) -> Option<Waiter<W>> {
        self.queue.pop_front()
    }

    pub fn remove(&mut self, id: WaiterId) -> Option<Waiter<W>> {
        let pos = self.queue.binary_search_by_key(&id, |w| w.id).ok()?;
        self.queue.remove(pos)
    }

    pub fn get(&self, id: WaiterId) -> Option<&Waiter<W>> {
        let pos = self.queue.binary_search_by_key(&id, |w| w.id).ok()?;
        self.queue.get(pos)
    }

    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.queue.iter().map(|w| w.deadline).min()
    }

    /// Removes every waiter whose deadline is at or before `now`, in FIFO order.
    pub fn take_expired(&mut self, now: Instant, mut out: impl FnMut(Waiter<W>)) {
        if !self.queue.iter().any(|w| w.deadline <= now) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for w in self.queue.drain(..) {
            if w.deadline <= now {
                out(w);
            } else {
                kept.push_back(w);
            }
        }
        self.queue = kept;
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Waiter<W>> + '_ {
        self.queue.drain(..)
    }

    pub fn is_sorted_by_id(&self) -> bool {
        self.queue
            .iter()
            .zip(self.queue.iter().skip(1))
            .all(|(a, b)| a.id < b.id)
    }
}
