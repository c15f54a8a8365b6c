//! Peak-EWMA latency estimate of one endpoint (Finagle's and Linkerd's): a slower response
//! raises the estimate at once, faster ones pull it down with exponential decay over time.

use std::time::{Duration, Instant};

/// Estimate before the first response: pessimistic enough that a new endpoint is tried but
/// not flooded (Linkerd's default).
pub const DEFAULT_PRIOR: Duration = Duration::from_millis(30);
/// Decay time constant: an observation's weight falls to 1/e after this long.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// A peak-EWMA round-trip estimate in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    estimate_ns: f64,
    stamp: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    /// A fresh estimate at `prior`.
    pub fn new(prior: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: prior.as_nanos() as f64,
            stamp: now,
            decay_ns: decay.as_nanos().max(1) as f64,
        }
    }

    /// Folds in one observed round trip.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / self.decay_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.stamp = now;
    }

    /// The last estimate in nanoseconds.
    pub fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }

    /// The estimate decayed towards zero for the time since the last observation (as
    /// tower's peak-EWMA does), so an endpoint left idle becomes attractive again and gets
    /// probed instead of being starved by a slightly faster neighbour.
    pub fn cost_ns(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        self.estimate_ns * (-elapsed / self.decay_ns).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_slowly() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(DEFAULT_PRIOR, DEFAULT_DECAY, t0);
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_ns(), 100e6);
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(1));
        let after_1s = e.estimate_ns();
        assert!(after_1s < 100e6 && after_1s > 50e6, "{after_1s}");
        e.observe(Duration::from_millis(1), t0 + Duration::from_secs(60));
        assert!(e.estimate_ns() < 2e6, "{}", e.estimate_ns());
        let idle = e.cost_ns(t0 + Duration::from_secs(90));
        assert!(idle < e.estimate_ns() / 10.0, "{idle}");
    }
}
