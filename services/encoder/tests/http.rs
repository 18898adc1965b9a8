//! The encoder's routes, driven with `oneshot` requests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use clap::Parser;
use flowmesh_encoder::{app, Config};
use flowmesh_shared::testing::{post, post_error, post_ok};
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

/// The embedding `/{endpoint}` gives `text` sent alone.
async fn embedding_alone(app: &Router, endpoint: &str, text: &str) -> Vec<f32> {
    let out = post_ok(
        app,
        endpoint,
        &json!({"data": [{"id": "alone", "text": text}]}),
    )
    .await;
    embedding(&out["data"][0])
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
    let out = post_ok(&app, "index", &body).await;
    let [a, b, c] = [0, 1, 2].map(|i| embedding(&out["data"][i]));
    assert_eq!(a.len(), 64, "default dimension");
    assert_eq!(a, b);
    assert_ne!(a, c);
    for v in [&a, &c] {
        assert!((norm(v) - 1.0).abs() < 1e-5, "norm {}", norm(v));
    }
    // Other requests, other endpoints, same vector: nothing depends on the batch.
    assert_eq!(
        embedding_alone(&app, "search", "the quick brown fox").await,
        a
    );
}

#[tokio::test]
async fn dim_flag_sets_the_dimension() {
    let app = encoder(&["--model", "hash", "--dim", "128"]);
    assert_eq!(embedding_alone(&app, "update", "x y z").await.len(), 128);
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
    let out = post_ok(&app, "index", &body).await;
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
    assert_eq!(embedding_alone(&app, "index", "second").await, second);
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

    let query = json!({"data": [{"id": "q"}]});
    let message = post_error(&app, "search", &query, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("\"q\""), "{message}");
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
        assert_eq!(post_ok(&app, endpoint, &body).await, body, "{endpoint}");
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
