//! The ranker's routes and executor, driven with `oneshot` requests and direct calls.

use axum::http::StatusCode;
use axum::Router;
use clap::Parser;
use flowmesh_ranker::{app, Aggregation, DocStore, MemoryStore, Ranker};
use flowmesh_shared::server::Executor;
use flowmesh_shared::testing::{post, post_ok};
use flowmesh_shared::{Document, Envelope};
use serde_json::{json, Value};

fn ranker(args: &[&str]) -> Router {
    let argv = std::iter::once("flowmesh-ranker").chain(args.iter().copied());
    let config = flowmesh_ranker::Config::try_parse_from(argv).expect("valid flags");
    app(&config).expect("valid configuration")
}

/// A ranker whose store holds [`corpus`].
async fn ranker_with_corpus(args: &[&str]) -> Router {
    let app = ranker(args);
    let (status, out) = post(&app, "index", &corpus()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    app
}

fn corpus() -> Value {
    json!({"data": [
        {"id": "a", "text": "alpha text", "tags": {"n": 1}, "embedding": [1.0],
         "chunks": [{"id": "a-0", "parent_id": "a", "text": "alpha", "embedding": [1.0]}]},
        {"id": "b", "text": "beta text", "uri": "data:text/plain,beta", "blob": "YmV0YQ=="},
        {"id": "c", "text": "gamma text"},
    ]})
}

/// Matches of two query chunks over stored chunks of a, b and c (exact binary fractions).
fn query(top_k: u64) -> Value {
    let m =
        |id: &str, parent: &str, score: f64| json!({"id": id, "parent_id": parent, "score": score});
    json!({"parameters": {"top_k": top_k}, "data": [{
        "id": "q", "text": "the query", "tags": {"keep": true},
        "chunks": [
            {"id": "q-0", "text": "first", "matches": [
                m("a-0", "a", 0.75), m("b-0", "b", 0.5), m("c-0", "c", 0.6875),
            ]},
            {"id": "q-1", "text": "second", "matches": [
                m("a-1", "a", 0.25), m("b-1", "b", 0.625), m("b-2", "b", 0.375),
                // No parent: the match is its own document, unknown to the store (indexed, but
                // its write to the store failed): never answered.
                {"id": "orphan", "score": 0.125},
            ]},
        ],
    }]})
}

/// (id, score) of the query's matches.
fn ranked(out: &Value) -> Vec<(String, f64)> {
    out["data"][0]["matches"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_str().expect("id").to_owned(),
                        m["score"].as_f64().expect("score"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_ranked(out: &Value, expected: &[(&str, f64)]) {
    let got = ranked(out);
    let got_ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    let expected_ids: Vec<&str> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(got_ids, expected_ids, "{got:?}");
    for ((_, g), (_, e)) in got.iter().zip(expected) {
        assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
    }
}

#[tokio::test]
async fn every_aggregation_ranks_parent_documents() {
    let cases: [(&str, &[(&str, f64)]); 4] = [
        ("max", &[("a", 0.75), ("c", 0.6875), ("b", 0.625)]),
        ("min", &[("c", 0.6875), ("b", 0.375), ("a", 0.25)]),
        // a and b tie at 0.5: the smaller id first.
        ("mean", &[("c", 0.6875), ("a", 0.5), ("b", 0.5)]),
        ("sum", &[("b", 1.5), ("a", 1.0), ("c", 0.6875)]),
    ];
    for (aggregation, expected) in cases {
        let app = ranker_with_corpus(&["--aggregation", aggregation]).await;
        let (status, out) = post(&app, "search", &query(10)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_ranked(&out, expected);
    }
}

#[tokio::test]
async fn reverse_ranks_lower_scores_first() {
    let app = ranker_with_corpus(&["--aggregation", "min", "--reverse"]).await;
    let (_, out) = post(&app, "search", &query(10)).await;
    assert_ranked(&out, &[("a", -0.25), ("b", -0.375), ("c", -0.6875)]);
}

#[tokio::test]
async fn top_k_cuts_the_document_matches() {
    let app = ranker_with_corpus(&["--aggregation", "sum"]).await;
    let (_, out) = post(&app, "search", &query(2)).await;
    assert_ranked(&out, &[("b", 1.5), ("a", 1.0)]);
}

#[tokio::test]
async fn matches_are_filled_from_the_store_and_chunk_matches_cleared() {
    let app = ranker(&[]);
    let (status, out) = post(&app, "index", &corpus()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        out["data"],
        corpus()["data"],
        "index answers with the request"
    );

    let (_, out) = post(&app, "search", &query(10)).await;
    let q = &out["data"][0];
    assert_eq!(q["text"], "the query");
    assert_eq!(q["tags"], json!({"keep": true}));
    assert_eq!(q["chunks"][1]["text"], "second");
    for chunk in q["chunks"].as_array().expect("chunks") {
        assert!(
            chunk.get("matches").is_none(),
            "chunk matches left in: {chunk}"
        );
    }
    let matches = q["matches"].as_array().expect("matches");
    let a = &matches[0];
    assert_eq!(a["id"], "a");
    assert_eq!(a["text"], "alpha text");
    assert_eq!(a["tags"], json!({"n": 1}));
    assert!(
        a.get("embedding").is_none() && a.get("chunks").is_none(),
        "{a}"
    );
    let b = matches.iter().find(|m| m["id"] == "b").expect("b");
    assert_eq!(b["uri"], "data:text/plain,beta");
    assert!(b.get("blob").is_none(), "blobs only on request: {b}");
    // With `include_blob`, the stored blob comes too.
    let mut asking = query(10);
    asking["parameters"]["include_blob"] = json!(true);
    let (_, with_blob) = post(&app, "search", &asking).await;
    let b = with_blob["data"][0]["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .find(|m| m["id"] == "b")
        .expect("b")
        .clone();
    assert_eq!(b["blob"], "YmV0YQ==");
    assert!(
        !matches.iter().any(|m| m["id"] == "orphan"),
        "a match without stored content is left out: {matches:?}"
    );
}

/// A document is searchable in the indexer a moment before the ranker stores it (the next step
/// of its index request). A search in between waits for it, instead of answering fewer than
/// `top_k` matches, and gives it its rank; one that never comes is left out, and later
/// searches do not wait for it again.
#[tokio::test]
async fn a_match_stored_while_the_search_waits_takes_its_rank() {
    let app = ranker_with_corpus(&["--aggregation", "max"]).await;
    // `late` ranks second, and is not stored yet: with `orphan`, the query has 4 stored
    // candidates for 4 matches, so it waits.
    let mut late = query(4);
    late["data"][0]["chunks"][0]["matches"]
        .as_array_mut()
        .expect("matches")
        .push(json!({"id": "late-0", "parent_id": "late", "score": 0.71875}));
    let search = tokio::spawn({
        let (app, late) = (app.clone(), late.clone());
        async move { post(&app, "search", &late).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let (status, _) = post(
        &app,
        "index",
        &json!({"data": [{"id": "late", "text": "stored late"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, out) = search.await.expect("search task");
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_ranked(
        &out,
        &[("a", 0.75), ("late", 0.71875), ("c", 0.6875), ("b", 0.625)],
    );
    assert_eq!(out["data"][0]["matches"][1]["text"], "stored late");

    // With one more candidate than it needs, a query does not wait: the next one takes the
    // place of one not stored.
    let started = std::time::Instant::now();
    let (_, out) = post(&app, "search", &query(3)).await;
    assert_ranked(&out, &[("a", 0.75), ("c", 0.6875), ("b", 0.625)]);
    let quick = started.elapsed();

    // `never` ranks first and is never stored: with 5 matches asked of 4 stored candidates,
    // the search waits, then leaves it out; the second search does not wait for it again.
    let mut never = late.clone();
    never["parameters"]["top_k"] = json!(5);
    never["data"][0]["chunks"][0]["matches"]
        .as_array_mut()
        .expect("matches")
        .push(json!({"id": "never-0", "parent_id": "never", "score": 0.875}));
    let started = std::time::Instant::now();
    let (_, out) = post(&app, "search", &never).await;
    let first = started.elapsed();
    assert_ranked(
        &out,
        &[("a", 0.75), ("late", 0.71875), ("c", 0.6875), ("b", 0.625)],
    );
    assert!(
        first > quick + std::time::Duration::from_millis(150),
        "a short query waits for its missing candidates: {first:?} against {quick:?}"
    );
    let started = std::time::Instant::now();
    let (_, again) = post(&app, "search", &never).await;
    assert_eq!(ranked(&again), ranked(&out));
    assert!(
        started.elapsed() < first / 2,
        "the second search waited again: {first:?} then {:?}",
        started.elapsed()
    );
}

/// Two matches stored while a search waits for them: the query keeps its `top_k` best, in rank
/// order, not every match that arrived.
#[tokio::test]
async fn late_matches_never_exceed_top_k() {
    let app = ranker_with_corpus(&["--aggregation", "max"]).await;
    let mut q = query(4);
    let matches = q["data"][0]["chunks"][0]["matches"]
        .as_array_mut()
        .expect("matches");
    matches.push(json!({"id": "late-0", "parent_id": "late", "score": 0.71875}));
    matches.push(json!({"id": "later-0", "parent_id": "later", "score": 0.65625}));
    let search = tokio::spawn({
        let (app, q) = (app.clone(), q.clone());
        async move { post(&app, "search", &q).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let docs = json!({"data": [{"id": "late", "text": "one"}, {"id": "later", "text": "two"}]});
    assert_eq!(post(&app, "index", &docs).await.0, StatusCode::OK);
    let (status, out) = search.await.expect("search task");
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_ranked(
        &out,
        &[
            ("a", 0.75),
            ("late", 0.71875),
            ("c", 0.6875),
            ("later", 0.65625),
        ],
    );
}

#[tokio::test]
async fn a_query_without_chunks_keeps_its_own_matches() {
    let app = ranker(&[]);
    post(&app, "index", &corpus()).await;
    let body = json!({"data": [{"id": "q", "matches": [
        {"id": "c", "score": 0.5}, {"id": "a", "score": 0.25},
    ]}]});
    let (_, out) = post(&app, "search", &body).await;
    assert_ranked(&out, &[("c", 0.5), ("a", 0.25)]);
    assert_eq!(out["data"][0]["matches"][0]["text"], "gamma text");
    assert_eq!(out["data"][0]["matches"][1]["text"], "alpha text");
}

#[tokio::test]
async fn delete_removes_documents_from_the_store() {
    let app = ranker(&[]);
    post(&app, "index", &corpus()).await;
    post_ok(
        &app,
        "delete",
        &json!({"data": [{"id": "a"}, {"id": "unknown"}]}),
    )
    .await;
    let (_, out) = post(&app, "search", &query(10)).await;
    let matches = out["data"][0]["matches"].as_array().expect("matches");
    assert!(
        !matches.iter().any(|m| m["id"] == "a"),
        "a deleted document is not answered without its content: {matches:?}"
    );
    let b = matches.iter().find(|m| m["id"] == "b").expect("b");
    assert_eq!(b["text"], "beta text");
}

#[tokio::test]
async fn only_the_root_content_is_stored() {
    let ranker = Ranker::new(MemoryStore::new(), Aggregation::Max, false);
    let mut doc = Document::text("d", "body");
    doc.embedding = Some(vec![1.0, 2.0]);
    doc.chunks = vec![Document::text("d-0", "chunk")];
    doc.matches = vec![Document::text("m", "match")];
    let request = Envelope::new(vec![doc]);
    let out = ranker
        .call(
            flowmesh_shared::Endpoint::Update,
            request.clone(),
            flowmesh_shared::Deadline::NONE,
        )
        .await
        .expect("stored");
    assert_eq!(out, request);
    assert_eq!(
        ranker.store().len(),
        1,
        "chunks are not stored on their own"
    );
    let stored = ranker
        .store()
        .get_many(&["d".into(), "d-0".into()])
        .await
        .expect("read");
    assert_eq!(stored, vec![Some(Document::text("d", "body")), None]);
}

#[tokio::test]
async fn documents_without_ids_are_refused_and_other_endpoints_pass_through() {
    let app = ranker(&[]);
    let (status, out) = post(&app, "index", &json!({"data": [{"text": "no id"}]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(out["kind"], "bad_request");
    let body = json!({"parameters": {"x": 1}, "data": [{"id": "q", "chunks": [
        {"id": "q-0", "matches": [{"id": "m", "score": 1.0}]},
    ]}]});
    let (status, out) = post(&app, "custom", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["data"], body["data"]);
}

/// `openapi/ranker.json` is generated from the code and documents exactly the routes the
/// router serves; run with `UPDATE_OPENAPI=1` to refresh it.
#[tokio::test]
async fn committed_openapi_matches_the_code() {
    let paths = ["/{endpoint}", "/livez", "/readyz", "/metrics"];
    let app = ranker(&[]);
    flowmesh_shared::testing::assert_openapi("ranker", &flowmesh_ranker::openapi(), &paths, &app)
        .await;
}

/// Swagger UI is served at `/docs`, and the document's example body works on every endpoint as it
/// is: stored by /index, its own match filled with the stored text by /search, forgotten by
/// /delete.
#[tokio::test]
async fn swagger_ui_and_its_example_body_work() {
    use flowmesh_shared::testing::{assert_swagger_ui, served_example};

    let app = ranker(&[]);
    assert_swagger_ui(&app).await;
    let example = served_example(&app, "/{endpoint}").await;
    post_ok(&app, "index", &example).await;
    post_ok(&app, "update", &example).await;
    let out = post_ok(&app, "search", &example).await;
    let matches = &out["data"][0]["matches"];
    assert_eq!(matches[0]["id"], example["data"][0]["id"], "{out}");
    assert_eq!(matches[0]["text"], example["data"][0]["text"], "{out}");
    post_ok(&app, "delete", &example).await;
    let out = post_ok(&app, "search", &example).await;
    assert!(out["data"][0].get("matches").is_none(), "deleted: {out}");
}
