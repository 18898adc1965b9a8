//! The comparison's rows, its Markdown table and its JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{EmbeddingCheck, RawOnnx};
use super::CompareArgs;
use crate::load::{Measured, Summary};
use crate::table::{num, Align, Table};

/// What one side did in one phase.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Side {
    /// Units (requests or documents) per second.
    pub(crate) per_s: f64,
    pub(crate) requests: usize,
    #[serde(flatten)]
    pub(crate) load: Summary,
    /// CPU milliseconds per unit of every process of the side, by process name, and of the
    /// load generator.
    #[serde(rename = "cpu_ms_per_unit")]
    pub(crate) cpu_ms: BTreeMap<String, f64>,
    /// CPU milliseconds per unit of the side's own processes (the load generator left out).
    #[serde(rename = "service_cpu_ms_per_unit")]
    pub(crate) service_cpu_ms: f64,
    /// The raw model's rate in the same unit, measured just before (index workload).
    pub(crate) raw_per_s: Option<f64>,
    /// `per_s / raw_per_s`.
    pub(crate) of_raw: Option<f64>,
}

impl Side {
    /// From a load phase that completed `units` units, and the CPU seconds of its processes.
    pub(crate) fn from_measured(
        m: &Measured,
        units: f64,
        cpu_seconds: &BTreeMap<String, f64>,
    ) -> Self {
        let per_unit = |s: f64| {
            if units > 0.0 {
                s * 1e3 / units
            } else {
                f64::NAN
            }
        };
        let cpu_ms: BTreeMap<String, f64> = cpu_seconds
            .iter()
            .map(|(k, v)| (k.clone(), per_unit(*v)))
            .collect();
        let service_cpu_ms = cpu_ms
            .iter()
            .filter(|(k, _)| k.as_str() != "load generator")
            .map(|(_, v)| v)
            .sum();
        Self {
            per_s: units / m.seconds(),
            requests: m.requests(),
            load: Summary::of(m),
            cpu_ms,
            service_cpu_ms,
            raw_per_s: None,
            of_raw: None,
        }
    }

    /// Sets the raw model's rate in the same unit.
    pub(crate) fn set_raw(&mut self, raw_per_s: f64) {
        self.raw_per_s = Some(raw_per_s);
        self.of_raw = Some(self.per_s / raw_per_s);
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "{:.1}/s, p50 {:.2} ms, p99 {:.2} ms, CPU {:.2} ms per unit, errors {}{}",
            self.per_s,
            self.load.p50_ms,
            self.load.p99_ms,
            self.service_cpu_ms,
            self.load.errors,
            if self.load.error_samples.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.load.error_samples)
            }
        )
    }
}

/// Both sides of a row, and flowmesh's rate over Jina's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sides {
    pub(crate) flowmesh: Side,
    pub(crate) jina: Side,
    /// flowmesh's rate over Jina's (set by [`Row::finish`]).
    pub(crate) ratio: f64,
}

/// One line of the comparison: a workload at one concurrency, both sides.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) workload: String,
    pub(crate) concurrency: usize,
    pub(crate) unit: String,
    #[serde(flatten)]
    pub(crate) sides: Sides,
    /// The target for flowmesh / Jina, where it sets one.
    #[serde(rename = "target_ratio")]
    pub(crate) target: Option<f64>,
    /// Set by [`Row::finish`].
    pub(crate) target_met: Option<bool>,
}

impl Row {
    pub(crate) fn new(workload: &str, concurrency: usize, unit: &str, target: Option<f64>) -> Self {
        Self {
            workload: workload.to_owned(),
            concurrency,
            unit: unit.to_owned(),
            sides: Sides {
                flowmesh: Side::default(),
                jina: Side::default(),
                ratio: f64::NAN,
            },
            target,
            target_met: None,
        }
    }

    /// flowmesh's side (`true`) or Jina's.
    pub(crate) fn side(&mut self, flowmesh: bool) -> &mut Side {
        if flowmesh {
            &mut self.sides.flowmesh
        } else {
            &mut self.sides.jina
        }
    }

    /// Computes the ratio and the target's verdict once both sides are measured.
    pub(crate) fn finish(&mut self) {
        let ratio = self.sides.flowmesh.per_s / self.sides.jina.per_s;
        self.sides.ratio = ratio;
        self.target_met = self.target.map(|t| ratio >= t);
    }
}

