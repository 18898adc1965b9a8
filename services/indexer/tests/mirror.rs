//! Mirrored copies of an indexer shard, as real `flowmesh-indexer` processes following one log
//! in a real `nats-server`: the test plays the gateway (append to the log, then post to the
//! copies with the write's position).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowmesh_shared::codec::Format;
use flowmesh_shared::mirror::{LogArgs, ShardLog, MIN_SEQ_HEADER, SEQ_HEADER};
use flowmesh_shared::testing::temp_dir;
use flowmesh_shared::testing::NatsServer;
use flowmesh_shared::{Endpoint, Envelope};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use support::Process;

const STREAM: &str = "FLOWMESH_indexer_0";

async fn shard_log(url: &str, max_bytes: i64) -> ShardLog {
    let args = LogArgs {
        log_url: Some(url.to_owned()),
        log_max_bytes: max_bytes,
    };
    let log = flowmesh_shared::mirror::Log::connect(&args, "test-gateway", None)
        .await
        .unwrap()
        .unwrap();
    log.shard(STREAM)
}

/// Documents `from..to`, each a `dim`-vector that depends on its id and `version`.
fn docs(from: usize, to: usize, dim: usize, version: u32) -> Envelope {
    let data: Vec<Value> = (from..to)
        .map(|i| {
            let v: Vec<f32> = (0..dim)
                .map(|d| ((i * 31 + d * 7) as f32 + version as f32 * 0.5).sin())
                .collect();
            json!({"id": format!("doc-{i}"), "embedding": v})
        })
        .collect();
    serde_json::from_value(json!({ "data": data })).unwrap()
}

fn ids(list: &[usize]) -> Envelope {
    let data: Vec<Value> = list
        .iter()
        .map(|i| json!({"id": format!("doc-{i}")}))
        .collect();
    serde_json::from_value(json!({ "data": data })).unwrap()
}

/// The gateway's half: appends a write to the log; its position and body.
async fn append(log: &ShardLog, endpoint: Endpoint, envelope: &Envelope) -> (u64, Bytes) {
    let body = Format::MsgPack.encode(envelope).unwrap();
    let id = format!("w-{}", rand_id());
    let seq = log.append(endpoint, body.clone(), &id).await.unwrap();
    (seq, body)
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000
}

/// Sends a write at `seq` to a copy; the status.
async fn deliver(copy: &Process, endpoint: Endpoint, seq: u64, body: &Bytes) -> u16 {
    let seq = seq.to_string();
    let (status, _) = copy
        .post(
            endpoint.as_str(),
            Format::MsgPack,
            body.clone(),
            &[(SEQ_HEADER, seq.as_str())],
        )
        .await;
    status
}

