//! Jina's HTTP gateway surface on flowmesh's gateway: `GET /dry_run` (Jina's readiness check),
//! Jina's keys in `GET /status`, documents passing through an endpoint no executor serves, and
//! CORS (`--cors` or the Flow's `cors: true`), with and without API keys.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use flowmesh_gateway::auth::ApiKeys;
use flowmesh_gateway::{router, AppState, Flow, FlowSpec};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::{Envelope, Limits};
use support::{executor_app, Http, TestServer};

/// An executor that marks every document it sees (so that a pass-through is told apart).
async fn marking() -> TestServer {
    TestServer::start(executor_app(|_endpoint, mut env: Envelope| async move {
        for d in &mut env.data {
            d.text = Some(format!("seen: {}", d.text.clone().unwrap_or_default()));
        }
        Ok(env)
    }))
    .await
}

/// A gateway over the executor at `base`, with `keys` and `cors`, and `with` as the Flow's
/// `with:` (YAML flow mapping, may be empty).
async fn gateway(base: &str, keys: ApiKeys, cors: bool, with: &str) -> TestServer {
    let yaml = format!(
        "name: jina\nwith: {{health_interval_ms: 50{with}}}\nexecutors:\n\
         - {{name: mark, uses: remote, addresses: ['{base}'], retries: 0}}\n"
    );
    let spec = FlowSpec::from_yaml(&yaml).unwrap();
    let flow = Arc::new(Flow::build(spec, &ExecutorClient::new()).unwrap());
    let state = AppState::new(flow, Limits::with_max_body_bytes(1 << 20))
        .with_api_keys(keys)
        .with_cors(cors);
    TestServer::start(router(state)).await
}

fn a_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[tokio::test]
async fn dry_run_says_ready_then_not_ready_as_jina_does() {
    let executor = marking().await;
    let gw = gateway(&executor.base(), ApiKeys::none(), false, "").await;
    let http = Http::new();
    let url = format!("{}/dry_run", gw.base());
    let r = http.get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["code"], 0, "{}", r.json());

    // The only replica goes away: once the health checks see it, the Flow is not ready, and
    // the answer says so in Jina's way (still 200; `code` 3 is ERROR).
    executor.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let a = http.get(&url).await;
        assert_eq!(a.status, 200);
        let a = a.json();
        if a["code"] != 0 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer["code"], 3, "{answer}");
    assert!(
        answer["description"]
            .as_str()
            .unwrap()
            .contains("not ready"),
        "{answer}"
    );
    assert_eq!(answer["exception"]["name"], "FlowNotReady");
}

