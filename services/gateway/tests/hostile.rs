//! Hostile input against a real mesh (`flowmesh up` with the real services): the requests that
//! used to knock flowmesh over (issue 12), each checked for its status, for every process still
//! being alive, for a bound on their peak memory, and for a normal search answering afterwards.
//!
//! The cases share one launched mesh per test (starting one costs seconds); a test that stalls
//! a process starts its own. Needs the service binaries next to `flowmesh`
//! (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::launch::{self, flow_dir, Launched};
use support::Http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The text Flow of flows/text.yml with the hash encoder (the model does not matter for these
/// cases) and short header and call timeouts, so that the connection cases finish in seconds.
const FLOW: &str = "name: hostile
with: {request_size: 50, timeout_ms: 3000}
executors:
  - {name: segmenter, uses: sentencizer}
  - {name: encoder, uses: encoder, replicas: 2, with: {model: hash, dim: 64, workers: 1}}
  - name: indexer
    uses: indexer
    shards: 2
    polling: {/index: any, /update: any, /search: all, /delete: all}
    with: {distinct_parents: true}
  - {name: ranker, uses: ranker}
";

/// Header (and idle keep-alive) timeout of every process of the mesh, in seconds.
const HEADER_TIMEOUT_SECS: u64 = 2;
/// Time every process of the mesh gives a request's whole body, in seconds.
const BODY_TIMEOUT_SECS: u64 = 3;

async fn start(name: &str) -> (Launched, String, std::path::PathBuf) {
    let (dir, flow) = flow_dir(name, FLOW);
    let env = [
        (
            "FLOWMESH_HEADER_TIMEOUT_SECS",
            HEADER_TIMEOUT_SECS.to_string(),
        ),
        ("FLOWMESH_BODY_TIMEOUT_SECS", BODY_TIMEOUT_SECS.to_string()),
    ];
    let log = std::fs::File::create(dir.join("mesh.log")).unwrap();
    // A limit that regressed would allocate gigabytes (top_k 10^12 once asked for 54 TB): each
    // process gets 4 GiB of address space, far above what it needs here.
    let launched = launch::up_limited(&flow, &dir, &env, Some(log), Some(4 << 30)).await;
    let gateway = launched.gateway.clone();
    (launched, gateway, dir)
}

/// [`start`], then index and search 20 documents: the mesh, its gateway and its `/status`.
async fn start_serving(name: &str) -> (Launched, String, Value) {
    let (launched, gateway, _dir) = start(name).await;
    let http = launch::mesh_http();
    index_and_search(&http, &gateway, 20).await;
    let status = http.get(&format!("{gateway}/status")).await.json();
    (launched, gateway, status)
}

/// The pids of `flowmesh up`'s children: the executor processes.
fn children(parent: u32) -> Vec<u32> {
    let path = format!("/proc/{parent}/task/{parent}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `VmHWM` (peak resident memory) of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Indexes `n` short documents and checks that a search finds them with their text.
async fn index_and_search(http: &Http, gateway: &str, n: usize) {
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("doc-{i}"), "text": format!("document number {i} is about horses and rain")}))
        .collect();
    let r = http
        .post(&format!("{gateway}/index"), &json!({"data": data}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_normal_search(http, gateway).await;
}

async fn assert_normal_search(http: &Http, gateway: &str) {
    let r = http
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "horses and rain"}], "parameters": {"top_k": 3}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let matches = r.json()["data"][0]["matches"].as_array().unwrap().clone();
    assert_eq!(matches.len(), 3, "{matches:?}");
    for m in &matches {
        assert!(m["text"].is_string(), "a match without its content: {m}");
    }
}

