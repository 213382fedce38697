//! Sizing policies: how many connections to keep warm per origin, and the
//! most to allow, from the load the pool measures itself.
//!
//! The pool samples each origin's request rate R and mean latency L (how
//! long a request holds its slot) every maintenance interval, asks the
//! policy for a [`Target`], and opens connections up to its warm level
//! ahead of demand. Idle connections above the warm level close only when
//! their idle timeout passes, so a short dip does not tear down what the
//! next burst needs.
//!
//! - [`LittlesLaw`] (HTTP/1.1 default): Little's law says R × L requests are
//!   in flight on average; with one request per connection that is the
//!   connection count, times a headroom for bursts. 1,000 req/s × 100 ms =
//!   100 connections; with headroom 1.5, 150.
//! - [`StreamCount`] (HTTP/2 and HTTP/3 default): the concurrency divided by
//!   the streams a connection carries, plus spare connections for
//!   redundancy. 1,000 req/s × 100 ms = 100 streams = 1 connection of 100
//!   streams, + 1 spare = 2.
//! - [`Fixed`]: a fixed warm level and maximum.

use std::time::Duration;

use crate::Error;
pub use crate::core::LoadSample;

/// What a policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Connections to keep open and ready, even without requests.
    pub warm: usize,
    /// The most connections to open (the pool's configured limit still caps it).
    pub max: usize,
}

/// Decides how many connections an origin needs. Implement it for your own
/// sizing (it is called once per origin per maintenance interval, under no
/// lock, with the origin's latest load sample).
///
/// ```
/// use edgepool::sizing::{LoadSample, SizingPolicy, Target};
/// /// Keeps one connection per 50 requests/s, at least 2.
/// struct PerFifty;
/// impl SizingPolicy for PerFifty {
///     fn target(&self, load: &LoadSample) -> Target {
///         let warm = ((load.rate / 50.0).ceil() as usize).max(2);
///         Target { warm, max: usize::MAX }
///     }
/// }
/// let t = PerFifty.target(&LoadSample::new(120.0, std::time::Duration::from_millis(20), 0, 1));
/// assert_eq!(t.warm, 3);
/// ```
pub trait SizingPolicy: Send + Sync + 'static {
    /// The target for one origin under `load`.
    fn target(&self, load: &LoadSample) -> Target;
}

/// Little's law with headroom: warm = ceil(R × L × headroom / slots), clamped
/// to [min, max]. Meant for HTTP/1.1, where a connection carries one
/// request at a time (slots = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LittlesLaw {
    /// Multiplier on R × L for bursts (at least 1.0; default 1.5).
    pub headroom: f64,
    /// Fewest warm connections (default 0).
    pub min: usize,
    /// Most connections (default unlimited: the pool's limit applies).
    pub max: usize,
}

impl Default for LittlesLaw {
    fn default() -> Self {
        LittlesLaw {
            headroom: 1.5,
            min: 0,
            max: usize::MAX,
        }
    }
}

impl LittlesLaw {
    /// Checks the values, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.headroom >= 1.0 && self.headroom.is_finite()) {
            return Err(Error::config(
                "headroom",
                self.headroom,
                "must be a number of at least 1.0",
            ));
        }
        check_min_max(self.min, self.max)
    }
}

impl SizingPolicy for LittlesLaw {
    fn target(&self, load: &LoadSample) -> Target {
        let slots = load.slots_per_connection.max(1) as f64;
        let warm = (load.littles_concurrency() * self.headroom / slots).ceil();
        Target {
            warm: clamp(warm, self.min, self.max),
            max: self.max,
        }
    }
}

/// Stream count: warm = ceil(concurrency / slots) + redundancy, clamped to
/// [min, max], where concurrency is R × L. Meant for HTTP/2 and HTTP/3. The
/// redundant connections are kept only while there is load, so an origin
/// nobody calls decays to `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCount {
    /// Spare connections beyond what the streams need (default 1).
    pub redundancy: usize,
    /// Fewest warm connections (default 0).
    pub min: usize,
    /// Most connections (default unlimited: the pool's limit applies).
    pub max: usize,
}

impl Default for StreamCount {
    fn default() -> Self {
        StreamCount {
            redundancy: 1,
            min: 0,
            max: usize::MAX,
        }
    }
}

impl StreamCount {
    /// Checks the values, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        check_min_max(self.min, self.max)
    }
}

impl SizingPolicy for StreamCount {
    fn target(&self, load: &LoadSample) -> Target {
        let concurrency = load.littles_concurrency().max(load.in_flight as f64);
        let warm = if concurrency > 0.0 {
            (concurrency / load.slots_per_connection.max(1) as f64).ceil() + self.redundancy as f64
        } else {
            0.0
        };
        Target {
            warm: clamp(warm, self.min, self.max),
            max: self.max,
        }
    }
}

