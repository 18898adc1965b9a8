//! The results of `flowmesh-bench abuse`: per round and as medians, as JSON and as Markdown.

use std::fmt::Write as _;

use serde::Serialize;

use super::health::Alive;
use super::tally::{goal_met, median, ratio, PhaseSummary, Tally};
use super::Settings;
use crate::table::{Align, Table};

/// The goal of the issue: abused p99 within this factor of calm p99.
pub(crate) const MAX_P99_RATIO: f64 = 2.0;

/// The normal traffic of a round (or the medians over the rounds): calm, then abused, and the
/// ratio of their p99 latencies (keys `calm`, `abused`, `p99_ratio` of the JSON that embeds it).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Normal {
    pub(crate) calm: PhaseSummary,
    pub(crate) abused: PhaseSummary,
    /// `abused.p99_ms / calm.p99_ms`; over the rounds, the median of theirs.
    pub(crate) p99_ratio: f64,
}

impl Normal {
    /// A calm phase and the abused phase after it.
    pub(crate) fn new(calm: PhaseSummary, abused: PhaseSummary) -> Self {
        Self {
            p99_ratio: ratio(abused.load.p99_ms, calm.load.p99_ms),
            calm,
            abused,
        }
    }

    /// The medians over `rounds`.
    fn median(rounds: &[Round]) -> Self {
        Self {
            calm: PhaseSummary::median(rounds.iter().map(|r| &r.normal.calm)),
            abused: PhaseSummary::median(rounds.iter().map(|r| &r.normal.abused)),
            p99_ratio: median(rounds.iter().map(|r| r.normal.p99_ratio)),
        }
    }

    /// Both phases, named as in the tables.
    fn named(&self) -> [(&'static str, &PhaseSummary); 2] {
        [("calm", &self.calm), ("abused", &self.abused)]
    }

    /// p99 within [`MAX_P99_RATIO`] and no error.
    fn goal_met(&self) -> bool {
        goal_met(self.p99_ratio, self.errors(), MAX_P99_RATIO)
    }

    fn errors(&self) -> usize {
        self.calm.load.errors + self.abused.load.errors
    }
}

/// One calm phase and the abused phase after it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    pub(crate) round: usize,
    #[serde(flatten)]
    pub(crate) normal: Normal,
    #[serde(flatten)]
    pub(crate) abuse: Abuse,
    /// Health after the abused phase.
    pub(crate) alive_after: Alive,
}

/// What the abusive clients got: their requests, and their held connections.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Abuse {
    /// What the abusive requests got, by kind and status.
    pub(crate) abusive_requests: Tally,
    /// What became of the slowloris and idle connections.
    pub(crate) abusive_connections: Tally,
}

impl Abuse {
    fn merge(&mut self, other: &Self) {
        self.abusive_requests.merge(&other.abusive_requests);
        self.abusive_connections.merge(&other.abusive_connections);
    }

    /// Whether every request and connection got an acceptable outcome.
    fn all_acceptable(&self) -> bool {
        self.abusive_requests.unacceptable == 0 && self.abusive_connections.unacceptable == 0
    }
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) benchmark: &'static str,
    pub(crate) gateway: String,
    pub(crate) settings: Settings,
    pub(crate) rounds: Vec<Round>,
    /// The medians over the rounds.
    #[serde(flatten)]
    pub(crate) normal: Normal,
    /// The abuse of every round.
    #[serde(flatten)]
    pub(crate) abuse: Abuse,
    pub(crate) alive_at_end: Alive,
    /// p99 within [`MAX_P99_RATIO`] and no error on the normal traffic.
    pub(crate) normal_traffic_goal_met: bool,
    /// Every abusive request got a 4xx, 503 or 504, and every process is alive at the end.
    pub(crate) abuse_goal_met: bool,
}