fn assert_error(r: &support::HttpResponse, status: u16, kind: &str, mentions: &[&str]) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{body}");
    let v = r.json();
    assert_eq!(v["kind"], kind, "{body}");
    for m in mentions {
        assert!(
            v["error"].as_str().unwrap().contains(m),
            "{m:?} not in {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_leave_the_mesh_serving() {
    let (mut launched, gateway, status) = start_serving("hostile").await;
    let http = launch::mesh_http();
    let executors = support::executor_addresses(&status, "uses");
    let pids = children(launched.child.id().unwrap());
    assert_eq!(pids.len(), 5, "2 encoders, 2 indexer shards, 1 ranker");

    // top_k used to size allocations: 10^12 aborted both shards, 1e9 took 2 GB each.
    for top_k in [json!(1_000_000_000_000_u64), json!(1e9)] {
        let t0 = Instant::now();
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": [{"text": "a horse"}], "parameters": {"top_k": top_k}}),
            )
            .await;
        assert_error(&r, 400, "invalid_parameter", &["top_k", "--max-top-k"]);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    // Invalid top_k values used to become 10 silently.
    for top_k in [json!(0), json!(-1), json!("abc"), json!(1.5), json!(true)] {
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": [{"text": "a horse"}], "parameters": {"top_k": top_k}}),
            )
            .await;
        assert_error(&r, 400, "invalid_parameter", &["top_k"]);
    }
    // The same straight to an indexer shard: the executors check it too.
    let indexer = &executors.iter().find(|(u, _)| u == "indexer").unwrap().1;
    let r = http
        .post(
            &format!("{indexer}/search"),
            &json!({"data": [{"embedding": vec![0.1; 64]}], "parameters": {"top_k": 1_000_000_000_000_u64}}),
        )
        .await;
    assert_error(&r, 400, "invalid_parameter", &["top_k"]);

    // One 5 MB text of ~111,000 sentences: refused at once instead of growing the encoder.
    let huge = "The quick brown fox jumps over the lazy dog. ".repeat(111_111);
    let t0 = Instant::now();
    let r = http
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": huge}]}),
        )
        .await;
    assert_eq!(
        r.status,
        413,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    assert_eq!(r.json()["kind"], "limit_exceeded");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // A MessagePack body whose embedding array header claims 2^32-1 floats.
    let mut body = vec![0x81, 0xa4];
    body.extend_from_slice(b"data");
    body.extend_from_slice(&[0x91, 0x81, 0xa9]);
    body.extend_from_slice(b"embedding");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    for (_, base) in &executors {
        let r = http
            .send(
                "POST",
                &format!("{base}/index"),
                "application/msgpack",
                body.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            400,
            "{base}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Values beyond f32 used to come back as null; NaN ranked first.
    let r = http
        .post(
            &format!("{indexer}/index"),
            &json!({"data": [{"id": "inf", "embedding": vec![1e300_f64; 64]}]}),
        )
        .await;
    assert_error(&r, 400, "invalid_body", &["finite"]);

    // Every process is alive, none grew large, and a normal search still answers.
    for pid in &pids {
        assert!(alive(*pid), "executor process {pid} died");
        let peak = peak_rss_mib(*pid);
        assert!(peak < 512, "process {pid} peaked at {peak} MiB");
    }
    let gateway_peak = peak_rss_mib(launched.child.id().unwrap());
    assert!(
        gateway_peak < 512,
        "the gateway peaked at {gateway_peak} MiB"
    );
    assert_normal_search(&http, &gateway).await;
    launched.stop().await;
}

/// Reads from `stream` until the server closes it; `Some(elapsed)` when it did within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), stream.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {} // a 408 or an error answer before the close
        }
    }
}

