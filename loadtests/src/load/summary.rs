//! The figures every benchmark reports of a measured phase, whatever else it adds.

use std::time::Duration;

use serde::Serialize;

use super::{Latencies, Measured};

/// A measured phase as every report shows it: how long it ran, the latency percentiles of its
/// successful calls, and its errors. Reports embed it with `#[serde(flatten)]`, so that its
/// keys stand beside their own.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Summary {
    /// Seconds the phase ran.
    pub(crate) seconds: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Failed calls, and a few of their messages.
    pub(crate) errors: usize,
    pub(crate) error_samples: Vec<String>,
}

impl Summary {
    /// The summary of calls answered in `latencies` over `elapsed`, `errors` of them failed.
    pub(crate) fn new(
        latencies: &Latencies,
        elapsed: Duration,
        errors: usize,
        error_samples: Vec<String>,
    ) -> Self {
        Self {
            seconds: elapsed.as_secs_f64(),
            p50_ms: latencies.quantile_ms(0.5),
            p99_ms: latencies.quantile_ms(0.99),
            errors,
            error_samples,
        }
    }

    /// The summary of a phase of the load driver.
    pub(crate) fn of(m: &Measured) -> Self {
        Self::new(&m.latencies, m.elapsed, m.error_count(), m.error_samples())
    }
}
