//! The indexer's routes, driven with `oneshot` requests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use flowmesh_indexer::{Indexer, Metric, Shard, VectorIndex};
use flowmesh_shared::server::Executor;
use flowmesh_shared::testing::{post, send};
use flowmesh_shared::{Document, Envelope};
use serde_json::{json, Value};

mod support;

use support::{app as indexer, stats};

fn doc(id: &str, embedding: &[f32]) -> Value {
    json!({"id": id, "embedding": embedding})
}

/// (id, score) of the matches of `doc`.
fn matches(doc: &Value) -> Vec<(String, f64)> {
    doc["matches"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let id = m["id"].as_str().expect("match id").to_owned();
                    (id, m["score"].as_f64().expect("match score"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ids(doc: &Value) -> Vec<String> {
    matches(doc).into_iter().map(|(id, _)| id).collect()
}

async fn index_three(app: &Router) {
    let body = json!({"data": [
        doc("a", &[1.0, 0.0, 0.0]),
        doc("b", &[0.0, 1.0, 0.0]),
        doc("c", &[0.75, 0.75, 0.125]),
    ]});
    let (status, out) = post(app, "index", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["data"], body["data"], "index answers with the request");
}

#[tokio::test]
async fn search_finds_the_identical_vector_first() {
    let app = indexer(&[]);
    index_three(&app).await;
    let (status, out) = post(
        &app,
        "search",
        &json!({"data": [doc("q", &[2.0, 0.0, 0.0])]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let found = matches(&out["data"][0]);
    assert_eq!(found.len(), 3);
    assert_eq!(found[0].0, "a");
    assert!((found[0].1 - 1.0).abs() < 1e-6, "{found:?}");
    assert_eq!(found[1].0, "c");
    assert!(found.windows(2).all(|w| w[0].1 >= w[1].1), "{found:?}");
    // The query keeps its own fields.
    assert_eq!(out["data"][0]["embedding"], json!([2.0, 0.0, 0.0]));
}

#[tokio::test]
async fn top_k_is_respected() {
    let app = indexer(&[]);
    let docs: Vec<Value> = (0..30)
        .map(|i| doc(&format!("d{i:02}"), &[1.0, i as f32 / 10.0]))
        .collect();
    let (status, _) = post(&app, "index", &json!({"data": docs})).await;
    assert_eq!(status, StatusCode::OK);
    let query = json!({"data": [doc("q", &[1.0, 0.0])]});
    let (_, out) = post(&app, "search", &query).await;
    assert_eq!(matches(&out["data"][0]).len(), 10, "default top_k");
    let mut query = query;
    query["parameters"] = json!({"top_k": 3});
    let (_, out) = post(&app, "search", &query).await;
    assert_eq!(ids(&out["data"][0]), ["d00", "d01", "d02"]);
    query["parameters"] = json!({"top_k": 1000});
    let (_, out) = post(&app, "search", &query).await;
    assert_eq!(
        matches(&out["data"][0]).len(),
        30,
        "a top_k beyond what is stored returns everything"
    );
    // Beyond --max-top-k: 400 naming the parameter and the flag, not an allocation.
    query["parameters"] = json!({"top_k": 1_000_000_000_000_u64});
    let (status, out) = post(&app, "search", &query).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["kind"], "invalid_parameter", "{out}");
    let error = out["error"].as_str().unwrap_or("");
    assert!(error.contains("--max-top-k"), "{out}");
}

#[tokio::test]
async fn wrong_dimension_is_a_400_and_loses_nothing() {
    let app = indexer(&[]);
    index_three(&app).await;
    let body = json!({"data": [doc("a", &[9.0, 9.0, 9.0]), doc("bad", &[1.0, 2.0])]});
    let (status, out) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["kind"], "bad_request");
    let message = out["error"].as_str().expect("message");
    assert!(
        message.contains("\"bad\"") && message.contains("dimension 2"),
        "{message}"
    );
    assert_eq!(
        stats(&app).await,
        json!({"count": 3, "dimension": 3, "backend": "flat", "metric": "cosine", "durable": false})
    );
    // "a" was not overwritten by the refused request.
    let (_, found) = post(
        &app,
        "search",
        &json!({"data": [doc("q", &[1.0, 0.0, 0.0])], "parameters": {"top_k": 1}}),
    )
    .await;
    let found = matches(&found["data"][0]);
    assert_eq!(found[0].0, "a");
    assert!((found[0].1 - 1.0).abs() < 1e-6);

    let (status, out) = post(&app, "search", &json!({"data": [doc("q", &[1.0])]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
}

#[tokio::test]
async fn missing_embeddings_are_400s_naming_the_document() {
    let app = indexer(&[]);
    for endpoint in ["index", "update", "search"] {
        let body = json!({"data": [{"id": "root", "chunks": [{"id": "c-without", "text": "x"}]}]});
        let (status, out) = post(&app, endpoint, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint}");
        assert!(
            out["error"]
                .as_str()
                .expect("message")
                .contains("c-without"),
            "{out}"
        );
    }
    let (status, out) = post(&app, "index", &json!({"data": [{"embedding": [1.0]}]})).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a document without an id: {out}"
    );
    assert_eq!(stats(&app).await["count"], 0);
}

#[tokio::test]
async fn non_finite_values_are_refused() {
    let indexer = Indexer::new(Shard::flat_in_memory(Metric::Cosine));
    for bad in [f32::NAN, f32::INFINITY] {
        let mut d = Document::text("nan-doc", "x");
        d.embedding = Some(vec![1.0, bad]);
        let err = indexer
            .call(
                flowmesh_shared::Endpoint::Index,
                Envelope::new(vec![d]),
                flowmesh_shared::Deadline::NONE,
            )
            .await
            .expect_err("refused");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("nan-doc"), "{err}");
    }
    assert_eq!(indexer.shard().stats().count, 0);
}

#[tokio::test]
async fn chunks_are_indexed_searched_and_deleted_with_their_document() {
    let app = indexer(&[]);
    let body = json!({"data": [
        {"id": "doc1", "text": "x", "chunks": [
            {"id": "doc1-0", "embedding": [1.0, 0.0]},
            {"id": "doc1-1", "parent_id": "doc1", "embedding": [0.0, 1.0]},
        ]},
        {"id": "doc2", "chunks": [{"id": "doc2-0", "embedding": [1.0, 0.1]}]},
        doc("solo", &[1.0, 0.05]),
    ]});
    let (status, _) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats(&app).await["count"], 4, "leaves only");

    let query = json!({"data": [{"id": "q", "chunks": [
        {"id": "q-0", "embedding": [1.0, 0.0]},
        {"id": "q-1", "embedding": [0.0, 1.0]},
    ]}], "parameters": {"top_k": 2}});
    let (_, out) = post(&app, "search", &query).await;
    let q = &out["data"][0];
    assert!(
        q.get("matches").is_none(),
        "the root of a chunked query gets no matches"
    );
    assert_eq!(ids(&q["chunks"][0]), ["doc1-0", "solo"]);
    assert_eq!(
        q["chunks"][0]["matches"][0]["parent_id"], "doc1",
        "filled from the enclosing doc"
    );
    assert!(q["chunks"][0]["matches"][1].get("parent_id").is_none());
    assert_eq!(ids(&q["chunks"][1])[0], "doc1-1");

    // Deleting the root removes its stored chunks; unknown ids are fine.
    let (status, _) = post(
        &app,
        "delete",
        &json!({"data": [{"id": "doc1"}, {"id": "nope"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats(&app).await["count"], 2);
    let (_, out) = post(&app, "search", &query).await;
    for chunk in out["data"][0]["chunks"].as_array().expect("chunks") {
        assert!(
            ids(chunk).iter().all(|id| !id.starts_with("doc1")),
            "{chunk}"
        );
    }
}

#[tokio::test]
async fn update_replaces_a_documents_chunks() {
    let app = indexer(&[]);
    let v1 = json!({"data": [{"id": "d", "chunks": [
        {"id": "d-a", "embedding": [1.0, 0.0]},
        {"id": "d-b", "embedding": [0.0, 1.0]},
    ]}]});
    post(&app, "index", &v1).await;
    let v2 = json!({"data": [{"id": "d", "chunks": [{"id": "d-c", "embedding": [1.0, 1.0]}]}]});
    let (status, _) = post(&app, "update", &v2).await;
    assert_eq!(status, StatusCode::OK);
    let (_, out) = post(&app, "search", &json!({"data": [doc("q", &[1.0, 0.0])]})).await;
    assert_eq!(ids(&out["data"][0]), ["d-c"]);
}

#[tokio::test]
async fn l2_orders_by_distance() {
    let app = indexer(&["--metric", "l2"]);
    let body = json!({"data": [
        doc("far", &[10.0, 0.0]),
        doc("near", &[1.0, 1.0]),
        doc("same", &[1.0, 0.0]),
        // Same direction as the query, far away: first under cosine, not under L2.
        doc("aligned", &[5.0, 0.0]),
    ]});
    post(&app, "index", &body).await;
    let (_, out) = post(&app, "search", &json!({"data": [doc("q", &[1.0, 0.0])]})).await;
    let found = matches(&out["data"][0]);
    let order: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, ["same", "near", "aligned", "far"]);
    let scores: Vec<f64> = found.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        scores,
        [0.0, -1.0, -4.0, -9.0],
        "minus the Euclidean distance"
    );
    assert_eq!(stats(&app).await["metric"], "l2");
}

#[tokio::test]
async fn ties_are_broken_by_the_smaller_id() {
    let app = indexer(&[]);
    let body =
        json!({"data": [doc("b", &[1.0, 0.0]), doc("c", &[1.0, 0.0]), doc("a", &[2.0, 0.0])]});
    post(&app, "index", &body).await;
    let (_, out) = post(&app, "search", &json!({"data": [doc("q", &[1.0, 0.0])]})).await;
    assert_eq!(ids(&out["data"][0]), ["a", "b", "c"]);
}

#[tokio::test]
async fn other_endpoints_pass_through_unchanged() {
    let app = indexer(&[]);
    let body = json!({"parameters": {"x": 1}, "data": [{"id": "a", "text": "no embedding"}]});
    let (status, out) = post(&app, "custom", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["data"], body["data"]);
    assert_eq!(out["parameters"], body["parameters"]);
    assert_eq!(
        stats(&app).await,
        json!({"count": 0, "dimension": null, "backend": "flat", "metric": "cosine", "durable": false})
    );
}

/// `openapi/indexer.json` is generated from the code and documents exactly the routes the
/// router serves; run with `UPDATE_OPENAPI=1` to refresh it.
#[tokio::test]
async fn committed_openapi_matches_the_code() {
    let paths = ["/{endpoint}", "/stats", "/livez", "/readyz", "/metrics"];
    let app = indexer(&[]);
    flowmesh_shared::testing::assert_openapi("indexer", &flowmesh_indexer::openapi(), &paths, &app)
        .await;
}

#[tokio::test]
async fn openapi_is_served() {
    let app = indexer(&[]);
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let (status, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["info"]["title"], "flowmesh indexer");
}

#[tokio::test]
async fn updating_an_unknown_document_is_a_404_naming_it() {
    let app = indexer(&[]);
    index_three(&app).await;
    let body = json!({"data": [doc("a", &[0.0, 0.0, 1.0]), doc("nope", &[1.0, 1.0, 1.0])]});
    let (status, out) = post(&app, "update", &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{out}");
    assert_eq!(out["kind"], "not_found");
    assert!(
        out["error"].as_str().expect("message").contains("\"nope\""),
        "{out}"
    );
    // Nothing changed: "a" still answers for its old vector.
    let (_, found) = post(
        &app,
        "search",
        &json!({"data": [doc("q", &[1.0, 0.0, 0.0])]}),
    )
    .await;
    assert_eq!(ids(&found["data"][0])[0], "a");
    assert_eq!(stats(&app).await["count"], 3);
}

/// Three documents with ten chunks each close to the query, and ten single-chunk documents
/// further away; a one-chunk query with `top_k` 5.
async fn index_crowded(app: &Router) -> Value {
    let mut data = Vec::new();
    for d in 0..3 {
        let chunks: Vec<Value> = (0..10)
            .map(|c| {
                let wobble = 0.001 * (d * 10 + c) as f32;
                json!({"id": format!("near{d}-{c}"), "embedding": [1.0, wobble, 0.0]})
            })
            .collect();
        data.push(json!({"id": format!("near{d}"), "chunks": chunks}));
    }
    for d in 0..10 {
        let y = 0.5 + 0.01 * d as f32;
        data.push(json!({"id": format!("far{d}"), "chunks": [
            {"id": format!("far{d}-0"), "embedding": [1.0, y, 0.0]}]}));
    }
    let (status, out) = post(app, "index", &json!({ "data": data })).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let query = json!({"data": [{"id": "q", "chunks": [{"id": "q-0", "embedding": [1.0, 0.0, 0.0]}]}],
        "parameters": {"top_k": 5}});
    let (status, out) = post(app, "search", &query).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

fn match_parents(out: &Value) -> Vec<String> {
    out["data"][0]["chunks"][0]["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| m["parent_id"].as_str().expect("parent").to_owned())
        .collect()
}

#[tokio::test]
async fn distinct_parents_gives_top_k_documents_when_chunks_crowd_the_top() {
    let plain = indexer(&[]);
    let parents = match_parents(&index_crowded(&plain).await);
    assert_eq!(
        parents, ["near0"; 5],
        "without the flag the best chunks win"
    );

    let app = indexer(&["--distinct-parents"]);
    let out = index_crowded(&app).await;
    let parents = match_parents(&out);
    // The best chunk of each document, best first: the 30 near chunks fill more than the first
    // page of candidates (4 x 5), so the search has to fetch again to find the far ones.
    assert_eq!(
        parents,
        ["near0", "near1", "near2", "far0", "far1"],
        "{out}"
    );
    let ids: Vec<&str> = out["data"][0]["chunks"][0]["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["near0-0", "near1-0", "near2-0", "far0-0", "far1-0"]);
}

#[tokio::test]
async fn distinct_parents_with_fewer_documents_than_top_k_returns_them_all() {
    let app = indexer(&["--distinct-parents"]);
    let body = json!({"data": [
        {"id": "a", "chunks": [{"id": "a-0", "embedding": [1.0, 0.0]}, {"id": "a-1", "embedding": [0.9, 0.1]}]},
        {"id": "b", "embedding": [0.0, 1.0]},
    ]});
    let (status, out) = post(&app, "index", &body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let query =
        json!({"data": [{"id": "q", "embedding": [1.0, 0.0]}], "parameters": {"top_k": 10}});
    let (status, out) = post(&app, "search", &query).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(ids(&out["data"][0]), ["a-0", "b"]);
}

/// The served document's example body works as it is, as Swagger UI's "Try it out" sends it:
/// on an empty shard, and on a shard whose vectors have another dimension than the committed
/// example's (the served example takes the shard's).
#[tokio::test]
async fn the_served_example_body_is_accepted_as_it_is() {
    use flowmesh_shared::testing::served_example;

    let app = indexer(&[]);
    let example = served_example(&app, "/{endpoint}").await;
    let (status, out) = post(&app, "search", &example).await;
    assert_eq!(status, StatusCode::OK, "search on an empty shard: {out}");
    for endpoint in ["index", "update", "search"] {
        let (status, out) = post(&app, endpoint, &example).await;
        assert_eq!(status, StatusCode::OK, "{endpoint}: {out}");
    }
    let (_, out) = post(&app, "search", &example).await;
    assert_eq!(ids(&out["data"][0]), ["doc-1"], "{out}");

    let app = indexer(&[]);
    index_three(&app).await;
    let example = served_example(&app, "/{endpoint}").await;
    assert_eq!(
        example["data"][0]["embedding"].as_array().map(Vec::len),
        Some(3),
        "the example takes the shard's dimension: {example}"
    );
    for endpoint in ["search", "index", "update", "delete"] {
        let (status, out) = post(&app, endpoint, &example).await;
        assert_eq!(status, StatusCode::OK, "{endpoint}: {out}");
    }
}

/// Swagger UI and the document stay open on an indexer with a mesh token, as on the gateway with
/// API keys; the work routes still need the token.
#[tokio::test]
async fn swagger_ui_is_open_with_a_mesh_token() {
    use flowmesh_shared::secret::{Secret, SecretSet};
    use flowmesh_shared::server::require_mesh_token;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let token = format!("mesh-{:x}{nanos:x}", std::process::id());
    let app = indexer(&[]).layer(require_mesh_token(
        "indexer",
        SecretSet::new(vec![Secret::new(&token)]),
    ));
    flowmesh_shared::testing::assert_swagger_ui(&app).await;
    let example = flowmesh_shared::testing::served_example(&app, "/{endpoint}").await;
    let (status, out) = post(&app, "search", &example).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{out}");
}
