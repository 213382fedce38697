//! The connections of one origin: a slab with generation-checked ids, and an
//! intrusive doubly-linked list of the connections that have a free slot,
//! most recently used first.
//!
//! Why a list and not a scan: checkout must cost the same with 1 or 1,000
//! connections. The list head is the answer to "most recently used connection
//! with a free slot" in O(1), and its tail is where idle connections age out,
//! so the idle reaper stops at the first connection that is not yet expired.

use std::time::Instant;

use super::ids::ConnId;

const NIL: u32 = u32::MAX;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being opened; counts toward the connection limit.
    Connecting,
    /// Open and lending slots.
    Ready,
    /// Open, finishing its leases, lending nothing new.
    Draining,
}

pub(crate) struct Conn<C> {
    pub phase: Phase,
    pub handle: Option<C>,
    pub slots: usize,
    pub leases: usize,
    /// Leases granted over its life.
    pub served: u64,
    /// When the connect started (for an attempt) or finished (once open).
    pub opened_at: Instant,
    /// Last checkout or release: the list is ordered by it.
    pub touched: Instant,
    /// Retire at this instant (max age, jittered).
    pub expires_at: Option<Instant>,
    /// Idle limit of this connection when it is shorter than the pool's
    /// (from the origin's `Keep-Alive: timeout`, minus a margin).
    pub idle_limit: Option<std::time::Duration>,
    /// Retire once `served` reaches this (max requests, or `Keep-Alive: max`).
    pub served_limit: Option<u64>,
    /// Requests in a row that failed on it.
    pub consecutive_errors: u32,
    /// Last health check (or open), for the periodic check of idle connections.
    pub last_check: Instant,
    /// A connect started for one retrying request, which gets its first slot.
    pub reserved: bool,
    prev: u32,
    next: u32,
    listed: bool,
}

impl<C> Conn<C> {
    pub fn connecting(now: Instant) -> Self {
        Conn {
            phase: Phase::Connecting,
            handle: None,
            slots: 0,
            leases: 0,
            served: 0,
            opened_at: now,
            touched: now,
            expires_at: None,
            idle_limit: None,
            served_limit: None,
            consecutive_errors: 0,
            last_check: now,
            reserved: false,
            prev: NIL,
            next: NIL,
            listed: false,
        }
    }

    pub fn has_free_slot(&self) -> bool {
        self.phase == Phase::Ready && self.leases < self.slots
    }

    pub fn is_listed(&self) -> bool {
        self.listed
    }
}

/// Cache-line aligned: under load, two workers alternate on the two most
/// recently used connections, and entries sharing a line made each checkout
/// on one core invalidate the other's (measured: 4x slower checkouts with
/// two workers, benches/checkout.rs).
#[repr(align(64))]
struct Entry<C> {
    generation: u32,
    conn: Option<Conn<C>>,
}

pub(crate) struct ConnTable<C> {
    entries: Vec<Entry<C>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

impl<C> ConnTable<C> {
    pub fn new() -> Self {
        ConnTable {
            entries: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Connections in the table, in any phase.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, conn: Conn<C>) -> ConnId {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            entry.generation = entry.generation.wrapping_add(1);
            entry.conn = Some(conn);
            ConnId {
                index,
                generation: entry.generation,
            }
        } else {
            let index = u32::try_from(self.entries.len()).unwrap_or(NIL - 1);
            self.entries.push(Entry {
                generation: 0,
                conn: Some(conn),
            });
            ConnId {
                index,
                generation: 0,
            }
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn<C>> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.conn.as_ref()
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<C>> {
        let entry = self.entries.get_mut(id.index as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.conn.as_mut()
    }

    pub fn remove(&mut self, id: ConnId) -> Option<Conn<C>> {
        self.get(id)?;
        self.unlink(id);
        let conn = self.entries[id.index as usize].conn.take()?;
        self.free.push(id.index);
        self.len -= 1;
        Some(conn)
    }

    fn id_at(&self, index: u32) -> ConnId {
        ConnId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    fn conn_at(&mut self, index: u32) -> &mut Conn<C> {
        self.entries[index as usize]
            .conn
            .as_mut()
            .expect("listed index holds a connection")
    }

    /// The most recently used connection with a free slot.
    pub fn head(&self) -> Option<ConnId> {
        (self.head != NIL).then(|| self.id_at(self.head))
    }

    /// Puts the connection at the head of the free list (most recently used).
    pub fn push_front(&mut self, id: ConnId) {
        if self.head == id.index && self.get(id).is_some_and(|c| c.listed) {
            return; // already the most recently used: the common case
        }
        self.unlink(id);
        let old_head = self.head;
        {
            let conn = self.conn_at(id.index);
            conn.listed = true;
            conn.prev = NIL;
            conn.next = old_head;
        }
        if old_head != NIL {
            self.conn_at(old_head).prev = id.index;
        } else {
            self.tail = id.index;
        }
        self.head = id.index;
    }

    /// Takes the connection off the free list, if it is on it.
    pub fn unlink(&mut self, id: ConnId) {
        let Some(conn) = self.get_mut(id) else { return };
        if !conn.listed {
            return;
        }
        let (prev, next) = (conn.prev, conn.next);
        conn.listed = false;
        conn.prev = NIL;
        conn.next = NIL;
        if prev != NIL {
            self.conn_at(prev).next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.conn_at(next).prev = prev;
        } else {
            self.tail = prev;
        }
    }

    /// Listed connections from the least recently used end.
    pub fn iter_from_tail(&self) -> impl Iterator<Item = (ConnId, &Conn<C>)> {
        let mut at = self.tail;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let id = self.id_at(at);
            let conn = self.entries[at as usize].conn.as_ref()?;
            at = conn.prev;
            Some((id, conn))
        })
    }

    /// Every connection, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn<C>)> {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            e.conn.as_ref().map(|c| {
                (
                    ConnId {
                        index: i as u32,
                        generation: e.generation,
                    },
                    c,
                )
            })
        })
    }

    /// Ids of every connection (a copy, so the caller may mutate the table).
    pub fn ids(&self) -> Vec<ConnId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// Length of the free list, walked (for invariant checks only).
    pub fn listed_count_walked(&self) -> usize {
        self.iter_from_tail().count()
    }
}