async fn get(
    copy: &Process,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::get(format!("{}/{path}", copy.base));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

async fn mirror_stats(copy: &Process) -> Value {
    let (status, _, body) = get(copy, "stats", &[]).await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_slice(&body).unwrap();
    stats["mirror"].clone()
}

/// Waits (60 s at most) until the copy has applied `position` and is ready.
async fn wait_position(copy: &Process, position: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = mirror_stats(copy).await;
        if m["position"] == json!(position) && m["state"] == "ready" {
            return m;
        }
        assert!(Instant::now() < deadline, "the copy stays at {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn copy(nats: &NatsServer, dir: &Path, extra: &[&str]) -> Process {
    let url = nats.url();
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "--log-url",
        url.as_str(),
        "--log-stream",
        STREAM,
        "--data-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    Process::start(&[], &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_apply_in_log_order_and_converge_after_gaps_crashes_and_restarts() {
    let nats = NatsServer::start("mirror-converge", None);
    let log = shard_log(&nats.url(), 1 << 30).await;
    let (dir_a, dir_b) = (temp_dir("mirror-a"), temp_dir("mirror-b"));
    let a = copy(&nats, &dir_a, &[]).await;
    let mut b = copy(&nats, &dir_b, &[]).await;

    // A write that does not come through the gateway is refused.
    let body = Format::MsgPack.encode(&docs(0, 1, 8, 0)).unwrap();
    let (status, answer) = a.post("index", Format::MsgPack, body, &[]).await;
    assert_eq!(status, 409, "{answer:?}");
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["kind"], "conflict");

    // Writes of every kind, with refused ones (4xx) among them.
    let mut writes = Vec::new();
    for round in 0..6u32 {
        let from = round as usize * 5;
        writes.push((Endpoint::Index, docs(from, from + 10, 8, round)));
        writes.push((Endpoint::Update, docs(from, from + 3, 8, round + 100)));
        writes.push((Endpoint::Delete, ids(&[from + 1, from + 7])));
    }
    writes.push((Endpoint::Update, docs(900, 901, 8, 0))); // unknown id: 404
    writes.push((Endpoint::Index, docs(950, 951, 3, 0))); // wrong dimension: 400
    writes.push((Endpoint::Index, docs(1, 2, 8, 7))); // re-indexes a deleted one
    let mut sent = Vec::new();
    for (endpoint, envelope) in &writes {
        let (seq, body) = append(&log, *endpoint, envelope).await;
        sent.push((*endpoint, seq, body));
    }
    let last = sent.last().unwrap().1;
    // A gets every write in order; B only every third, newest first (gaps, out of order).
    for (endpoint, seq, body) in &sent {
        let status = deliver(&a, *endpoint, *seq, body).await;
        assert!([200, 400, 404].contains(&status), "{status}");
    }
    for (endpoint, seq, body) in sent.iter().rev().step_by(3) {
        let status = deliver(&b, *endpoint, *seq, body).await;
        assert!([200, 400, 404].contains(&status), "{status}");
    }
    let ma = wait_position(&a, last).await;
    let mb = wait_position(&b, last).await;
    assert_eq!(ma["digest"], mb["digest"], "{ma} {mb}");
    assert_eq!(ma["count"], mb["count"]);
    assert_eq!(ma["log"], STREAM);
    assert!(ma["count"].as_u64().unwrap() > 20);

    // /readyz with the position a reader needs.
    let ahead = (last + 5).to_string();
    let (status, headers, body) = get(&a, "readyz", &[(MIN_SEQ_HEADER, &ahead)]).await;
    assert_eq!(status, 503, "{body:?}");
    assert_eq!(headers[SEQ_HEADER], last.to_string());
    assert!(String::from_utf8_lossy(&body).contains(&format!("applied {last} of {ahead}")));
    let (status, _, _) = get(&a, "readyz", &[(MIN_SEQ_HEADER, &last.to_string())]).await;
    assert_eq!(status, 200);

    // B killed; writes go on; B comes back on its data and catches up from the log alone.
    b.assert_alive();
    b.kill9().await;
    let mut last = last;
    for round in 0..5u32 {
        let (seq, body) = append(&log, Endpoint::Index, &docs(100, 110, 8, round)).await;
        assert_eq!(deliver(&a, Endpoint::Index, seq, &body).await, 200);
        last = seq;
    }
    let b = copy(&nats, &dir_b, &[]).await;
    let ma = wait_position(&a, last).await;
    let mb = wait_position(&b, last).await;
    assert_eq!(ma["digest"], mb["digest"]);

    // A crash between the store's write and the recorded position: the store holds writes the
    // MIRROR file does not record; they are applied again, with the same content.
    b.kill9().await;
    let mirror_file = dir_b.join("MIRROR");
    let mut recorded: Value =
        serde_json::from_slice(&std::fs::read(&mirror_file).unwrap()).unwrap();
    recorded["position"] = json!(last - 12);
    std::fs::write(&mirror_file, serde_json::to_vec(&recorded).unwrap()).unwrap();
    let b = copy(&nats, &dir_b, &[]).await;
    let mb = wait_position(&b, last).await;
    assert_eq!(ma["digest"], mb["digest"]);
    assert_eq!(ma["count"], mb["count"]);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

/// Concurrent writes overtake each other between the gateway and a copy: a write that arrives
/// before its predecessors (here 5 ms apart, newest first) waits for them to arrive the same
/// way instead of reading them from the log. The log here never holds these writes (the test
/// does not append them), so a copy that went to the log for them would answer 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_overtake_each_other_wait_for_their_predecessors() {
    let nats = NatsServer::start("mirror-overtake", None);
    let dir = temp_dir("mirror-overtake");
    let a = std::sync::Arc::new(copy(&nats, &dir, &[]).await);
    wait_position(&a, 0).await;
    let mut sent = Vec::new();
    for (i, seq) in [3_u64, 2, 1].into_iter().enumerate() {
        let a = std::sync::Arc::clone(&a);
        let from = seq as usize * 10;
        let body = Format::MsgPack
            .encode(&docs(from, from + 10, 8, 0))
            .unwrap();
        sent.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
            deliver(&a, Endpoint::Index, seq, &body).await
        }));
    }
    for handle in sent {
        assert_eq!(handle.await.unwrap(), 200);
    }
    let m = wait_position(&a, 3).await;
    assert_eq!(m["count"], 30, "{m}");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_copy_restores_from_its_peer_when_the_log_was_trimmed() {
    let nats = NatsServer::start("mirror-restore", None);
    let max = "65536";
    let log = shard_log(&nats.url(), 65_536).await;
    let (dir_a, dir_c) = (temp_dir("mirror-ra"), temp_dir("mirror-rc"));
    let a = copy(&nats, &dir_a, &["--log-max-bytes", max]).await;
    let mut last = 0;
    for round in 0..40u32 {
        let from = (round as usize % 25) * 4;
        let (seq, body) = append(&log, Endpoint::Index, &docs(from, from + 10, 32, round)).await;
        assert_eq!(deliver(&a, Endpoint::Index, seq, &body).await, 200);
        last = seq;
    }
    let bounds = log.bounds().await.unwrap();
    assert!(bounds.first > 1, "the log was trimmed: {bounds:?}");

    // An empty copy cannot read the log from 1: it takes A's snapshot, then the rest. Its data
    // folder stays the same folder, with the owner and mode the deployment gave it (a volume's
    // mount point, or a folder whose parent the service cannot write, cannot be made again).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(&dir_c).unwrap();
    std::fs::set_permissions(&dir_c, std::fs::Permissions::from_mode(0o710)).unwrap();
    let mode = |dir: &Path| std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
    let c = copy(&nats, &dir_c, &["--log-max-bytes", max, "--peer", &a.base]).await;
    let ma = wait_position(&a, last).await;
    let mc = wait_position(&c, last).await;
    assert_eq!(ma["digest"], mc["digest"], "{ma} {mc}");
    assert_eq!(
        mode(&dir_c),
        0o710,
        "the restore replaced the data folder itself instead of its content"
    );
    assert_eq!(ma["count"], mc["count"]);
    let (seq, body) = append(&log, Endpoint::Delete, &ids(&[3, 4, 5])).await;
    assert_eq!(deliver(&a, Endpoint::Delete, seq, &body).await, 200);
    assert_eq!(deliver(&c, Endpoint::Delete, seq, &body).await, 200);
    let ma = wait_position(&a, seq).await;
    let mc = wait_position(&c, seq).await;
    assert_eq!(ma["digest"], mc["digest"]);

    // The snapshot as a file, restored into a fresh shard that follows no log.
    let (status, headers, image) = get(&a, "mirror/snapshot", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers[SEQ_HEADER], seq.to_string());
    let file = temp_dir("mirror-file").join("shard.snap");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &image).unwrap();
    let dir_d = temp_dir("mirror-rd");
    let (file_s, dir_s) = (file.to_str().unwrap(), dir_d.to_str().unwrap());
    let d = Process::start(&[], &["--data-dir", dir_s, "--restore-from", file_s]).await;
    let md = mirror_stats(&d).await;
    assert_eq!(md["digest"], ma["digest"], "{md} {ma}");
    assert_eq!(md["log"], Value::Null);
    assert_eq!(md["position"], 0);
    drop(d);
    // A data directory that holds something is never overwritten by --restore-from.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowmesh-indexer"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_s,
            "--restore-from",
            file_s,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    drop((a, c));
    for dir in [dir_a, dir_c, dir_d] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The catch-up times of docs/benchmarks.md: a copy of 100,000 x 384 vectors restored from a
