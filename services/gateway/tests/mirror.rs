//! Mirrored copies end to end: real meshes of real binaries started by `flowmesh up` (the `hash`
//! encoder model, so no model files) with a real `nats-server` holding each shard's log. The
//! copies of every shard end with the same content (equal `/stats` digests) after many small
//! writes, a copy killed with SIGKILL during indexing, a copy whose data folder is lost, a copy
//! frozen with SIGSTOP (a host cut off) while writes go on; the ranker's embedded store too; and a
//! `flowmesh snapshot` restored with `flowmesh up --restore-from` into a fresh workspace holds
//! every document. Needs the service binaries next to `flowmesh` (`cargo build --workspace
//! --bins`) and `nats-server` (apt-get install nats-server).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::launch::{self, flow_dir, mesh_http, Launched};
use support::Http;

const INDEXER_FLOW: &str = "name: mirror
executors:
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer, shards: 2, replicas: 2}
";

const RANKER_FLOW: &str = "name: mirror
executors:
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer}
  - {name: ranker, uses: ranker, replicas: 2}
";

const FULL_FLOW: &str = "name: mirror
executors:
  - {name: encoder, uses: encoder, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer, shards: 2, replicas: 2}
  - {name: ranker, uses: ranker, replicas: 2}
";

/// How long copies may take to agree after the writes stopped (or a copy came back).
const CONVERGE: Duration = Duration::from_secs(60);

/// The text of document `i`: words of its own, so that its own text finds it first.
fn text(i: usize) -> String {
    format!("mirrored document {i} about zq{i}x and wv{i}k")
}

fn id(i: usize) -> String {
    format!("doc-{i}")
}

/// Starts `yaml` with `flowmesh up`, its stderr in `dir/stderr.log`.
async fn start(name: &str, yaml: &str) -> (std::path::PathBuf, Launched) {
    let (dir, flow) = flow_dir(name, yaml);
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let launched = launch::up(&flow, &dir, &[], Some(log)).await;
    (dir, launched)
}

/// One copy of one shard, from the launcher's `/status`.
#[derive(Debug, Clone)]
struct Member {
    label: String,
    shard: usize,
    address: String,
    pid: i32,
}

/// The copies of `executor`'s shards (`[shard][replica]`).
async fn copies(http: &Http, gateway: &str, executor: &str) -> Vec<Vec<Member>> {
    let status = http.get(&format!("{gateway}/status")).await.json();
    let mut shards: Vec<Vec<Member>> = Vec::new();
    for p in status["processes"].as_array().unwrap() {
        if p["executor"] != executor {
            continue;
        }
        let shard = usize::try_from(p["shard"].as_u64().unwrap()).unwrap();
        if shards.len() <= shard {
            shards.resize(shard + 1, Vec::new());
        }
        shards[shard].push(Member {
            label: p["label"].as_str().unwrap().to_owned(),
            shard,
            address: p["address"].as_str().unwrap().to_owned(),
            pid: i32::try_from(p["pid"].as_u64().unwrap_or(0)).unwrap(),
        });
    }
    assert!(!shards.is_empty(), "no copies of {executor} in {status}");
    shards
}

/// The `mirror` section of a copy's `/stats` (called with the mesh token), or `None` when the
/// copy does not answer.
async fn mirror_stats(copy: &Member) -> Option<Value> {
    let r = mesh_http()
        .try_send("GET", &format!("{}/stats", copy.address), &[], "")
        .await
        .ok()?;
    (r.status == 200).then(|| r.json()["mirror"].clone())
}

