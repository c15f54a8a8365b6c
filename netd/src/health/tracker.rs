//! Consecutive-outcome thresholds: how probe results become a health verdict.
//!
//! A run of `healthy_after` successes calls for `healthy`, a run of `unhealthy_after` failures
//! for `unhealthy`; anything shorter calls for nothing, so the endpoint keeps whatever health
//! it has (a single lost probe does not flap it). Once a run has reached its threshold, every
//! further probe of the same outcome repeats the verdict: the caller compares it with the stored
//! health and writes only on a difference, which also repairs a health that was overwritten
//! (e.g. by re-registering the endpoint) or a write that failed.

use netd_config::netd::{Health, HealthCheck};

/// Consecutive outcomes of one endpoint's probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// Records one probe outcome; returns the health the thresholds now call for, if any.
    pub fn record(&mut self, ok: bool, check: &HealthCheck) -> Option<Health> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= check.healthy_after).then_some(Health::Healthy)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= check.unhealthy_after).then_some(Health::Unhealthy)
        }
    }

    /// Length of the current run of failures (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Length of the current run of successes (0 after a failure).
    pub fn successes(&self) -> u32 {
        self.successes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netd_config::netd::HealthCheckKind;

    #[test]
    fn thresholds_and_flapping() {
        let check = HealthCheck::new(HealthCheckKind::Tcp); // 2 up, 3 down
        let mut t = Tracker::default();
        assert_eq!(t.record(true, &check), None);
        assert_eq!(t.record(true, &check), Some(Health::Healthy));
        assert_eq!(t.record(true, &check), Some(Health::Healthy));
        // Two failures are not enough; a success in between starts over.
        assert_eq!(t.record(false, &check), None);
        assert_eq!(t.record(false, &check), None);
        assert_eq!(t.record(true, &check), None);
        assert_eq!(t.record(false, &check), None);
        assert_eq!(t.record(false, &check), None);
        assert_eq!(t.record(false, &check), Some(Health::Unhealthy));
        assert_eq!(t.failures(), 3);
        assert_eq!(t.record(true, &check), None);
        assert_eq!(t.successes(), 1);
        assert_eq!(t.record(true, &check), Some(Health::Healthy));
    }

    #[test]
    fn threshold_of_one_decides_at_once() {
        let mut check = HealthCheck::new(HealthCheckKind::Tcp);
        check.healthy_after = 1;
        check.unhealthy_after = 1;
        let mut t = Tracker::default();
        assert_eq!(t.record(false, &check), Some(Health::Unhealthy));
        assert_eq!(t.record(true, &check), Some(Health::Healthy));
    }
}
