//! Jina's own HTTP client (jina 3.34 from PyPI, in a venv made by `scripts/jina-venv.sh`) indexes
//! into and searches the gateway, with the real executors behind it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use flowmesh_gateway::auth::ApiKeys;
use flowmesh_shared::secret::{Secret, SecretSet};
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
    run_check(None).await;
}

/// The same with API keys on the gateway: Jina's client sends the key with `headers=`
/// (`api-key`), every call succeeds, and a call without it is refused with a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jina_client_sends_an_api_key() {
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    run_check(Some(&key)).await;
}

/// Runs the check script against a gateway over real executors, with `api_key` as the
/// gateway's only (read-write) key when given.
async fn run_check(api_key: Option<&str>) {
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
    let yaml = format!(
        "executors:\n\
         - {{name: encoder, uses: encoder, addresses: ['{}']}}\n\
         - {{name: indexer, uses: indexer, shards: 2, addresses: [['{}'], ['{}']]}}\n\
         - {{name: ranker, uses: ranker, addresses: ['{}']}}\n",
        enc.base(),
        i0.base(),
        i1.base(),
        rank.base()
    );
    let keys = match api_key {
        Some(key) => ApiKeys::new(Some(SecretSet::new(vec![Secret::new(key)])), None),
        None => ApiKeys::none(),
    };
    let gw = TestGateway::start_with_keys(&yaml, keys).await;

    let python = jina_python().await;
    let script = repo().join("services/gateway/tests/jina/jina_client_check.py");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .arg(gw.server.base())
        .env("JINA_OPTOUT_TELEMETRY", "1")
        // The script's switch for skipping its embedding step is for a developer's hand: a
        // test run always checks the embeddings, whatever the environment says.
        .env_remove("JINA_CHECK_SKIP_EMBEDDINGS")
        .env_remove("JINA_CHECK_API_KEY")
        .kill_on_drop(true);
    if let Some(key) = api_key {
        command.env("JINA_CHECK_API_KEY", key);
    }
    let run = command.output();
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
