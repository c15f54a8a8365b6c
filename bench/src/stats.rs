//! Latency statistics: nearest-rank percentiles and a compact summary.
//!
//! Nearest-rank is used (no interpolation) so every reported figure is a latency that was
//! actually observed; with the window sizes used here (tens of samples) p99 is the maximum, which
//! the report says rather than hides.

use serde_json::{json, Value};

/// The `p`-th percentile (0..=100) of `sorted` by the nearest-rank method, or `None` when empty.
///
/// `sorted` must be in ascending order; rank = ceil(p/100 · n), clamped to 1..=n.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Median of an unsorted sample (nearest-rank p50).
pub fn median(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.p50)
}

/// Summary of one sample of measurements, all in the sample's unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample.
    pub min: f64,
    /// Nearest-rank median.
    pub p50: f64,
    /// Nearest-rank 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples` (any order); `None` when there are none. NaNs are ignored.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        Some(Summary {
            count,
            min: sorted[0],
            p50: percentile(&sorted, 50.0)?,
            p99: percentile(&sorted, 99.0)?,
            mean: sorted.iter().sum::<f64>() / count as f64,
            max: sorted[count - 1],
        })
    }

    /// JSON form, values rounded to 3 decimals.
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "min": round3(self.min),
            "p50": round3(self.p50),
            "p99": round3(self.p99),
            "mean": round3(self.mean),
            "max": round3(self.max),
        })
    }
}

/// `a / b` when both exist and `b` is non-zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Rounds to 3 decimals, for JSON output that stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Small samples: p99 is the maximum, p50 the lower middle.
        let w = [3.0, 1.0, 2.0, 4.0];
        let s = Summary::of(&w).unwrap();
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 2.0, 4.0, 4.0));
        assert_eq!(s.mean, 2.5);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn empty_and_nan_samples() {
        assert_eq!(percentile(&[], 50.0), None);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
        let s = Summary::of(&[f64::NAN, 5.0, 1.0]).unwrap();
        assert_eq!((s.count, s.p50), (2, 1.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(round3(1.23456), 1.235);
    }
}
