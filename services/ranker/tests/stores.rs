//! The document stores against a real Redis and a real redb file: the same behaviour from each,
//! persistence across reopening, 503 while Redis is down, and recovery without a restart.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use clap::Parser;
use flowmesh_ranker::{app, DocStore, EmbeddedStore, MemoryStore, RedisStore, StoreError};
use flowmesh_shared::testing::post;
use flowmesh_shared::testing::RedisServer;
use flowmesh_shared::Document;
use serde_json::json;

fn doc(id: &str, text: &str) -> Document {
    Document {
        id: id.to_owned(),
        text: Some(text.to_owned()),
        tags: Some(json!({"id": id}).as_object().unwrap().clone()),
        blob: Some(format!("blob of {id}")),
        ..Document::default()
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// What every store must do.
async fn behaves_like_a_store(store: &impl DocStore) {
    store
        .put_many(vec![
            doc("a", "first"),
            doc("b", "second"),
            doc("ü🙂", "unicode"),
        ])
        .await
        .unwrap();
    let got = store
        .get_many(&ids(&["b", "missing", "a", "ü🙂"]))
        .await
        .unwrap();
    assert_eq!(got[0], Some(doc("b", "second")));
    assert_eq!(got[1], None);
    assert_eq!(got[2], Some(doc("a", "first")));
    assert_eq!(got[3], Some(doc("ü🙂", "unicode")));
    // Replacing.
    store.put_many(vec![doc("a", "changed")]).await.unwrap();
    assert_eq!(
        store.get_many(&ids(&["a"])).await.unwrap()[0],
        Some(doc("a", "changed"))
    );
    // Deleting counts what was there.
    assert_eq!(store.delete_many(&ids(&["a", "nope"])).await.unwrap(), 1);
    assert_eq!(store.get_many(&ids(&["a"])).await.unwrap()[0], None);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    assert_eq!(store.delete_many(&[]).await.unwrap(), 0);
}

#[tokio::test]
async fn memory_store() {
    behaves_like_a_store(&MemoryStore::new()).await;
}

#[tokio::test]
async fn embedded_store_keeps_documents_across_reopening() {
    let dir = std::env::temp_dir().join(format!("flowmesh-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        behaves_like_a_store(&store).await;
    }
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(store.count().unwrap(), 2);
    assert_eq!(
        store.get_many(&ids(&["b"])).await.unwrap()[0],
        Some(doc("b", "second"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn redis_store_with_a_password_and_a_prefix() {
    let redis = RedisServer::start("password", Some("s3cret"));
    let store =
        RedisStore::new(&redis.url(), Some("s3cret"), "t1:", Duration::from_secs(2)).unwrap();
    behaves_like_a_store(&store).await;
    // Another prefix is another namespace.
    let other =
        RedisStore::new(&redis.url(), Some("s3cret"), "t2:", Duration::from_secs(2)).unwrap();
    assert_eq!(other.get_many(&ids(&["b"])).await.unwrap()[0], None);
    // A wrong password is refused as unavailable (the store cannot be used), not a panic.
    let wrong = RedisStore::new(&redis.url(), Some("nope"), "t1:", Duration::from_secs(2)).unwrap();
    assert!(matches!(
        wrong.get_many(&ids(&["b"])).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn redis_down_is_unavailable_and_the_store_recovers_by_itself() {
    let mut redis = RedisServer::start("recover", None);
    let store = RedisStore::new(&redis.url(), None, "r:", Duration::from_millis(500)).unwrap();
    store.put_many(vec![doc("a", "kept")]).await.unwrap();
    redis.stop();
    let started = Instant::now();
    let err = store.get_many(&ids(&["a"])).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    redis.restart();
    // The same store object: its pool replaces the dead connections.
    assert_eq!(
        store.get_many(&ids(&["a"])).await.unwrap()[0],
        Some(doc("a", "kept")),
        "the document survived the Redis restart"
    );
}

fn ranker(args: &[&str]) -> Router {
    let argv = std::iter::once("flowmesh-ranker").chain(args.iter().copied());
    let config = flowmesh_ranker::Config::try_parse_from(argv).unwrap();
    app(&config).unwrap()
}

fn search_body(i: usize) -> serde_json::Value {
    json!({"parameters": {"top_k": 3}, "data": [{
        "id": format!("q{i}"),
        "chunks": [{"id": "q-0", "matches": [
            {"id": "a-0", "parent_id": "a", "score": 0.5},
            {"id": "b-0", "parent_id": "b", "score": 0.75},
        ]}],
    }]})
}

/// A bounded load on the ranker (Redis store) while Redis restarts: requests during the outage
/// get 503 `unavailable`, and once Redis is back every request succeeds again, with the stored
/// content, without restarting the ranker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_leaves_the_ranker_serving() {
    let mut redis = RedisServer::start("load", None);
    let url = redis.url();
    let app = Arc::new(ranker(&[
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--redis-timeout",
        "300ms",
    ]));
    let corpus = json!({"data": [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]});
    let (status, _) = post(&app, "index", &corpus).await;
    assert_eq!(status, StatusCode::OK);

    let (ok, unavailable, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = {
        let (app, ok, unavailable, other) = (
            Arc::clone(&app),
            Arc::clone(&ok),
            Arc::clone(&unavailable),
            Arc::clone(&other),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            // Bounded: 1,500 requests or 20 seconds.
            for i in 0..1_500 {
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let (status, out) = post(&app, "search", &search_body(i)).await;
                let counter = match status {
                    StatusCode::OK => {
                        assert_eq!(out["data"][0]["matches"][0]["text"], "beta");
                        &ok
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert_eq!(out["kind"], "unavailable");
                        &unavailable
                    }
                    _ => &other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        std::thread::sleep(Duration::from_millis(500));
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let ok_at_restart = ok.load(Ordering::Relaxed);
    // After the restart, requests succeed again within a few seconds...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = post(&app, "search", &search_body(0)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the ranker did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and keep succeeding.
    for i in 0..50 {
        let (status, out) = post(&app, "search", &search_body(i)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
    }
    load.await.unwrap();
    let (ok, unavailable) = (
        ok.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
    );
    println!("ok {ok} (at the restart {ok_at_restart}), 503 {unavailable}");
    assert_eq!(other.load(Ordering::Relaxed), 0, "only 200 or 503");
    assert!(unavailable > 0, "the outage was seen");
    assert!(ok > ok_at_restart, "served again after the restart");
    drop(redis);
}
