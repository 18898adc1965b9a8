//! `flowmesh up`: starts every process of a Flow, serves it, and stops them all on SIGTERM.
//! Needs the service binaries next to `flowmesh` (`cargo build --workspace --bins`, which the
//! test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::time::Duration;

use serde_json::json;
use support::launch::{self, flow_dir, flowmesh, metric};
use support::Http;

const FLOW: &str = "name: launched
executors:
  - {name: segmenter, uses: sentencizer}
  - {name: encoder, uses: encoder, replicas: 2, with: {model: hash, dim: 128, workers: 1}}
  - {name: indexer, uses: indexer, shards: 2}
  - {name: ranker, uses: ranker}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_the_flow_serves_it_and_stops_everything() {
    let (dir, flow) = flow_dir("up", FLOW);
    let mut launched = launch::up(&flow, &dir, &[], None).await;
    let gateway = launched.gateway.clone();
    let lines = &mut launched.lines;
    let swagger = lines.next_line().await.unwrap().unwrap();
    assert_eq!(swagger, format!("swagger ui: {gateway}/docs"));

    let http = launch::mesh_http();
    let status = http.get(&format!("{gateway}/status")).await.json();
    assert_eq!(status["ready"], true);
    assert_eq!(
        status["executors"][1]["shards"][0]
            .as_array()
            .unwrap()
            .len(),
        2,
        "2 encoder replicas"
    );
    assert_eq!(
        status["executors"][2]["shards"].as_array().unwrap().len(),
        2,
        "2 indexer shards"
    );
    let mut executor_addresses = Vec::new();
    for e in status["executors"].as_array().unwrap() {
        for shard in e["shards"].as_array().unwrap() {
            for r in shard.as_array().unwrap() {
                executor_addresses.push(r["address"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(executor_addresses.len(), 5);
    // The supervisor's view: one running process per replica, at the addresses the Flow uses.
    let processes = status["processes"].as_array().unwrap();
    let mut supervised: Vec<&str> = processes
        .iter()
        .map(|p| {
            assert_eq!(p["state"], "running", "{p}");
            assert_eq!(p["restarts"], 0, "{p}");
            assert!(p["pid"].as_u64().is_some(), "{p}");
            p["address"].as_str().unwrap()
        })
        .collect();
    supervised.sort_unstable();
    let mut expected: Vec<&str> = executor_addresses.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(supervised, expected);
    assert_eq!(processes[2]["label"], "indexer/0/0");
    assert!(
        !status.to_string().contains("FLOWMESH_WORKSPACE"),
        "no environment in /status: {status}"
    );

    let r = http
        .post(
            &format!("{gateway}/index"),
            &json!({"data": [
                {"id": "horse", "text": "A man is riding a white horse. The horse runs."},
                {"id": "pasta", "text": "She cooks pasta for dinner. It smells of garlic."},
                {"id": "rain", "text": "Rain falls on the quiet city. The streets shine."}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = http
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "riding a horse"}], "parameters": {"top_k": 2}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let answer = r.json();
    let matches = answer["data"][0]["matches"].as_array().unwrap();
    assert!(!matches.is_empty() && matches.len() <= 2, "{answer}");
    assert_eq!(matches[0]["id"], "horse");
    assert_eq!(
        matches[0]["text"],
        "A man is riding a white horse. The horse runs."
    );

    metrics_reflect_the_traffic(&http, &gateway).await;

    // SIGTERM stops the gateway and every executor process.
    launched.stop().await;
    for address in executor_addresses {
        let addr = address.trim_start_matches("http://");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{address} still serves after shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every service's `/metrics` counts what the one index and the one search above did: the
/// gateway's requests, each executor's requests (as many as the gateway says it sent that
/// replica), the encoder's batches, and the sizes of the index shards and the document store.
async fn metrics_reflect_the_traffic(http: &Http, gateway: &str) {
    let scrape = |base: String| async move {
        let r = http.get(&format!("{base}/metrics")).await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body.to_vec()).unwrap()
    };
    let text = scrape(gateway.to_owned()).await;
    for path in ["/index", "/search"] {
        let labels = [("service", "gateway"), ("path", path), ("status", "200")];
        assert_eq!(
            metric(&text, "flowmesh_http_requests_total", &labels),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "flowmesh_http_request_duration_seconds_count",
                &labels
            ),
            Some(1.0),
            "{text}"
        );
    }
    for executor in ["segmenter", "encoder", "indexer", "ranker"] {
        assert_eq!(
            metric(
                &text,
                "flowmesh_executor_duration_seconds_count",
                &[("executor", executor)]
            ),
            Some(2.0),
            "{executor}: {text}"
        );
    }
    assert!(
        metric(
            &text,
            "flowmesh_http_requests_in_flight",
            &[("service", "gateway")]
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(
        metric(&text, "flowmesh_replica_up", &[("executor", "indexer")]),
        Some(2.0),
        "{text}"
    );

    // Each replica counted exactly the calls the gateway made to it.
    let status = http.get(&format!("{gateway}/status")).await.json();
    let mut texts = std::collections::HashMap::new();
    for e in status["executors"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        for shard in e["shards"].as_array().unwrap() {
            for r in shard.as_array().unwrap() {
                let address = r["address"].as_str().unwrap().to_owned();
                let text = scrape(address.clone()).await;
                let calls = r["calls"].as_f64().unwrap();
                // Executor calls are labelled with their endpoint.
                let count = |metric_name: &str| -> f64 {
                    ["/index", "/search", "/update", "/delete"]
                        .iter()
                        .map(|path| {
                            let labels = [("path", *path), ("status", "200")];
                            metric(&text, metric_name, &labels).unwrap_or(0.0)
                        })
                        .sum()
                };
                assert_eq!(
                    count("flowmesh_http_requests_total"),
                    calls,
                    "{name} at {address}: {text}"
                );
                assert_eq!(
                    count("flowmesh_http_request_duration_seconds_count"),
                    calls,
                    "{name} at {address}: {text}"
                );
                texts
                    .entry(name.to_owned())
                    .or_insert_with(Vec::new)
                    .push(text);
            }
        }
    }
    let sum = |executor: &str, name: &str, labels: &[(&str, &str)]| -> f64 {
        texts[executor]
            .iter()
            .map(|t| metric(t, name, labels).unwrap_or(0.0))
            .sum()
    };
    // Both requests went through the encoder and the ranker; the search reached both shards.
    let calls = |executor: &str| {
        sum(
            executor,
            "flowmesh_http_requests_total",
            &[("path", "/index")],
        ) + sum(
            executor,
            "flowmesh_http_requests_total",
            &[("path", "/search")],
        )
    };
    assert_eq!(calls("encoder"), 2.0);
    assert_eq!(calls("ranker"), 2.0);
    assert!(calls("indexer") >= 3.0);
    // One index and one search: each executor's calls are labelled apart.
    for executor in ["encoder", "ranker"] {
        for path in ["/index", "/search"] {
            let labels = [("path", path)];
            assert_eq!(sum(executor, "flowmesh_http_requests_total", &labels), 1.0);
        }
    }
    assert!(sum("encoder", "flowmesh_encoder_batch_size_count", &[]) >= 2.0);
    for t in &texts["encoder"] {
        assert!(
            metric(t, "flowmesh_encoder_queue_depth", &[]).is_some(),
            "{t}"
        );
    }
    // Three documents of two sentences each: six chunk vectors over the two shards.
    assert_eq!(sum("indexer", "flowmesh_index_vectors", &[]), 6.0);
    assert_eq!(sum("indexer", "flowmesh_index_documents", &[]), 3.0);
    for (shard, t) in texts["indexer"].iter().enumerate() {
        assert!(
            metric(
                t,
                "flowmesh_index_vectors",
                &[("executor", "indexer"), ("shard", &shard.to_string())]
            )
            .is_some(),
            "shard {shard}: {t}"
        );
    }
    assert_eq!(sum("ranker", "flowmesh_store_documents", &[]), 3.0);
}

#[tokio::test]
async fn a_bad_flow_is_refused_with_the_problem_named() {
    let (dir, flow) = flow_dir(
        "bad",
        "executors:\n  - {name: a, uses: encoder}\n  - {name: b, uses: ranker, needs: [a, c]}\n",
    );
    for sub in ["validate", "up"] {
        let out = tokio::process::Command::new(flowmesh())
            .arg(sub)
            .arg(&flow)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("executor \"b\": needs \"c\", which is not an executor of this flow"),
            "{sub}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `with:` is checked against the executor's real flags before anything starts: `flowmesh
/// validate` and `flowmesh up` both name the key and the nearest valid one, and a value the
/// flag does not take.
#[tokio::test]
async fn with_settings_are_checked_against_the_executors_flags() {
    let (dir, flow) = flow_dir(
        "badwith",
        "executors:\n  - {name: enc, uses: encoder, with: {modle: onnx, threads: one, dim: 64}}\n",
    );
    for sub in ["validate", "up"] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(flowmesh())
                .arg(sub)
                .arg(&flow)
                .env("FLOWMESH_LISTEN", "127.0.0.1:0")
                .env("FLOWMESH_WORKSPACE", dir.join("ws"))
                .output(),
        )
        .await
        .expect("flowmesh gave up in time")
        .unwrap();
        assert!(!out.status.success(), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("executor \"enc\": with: `modle` is not a flag of this executor; did you mean `model`?"),
            "{sub}: {err}"
        );
        assert!(
            err.contains("executor \"enc\": with: `threads` invalid value 'one'"),
            "{sub}: {err}"
        );
        assert!(!err.contains("`dim`"), "{sub}: {err}");
        assert!(!err.contains("listening"), "{sub}: nothing started: {err}");
    }
    // A valid `with:` (Jina's `uses_with`) passes.
    std::fs::write(
        &flow,
        "version: '1'\nexecutors:\n  - {name: enc, uses: encoder, uses_with: {model: hash, threads: 2}}\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(flowmesh())
        .arg("validate")
        .arg(&flow)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An executor that fails to start fails the launch with its own last words in the error,
/// even when they come after it exited (here from a process it left behind, holding its
/// stderr for 3 s): the launcher reads its output to the end before it gives up.
#[tokio::test]
async fn an_executor_that_fails_to_start_stops_the_launch_with_its_last_lines() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, flow) = flow_dir("laststart", "executors:\n  - {name: enc, uses: encoder}\n");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("flowmesh-encoder");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         echo 'error: unexpected argument found' >&2\n\
         (exec 1>&-; sleep 3; echo 'the last words, late' >&2) &\n\
         exit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(flowmesh())
            .arg("up")
            .arg(&flow)
            .args(["--listen", "127.0.0.1:0", "--bin-dir"])
            .arg(&bin)
            .arg("--workspace")
            .arg(dir.join("ws"))
            .output(),
    )
    .await
    .expect("flowmesh up gave up in time")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(err.contains("enc/0/0"), "{err}");
    assert!(err.contains("before listening"), "{err}");
    // The error itself (after `flowmesh:`) repeats them.
    let error = &err[err.find("flowmesh: ").expect("an error line")..];
    assert!(
        error.contains("error: unexpected argument found"),
        "the executor's own message is in the error: {err}"
    );
    assert!(
        error.contains("the last words, late"),
        "output that came after the exit is read to the end: {err}\n(last line: {last})"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
