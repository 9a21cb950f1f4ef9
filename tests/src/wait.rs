//! Polling with a deadline, for conditions that nothing notifies us about (a socket appearing,
//! a container exiting).

use std::time::{Duration, Instant};

/// Calls `probe` every `interval` until it returns `Some`, or `timeout` has passed (then `None`).
/// `probe` runs at least once, and once more at the deadline.
pub fn wait_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}
