//! The ranker under unlucky and hostile conditions: `/readyz` follows a real Redis going down
//! and coming back, a hanging Redis does not hold a request past its deadline, NaN and infinite
//! scores are refused naming the match, and a document indexed by the indexer but missing from
//! the store (a half-failed write) is never answered.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use clap::Parser;
use flowmesh_ranker::{app, Aggregation, MemoryStore, Ranker};
use flowmesh_shared::server::Executor;
use flowmesh_shared::testing::{post, post_ok, send, RedisServer};
use flowmesh_shared::{Deadline, Document, Envelope};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

fn ranker(args: &[&str]) -> Router {
    let argv = std::iter::once("flowmesh-ranker").chain(args.iter().copied());
    let config = flowmesh_ranker::Config::try_parse_from(argv).expect("valid flags");
    app(&config).expect("valid configuration")
}

/// A ranker on the Redis at `url`, with `extra` flags.
fn redis_ranker(url: &str, extra: &[&str]) -> Router {
    let mut args = vec!["--store", "redis", "--redis-url", url];
    args.extend(extra);
    ranker(&args)
}

async fn readyz(app: &Router) -> (StatusCode, Value) {
    send(app, Request::get("/readyz").body(Body::empty()).unwrap()).await
}

/// Polls `/readyz` (every 50 ms, at most 15 s) until it answers `want`; the last answer.
async fn wait_readyz(app: &Router, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readyz(app).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body}, waiting for {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_follows_redis_down_and_back() {
    let mut redis = RedisServer::start("guard-ready", None);
    let url = redis.url();
    let app = redis_ranker(
        &url,
        &[
            "--redis-timeout",
            "500ms",
            "--redis-probe-interval",
            "100ms",
        ],
    );
    wait_readyz(&app, StatusCode::OK).await;
    redis.stop();
    let body = wait_readyz(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["kind"], "not_ready", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Redis"),
        "names Redis: {body}"
    );
    redis.restart();
    wait_readyz(&app, StatusCode::OK).await;
}

/// The `redis-server` serving `socket`, found by its command line (the test started it).
fn redis_pid(socket: &std::path::Path) -> Pid {
    let needle = socket.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("redis-server") && cmdline.contains(&needle) {
            return Pid::from_raw(pid);
        }
    }
    panic!("no redis-server on {needle}");
}

/// Stops a process (SIGSTOP) for as long as it lives, and lets it go on (SIGCONT) when dropped.
struct Stalled(Pid);

