//! The comparison's rows, its Markdown table and its JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::CompareArgs;
use crate::load;

/// What one side did in one phase.
#[derive(Debug, Default, Clone)]
pub(crate) struct Side {
    /// Units (requests or documents) per second.
    pub(crate) per_s: f64,
    pub(crate) requests: usize,
    pub(crate) seconds: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: usize,
    pub(crate) error_samples: Vec<String>,
    /// CPU milliseconds per unit of every process of the side, by process name, and of the
    /// load generator.
    pub(crate) cpu_ms: BTreeMap<String, f64>,
    /// The raw model's rate in the same unit, measured just before (index workload).
    pub(crate) raw_per_s: Option<f64>,
}

impl Side {
    /// From a load phase that completed `units` units, and the CPU seconds of its processes.
    pub(crate) fn from_measured(
        m: &load::Measured,
        units: f64,
        cpu_seconds: &BTreeMap<String, f64>,
    ) -> Self {
        let mut lat = m.latencies.clone();
        lat.sort_by(f64::total_cmp);
        let seconds = m.elapsed.as_secs_f64();
        let per_unit = |s: f64| {
            if units > 0.0 {
                s * 1e3 / units
            } else {
                f64::NAN
            }
        };
        Self {
            per_s: units / seconds,
            requests: lat.len(),
            seconds,
            p50_ms: load::quantile(&lat, 0.5) * 1e3,
            p99_ms: load::quantile(&lat, 0.99) * 1e3,
            errors: m.errors,
            error_samples: m.error_samples.clone(),
            cpu_ms: cpu_seconds
                .iter()
                .map(|(k, v)| (k.clone(), per_unit(*v)))
                .collect(),
            raw_per_s: None,
        }
    }

    /// CPU milliseconds per unit of the side's own processes (the load generator left out).
    pub(crate) fn service_cpu_ms(&self) -> f64 {
        self.cpu_ms
            .iter()
            .filter(|(k, _)| k.as_str() != "load generator")
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "{:.1}/s, p50 {:.2} ms, p99 {:.2} ms, CPU {:.2} ms per unit, errors {}{}",
            self.per_s,
            self.p50_ms,
            self.p99_ms,
            self.service_cpu_ms(),
            self.errors,
            if self.error_samples.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.error_samples)
            }
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "per_s": self.per_s,
            "requests": self.requests,
            "seconds": self.seconds,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "cpu_ms_per_unit": self.cpu_ms,
            "service_cpu_ms_per_unit": self.service_cpu_ms(),
            "raw_per_s": self.raw_per_s,
            "of_raw": self.raw_per_s.map(|r| self.per_s / r),
        })
    }
}

/// One line of the comparison: a workload at one concurrency, both sides.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) workload: String,
    pub(crate) concurrency: usize,
    pub(crate) unit: String,
    /// The target for flowmesh / Jina, where it sets one.
    pub(crate) target: Option<f64>,
    pub(crate) flowmesh: Side,
    pub(crate) jina: Side,
}

impl Row {
    pub(crate) fn new(workload: &str, concurrency: usize, unit: &str, target: Option<f64>) -> Self {
        Self {
            workload: workload.to_owned(),
            concurrency,
            unit: unit.to_owned(),
            target,
            flowmesh: Side::default(),
            jina: Side::default(),
        }
    }

    /// flowmesh's side (`true`) or Jina's.
    pub(crate) fn side(&mut self, flowmesh: bool) -> &mut Side {
        if flowmesh {
            &mut self.flowmesh
        } else {
            &mut self.jina
        }
    }

    pub(crate) fn ratio(&self) -> f64 {
        self.flowmesh.per_s / self.jina.per_s
    }

    fn to_json(&self) -> Value {
        json!({
            "workload": self.workload,
            "concurrency": self.concurrency,
            "unit": self.unit,
            "flowmesh": self.flowmesh.to_json(),
            "jina": self.jina.to_json(),
            "ratio": self.ratio(),
            "target_ratio": self.target,
            "target_met": self.target.map(|t| self.ratio() >= t),
        })
    }
}

/// The JSON of a run.
pub(crate) fn result(
    args: &CompareArgs,
    rows: &[Row],
    extras: serde_json::Map<String, Value>,
    refused: &[String],
) -> Value {
    let mut v = json!({
        "benchmark": "compare",
        "jina": "3.34 (HTTP gateway, docarray v2, Python executors in loadtests/jina)",
        "settings": {
            "order": format!("{:?}", args.order),
            "docs": args.docs,
            "concurrency": args.concurrency,
            "search_docs": args.search_docs,
            "search_concurrency": args.search_concurrency,
            "index_docs": args.index_docs,
            "sentences_per_doc": args.sentences_per_doc,
            "request_size": args.request_size,
            "index_concurrency": args.index_concurrency,
            "duration_secs": args.duration_secs,
            "requests": args.requests,
            "top_k": args.top_k,
            "overhead_flow": args.overhead_flow,
            "text_flow": args.text_flow,
        },
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "network_guard_refusals": refused,
    });
    if let Some(o) = v.as_object_mut() {
        o.extend(extras);
    }
    v
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".to_owned()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The Markdown table of a run.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | concurrency | unit | flowmesh | Jina | flowmesh / Jina | target | flowmesh p50 / p99 ms | Jina p50 / p99 ms | errors flowmesh / Jina | CPU ms per unit flowmesh / Jina | flowmesh of raw ONNX |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let (f, j) = (&r.flowmesh, &r.jina);
        let target = r.target.map_or_else(
            || "-".to_owned(),
            |t| format!("{t}x {}", if r.ratio() >= t { "met" } else { "missed" }),
        );
        let of_raw = f.raw_per_s.map_or_else(
            || "-".to_owned(),
            |raw| {
                format!(
                    "{:.0}% of {} (target 90%: {})",
                    100.0 * f.per_s / raw,
                    num(raw),
                    if f.per_s >= 0.9 * raw {
                        "met"
                    } else {
                        "missed"
                    }
                )
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1}x | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} |",
            r.workload,
            r.concurrency,
            r.unit,
            num(f.per_s),
            num(j.per_s),
            r.ratio(),
            target,
            num(f.p50_ms),
            num(f.p99_ms),
            num(j.p50_ms),
            num(j.p99_ms),
            f.errors,
            j.errors,
            num(f.service_cpu_ms()),
            num(j.service_cpu_ms()),
            of_raw,
        );
    }
    s
}
