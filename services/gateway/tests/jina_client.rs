//! Jina's own HTTP client (jina 3.34 from PyPI, in a venv made by `scripts/jina-venv.sh`) indexes
//! into and searches the gateway, with the real executors behind it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use support::{TestGateway, TestServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jina_client_indexes_and_searches_through_the_gateway() {
    let encoder = flowmesh_encoder::app(&flowmesh_encoder::Config::parse_from([
        "e", "--model", "hash", "--dim", "64",
    ]))
    .unwrap();
    let indexers = [
        flowmesh_indexer::app(&flowmesh_indexer::Config::parse_from(["i"])).unwrap(),
        flowmesh_indexer::app(&flowmesh_indexer::Config::parse_from(["i"])).unwrap(),
    ];
    let ranker = flowmesh_ranker::app(&flowmesh_ranker::Config::parse_from(["r"])).unwrap();
    let enc = TestServer::start(encoder).await;
    let [i0, i1] = indexers;
    let (i0, i1) = (TestServer::start(i0).await, TestServer::start(i1).await);
    let rank = TestServer::start(ranker).await;
    let gw = TestGateway::start(&format!(
        "executors:\n\
         - {{name: encoder, uses: encoder, addresses: ['{}']}}\n\
         - {{name: indexer, uses: indexer, shards: 2, addresses: [['{}'], ['{}']]}}\n\
         - {{name: ranker, uses: ranker, addresses: ['{}']}}\n",
        enc.base(),
        i0.base(),
        i1.base(),
        rank.base()
    ))
    .await;

    let python = jina_python().await;
    let script = repo().join("services/gateway/tests/jina/jina_client_check.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(gw.server.base())
        .env("JINA_OPTOUT_TELEMETRY", "1")
        // The script's switch for skipping its embedding step is for a developer's hand: a
        // test run always checks the embeddings, whatever the environment says.
        .env_remove("JINA_CHECK_SKIP_EMBEDDINGS")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the Jina client check took over 5 minutes")
        .expect("run the Jina client check");
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Jina client check failed ({})\n{log}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PASSED jina client check"),
        "{log}"
    );
}