/// peer's snapshot, and the same read from the log. `cargo test --release -p flowmesh-indexer
/// --test mirror -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: about a minute"]
async fn measure_restore_and_catch_up_of_100k_x_384() {
    let nats = NatsServer::start("mirror-measure", None);
    let log = shard_log(&nats.url(), 1 << 30).await;
    let (dir_a, dir_b, dir_c) = (
        temp_dir("mirror-ma"),
        temp_dir("mirror-mb"),
        temp_dir("mirror-mc"),
    );
    let a = copy(&nats, &dir_a, &[]).await;
    let loading = Instant::now();
    let mut last = 0;
    for batch in 0..400 {
        let (seq, body) = append(
            &log,
            Endpoint::Index,
            &docs(batch * 250, batch * 250 + 250, 384, 0),
        )
        .await;
        assert_eq!(deliver(&a, Endpoint::Index, seq, &body).await, 200);
        last = seq;
    }
    let ma = wait_position(&a, last).await;
    assert_eq!(ma["count"], 100_000);
    println!(
        "loaded 100,000 x 384 into one copy in {:.1}s",
        loading.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let b = copy(&nats, &dir_b, &["--peer", &a.base]).await;
    let mb = wait_position(&b, last).await;
    let restore = started.elapsed();
    assert_eq!(ma["digest"], mb["digest"]);

    let started = Instant::now();
    let c = copy(&nats, &dir_c, &[]).await;
    let mc = wait_position(&c, last).await;
    let replay = started.elapsed();
    assert_eq!(ma["digest"], mc["digest"]);
    println!(
        "100,000 x 384: restored from a peer's snapshot in {:.1}s; caught up from the log in {:.1}s",
        restore.as_secs_f64(),
        replay.as_secs_f64()
    );
    drop((a, b, c));
    for dir in [dir_a, dir_b, dir_c] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
