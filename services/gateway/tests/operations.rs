//! Operations conventions: JSON logs and the access log from every binary of a Flow started by
//! `flowmesh up --log-format json`; Prometheus metrics with `# HELP` on every metric, process
//! metrics, build info, executor routes told apart; and the Grafana dashboard in docs/ asking
//! only for metrics that real services serve.
//!
//! The first test needs the service binaries next to `flowmesh` (`cargo build --workspace
//! --bins`).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser;
use serde_json::{json, Value};
use support::launch::{self, flow_dir, metric};
use support::{executor_addresses, Http, TestGateway, TestServer};

const FLOW: &str = "name: ops
executors:
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer}
  - {name: ranker, uses: ranker, with: {store: memory}}
";

/// The access lines (target `flowmesh::access`) among `lines`.
fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "flowmesh::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_an_access_line_for_every_answer_of_every_service() {
    let (dir, flow) = flow_dir("ops-logs", FLOW);
    let log = dir.join("flowmesh.log");
    let key = format!("k{}", uuid::Uuid::new_v4().simple());
    let env = [
        ("FLOWMESH_API_KEY", key.clone()),
        ("FLOWMESH_LOG_FORMAT", String::new()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut launched = launch::up_with_args(
        &flow,
        &dir,
        &["--log-format", "json"],
        &env,
        Some(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let gateway = launched.gateway.clone();
    let keyed = Http::new().with_header("api-key", &key);
    let index = keyed
        .post(
            &format!("{gateway}/index"),
            &json!({"data": [{"id": "a", "text": "a white horse"}, {"id": "b", "text": "rain"}]}),
        )
        .await;
    assert_eq!(
        index.status,
        200,
        "{}",
        String::from_utf8_lossy(&index.body)
    );
    let search = keyed
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "horse"}]}),
        )
        .await;
    assert_eq!(search.status, 200);
    // 401 at the gateway (no key), 404 (an unknown path, with the key).
    let refused = Http::new()
        .post(&format!("{gateway}/search"), &json!({"data": []}))
        .await;
    assert_eq!(refused.status, 401);
    let missing = keyed.get(&format!("{gateway}/no/such/7")).await;
    assert_eq!(missing.status, 404);
    // 401 at an executor: called without the mesh token.
    let status = keyed.get(&format!("{gateway}/status")).await.json();
    let (_, encoder) = executor_addresses(&status, "name")
        .into_iter()
        .find(|(name, _)| name == "encoder")
        .unwrap();
    let direct = Http::new()
        .post(&format!("{encoder}/search"), &json!({"data": []}))
        .await;
    assert_eq!(direct.status, 401);
    launched.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}\n{text}"));
        assert!(value.is_object(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        lines.push(value);
    }
    // Every executor process logged in JSON, and its lines say which process it is.
    for process in ["encoder/0/0", "indexer/0/0", "ranker/0/0"] {
        assert!(
            lines
                .iter()
                .any(|l| l["process"] == process && l["target"].is_string()),
            "no JSON line of {process}:\n{text}"
        );
    }
    let access = access_lines(&lines);
    let find = |process: Option<&str>, method: &str, route: &str, status: u64| {
        access
            .iter()
            .copied()
            .find(|l| {
                l["process"].as_str() == process
                    && l["method"] == method
                    && l["route"] == route
                    && l["status"].as_u64() == Some(status)
            })
            .unwrap_or_else(|| {
                panic!("no access line {process:?} {method} {route} {status}:\n{text}")
            })
    };
    let indexed = find(None, "POST", "/index", 200);
    assert_eq!(indexed["service"], "gateway");
    let id = indexed["request_id"].as_str().unwrap();
    assert_eq!(
        id.len(),
        32,
        "the gateway's generated request id: {indexed}"
    );
    assert!(indexed["duration_ms"].as_f64().unwrap() > 0.0, "{indexed}");
    assert!(indexed["request_bytes"].as_u64().unwrap() > 20, "{indexed}");
    assert!(indexed["response_bytes"].as_u64().unwrap() > 0, "{indexed}");
    assert!(indexed["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // The executors' lines carry the same request id, and their real endpoint as the route.
    let at_indexer = find(Some("indexer/0/0"), "POST", "/index", 200);
    assert_eq!(at_indexer["request_id"], id, "{at_indexer}");
    assert_eq!(at_indexer["service"], "indexer");
    find(Some("indexer/0/0"), "POST", "/search", 200);
    find(Some("encoder/0/0"), "POST", "/index", 200);
    let unauthorized = find(None, "POST", "/search", 401);
    assert_eq!(unauthorized["service"], "gateway");
    let not_found = find(None, "GET", "unmatched", 404);
    assert_eq!(not_found["path"], "/no/such/7");
    find(Some("encoder/0/0"), "POST", "/search", 401);
    // Neither the API key nor the mesh token is ever logged.
    assert!(!text.contains(&key), "the API key was logged");
    assert!(
        !text.contains(launch::mesh_token()),
        "the mesh token was logged"
    );
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, grouping
/// clauses and range selectors that are not functions or keywords.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        // Aggregations, which may take `by (...)` before their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    // Drop what is inside {...}, [...] and quotes, and the (...) after by/without.
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_quote = false;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_quote = !in_quote,
            '{' if !in_quote => depth_brace += 1,
            '}' if !in_quote => depth_brace -= 1,
            '[' if !in_quote => depth_bracket += 1,
            ']' if !in_quote => depth_bracket -= 1,
            _ if in_quote || depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']' | '"') {
            cleaned.push(' ');
        }
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring") {
                skip_group = true;
            } else if next == Some(&'(') || KEYWORDS.contains(&word.as_str()) {
                // A function or an aggregation.
            } else {
                names.insert(word);
            }
        } else if c == '(' && skip_group {
            // Skip the label list of by/without/on/ignoring.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
        } else {
            if c.is_ascii_digit() {
                // A number (or a duration such as 5m): skip it whole.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            i += 1;
        }
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// The metric names sampled in Prometheus text.
fn sampled_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promql_names_are_read_from_expressions() {
    let names = promql_metrics(
        "histogram_quantile(0.99, sum by (le, path) (rate(flowmesh_http_request_duration_seconds_bucket{service=~\"$service\", path!=\"/metrics\"}[5m])))",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["flowmesh_http_request_duration_seconds_bucket"]
    );
    let names = promql_metrics(
        "sum(rate(a_total{x=\"1\"}[1m])) / on (job) group_left sum(b_count) > 0.5 or vector(0)",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_total", "b_count"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_help_process_metrics_endpoint_routes_and_what_the_dashboard_reads() {
    // Real services in this process: one recorder, so the gateway's /metrics shows them all.
    // The encoder batches (the `hash` model alone would run inline, without batch metrics).
    let batching = flowmesh_encoder::BatchConfig {
        workers: 1,
        max_batch: 32,
        max_tokens: 1 << 20,
        max_wait: std::time::Duration::from_millis(1),
        queue_capacity: 64,
        by_length: true,
    };
    let model = std::sync::Arc::new(flowmesh_encoder::HashModel::new(64).unwrap());
    let encoder = flowmesh_encoder::router(
        std::sync::Arc::new(flowmesh_encoder::Encoder::batched(model, &batching).unwrap()),
        flowmesh_shared::health::Readiness::ready(),
        &flowmesh_shared::Limits::with_max_body_bytes(1 << 20),
    );
    let indexer = flowmesh_indexer::app(&flowmesh_indexer::Config::parse_from(["i"])).unwrap();
    let ranker = flowmesh_ranker::app(&flowmesh_ranker::Config::parse_from(["r"])).unwrap();
    let enc = TestServer::start(encoder).await;
    let idx = TestServer::start(indexer).await;
    let rank = TestServer::start(ranker).await;
    let gateway = TestGateway::start(&format!(
        "executors:\n\
         - {{name: encoder, uses: encoder, addresses: ['{}']}}\n\
         - {{name: indexer, uses: indexer, addresses: ['{}']}}\n\
         - {{name: ranker, uses: ranker, addresses: ['{}']}}\n",
        enc.base(),
        idx.base(),
        rank.base()
    ))
    .await;
    let http = Http::new();
    for round in 0..3 {
        let docs: Vec<Value> = (0..4)
            .map(|i| json!({"id": format!("d{round}-{i}"), "text": format!("text {round} {i}")}))
            .collect();
        let r = http
            .post(&gateway.url("/index"), &json!({ "data": docs }))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = http
            .post(
                &gateway.url("/search"),
                &json!({"data": [{"text": "text 1"}]}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(http.get(&gateway.url("/nothing")).await.status, 404);
    let text = http.get(&gateway.url("/metrics")).await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8(text.body.to_vec()).unwrap();

    // Every metric family has its HELP and TYPE.
    let helped: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let typed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(typed.len() >= 15, "{text}");
    for family in &typed {
        assert!(helped.contains(family), "{family} has no # HELP:\n{text}");
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = metric(&text, name, &[]).unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    assert!(metric(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    for service in ["gateway", "encoder", "indexer", "ranker"] {
        let labels = [("service", service), ("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(
            metric(&text, "flowmesh_build_info", &labels),
            Some(1.0),
            "{service}:\n{text}"
        );
    }
    // The executors' calls are labelled with their endpoint: three of each reached each one.
    for service in ["encoder", "indexer", "ranker"] {
        for path in ["/index", "/search"] {
            let labels = [("service", service), ("path", path), ("status", "200")];
            assert_eq!(
                metric(&text, "flowmesh_http_requests_total", &labels),
                Some(3.0),
                "{service} {path}:\n{text}"
            );
            assert_eq!(
                metric(
                    &text,
                    "flowmesh_http_request_duration_seconds_count",
                    &labels
                ),
                Some(3.0),
                "{service} {path}:\n{text}"
            );
        }
    }
    assert!(!text.contains("path=\"/{endpoint}\""), "{text}");
    let unmatched = [
        ("service", "gateway"),
        ("path", "unmatched"),
        ("status", "404"),
    ];
    assert_eq!(
        metric(&text, "flowmesh_http_requests_total", &unmatched),
        Some(1.0)
    );
    // The batch size is a histogram whose count and sum agree with its buckets.
    let count = metric(&text, "flowmesh_encoder_batch_size_count", &[]).unwrap();
    assert!(count >= 6.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "flowmesh_encoder_batch_size_bucket",
            &[("le", "+Inf")]
        ),
        Some(count)
    );
    assert!(text.contains("# TYPE flowmesh_encoder_batch_size histogram"));

    // The dashboard reads only metrics these services serve.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let served = sampled_names(&text);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(
                served.contains(&name),
                "the dashboard's {expr:?} reads {name}, which no service serves:\n{text}"
            );
            used.insert(name);
        }
    }
    for needed in [
        "flowmesh_http_requests_total",
        "flowmesh_http_request_duration_seconds_bucket",
        "flowmesh_encoder_batch_size_bucket",
        "flowmesh_index_vectors",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}
