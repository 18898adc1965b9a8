//! The results of `flowmesh-bench abuse`: per round and as medians, as JSON and as Markdown.

use std::fmt::Write as _;

use serde::Serialize;

use super::health::Alive;
use super::tally::{goal_met, median, ratio, PhaseSummary, Tally};
use super::Settings;
use crate::table::{Align, Table};

/// The goal of the issue: abused p99 within this factor of calm p99.
pub(crate) const MAX_P99_RATIO: f64 = 2.0;

/// The same figures of a calm phase and of the abused phase after it (`calm` and `abused` in
/// the JSON of the report that embeds them).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CalmAbused<T> {
    pub(crate) calm: T,
    pub(crate) abused: T,
}

impl<T> CalmAbused<T> {
    /// Both, named as in the tables.
    fn named(&self) -> [(&'static str, &T); 2] {
        [("calm", &self.calm), ("abused", &self.abused)]
    }
}

/// One calm phase and the abused phase after it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    pub(crate) round: usize,
    #[serde(flatten)]
    pub(crate) phases: CalmAbused<PhaseSummary>,
    /// `abused.p99_ms / calm.p99_ms`.
    pub(crate) p99_ratio: f64,
    #[serde(flatten)]
    pub(crate) abuse: Abuse,
    /// Health after the abused phase.
    pub(crate) alive_after: Alive,
}

impl Round {
    pub(crate) fn new(
        round: usize,
        phases: CalmAbused<PhaseSummary>,
        abuse: Abuse,
        alive_after: Alive,
    ) -> Self {
        Self {
            round,
            p99_ratio: ratio(phases.abused.load.p99_ms, phases.calm.load.p99_ms),
            phases,
            abuse,
            alive_after,
        }
    }
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

/// Medians over the rounds of one kind of phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseMedians {
    pub(crate) qps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Summed over the rounds, not a median: one error is one too many.
    pub(crate) errors: usize,
}

impl PhaseMedians {
    fn of<'a>(phases: impl Iterator<Item = &'a PhaseSummary> + Clone) -> Self {
        Self {
            qps: median(phases.clone().map(|p| p.qps)),
            p50_ms: median(phases.clone().map(|p| p.load.p50_ms)),
            p99_ms: median(phases.clone().map(|p| p.load.p99_ms)),
            errors: phases.map(|p| p.load.errors).sum(),
        }
    }

    /// The medians of the calm and of the abused phases of `rounds`.
    fn of_rounds(rounds: &[Round]) -> CalmAbused<Self> {
        CalmAbused {
            calm: Self::of(rounds.iter().map(|r| &r.phases.calm)),
            abused: Self::of(rounds.iter().map(|r| &r.phases.abused)),
        }
    }
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) benchmark: &'static str,
    pub(crate) gateway: String,
    pub(crate) settings: Settings,
    pub(crate) rounds: Vec<Round>,
    #[serde(flatten)]
    pub(crate) medians: CalmAbused<PhaseMedians>,
    /// The median of the rounds' p99 ratios.
    pub(crate) p99_ratio: f64,
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
        let medians = PhaseMedians::of_rounds(&rounds);
        let p99_ratio = median(rounds.iter().map(|r| r.p99_ratio));
        let mut abuse = Abuse::default();
        for r in &rounds {
            abuse.merge(&r.abuse);
        }
        let normal_traffic_goal_met = goal_met(
            p99_ratio,
            medians.calm.errors + medians.abused.errors,
            MAX_P99_RATIO,
        );
        let abuse_goal_met = abuse.all_acceptable()
            && alive_at_end.all_alive
            && rounds.iter().all(|r| r.alive_after.all_alive);
        Self {
            benchmark: "abuse",
            gateway,
            settings,
            rounds,
            medians,
            p99_ratio,
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
            for (name, p) in r.phases.named() {
                let ratio = if name == "abused" {
                    format!("{:.2}", r.p99_ratio)
                } else {
                    String::new()
                };
                phases.row(one(r.round.to_string(), name, p, ratio));
            }
        }
        for (name, m) in self.medians.named() {
            let ratio = if name == "abused" {
                format!("**{:.2}**", self.p99_ratio)
            } else {
                String::new()
            };
            phases.row(vec![
                "median".into(),
                name.into(),
                String::new(),
                format!("{:.1}", m.qps),
                format!("{:.1}", m.p50_ms),
                format!("{:.1}", m.p99_ms),
                format!("{} (sum)", m.errors),
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
            self.p99_ratio,
            self.medians.calm.errors + self.medians.abused.errors,
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
        let rounds = vec![
            Round::new(
                1,
                CalmAbused {
                    calm: phase(10, 100, 0),
                    abused: phase(15, 90, 0),
                },
                requests(ok.clone()),
                alive(true),
            ),
            Round::new(
                2,
                CalmAbused {
                    calm: phase(20, 50, 0),
                    abused: phase(50, 40, 0),
                },
                requests(ok.clone()),
                alive(true),
            ),
            Round::new(
                3,
                CalmAbused {
                    calm: phase(10, 100, 0),
                    abused: phase(18, 80, 0),
                },
                requests(ok.clone()),
                alive(true),
            ),
        ];
        let r = Report::new(
            "gw".into(),
            super::super::default_settings(),
            rounds,
            alive(true),
        );
        // Per-round ratios 1.5, 2.5, 1.8: the median is 1.8, within the goal.
        assert!((r.p99_ratio - 1.8).abs() < 0.01, "{}", r.p99_ratio);
        assert!((r.medians.calm.qps - 100.0).abs() < 1e-9);
        assert!((r.medians.abused.qps - 80.0).abs() < 1e-9);
        assert!((r.medians.abused.p99_ms - 18.0).abs() < 0.05);
        assert_eq!(r.abuse.abusive_requests.by_kind["top-k-1e12"]["400"], 3);
        assert!(r.normal_traffic_goal_met && r.abuse_goal_met);
        let md = r.markdown();
        assert_eq!(md.lines().filter(|l| l.starts_with("| 2 |")).count(), 2);
        assert!(md.contains("| top-k-1e12 | 400: 3 |  |"), "{md}");
        assert!(md.contains("**1.80**"), "{md}");

        // One normal error anywhere, one hang, one dead process: each fails its goal.
        let rounds = vec![Round::new(
            1,
            CalmAbused {
                calm: phase(10, 10, 0),
                abused: phase(11, 10, 1),
            },
            requests(hang),
            alive(true),
        )];
        let r = Report::new(
            "gw".into(),
            super::super::default_settings(),
            rounds,
            alive(false),
        );
        assert!(!r.normal_traffic_goal_met, "an error on the normal traffic");
        assert!(!r.abuse_goal_met);
        assert_eq!(r.medians.abused.errors, 1);
        assert!(r
            .markdown()
            .contains("executors not live: encoder http://x"));
    }
}
