//! Jina's own gRPC client (jina 3.34, its default protocol, in the venv made by
//! `scripts/jina-venv.sh`) against the gateway's gRPC endpoint, with the real executors behind
//! it: readiness, `jina ping flow`, index with `request_size` and `return_responses`, search with
//! matches read back through docarray schemas, an unknown endpoint passing documents through, API
//! keys and TLS. The checks are in `tests/jina/jina_grpc_check.py`.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowmesh_gateway::auth::ApiKeys;
use flowmesh_gateway::{AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::testing::pki::TestCa;
use flowmesh_shared::tls::ServerTlsArgs;
use flowmesh_shared::Limits;
use support::jina::{jina_python, repo};
use support::HashExecutors;
use tokio::net::TcpListener;

/// A key made by the test.
fn new_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What a run of the check has: the gateway's keys and, for TLS, the CA file to trust.
#[derive(Default)]
struct Setup {
    key: Option<String>,
    read_only_key: Option<String>,
    tls: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jina_grpc_client_indexes_and_searches() {
    run_check(Setup::default()).await;
}

/// With keys: every call with the read-write key works, calls without a key or with a wrong one
/// fail with UNAUTHENTICATED, and the read-only key searches but is refused /index with
/// PERMISSION_DENIED; `dry_run` (and so `jina ping`) stays open, as `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jina_grpc_client_sends_api_keys() {
    run_check(Setup {
        key: Some(new_key()),
        read_only_key: Some(new_key()),
        tls: false,
    })
    .await;
}

/// Over TLS with the gateway's certificate (`grpcs://`), trusted through a test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jina_grpc_client_over_tls() {
    run_check(Setup {
        tls: true,
        ..Setup::default()
    })
    .await;
}

async fn run_check(setup: Setup) {
    let executors = HashExecutors::start().await;
    let yaml = executors.flow_yaml();
    let spec = FlowSpec::from_yaml(&yaml).unwrap();
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    let secrets = |key: &Option<String>| {
        key.as_ref()
            .map(|k| SecretSet::new(vec![Secret::new(k.clone())]))
    };
    let keys = if setup.key.is_some() || setup.read_only_key.is_some() {
        ApiKeys::new(secrets(&setup.key), secrets(&setup.read_only_key))
    } else {
        ApiKeys::none()
    };
    let state =
        AppState::new(Arc::clone(&flow), Limits::with_max_body_bytes(1 << 20)).with_api_keys(keys);

    let dir = support::launch::temp_dir(&format!("jina-grpc-{}", uuid::Uuid::new_v4().simple()));
    let (tls, ca_file) = if setup.tls {
        let ca = TestCa::new("flowmesh grpc test CA");
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]).write(&dir, "gateway");
        let args = ServerTlsArgs {
            tls_cert: Some(cert),
            tls_key: Some(key),
            tls_client_ca: None,
        };
        (args.server_config().unwrap(), Some(ca.write(&dir, "ca")))
    } else {
        (None, None)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flowmesh_gateway::grpc::serve(
        listener,
        state,
        tls,
        async move {
            let _ = stopped.await;
        },
    ));

    // The executors' first health checks: the check asks `dry_run` first and wants SUCCESS.
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while !flow.is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the Flow did not become ready");

    let scheme = if setup.tls { "grpcs" } else { "grpc" };
    let python = jina_python().await;
    let script = repo().join("services/gateway/tests/jina/jina_grpc_check.py");
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(&script)
        .arg(format!("{scheme}://{addr}"))
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env_remove("JINA_CHECK_API_KEY")
        .env_remove("JINA_CHECK_READONLY_KEY")
        .env_remove("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
        .kill_on_drop(true);
    if let Some(key) = &setup.key {
        command.env("JINA_CHECK_API_KEY", key);
    }
    if let Some(key) = &setup.read_only_key {
        command.env("JINA_CHECK_READONLY_KEY", key);
    }
    if let Some(ca) = &ca_file {
        // grpcio's default trust store, replaced by the test CA alone.
        command.env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the Jina gRPC check took over 5 minutes")
        .expect("run the Jina gRPC check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = format!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Jina gRPC check failed ({})\n{log}",
        out.status
    );
    assert!(stdout.contains("PASSED jina grpc check"), "{log}");
    // What was checked, for `--nocapture`.
    println!("{stdout}");
    for key in [&setup.key, &setup.read_only_key].into_iter().flatten() {
        assert!(!stdout.contains(key.as_str()), "a key was printed\n{log}");
    }

    // The server stops when asked.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the gRPC server did not stop")
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Flow's `with: grpc_listen` is an address; anything else is refused with the file.
#[test]
fn flow_files_name_the_grpc_address() {
    let flow = |with: &str| {
        FlowSpec::from_yaml(&format!(
            "with: {{{with}}}\nexecutors:\n- {{name: encoder, uses: encoder, addresses: ['http://127.0.0.1:9']}}\n"
        ))
    };
    let spec = flow("grpc_listen: '127.0.0.1:54321'").unwrap();
    assert_eq!(
        spec.settings.grpc_listen,
        Some("127.0.0.1:54321".parse().unwrap())
    );
    assert_eq!(flow("").unwrap().settings.grpc_listen, None);
    assert!(flow("grpc_listen: 'localhost'").is_err());
}