/// What the search and index workloads add to the results.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Extras {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) embedding_check: Option<EmbeddingCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) raw_onnx: Option<RawOnnx>,
}

/// The JSON of a run (`compare.json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompareResult<'a> {
    benchmark: &'static str,
    jina: &'static str,
    settings: &'a CompareArgs,
    rows: &'a [Row],
    /// Each side's gRPC searches over its HTTP searches, from the `grpc` workload's rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    grpc_over_http: Vec<ProtocolRatio>,
    network_guard_refusals: &'a [String],
    #[serde(flatten)]
    extras: Extras,
}

/// The results of a run.
pub(crate) fn result<'a>(
    args: &'a CompareArgs,
    rows: &'a [Row],
    extras: Extras,
    refused: &'a [String],
) -> CompareResult<'a> {
    CompareResult {
        benchmark: "compare",
        jina: "3.34 (HTTP gateway, and gRPC for the grpc workload; docarray v2, Python executors in loadtests/jina)",
        settings: args,
        rows,
        grpc_over_http: protocol_ratios(rows),
        network_guard_refusals: refused,
        extras,
    }
}

/// One concurrency of the `grpc` workload: each side's gRPC and HTTP searches on the same Flow.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProtocolRatio {
    pub(crate) concurrency: usize,
    pub(crate) flowmesh_grpc_per_s: f64,
    pub(crate) flowmesh_http_per_s: f64,
    /// flowmesh's gRPC rate over its HTTP rate.
    pub(crate) flowmesh: f64,
    pub(crate) jina_grpc_per_s: f64,
    pub(crate) jina_http_per_s: f64,
    /// Jina's gRPC rate over its HTTP rate.
    pub(crate) jina: f64,
}

/// The `grpc` workload's rows paired by concurrency (none without that workload).
pub(crate) fn protocol_ratios(rows: &[Row]) -> Vec<ProtocolRatio> {
    rows.iter()
        .filter(|g| g.workload == super::GRPC_ROW)
        .filter_map(|g| {
            let h = rows
                .iter()
                .find(|h| h.workload == super::GRPC_HTTP_ROW && h.concurrency == g.concurrency)?;
            let (fg, fh) = (g.sides.flowmesh.per_s, h.sides.flowmesh.per_s);
            let (jg, jh) = (g.sides.jina.per_s, h.sides.jina.per_s);
            Some(ProtocolRatio {
                concurrency: g.concurrency,
                flowmesh_grpc_per_s: fg,
                flowmesh_http_per_s: fh,
                flowmesh: fg / fh,
                jina_grpc_per_s: jg,
                jina_http_per_s: jh,
                jina: jg / jh,
            })
        })
        .collect()
}

/// The Markdown table of each side's gRPC against its HTTP, when the run had the `grpc`
/// workload.
pub(crate) fn protocol_table(rows: &[Row]) -> Option<String> {
    let ratios = protocol_ratios(rows);
    if ratios.is_empty() {
        return None;
    }
    let right = |name| (name, Align::Right);
    let mut t = Table::new([
        right("concurrency"),
        right("flowmesh gRPC / HTTP searches/s"),
        right("flowmesh gRPC / HTTP"),
        right("Jina gRPC / HTTP searches/s"),
        right("Jina gRPC / HTTP"),
    ]);
    for r in &ratios {
        t.row(vec![
            r.concurrency.to_string(),
            format!(
                "{} / {}",
                num(r.flowmesh_grpc_per_s),
                num(r.flowmesh_http_per_s)
            ),
            format!("{:.2}x", r.flowmesh),
            format!("{} / {}", num(r.jina_grpc_per_s), num(r.jina_http_per_s)),
            format!("{:.2}x", r.jina),
        ]);
    }
    Some(t.render())
}

