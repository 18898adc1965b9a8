//! `flowmesh-bench abuse` end to end, small: the overhead Flow (hash encoder), two rounds of a
//! few seconds. Needs the service binaries next to `flowmesh-bench` (`cargo build --workspace
//! --bins`, which the test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{bench, repo_root, run_bounded};

/// `{kind: {label: n}}` of a tally.
fn by_kind(tally: &Value) -> BTreeMap<String, BTreeMap<String, u64>> {
    serde_json::from_value(tally["by_kind"].clone()).unwrap()
}

fn total(counts: &BTreeMap<String, BTreeMap<String, u64>>) -> u64 {
    counts.values().flat_map(BTreeMap::values).sum()
}

#[test]
fn a_small_abuse_run_counts_every_request_and_connection() {
    let exe = bench();
    let out =
        std::env::temp_dir().join(format!("flowmesh-bench-abuse-{}.json", std::process::id()));
    let (rounds, slowloris, idle) = (2, 3, 10);
    let ran = run_bounded(
        Command::new(exe)
            .current_dir(repo_root())
            .args(["abuse", "--flow", "flows/overhead.yml", "--docs", "100"])
            .args(["--clients", "2", "--abusers", "2", "--duration-secs", "3"])
            .args(["--rounds", &rounds.to_string()])
            .args(["--slowloris", &slowloris.to_string()])
            .args(["--idle", &idle.to_string()])
            .args(["--abusive-timeout-secs", "20", "--top-k", "5"])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(120),
    );
    assert!(ran.ok, "flowmesh-bench abuse failed:\n{}", ran.stderr);
    let stdout = ran.stdout;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);

    let rows = report["rounds"].as_array().unwrap();
    assert_eq!(rows.len(), rounds);
    let mut per_round_sum = 0;
    for r in rows {
        for phase in ["calm", "abused"] {
            let p = &r[phase];
            assert!(p["ok"].as_u64().unwrap() > 0, "{phase}: {p}");
            let (p50, p99) = (p["p50_ms"].as_f64().unwrap(), p["p99_ms"].as_f64().unwrap());
            assert!(0.0 < p50 && p50 <= p99, "{p}");
        }
        assert_eq!(r["calm"]["errors"], 0, "{}", r["calm"]);
        let ratio = r["abused"]["p99_ms"].as_f64().unwrap() / r["calm"]["p99_ms"].as_f64().unwrap();
        assert!((r["p99_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
        let requests = by_kind(&r["abusive_requests"]);
        assert_eq!(
            total(&requests),
            r["abusive_requests"]["total"].as_u64().unwrap()
        );
        per_round_sum += total(&requests);
        // One 5 MB text per round, no more, whatever it got.
        assert_eq!(
            requests["huge-text"].values().sum::<u64>(),
            1,
            "{requests:?}"
        );
        // Held connections: every one counted, once, each round.
        let conns = by_kind(&r["abusive_connections"]);
        assert_eq!(conns["slowloris"].values().sum::<u64>(), slowloris);
        assert_eq!(conns["idle"].values().sum::<u64>(), idle);
        assert_eq!(r["alive_after"]["all_alive"], true, "{}", r["alive_after"]);
    }
    let all = by_kind(&report["abusive_requests"]);
    assert_eq!(total(&all), per_round_sum, "the summary merges the rounds");
    // What the current limits already answer (the scaffolding's top_k limit, strict decoding):
    // each of these was sent and got nothing but 400.
    for kind in [
        "top-k-1e12",
        "top-k-1e9",
        "malformed-json",
        "msgpack-length-header",
    ] {
        let outcomes = &all[kind];
        assert!(
            outcomes["400"] > 0 && outcomes.len() == 1,
            "{kind}: {outcomes:?}"
        );
    }
    assert_eq!(report["alive_at_end"]["all_alive"], true);
    assert!(
        stdout.contains("| round | phase | requests | QPS | p50 ms | p99 ms |"),
        "{stdout}"
    );
    assert!(stdout.contains("| median | abused |"), "{stdout}");
}
