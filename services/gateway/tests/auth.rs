//! Client API keys at the gateway: every route against every kind of credential (none, a wrong
//! key, a read-only key, a read-write key), key files with several keys re-read on SIGHUP, and
//! the audit line of each write. The gateway runs in-process behind shared's real serve loop
//! (which gives each request its peer address), in front of a real executor server.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::sync::oneshot;

use flowmesh_gateway::{router, ApiKeyArgs, ApiKeys, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::{ApiError, Envelope, Limits};
use support::{executor_app, Http, HttpResponse, TestServer};

/// A key made for this run: never a constant that could also be somebody's real key.
fn new_key() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// The name a key is logged under: `KIND/` and the first 8 hex digits of its SHA-256.
fn key_name(kind: &str, key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}/{hex}")
}

/// An executor that answers every call with its request, or 400 for a text "reject me".
async fn echo() -> TestServer {
    TestServer::start(executor_app(|endpoint, env: Envelope| async move {
        if env
            .data
            .iter()
            .any(|d| d.text.as_deref() == Some("reject me"))
        {
            return Err(ApiError::BadRequest(format!("{endpoint}: cannot take it")));
        }
        Ok(env)
    }))
    .await
}

/// A gateway in front of `executor` with `keys`, served by shared's serve loop on port 0:
/// its base URL, and what stops it when dropped.
async fn gateway(executor: &TestServer, keys: ApiKeys) -> (String, oneshot::Sender<()>) {
    let yaml = format!(
        "name: auth\nexecutors:\n- {{name: echo, uses: remote, addresses: ['{}']}}\n",
        executor.base()
    );
    let spec = FlowSpec::from_yaml(&yaml).unwrap();
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    let limits = Limits::with_max_body_bytes(1 << 20);
    let app = router(AppState::new(flow, limits.clone()).with_api_keys(keys));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        flowmesh_shared::server::serve(listener, app, &limits, None, async {
            let _ = stop_rx.await;
        })
        .await
    });
    (base, stop_tx)
}

fn keys(read_write: &str, read_only: &str) -> ApiKeys {
    let set = |k: &str| Some(SecretSet::new(vec![Secret::new(k)]));
    ApiKeys::new(set(read_write), set(read_only))
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    Nothing,
    Read,
    Write,
    /// A path no route serves.
    Unknown,
}

/// Every route of the gateway, with a request that the route answers normally.
fn routes() -> Vec<(&'static str, &'static str, &'static str, Value, Needs)> {
    let docs = json!({"data": [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]});
    let post =
        |endpoint: &str| json!({"execEndpoint": endpoint, "data": [{"id": "a", "text": "one"}]});
    vec![
        ("index", "POST", "/index", docs.clone(), Needs::Write),
        ("search", "POST", "/search", docs.clone(), Needs::Read),
        ("update", "POST", "/update", docs, Needs::Write),
        (
            "delete",
            "POST",
            "/delete",
            json!({"data": [{"id": "a"}]}),
            Needs::Write,
        ),
        ("post/index", "POST", "/post", post("/index"), Needs::Write),
        (
            "post/update",
            "POST",
            "/post",
            post("/update"),
            Needs::Write,
        ),
        (
            "post/delete",
            "POST",
            "/post",
            post("/delete"),
            Needs::Write,
        ),
        ("post/search", "POST", "/post", post("/search"), Needs::Read),
        ("status", "GET", "/status", Value::Null, Needs::Read),
        ("metrics", "GET", "/metrics", Value::Null, Needs::Read),
        ("livez", "GET", "/livez", Value::Null, Needs::Nothing),
        ("readyz", "GET", "/readyz", Value::Null, Needs::Nothing),
        ("dry_run", "GET", "/dry_run", Value::Null, Needs::Nothing),
        ("docs", "GET", "/docs/", Value::Null, Needs::Nothing),
        (
            "docs asset",
            "GET",
            "/docs/swagger-ui.css",
            Value::Null,
            Needs::Nothing,
        ),
        (
            "openapi",
            "GET",
            "/openapi.json",
            Value::Null,
            Needs::Nothing,
        ),
        (
            "unknown",
            "GET",
            "/no/such/route",
            Value::Null,
            Needs::Unknown,
        ),
        (
            "unknown post",
            "POST",
            "/v1/index",
            json!({}),
            Needs::Unknown,
        ),
    ]
}

async fn call(
    http: &Http,
    base: &str,
    method: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    http.send_with(
        method,
        &format!("{base}{path}"),
        "application/json",
        headers,
        body,
    )
    .await
}

