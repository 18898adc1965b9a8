//! Durability of the real `flowmesh-indexer` process: a `kill -9` in the middle of a stream of
//! writes loses no acknowledged document, and deletes and updates survive restarts, for every
//! backend.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowmesh_indexer::synthetic::SplitMix64 as Rng;
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::codec::Format;
use flowmesh_shared::{Document, Envelope};
use http::Uri;
use serde_json::{json, Value};

mod support;

use support::Process as Indexer;

const DIM: usize = 16;

/// The real indexer process over the data directory `dir`.
async fn start(dir: &Path, args: &[&str]) -> Indexer {
    let dir = dir.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = ["--data-dir", dir]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    Indexer::start(&[], &args).await
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flowmesh-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn vector(rng: &mut Rng) -> Vec<f32> {
    (0..DIM).map(|_| rng.normal()).collect()
}

fn doc(id: &str, v: &[f32]) -> Document {
    Document {
        id: id.to_owned(),
        embedding: Some(v.to_vec()),
        ..Document::default()
    }
}

async fn post(
    client: &ExecutorClient,
    indexer: &Indexer,
    endpoint: &str,
    docs: Vec<Document>,
    top_k: Option<usize>,
) -> Result<Envelope, String> {
    let mut envelope = Envelope::new(docs);
    if let Some(k) = top_k {
        envelope.parameters.insert("top_k".into(), json!(k));
    }
    let body: Bytes = Format::MsgPack.encode(&envelope).unwrap();
    client
        .post(indexer.uri(endpoint), body, "test")
        .await
        .map_err(|e| e.to_string())
}

/// The best match of each of `vectors`, searched one batch at a time.
async fn best_matches(
    client: &ExecutorClient,
    indexer: &Indexer,
    vectors: &BTreeMap<String, Vec<f32>>,
) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let items: Vec<_> = vectors.iter().collect();
    for batch in items.chunks(50) {
        let queries = batch.iter().map(|(id, v)| doc(id, v)).collect();
        let answer = post(client, indexer, "search", queries, Some(1))
            .await
            .unwrap();
        assert_eq!(answer.data.len(), batch.len(), "one answer per query");
        for (query, (id, _)) in answer.data.iter().zip(batch) {
            out.insert((*id).clone(), query.matches.first().map(|m| m.id.clone()));
        }
    }
    out
}

