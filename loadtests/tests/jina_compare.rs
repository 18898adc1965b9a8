//! `flowmesh-bench compare`'s Jina side: the loopback-only network guard refuses what it must,
//! and a tiny overhead comparison runs to completion with no error on either side.
//!
//! Needs the venv of `scripts/jina-venv.sh` (`FLOWMESH_JINA_PYTHON`, set by scripts/test.sh;
//! made here otherwise) and the service binaries next to `flowmesh-bench`
//! (`cargo build --workspace --bins`, which the test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python: `FLOWMESH_JINA_PYTHON` (set by the test command), else made now.
async fn jina_python() -> String {
    if let Ok(p) = std::env::var("FLOWMESH_JINA_PYTHON") {
        return p;
    }
    let out = tokio::process::Command::new(repo().join("scripts/jina-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run scripts/jina-venv.sh");
    assert!(out.status.success(), "scripts/jina-venv.sh failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmesh-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_guard_refuses_non_loopback_connects_and_lookups() {
    let python = jina_python().await;
    let dir = repo().join("loadtests/jina");
    // With the folder on PYTHONPATH, as the harness runs the Flow: the self-test also checks
    // that a process spawned by multiprocessing gets the guard from sitecustomize.py.
    let run = tokio::process::Command::new(&python)
        .arg(dir.join("flowmesh_netguard.py"))
        .arg("--self-test")
        .env("PYTHONPATH", &dir)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the guard's self-test took over 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = format!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "self-test failed\n{log}");
    assert!(stdout.contains("PASSED network guard self-test"), "{log}");
    for refused in [
        "socket.create_connection(('192.0.2.1', 80))",
        "socket.getaddrinfo('example.com', 80)",
        "asyncio.open_connection('example.com', 80)",
        "refused in a spawned process",
    ] {
        assert!(stdout.contains(refused), "{refused} not checked\n{log}");
    }
}

#[tokio::test]
async fn a_tiny_overhead_comparison_runs_clean_on_both_sides() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_flowmesh-bench"));
    for service in [
        "flowmesh",
        "flowmesh-encoder",
        "flowmesh-indexer",
        "flowmesh-ranker",
    ] {
        let bin = bench.with_file_name(service);
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    let python = jina_python().await;
    let out_dir = temp_dir("compare");
    let started = Instant::now();
    let run = tokio::process::Command::new(&bench)
        .args(["compare", "--workload", "overhead", "--docs", "200"])
        .args([
            "--concurrency",
            "1,4",
            "--duration-secs",
            "2",
            "--top-k",
            "5",
        ])
        .arg("--overhead-flow")
        .arg(repo().join("flows/overhead.yml"))
        .arg("--jina-python")
        .arg(&python)
        .arg("--out")
        .arg(&out_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the comparison took over 4 minutes")
        .unwrap();
    let log = format!(
        "stdout:\n{}\nstderr:\n{}\njina log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(out_dir.join("jina-overhead.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "compare failed\n{log}");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("compare.json")).unwrap())
            .unwrap();
    let table = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(table.contains("| overhead | 4 |"), "{table}");
    let rows = result["rows"].as_array().unwrap();
    // The index phase and one row per concurrency.
    assert_eq!(rows.len(), 3, "{result:#}");
    for row in rows {
        for side in ["flowmesh", "jina"] {
            assert_eq!(row[side]["errors"], 0, "{side} had errors: {row:#}");
            assert!(row[side]["requests"].as_u64().unwrap() > 0, "{row:#}");
            assert!(row[side]["per_s"].as_f64().unwrap() > 0.0, "{row:#}");
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