impl Report {
    pub(crate) fn new(
        gateway: String,
        settings: Settings,
        rounds: Vec<Round>,
        alive_at_end: Alive,
    ) -> Self {
        let normal = Normal::median(&rounds);
        let mut abuse = Abuse::default();
        for r in &rounds {
            abuse.merge(&r.abuse);
        }
        let normal_traffic_goal_met = normal.goal_met();
        let abuse_goal_met = abuse.all_acceptable()
            && alive_at_end.all_alive
            && rounds.iter().all(|r| r.alive_after.all_alive);
        Self {
            benchmark: "abuse",
            gateway,
            settings,
            rounds,
            normal,
            abuse,
            alive_at_end,
            normal_traffic_goal_met,
            abuse_goal_met,
        }
    }

    /// The Markdown tables: the normal traffic per round and as medians, then the outcomes of
    /// the abuse.
    pub(crate) fn markdown(&self) -> String {
        let right = |name| (name, Align::Right);
        let mut phases = Table::new([
            ("round", Align::Left),
            ("phase", Align::Left),
            right("requests"),
            right("QPS"),
            right("p50 ms"),
            right("p99 ms"),
            right("errors"),
            right("p99 abused/calm"),
        ]);
        let one = |round: String, phase: &str, p: &PhaseSummary, ratio: String| {
            vec![
                round,
                phase.to_owned(),
                p.ok.to_string(),
                format!("{:.1}", p.qps),
                format!("{:.1}", p.load.p50_ms),
                format!("{:.1}", p.load.p99_ms),
                p.load.errors.to_string(),
                ratio,
            ]
        };
        for r in &self.rounds {
            for (name, p) in r.normal.named() {
                let ratio = if name == "abused" {
                    format!("{:.2}", r.normal.p99_ratio)
                } else {
                    String::new()
                };
                phases.row(one(r.round.to_string(), name, p, ratio));
            }
        }
        for (name, m) in self.normal.named() {
            let ratio = if name == "abused" {
                format!("**{:.2}**", self.normal.p99_ratio)
            } else {
                String::new()
            };
            phases.row(vec![
                "median".into(),
                name.into(),
                String::new(),
                format!("{:.1}", m.qps),
                format!("{:.1}", m.load.p50_ms),
                format!("{:.1}", m.load.p99_ms),
                format!("{} (sum)", m.load.errors),
                ratio,
            ]);
        }
        let mut abuse = Table::new([
            ("abuse", Align::Left),
            ("outcomes (all rounds)", Align::Left),
            right("longest ms"),
        ]);
        for tally in [
            &self.abuse.abusive_requests,
            &self.abuse.abusive_connections,
        ] {
            for (kind, outcomes) in &tally.by_kind {
                let list: Vec<String> = outcomes.iter().map(|(l, n)| format!("{l}: {n}")).collect();
                let slowest = tally
                    .slowest_ms
                    .get(kind)
                    .map_or_else(String::new, |ms| format!("{ms:.0}"));
                abuse.row(vec![kind.clone(), list.join(", "), slowest]);
            }
        }
        let mut s = format!("{}\n{}", phases.render(), abuse.render());
        let _ = writeln!(s);
        let dead = if self.alive_at_end.dead.is_empty() {
            "none".to_owned()
        } else {
            self.alive_at_end.dead.join(", ")
        };
        let _ = writeln!(
            s,
            "Normal traffic: p99 ratio {:.2} (goal <= {MAX_P99_RATIO}), errors {} -> goal {}. \
             Abusive requests: {} of {} not a 4xx/503/504 -> goal {}. At the end: gateway {}, \
             ready {}, executors not live: {dead}.",
            self.normal.p99_ratio,
            self.normal.errors(),
            met(self.normal_traffic_goal_met),
            self.abuse.abusive_requests.unacceptable,
            self.abuse.abusive_requests.total,
            met(self.abuse_goal_met),
            if self.alive_at_end.gateway {
                "answers"
            } else {
                "DOWN"
            },
            self.alive_at_end.ready,
        );
        s
    }
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::abuse::tally::{measured, Outcome};
    use crate::report::{keys, sorted};

