//! The results of `flowmesh-bench run`: `results.json` (every setting, and per phase its
//! documents, requests, rates, latency percentiles, errors by kind and a time series per
//! second), `results.md` (the seed's table) and the plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::phase::{PhaseResult, PhaseSummary};
use super::target::Operation;
use super::Settings;
use crate::table::{duration, opt, Align, Table};

/// One row of the table: a phase with what it ran on (in `results.json`, beside the phase's
/// figures).
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// `flowmesh`, or another engine measured with the same workload (`jina`).
    pub(crate) engine: String,
    /// `index` or `query`.
    #[serde(serialize_with = "serialize_operation")]
    pub(crate) operation: Operation,
    /// The index backend: `flat`, `annoy:trees=100`, `faiss:IVF50,Flat:nprobe=8`.
    pub(crate) indexer: String,
    /// The document store: `embedded`, `redis`, `memory`, or `none` (no ranker).
    pub(crate) store: String,
    #[serde(skip)]
    pub(crate) result: PhaseResult,
    /// Seconds the indexers took to build their structures before the phase.
    pub(crate) build_seconds: Option<f64>,
    /// recall@k against exact search, with the number of queries compared.
    #[serde(skip)]
    pub(crate) recall: Option<(f64, usize)>,
}

impl Row {
    /// `index`, `query flat`, `jina query annoy:trees=100`: names the row in plots.
    pub(crate) fn label(&self) -> String {
        let engine = if self.engine == "flowmesh" {
            String::new()
        } else {
            format!("{} ", self.engine)
        };
        match self.operation {
            Operation::Index => format!("{engine}index"),
            Operation::Search => format!("{engine}query {}", self.indexer),
        }
    }

    fn to_json(&self) -> PhaseJson<'_> {
        PhaseJson {
            summary: self.result.summary(),
            row: self,
            recall_at_k: self.recall.map(|r| r.0),
            recall_queries: self.recall.map(|r| r.1),
        }
    }
}

/// One phase in `results.json`: its figures and what it ran on.
#[derive(Debug, Serialize)]
struct PhaseJson<'a> {
    #[serde(flatten)]
    summary: PhaseSummary,
    #[serde(flatten)]
    row: &'a Row,
    recall_at_k: Option<f64>,
    recall_queries: Option<usize>,
}

/// `results.json`.
#[derive(Debug, Serialize)]
pub(crate) struct ResultsJson<'a> {
    benchmark: &'static str,
    settings: &'a Settings,
    topology: &'a Value,
    phases: Vec<PhaseJson<'a>>,
    plots: &'a [String],
}

/// `index` or `query`: the operations as the results name them.
fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Index => "index",
        Operation::Search => "query",
    }
}

fn serialize_operation<S: serde::Serializer>(op: &Operation, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(operation_name(*op))
}

/// Everything a run produced.
#[derive(Debug)]
pub(crate) struct Report {
    /// Every setting of the run.
    pub(crate) settings: Settings,
    /// The gateway's `GET /status` (null when it has none).
    pub(crate) topology: Value,
    pub(crate) rows: Vec<Row>,
}

impl Report {
    /// `results.json`, listing `plots`.
    pub(crate) fn to_json<'a>(&'a self, plots: &'a [String]) -> ResultsJson<'a> {
        ResultsJson {
            benchmark: "seed",
            settings: &self.settings,
            topology: &self.topology,
            phases: self.rows.iter().map(Row::to_json).collect(),
            plots,
        }
    }

    /// The seed's table in Markdown (`results.md`): one line per phase.
    pub(crate) fn markdown(&self) -> String {
        self.table(false).render()
    }

    /// What the terminal shows at the end of a run: the settings on a line (with the document
    /// store when every phase had the same), then the table at most `width` characters wide,
    /// its headers short (`docs/s`, `p50 ms`).
    pub(crate) fn terminal(&self, width: usize) -> String {
        let mut settings = self.settings_line();
        if let Some(store) = self.one_store() {
            settings.push_str(&format!(", store {store}"));
        }
        format!(
            "{}\n\n{}",
            crate::table::wrap_list(&settings, width).join("\n"),
            self.table(true).terminal(width)
        )
    }

