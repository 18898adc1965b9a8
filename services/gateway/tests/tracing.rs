//! OpenTelemetry traces across the mesh: a Flow started by `flowmesh up` with an OTLP endpoint
//! exports, from every process, the spans of each request into the caller's trace, and flushes
//! them when it stops. The collector is an in-process OTLP/HTTP receiver decoding protobuf.
//! Needs the service binaries next to `flowmesh` (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use support::launch::{self, flow_dir};
use support::{Http, TestServer};

/// One received span, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// `POST /v1/traces` with an `ExportTraceServiceRequest` in protobuf, as OTLP/HTTP sends it.
async fn traces_receive(State(inbox): State<Inbox>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf body");
    let mut inbox = inbox.lock().unwrap();
    for rs in request.resource_spans {
        let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            inbox.push(Received {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

const FLOW: &str = "name: traced
executors:
  - {name: segmenter, uses: sentencizer}
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer, shards: 2}
  - {name: ranker, uses: ranker, with: {store: memory}}
";

const INDEX_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SEARCH_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_search_is_one_trace_through_every_service() {
    let inbox = Inbox::default();
    let collector = TestServer::start(
        Router::new()
            .route("/v1/traces", post(traces_receive))
            .with_state(inbox.clone()),
    )
    .await;
    let (dir, flow) = flow_dir("traces", FLOW);
    let log = dir.join("flowmesh.log");
    // A batch delay far longer than the test: every span arrives through the flush at exit.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ("OTEL_SERVICE_NAME", String::new()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", String::new()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", String::new()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
    ];
    let mut launched = launch::up(
        &flow,
        &dir,
        &env,
        Some(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let traced_post = |path: &'static str, trace: &'static str, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{gateway}{path}");
        async move {
            let parent = format!("00-{trace}-{CALLER_SPAN}-01");
            let r = http
                .send_with(
                    "POST",
                    &url,
                    "application/json",
                    &[("traceparent", &parent), ("tracestate", "caller=test")],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()
        }
    };
    traced_post(
        "/index",
        INDEX_TRACE,
        json!({"data": [
            {"id": "horse", "text": "A man rides a white horse. The horse runs."},
            {"id": "pasta", "text": "She cooks pasta. It smells of garlic."},
            {"id": "rain", "text": "Rain falls on the city. The streets shine."}
        ]}),
    )
    .await;
    let answer = traced_post(
        "/search",
        SEARCH_TRACE,
        json!({"data": [{"id": "q", "text": "a white horse"}], "parameters": {"top_k": 2}}),
    )
    .await;
    assert!(!answer["data"][0]["matches"].as_array().unwrap().is_empty());

    launched.stop().await;
    let spans = inbox.lock().unwrap().clone();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let context = format!("{spans:#?}\n--- flowmesh log ---\n{log}");

    // Exactly the two traces the caller started: no span lost its parent context on the way,
    // and no probe or scrape made traces of its own.
    let traces: HashSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(
        traces,
        HashSet::from([INDEX_TRACE, SEARCH_TRACE]),
        "{context}"
    );

    let search: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id == SEARCH_TRACE)
        .collect();
    let services: HashSet<&str> = search.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from([
            "flowmesh-gateway",
            "flowmesh-encoder",
            "flowmesh-indexer",
            "flowmesh-ranker"
        ]),
        "{context}"
    );
    let by_id: HashMap<&str, &Received> = search.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    assert_eq!(by_id.len(), search.len(), "span ids are unique: {context}");

    // The gateway's server span continues the caller's span; every other span's parent is in
    // the trace.
    let roots: Vec<&&Received> = search
        .iter()
        .filter(|s| !by_id.contains_key(s.parent.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "{context}");
    let root = roots[0];
    assert_eq!(
        (root.service.as_str(), root.kind, root.parent.as_str()),
        ("flowmesh-gateway", SpanKind::Server as i32, CALLER_SPAN),
        "{context}"
    );
    assert_eq!(root.name, "POST /search");
    assert_eq!(root.attributes["http.route"], "/search");
    assert_eq!(root.attributes["http.response.status_code"], "200");
    assert_eq!(root.attributes["flowmesh.documents"], "1");

    // The built-in sentencizer has an internal span under the request.
    let segmenter = search
        .iter()
        .find(|s| s.name == "segmenter")
        .unwrap_or_else(|| panic!("no segmenter span: {context}"));
    assert_eq!(segmenter.kind, SpanKind::Internal as i32);
    assert_eq!(segmenter.parent, root.span_id);

    // Each executor's server span hangs under a gateway client span for that executor, which
    // hangs under the executor's internal span under the request.
    let mut shards_seen = HashSet::new();
    for (service, executor, expected) in [
        ("flowmesh-encoder", "encoder", 1),
        ("flowmesh-indexer", "indexer", 2),
        ("flowmesh-ranker", "ranker", 1),
    ] {
        let servers: Vec<&&Received> = search
            .iter()
            .filter(|s| s.service == service && s.kind == SpanKind::Server as i32)
            .collect();
        assert_eq!(servers.len(), expected, "{service}: {context}");
        for server in servers {
            // Named after the endpoint called, not the route's `/{endpoint}`.
            assert_eq!(server.name, "POST /search", "{context}");
            assert_eq!(server.attributes["http.route"], "/search", "{context}");
            let client = by_id[server.parent.as_str()];
            assert_eq!(
                (client.service.as_str(), client.kind),
                ("flowmesh-gateway", SpanKind::Client as i32),
                "{service}'s parent: {context}"
            );
            assert_eq!(
                client.attributes["flowmesh.executor"], executor,
                "{context}"
            );
            assert_eq!(client.attributes["flowmesh.retry"], "0", "{context}");
            assert_eq!(
                client.attributes["http.response.status_code"], "200",
                "{context}"
            );
            assert!(
                client.attributes["url.full"].ends_with("/search"),
                "{context}"
            );
            assert_eq!(
                server.attributes["flowmesh.request_id"], root.attributes["flowmesh.request_id"],
                "{context}"
            );
            if executor == "indexer" {
                shards_seen.insert(client.attributes["flowmesh.shard"].clone());
            }
            let node = by_id[client.parent.as_str()];
            assert_eq!(
                (node.name.as_str(), node.kind, node.parent.as_str()),
                (executor, SpanKind::Internal as i32, root.span_id.as_str()),
                "{context}"
            );
        }
    }
    assert_eq!(
        shards_seen,
        HashSet::from(["0".to_owned(), "1".to_owned()]),
        "{context}"
    );

    // The index request's trace reached every service as well.
    let index_services: HashSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == INDEX_TRACE)
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(index_services.len(), 4, "{context}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Trace export to an `https://` collector: every process verifies the collector's certificate
/// against `OTEL_EXPORTER_OTLP_CERTIFICATE` (a CA made by the test) and its spans arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_verified_with_the_given_ca() {
    let (dir, flow) = flow_dir("traces-tls", FLOW);
    let ca = flowmesh_shared::testing::pki::TestCa::new("collector CA");
    let ca_path = ca.write(&dir, "ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]).write(&dir, "collector");
    let tls = flowmesh_shared::tls::ServerTlsArgs {
        tls_cert: Some(cert),
        tls_key: Some(key),
        tls_client_ca: None,
    }
    .acceptor()
    .unwrap();
    let inbox = Inbox::default();
    let app = Router::new()
        .route("/v1/traces", post(traces_receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("https://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        flowmesh_shared::server::serve(
            listener,
            app,
            &flowmesh_shared::server::Limits::default(),
            tls,
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    let log = dir.join("flowmesh.log");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca_path.display().to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ("OTEL_SERVICE_NAME", String::new()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", String::new()),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", String::new()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", String::new()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
    ];
    let mut launched = launch::up(
        &flow,
        &dir,
        &env,
        Some(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let parent = format!("00-{INDEX_TRACE}-{CALLER_SPAN}-01");
    let r = Http::new()
        .send_with(
            "POST",
            &format!("{}/index", launched.gateway),
            "application/json",
            &[("traceparent", &parent)],
            serde_json::to_vec(&json!({"data": [{"id": "horse", "text": "A white horse."}]}))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    launched.stop().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    let spans = inbox.lock().unwrap().clone();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let services: HashSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == INDEX_TRACE)
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(
        services,
        HashSet::from([
            "flowmesh-gateway",
            "flowmesh-encoder",
            "flowmesh-indexer",
            "flowmesh-ranker"
        ]),
        "{spans:#?}\n--- flowmesh log ---\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
