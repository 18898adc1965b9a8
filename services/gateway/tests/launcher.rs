//! `flowmesh up`: starts every process of a Flow, serves it, and stops them all on SIGTERM.
//! Needs the service binaries next to `flowmesh` (`cargo build --workspace --bins`, which the
//! test command runs first).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::Http;
use tokio::io::{AsyncBufReadExt, BufReader};

fn flowmesh() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_flowmesh"));
    for service in ["flowmesh-encoder", "flowmesh-indexer", "flowmesh-ranker"] {
        let bin = exe.with_file_name(service);
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    exe
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmesh-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const FLOW: &str = "name: launched
executors:
  - {name: segmenter, uses: sentencizer}
  - {name: encoder, uses: encoder, replicas: 2, with: {model: hash, dim: 128}}
  - {name: indexer, uses: indexer, shards: 2}
  - {name: ranker, uses: ranker}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_the_flow_serves_it_and_stops_everything() {
    let dir = temp_dir("up");
    let flow = dir.join("flow.yml");
    std::fs::write(&flow, FLOW).unwrap();
    let mut child = tokio::process::Command::new(flowmesh())
        .arg("up")
        .arg(&flow)
        .args(["--listen", "127.0.0.1:0", "--workspace"])
        .arg(dir.join("ws"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let gateway = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push(line.clone());
            if let Some(url) = line.strip_prefix("gateway: ") {
                return url.to_owned();
            }
        }
        panic!("flowmesh up exited early: {printed:?}");
    })
    .await
    .expect("flowmesh up did not print its gateway address in 60 s");
    let swagger = lines.next_line().await.unwrap().unwrap();
    assert_eq!(swagger, format!("swagger ui: {gateway}/docs"));

    let http = Http::new();
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

    // SIGTERM stops the gateway and every executor process.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stopped in time")
        .unwrap();
    assert!(status.success(), "{status}");
    for address in executor_addresses {
        let addr = address.trim_start_matches("http://");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{address} still serves after shutdown"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_flow_is_refused_with_the_problem_named() {
    let dir = temp_dir("bad");
    let flow = dir.join("bad.yml");
    std::fs::write(
        &flow,
        "executors:\n  - {name: a, uses: encoder}\n  - {name: b, uses: ranker, needs: [a, c]}\n",
    )
    .unwrap();
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

#[tokio::test]
async fn an_executor_that_fails_to_start_stops_the_launch_with_a_clear_error() {
    let dir = temp_dir("badflag");
    let flow = dir.join("flow.yml");
    std::fs::write(
        &flow,
        "executors:\n  - {name: enc, uses: encoder, with: {no_such_flag: 1}}\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(flowmesh())
            .arg("up")
            .arg(&flow)
            .args(["--listen", "127.0.0.1:0", "--workspace"])
            .arg(dir.join("ws"))
            .output(),
    )
    .await
    .expect("flowmesh up gave up in time")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enc/0/0"), "{err}");
    assert!(err.contains("before listening"), "{err}");
    assert!(
        err.contains("no-such-flag"),
        "the executor's own message is shown: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