    /// The document store of every phase, when they all had the same.
    fn one_store(&self) -> Option<&str> {
        let first = self.rows.first()?;
        self.rows
            .iter()
            .all(|r| r.store == first.store)
            .then_some(first.store.as_str())
    }

    /// The settings that shape the figures, on one line: `text, 2000 docs, request size 50,
    /// concurrency 4, top_k 50, 2 shards, 2 encoder replicas (onnx), query 60 s`.
    pub(crate) fn settings_line(&self) -> String {
        let s = &self.settings;
        let a = &s.args;
        let w = &a.workload;
        let scenario = match w.scenario {
            super::Scenario::Text => "text",
            super::Scenario::Image => "image",
        };
        let encoder = match a.flow.encoder {
            super::flow::Encoder::Onnx => "onnx",
            super::flow::Encoder::Hash => "hash",
        };
        let mut line = format!(
            "{scenario}, {} docs, request size {}, concurrency {}, top_k {}",
            w.docs, w.request_size, a.concurrency, w.top_k
        );
        if a.gateway.is_none() {
            line.push_str(&format!(
                ", {} shards, {} encoder replicas ({encoder})",
                a.flow.shards, a.flow.replicas
            ));
        }
        let limit = |load: &crate::load::LoadConfig| {
            (load.duration < crate::load::NO_LIMIT)
                .then(|| crate::table::duration(load.duration.as_secs_f64()))
        };
        if let Some(d) = limit(&s.query_limits) {
            line.push_str(&format!(", queries for {d}"));
        }
        line
    }

    /// The seed's table: one line per phase; for a terminal with short headers, and without
    /// the store when [`Self::terminal`] names it above.
    fn table(&self, terminal: bool) -> Table {
        let engines = self.rows.iter().any(|r| r.engine != "flowmesh");
        let store = !terminal || self.one_store().is_none();
        let right = |name: &str| (name.to_owned(), Align::Right);
        let name = |long: &'static str, short: &'static str| if terminal { short } else { long };
        let mut columns = Vec::new();
        if engines {
            columns.push(("engine".to_owned(), Align::Left));
        }
        columns.push((name("operation", "phase").to_owned(), Align::Left));
        columns.push(("indexer".to_owned(), Align::Left));
        if store {
            columns.push((name("document store", "store").to_owned(), Align::Left));
        }
        for (long, short) in [
            ("duration", "time"),
            ("documents", "docs"),
            ("documents/s", "docs/s"),
            ("requests/s", "req/s"),
            ("latency p50 ms", "p50 ms"),
            ("p95 ms", "p95 ms"),
            ("p99 ms", "p99 ms"),
            ("errors", "errors"),
            ("build s", "build s"),
        ] {
            columns.push(right(name(long, short)));
        }
        columns.push(right(&format!(
            "recall@{}",
            self.settings.args.workload.top_k
        )));
        let mut t = Table::new(columns);
        for row in &self.rows {
            let m = &row.result.measured;
            let mut cells = Vec::new();
            if engines {
                cells.push(row.engine.clone());
            }
            cells.push(operation_name(row.operation).to_owned());
            cells.push(row.indexer.clone());
            if store {
                cells.push(row.store.clone());
            }
            cells.extend([
                duration(m.elapsed.as_secs_f64()),
                m.documents.to_string(),
                format!("{:.1}", m.docs_per_s()),
                format!("{:.2}", m.requests_per_s()),
                format!("{:.0}", m.latency_ms(0.5)),
                format!("{:.0}", m.latency_ms(0.95)),
                format!("{:.0}", m.latency_ms(0.99)),
                m.error_count().to_string(),
                opt(row.build_seconds, 1),
                opt(row.recall.map(|r| r.0), 3),
            ]);
            t.row(cells);
        }
        t
    }

