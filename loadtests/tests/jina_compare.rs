//! `flowmesh-bench compare`'s Jina side: the loopback-only network guard refuses what it must,
//! and a tiny overhead comparison, over HTTP and over gRPC, runs to completion with no error on
//! either side.
//!
//! Needs the venv of `scripts/jina-venv.sh` (`FLOWMESH_JINA_PYTHON`, set by scripts/test.sh;
//! made here otherwise) and the service binaries next to `flowmesh-bench`
//! (`cargo build --workspace --bins`, which the test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{bench, jina_python, repo_root, run_bounded, temp_dir};

#[test]
fn the_guard_refuses_non_loopback_connects_and_lookups() {
    let python = jina_python();
    let dir = repo_root().join("loadtests/jina");
    // With the folder on PYTHONPATH, as the harness runs the Flow: the self-test also checks
    // that a process spawned by multiprocessing gets the guard from sitecustomize.py.
    let ran = run_bounded(
        Command::new(&python)
            .arg(dir.join("flowmesh_netguard.py"))
            .arg("--self-test")
            .env("PYTHONPATH", &dir)
            .env("JINA_OPTOUT_TELEMETRY", "1"),
        Duration::from_secs(120),
    );
    let log = format!("stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    assert!(ran.ok, "self-test failed or took over 2 minutes\n{log}");
    assert!(
        ran.stdout.contains("PASSED network guard self-test"),
        "{log}"
    );
    for refused in [
        "socket.create_connection(('192.0.2.1', 80))",
        "socket.getaddrinfo('example.com', 80)",
        "asyncio.open_connection('example.com', 80)",
        "refused in a spawned process",
    ] {
        assert!(ran.stdout.contains(refused), "{refused} not checked\n{log}");
    }
}

#[test]
fn a_tiny_overhead_comparison_runs_clean_on_both_sides() {
    let bench = bench();
    let python = jina_python();
    let out_dir = temp_dir("compare");
    let started = Instant::now();
    let ran = run_bounded(
        Command::new(&bench)
            .args(["compare", "--workload", "overhead,grpc", "--docs", "200"])
            .args([
                "--concurrency",
                "1,4",
                "--duration-secs",
                "2",
                "--top-k",
                "5",
            ])
            .arg("--overhead-flow")
            .arg(repo_root().join("flows/overhead.yml"))
            .arg("--jina-python")
            .arg(&python)
            .arg("--out")
            .arg(&out_dir),
        Duration::from_secs(420),
    );
    let mut log = format!("stdout:\n{}\nstderr:\n{}", ran.stdout, ran.stderr);
    for name in ["overhead", "grpc"] {
        let jina_log =
            std::fs::read_to_string(out_dir.join(format!("jina-{name}.log"))).unwrap_or_default();
        let tail: Vec<&str> = jina_log.lines().rev().take(40).collect();
        log.push_str(&format!("\njina {name} log: {}", tail.join("\n")));
    }
    assert!(ran.ok, "compare failed or took over 7 minutes\n{log}");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("compare.json")).unwrap())
            .unwrap();
    let table = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(table.contains("| overhead | 4 |"), "{table}");
    assert!(table.contains("| grpc: search | 4 |"), "{table}");
    let rows = result["rows"].as_array().unwrap();
    // The index phase and one row per concurrency; then per concurrency a gRPC row and an
    // HTTP row of the Flows serving both.
    assert_eq!(rows.len(), 7, "{result:#}");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "grpc: search").count(),
        2,
        "{names:?}"
    );
    let ratios = result["grpc_over_http"].as_array().unwrap();
    assert_eq!(ratios.len(), 2, "{result:#}");
    for row in rows {
        for side in ["flowmesh", "jina"] {
            assert_eq!(row[side]["errors"], 0, "{side} had errors: {row:#}");
            assert!(row[side]["requests"].as_u64().unwrap() > 0, "{row:#}");
            assert!(row[side]["per_s"].as_f64().unwrap() > 0.0, "{row:#}");
            // Two seconds of searches: each side's processes did the work, so they used CPU
            // (more than /proc's 10 ms tick), and so did the load generator. The index phase
            // (two requests) may take less than a tick.
            if row["workload"] != "overhead: index" {
                let cpu = &row[side]["cpu_ms_per_unit"];
                let service = row[side]["service_cpu_ms_per_unit"].as_f64().unwrap();
                assert!(service > 0.0, "{side}: {cpu}");
                assert!(cpu["load generator"].as_f64().unwrap() > 0.0, "{cpu}");
            }
        }
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row:#}");
    }
    assert_eq!(result["network_guard_refusals"], serde_json::json!([]));
    eprintln!(
        "tiny comparison took {:.1} s:\n{table}",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}
