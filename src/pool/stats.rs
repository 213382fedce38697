//! [`PoolStats`]: the pool's counters, per origin and in total.

use crate::Origin;
use crate::core::Stats;

/// A snapshot of the whole pool: totals and one row per origin.
///
/// Totals include origins whose entries were removed after they went idle,
/// so counters never go backwards.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Sums over every origin, past and present.
    pub total: Stats,
    /// One row per origin currently tracked.
    pub origins: Vec<OriginStats>,
}

/// The counters of one origin.
#[derive(Debug, Clone)]
pub struct OriginStats {
    /// The origin.
    pub origin: Origin,
    /// Its counters and gauges.
    pub stats: Stats,
}

impl PoolStats {
    /// The row of one origin, if it is tracked.
    pub fn origin(&self, origin: &Origin) -> Option<&Stats> {
        self.origins
            .iter()
            .find(|o| &o.origin == origin)
            .map(|o| &o.stats)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for OriginStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("OriginStats", 3)?;
        st.serialize_field("origin", &self.origin.to_string())?;
        st.serialize_field("reuse_ratio", &self.stats.reuse_ratio())?;
        st.serialize_field("stats", &self.stats)?;
        st.end()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for PoolStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("PoolStats", 3)?;
        st.serialize_field("total", &self.total)?;
        st.serialize_field("reuse_ratio", &self.total.reuse_ratio())?;
        st.serialize_field("origins", &self.origins)?;
        st.end()
    }
}
