//! Latencies in an HDR histogram: memory stays flat however long a phase runs (a few tens of
//! KiB per histogram), at about 0.1% error on every percentile.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies recorded from 1 µs to 10 minutes at 3 significant digits (about 0.1% error).
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 600_000_000;

/// A histogram of latencies in microseconds, saturating at [`HIGHEST_US`].
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        match Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, 3) {
            Ok(h) => Self(h),
            // Constant bounds that `new_with_bounds` accepts (1 <= low, 2 * low <= high, 3
            // significant digits): this arm never runs.
            Err(e) => unreachable!("histogram bounds: {e}"),
        }
    }
}

impl Latencies {
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Records a latency given in milliseconds (a `Server-Timing` duration).
    pub(crate) fn record_ms(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.record(Duration::from_secs_f64(ms / 1e3));
        }
    }

    /// A histogram of these latencies in milliseconds (for tests).
    #[cfg(test)]
    pub(crate) fn of_ms(values: impl IntoIterator<Item = u64>) -> Self {
        let mut l = Self::default();
        for ms in values {
            l.record(Duration::from_millis(ms));
        }
        l
    }

    pub(crate) fn add(&mut self, other: &Self) {
        // Both have the same bounds, so adding cannot fail; a failure would only lose counts.
        let _ = self.0.add(&other.0);
    }

    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q`-quantile in milliseconds (NaN when nothing was recorded).
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.value_at_quantile(q) as f64 / 1e3
    }

    /// The mean latency in milliseconds (NaN when nothing was recorded).
    pub(crate) fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.mean() / 1e3
    }

    /// The smallest and largest latency recorded, in milliseconds (`None` when empty).
    pub(crate) fn range_ms(&self) -> Option<(f64, f64)> {
        (!self.0.is_empty()).then(|| (self.0.min() as f64 / 1e3, self.0.max() as f64 / 1e3))
    }

    /// The cumulative distribution: `(latency ms, fraction of requests at most that)` at every
    /// recorded value, in increasing order.
    pub(crate) fn cdf_ms(&self) -> Vec<(f64, f64)> {
        let total = self.0.len().max(1) as f64;
        let mut seen = 0_u64;
        self.0
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (v.value_iterated_to() as f64 / 1e3, seen as f64 / total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_tenth_of_a_percent() {
        let mut l = Latencies::default();
        assert!(l.quantile_ms(0.5).is_nan());
        for ms in 1..=1000_u64 {
            l.record(Duration::from_millis(ms));
        }
        let mut other = Latencies::default();
        other.record(Duration::from_secs(3600)); // saturates at 10 minutes
        l.add(&other);
        assert_eq!(l.len(), 1001);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 1e-3 + 1e-3;
        assert!(close(l.quantile_ms(0.5), 501.0), "{}", l.quantile_ms(0.5));
        assert!(close(l.quantile_ms(0.99), 991.0), "{}", l.quantile_ms(0.99));
        assert!(
            close(l.quantile_ms(1.0), 600_000.0),
            "{}",
            l.quantile_ms(1.0)
        );
    }

    #[test]
    fn the_cdf_climbs_to_one_over_the_recorded_range() {
        let mut l = Latencies::default();
        assert!(l.range_ms().is_none() && l.cdf_ms().is_empty());
        for ms in [1_u64, 2, 2, 4] {
            l.record(Duration::from_millis(ms));
        }
        l.record_ms(f64::NAN);
        assert_eq!(l.len(), 4, "a NaN duration is not recorded");
        let cdf = l.cdf_ms();
        assert_eq!(cdf.len(), 3);
        assert!((cdf[1].1 - 0.75).abs() < 1e-12, "{cdf:?}");
        assert!((cdf[2].1 - 1.0).abs() < 1e-12);
        assert!((l.mean_ms() - 2.25).abs() < 0.01, "{}", l.mean_ms());
        let (lo, hi) = l.range_ms().expect("values");
        assert!(
            (lo - 1.0).abs() < 0.01 && (hi - 4.0).abs() < 0.01,
            "{lo} {hi}"
        );
    }
}
