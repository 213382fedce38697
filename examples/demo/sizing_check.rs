//! What the pool's sizing policy computed for the demo's own HTTP/1.1 load,
//! next to Little's law worked out by hand from the same run.
//!
//! The HTTP/1.1 pooled scenario runs its policy every
//! [`SIZING_INTERVAL`](crate::scenario::SIZING_INTERVAL) and records the
//! pool's `cx_warm_target` gauge when its last request ends. Here that
//! figure is printed beside R × L × headroom, with R the run's requests per
//! second, L its mean latency, and the headroom the default policy's.

use edgepool::sizing::ByProtocol;

use crate::report::{Row, millis};
use crate::scenario::SIZING_INTERVAL;

/// Prints the check for every row that recorded a warm target.
pub fn print(rows: &[Row]) {
    let headroom = ByProtocol::default().one_at_a_time.headroom;
    for row in rows {
        let Some(target) = row.warm_target else {
            continue;
        };
        let by_hand = row.requests_per_sec * row.mean.as_secs_f64() * headroom;
        println!();
        println!(
            "sizing: {}, default policy (LittlesLaw for HTTP/1.1, headroom {headroom}), maintenance_interval({} ms)",
            row.name,
            SIZING_INTERVAL.as_millis()
        );
        println!("  policy target (cx_warm_target when the run ended): {target} connections");
        println!(
            "  R x L x {headroom} from the run: {:.0} req/s x {:.1} ms x {headroom} = {:.1}, i.e. {} connections",
            row.requests_per_sec,
            millis(row.mean),
            by_hand,
            by_hand.ceil()
        );
        if (target as f64) < by_hand.ceil() {
            println!(
                "note: the policy's R is the pool's own estimate: a rate averaged with a 20 s time constant, \
                 sampled at maintenance passes (the first pass only starts it), so a run of {:.1} s moves it little or not at all",
                row.elapsed.as_secs_f64()
            );
        }
    }
}