impl Stalled {
    fn new(pid: Pid) -> Self {
        kill(pid, Signal::SIGSTOP).unwrap();
        Self(pid)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

async fn post_with_deadline(
    app: &Router,
    endpoint: &str,
    body: &Value,
    ms: u64,
) -> (StatusCode, Value) {
    let request = Request::post(format!("/{endpoint}"))
        .header("content-type", "application/json")
        .header("x-flowmesh-deadline-ms", ms.to_string())
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

/// Redis stalled (SIGSTOP) with a Redis timeout of 30 s: a search and a write with a 300 ms
/// deadline are answered 504 naming the document store well before the Redis timeout.
#[tokio::test]
async fn a_hanging_redis_does_not_hold_a_request_past_its_deadline() {
    let redis = RedisServer::start("guard-hang", None);
    let url = redis.url();
    let app = redis_ranker(&url, &["--redis-timeout", "30s"]);
    post_ok(
        &app,
        "index",
        &json!({"data": [{"id": "a", "text": "alpha"}]}),
    )
    .await;
    let search = json!({"data": [{"id": "q", "matches": [{"id": "a", "score": 0.5}]}]});
    let out = post_ok(&app, "search", &search).await;
    assert_eq!(out["data"][0]["matches"][0]["text"], "alpha");

    let stalled = Stalled::new(redis_pid(&redis.socket()));
    let write = json!({"data": [{"id": "b", "text": "beta"}]});
    for (endpoint, body) in [("search", &search), ("index", &write)] {
        let started = Instant::now();
        let (status, out) = post_with_deadline(&app, endpoint, body, 300).await;
        let waited = started.elapsed();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{endpoint}: {out}");
        assert_eq!(out["kind"], "deadline_exceeded", "{out}");
        assert!(
            out["error"].as_str().unwrap().contains("document store"),
            "{endpoint}: {out}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "{endpoint} held for {waited:?}"
        );
    }
    drop(stalled);
    // Redis answers again: so does the ranker.
    let (status, out) = post(&app, "search", &search).await;
    assert_eq!(status, StatusCode::OK, "{out}");
}

fn scored(id: &str, score: f32) -> Document {
    Document {
        id: id.to_owned(),
        score: Some(score),
        ..Document::default()
    }
}

#[tokio::test]
async fn non_finite_scores_are_refused_naming_the_match() {
    let ranker = Ranker::new(MemoryStore::new(), Aggregation::Max, false);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        // In a chunk's matches, and in a query's own matches.
        let chunked = Document {
            id: "q".into(),
            chunks: vec![Document {
                id: "q-0".into(),
                matches: vec![scored("fine", 0.5), scored("bad-match", bad)],
                ..Document::default()
            }],
            ..Document::default()
        };
        let own = Document {
            id: "q".into(),
            matches: vec![scored("fine", 0.5), scored("bad-match", bad)],
            ..Document::default()
        };
        for query in [chunked, own] {
            let err = ranker
                .call(
                    flowmesh_shared::Endpoint::Search,
                    Envelope::new(vec![query]),
                    Deadline::NONE,
                )
                .await
                .unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
            assert!(err.to_string().contains("bad-match"), "{err}");
        }
    }
}

/// Documents a, b and c are written to the indexer and to the ranker; "half" only to the
/// indexer, as when the ranker's write failed. A search through the indexer finds "half"
/// first; through the ranker, it is left out and every match has its text.
#[tokio::test]
async fn a_match_without_stored_content_is_never_answered() {
    let argv = ["flowmesh-indexer"];
    let indexer_config = flowmesh_indexer::Config::try_parse_from(argv).unwrap();
    let indexer = flowmesh_indexer::app(&indexer_config).unwrap();
    let ranker = ranker(&["--store", "memory"]);
    let doc =
        |id: &str, v: [f32; 3]| json!({"id": id, "text": format!("text of {id}"), "embedding": v});
    let written = json!({"data": [
        doc("a", [1.0, 0.0, 0.0]), doc("b", [0.0, 1.0, 0.0]), doc("c", [0.5, 0.5, 0.0]),
    ]});
    for app in [&indexer, &ranker] {
        let (status, out) = post(app, "index", &written).await;
        assert_eq!(status, StatusCode::OK, "{out}");
    }
    let half = json!({"data": [doc("half", [0.9, 0.1, 0.0])]});
    let (status, out) = post(&indexer, "index", &half).await;
    assert_eq!(status, StatusCode::OK, "{out}");

    let query =
        json!({"parameters": {"top_k": 10}, "data": [{"id": "q", "embedding": [1.0, 0.1, 0.0]}]});
    let (status, found) = post(&indexer, "search", &query).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let ids = |out: &Value| -> Vec<String> {
        out["data"][0]["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&found),
        ["half", "a", "c", "b"],
        "the indexer finds it first"
    );
    let (status, ranked) = post(&ranker, "search", &found).await;
    assert_eq!(status, StatusCode::OK, "{ranked}");
    assert_eq!(ids(&ranked), ["a", "c", "b"], "the ranker leaves it out");
    for m in ranked["data"][0]["matches"].as_array().unwrap() {
        assert_eq!(m["text"], format!("text of {}", m["id"].as_str().unwrap()));
    }
}

/// Chunk matches whose best parent is not stored: with top_k 2 the answer still has the two
/// best stored documents, the next candidate taking the orphan's place.
#[tokio::test]
async fn a_missing_document_gives_its_place_to_the_next_one() {
    let app = ranker(&["--store", "memory"]);
    let stored = json!({"data": [
        {"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}, {"id": "c", "text": "gamma"},
    ]});
    let (status, out) = post(&app, "index", &stored).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let m =
        |id: &str, parent: &str, score: f64| json!({"id": id, "parent_id": parent, "score": score});
    let query = json!({"parameters": {"top_k": 2}, "data": [{"id": "q", "chunks": [
        {"id": "q-0", "matches": [
            m("lost-0", "lost", 0.9), m("a-0", "a", 0.8), m("b-0", "b", 0.7), m("c-0", "c", 0.6),
        ]},
    ]}]});
    let (status, out) = post(&app, "search", &query).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let matches = out["data"][0]["matches"].as_array().unwrap();
    let ids: Vec<&str> = matches.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "{out}");
    assert_eq!(matches[0]["text"], "alpha");
    assert_eq!(matches[1]["text"], "beta");
}
