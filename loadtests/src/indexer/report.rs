//! The Markdown tables and progress lines of `flowmesh-bench indexer`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::measure::Phase;

/// One line on stderr per measurement, as it finishes.
pub(super) fn progress(p: &Phase) {
    let server = p
        .server_mean_ms
        .map_or(String::new(), |ms| format!(" (in the service {ms:.2} ms)"));
    eprintln!(
        "    {:<10} batch {:>3} c={}: {:>9.1} q/s, recall {:.4}, mean {:.2} ms{server}, {} queries, errors {}",
        p.mode, p.batch, p.concurrency, p.queries_per_s, p.recall, p.mean_ms, p.queries, p.errors
    );
    for e in &p.error_samples {
        eprintln!("      error: {e}");
    }
}

/// The phase of `row` with this mode, call size and concurrency.
fn phase<'a>(row: &'a Value, mode: &str, batch: usize, c: usize) -> Option<&'a Value> {
    row["phases"]
        .as_array()?
        .iter()
        .find(|p| p["mode"] == mode && p["batch"] == json!(batch) && p["concurrency"] == json!(c))
}

fn qps(row: &Value, mode: &str, batch: usize, c: usize) -> Option<f64> {
    phase(row, mode, batch, c)?["queries_per_s"].as_f64()
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", 100.0 * a / b),
        _ => "-".into(),
    }
}

/// Recall of the in-process batched run, and the HTTP one's when it differs.
fn recall_cell(row: &Value, batch: usize) -> String {
    let of = |mode| phase(row, mode, batch, 1).and_then(|p| p["recall"].as_f64());
    match (of("in-process"), of("http")) {
        (Some(a), Some(b)) if (a - b).abs() > 5e-4 => format!("{a:.3} / {b:.3}"),
        (Some(a), _) => format!("{a:.3}"),
        (None, Some(b)) => format!("{b:.3}"),
        (None, None) => "-".into(),
    }
}

/// The tables of one data set (`sets[i]` of the JSON results).
pub(super) fn table(set: &Value) -> String {
    let batch = set["batch"].as_u64().unwrap_or(50) as usize;
    let k = set["k"].as_u64().unwrap_or(10);
    let rows: &[Value] = set["backends"].as_array().map_or(&[], Vec::as_slice);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} x {} (queries/s at concurrency 1; build s: in-process store + build / over HTTP index + build)\n",
        set["n"], set["dim"]
    );
    let _ = writeln!(
        s,
        "| backend | params | build s | in-process q/s (1) | in-process q/s (batch {batch}) | HTTP q/s (1) | HTTP q/s (batch {batch}) | HTTP / in-process (batch {batch}) | recall@{k} |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let params = r["params"].as_array().map_or(String::new(), |ps| {
            ps.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        });
        let build = match r["http_load_s"].as_f64() {
            Some(h) => format!("{:.1} / {h:.1}", r["build_s"].as_f64().unwrap_or(f64::NAN)),
            None => format!("{:.1}", r["build_s"].as_f64().unwrap_or(f64::NAN)),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {build} | {} | {} | {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            params,
            cell(qps(r, "in-process", 1, 1)),
            cell(qps(r, "in-process", batch, 1)),
            cell(qps(r, "http", 1, 1)),
            cell(qps(r, "http", batch, 1)),
            ratio(qps(r, "http", batch, 1), qps(r, "in-process", batch, 1)),
            recall_cell(r, batch),
        );
    }
    concurrency_table(&mut s, rows, batch);
    latency_table(&mut s, rows, batch);
    for h in set["flat_vs_faiss_flat"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "{}flat / faiss:Flat in-process, concurrency 1, calls of {} (alternating slices): {:.0} / {:.0} q/s = {:.0}%",
            if h["batch"] == json!(1) { "\n" } else { "" },
            h["batch"],
            h["flat_queries_per_s"].as_f64().unwrap_or(f64::NAN),
            h["faiss_flat_queries_per_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * h["ratio"].as_f64().unwrap_or(f64::NAN),
        );
    }
    s
}

/// Queries/s at the concurrencies above 1, in-process threads against HTTP connections.
fn concurrency_table(s: &mut String, rows: &[Value], batch: usize) {
    let mut levels: Vec<usize> = rows
        .iter()
        .flat_map(|r| r["phases"].as_array().into_iter().flatten())
        .filter_map(|p| p["concurrency"].as_u64().map(|c| c as usize))
        .filter(|&c| c > 1)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    for c in levels {
        let _ = writeln!(
            s,
            "\nconcurrency {c} (threads in-process, connections over HTTP), queries/s:\n"
        );
        let _ = writeln!(
            s,
            "| backend | params | in-process (1) | in-process (batch {batch}) | HTTP (1) | HTTP (batch {batch}) | HTTP / in-process (batch {batch}) |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
        for r in rows {
            let params = r["params"].as_array().map_or(String::new(), |ps| {
                ps.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r["backend"].as_str().unwrap_or("?"),
                params,
                cell(qps(r, "in-process", 1, c)),
                cell(qps(r, "in-process", batch, c)),
                cell(qps(r, "http", 1, c)),
                cell(qps(r, "http", batch, c)),
                ratio(qps(r, "http", batch, c), qps(r, "in-process", batch, c)),
            );
        }
    }
}

/// Where the time of an HTTP call goes, at concurrency 1: the same call in-process, inside the
/// service (decoding, search, encoding: from its request histogram), and as the client saw it.
fn latency_table(s: &mut String, rows: &[Value], batch: usize) {
    let ms = |row: &Value, mode: &str, b: usize, key: &str| {
        phase(row, mode, b, 1).and_then(|p| p[key].as_f64())
    };
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let _ = writeln!(
        s,
        "\nmean ms per call at concurrency 1: in-process / inside the service / at the HTTP client; \
         codec: the service's decoding and encoding + the client's decoding of the same call\n"
    );
    let _ = writeln!(
        s,
        "| backend | params | single query | batch of {batch} | codec (single) | codec (batch {batch}) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let cell = |b: usize| {
            format!(
                "{} / {} / {}",
                f(ms(r, "in-process", b, "mean_ms")),
                f(ms(r, "http", b, "server_mean_ms")),
                f(ms(r, "http", b, "mean_ms"))
            )
        };
        let codec = |b: usize| {
            r["codec_ms"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["batch"] == json!(b)))
                .map_or("-".into(), |c| {
                    format!(
                        "{} + {}",
                        f(c["service_ms"].as_f64()),
                        f(c["client_ms"].as_f64())
                    )
                })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or("?"),
            params(r),
            cell(1),
            cell(batch),
            codec(1),
            codec(batch)
        );
    }
}

fn params(row: &Value) -> String {
    row["params"].as_array().map_or(String::new(), |ps| {
        ps.iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// The CPU model, core count and load average, for the record.
pub(super) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
    });
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "load_average": load_average(),
    })
}

/// `/proc/loadavg`'s first three fields.
pub(super) fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