/// A fixed warm level and maximum, whatever the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// Connections to keep warm.
    pub warm: usize,
    /// Most connections.
    pub max: usize,
}

impl Fixed {
    /// Checks the values, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max == 0 {
            return Err(Error::config("max", 0, "must be at least 1"));
        }
        if self.warm > self.max {
            return Err(Error::config("warm", self.warm, "must not exceed max"));
        }
        Ok(())
    }
}

impl SizingPolicy for Fixed {
    fn target(&self, _load: &LoadSample) -> Target {
        Target {
            warm: self.warm,
            max: self.max,
        }
    }
}

/// The default: [`LittlesLaw`] for origins whose connections carry one
/// request at a time, [`StreamCount`] for multiplexed ones.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ByProtocol {
    /// For HTTP/1.1.
    pub one_at_a_time: LittlesLaw,
    /// For HTTP/2 and HTTP/3.
    pub multiplexed: StreamCount,
}

impl SizingPolicy for ByProtocol {
    fn target(&self, load: &LoadSample) -> Target {
        if load.slots_per_connection <= 1 {
            self.one_at_a_time.target(load)
        } else {
            self.multiplexed.target(load)
        }
    }
}

fn check_min_max(min: usize, max: usize) -> Result<(), Error> {
    if max == 0 {
        return Err(Error::config("max", 0, "must be at least 1"));
    }
    if min > max {
        return Err(Error::config("min", min, "must not exceed max"));
    }
    Ok(())
}

fn clamp(x: f64, min: usize, max: usize) -> usize {
    // A NaN or negative load (never produced by the pool) sizes to min.
    let x = if x.is_finite() && x > 0.0 {
        x.min(usize::MAX as f64) as usize
    } else {
        0
    };
    // Not `clamp`: it panics when min > max, and `target()` may be called on
    // a policy nobody validated (found by fuzzing). max wins then.
    x.max(min).min(max)
}

/// How often the pool re-evaluates its sizing policy by default.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: f64, latency_ms: u64, slots: usize) -> LoadSample {
        LoadSample::new(rate, Duration::from_millis(latency_ms), 0, slots)
    }

    #[test]
    fn littles_law_reproduces_the_seed_numbers() {
        let exact = LittlesLaw {
            headroom: 1.0,
            ..LittlesLaw::default()
        };
        assert_eq!(exact.target(&load(1000.0, 100, 1)).warm, 100);
        assert_eq!(
            LittlesLaw::default().target(&load(1000.0, 100, 1)).warm,
            150
        );
        let clamped = LittlesLaw {
            headroom: 1.5,
            min: 2,
            max: 120,
        };
        assert_eq!(clamped.target(&load(1000.0, 100, 1)).warm, 120);
        assert_eq!(clamped.target(&load(0.0, 100, 1)).warm, 2);
    }

    #[test]
    fn stream_count_reproduces_the_seed_numbers() {
        // 1000 req/s x 100 ms = 100 streams: one connection of 100 streams + 1 spare.
        assert_eq!(
            StreamCount::default().target(&load(1000.0, 100, 100)).warm,
            2
        );
        assert_eq!(
            StreamCount::default().target(&load(1000.0, 250, 100)).warm,
            4
        );
        assert_eq!(
            StreamCount::default().target(&load(0.0, 0, 100)).warm,
            0,
            "no load, no spare"
        );
    }

    #[test]
    fn by_protocol_picks_by_slots() {
        let p = ByProtocol::default();
        assert_eq!(p.target(&load(1000.0, 100, 1)).warm, 150);
        assert_eq!(p.target(&load(1000.0, 100, 100)).warm, 2);
    }

    #[test]
    fn bad_values_are_rejected_naming_the_field() {
        for (policy, field) in [
            (
                LittlesLaw {
                    headroom: 0.9,
                    ..LittlesLaw::default()
                },
                "headroom",
            ),
            (
                LittlesLaw {
                    headroom: f64::NAN,
                    ..LittlesLaw::default()
                },
                "headroom",
            ),
            (
                LittlesLaw {
                    min: 5,
                    max: 4,
                    ..LittlesLaw::default()
                },
                "min",
            ),
        ] {
            let err = policy.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(
            StreamCount {
                redundancy: 1,
                min: 3,
                max: 2
            }
            .validate()
            .is_err()
        );
        // Unvalidated, they still never panic (found by fuzzing).
        let unvalidated = LittlesLaw {
            headroom: 1.5,
            min: 5,
            max: 4,
        };
        assert_eq!(unvalidated.target(&load(1000.0, 100, 1)).warm, 4);
        assert!(
            Fixed { warm: 3, max: 2 }
                .validate()
                .unwrap_err()
                .to_string()
                .contains("warm")
        );
    }
}
