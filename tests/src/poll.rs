//! Bounded polling: the only way tests wait for something to become true.
//!
//! Every wait has a maximum number of attempts and a deadline; whichever comes first ends it.

use std::time::{Duration, Instant};

/// Calls `f` until it returns `Some`, at most `tries` times and for at most `limit`, sleeping
/// `interval` between attempts. Returns the first `Some`, or `None` when the budget ran out.
pub fn until<T>(
    tries: u32,
    interval: Duration,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    for attempt in 0..tries {
        if let Some(v) = f() {
            return Some(v);
        }
        if attempt + 1 == tries || Instant::now() + interval > deadline {
            break;
        }
        std::thread::sleep(interval);
    }
    None
}

/// [`until`] with the budget tests use for network state to settle: 50 tries, 100 ms apart,
/// 10 s at most.
pub fn eventually<T>(f: impl FnMut() -> Option<T>) -> Option<T> {
    until(50, Duration::from_millis(100), Duration::from_secs(10), f)
}

/// Whether `f` holds within [`eventually`]'s budget.
pub fn eventually_true(mut f: impl FnMut() -> bool) -> bool {
    eventually(|| f().then_some(())).is_some()
}
