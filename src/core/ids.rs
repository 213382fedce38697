//! Identifiers handed between the core and its driver.

use std::fmt;

/// A connection (or a connect attempt: an attempt keeps its id when it
/// succeeds). Generation-checked, so a stale id never reaches a new
/// connection that reused the same table slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    /// A number unique within one origin's pool, for logs and [`ConnectionInfo`](crate::ConnectionInfo).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A request waiting for a slot. Ids grow monotonically, so the FIFO queue
/// is sorted by id and can be searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub(crate) u64);

impl WaiterId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}
