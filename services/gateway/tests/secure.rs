//! A secured mesh started by `flowmesh up`, with the real binaries: the executors refuse calls
//! without the mesh token, no secret appears in any log line, answer, metric or exported span,
//! TLS end to end with a test CA, and an executor with a certificate from another CA is
//! refused. Needs the service binaries next to `flowmesh` (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use flowmesh_shared::testing::pki::TestCa;
use support::launch::{self, flow_dir};
use support::{Http, HttpResponse, TestServer};

const FLOW: &str = "name: secured
executors:
  - {name: segmenter, uses: sentencizer}
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer}
  - {name: ranker, uses: ranker, with: {store: memory}}
";

/// A secret made for this run (32 random hex digits after a prefix).
fn new_secret(kind: &str) -> String {
    format!("{kind}-{}", uuid::Uuid::new_v4().simple())
}

/// Every OTLP export request received, decoded (its `Debug` text) and raw.
type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn traces_receive(State(inbox): State<Inbox>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf body");
    inbox
        .lock()
        .unwrap()
        .push((format!("{request:?}"), body.to_vec()));
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// A request each executor answers with 200 on `endpoint` (given the right credential).
fn executor_body(executor: &str, endpoint: &str) -> Value {
    let embedding = vec![0.1_f32; 64];
    match (executor, endpoint) {
        ("indexer", "index") => json!({"data": [{"id": "probe", "embedding": embedding}]}),
        ("indexer", "search") => json!({"data": [{"id": "q", "embedding": embedding}]}),
        ("ranker", "search") => json!({"data": [{"id": "q", "matches": []}]}),
        (_, "delete") => json!({"data": [{"id": "probe"}]}),
        _ => json!({"data": [{"id": "probe", "text": "a probe"}]}),
    }
}

/// The pids of `flowmesh up`'s children.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[(&str, &str)]) {
    for (name, value) in secrets {
        assert!(
            !text.contains(value),
            "the {name} appears in {what}:\n{}",
            text.lines()
                .filter(|l| l.contains(value))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn text(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_need_the_mesh_token_and_no_secret_leaks_anywhere() {
    let inbox = Inbox::default();
    let collector = TestServer::start(
        Router::new()
            .route("/v1/traces", post(traces_receive))
            .with_state(inbox.clone()),
    )
    .await;
    let token = new_secret("mesh");
    let rw = new_secret("rw");
    let ro = new_secret("ro");
    let (dir, flow) = flow_dir("secured", FLOW);
    let log = dir.join("flowmesh.log");
    let env = [
        ("FLOWMESH_MESH_TOKEN", token.clone()),
        ("FLOWMESH_API_KEY", rw.clone()),
        ("FLOWMESH_READ_ONLY_API_KEY", ro.clone()),
        ("RUST_LOG", "debug".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ("OTEL_SERVICE_NAME", String::new()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", String::new()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", String::new()),
    ];
    let mut launched = launch::up(
        &flow,
        &dir,
        &env,
        Some(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let gateway = launched.gateway.clone();
    let writer = Http::new().with_header("authorization", &format!("Bearer {rw}"));
    let reader = Http::new().with_header("api-key", &ro);
    let anonymous = Http::new();
    let mesh = Http::new().with_header("authorization", &format!("Bearer {token}"));

    // Through the gateway: a write with the read-write key, a search with the read-only key,
    // and one 401.
    let r = writer
        .post(
            &format!("{gateway}/index"),
            &json!({"data": [
                {"id": "horse", "text": "A man rides a white horse. The horse runs."},
                {"id": "rain", "text": "Rain falls on the city. The streets shine."}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = reader
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "a white horse"}], "parameters": {"top_k": 1}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["data"][0]["matches"][0]["id"], "horse");
    let r = anonymous.get(&format!("{gateway}/status")).await;
    assert_eq!(r.status, 401);
    let r = reader
        .post(
            &format!("{gateway}/delete"),
            &json!({"data": [{"id": "rain"}]}),
        )
        .await;
    assert_eq!(r.status, 403);

    let status_response = reader.get(&format!("{gateway}/status")).await;
    assert_eq!(status_response.status, 200);
    let status = status_response.json();
    let executors = support::executor_addresses(&status, "name");
    assert_eq!(executors.len(), 3, "{status}");

    // Straight to each executor: without the token 401, with a wrong one 401, with it 200;
    // its probes stay open.
    let mut scraped = Vec::new();
    for (name, base) in &executors {
        for endpoint in ["index", "search", "delete"] {
            let url = format!("{base}/{endpoint}");
            let body = executor_body(name, endpoint);
            let r = anonymous.post(&url, &body).await;
            assert_eq!(
                r.status,
                401,
                "{name} /{endpoint} without the token: {}",
                text(&r)
            );
            assert_eq!(r.json()["kind"], "unauthorized");
            assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"flowmesh\"");
            // The gateway's API key is no mesh credential.
            let r = writer.post(&url, &body).await;
            assert_eq!(
                r.status,
                401,
                "{name} /{endpoint} with an API key: {}",
                text(&r)
            );
            let r = mesh.post(&url, &body).await;
            assert_eq!(
                r.status,
                200,
                "{name} /{endpoint} with the token: {}",
                text(&r)
            );
        }
        assert_eq!(anonymous.get(&format!("{base}/metrics")).await.status, 401);
        assert_eq!(anonymous.get(&format!("{base}/readyz")).await.status, 200);
        assert_eq!(anonymous.get(&format!("{base}/livez")).await.status, 200);
        let r = mesh.get(&format!("{base}/metrics")).await;
        assert_eq!(r.status, 200);
        scraped.push((format!("{name} /metrics"), text(&r)));
    }
    let r = reader.get(&format!("{gateway}/metrics")).await;
    assert_eq!(r.status, 200);
    scraped.push(("the gateway's /metrics".to_owned(), text(&r)));
    scraped.push(("/status".to_owned(), status.to_string()));

    // The token reaches every executor in its environment, never on its command line; the API
    // keys do not reach them at all.
    let pids = children(launched.child.id().unwrap());
    assert_eq!(pids.len(), 3);
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert_no_secret(
            &format!("the command line {cmdline}"),
            &cmdline,
            &[("mesh token", &token)],
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ).into_owned();
        assert!(
            environ
                .split('\0')
                .any(|v| v == format!("FLOWMESH_MESH_TOKEN={token}")),
            "{cmdline}: no FLOWMESH_MESH_TOKEN in its environment"
        );
        assert_no_secret(
            &format!("the environment of {cmdline}"),
            &environ,
            &[("read-write key", &rw), ("read-only key", &ro)],
        );
    }

    launched.stop().await;
    let mut stdout = launched.printed.join("\n");
    while let Ok(Some(line)) = launched.lines.next_line().await {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let secrets = [
        ("mesh token", token.as_str()),
        ("read-write key", rw.as_str()),
        ("read-only key", ro.as_str()),
    ];
    assert!(log.lines().count() > 20, "debug logs were written: {log}");
    assert_no_secret("the logs", &log, &secrets);
    assert_no_secret("stdout", &stdout, &secrets);
    for (what, text) in &scraped {
        assert_no_secret(what, text, &secrets);
    }
    let exports = inbox.lock().unwrap().clone();
    assert!(!exports.is_empty(), "spans were exported");
    let all_spans: String = exports.iter().map(|(d, _)| d.as_str()).collect();
    assert!(all_spans.contains("POST /search"), "{all_spans}");
    assert_no_secret("the exported spans", &all_spans, &secrets);
    for (_, raw) in &exports {
        for (name, value) in &secrets {
            assert!(
                !raw.windows(value.len()).any(|w| w == value.as_bytes()),
                "the {name} is in an OTLP export"
            );
        }
    }

    // The write is audited once, under the key's name; the refused delete too.
    let digest = sha2::Sha256::digest(rw.as_bytes());
    let rw_name: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let audits: Vec<&str> = log.lines().filter(|l| l.contains("audit: write")).collect();
    let index_lines: Vec<&&str> = audits
        .iter()
        .filter(|l| l.contains("endpoint=\"/index\"") || l.contains("endpoint=/index"))
        .collect();
    assert_eq!(index_lines.len(), 1, "{audits:#?}");
    assert!(
        index_lines[0].contains(&format!("read-write/{rw_name}")),
        "{}",
        index_lines[0]
    );
    assert!(index_lines[0].contains("docs=2"), "{}", index_lines[0]);
    assert!(
        audits
            .iter()
            .any(|l| l.contains("/delete") && l.contains("status=403")),
        "{audits:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_makes_a_mesh_token_when_none_is_given() {
    let (dir, flow) = flow_dir(
        "generated-token",
        "executors:\n  - {name: encoder, uses: encoder, with: {model: hash, dim: 16}}\n",
    );
    let mut launched =
        launch::up(&flow, &dir, &[("FLOWMESH_MESH_TOKEN", String::new())], None).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let status = http.get(&format!("{gateway}/status")).await.json();
    let (_, encoder) = support::executor_addresses(&status, "name").remove(0);
    let r = http
        .post(
            &format!("{encoder}/index"),
            &json!({"data": [{"text": "x"}]}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", text(&r));
    // The gateway has it: its calls go through.
    let r = http
        .post(
            &format!("{gateway}/index"),
            &json!({"data": [{"text": "x"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // 32 random bytes in hex, in the executor's environment.
    let pid = children(launched.child.id().unwrap())[0];
    let environ =
        String::from_utf8(std::fs::read(format!("/proc/{pid}/environ")).unwrap()).unwrap();
    let token = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("FLOWMESH_MESH_TOKEN="))
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let r = http
        .send_with(
            "POST",
            &format!("{encoder}/index"),
            "application/json",
            &[("authorization", &format!("Bearer {token}"))],
            r#"{"data": [{"text": "x"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain-HTTP request to `base` (an https:// URL) gets no HTTP answer.
async fn plain_http_fails(base: &str) {
    let addr = base.trim_start_matches("https://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{base} answered plain HTTP: {}",
        String::from_utf8_lossy(&answer)
    );
    let via_client = Http::new()
        .try_send("GET", &format!("http://{addr}/livez"), &[], "")
        .await;
    assert!(
        via_client.is_err(),
        "{base}: {:?}",
        via_client.map(|r| r.status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_and_an_executor_of_another_ca_is_refused() {
    let (dir, flow) = flow_dir("tls", FLOW);
    let ca = TestCa::new("flowmesh test CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]).write(&dir, "mesh");
    // Without --tls-ca, flowmesh up does not start: it could not verify its executors.
    let out = tokio::process::Command::new(launch::flowmesh())
        .arg("up")
        .arg(&flow)
        .args(["--listen", "127.0.0.1:0", "--workspace"])
        .arg(dir.join("ws-no-ca"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("FLOWMESH_TLS_CA")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-ca"), "{err}");

    let env = [
        ("FLOWMESH_TLS_CERT", cert.display().to_string()),
        ("FLOWMESH_TLS_KEY", key.display().to_string()),
        ("FLOWMESH_TLS_CA", ca_path.display().to_string()),
    ];
    let mut launched = launch::up(&flow, &dir, &env, None).await;
    let gateway = launched.gateway.clone();
    assert!(gateway.starts_with("https://127.0.0.1:"), "{gateway}");
    let swagger = launched.lines.next_line().await.unwrap().unwrap();
    assert_eq!(swagger, format!("swagger ui: {gateway}/docs"));
    let http = Http::trusting(&ca_path);
    let r = http
        .post(
            &format!("{gateway}/index"),
            &json!({"data": [{"id": "horse", "text": "A man rides a white horse."}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = http
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "a white horse"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["data"][0]["matches"][0]["id"], "horse");
    let status = http.get(&format!("{gateway}/status")).await.json();
    let executors = support::executor_addresses(&status, "name");
    assert_eq!(executors.len(), 3);
    for (name, base) in &executors {
        assert!(base.starts_with("https://127.0.0.1:"), "{name}: {base}");
        plain_http_fails(base).await;
    }
    plain_http_fails(&gateway).await;
    // A client that does not trust the CA is refused.
    let other = TestCa::new("another CA");
    let other_path = other.write(&dir, "other-ca");
    let r = Http::trusting(&other_path)
        .try_send("GET", &format!("{gateway}/livez"), &[], "")
        .await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    launched.stop().await;

    // An indexer serving a certificate of another CA, named by its https:// address: the
    // gateway (verifying with the test CA) finds it unhealthy and searches fail clearly.
    let (rogue_cert, rogue_key) = other
        .issue(&["localhost", "127.0.0.1"])
        .write(&dir, "rogue");
    let mut rogue =
        tokio::process::Command::new(launch::flowmesh().with_file_name("flowmesh-indexer"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&rogue_cert)
            .arg("--tls-key")
            .arg(&rogue_key)
            .env("FLOWMESH_WORKSPACE", dir.join("rogue-ws"))
            .env_remove("FLOWMESH_MESH_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(rogue.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let rogue_base = line
        .split_once("listening on ")
        .map(|(_, a)| a.trim().to_owned())
        .unwrap();
    assert!(rogue_base.starts_with("https://"), "{line}");
    let gateway_flow = dir.join("rogue.yml");
    std::fs::write(
        &gateway_flow,
        format!(
            "name: rogue\nwith: {{health_interval_ms: 100}}\nexecutors:\n  - {{name: indexer, uses: remote, addresses: ['{rogue_base}']}}\n"
        ),
    )
    .unwrap();
    let mut gateway_process =
        tokio::process::Command::new(launch::flowmesh().with_file_name("flowmesh-gateway"))
            .arg("--flow")
            .arg(&gateway_flow)
            .args(["--listen", "127.0.0.1:0", "--tls-ca"])
            .arg(&ca_path)
            .env_remove("FLOWMESH_TLS_CERT")
            .env_remove("FLOWMESH_TLS_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(gateway_process.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let base = line
        .split_once("listening on ")
        .map(|(_, a)| a.trim().to_owned())
        .unwrap();
    let http = Http::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = http.get(&format!("{base}/status")).await.json();
        let replica = &status["executors"][0]["shards"][0][0];
        if replica["healthy"] == false || replica["up"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still healthy: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http.get(&format!("{base}/readyz")).await.status, 503);
    let r = http
        .post(
            &format!("{base}/search"),
            &json!({"data": [{"embedding": vec![0.1_f32; 8]}]}),
        )
        .await;
    assert_eq!(r.status, 503, "{}", text(&r));
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("indexer"), "{error}");
    let _ = gateway_process.kill().await;
    let _ = rogue.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
