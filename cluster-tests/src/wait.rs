//! Waiting, with a deadline, for something to become true.

use std::time::{Duration, Instant};

/// Calls `check` every 100 ms until it returns `Ok`, and returns that value; after `timeout`
/// panics with `what` and the last reason `check` gave. For convergence only: how long it took
/// is never asserted.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(reason) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {reason}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Lets `duration` pass, to conclude that something did NOT happen (no duplicate, no stray
/// delivery) after what should happen did.
pub fn quiet(duration: Duration) {
    std::thread::sleep(duration);
}
