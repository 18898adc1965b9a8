//! The encoder's routes, driven with `oneshot` requests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use clap::Parser;
use flowmesh_encoder::{app, Config};
use flowmesh_shared::testing::post;
use serde_json::{json, Value};
use tower::ServiceExt;

fn encoder(args: &[&str]) -> Router {
    let argv = std::iter::once("flowmesh-encoder").chain(args.iter().copied());
    let config = Config::try_parse_from(argv).expect("valid flags");
    app(&config).expect("valid configuration")
}

fn embedding(doc: &Value) -> Vec<f32> {
    doc["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {doc}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn same_text_same_vector_of_unit_norm() {
    let app = encoder(&[]);
    let body = json!({"data": [
        {"id": "a", "text": "the quick brown fox"},
        {"id": "b", "text": "the quick brown fox"},
        {"id": "c", "text": "a lazy dog sleeps"},
    ]});
    let (status, out) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let [a, b, c] = [0, 1, 2].map(|i| embedding(&out["data"][i]));
    assert_eq!(a.len(), 64, "default dimension");
    assert_eq!(a, b);
    assert_ne!(a, c);
    for v in [&a, &c] {
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
    }
    // Other requests, other endpoints, same vector: nothing depends on the batch.
    let (_, again) = post(
        &app,
        "search",
        &json!({"data": [{"id": "q", "text": "the quick brown fox"}]}),
    )
    .await;
    assert_eq!(embedding(&again["data"][0]), a);
}

#[tokio::test]
async fn dim_flag_sets_the_dimension() {
    let app = encoder(&["--model", "hash", "--dim", "128"]);
    let (status, out) = post(
        &app,
        "update",
        &json!({"data": [{"id": "a", "text": "x y z"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(embedding(&out["data"][0]).len(), 128);
}

#[tokio::test]
async fn chunks_are_embedded_and_not_the_root() {
    let app = encoder(&[]);
    let body = json!({"parameters": {"top_k": 3}, "data": [{
        "id": "doc",
        "text": "first sentence. second sentence.",
        "tags": {"lang": "en"},
        "chunks": [
            {"id": "doc-0", "parent_id": "doc", "text": "first sentence."},
            {"id": "doc-1", "parent_id": "doc", "chunks": [
                {"id": "doc-1-0", "parent_id": "doc-1", "text": "second"},
                {"id": "doc-1-1", "parent_id": "doc-1", "text": "sentence."},
            ]},
        ],
    }]});
    let (status, out) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let doc = &out["data"][0];
    assert!(
        doc.get("embedding").is_none(),
        "root got an embedding: {doc}"
    );
    assert_eq!(doc["tags"], json!({"lang": "en"}));
    assert_eq!(out["parameters"], json!({"top_k": 3}));
    let first = embedding(&doc["chunks"][0]);
    assert!(
        doc["chunks"][1].get("embedding").is_none(),
        "inner chunk is not a leaf"
    );
    let second = embedding(&doc["chunks"][1]["chunks"][0]);
    let third = embedding(&doc["chunks"][1]["chunks"][1]);
    assert_ne!(first, second);
    assert_ne!(second, third);
    // A leaf's embedding is the embedding of its own text.
    let (_, alone) = post(
        &app,
        "index",
        &json!({"data": [{"id": "x", "text": "second"}]}),
    )
    .await;
    assert_eq!(embedding(&alone["data"][0]), second);
}

#[tokio::test]
async fn missing_text_is_a_400_naming_the_document() {
    let app = encoder(&[]);
    let body = json!({"data": [
        {"id": "ok", "text": "fine"},
        {"id": "root", "chunks": [{"id": "chunk-without-text", "blob": "AAAA"}]},
    ]});
    let (status, out) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["kind"], "bad_request");
    let message = out["error"].as_str().expect("error message");
    assert!(message.contains("chunk-without-text"), "{message}");

    let (status, out) = post(&app, "search", &json!({"data": [{"id": "q"}]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        out["error"].as_str().expect("message").contains("\"q\""),
        "{out}"
    );
}

#[tokio::test]
async fn other_endpoints_pass_through_unchanged() {
    let app = encoder(&[]);
    let body = json!({
        "header": {"request_id": "r1", "exec_endpoint": "/delete"},
        "parameters": {"x": 1},
        "data": [{"id": "a"}, {"id": "b", "text": "kept as is"}],
    });
    for endpoint in ["delete", "status", "custom"] {
        let (status, out) = post(&app, endpoint, &body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(out, body, "{endpoint}");
    }
}

#[tokio::test]
async fn malformed_body_is_a_400() {
    let app = encoder(&[]);
    let request = Request::post("/index")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn invalid_dimension_is_rejected_before_serving() {
    for dim in ["0", "100000"] {
        let config = Config::try_parse_from(["flowmesh-encoder", "--dim", dim]).expect("parses");
        let err = app(&config).expect_err("rejected");
        assert!(err.to_string().contains("between 1 and 65536"), "{err}");
    }
    assert!(Config::try_parse_from(["flowmesh-encoder", "--model", "bert"]).is_err());
}
