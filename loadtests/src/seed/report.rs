//! The results of `flowmesh-bench run`: `results.json` (every setting, and per phase its
//! documents, requests, rates, latency percentiles, errors by kind and a time series per
//! second), `results.md` (the seed's table) and the plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::phase::PhaseResult;
use super::target::Operation;

/// One row of the table: a phase with what it ran on.
#[derive(Debug)]
pub(crate) struct Row {
    /// `flowmesh`, or another engine measured with the same workload (`jina`).
    pub(crate) engine: String,
    pub(crate) operation: Operation,
    /// The index backend: `flat`, `annoy:trees=100`, `faiss:IVF50,Flat:nprobe=8`.
    pub(crate) indexer: String,
    /// The document store: `embedded`, `redis`, `memory`, or `none` (no ranker).
    pub(crate) store: String,
    pub(crate) result: PhaseResult,
    /// Seconds the indexers took to build their structures before the phase.
    pub(crate) build_seconds: Option<f64>,
    /// recall@k against exact search, with the number of queries compared.
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

    fn to_json(&self) -> Value {
        let mut v = self.result.summary();
        v["engine"] = json!(self.engine);
        v["operation"] = json!(operation_name(self.operation));
        v["indexer"] = json!(self.indexer);
        v["store"] = json!(self.store);
        v["build_seconds"] = json!(self.build_seconds);
        v["recall_at_k"] = json!(self.recall.map(|r| r.0));
        v["recall_queries"] = json!(self.recall.map(|r| r.1));
        v
    }
}

fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Index => "index",
        Operation::Search => "query",
    }
}

/// Everything a run produced.
#[derive(Debug)]
pub(crate) struct Report {
    /// Every setting of the run.
    pub(crate) settings: Value,
    /// The gateway's `GET /status` (null when it has none).
    pub(crate) topology: Value,
    pub(crate) rows: Vec<Row>,
}

impl Report {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "benchmark": "seed",
            "settings": self.settings,
            "topology": self.topology,
            "phases": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        })
    }

    /// The seed's table: one line per phase.
    pub(crate) fn markdown(&self) -> String {
        let engines = self.rows.iter().any(|r| r.engine != "flowmesh");
        let k = self.settings["top_k"].as_u64().unwrap_or(0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| {}operation | indexer | document store | hours | documents | documents/s | requests/s | latency p50 ms | p95 ms | p99 ms | errors | build s | recall@{k} |",
            if engines { "engine | " } else { "" }
        );
        let _ = writeln!(
            s,
            "|{}---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            if engines { "---|" } else { "" }
        );
        for row in &self.rows {
            let r = &row.result;
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {:.3} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                if engines { format!("{} | ", row.engine) } else { String::new() },
                operation_name(row.operation),
                row.indexer,
                row.store,
                r.elapsed.as_secs_f64() / 3600.0,
                r.documents,
                r.docs_per_s(),
                r.requests_per_s(),
                r.latency_ms(0.5),
                r.latency_ms(0.95),
                r.latency_ms(0.99),
                r.error_count(),
                row.build_seconds.map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
                row.recall.map_or_else(|| "-".to_owned(), |(r, _)| format!("{r:.3}")),
            );
        }
        s
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
        let mut json = self.to_json();
        json["plots"] = json!(plots);
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        let mut md = format!(
            "# flowmesh-bench run\n\nTopology: {}\n\n",
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

    #[test]
    fn the_table_has_a_line_per_phase_with_recall() {
        let result = PhaseResult {
            latencies: vec![0.010, 0.020, 0.030],
            documents: 150,
            elapsed: Duration::from_secs(3),
            ..PhaseResult::default()
        };
        let report = Report {
            settings: json!({"top_k": 50}),
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
            "| query | annoy:trees=100 | redis | 0.001 | 150 | 50.0 | 1.00 | 20 | 30 | 30 | 0 | 1.2 | 0.988 |"
        );
        assert!(md.contains("recall@50"));
        let json = report.to_json();
        assert_eq!(json["phases"][0]["documents"], 150);
        assert_eq!(json["phases"][0]["recall_at_k"], 0.9876);
    }
}
