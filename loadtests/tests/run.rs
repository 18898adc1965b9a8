//! `flowmesh-bench run` end to end, small: the text scenario with the hash encoder, three query
//! Flows (flat, annoy, flat again) on one indexed workspace. Needs the service binaries next
//! to `flowmesh-bench` (`cargo build --workspace --bins`, which the test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{bench, run_bounded};

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn check_png(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((img.width(), img.height()), (1000, 600));
}

#[test]
fn a_small_text_run_writes_consistent_results() {
    let exe = bench();
    let out = std::env::temp_dir().join(format!("flowmesh-bench-run-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (docs, top_k) = (120, 5);
    let ran = run_bounded(
        Command::new(exe)
            .args([
                "run",
                "--scenario",
                "text",
                "--encoder",
                "hash",
                "--dim",
                "32",
            ])
            .args([
                "--docs",
                &docs.to_string(),
                "--request-size",
                "10",
                "--queries",
                "24",
            ])
            .args(["--top-k", &top_k.to_string(), "--concurrency", "2"])
            .args(["--shards", "2", "--replicas", "2"])
            .args([
                "--indexers",
                "flat,annoy:trees=4,flat",
                "--store",
                "embedded",
            ])
            .args(["--timeout", "30s", "--build-timeout", "60s"])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(240),
    );
    assert!(ran.ok, "flowmesh-bench run failed:\n{}", ran.stderr);

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["settings"]["docs"], docs);
    let phases = results["phases"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = phases
        .iter()
        .map(|p| {
            (
                p["operation"].as_str().unwrap(),
                p["indexer"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("index", "flat"),
            ("query", "flat"),
            ("query", "annoy:trees=4"),
            ("query", "flat")
        ]
    );
    assert_eq!(phases[0]["documents"], docs, "every document indexed");
    for p in phases {
        assert_eq!(p["errors"], 0, "{p}");
        let lat = &p["latency_ms"];
        let (p50, p95, p99, max) = (
            number(&lat["p50"]),
            number(&lat["p95"]),
            number(&lat["p99"]),
            number(&lat["max"]),
        );
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{lat}");
        let series = p["per_second"].as_array().unwrap();
        let docs_in_series: u64 = series
            .iter()
            .map(|s| s["documents"].as_u64().unwrap())
            .sum();
        assert_eq!(Some(docs_in_series), p["documents"].as_u64());
        let rate = number(&p["docs_per_s"]);
        let expected = number(&p["documents"]) / number(&p["seconds"]);
        assert!((rate - expected).abs() < 1e-6 * expected.max(1.0), "{p}");
    }
    for q in &phases[1..] {
        assert_eq!(q["documents"], 24, "every query once");
        assert!(number(&q["build_seconds"]) >= 0.0);
    }
    // The first flat row is the ground truth; the second flat must find exactly its answers.
    assert!(phases[1]["recall_at_k"].is_null());
    assert_eq!(phases[3]["recall_at_k"], 1.0);
    assert_eq!(phases[3]["recall_queries"], 24);
    let annoy = number(&phases[2]["recall_at_k"]);
    assert!((0.0..=1.0).contains(&annoy), "annoy recall {annoy}");

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains(&format!("recall@{top_k}")), "{md}");
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| query |")).count(),
        3,
        "{md}"
    );
    assert!(md.contains("| index | flat | embedded |"), "{md}");
    for plot in results["plots"].as_array().unwrap() {
        check_png(&out.join(plot.as_str().unwrap()));
    }
    assert_eq!(results["plots"].as_array().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&out);
}