#[tokio::test]
async fn status_has_jinas_keys_next_to_flowmeshs() {
    let executor = marking().await;
    let gw = gateway(&executor.base(), ApiKeys::none(), false, "").await;
    let status = Http::new()
        .get(&format!("{}/status", gw.base()))
        .await
        .json();
    // flowmesh's own fields stay.
    assert_eq!(status["flow"], "jina", "{status}");
    assert_eq!(status["executors"][0]["name"], "mark", "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    // Jina's: `jina` (versions) and `envs` (objects, as Jina's client model wants them).
    assert_eq!(status["jina"]["flowmesh"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["envs"], json!({}));
}

#[tokio::test]
async fn an_endpoint_no_executor_serves_lets_the_documents_pass_through() {
    let executor = marking().await;
    let gw = gateway(&executor.base(), ApiKeys::none(), false, "").await;
    let http = Http::new();
    let body = json!({
        "execEndpoint": "/foo",
        "parameters": {"x": 1},
        "data": [{"id": "a", "text": "one", "tags": {"k": "v"}}, {"id": "b", "text": "two"}]
    });
    let r = http.post(&format!("{}/post", gw.base()), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let a = r.json();
    assert_eq!(a["header"]["exec_endpoint"], "/foo");
    assert!(!a["header"]["request_id"].as_str().unwrap().is_empty());
    assert_eq!(a["parameters"]["x"], 1);
    let data = a["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], "a");
    assert_eq!(data[0]["text"], "one", "unchanged: no executor saw it");
    assert_eq!(data[0]["tags"]["k"], "v");
    assert_eq!(data[1]["text"], "two");
    // A served endpoint still goes through the executor.
    let body = json!({"execEndpoint": "/search", "data": [{"id": "a", "text": "one"}]});
    let a = http
        .post(&format!("{}/post", gw.base()), &body)
        .await
        .json();
    assert_eq!(a["data"][0]["text"], "seen: one", "{a}");
    // The limits still hold for a pass-through, and a path of its own is still unknown.
    let big = json!({"execEndpoint": "/foo", "data": [{"text": "x".repeat(2 << 20)}]});
    assert_eq!(
        http.post(&format!("{}/post", gw.base()), &big).await.status,
        413
    );
    let r = http.post(&format!("{}/foo", gw.base()), &body).await;
    assert_eq!(r.status, 404);
}

/// A browser's preflight for a POST with a JSON body and an API key.
async fn preflight(http: &Http, url: &str) -> support::HttpResponse {
    http.send_with(
        "OPTIONS",
        url,
        "application/json",
        &[
            ("origin", "http://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type, api-key"),
        ],
        Vec::new(),
    )
    .await
}

fn allowed_headers(r: &support::HttpResponse) -> String {
    r.headers
        .get("access-control-allow-headers")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default()
}

#[tokio::test]
async fn cors_answers_preflights_without_a_key_and_marks_answers() {
    let executor = marking().await;
    let key = a_key();
    let keys = ApiKeys::new(Some(SecretSet::new(vec![Secret::new(key.clone())])), None);
    for (what, gw) in [
        (
            "--cors",
            gateway(&executor.base(), keys.clone(), true, "").await,
        ),
        (
            "cors: true",
            gateway(&executor.base(), keys.clone(), false, ", cors: true").await,
        ),
    ] {
        let http = Http::new();
        let search = format!("{}/search", gw.base());
        let r = preflight(&http, &search).await;
        assert!(
            r.status == 200 || r.status == 204,
            "{what}: preflight {}",
            r.status
        );
        assert_eq!(r.headers["access-control-allow-origin"], "*", "{what}");
        let headers = allowed_headers(&r);
        for h in ["content-type", "api-key", "authorization"] {
            assert!(headers.contains(h), "{what}: {h} not allowed: {headers}");
        }
        let methods = r.headers["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST"), "{what}: {methods}");

        // The request itself: with the key it runs and is marked; without it, a 401 the page
        // can read.
        let body = json!({"data": [{"id": "a", "text": "one"}]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let origin = [("origin", "http://app.example"), ("api-key", key.as_str())];
        let r = http
            .send_with("POST", &search, "application/json", &origin, bytes.clone())
            .await;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.headers["access-control-allow-origin"], "*", "{what}");
        let r = http
            .send_with("POST", &search, "application/json", &origin[..1], bytes)
            .await;
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.headers["access-control-allow-origin"], "*", "{what}");
    }
}

#[tokio::test]
async fn without_cors_nothing_changes() {
    let executor = marking().await;
    let key = a_key();
    let with_keys = ApiKeys::new(Some(SecretSet::new(vec![Secret::new(key)])), None);
    for (keys, expected) in [(ApiKeys::none(), 405), (with_keys, 401)] {
        let gw = gateway(&executor.base(), keys, false, "").await;
        let http = Http::new();
        let r = preflight(&http, &format!("{}/search", gw.base())).await;
        assert_eq!(r.status, expected);
        assert!(
            !r.headers.contains_key("access-control-allow-origin"),
            "{:?}",
            r.headers
        );
        let r = http
            .send_with(
                "GET",
                &format!("{}/livez", gw.base()),
                "application/json",
                &[("origin", "http://app.example")],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(!r.headers.contains_key("access-control-allow-origin"));
    }
}

#[tokio::test]
async fn a_read_only_key_may_pass_documents_through() {
    let executor = marking().await;
    let key = a_key();
    let keys = ApiKeys::new(None, Some(SecretSet::new(vec![Secret::new(key.clone())])));
    let gw = gateway(&executor.base(), keys, false, "").await;
    let http = Http::new().with_header("api-key", &key);
    let body = json!({"execEndpoint": "/foo", "data": [{"id": "a"}]});
    let r = http.post(&format!("{}/post", gw.base()), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = json!({"execEndpoint": "/index", "data": [{"id": "a"}]});
    let r = http.post(&format!("{}/post", gw.base()), &body).await;
    assert_eq!(r.status, 403);
    let dry: Value = http.get(&format!("{}/dry_run", gw.base())).await.json();
    assert_eq!(dry["code"], 0);
}
