//! `flowmesh index` and `flowmesh search`, the built binary, against a gateway over real
//! executors (hash encoder, two indexer shards, ranker) in this process. A layer in front of
//! the gateway counts `/index` requests and can make them fail, so that a run is interrupted
//! and its rerun is seen to send only the rest.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use flowmesh_gateway::auth::ApiKeys;
use flowmesh_gateway::{router, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::Limits;
use serde_json::{json, Value};
use support::{HashExecutors, Http, TestServer};

/// What the layer in front of the gateway counts and does.
#[derive(Default)]
struct Control {
    /// `/index` requests seen.
    index_requests: AtomicUsize,
    /// Answer `/index` requests after this many with `fail_status` (0: never).
    fail_after: AtomicUsize,
    fail_status: AtomicU16,
    /// Answer the next `/index` request 503 once.
    busy_once: AtomicBool,
}

struct Mesh {
    _executors: HashExecutors,
    gateway: TestServer,
    control: Arc<Control>,
    http: Http,
}

impl Mesh {
    async fn start(keys: ApiKeys, key: Option<&str>) -> Self {
        let executors = HashExecutors::start().await;
        let yaml = executors.flow_yaml();
        let spec = FlowSpec::from_yaml(&yaml).unwrap();
        let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
        let control = Arc::new(Control::default());
        let layer_control = control.clone();
        let app =
            router(AppState::new(flow, Limits::with_max_body_bytes(1 << 20)).with_api_keys(keys))
                .layer(axum::middleware::from_fn(
                    move |req: Request, next: Next| {
                        let control = layer_control.clone();
                        async move { interfere(&control, req, next).await }
                    },
                ));
        let mut http = Http::new();
        if let Some(key) = key {
            http = http.with_header("api-key", key);
        }
        Self {
            _executors: executors,
            gateway: TestServer::start(app).await,
            control,
            http,
        }
    }

    fn url(&self) -> String {
        self.gateway.base()
    }

    fn index_requests(&self) -> usize {
        self.control.index_requests.load(Ordering::SeqCst)
    }

    /// The ids of the matches of `text`, best first.
    async fn search(&self, text: &str, top_k: usize) -> Vec<String> {
        let r = self
            .http
            .post(
                &format!("{}/search", self.url()),
                &json!({"data": [{"text": text}], "parameters": {"top_k": top_k}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["data"][0]["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn interfere(control: &Control, req: Request, next: Next) -> Response {
    if req.uri().path() == "/index" {
        let n = control.index_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let after = control.fail_after.load(Ordering::SeqCst);
        if after > 0 && n > after {
            let status =
                http::StatusCode::from_u16(control.fail_status.load(Ordering::SeqCst)).unwrap();
            let body =
                json!({"error": "the test gateway is failing on purpose", "kind": "internal"});
            return (status, axum::Json(body)).into_response();
        }
        if control.busy_once.swap(false, Ordering::SeqCst) {
            let body = json!({"error": "executor indexer is unavailable", "kind": "unavailable"});
            return (http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}

/// A fresh folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowmesh-cli-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {}\nstdout:\n{}\nstderr:\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// Runs the built `flowmesh` with `args` (and `FLOWMESH_API_KEY` = `key` when given).
async fn flowmesh(args: &[&str], key: Option<&str>) -> Outcome {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowmesh"));
    command
        .args(args)
        .env_remove("FLOWMESH_API_KEY")
        .env_remove("FLOWMESH_GATEWAY")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    if let Some(key) = key {
        command.env("FLOWMESH_API_KEY", key);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("flowmesh ran over 2 minutes")
        .expect("run flowmesh");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn state_of(file: &Path) -> Value {
    let mut name = file.file_name().unwrap().to_os_string();
    name.push(".flowmesh-index");
    serde_json::from_slice(&std::fs::read(file.with_file_name(name)).unwrap()).unwrap()
}

/// 100 documents: 80 with ids `doc-N`, 20 without (they get ids from their content).
fn jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            let text = format!("document {i} speaks of topic{i} and subject{}", i * 7);
            if i % 5 == 4 {
                json!({"text": text, "tags": {"n": i}}).to_string()
            } else {
                json!({"id": format!("doc-{i}"), "text": text}).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_jsonl_import_resumes_with_only_the_rest() {
    let mesh = Mesh::start(ApiKeys::none(), None).await;
    let dir = scratch("jsonl");
    let file = dir.join("docs.jsonl");
    std::fs::write(&file, jsonl(100)).unwrap();
    let url = mesh.url();
    let args = ["index", path(&file), "--gateway", &url, "--batch", "10"];

    // The gateway fails every batch after the third: the run stops, 30 documents recorded.
    mesh.control.fail_status.store(500, Ordering::SeqCst);
    mesh.control.fail_after.store(3, Ordering::SeqCst);
    let first = flowmesh(&args, None).await;
    assert!(!first.ok, "{first}");
    assert!(
        first.stderr.contains("refused batch 4 (lines 31-40)")
            && first.stderr.contains("500")
            && first.stderr.contains("failing on purpose"),
        "{first}"
    );
    assert_eq!(mesh.index_requests(), 4, "a 500 is not sent again");
    let state = state_of(&file);
    assert_eq!(state["documents"], 30, "{state}");
    assert_eq!(state["line"], 30, "{state}");

    // The rerun sends only the 70 others; a 503 on the way is sent again.
    mesh.control.fail_after.store(0, Ordering::SeqCst);
    mesh.control.busy_once.store(true, Ordering::SeqCst);
    mesh.control.index_requests.store(0, Ordering::SeqCst);
    let second = flowmesh(&args, None).await;
    assert!(second.ok, "{second}");
    assert!(
        second
            .stderr
            .contains("resuming: 30 documents up to line 30 were acknowledged before"),
        "{second}"
    );
    assert!(
        second.stdout.contains("indexed 70 documents in 7 batches")
            && second
                .stdout
                .contains("30 acknowledged before were skipped")
            && second.stdout.contains("1 batch(es) sent again"),
        "{second}"
    );
    assert!(second.stderr.contains("503"), "{second}");
    assert_eq!(mesh.index_requests(), 8, "7 batches and one sent again");

    // Every document is there once, and each is found by its own text.
    let all = mesh.search("document speaks of topic", 1000).await;
    assert_eq!(all.len(), 100, "{all:?}");
    assert_eq!(
        mesh.search("document 95 speaks of topic95 and subject665", 1)
            .await,
        ["doc-95"]
    );
    assert_eq!(
        mesh.search("document 12 speaks of topic12 and subject84", 1)
            .await,
        ["doc-12"]
    );

    // A third run has nothing to send; appended lines are sent alone.
    mesh.control.index_requests.store(0, Ordering::SeqCst);
    let third = flowmesh(&args, None).await;
    assert!(third.ok, "{third}");
    assert!(third.stdout.contains("indexed 0 documents"), "{third}");
    assert_eq!(mesh.index_requests(), 0);
    let mut grown = jsonl(100);
    grown.push_str(&json!({"id": "late", "text": "a late addition"}).to_string());
    grown.push('\n');
    std::fs::write(&file, grown).unwrap();
    let fourth = flowmesh(&args, None).await;
    assert!(fourth.ok, "{fourth}");
    assert!(
        fourth.stdout.contains("indexed 1 documents in 1 batches"),
        "{fourth}"
    );
    assert_eq!(
        mesh.search("document speaks of topic", 1000).await.len(),
        101
    );

    // A changed start is refused, and --restart sends everything (upserts: still 101).
    std::fs::write(&file, grown_with_first_line_changed(&file) + "\n").unwrap();
    let refused = flowmesh(&args, None).await;
    assert!(!refused.ok, "{refused}");
    assert!(refused.stderr.contains("--restart"), "{refused}");
    let mut restart = args.to_vec();
    restart.push("--restart");
    let again = flowmesh(&restart, None).await;
    assert!(again.ok, "{again}");
    assert!(again.stdout.contains("indexed 101 documents"), "{again}");
    assert_eq!(
        mesh.search("document speaks of topic", 1000).await.len(),
        101
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn grown_with_first_line_changed(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[0] = json!({"id": "doc-0", "text": "document 0, rewritten"}).to_string();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csv_line_stops_the_run_after_everything_before_it_is_indexed() {
    let mesh = Mesh::start(ApiKeys::none(), None).await;
    let dir = scratch("csv");
    let file = dir.join("docs.csv");
    let record = |i: usize| format!("row-{i},\"row {i}, with a comma and word{i}\",en\n");
    let mut csv = String::from("id,text,lang\n");
    for i in 0..25 {
        csv.push_str(&record(i));
    }
    let good_tail: String = (26..36).map(record).collect();
    let bad = format!("{csv}row-25,too,many,fields\n{good_tail}");
    std::fs::write(&file, &bad).unwrap();
    let url = mesh.url();
    let args = ["index", path(&file), "--gateway", &url, "--batch", "10"];

    let first = flowmesh(&args, None).await;
    assert!(!first.ok, "{first}");
    assert!(
        first
            .stderr
            .contains("line 27: 4 field(s), but the header row has 3"),
        "{first}"
    );
    assert!(
        first.stdout.contains("indexed 25 documents in 3 batches"),
        "{first}"
    );
    assert_eq!(
        mesh.index_requests(),
        3,
        "10, 10 and the 5 before the bad line"
    );
    assert_eq!(state_of(&file)["documents"], 25);
    let found = mesh.search("row with a comma and word", 1000).await;
    assert_eq!(found.len(), 25, "{found:?}");
    assert!(found.contains(&"row-24".to_owned()), "{found:?}");

    // Fixed, the rerun sends the fixed line and the rest: 11 documents.
    std::fs::write(&file, format!("{csv}{}{good_tail}", record(25))).unwrap();
    mesh.control.index_requests.store(0, Ordering::SeqCst);
    let second = flowmesh(&args, None).await;
    assert!(second.ok, "{second}");
    assert!(
        second.stdout.contains("indexed 11 documents in 2 batches")
            && second
                .stdout
                .contains("25 acknowledged before were skipped"),
        "{second}"
    );
    assert_eq!(mesh.index_requests(), 2);
    assert_eq!(
        mesh.search("row with a comma and word", 1000).await.len(),
        36
    );
    assert_eq!(
        mesh.search("row 30, with a comma and word30", 1).await,
        ["row-30"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_prints_a_table_and_both_commands_send_the_api_key() {
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let keys = ApiKeys::new(Some(SecretSet::new(vec![Secret::new(&key)])), None);
    let mesh = Mesh::start(keys, Some(&key)).await;
    let dir = scratch("search");
    let file = dir.join("docs.jsonl");
    let lines = [
        json!({"id": "rust", "text": "rust is a language for fast and safe systems programming, and this sentence goes on for quite a while to be cut", "tags": {"lang": "en"}}),
        json!({"id": "python", "text": "python is a language for scripts"}),
        json!({"id": "pasta", "text": "pasta with tomatoes and basil"}),
    ];
    std::fs::write(
        &file,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let url = mesh.url();
    let args = ["index", path(&file), "--gateway", &url];

    // Without the key the gateway's 401 is printed with a hint; with it, the run succeeds.
    let refused = flowmesh(&args, None).await;
    assert!(!refused.ok, "{refused}");
    assert!(
        refused.stderr.contains("401") && refused.stderr.contains("FLOWMESH_API_KEY"),
        "{refused}"
    );
    let indexed = flowmesh(&args, Some(&key)).await;
    assert!(indexed.ok, "{indexed}");
    assert!(!indexed.stdout.contains(&key) && !indexed.stderr.contains(&key));

    // search, with the key from a file.
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let query = "rust is a language for fast and safe systems programming";
    let search = [
        "search",
        query,
        "--gateway",
        &url,
        "--top-k",
        "3",
        "--width",
        "80",
        "--api-key-file",
        path(&key_file),
    ];
    let table = flowmesh(&search, None).await;
    assert!(table.ok, "{table}");
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    let header: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(header, ["#", "score", "id", "text", "tags"], "{table}");
    assert!(
        rows[1].starts_with("1  ") && rows[1].contains("  rust  "),
        "{table}"
    );
    assert!(
        rows[1].contains('…') && rows[1].ends_with("lang=en"),
        "{table}"
    );
    for row in &rows {
        assert!(row.chars().count() <= 80, "{row:?} is wider than 80");
    }
    let raw = flowmesh(&[&search[..], &["--json"]].concat(), None).await;
    assert!(raw.ok, "{raw}");
    let answer: Value = serde_json::from_str(&raw.stdout).unwrap();
    let matches = answer["data"][0]["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 3, "{answer}");
    assert_eq!(matches[0]["id"], "rust");

    // A search without a key is refused with the gateway's message.
    let anonymous = flowmesh(&search[..6], None).await;
    assert!(!anonymous.ok, "{anonymous}");
    assert!(anonymous.stderr.contains("API key"), "{anonymous}");
    let _ = std::fs::remove_dir_all(dir);
}
