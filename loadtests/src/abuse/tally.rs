//! The counting of `flowmesh-bench abuse`: latencies in a histogram (memory stays flat however
//! long a phase runs), what each abusive request got back, and the medians and ratios of the
//! rounds. No I/O here, so that the arithmetic is tested on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::load::{Measured, Summary};

/// What one abusive request or connection got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// No answer within the abusive clients' timeout: a hang.
    Timeout,
    /// The connection failed or was reset before an answer.
    ConnectionError,
    /// A slowloris or idle connection the server closed before the round ended.
    ClosedByServer,
    /// A slowloris or idle connection still open when the round ended (the round may be
    /// shorter than the server's header timeout, so this alone is no failure).
    OpenAtRoundEnd,
}

impl Outcome {
    /// The label counted in reports: the status number, or what happened.
    pub(crate) fn label(&self) -> String {
        match self {
            Self::Status(s) => s.to_string(),
            Self::Timeout => "timeout".into(),
            Self::ConnectionError => "connection error".into(),
            Self::ClosedByServer => "closed by server".into(),
            Self::OpenAtRoundEnd => "open at round end".into(),
        }
    }

    /// Whether this is what a protected service must answer an abusive request with: a 4xx
    /// (429 included), 503 or 504. A success, any other 5xx, a hang or a reset is not.
    /// Connection outcomes (slowloris, idle) are never counted against the service.
    pub(crate) fn is_acceptable(&self) -> bool {
        match self {
            Self::Status(s) => (400..500).contains(s) || *s == 503 || *s == 504,
            Self::Timeout | Self::ConnectionError => false,
            Self::ClosedByServer | Self::OpenAtRoundEnd => true,
        }
    }
}

/// Outcome counts by kind of abuse, e.g. `top_k_1e12 -> {"400": 120}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Tally {
    pub(crate) by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    /// Outcomes that are not [`Outcome::is_acceptable`].
    pub(crate) unacceptable: u64,
    /// All counted outcomes.
    pub(crate) total: u64,
    /// The longest any request of a kind took to get its outcome (an answer, a timeout, or for a
    /// held connection its closing or the round's end), in ms.
    pub(crate) slowest_ms: BTreeMap<String, f64>,
}

impl Tally {
    pub(crate) fn count(&mut self, kind: &str, outcome: &Outcome) {
        *self
            .by_kind
            .entry(kind.to_owned())
            .or_default()
            .entry(outcome.label())
            .or_default() += 1;
        self.total += 1;
        if !outcome.is_acceptable() {
            self.unacceptable += 1;
        }
    }

    /// [`Self::count`], and `elapsed` into the kind's slowest.
    pub(crate) fn count_timed(&mut self, kind: &str, outcome: &Outcome, elapsed: Duration) {
        self.count(kind, outcome);
        self.slowest(kind, elapsed.as_secs_f64() * 1e3);
    }

    fn slowest(&mut self, kind: &str, ms: f64) {
        let slowest = self.slowest_ms.entry(kind.to_owned()).or_insert(ms);
        *slowest = slowest.max(ms);
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        for (kind, ms) in &other.slowest_ms {
            self.slowest(kind, *ms);
        }
        for (kind, outcomes) in &other.by_kind {
            let mine = self.by_kind.entry(kind.clone()).or_default();
            for (label, n) in outcomes {
                *mine.entry(label.clone()).or_default() += n;
            }
        }
        self.unacceptable += other.unacceptable;
        self.total += other.total;
    }
}

/// The normal traffic of one phase, as reported: the driver's summary, and the successful
/// requests, their rate and the slowest.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseSummary {
    pub(crate) ok: u64,
    pub(crate) qps: f64,
    pub(crate) max_ms: f64,
    #[serde(flatten)]
    pub(crate) load: Summary,
}

impl PhaseSummary {
    /// The summary of a phase of the load driver.
    pub(crate) fn of(m: &Measured) -> Self {
        let load = Summary::of(m);
        let ok = m.latencies.len();
        Self {
            ok,
            qps: if load.seconds > 0.0 {
                ok as f64 / load.seconds
            } else {
                0.0
            },
            max_ms: m.latency_ms(1.0),
            load,
        }
    }
}

impl PhaseSummary {
    /// The medians of `phases` (over the rounds), but their errors summed (one error is one
    /// too many) and their first error samples.
    pub(crate) fn median<'a>(phases: impl Iterator<Item = &'a Self> + Clone) -> Self {
        let of = |f: fn(&Self) -> f64| median(phases.clone().map(f));
        Self {
            ok: of(|p| p.ok as f64) as u64,
            qps: of(|p| p.qps),
            max_ms: of(|p| p.max_ms),
            load: Summary {
                seconds: of(|p| p.load.seconds),
                p50_ms: of(|p| p.load.p50_ms),
                p99_ms: of(|p| p.load.p99_ms),
                errors: phases.clone().map(|p| p.load.errors).sum(),
                error_samples: phases
                    .flat_map(|p| p.load.error_samples.iter().cloned())
                    .take(5)
                    .collect(),
            },
        }
    }
}

