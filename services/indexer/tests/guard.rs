//! The indexer under hostile and unlucky requests, against the real `flowmesh-indexer` process:
//! the largest accepted search stays within a memory bound under `prlimit --as`, absurd `top_k`
//! values are 400 and leave the process serving, a search whose deadline passed stops burning
//! CPU, non-finite embeddings are refused naming the document, and writes are idempotent.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use flowmesh_indexer::synthetic::SplitMix64 as Rng;
use flowmesh_shared::codec::Format;
use flowmesh_shared::{Document, Envelope};
use serde_json::{json, Value};

mod support;

use support::Process as Indexer;

/// Asserts a refusal: the status, the error kind, and an error message naming every one of
/// `needles`.
fn assert_refused((status, body): (u16, Value), want: u16, kind: &str, needles: &[&str]) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["kind"], kind, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(needles.iter().all(|n| error.contains(n)), "{error}");
}

/// `VmHWM` (peak resident memory) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user + system) `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

fn docs(rng: &mut Rng, prefix: &str, n: usize, dim: usize) -> Vec<Document> {
    (0..n)
        .map(|i| Document {
            id: format!("{prefix}{i}"),
            embedding: Some((0..dim).map(|_| rng.normal()).collect()),
            ..Document::default()
        })
        .collect()
}

fn envelope(data: Vec<Document>, top_k: Option<Value>) -> Envelope {
    let mut envelope = Envelope::new(data);
    if let Some(k) = top_k {
        envelope.parameters.insert("top_k".into(), k);
    }
    envelope
}