/// Waits (at most [`CONVERGE`]) until every copy of each shard is ready at the same position
/// with the same count and digest; returns each shard's `(position, count, digest)`.
async fn converged(shards: &[Vec<Member>]) -> Vec<(u64, u64, String)> {
    let began = Instant::now();
    loop {
        let mut agreed = Vec::new();
        let mut last = Vec::new();
        for copies in shards {
            let mut seen = Vec::new();
            for c in copies {
                seen.push(mirror_stats(c).await);
            }
            last.push(seen.clone());
            let first = seen[0].clone();
            let same = first.as_ref().is_some_and(|f| {
                f["state"] == "ready"
                    && seen.iter().all(|s| {
                        s.as_ref().is_some_and(|s| {
                            s["state"] == "ready"
                                && s["position"] == f["position"]
                                && s["count"] == f["count"]
                                && s["digest"] == f["digest"]
                        })
                    })
            });
            if same {
                let f = first.unwrap();
                agreed.push((
                    f["position"].as_u64().unwrap(),
                    f["count"].as_u64().unwrap(),
                    f["digest"].as_str().unwrap().to_owned(),
                ));
            }
        }
        if agreed.len() == shards.len() {
            return agreed;
        }
        assert!(
            began.elapsed() < CONVERGE,
            "copies did not converge in {CONVERGE:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Indexes documents `range` in requests of `per_request`, each of which must succeed.
async fn index_range(
    http: &Http,
    gateway: &str,
    range: std::ops::Range<usize>,
    per_request: usize,
) {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(per_request) {
        let data: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({"id": id(i), "text": text(i)}))
            .collect();
        let r = http
            .post(&format!("{gateway}/index"), &json!({"data": data}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

/// Searches the text of every document of `ids` (`top_k` 1, 20 queries a request) through the
/// gateway: each must find itself first. With `with_text`, the match carries its text (the
/// ranker filled it from its store).
async fn every_one_finds_itself(http: &Http, gateway: &str, ids: &[usize], with_text: bool) {
    let mut lost = Vec::new();
    for chunk in ids.chunks(20) {
        let queries: Vec<Value> = chunk.iter().map(|&i| json!({"text": text(i)})).collect();
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": queries, "parameters": {"top_k": 1}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let answer = r.json();
        for (&i, query) in chunk.iter().zip(answer["data"].as_array().unwrap()) {
            let top = &query["matches"][0];
            let found =
                top["id"] == id(i).as_str() && (!with_text || top["text"] == text(i).as_str());
            if !found {
                lost.push(format!("{}: {top}", id(i)));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} documents do not find themselves: {:?}",
        lost.len(),
        ids.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Waits until the copies of each shard agree ([`converged`]), then checks that together the
/// shards hold exactly `ids` (their counts add up) and that each id is on every copy of its
/// shard.
async fn hold_exactly(http: &Http, gateway: &str, shards: &[Vec<Member>], ids: &[usize]) {
    let agreed = converged(shards).await;
    let total: u64 = agreed.iter().map(|(_, count, _)| count).sum();
    assert_eq!(total, ids.len() as u64, "{agreed:?}");
    on_every_copy(http, gateway, shards, ids).await;
}

/// Checks id by id that every document of `ids` is on every copy of the indexer shard that holds
/// it and on no copy of the others: each document's embedding (from the encoder, called directly)
/// is searched on each copy directly with `top_k` 1.
async fn on_every_copy(gateway_http: &Http, gateway: &str, shards: &[Vec<Member>], ids: &[usize]) {
    let status = gateway_http.get(&format!("{gateway}/status")).await.json();
    let encoder = support::executor_addresses(&status, "name")
        .into_iter()
        .find(|(name, _)| name == "encoder")
        .unwrap()
        .1;
    let http = mesh_http();
    for chunk in ids.chunks(50) {
        let data: Vec<Value> = chunk.iter().map(|&i| json!({"text": text(i)})).collect();
        let r = http
            .post(&format!("{encoder}/search"), &json!({"data": data}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let mut query = r.json();
        query["parameters"] = json!({"top_k": 1});
        // Per copy: which of the chunk's documents it holds.
        let mut holders: Vec<Vec<(usize, bool)>> = Vec::new();
        for copies in shards {
            let mut per_shard = Vec::new();
            for c in copies {
                let r = http.post(&format!("{}/search", c.address), &query).await;
                assert_eq!(
                    r.status,
                    200,
                    "{}: {}",
                    c.label,
                    String::from_utf8_lossy(&r.body)
                );
                let answer = r.json();
                let held: Vec<bool> = chunk
                    .iter()
                    .zip(answer["data"].as_array().unwrap())
                    .map(|(&i, q)| q["matches"][0]["id"] == id(i).as_str())
                    .collect();
                per_shard.push(held);
            }
            for (r, held) in per_shard.iter().enumerate() {
                for (k, &i) in chunk.iter().enumerate() {
                    assert_eq!(
                        held[k],
                        per_shard[0][k],
                        "{} is on {} copy of shard {} but {} on copy {r}",
                        id(i),
                        if per_shard[0][k] {
                            "the first"
                        } else {
                            "not the first"
                        },
                        copies[0].shard,
                        if held[k] { "is" } else { "not" }
                    );
                }
            }
            holders.push(per_shard[0].iter().map(|&h| (0, h)).collect());
        }
        for (k, &i) in chunk.iter().enumerate() {
            let held_by = holders.iter().filter(|s| s[k].1).count();
            assert_eq!(held_by, 1, "{} is held by {held_by} shards", id(i));
        }
    }
}

/// What a load saw.
#[derive(Default)]
struct Seen {
    /// Documents whose `/index` answered 200.
    acked: Vec<usize>,
    /// Non-200 answers of `/index`: (document, status, body).
    failed_writes: Vec<(usize, u16, String)>,
    /// Searches sent, and the non-200 answers among them.
    searches: usize,
    failed_searches: Vec<(u16, String)>,
}

/// Indexes one new document (from `first`) and runs one search of an acknowledged one per round,
/// until `stop` is set, 2,000 rounds or 120 s.
fn start_load(
    gateway: String,
    first: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = Http::new();
        let began = Instant::now();
        for i in first..first + 2000 {
            if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(120) {
                break;
            }
            let r = http
                .try_send(
                    "POST",
                    &format!("{gateway}/index"),
                    &[],
                    serde_json::to_vec(&json!({"data": [{"id": id(i), "text": text(i)}]})).unwrap(),
                )
                .await;
            {
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(r) if r.status == 200 => s.acked.push(i),
                    Ok(r) => s.failed_writes.push((
                        i,
                        r.status,
                        String::from_utf8_lossy(&r.body).into_owned(),
                    )),
                    Err(e) => s.failed_writes.push((i, 0, e)),
                }
            }
            let target = i.saturating_sub(1).max(first) / 2 * 2;
            let r = http
                .try_send(
                    "POST",
                    &format!("{gateway}/search"),
                    &[],
                    serde_json::to_vec(
                        &json!({"data": [{"text": text(target)}], "parameters": {"top_k": 3}}),
                    )
                    .unwrap(),
                )
                .await;
            {
                let mut s = seen.lock().unwrap();
                s.searches += 1;
                match r {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => s
                        .failed_searches
                        .push((r.status, String::from_utf8_lossy(&r.body).into_owned())),
                    Err(e) => s.failed_searches.push((0, e)),
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Whether at least `at_least` documents are acknowledged within `within`.
async fn acked_reaches(seen: &Mutex<Seen>, at_least: usize, within: Duration) -> bool {
    let until = Instant::now() + within;
    while seen.lock().unwrap().acked.len() < at_least {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Waits (bounded) until at least `at_least` documents are acknowledged.
async fn wait_acked(seen: &Mutex<Seen>, at_least: usize, within: Duration) {
    let reached = acked_reaches(seen, at_least, within).await;
    let n = seen.lock().unwrap().acked.len();
    assert!(
        reached,
        "only {n} of {at_least} documents acknowledged in {within:?}"
    );
}

/// Waits (bounded) until the launcher says `label` runs again after `restarts` restarts.
async fn wait_running(http: &Http, gateway: &str, label: &str, restarts: u64) -> Value {
    let began = Instant::now();
    loop {
        let status = http.get(&format!("{gateway}/status")).await.json();
        let p = status["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == label)
            .unwrap()
            .clone();
        if p["state"] == "running" && p["restarts"].as_u64() == Some(restarts) {
            return p;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{label} not running again: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the load and checks what it saw: no failed search, no failed write (write consistency
/// 1: one live copy acknowledges), and documents acknowledged.
async fn finish_load(
    stop: &AtomicBool,
    load: tokio::task::JoinHandle<()>,
    seen: &Mutex<Seen>,
) -> Vec<usize> {
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let s = seen.lock().unwrap();
    assert!(
        s.failed_searches.is_empty(),
        "{} of {} searches failed: {:?}",
        s.failed_searches.len(),
        s.searches,
        &s.failed_searches[..s.failed_searches.len().min(5)]
    );
    assert!(
        s.failed_writes.is_empty(),
        "{} writes failed: {:?}",
        s.failed_writes.len(),
        &s.failed_writes[..s.failed_writes.len().min(5)]
    );
    s.acked.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_each_shard_hold_the_same_documents() {
    let (dir, mut launched) = start("mirror-diverge", INDEXER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    // 200 documents in 100 requests: with load-balanced copies these scattered over the copies.
    index_range(&http, &gateway, 0..200, 2).await;
    let all: Vec<usize> = (0..200).collect();
    every_one_finds_itself(&http, &gateway, &all, false).await;
    let shards = copies(&http, &gateway, "indexer").await;
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|c| c.len() == 2), "{shards:?}");
    hold_exactly(&http, &gateway, &shards, &all).await;
    // The gateway compares the copies too.
    let status = http.get(&format!("{gateway}/status")).await.json();
    assert_eq!(status["diverged"], false, "{status}");
    let indexer = status["executors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "indexer")
        .unwrap();
    assert_eq!(indexer["mirrored"], true, "{indexer}");
    assert_eq!(indexer["converged"], json!([true, true]), "{indexer}");
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_during_indexing_gets_every_acknowledged_document() {
    let (dir, mut launched) = start("mirror-kill", INDEXER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let shards = copies(&http, &gateway, "indexer").await;
    let victim = shards[1][0].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = start_load(gateway.clone(), 0, Arc::clone(&stop), Arc::clone(&seen));
    wait_acked(&seen, 20, Duration::from_secs(30)).await;
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    let acked_at_kill = seen.lock().unwrap().acked.len();
    wait_running(&http, &gateway, &victim.label, 1).await;
    // Writes go on after it is back, too.
    wait_acked(&seen, acked_at_kill + 40, Duration::from_secs(60)).await;
    let acked = finish_load(&stop, load, &seen).await;

    let shards = copies(&http, &gateway, "indexer").await;
    hold_exactly(&http, &gateway, &shards, &acked).await;
    every_one_finds_itself(&http, &gateway, &acked, false).await;
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_lost_its_disk_restores_from_its_peer() {
    let (dir, mut launched) = start("mirror-disk", INDEXER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    index_range(&http, &gateway, 0..100, 5).await;
    let shards = copies(&http, &gateway, "indexer").await;
    let victim = shards[0][1].clone();
    let data = dir.join("ws/mirror/indexer/shard-0/replica-1");
    assert!(data.is_dir(), "{} is not the copy's data", data.display());

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = start_load(gateway.clone(), 100, Arc::clone(&stop), Arc::clone(&seen));
    wait_acked(&seen, 10, Duration::from_secs(30)).await;
    // Frozen first, so that it writes nothing more; its disk is lost; then it dies.
    support::sigstop(victim.pid).await;
    std::fs::remove_dir_all(&data).unwrap();
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    wait_running(&http, &gateway, &victim.label, 1).await;
    let acked_back = seen.lock().unwrap().acked.len();
    wait_acked(&seen, acked_back + 20, Duration::from_secs(60)).await;
    let mut acked = finish_load(&stop, load, &seen).await;

    let shards = copies(&http, &gateway, "indexer").await;
    acked.extend(0..100);
    acked.sort_unstable();
    hold_exactly(&http, &gateway, &shards, &acked).await;
    // It was seeded from its peer, not only replayed from the log.
    let logged = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let prefix = format!("[{}]", victim.label);
    assert!(
        logged
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("from peer")),
        "{} did not restore from its peer",
        victim.label
    );
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_copy_catches_up_when_it_thaws() {
    let (dir, mut launched) = start("mirror-frozen", INDEXER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let shards = copies(&http, &gateway, "indexer").await;
    let victim = shards[0][1].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = start_load(gateway.clone(), 0, Arc::clone(&stop), Arc::clone(&seen));
    wait_acked(&seen, 10, Duration::from_secs(30)).await;
    // A host cut off: the copy neither answers nor dies, while writes go on.
    support::sigstop(victim.pid).await;
    let acked_at_stop = seen.lock().unwrap().acked.len();
    let frozen = Instant::now();
    let reached = acked_reaches(&seen, acked_at_stop + 40, Duration::from_secs(90)).await;
    // Thawed before any assertion, so that a failure leaves no stopped process behind.
    kill(Pid::from_raw(victim.pid), Signal::SIGCONT).unwrap();
    assert!(reached, "writes did not go on while a copy was frozen");
    let frozen_for = frozen.elapsed();
    wait_acked(&seen, acked_at_stop + 60, Duration::from_secs(60)).await;
    let acked = finish_load(&stop, load, &seen).await;

    eprintln!("a copy was frozen for {frozen_for:?}");
    hold_exactly(&http, &gateway, &shards, &acked).await;
    // Not restarted: it caught up by itself.
    let p = wait_running(&http, &gateway, &victim.label, 0).await;
    assert_eq!(p["pid"].as_u64(), Some(u64::try_from(victim.pid).unwrap()));
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranker_copies_with_the_embedded_store_hold_the_same_documents() {
    let (dir, mut launched) = start("mirror-ranker", RANKER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    index_range(&http, &gateway, 0..120, 2).await;
    let shards = copies(&http, &gateway, "ranker").await;
    assert_eq!(shards[0].len(), 2);
    // One copy is killed and comes back while writes go on.
    let victim = shards[0][1].clone();
    kill(Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    index_range(&http, &gateway, 120..160, 2).await;
    wait_running(&http, &gateway, &victim.label, 1).await;
    index_range(&http, &gateway, 160..200, 2).await;
    let shards = copies(&http, &gateway, "ranker").await;
    let agreed = converged(&shards).await;
    assert_eq!(agreed[0].1, 200, "{agreed:?}");
    let all: Vec<usize> = (0..200).collect();
    every_one_finds_itself(&http, &gateway, &all, true).await;
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads `DIR/manifest.json` and checks each file's size and SHA-256 against it.
fn checked_manifest(dir: &Path) -> Value {
    use sha2::Digest as _;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for shard in manifest["shards"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(shard["file"].as_str().unwrap())).unwrap();
        assert_eq!(shard["bytes"].as_u64(), Some(bytes.len() as u64), "{shard}");
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(shard["sha256"].as_str(), Some(sha.as_str()), "{shard}");
    }
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_a_fresh_workspace() {
    let (dir, mut launched) = start("mirror-snapshot", FULL_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    index_range(&http, &gateway, 0..150, 3).await;
    let indexer = converged(&copies(&http, &gateway, "indexer").await).await;
    let ranker = converged(&copies(&http, &gateway, "ranker").await).await;

    let out = dir.join("snapshot");
    let run = tokio::process::Command::new(launch::flowmesh())
        .args(["snapshot", "--gateway", &gateway, "--out"])
        .arg(&out)
        .env_remove("FLOWMESH_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest = checked_manifest(&out);
    assert_eq!(manifest["flow"], "mirror");
    let entries = manifest["shards"].as_array().unwrap();
    let entry = |executor: &str, shard: u64| {
        entries
            .iter()
            .find(|e| e["executor"] == executor && e["shard"] == shard)
            .unwrap_or_else(|| panic!("no {executor}/{shard} in {manifest}"))
    };
    for (shard, (position, _, _)) in indexer.iter().enumerate() {
        assert_eq!(entry("indexer", shard as u64)["position"], *position);
    }
    assert_eq!(entry("ranker", 0)["position"], ranker[0].0);
    assert!(
        !entries.iter().any(|e| e["executor"] == "encoder"),
        "{manifest}"
    );
    launched.stop().await;

    // A fresh workspace, from the snapshot.
    let (dir2, flow2) = flow_dir("mirror-restored", FULL_FLOW);
    let log = std::fs::File::create(dir2.join("stderr.log")).unwrap();
    let mut restored = launch::up_with_args(
        &flow2,
        &dir2,
        &["--restore-from", out.to_str().unwrap()],
        &[],
        Some(log),
    )
    .await;
    let gateway2 = restored.gateway.clone();
    let indexer2 = converged(&copies(&http, &gateway2, "indexer").await).await;
    let ranker2 = converged(&copies(&http, &gateway2, "ranker").await).await;
    let content = |agreed: &[(u64, u64, String)]| -> Vec<(u64, String)> {
        agreed.iter().map(|(_, c, d)| (*c, d.clone())).collect()
    };
    assert_eq!(content(&indexer2), content(&indexer));
    assert_eq!(content(&ranker2), content(&ranker));
    let all: Vec<usize> = (0..150).collect();
    every_one_finds_itself(&http, &gateway2, &all, true).await;
    // The restored mesh takes writes on its new log, and its copies still agree.
    index_range(&http, &gateway2, 150..170, 2).await;
    let after = converged(&copies(&http, &gateway2, "indexer").await).await;
    let total: u64 = after.iter().map(|(_, count, _)| count).sum();
    assert_eq!(total, 170, "{after:?}");
    let all: Vec<usize> = (0..170).collect();
    every_one_finds_itself(&http, &gateway2, &all, true).await;

    // Without a manifest, nothing starts.
    let (dir3, flow3) = flow_dir("mirror-no-manifest", FULL_FLOW);
    let run = tokio::process::Command::new(launch::flowmesh())
        .arg("up")
        .arg(&flow3)
        .args(["--listen", "127.0.0.1:0", "--workspace"])
        .arg(dir3.join("ws"))
        .arg("--restore-from")
        .arg(&dir3)
        .env("FLOWMESH_MESH_TOKEN", launch::mesh_token())
        .output()
        .await
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("manifest.json"), "{stderr}");

    restored.stop().await;
    for d in [dir, dir2, dir3] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The pid of the `nats-server` that `flowmesh up` started, from its ports file
/// (`nats-server_PID.ports`).
fn nats_pid(dir: &Path) -> i32 {
    let ports = dir.join("ws/mirror/log/ports");
    std::fs::read_dir(&ports)
        .unwrap()
        .filter_map(Result::ok)
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("nats-server_")?
                .strip_suffix(".ports")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ports file in {}", ports.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_log_server_is_restarted_and_writes_resume() {
    let (dir, mut launched) = start("mirror-nats", INDEXER_FLOW).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    index_range(&http, &gateway, 0..50, 5).await;
    let pid = nats_pid(&dir);
    // Its configuration holds the mesh token: readable by this user only, never on its command line.
    let conf = dir.join("ws/mirror/log/nats.conf");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&conf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", conf.display());
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .contains(launch::mesh_token()));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(launch::mesh_token()));
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    // Writes fail while the log is down (never acknowledged without it), then go on.
    let began = Instant::now();
    let probe = json!({"data": [{"id": id(50), "text": text(50)}]});
    loop {
        let r = http.post(&format!("{gateway}/index"), &probe).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "writes did not resume after the log server was killed: {}",
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = nats_pid(&dir);
    assert_ne!(restarted, pid, "nats-server was not started again");
    index_range(&http, &gateway, 51..100, 7).await;
    let shards = copies(&http, &gateway, "indexer").await;
    let agreed = converged(&shards).await;
    let total: u64 = agreed.iter().map(|(_, count, _)| count).sum();
    assert_eq!(total, 100, "{agreed:?}");
    let all: Vec<usize> = (0..100).collect();
    every_one_finds_itself(&http, &gateway, &all, false).await;
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_snapshots_need_a_read_write_key() {
    let (dir, flow) = flow_dir("mirror-snapshot-keys", INDEXER_FLOW);
    let env = [
        ("FLOWMESH_API_KEY", "rw-key-for-snapshots".to_owned()),
        (
            "FLOWMESH_READ_ONLY_API_KEY",
            "ro-key-for-snapshots".to_owned(),
        ),
    ];
    let mut launched = launch::up(&flow, &dir, &env, None).await;
    let gateway = launched.gateway.clone();
    let rw = Http::new().with_header("api-key", "rw-key-for-snapshots");
    index_range(&rw, &gateway, 0..10, 5).await;
    let url = format!("{gateway}/snapshot/indexer/0");
    assert_eq!(Http::new().get(&url).await.status, 401);
    let ro = Http::new().with_header("api-key", "ro-key-for-snapshots");
    assert_eq!(ro.get(&url).await.status, 404);
    let r = rw.get(&url).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!r.body.is_empty());
    let position: u64 = r.headers["x-flowmesh-log-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(position >= 1, "{position}");
    let r = rw.get(&format!("{gateway}/snapshot/encoder/0")).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = rw.get(&format!("{gateway}/snapshot/indexer/7")).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let r = rw.get(&format!("{gateway}/snapshot/nothing/0")).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // `flowmesh snapshot` with the key from the environment; a read-only key is refused.
    for (key, ok) in [
        ("ro-key-for-snapshots", false),
        ("rw-key-for-snapshots", true),
    ] {
        let out = dir.join(format!("snapshot-{ok}"));
        let run = tokio::process::Command::new(launch::flowmesh())
            .args(["snapshot", "--gateway", &gateway, "--out"])
            .arg(&out)
            .env("FLOWMESH_API_KEY", key)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.success(), ok, "{stderr}");
        assert!(!stderr.contains(key), "the key is printed: {stderr}");
        if ok {
            let manifest = checked_manifest(&out);
            assert_eq!(
                manifest["shards"].as_array().unwrap().len(),
                2,
                "{manifest}"
            );
        }
    }
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_runs_only_for_mirrored_executors() {
    // No mirrored executor: no log server, not even looked for.
    let (dir, flow) = flow_dir(
        "mirror-none",
        "name: plain
executors:
  - {name: encoder, uses: encoder, replicas: 2, with: {model: hash, dim: 64}}
  - {name: indexer, uses: indexer, shards: 2}
",
    );
    let env = [(
        "FLOWMESH_NATS_SERVER",
        "/nonexistent/nats-server".to_owned(),
    )];
    let mut launched = launch::up(&flow, &dir, &env, None).await;
    assert!(!dir.join("ws/plain/log").exists());
    launched.stop().await;
    // A mirrored executor and no nats-server: a clear error.
    let (dir2, flow2) = flow_dir("mirror-no-nats", INDEXER_FLOW);
    let run = tokio::process::Command::new(launch::flowmesh())
        .arg("up")
        .arg(&flow2)
        .args(["--listen", "127.0.0.1:0", "--workspace"])
        .arg(dir2.join("ws"))
        .env("FLOWMESH_NATS_SERVER", "/nonexistent/nats-server")
        .env("FLOWMESH_MESH_TOKEN", launch::mesh_token())
        .output()
        .await
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("apt-get install nats-server"), "{stderr}");
    for d in [dir, dir2] {
        let _ = std::fs::remove_dir_all(d);
    }
}