/// What the server sends on `stream` within `limit` (its status line, headers and whatever body
/// arrived), read until it pauses or closes.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let wait = if out.is_empty() {
            limit.saturating_sub(t0.elapsed())
        } else {
            Duration::from_millis(300)
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let (mut launched, gateway, _dir) = start("hostile-conns").await;
    let http = launch::mesh_http();
    let status = http.get(&format!("{gateway}/status")).await.json();
    let indexer = support::executor_addresses(&status, "uses")
        .into_iter()
        .find(|(u, _)| u == "indexer")
        .unwrap()
        .1;
    let limit = Duration::from_secs(HEADER_TIMEOUT_SECS + 4);
    for base in [&gateway, &indexer] {
        let addr = base.trim_start_matches("http://").to_owned();
        // Slowloris: headers one byte at a time, never finished.
        let mut slow = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"POST /search HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            slow.push(s);
        }
        let trickle = async {
            for _ in 0..(HEADER_TIMEOUT_SECS + 3) {
                for s in &mut slow {
                    let _ = s.write_all(b"X").await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        // Idle: connected, nothing sent.
        let mut idle = Vec::new();
        for _ in 0..100 {
            idle.push(TcpStream::connect(&addr).await.unwrap());
        }
        trickle.await;
        for (kind, streams) in [("slow", &mut slow), ("idle", &mut idle)] {
            for s in streams.iter_mut() {
                assert!(
                    closed_within(s, limit).await.is_some(),
                    "{base}: a {kind} connection was still open after {limit:?}"
                );
            }
        }
        // A body trickled a byte a second gets 408 once the body timeout has passed, well
        // before the trickle would have ended.
        let t0 = Instant::now();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // With the mesh token: the executor's check comes before the body is read.
        let head = format!(
            "POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
            launch::mesh_token()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (mut rx, mut tx) = s.split();
        let (answer, ()) = tokio::join!(read_head(&mut rx, limit), async {
            for _ in 0..(BODY_TIMEOUT_SECS + 2) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.write_all(b" ").await;
            }
        });
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{base}: a trickled body got {answer:?}"
        );
        assert!(answer.contains("--body-timeout-secs"), "{answer}");
        assert!(
            t0.elapsed() < limit + Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        // An idle keep-alive connection is closed too, after its answer.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(
            closed_within(&mut s, limit).await.is_some(),
            "{base}: keep-alive kept"
        );
    }
    assert_eq!(
        http.get(&format!("{gateway}/readyz")).await.status,
        200,
        "the mesh still serves"
    );
    launched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_is_cut_off_and_named() {
    let (mut launched, gateway, status) = start_serving("hostile-stall").await;
    let http = launch::mesh_http();
    let shard1 = status["executors"][2]["shards"][1][0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let port: u16 = shard1.rsplit(':').next().unwrap().parse().unwrap();
    let pid = children(launched.child.id().unwrap())
        .into_iter()
        .find(|pid| listens_on(*pid, port))
        .expect("the process of indexer shard 1");
    let stop = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    support::sigstop(pid as i32).await;
    let t0 = Instant::now();
    let r = http
        .post(
            &format!("{gateway}/search"),
            &json!({"data": [{"text": "horses"}]}),
        )
        .await;
    let waited = t0.elapsed();
    stop(nix::sys::signal::Signal::SIGCONT);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(r.status == 503 || r.status == 504, "{}: {body}", r.status);
    // The flow's per-call timeout is 3 s: the stall is cut off near it, not waited out.
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(body.contains("shard 1"), "{body}");
    assert!(body.contains(&shard1), "{body}");
    // Once it runs again, the mesh answers in full.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": [{"text": "horses and rain"}], "parameters": {"top_k": 3}}),
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_normal_search(&http, &gateway).await;
    launched.stop().await;
}

/// Whether `pid` has a listening socket on `port` (read from /proc/net/tcp and its fds).
fn listens_on(pid: u32, port: u16) -> bool {
    let hex = format!(":{port:04X}");
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // local address, state 0A = LISTEN, inode
            (cols.len() > 9 && cols[1].ends_with(&hex) && cols[3] == "0A")
                .then(|| cols[9].to_owned())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path())
            .map(|l| {
                let l = l.to_string_lossy();
                inodes.iter().any(|i| l == format!("socket:[{i}]"))
            })
            .unwrap_or(false)
    })
}