/// `abused / calm`, NaN when either is not a positive number.
pub(crate) fn ratio(abused: f64, calm: f64) -> f64 {
    if calm > 0.0 && abused.is_finite() && calm.is_finite() {
        abused / calm
    } else {
        f64::NAN
    }
}

/// The median of the finite values (the mean of the middle two for an even count); NaN when
/// there are none.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The goal for the normal traffic: abused p99 within `max_ratio` of calm, and no error.
pub(crate) fn goal_met(p99_ratio: f64, normal_errors: usize, max_ratio: f64) -> bool {
    p99_ratio.is_finite() && p99_ratio <= max_ratio && normal_errors == 0
}

/// A phase of `n` requests of `ms` each and `errors` errors, over `elapsed`.
#[cfg(test)]
pub(crate) fn measured(ms: u64, n: u64, errors: usize, elapsed: Duration) -> Measured {
    let mut m = Measured {
        elapsed,
        latencies: crate::load::Latencies::of_ms(std::iter::repeat_n(ms, n as usize)),
        ..Measured::default()
    };
    if errors > 0 {
        let kind = m.errors.entry("http_503".into()).or_default();
        kind.count = errors;
        kind.samples = vec!["x".into(); errors];
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_4xx_503_and_504_are_acceptable_answers_to_abuse() {
        for s in [400, 408, 413, 422, 429, 499, 503, 504] {
            assert!(Outcome::Status(s).is_acceptable(), "{s}");
        }
        for s in [200, 204, 301, 500, 501, 502, 505, 599] {
            assert!(!Outcome::Status(s).is_acceptable(), "{s}");
        }
        assert!(!Outcome::Timeout.is_acceptable());
        assert!(!Outcome::ConnectionError.is_acceptable());
        assert!(Outcome::ClosedByServer.is_acceptable());
        assert!(Outcome::OpenAtRoundEnd.is_acceptable());
    }

    #[test]
    fn tallies_count_by_kind_and_label_and_merge() {
        let mut a = Tally::default();
        a.count("top_k_1e12", &Outcome::Status(400));
        a.count("top_k_1e12", &Outcome::Status(400));
        a.count("huge_text", &Outcome::Timeout);
        a.count_timed("huge_text", &Outcome::Status(503), Duration::from_secs(2));
        let mut b = Tally::default();
        b.count_timed("huge_text", &Outcome::Status(503), Duration::from_secs(3));
        b.count_timed("huge_text", &Outcome::Status(503), Duration::from_secs(1));
        b.count("huge_text", &Outcome::Status(500));
        b.count("huge_text", &Outcome::Status(413));
        b.count("slowloris", &Outcome::OpenAtRoundEnd);
        a.merge(&b);
        assert_eq!(a.total, 9);
        assert_eq!(a.by_kind["huge_text"]["503"], 3);
        assert_eq!(a.slowest_ms["huge_text"], 3000.0, "the slowest of both");
        assert!(!a.slowest_ms.contains_key("top_k_1e12"), "untimed counts");
        assert_eq!(a.unacceptable, 2, "the timeout and the 500");
        assert_eq!(a.by_kind["top_k_1e12"]["400"], 2);
        assert_eq!(a.by_kind["huge_text"]["timeout"], 1);
        assert_eq!(a.by_kind["huge_text"]["500"], 1);
        assert_eq!(a.by_kind["huge_text"]["413"], 1);
        assert_eq!(a.by_kind["slowloris"]["open at round end"], 1);
        let counted: u64 = a.by_kind.values().flat_map(BTreeMap::values).sum();
        assert_eq!(counted, a.total);
    }

    #[test]
    fn phase_summary_computes_qps_from_successes() {
        let s = PhaseSummary::of(&measured(4, 50, 3, Duration::from_secs(2)));
        assert_eq!((s.ok, s.load.errors), (50, 3));
        assert_eq!(
            s.load.error_samples,
            ["http_503: x", "http_503: x", "http_503: x"]
        );
        assert!((s.qps - 25.0).abs() < 1e-9);
        assert!((s.load.p99_ms - 4.0).abs() < 0.01);
        let empty = PhaseSummary::of(&Measured::default());
        assert_eq!(empty.qps, 0.0);
        assert!(empty.load.p99_ms.is_nan());
    }

    #[test]
    fn medians_ratios_and_the_goal() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
        assert!(median([]).is_nan());
        assert_eq!(ratio(30.0, 15.0), 2.0);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(f64::NAN, 1.0).is_nan());
        assert!(goal_met(2.0, 0, 2.0));
        assert!(!goal_met(2.01, 0, 2.0));
        assert!(!goal_met(1.0, 1, 2.0));
        assert!(!goal_met(f64::NAN, 0, 2.0));
    }
}
