//! What the sizing policies are fed: the origin's request rate R and mean
//! latency L, measured by the pool itself.

use std::time::{Duration, Instant};

/// One origin's load, as the pool measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// Requests per second (exponentially weighted over about 20 s).
    pub rate: f64,
    /// Mean time a request holds its slot, from checkout to the end of its
    /// response body (exponentially weighted over the last ~5 requests).
    pub latency: Duration,
    /// Requests holding a slot or waiting for one right now.
    pub in_flight: usize,
    /// How many requests one connection carries at once (1 for HTTP/1.1;
    /// the peer's stream limit for HTTP/2 and HTTP/3).
    pub slots_per_connection: usize,
}

impl LoadSample {
    /// A sample with the given rate and latency (for tests and for policies
    /// fed from the outside).
    pub fn new(
        rate: f64,
        latency: Duration,
        in_flight: usize,
        slots_per_connection: usize,
    ) -> Self {
        LoadSample {
            rate,
            latency,
            in_flight,
            slots_per_connection,
        }
    }

    /// Little's law: the mean number of requests in flight, R × L.
    pub fn littles_concurrency(&self) -> f64 {
        self.rate * self.latency.as_secs_f64()
    }
}

/// The rate's time constant: a sample's weight decays by e every 20 s.
const RATE_TAU_SECS: f64 = 20.0;
/// Requests per second below which an origin counts as idle.
const IDLE_RATE: f64 = 0.01;
/// Each latency observation's weight.
const LATENCY_ALPHA: f64 = 0.2;

pub(crate) struct LoadMeter {
    last: Option<(Instant, u64)>,
    /// None until the first interval has been measured: the first
    /// measurement is taken as it is, so a new origin's rate is not pulled
    /// toward zero by an average that has nothing to average yet.
    rate_known: bool,
    rate: f64,
    latency: Option<f64>,
}

impl LoadMeter {
    pub fn new() -> Self {
        LoadMeter {
            last: None,
            rate_known: false,
            rate: 0.0,
            latency: None,
        }
    }

    pub fn observe_latency(&mut self, held: Duration) {
        let x = held.as_secs_f64();
        self.latency = Some(match self.latency {
            None => x,
            Some(l) => l + LATENCY_ALPHA * (x - l),
        });
    }

    /// Rate and latency given the counter of requests so far. The rate's
    /// weight depends on the time since the last sample, so irregular
    /// sampling (a late maintenance pass) is not over-weighted.
    pub fn sample(&mut self, now: Instant, requests: u64) -> (f64, Duration) {
        if let Some((at, seen)) = self.last {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let instant_rate = requests.saturating_sub(seen) as f64 / dt;
                let alpha = if self.rate_known {
                    1.0 - (-dt / RATE_TAU_SECS).exp()
                } else {
                    1.0
                };
                self.rate_known = true;
                self.rate += alpha * (instant_rate - self.rate);
                // An exponential average never reaches zero; below one
                // request per 100 s the origin is idle, so that an idle
                // origin's warm level (and its entry) can go.
                if self.rate < IDLE_RATE {
                    self.rate = 0.0;
                }
                self.last = Some((now, requests));
            }
        } else {
            self.last = Some((now, requests));
        }
        (
            self.rate,
            Duration::from_secs_f64(self.latency.unwrap_or(0.0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_converges_to_a_constant_load_and_decays_without_one() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new();
        let mut total = 0;
        m.sample(t0, total);
        for step in 1..=30u64 {
            total += 1000 * 10; // 1000 req/s, sampled every 10 s
            m.sample(t0 + Duration::from_secs(10 * step), total);
        }
        let (rate, _) = m.sample(t0 + Duration::from_secs(300), total);
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        let (rate, _) = m.sample(t0 + Duration::from_secs(400), total);
        assert!(rate < 10.0, "no requests for 100 s: {rate}");
    }

    #[test]
    fn the_first_measured_interval_is_taken_as_it_is() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new();
        assert_eq!(m.sample(t0, 0).0, 0.0, "nothing measured yet");
        let (rate, _) = m.sample(t0 + Duration::from_millis(500), 1000);
        assert!((rate - 2000.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn latency_is_a_moving_mean() {
        let mut m = LoadMeter::new();
        for _ in 0..50 {
            m.observe_latency(Duration::from_millis(100));
        }
        let (_, l) = m.sample(Instant::now(), 0);
        assert_eq!(l.as_millis(), 100);
    }
}
