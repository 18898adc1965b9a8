//! The public API: errors for bad input, Jina's `/post`, status, health, metrics, OpenAPI.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use serde_json::{json, Value};

use flowmesh_shared::{ApiError, Envelope};
use support::{docs, executor_app, ids, Http, TestGateway, TestServer};

async fn echo() -> TestServer {
    TestServer::start(executor_app(|endpoint, env: Envelope| async move {
        if env
            .data
            .iter()
            .any(|d| d.text.as_deref() == Some("reject me"))
        {
            return Err(ApiError::BadRequest(format!(
                "{endpoint}: cannot take this document"
            )));
        }
        Ok(env)
    }))
    .await
}

async fn gateway(limit: usize) -> (TestGateway, TestServer) {
    let e = echo().await;
    let gw = TestGateway::start_with_limit(
        &format!("name: api\nexecutors:\n- {{name: seg, uses: sentencizer}}\n- {{name: echo, uses: remote, addresses: ['{}']}}\n", e.base()),
        limit,
    )
    .await;
    (gw, e)
}

fn assert_error(r: &support::HttpResponse, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    let body = r.json();
    assert_eq!(body["kind"], kind, "{body}");
    assert!(!body["error"].as_str().unwrap().is_empty());
    body
}

#[tokio::test]
async fn bad_input_gets_4xx_json_errors() {
    let (gw, e) = gateway(4096).await;
    let http = Http::new();
    let url = gw.url("/index");
    let r = http
        .send("POST", &url, "application/json", "{\"data\": [")
        .await;
    let body = assert_error(&r, 400, "invalid_body");
    assert!(
        body["error"].as_str().unwrap().contains("invalid JSON"),
        "{body}"
    );

    let r = http.post(&url, &json!({"data": "not a list"})).await;
    let body = assert_error(&r, 400, "invalid_body");
    assert!(
        body["error"].as_str().unwrap().contains("invalid type"),
        "{body}"
    );

    let r = http.post(&url, &json!({"data": [{"id": 5}]})).await;
    assert_error(&r, 400, "invalid_body");

    let r = http.post(&url, &json!({"data": []})).await;
    let body = assert_error(&r, 400, "bad_request");
    assert!(body["error"].as_str().unwrap().contains("data is empty"));

    let r = http.post(&url, &json!({"parameters": {"top_k": 3}})).await;
    assert_error(&r, 400, "bad_request");

    let big = "x".repeat(8192);
    let r = http.post(&url, &json!({"data": [{"text": big}]})).await;
    assert_error(&r, 413, "payload_too_large");

    let r = http
        .post(&gw.url("/nope"), &json!({"data": [{"id": "a"}]}))
        .await;
    assert_error(&r, 404, "unknown_endpoint");

    // As in Jina, an endpoint no executor serves lets the documents pass through.
    let r = http
        .post(
            &gw.url("/post"),
            &json!({"execEndpoint": "/train", "data": [{"id": "a"}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["header"]["exec_endpoint"], "/train");

    // Executors answer wrong paths and methods with the same JSON errors.
    assert_error(
        &http.get(&format!("{}/no/such/path", e.base())).await,
        404,
        "unknown_endpoint",
    );
    assert_error(
        &http.get(&format!("{}/search", e.base())).await,
        405,
        "method_not_allowed",
    );

    // An executor's 4xx reaches the caller with the executor named.
    let r = http
        .post(&url, &json!({"data": [{"text": "reject me"}]}))
        .await;
    let body = assert_error(&r, 400, "bad_request");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("executor echo: "),
        "{body}"
    );
}

#[tokio::test]
async fn documents_flow_through_with_generated_ids_and_timings() {
    let (gw, _e) = gateway(1 << 20).await;
    let r = Http::new()
        .post(&gw.url("/index"), &json!({"data": [{"text": "First one. Second one!"}, {"id": "given", "text": "x", "embedding": [1.0, 2.0]}]}))
        .await;
    assert_eq!(r.status, 200);
    let a = r.json();
    let data = a["data"].as_array().unwrap();
    assert_eq!(data[0]["id"].as_str().unwrap().len(), 32, "generated id");
    assert_eq!(
        data[0]["chunks"].as_array().unwrap().len(),
        2,
        "sentencizer ran"
    );
    assert_eq!(data[1]["id"], "given");
    assert!(
        data[1].get("embedding").is_none(),
        "embeddings are left out unless asked for"
    );
    assert_eq!(a["header"]["exec_endpoint"], "/index");
    assert_eq!(a["header"]["request_id"].as_str().unwrap().len(), 32);
    let routes = a["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[1]["executor"], "echo");
    assert!(routes[1]["start_time"].as_str().unwrap().ends_with('Z'));
    let timing = r.headers["server-timing"].to_str().unwrap();
    assert!(
        timing.starts_with("seg;dur=") && timing.contains(", echo;dur="),
        "{timing}"
    );

    let r = Http::new()
        .post(&gw.url("/search"), &json!({"data": [{"id": "e", "embedding": [1.0]}], "parameters": {"return_embeddings": true}}))
        .await;
    assert_eq!(r.json()["data"][0]["embedding"], json!([1.0]));
}

#[tokio::test]
async fn jina_post_runs_the_named_endpoint() {
    let (gw, _e) = gateway(1 << 20).await;
    let http = Http::new();
    for body in [
        json!({"execEndpoint": "/search", "data": [{"id": "a"}]}),
        json!({"exec_endpoint": "/search", "data": [{"id": "a"}]}),
        json!({"header": {"exec_endpoint": "/search"}, "data": [{"id": "a"}]}),
    ] {
        let r = http.post(&gw.url("/post"), &body).await;
        assert_eq!(r.status, 200, "{body}");
        let a = r.json();
        assert_eq!(a["header"]["exec_endpoint"], "/search");
        assert_eq!(ids(&a), ["a"]);
    }
}

#[tokio::test]
async fn msgpack_is_negotiated() {
    let (gw, _e) = gateway(1 << 20).await;
    let env = Envelope::new(vec![flowmesh_shared::Document::text("m", "hello")]);
    let body = rmp_serde::to_vec_named(&env).unwrap();
    let r = Http::new()
        .send("POST", &gw.url("/index"), "application/msgpack", body)
        .await;
    assert_eq!(r.status, 200);
    // No Accept header: the answer is JSON.
    assert_eq!(ids(&r.json()), ["m"]);
}

#[tokio::test]
async fn status_health_and_metrics() {
    let (gw, _e) = gateway(1 << 20).await;
    let http = Http::new();
    assert_eq!(http.get(&gw.url("/livez")).await.status, 200);
    assert_eq!(http.get(&gw.url("/readyz")).await.status, 200);
    let status = http.get(&gw.url("/status")).await.json();
    assert_eq!(status["flow"], "api");
    assert_eq!(status["executors"][1]["needs"], json!(["seg"]));
    assert_eq!(status["executors"][1]["polling"]["/search"], "all");
    assert_eq!(
        http.post(&gw.url("/search"), &docs(&["q".into()]))
            .await
            .status,
        200
    );
    let metrics = String::from_utf8(http.get(&gw.url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            "flowmesh_http_requests_total{service=\"gateway\",path=\"/search\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowmesh_executor_duration_seconds_bucket{executor=\"echo\""),
        "{metrics}"
    );
    let docs_page = http.get(&gw.url("/docs/")).await;
    assert_eq!(docs_page.status, 200);
    assert!(String::from_utf8_lossy(&docs_page.body).contains("swagger"));
}

#[tokio::test]
async fn openapi_lists_the_paths_jina_clients_look_for() {
    let (gw, _e) = gateway(1 << 20).await;
    let spec = Http::new().get(&gw.url("/openapi.json")).await.json();
    for path in ["/index", "/search", "/update", "/delete", "/post"] {
        assert!(spec["paths"][path]["post"].is_object(), "{path} missing");
    }
}

/// Every route that runs the Flow has an example body in the served document, which the gateway
/// takes as it is (Swagger UI's "Try it out" sends it unedited); the search examples ask for
/// `top_k`. The recursive `chunks` and `matches` are drawn as documents: without an example,
/// Swagger UI cannot follow the recursion and offers `["string"]`, which the gateway refuses.
#[tokio::test]
async fn every_flow_route_has_an_example_body_the_gateway_takes() {
    let (gw, _e) = gateway(1 << 20).await;
    let http = Http::new();
    let spec = http.get(&gw.url("/openapi.json")).await.json();
    for path in ["/index", "/search", "/update", "/delete", "/post"] {
        let example =
            &spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"];
        let data = example["data"].as_array();
        assert!(data.is_some_and(|d| d.len() == 1), "{path}: {example}");
        let r = http.post(&gw.url(path), example).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1), "{path}");
        if matches!(path, "/search" | "/post") {
            assert!(example["parameters"]["top_k"].is_u64(), "{path}: {example}");
            assert!(example["data"][0]["text"].is_string(), "{path}: {example}");
        }
    }
    for field in ["chunks", "matches"] {
        let drawn = &spec["components"]["schemas"]["Document"]["properties"][field]["example"];
        let docs: Vec<flowmesh_shared::Document> = serde_json::from_value(drawn.clone())
            .unwrap_or_else(|e| panic!("{field} is not drawn as documents ({e}): {drawn}"));
        assert!(!docs.is_empty(), "{field}: {drawn}");
    }
}

/// `openapi/gateway.json` is generated from the code and documents exactly the routes the
/// router serves; run with `UPDATE_OPENAPI=1` to refresh it.
#[tokio::test]
async fn committed_openapi_matches_the_code() {
    let generated = flowmesh_gateway::openapi_json();
    flowmesh_shared::testing::assert_openapi_committed(
        env!("CARGO_MANIFEST_DIR"),
        "gateway.json",
        &generated,
        "flowmesh-gateway",
    );
    // A Flow of one built-in executor: the routes do not depend on the executors.
    let spec = "name: api\nexecutors:\n- {name: seg, uses: sentencizer}\n";
    let flow = flowmesh_gateway::Flow::build(
        flowmesh_gateway::FlowSpec::from_yaml(spec).unwrap(),
        &flowmesh_shared::client::ExecutorClient::new(),
    )
    .unwrap();
    let app = flowmesh_gateway::router(flowmesh_gateway::AppState::new(
        std::sync::Arc::new(flow),
        flowmesh_shared::Limits::default(),
    ));
    let api = serde_json::from_str(&generated).unwrap();
    flowmesh_shared::testing::assert_routes_documented(&app, &api).await;
}
