//! Mirrored copies of the ranker's embedded store, as real `flowmesh-ranker` processes following
//! one log in a real `nats-server`: the test plays the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowmesh_shared::codec::Format;
use flowmesh_shared::mirror::{LogArgs, ShardLog, SEQ_HEADER};
use flowmesh_shared::testing::{temp_dir, NatsServer};
use flowmesh_shared::{Endpoint, Envelope};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const STREAM: &str = "FLOWMESH_ranker_0";

struct Copy {
    _child: Child,
    base: String,
}

async fn start(args: &[&str]) -> Copy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowmesh-ranker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("FLOWMESH_WORKSPACE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the ranker prints its address")
        .unwrap()
        .expect("a `listening on` line");
    let base = line
        .split_once("listening on ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Copy {
        _child: child,
        base,
    }
}

async fn copy(nats: &NatsServer, dir: &Path, extra: &[&str]) -> Copy {
    let url = nats.url();
    let mut args = vec![
        "--log-url",
        url.as_str(),
        "--log-stream",
        STREAM,
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

async fn request(
    copy: &Copy,
    method: &str,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}/{path}", copy.base))
        .header("content-type", Format::MsgPack.mime())
        .header("accept", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn docs(from: usize, to: usize, version: u32) -> Envelope {
    let data: Vec<Value> = (from..to)
        .map(|i| json!({"id": format!("doc-{i}"), "text": format!("text {i} v{version} {}", "x".repeat(200))}))
        .collect();
    serde_json::from_value(json!({ "data": data })).unwrap()
}

async fn append(log: &ShardLog, endpoint: Endpoint, envelope: &Envelope, n: u64) -> (u64, Bytes) {
    let body = Format::MsgPack.encode(envelope).unwrap();
    let seq = log
        .append(endpoint, body.clone(), &format!("r-{n}"))
        .await
        .unwrap();
    (seq, body)
}

async fn deliver(copy: &Copy, endpoint: Endpoint, seq: u64, body: &Bytes) -> u16 {
    let seq = seq.to_string();
    let (status, _, _) = request(
        copy,
        "POST",
        endpoint.as_str(),
        body.clone(),
        &[(SEQ_HEADER, &seq)],
    )
    .await;
    status
}

async fn wait_position(copy: &Copy, position: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = request(copy, "GET", "stats", Bytes::new(), &[]).await;
        assert_eq!(status, 200);
        let stats: Value = serde_json::from_slice(&body).unwrap();
        let m = stats["mirror"].clone();
        if m["position"] == json!(position) && m["state"] == "ready" {
            return m;
        }
        assert!(Instant::now() < deadline, "the copy stays at {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_copies_converge_and_an_empty_one_restores_from_its_peer() {
    let nats = NatsServer::start("ranker-mirror", None);
    let args = LogArgs {
        log_url: Some(nats.url()),
        log_max_bytes: 32_768,
    };
    let log = flowmesh_shared::mirror::Log::connect(&args, "test-gateway", None)
        .await
        .unwrap()
        .unwrap()
        .shard(STREAM);
    let (dir_a, dir_b, dir_c) = (temp_dir("rm-a"), temp_dir("rm-b"), temp_dir("rm-c"));
    let a = copy(&nats, &dir_a, &["--log-max-bytes", "32768"]).await;
    let b = copy(&nats, &dir_b, &["--log-max-bytes", "32768"]).await;

    let body = Format::MsgPack.encode(&docs(0, 1, 0)).unwrap();
    let (status, _, answer) = request(&a, "POST", "index", body, &[]).await;
    assert_eq!(status, 409, "{answer:?}");

    let mut last = 0;
    for n in 0..40u64 {
        let from = (n as usize % 10) * 3;
        let (endpoint, envelope) = if n % 7 == 6 {
            (Endpoint::Delete, docs(from, from + 2, 0))
        } else {
            (Endpoint::Index, docs(from, from + 6, n as u32))
        };
        let (seq, body) = append(&log, endpoint, &envelope, n).await;
        assert_eq!(deliver(&a, endpoint, seq, &body).await, 200);
        if n % 4 == 3 {
            // B sees a write now and then; the rest it reads from the log.
            assert_eq!(deliver(&b, endpoint, seq, &body).await, 200);
        }
        last = seq;
    }
    let ma = wait_position(&a, last).await;
    let mb = wait_position(&b, last).await;
    assert_eq!(ma["digest"], mb["digest"], "{ma} {mb}");
    assert!(ma["count"].as_u64().unwrap() > 10);
    let bounds = log.bounds().await.unwrap();
    assert!(bounds.first > 1, "the log was trimmed: {bounds:?}");

    let c = copy(
        &nats,
        &dir_c,
        &["--log-max-bytes", "32768", "--peer", &a.base],
    )
    .await;
    let mc = wait_position(&c, last).await;
    assert_eq!(ma["digest"], mc["digest"], "{ma} {mc}");
    assert_eq!(ma["count"], mc["count"]);

    // A redis store is not the ranker's own state: it cannot be a mirrored copy.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowmesh-ranker"))
        .args([
            "--store",
            "redis",
            "--log-url",
            &nats.url(),
            "--log-stream",
            STREAM,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("embedded store"));
    drop((a, b, c));
    for dir in [dir_a, dir_b, dir_c] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