/// The Markdown table of a run.
pub(crate) fn table(rows: &[Row]) -> String {
    let right = |name| (name, Align::Right);
    let mut t = Table::new([
        ("workload", Align::Left),
        right("concurrency"),
        ("unit", Align::Left),
        right("flowmesh"),
        right("Jina"),
        right("flowmesh / Jina"),
        right("target"),
        right("flowmesh p50 / p99 ms"),
        right("Jina p50 / p99 ms"),
        right("errors flowmesh / Jina"),
        right("CPU ms per unit flowmesh / Jina"),
        right("flowmesh of raw ONNX"),
    ]);
    for r in rows {
        let (f, j) = (&r.sides.flowmesh, &r.sides.jina);
        let target = r.target.map_or_else(
            || "-".to_owned(),
            |t| {
                let met = if r.target_met == Some(true) {
                    "met"
                } else {
                    "missed"
                };
                format!("{t}x {met}")
            },
        );
        let of_raw = f.raw_per_s.map_or_else(
            || "-".to_owned(),
            |raw| {
                let met = if f.per_s >= 0.9 * raw {
                    "met"
                } else {
                    "missed"
                };
                format!(
                    "{:.0}% of {} (target 90%: {met})",
                    100.0 * f.per_s / raw,
                    num(raw)
                )
            },
        );
        t.row(vec![
            r.workload.clone(),
            r.concurrency.to_string(),
            r.unit.clone(),
            num(f.per_s),
            num(j.per_s),
            format!("{:.1}x", r.sides.ratio),
            target,
            format!("{} / {}", num(f.load.p50_ms), num(f.load.p99_ms)),
            format!("{} / {}", num(j.load.p50_ms), num(j.load.p99_ms)),
            format!("{} / {}", f.load.errors, j.load.errors),
            format!("{} / {}", num(f.service_cpu_ms), num(j.service_cpu_ms)),
            of_raw,
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::Latencies;
    use crate::report::{keys, sorted};

    #[test]
    fn rows_keep_their_json_keys_and_verdicts() {
        let measured = Measured {
            latencies: Latencies::of_ms([2, 4]),
            elapsed: Duration::from_secs(1),
            ..Measured::default()
        };
        let cpu = BTreeMap::from([("load generator".to_owned(), 0.5)]);
        let mut row = Row::new("search", 2, "requests/s", Some(3.0));
        *row.side(true) = Side::from_measured(&measured, 40.0, &cpu);
        *row.side(false) = Side::from_measured(&measured, 10.0, &cpu);
        row.side(true).set_raw(50.0);
        row.finish();
        assert_eq!(
            keys(&row),
            sorted(&[
                "workload",
                "concurrency",
                "unit",
                "flowmesh",
                "jina",
                "ratio",
                "target_ratio",
                "target_met"
            ])
        );
        assert_eq!(
            keys(&row.sides.flowmesh),
            sorted(&[
                "per_s",
                "requests",
                "seconds",
                "p50_ms",
                "p99_ms",
                "errors",
                "error_samples",
                "cpu_ms_per_unit",
                "service_cpu_ms_per_unit",
                "raw_per_s",
                "of_raw",
            ])
        );
        assert_eq!((row.sides.ratio, row.target_met), (4.0, Some(true)));
        assert_eq!(row.sides.flowmesh.requests, 2);
        assert!(table(&[row]).contains("| 4.0x | 3x met |"));
    }

    #[test]
    fn grpc_rows_pair_with_their_http_rows() {
        let measured = Measured {
            latencies: Latencies::of_ms([2, 4]),
            elapsed: Duration::from_secs(1),
            ..Measured::default()
        };
        let cpu = BTreeMap::new();
        let row = |name: &str, c: usize, flowmesh: f64, jina: f64| {
            let mut r = Row::new(name, c, "requests/s", None);
            *r.side(true) = Side::from_measured(&measured, flowmesh, &cpu);
            *r.side(false) = Side::from_measured(&measured, jina, &cpu);
            r.finish();
            r
        };
        let rows = [
            row(super::super::GRPC_ROW, 1, 300.0, 100.0),
            row(super::super::GRPC_ROW, 16, 800.0, 200.0),
            row(super::super::GRPC_HTTP_ROW, 16, 400.0, 250.0),
            row("overhead", 1, 1.0, 1.0),
        ];
        let ratios = protocol_ratios(&rows);
        assert_eq!(ratios.len(), 1, "concurrency 1 has no HTTP row");
        assert_eq!(
            (ratios[0].concurrency, ratios[0].flowmesh, ratios[0].jina),
            (16, 2.0, 0.8)
        );
        let table = protocol_table(&rows).unwrap_or_default();
        assert!(
            table.contains("| 2.00x |") && table.contains("| 0.80x |"),
            "{table}"
        );
        assert!(protocol_table(&rows[3..]).is_none());
    }
}
