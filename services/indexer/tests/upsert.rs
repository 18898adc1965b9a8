//! Writes are idempotent upserts: the same `/index` sent twice (a client retrying after a
//! failed or timed-out request) leaves one copy of every vector, chunks included, and a new
//! version of a document leaves none of the chunks of the older one, on every backend.

use axum::http::StatusCode;
use axum::Router;
use flowmesh_shared::testing::post;
use serde_json::{json, Value};

mod support;

use support::{app as indexer, stats};

async fn count(app: &Router) -> u64 {
    stats(app).await["count"].as_u64().expect("count")
}

/// A document of `chunks` chunks, chunk `i` of it along axis `i` (scaled by `version`).
fn chunked(id: &str, chunks: &[usize], version: f32) -> Value {
    let chunk = |i: usize| {
        let mut v = vec![0.0_f32; 8];
        v[i] = version;
        v[(i + 1) % 8] = 0.25;
        json!({"id": format!("{id}-{i}"), "embedding": v})
    };
    json!({"id": id, "chunks": chunks.iter().map(|&i| chunk(i)).collect::<Vec<_>>()})
}

/// The ids matched by a query along axis `axis`, all of them.
async fn matched(app: &Router, axis: usize) -> Vec<String> {
    let mut v = vec![0.0_f32; 8];
    v[axis] = 1.0;
    let body = json!({"parameters": {"top_k": 100}, "data": [{"id": "q", "embedding": v}]});
    let (status, out) = post(app, "search", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out["data"][0]["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn upserts_are_idempotent(args: &[&str]) {
    let app = indexer(args);
    let body = json!({"data": [
        chunked("a", &[0, 1, 2], 1.0),
        chunked("b", &[3, 4], 1.0),
        {"id": "plain", "embedding": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]},
    ]});
    for attempt in 0..3 {
        let (status, out) = post(&app, "index", &body).await;
        assert_eq!(status, StatusCode::OK, "attempt {attempt}: {out}");
        assert_eq!(
            count(&app).await,
            6,
            "{args:?}: attempt {attempt} added copies"
        );
    }
    let ids = matched(&app, 0).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        ids.len(),
        unique.len(),
        "{args:?}: duplicate matches {ids:?}"
    );
    assert_eq!(ids.len(), 6, "{args:?}: {ids:?}");

    // A new version of "a" with other chunks: the old chunks a-1 and a-2 are gone.
    let newer = json!({"data": [chunked("a", &[0, 5], 2.0)]});
    for _ in 0..2 {
        let (status, out) = post(&app, "index", &newer).await;
        assert_eq!(status, StatusCode::OK, "{out}");
    }
    assert_eq!(count(&app).await, 5, "{args:?}");
    let ids = matched(&app, 1).await;
    for stale in ["a-1", "a-2"] {
        assert!(
            !ids.iter().any(|id| id == stale),
            "{args:?}: stale {stale} in {ids:?}"
        );
    }
    assert!(ids.iter().any(|id| id == "a-5"), "{args:?}: {ids:?}");
    // The same through /update.
    let (status, out) = post(&app, "update", &newer).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(count(&app).await, 5, "{args:?}");
}

#[tokio::test]
async fn flat_upserts_are_idempotent() {
    upserts_are_idempotent(&["--backend", "flat"]).await;
}

#[tokio::test]
async fn annoy_upserts_are_idempotent() {
    upserts_are_idempotent(&["--backend", "annoy", "--rebuild-min", "1"]).await;
}

#[tokio::test]
async fn faiss_upserts_are_idempotent() {
    upserts_are_idempotent(&[
        "--backend",
        "faiss",
        "--index-key",
        "Flat",
        "--rebuild-min",
        "1",
    ])
    .await;
}