    fn phase(ms: u64, n: u64, errors: usize) -> PhaseSummary {
        PhaseSummary::of(&measured(ms, n, errors, Duration::from_secs(1)))
    }

    fn alive(all: bool) -> Alive {
        Alive {
            gateway: true,
            ready: all,
            dead: if all {
                vec![]
            } else {
                vec!["encoder http://x".into()]
            },
            all_alive: all,
        }
    }

    fn round(n: usize, calm: PhaseSummary, abused: PhaseSummary, abuse: Abuse, all: bool) -> Round {
        Round {
            round: n,
            normal: Normal::new(calm, abused),
            abuse,
            alive_after: alive(all),
        }
    }

    fn requests(abusive_requests: Tally) -> Abuse {
        Abuse {
            abusive_requests,
            ..Abuse::default()
        }
    }

    #[test]
    fn medians_ratios_and_verdicts_over_rounds() {
        let mut ok = Tally::default();
        ok.count("top-k-1e12", &Outcome::Status(400));
        let mut hang = Tally::default();
        hang.count("huge-text", &Outcome::Timeout);
        // (round, calm ms and requests, abused ms and requests)
        let rounds = [
            (1, (10, 100), (15, 90)),
            (2, (20, 50), (50, 40)),
            (3, (10, 100), (18, 80)),
        ]
        .map(|(n, (cm, cn), (am, an))| {
            round(
                n,
                phase(cm, cn, 0),
                phase(am, an, 0),
                requests(ok.clone()),
                true,
            )
        })
        .to_vec();
        let r = Report::new(
            "gw".into(),
            super::super::default_settings(),
            rounds,
            alive(true),
        );
        // Per-round ratios 1.5, 2.5, 1.8: the median is 1.8, within the goal.
        assert!(
            (r.normal.p99_ratio - 1.8).abs() < 0.01,
            "{}",
            r.normal.p99_ratio
        );
        assert!((r.normal.calm.qps - 100.0).abs() < 1e-9);
        assert!((r.normal.abused.qps - 80.0).abs() < 1e-9);
        assert!((r.normal.abused.load.p99_ms - 18.0).abs() < 0.05);
        assert_eq!(r.abuse.abusive_requests.by_kind["top-k-1e12"]["400"], 3);
        assert!(r.normal_traffic_goal_met && r.abuse_goal_met);
        let phase_keys = [
            "ok",
            "qps",
            "max_ms",
            "seconds",
            "p50_ms",
            "p99_ms",
            "errors",
            "error_samples",
        ];
        assert_eq!(keys(&r.normal.calm), sorted(&phase_keys));
        assert_eq!(
            keys(&r.rounds[0]),
            sorted(&[
                "round",
                "calm",
                "abused",
                "p99_ratio",
                "abusive_requests",
                "abusive_connections",
                "alive_after",
            ])
        );
        assert_eq!(
            keys(&r),
            sorted(&[
                "benchmark",
                "gateway",
                "settings",
                "rounds",
                "calm",
                "abused",
                "p99_ratio",
                "abusive_requests",
                "abusive_connections",
                "alive_at_end",
                "normal_traffic_goal_met",
                "abuse_goal_met",
            ])
        );
        let md = r.markdown();
        assert_eq!(md.lines().filter(|l| l.starts_with("| 2 |")).count(), 2);
        assert!(md.contains("| top-k-1e12 | 400: 3 |  |"), "{md}");
        assert!(md.contains("**1.80**"), "{md}");

        // One normal error anywhere, one hang, one dead process: each fails its goal.
        let rounds = vec![round(
            1,
            phase(10, 10, 0),
            phase(11, 10, 1),
            requests(hang),
            true,
        )];
        let r = Report::new(
            "gw".into(),
            super::super::default_settings(),
            rounds,
            alive(false),
        );
        assert!(!r.normal_traffic_goal_met, "an error on the normal traffic");
        assert!(!r.abuse_goal_met);
        assert_eq!(r.normal.abused.load.errors, 1);
        assert!(r
            .markdown()
            .contains("executors not live: encoder http://x"));
    }
}