    /// Writes `results.json`, `results.md` and the plots into `dir` (created if needed);
    /// returns the plots written (none without a font).
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let plots = match super::plot::font() {
            Ok(()) => super::plot::write_all(self, dir)?,
            Err(e) => {
                eprintln!("no plots: {e:#}");
                Vec::new()
            }
        };
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&self.to_json(&plots))?,
        )?;
        let mut md = format!(
            "# flowmesh-bench run\n\nSettings: {}\n\nTopology: {}\n\n",
            self.settings_line(),
            super::flow::topology_line(&self.topology)
        );
        md.push_str(&self.markdown());
        if !plots.is_empty() {
            md.push('\n');
            for p in &plots {
                let _ = writeln!(md, "![{p}]({p})");
            }
        }
        std::fs::write(dir.join("results.md"), md)?;
        Ok(plots)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::Latencies;

    #[test]
    fn the_table_has_a_line_per_phase_with_recall() {
        let mut result = PhaseResult::default();
        result.measured.latencies = Latencies::of_ms([10, 20, 30]);
        result.measured.documents = 150;
        result.measured.elapsed = Duration::from_secs(3);
        let report = Report {
            settings: super::super::tests::settings(50),
            topology: Value::Null,
            rows: vec![Row {
                engine: "flowmesh".into(),
                operation: Operation::Search,
                indexer: "annoy:trees=100".into(),
                store: "redis".into(),
                result,
                build_seconds: Some(1.24),
                recall: Some((0.9876, 10)),
            }],
        };
        let md = report.markdown();
        let line = md.lines().nth(2).expect("a row");
        assert_eq!(
            line,
            "| query | annoy:trees=100 | redis | 3.00 s | 150 | 50.0 | 1.00 | 20 | 30 | 30 | 0 | 1.2 | 0.988 |"
        );
        assert!(md.contains("recall@50"));
        let term = report.terminal(100);
        assert!(!term.contains('|'), "{term}");
        assert!(term.lines().all(|l| l.chars().count() <= 100), "{term}");
        assert!(term.contains("3.00 s") && term.contains("0.988"), "{term}");
        assert!(
            term.starts_with("text, 10 docs, request size 50, concurrency 4, top_k 50, 2 shards"),
            "{term}"
        );
        let settings = term.split("\n\n").next().expect("the settings");
        assert!(settings.ends_with("store redis"), "{term}");
        // Short headers, wrapped only where the width needs it; the store is named above.
        let table = term
            .split("\n\n")
            .nth(1)
            .expect("a table after the settings");
        let headers: Vec<&str> = table
            .lines()
            .take_while(|l| !l.starts_with("---"))
            .flat_map(str::split_whitespace)
            .collect();
        for name in [
            "phase",
            "indexer",
            "time",
            "docs/s",
            "req/s",
            "p50",
            "p99",
            "recall@50",
        ] {
            assert!(headers.contains(&name), "{name} in {term}");
        }
        assert!(
            !headers.contains(&"store") && !headers.contains(&"hours"),
            "{term}"
        );
        let json = serde_json::to_value(report.to_json(&[])).expect("JSON");
        assert_eq!(json["phases"][0]["documents"], 150);
        assert_eq!(json["phases"][0]["recall_at_k"], 0.9876);
        assert_eq!(json["phases"][0]["operation"], "query");
        assert_eq!(
            crate::report::keys(&json["phases"][0]),
            crate::report::sorted(&[
                "seconds",
                "hours",
                "documents",
                "requests",
                "docs_per_s",
                "requests_per_s",
                "latency_ms",
                "errors",
                "errors_by_kind",
                "per_second",
                "engine",
                "operation",
                "indexer",
                "store",
                "build_seconds",
                "recall_at_k",
                "recall_queries",
            ])
        );
        assert_eq!(json["settings"]["top_k"], 50);
        assert_eq!(json["settings"]["index_limits"]["max_requests"], 1);
    }
}