/// Indexes `n` random vectors of `dim`, in requests of at most 2,000 documents.
async fn fill(indexer: &Indexer, rng: &mut Rng, n: usize, dim: usize) {
    let all = docs(rng, "d", n, dim);
    for batch in all.chunks(2000) {
        let (status, body) = indexer
            .post_envelope("index", &envelope(batch.to_vec(), None))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The largest accepted search (top_k = --max-top-k = 1000 times as many queries as
/// --max-matches allows, with distinct parents, which over-fetches) over 4,000 vectors, under an
/// address-space limit: answered in full, with a resident peak far below what a `top_k`-sized
/// reservation would take. One query more is 413 naming --max-matches; `top_k` 10^12 and 1e9
/// are 400 `invalid_parameter` naming `top_k`; and the process still answers normally.
#[tokio::test]
async fn the_largest_search_is_bounded_and_absurd_top_k_is_refused() {
    const LIMIT: &str = "--as=4294967296"; // 4 GiB of address space
    let mut indexer = Indexer::start(
        &["prlimit", LIMIT, "--"],
        &["--distinct-parents", "--max-matches", "20000"],
    )
    .await;
    let mut rng = Rng::new(12);
    fill(&indexer, &mut rng, 4000, 32).await;
    let queries = docs(&mut rng, "q", 20, 32);
    let (status, body) = indexer
        .post_envelope("search", &envelope(queries.clone(), Some(json!(1000))))
        .await;
    assert_eq!(status, 200, "{body}");
    for query in body["data"].as_array().unwrap() {
        assert_eq!(query["matches"].as_array().unwrap().len(), 1000);
    }
    let peak = peak_rss_kib(indexer.pid());
    eprintln!("indexer VmHWM after top_k=1000 x 20 queries over 4,000 vectors: {peak} KiB");
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");

    // One query more is beyond --max-matches: 413 naming the limit, before any work.
    let mut beyond = queries.clone();
    beyond.extend(docs(&mut rng, "x", 1, 32));
    let answer = indexer
        .post_envelope("search", &envelope(beyond, Some(json!(1000))))
        .await;
    let needles = ["--max-matches", "FLOWMESH_INDEXER_MAX_MATCHES"];
    assert_refused(answer, 413, "limit_exceeded", &needles);

    for k in [json!(1_000_000_000_000_u64), json!(1e9)] {
        let answer = indexer
            .post_envelope("search", &envelope(queries.clone(), Some(k.clone())))
            .await;
        assert_refused(answer, 400, "invalid_parameter", &["top_k", "--max-top-k"]);
        indexer.assert_alive();
    }
    let (status, body) = indexer
        .post_envelope("search", &envelope(queries, Some(json!(5))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["matches"].as_array().unwrap().len(), 5);
    assert!(peak_rss_kib(indexer.pid()) < 256 * 1024);
    indexer.assert_alive();
}

/// An indexer holding 20,000 vectors of 64 values, and the MessagePack body of a search of
/// 10,000 queries over them (about 10^10 multiply-adds, seconds of CPU).
async fn long_scan(seed: u64) -> (Indexer, Bytes) {
    const DIM: usize = 64;
    let indexer = Indexer::start(&[], &[]).await;
    let mut rng = Rng::new(seed);
    fill(&indexer, &mut rng, 20_000, DIM).await;
    let queries = envelope(docs(&mut rng, "q", 10_000, DIM), Some(json!(10)));
    (indexer, Format::MsgPack.encode(&queries).unwrap())
}

/// Lets a stopped scan notice (a unit of work is tens of milliseconds), then fails the test if
/// the process still burns CPU: under 300 ms of it in the next 1.5 s.
async fn assert_scan_stopped(indexer: &mut Indexer, when: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_time(indexer.pid());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let burnt = cpu_time(indexer.pid()) - before;
    eprintln!("CPU used in the 1.5 s {when}: {burnt:?}");
    assert!(
        burnt < Duration::from_millis(300),
        "the scan kept running {when}: {burnt:?} of CPU in 1.5 s"
    );
    indexer.assert_alive();
}

/// A flat scan of 10,000 queries over 20,000 vectors (about 10^10 multiply-adds, seconds of
/// CPU) sent with a 300 ms deadline: 504 `deadline_exceeded`, and the scan stops, rather than
/// running on in the blocking pool after the answer.
#[tokio::test]
async fn a_search_past_its_deadline_stops_burning_cpu() {
    let (mut indexer, body) = long_scan(7).await;
    let started = Instant::now();
    let (status, answer) = indexer
        .post(
            "search",
            Format::MsgPack,
            body,
            &[("x-flowmesh-deadline-ms", "300")],
        )
        .await;
    let waited = started.elapsed();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["kind"], "deadline_exceeded", "{answer}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");

    assert_scan_stopped(&mut indexer, "after the 504").await;
}

/// NaN and infinite embeddings, sent as MessagePack (JSON cannot carry them), are 400 naming
/// the document on `/index`, `/update` and `/search`, and nothing is stored; a wrong dimension
/// stays a 400.
#[tokio::test]
async fn non_finite_embeddings_are_refused_naming_the_document() {
    let indexer = Indexer::start(&[], &[]).await;
    let good = |id: &str| Document {
        id: id.to_owned(),
        embedding: Some(vec![1.0, 0.0, 0.0]),
        ..Document::default()
    };
    let (status, body) = indexer
        .post_envelope("index", &envelope(vec![good("ok")], None))
        .await;
    assert_eq!(status, 200, "{body}");
    for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for endpoint in ["index", "update", "search"] {
            let bad = Document {
                id: "ok".to_owned(),
                chunks: vec![Document {
                    id: "bad-chunk".to_owned(),
                    embedding: Some(vec![0.5, bad_value, 0.0]),
                    ..Document::default()
                }],
                ..Document::default()
            };
            let (status, body) = indexer
                .post_envelope(endpoint, &envelope(vec![good("ok"), bad], None))
                .await;
            assert_eq!(status, 400, "{endpoint} {bad_value}: {body}");
            // Refused while the body is decoded (every service does so), at the value's place.
            let error = body["error"].as_str().unwrap();
            assert!(
                error.contains("data[1].chunks[0].embedding") && error.contains("finite"),
                "{endpoint}: {error}"
            );
        }
    }
    // Nothing of the refused writes was stored: "ok" is still its own single vector.
    let (status, body) = indexer
        .post_envelope("search", &envelope(vec![good("q")], Some(json!(10))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["matches"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["matches"][0]["id"], "ok");
    let wrong = Document {
        id: "short".to_owned(),
        embedding: Some(vec![1.0]),
        ..Document::default()
    };
    for endpoint in ["index", "search"] {
        let (status, body) = indexer
            .post_envelope(endpoint, &envelope(vec![wrong.clone()], None))
            .await;
        assert_eq!(status, 400, "{endpoint}: {body}");
        assert!(body["error"].as_str().unwrap().contains("short"), "{body}");
    }
}

/// The same long scan without a deadline, whose client closes its connection after 300 ms: the
/// route drops the call and the scan stops, rather than running on for nobody.
#[tokio::test]
async fn a_search_whose_caller_left_stops_burning_cpu() {
    use tokio::io::AsyncWriteExt;
    let (mut indexer, body) = long_scan(8).await;
    let address = indexer.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /search HTTP/1.1\r\nhost: {address}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        Format::MsgPack.mime(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = cpu_time(indexer.pid());
    drop(stream);
    eprintln!("CPU used before the client left: {busy:?}");
    assert_scan_stopped(&mut indexer, "after the client left").await;
}