async fn stats(indexer: &Indexer) -> Value {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let response = client.get(indexer.uri("stats")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Four writers stream batches of new documents; the process is killed with SIGKILL while they
/// run. Every document whose `/index` was answered must be found after a restart.
async fn kill9_loses_nothing_acknowledged(backend_args: &[&str], name: &str) {
    let dir = temp_dir(name);
    let indexer = start(&dir, backend_args).await;
    let client = ExecutorClient::new();
    let acked: Arc<Mutex<BTreeMap<String, Vec<f32>>>> = Arc::default();
    let base = indexer.base.clone();
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let acked = Arc::clone(&acked);
        let client = client.clone();
        let uri: Uri = format!("{base}/index").parse().unwrap();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(writer);
            let started = Instant::now();
            // Bounded in count and in time; the kill ends it much sooner.
            for batch in 0..2_000 {
                if started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let docs: Vec<(String, Vec<f32>)> = (0..10)
                    .map(|i| (format!("w{writer}-b{batch}-{i}"), vector(&mut rng)))
                    .collect();
                let envelope = Envelope::new(docs.iter().map(|(id, v)| doc(id, v)).collect());
                let body = Format::MsgPack.encode(&envelope).unwrap();
                match client.post(uri.clone(), body, "w").await {
                    Ok(_) => acked.lock().unwrap().extend(docs),
                    Err(_) => break,
                }
            }
        }));
    }
    // Let a good number of writes land, then kill mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 2_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    indexer.kill9().await;
    for w in writers {
        w.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 200,
        "only {} documents were acknowledged",
        acked.len()
    );

    let indexer = start(&dir, backend_args).await;
    let count = stats(&indexer).await["count"].as_u64().unwrap() as usize;
    // Writes in flight at the kill may have been logged without being answered: more is fine.
    assert!(
        count >= acked.len(),
        "{count} stored < {} acknowledged",
        acked.len()
    );
    let found = best_matches(&client, &indexer, &acked).await;
    let missing: Vec<_> = found
        .iter()
        .filter(|(id, best)| best.as_deref() != Some(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged documents are not found by their own vector, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.first()
    );
    println!(
        "{name}: {} acknowledged before kill -9, {count} recovered",
        acked.len()
    );
    indexer.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Update and delete, through two restarts (one clean, one `kill -9`).
async fn updates_and_deletes_survive_restarts(backend_args: &[&str], name: &str) {
    let dir = temp_dir(name);
    let client = ExecutorClient::new();
    let mut rng = Rng::new(7);
    let mut docs: BTreeMap<String, Vec<f32>> = (0..300)
        .map(|i| (format!("doc-{i:03}"), vector(&mut rng)))
        .collect();
    let indexer = start(&dir, backend_args).await;
    let all: Vec<Document> = docs.iter().map(|(id, v)| doc(id, v)).collect();
    post(&client, &indexer, "index", all, None).await.unwrap();

    // Update: doc-000 moves far away, to where doc-001's new vector is its nearest neighbour.
    let moved = vector(&mut rng);
    post(
        &client,
        &indexer,
        "update",
        vec![doc("doc-000", &moved)],
        None,
    )
    .await
    .unwrap();
    let old_000 = docs.insert("doc-000".into(), moved.clone()).unwrap();
    // Delete three documents.
    let deleted = ["doc-010", "doc-020", "doc-030"];
    let gone: Vec<Document> = deleted
        .iter()
        .map(|id| Document {
            id: (*id).to_owned(),
            ..Document::default()
        })
        .collect();
    post(&client, &indexer, "delete", gone, None).await.unwrap();
    let deleted_vectors: BTreeMap<String, Vec<f32>> = deleted
        .iter()
        .map(|id| ((*id).to_owned(), docs.remove(*id).unwrap()))
        .collect();

    let check = |indexer: Indexer, round: &'static str| {
        let client = client.clone();
        let docs = docs.clone();
        let deleted_vectors = deleted_vectors.clone();
        let old_000 = old_000.clone();
        async move {
            assert_eq!(
                stats(&indexer).await["count"].as_u64().unwrap() as usize,
                docs.len(),
                "{round}: count"
            );
            let found = best_matches(&client, &indexer, &docs).await;
            for (id, best) in &found {
                assert_eq!(best.as_deref(), Some(id.as_str()), "{round}: {id}");
            }
            // The deleted documents are never returned, even for their own vectors.
            let probe = best_matches(&client, &indexer, &deleted_vectors).await;
            for (id, best) in &probe {
                assert_ne!(
                    best.as_deref(),
                    Some(id.as_str()),
                    "{round}: {id} was deleted"
                );
            }
            // The old vector of the updated document no longer finds it first.
            let old = BTreeMap::from([("old-000".to_owned(), old_000)]);
            let best = best_matches(&client, &indexer, &old).await;
            assert_ne!(
                best["old-000"].as_deref(),
                Some("doc-000"),
                "{round}: stale vector"
            );
            indexer
        }
    };
    let indexer = check(indexer, "before restart").await;
    indexer.stop().await;
    let indexer = check(start(&dir, backend_args).await, "after a clean restart").await;
    indexer.kill9().await;
    let indexer = check(start(&dir, backend_args).await, "after kill -9").await;
    indexer.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `scenario` on every backend, as one test each: flat, and faiss (`Flat`) and annoy with a
/// rebuild after `rebuild_min` changes, so that a built structure exists during the scenario
/// and its stale entries are filtered. `dir` names the scenario's data directories.
macro_rules! on_every_backend {
    ($scenario:ident, $dir:literal, $rebuild_min:literal => $flat:ident, $faiss:ident, $annoy:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $flat() {
            $scenario(&[], concat!($dir, "-flat")).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $faiss() {
            let args = ["--backend", "faiss", "--index-key", "Flat"];
            let args = [&args[..], &["--rebuild-min", $rebuild_min]].concat();
            $scenario(&args, concat!($dir, "-faiss")).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $annoy() {
            let args = ["--backend", "annoy", "--rebuild-min", $rebuild_min];
            $scenario(&args, concat!($dir, "-annoy")).await;
        }
    };
}

on_every_backend!(
    kill9_loses_nothing_acknowledged, "kill9", "500" =>
    kill9_during_indexing_loses_no_acknowledged_document_flat,
    kill9_during_indexing_loses_no_acknowledged_document_faiss,
    kill9_during_indexing_loses_no_acknowledged_document_annoy
);

on_every_backend!(
    updates_and_deletes_survive_restarts, "update", "100" =>
    updates_and_deletes_survive_restarts_flat,
    updates_and_deletes_survive_restarts_faiss,
    updates_and_deletes_survive_restarts_annoy
);
