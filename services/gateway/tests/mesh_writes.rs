//! A failed write against the real services: an indexer shard killed, the write is a 503 that
//! lists exactly the shard's documents, searches return no match without its content, and
//! sending the same request again, with the shard back, completes it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};

use flowmesh_gateway::GatewayLimits;
use flowmesh_shared::Limits;
use support::hostile::{assert_error, free_port, gateway, owned_by, service, wait_ready};
use support::Http;

/// The ids and texts of the matches of every query of a search for `texts`.
async fn matches(http: &Http, url: &str, texts: &[String]) -> Vec<(String, Value)> {
    let data: Vec<Value> = texts.iter().map(|t| json!({"text": t})).collect();
    let r = http
        .post(url, &json!({"data": data, "parameters": {"top_k": 50}}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["matches"].as_array().unwrap().clone())
        .map(|m| (m["id"].as_str().unwrap().to_owned(), m["text"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_leaves_an_honest_partial_write_that_a_retry_completes() {
    let (_enc, enc) = service(
        "flowmesh-encoder",
        free_port(),
        &["--model", "hash", "--dim", "64"],
    );
    let (_s0, s0) = service("flowmesh-indexer", free_port(), &[]);
    let s1_port = free_port();
    let (s1_child, s1) = service("flowmesh-indexer", s1_port, &[]);
    let (_rk, rk) = service("flowmesh-ranker", free_port(), &[]);
    let yaml = format!(
        "with: {{health_interval_ms: 100, request_size: 10}}\nexecutors:\n\
         - {{name: segmenter, uses: sentencizer}}\n\
         - {{name: encoder, uses: remote, addresses: ['{enc}']}}\n\
         - {{name: indexer, uses: remote, shards: 2, addresses: [['{s0}'], ['{s1}']]}}\n\
         - {{name: ranker, uses: remote, addresses: ['{rk}']}}\n"
    );
    let gw = gateway(&yaml, Limits::default(), GatewayLimits::defaults()).await;
    let http = Http::new();
    let ready = format!("{}/readyz", gw.base());
    wait_ready(&http, &ready).await;
    let ids: Vec<String> = (0..30).map(|i| format!("fb-{i}")).collect();
    let texts: Vec<String> = ids
        .iter()
        .map(|id| format!("A horse named {id} runs."))
        .collect();
    let body = json!({"data": ids.iter().zip(&texts)
        .map(|(id, t)| json!({"id": id, "text": t})).collect::<Vec<_>>()});
    let on_1 = owned_by(&ids, 1, 2);

    drop(s1_child); // killed
    let index = format!("{}/index", gw.base());
    let r = http.post(&index, &body).await;
    let err = assert_error(&r, 503, "partial_write", &["indexer shard 1", &s1]);
    let not_written: Vec<String> = serde_json::from_value(err["not_written"].clone()).unwrap();
    assert_eq!(not_written, on_1);

    // The shard back on its address (empty: it ran in memory). Every match found has its stored
    // content; none is a document that was not written.
    let (_s1, _) = service("flowmesh-indexer", s1_port, &[]);
    wait_ready(&http, &ready).await;
    let search = format!("{}/search", gw.base());
    let found = matches(&http, &search, &texts).await;
    assert!(!found.is_empty());
    for (id, text) in &found {
        assert!(!on_1.contains(id), "{id} was not written but is found");
        assert!(text.is_string(), "{id} is found without its text");
    }

    // The same request again completes the write.
    let r = http.post(&index, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let found = matches(&http, &search, &texts).await;
    let found_ids: BTreeSet<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    for id in &ids {
        assert!(
            found_ids.contains(id.as_str()),
            "{id} is not found after the retry"
        );
    }
    assert!(found.iter().all(|(_, text)| text.is_string()));
}