fn assert_refused(r: &HttpResponse, status: u16, kind: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers["content-type"], "application/json", "{what}");
    let body = r.json();
    assert_eq!(body["kind"], kind, "{what}: {body}");
    assert!(!body["error"].as_str().unwrap().is_empty(), "{what}");
    if status == 401 {
        assert_eq!(
            r.headers["www-authenticate"], "Bearer realm=\"flowmesh\"",
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_credential_as_its_policy_says() {
    let executor = echo().await;
    let (open, _stop_open) = gateway(&executor, ApiKeys::none()).await;
    let (rw, ro) = (new_key(), new_key());
    let (keyed, _stop_keyed) = gateway(&executor, keys(&rw, &ro)).await;
    let http = Http::new();
    let wrong = new_key();
    let rw_bearer = format!("Bearer {rw}");
    let ro_bearer = format!("Bearer {ro}");
    let wrong_bearer = format!("Bearer {wrong}");
    let credentials: [(&str, Vec<(&str, &str)>); 8] = [
        ("none", vec![]),
        ("wrong api-key", vec![("api-key", wrong.as_str())]),
        (
            "wrong bearer",
            vec![("authorization", wrong_bearer.as_str())],
        ),
        ("not bearer", vec![("authorization", rw.as_str())]),
        ("read-only api-key", vec![("api-key", ro.as_str())]),
        (
            "read-only bearer",
            vec![("authorization", ro_bearer.as_str())],
        ),
        ("read-write api-key", vec![("api-key", rw.as_str())]),
        (
            "read-write bearer",
            vec![("authorization", rw_bearer.as_str())],
        ),
    ];
    for (route, method, path, body, needs) in routes() {
        // What the route answers without any key configured: its normal answer.
        let normal = call(&http, &open, method, path, &body, &[]).await;
        let expected_normal = match needs {
            Needs::Unknown => 404,
            _ => 200,
        };
        assert_eq!(
            normal.status,
            expected_normal,
            "{route} without keys: {}",
            String::from_utf8_lossy(&normal.body)
        );
        for (credential, headers) in &credentials {
            let what = format!("{route} with {credential}");
            let r = call(&http, &keyed, method, path, &body, headers).await;
            let valid = credential.starts_with("read-");
            let read_only = credential.starts_with("read-only");
            match needs {
                Needs::Nothing => assert_eq!(r.status, normal.status, "{what}"),
                _ if !valid => assert_refused(&r, 401, "unauthorized", &what),
                Needs::Write if read_only => assert_refused(&r, 403, "forbidden", &what),
                _ => {
                    assert_eq!(
                        r.status,
                        normal.status,
                        "{what}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    if normal.status == 404 {
                        assert_eq!(r.json()["kind"], "unknown_endpoint", "{what}");
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_hold_several_keys_and_are_read_again_on_sighup() {
    let dir = support::launch::temp_dir("auth-keyfiles");
    let (a, b, c, ro) = (new_key(), new_key(), new_key(), new_key());
    let rw_file = dir.join("rw.keys");
    let ro_file = dir.join("ro.keys");
    std::fs::write(&rw_file, format!("# read-write keys\n{a}\n\n  {b}  \n")).unwrap();
    std::fs::write(&ro_file, format!("{ro}\n")).unwrap();
    let args = ApiKeyArgs {
        api_key_files: vec![rw_file.clone()],
        read_only_api_key_files: vec![ro_file],
    };
    let keys = args.load().unwrap();
    keys.reload_on_sighup();
    let executor = echo().await;
    let (base, _stop) = gateway(&executor, keys).await;
    let http = Http::new();
    let index = |key: String| {
        let http = http.clone();
        let url = format!("{base}/index");
        async move {
            let body = serde_json::to_vec(&json!({"data": [{"id": "x", "text": "x"}]})).unwrap();
            http.send_with("POST", &url, "application/json", &[("api-key", &key)], body)
                .await
                .status
        }
    };
    assert_eq!(index(a.clone()).await, 200);
    assert_eq!(index(b.clone()).await, 200, "the second key, trimmed");
    assert_eq!(index(c.clone()).await, 401);
    assert_eq!(index(ro.clone()).await, 403);

    // Rotation: c replaces a in the file; SIGHUP re-reads it.
    std::fs::write(&rw_file, format!("{b}\n{c}\n")).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while index(c.clone()).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(index(a).await, 401, "the old key is gone");
    assert_eq!(index(b).await, 200);
    // A file without keys is refused at start, naming the file, not its content.
    std::fs::write(&rw_file, "# nothing\n\n").unwrap();
    let err = format!("{:#}", args.load().unwrap_err());
    assert!(err.contains("rw.keys"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every log line of this test binary, as written.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_target(true)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .init();
        logs
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The audit lines that mention `request_id`.
fn audit_lines(request_id: &str) -> Vec<String> {
    let logs = captured().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| {
            l.contains("flowmesh::audit") && l.contains(&format!("request_id={request_id:?}"))
        })
        .map(str::to_owned)
        .collect()
}

/// The value of `name=value` (or `name="value"`) in a log line.
fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted[..quoted.find('"').unwrap()].to_owned(),
        None => rest.split_whitespace().next().unwrap().to_owned(),
    }
}

/// Waits for exactly one audit line of `request_id` and returns it.
async fn one_audit_line(request_id: &str) -> String {
    // The line is written once the answer is known, which is before the client reads it; a
    // short wait covers the log writer.
    for _ in 0..50 {
        if !audit_lines(request_id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = audit_lines(request_id);
    assert_eq!(
        lines.len(),
        1,
        "one audit line for {request_id}: {lines:#?}"
    );
    lines.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_audited_once_with_the_key_name_not_the_key() {
    captured();
    let executor = echo().await;
    let (rw, ro) = (new_key(), new_key());
    let (base, _stop) = gateway(&executor, keys(&rw, &ro)).await;
    let http = Http::new();
    let post = |path: &'static str,
                key: Option<String>,
                extra: Vec<(&'static str, String)>,
                body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let mut headers: Vec<(&str, String)> = extra;
            if let Some(k) = key {
                headers.push(("api-key", k));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http.send_with(
                "POST",
                &url,
                "application/json",
                &headers,
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let rid = |tag: &str| format!("audit-{tag}-{}", uuid::Uuid::new_v4().simple());

    // A write with the read-write key: its name, the client, the endpoint, 2 documents, ok.
    let id = rid("index");
    let body = json!({"header": {"request_id": id}, "data": [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]});
    let r = post("/index", Some(rw.clone()), vec![], body).await;
    assert_eq!(r.status, 200);
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "key"), key_name("read-write", &rw), "{line}");
    assert!(field(&line, "client").starts_with("127.0.0.1:"), "{line}");
    assert_eq!(field(&line, "endpoint"), "/index", "{line}");
    assert_eq!(field(&line, "docs"), "2", "{line}");
    assert_eq!(field(&line, "status"), "200", "{line}");
    assert_eq!(field(&line, "outcome"), "ok", "{line}");
    assert!(line.contains("INFO"), "{line}");
    assert!(
        !line.contains(&rw),
        "the key itself is never logged: {line}"
    );

    // A search is not a write.
    let id = rid("search");
    let body = json!({"header": {"request_id": id}, "data": [{"text": "one"}]});
    assert_eq!(
        post("/search", Some(ro.clone()), vec![], body.clone())
            .await
            .status,
        200
    );
    let body =
        json!({"execEndpoint": "/search", "header": {"request_id": id}, "data": [{"text": "one"}]});
    assert_eq!(
        post("/post", Some(rw.clone()), vec![], body).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(audit_lines(&id).is_empty(), "{:?}", audit_lines(&id));

    // Refused writes: a read-only key, no key.
    let id = rid("readonly");
    let body = json!({"data": [{"id": "a", "text": "one"}]});
    let r = post(
        "/index",
        Some(ro.clone()),
        vec![("x-request-id", id.clone())],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 403);
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "key"), key_name("read-only", &ro), "{line}");
    assert_eq!(field(&line, "status"), "403", "{line}");
    assert_eq!(field(&line, "outcome"), "forbidden", "{line}");
    assert!(!line.contains(&ro), "{line}");

    let id = rid("nokey");
    let r = post("/delete", None, vec![("x-request-id", id.clone())], body).await;
    assert_eq!(r.status, 401);
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "key"), "missing", "{line}");
    assert_eq!(field(&line, "endpoint"), "/delete", "{line}");
    assert_eq!(field(&line, "outcome"), "unauthorized", "{line}");

    let id = rid("wrongkey");
    let body = json!({"data": [{"id": "a"}]});
    let wrong = new_key();
    let r = post(
        "/update",
        Some(wrong.clone()),
        vec![("x-request-id", id.clone())],
        body,
    )
    .await;
    assert_eq!(r.status, 401);
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "key"), "invalid", "{line}");
    assert!(!line.contains(&wrong), "{line}");

    // /post names its endpoint in the body: audited as that endpoint.
    let id = rid("post-ro");
    let body = json!({"execEndpoint": "/update", "header": {"request_id": id}, "data": [{"id": "a", "text": "x"}]});
    let r = post("/post", Some(ro.clone()), vec![], body).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["kind"], "forbidden");
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "endpoint"), "/update", "{line}");
    assert_eq!(field(&line, "docs"), "1", "{line}");
    assert_eq!(field(&line, "outcome"), "forbidden", "{line}");

    let id = rid("post-rw");
    let body = json!({"execEndpoint": "/delete", "header": {"request_id": id}, "data": [{"id": "a"}, {"id": "b"}, {"id": "c"}]});
    assert_eq!(
        post("/post", Some(rw.clone()), vec![], body).await.status,
        200
    );
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "endpoint"), "/delete", "{line}");
    assert_eq!(field(&line, "docs"), "3", "{line}");
    assert_eq!(field(&line, "outcome"), "ok", "{line}");

    // A write the mesh refuses: the error's kind.
    let id = rid("rejected");
    let body = json!({"header": {"request_id": id}, "data": [{"id": "a", "text": "reject me"}]});
    let r = post("/index", Some(rw.clone()), vec![], body).await;
    assert_eq!(r.status, 400);
    let line = one_audit_line(&id).await;
    assert_eq!(field(&line, "status"), "400", "{line}");
    assert_eq!(
        field(&line, "outcome"),
        r.json()["kind"].as_str().unwrap(),
        "{line}"
    );

    // A generated request id is logged too (and is the one in the answer).
    let r = post(
        "/index",
        Some(rw.clone()),
        vec![],
        json!({"data": [{"id": "g", "text": "g"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let generated = r.json()["header"]["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = one_audit_line(&generated).await;
    assert_eq!(field(&line, "docs"), "1", "{line}");
}
