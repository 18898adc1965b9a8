//! Jina's own HTTP client (jina 3.34 from PyPI, in a venv made by `scripts/jina-venv.sh`) indexes
//! into and searches the gateway, with the real executors behind it; asks whether the Flow is
//! ready (`is_flow_ready`, `dry_run`, and `jina ping flow http://...` from the venv's `jina`),
//! and posts to an endpoint no executor serves. Then one executor goes away, and the client
//! and `jina ping` say that the Flow is not ready.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::time::Duration;

use flowmesh_gateway::auth::ApiKeys;
use flowmesh_shared::secret::{Secret, SecretSet};
use support::jina::{jina_python, repo};
use support::{HashExecutors, TestGateway};

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
    let executors = HashExecutors::start().await;
    let yaml = executors.flow_yaml();
    let keys = match api_key {
        Some(key) => ApiKeys::new(Some(SecretSet::new(vec![Secret::new(key)])), None),
        None => ApiKeys::none(),
    };
    let gw = TestGateway::start_with_keys(&yaml, keys).await;

    let python = jina_python().await;
    let base = gw.server.base();
    check_script(&python, &base, api_key, false).await;
    // `jina ping flow` sends no API key: readiness needs none.
    jina_ping(&python, &base, true).await;

    // The ranker goes away: once the gateway's health checks see it, the Flow is not ready.
    executors.ranker.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let http = support::Http::new();
        if http.get(&gw.url("/readyz")).await.status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never saw the ranker go"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_script(&python, &base, api_key, true).await;
    jina_ping(&python, &base, false).await;
}

/// `jina ping flow BASE` with the venv's `jina`: exits 0 when the Flow is ready, else 1.
async fn jina_ping(python: &str, base: &str, ready: bool) {
    let jina = PathBuf::from(python).with_file_name("jina");
    let run = tokio::process::Command::new(&jina)
        .args(["ping", "flow", base, "--timeout", "10000"])
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("JINA_DISABLE_UVLOOP", "1")
        .env("JINA_LOG_LEVEL", "DEBUG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("jina ping took over 2 minutes")
        .unwrap_or_else(|e| panic!("run {}: {e}", jina.display()));
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.success(),
        ready,
        "jina ping flow {base}: {} (the Flow is {}ready)\n{log}",
        out.status,
        if ready { "" } else { "not " }
    );
    if !ready {
        assert!(log.contains("not responding"), "{log}");
    }
}

/// Runs the check script against the gateway at `base`; with `not_ready`, only its check that
/// the client sees a Flow that is not ready.
async fn check_script(python: &str, base: &str, api_key: Option<&str>, not_ready: bool) {
    let script = repo().join("services/gateway/tests/jina/jina_client_check.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(&script)
        .arg(base)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        // The script's switch for skipping its embedding step is for a developer's hand: a
        // test run always checks the embeddings, whatever the environment says.
        .env_remove("JINA_CHECK_SKIP_EMBEDDINGS")
        .env_remove("JINA_CHECK_API_KEY")
        .env_remove("JINA_CHECK_EXPECT_NOT_READY")
        .kill_on_drop(true);
    if let Some(key) = api_key {
        command.env("JINA_CHECK_API_KEY", key);
    }
    if not_ready {
        command.env("JINA_CHECK_EXPECT_NOT_READY", "1");
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
