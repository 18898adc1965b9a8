//! Supervision in `flowmesh up`: real meshes of real binaries (the `hash` encoder model, so no
//! model files), executor processes killed with SIGKILL under a bounded index and search load.
//! A killed process comes back on the same address, `/status` says so, and nothing the mesh
//! acknowledged is lost; a process that cannot start again ends `failed` while the rest of the
//! mesh serves. Needs the service binaries next to `flowmesh` (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::launch::{self, flow_dir, metric, Launched};
use support::Http;

const FLOW: &str = "name: supervised
executors:
  - {name: encoder, uses: encoder, replicas: 2, with: {model: hash, dim: 128}}
  - {name: indexer, uses: indexer, shards: 2}
  - {name: ranker, uses: ranker}
";

/// How long a killed executor may take to answer again at its address.
const RECOVERY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_encoder_replica_comes_back_on_its_address() {
    kill_under_load("encoder/0/1", "encoder-kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_indexer_shard_comes_back_with_its_documents() {
    kill_under_load("indexer/1/0", "indexer-kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ranker_comes_back_with_its_documents() {
    kill_under_load("ranker/0/0", "ranker-kill").await;
}

/// The gateway's `flowmesh_executor_restarts_total` of `label`.
async fn restarts_counted(http: &Http, gateway: &str, label: &str) -> Option<f64> {
    let text = http.get(&format!("{gateway}/metrics")).await.body;
    let text = String::from_utf8(text.to_vec()).unwrap();
    metric(
        &text,
        "flowmesh_executor_restarts_total",
        &[("process", label)],
    )
}

/// `/status`'s entry for the process `label`.
async fn process(http: &Http, gateway: &str, label: &str) -> Value {
    let status = http.get(&format!("{gateway}/status")).await.json();
    let processes = status["processes"].as_array().expect("a processes section");
    processes
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no process {label} in {status}"))
        .clone()
}

/// Indexes document `id` with [`text`]`(i)`; the write must succeed.
async fn index_text(http: &Http, gateway: &str, id: &str, i: usize) {
    let body = json!({"data": [{"id": id, "text": text(i)}]});
    let r = http.post(&format!("{gateway}/index"), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// The `/status` entry of process `label` once it is `failed`, polled for at most `within`.
async fn wait_failed(http: &Http, gateway: &str, label: &str, within: Duration) -> Value {
    let began = Instant::now();
    loop {
        let p = process(http, gateway, label).await;
        if p["state"] == "failed" {
            return p;
        }
        assert!(began.elapsed() < within, "not failed in time: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `/status` entries of every process but `label`.
async fn others(http: &Http, gateway: &str, label: &str) -> Vec<Value> {
    let status = http.get(&format!("{gateway}/status")).await.json();
    let processes = status["processes"].as_array().expect("a processes section");
    processes
        .iter()
        .filter(|p| p["label"] != label)
        .cloned()
        .collect()
}

fn pid_of(entry: &Value) -> Pid {
    Pid::from_raw(i32::try_from(entry["pid"].as_u64().unwrap()).unwrap())
}

/// The text indexed as document `i`: words of its own, so its own text finds it first.
fn text(i: usize) -> String {
    format!("load document {i} about zq{i}x and wv{i}k")
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Ids whose `/index` answered 200, with when the request was sent.
    acked: Vec<(String, Instant)>,
    /// Statuses of all requests, with when each was sent.
    answers: Vec<(Instant, u16)>,
}

/// Indexes one new document and runs one search per round, until `stop` is set, 1,500 rounds,
/// or 90 s.
fn start_load(
    gateway: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = Http::new();
        let began = Instant::now();
        for i in 0..1500 {
            if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(90) {
                break;
            }
            let id = format!("load-{i}");
            let sent = Instant::now();
            let r = http
                .post(
                    &format!("{gateway}/index"),
                    &json!({"data": [{"id": id, "text": text(i)}]}),
                )
                .await;
            {
                let mut s = seen.lock().unwrap();
                s.answers.push((sent, r.status));
                if r.status == 200 {
                    s.acked.push((id, sent));
                }
            }
            let sent = Instant::now();
            let r = http
                .post(
                    &format!("{gateway}/search"),
                    &json!({"data": [{"text": text(i / 2)}], "parameters": {"top_k": 3}}),
                )
                .await;
            seen.lock().unwrap().answers.push((sent, r.status));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits (bounded) until at least `at_least` documents are acknowledged.
async fn wait_acked(seen: &Mutex<Seen>, at_least: usize, within: Duration) {
    let until = Instant::now() + within;
    while seen.lock().unwrap().acked.len() < at_least {
        assert!(
            Instant::now() < until,
            "fewer than {at_least} documents acknowledged in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kill_under_load(label: &str, name: &str) {
    let (dir, flow) = flow_dir(name, FLOW);
    let log = dir.join("stderr.log");
    let mut launched =
        launch::up(&flow, &dir, &[], Some(std::fs::File::create(&log).unwrap())).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let before = process(&http, &gateway, label).await;
    assert_eq!(before["state"], "running", "{before}");
    assert_eq!(before["restarts"], 0, "{before}");
    let address = before["address"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load = start_load(gateway.clone(), Arc::clone(&stop), Arc::clone(&seen));
    wait_acked(&seen, 10, Duration::from_secs(30)).await;

    let killed_at = Instant::now();
    kill(pid_of(&before), Signal::SIGKILL).unwrap();
    let after = loop {
        let p = process(&http, &gateway, label).await;
        if p["state"] == "running" && p["restarts"] == 1 {
            break p;
        }
        assert!(killed_at.elapsed() < RECOVERY, "not restarted in time: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let restarted_in = killed_at.elapsed();
    assert_eq!(
        after["address"],
        address.as_str(),
        "the same address: {after}"
    );
    assert_ne!(after["pid"], before["pid"], "a new process: {after}");
    assert_eq!(after["last_exit"]["signal"], 9, "{after}");
    assert!(after["log"].as_array().is_some(), "{after}");
    assert_eq!(restarts_counted(&http, &gateway, label).await, Some(1.0));
    // The same address answers (its own readiness), and the mesh serves writes again.
    let readyz = format!("{address}/readyz");
    while http.get(&readyz).await.status != 200 {
        assert!(killed_at.elapsed() < RECOVERY, "{readyz} not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_at_restart = seen.lock().unwrap().acked.len();
    wait_acked(&seen, acked_at_restart + 10, RECOVERY).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let answered_again = seen
        .acked
        .iter()
        .map(|(_, sent)| *sent)
        .find(|sent| *sent > killed_at)
        .map(|sent| sent.duration_since(killed_at));
    let failed = seen
        .answers
        .iter()
        .filter(|(sent, status)| *sent > killed_at && *status != 200)
        .count();
    // The mesh answers everything again within seconds: the last failure was sent soon after.
    let last_failure = seen
        .answers
        .iter()
        .filter(|(sent, status)| *sent > killed_at && *status != 200)
        .map(|(sent, _)| sent.duration_since(killed_at))
        .max();
    eprintln!(
        "{label}: restarted in {restarted_in:?}; first acknowledged write sent {answered_again:?} \
         after the kill, last failed request {last_failure:?} after it; {failed} non-200 \
         answers; {} writes acknowledged",
        seen.acked.len()
    );
    assert!(
        last_failure.is_none_or(|t| t < RECOVERY),
        "requests failed {last_failure:?} after the kill"
    );
    every_acknowledged_document_is_found(&http, &gateway, &seen.acked).await;
    stop_restarts_nothing(&mut launched, &log, &after, &address).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A search by each acknowledged document's own text finds it, with its text.
async fn every_acknowledged_document_is_found(
    http: &Http,
    gateway: &str,
    acked: &[(String, Instant)],
) {
    for chunk in acked.chunks(25) {
        let queries: Vec<Value> = chunk
            .iter()
            .map(|(id, _)| {
                let i: usize = id.trim_start_matches("load-").parse().unwrap();
                json!({"text": text(i)})
            })
            .collect();
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": queries, "parameters": {"top_k": 3}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let answer = r.json();
        for ((id, _), query) in chunk.iter().zip(answer["data"].as_array().unwrap()) {
            let found = query["matches"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == id.as_str());
            let i: usize = id.trim_start_matches("load-").parse().unwrap();
            assert_eq!(
                found.map(|m| m["text"].clone()),
                Some(Value::from(text(i))),
                "acknowledged {id} is lost: {query}"
            );
        }
    }
}

/// SIGTERM stops the mesh: the restarted process is gone, nothing listens at its address, and
/// nothing was restarted on the way down.
async fn stop_restarts_nothing(
    launched: &mut Launched,
    log: &std::path::Path,
    restarted: &Value,
    address: &str,
) {
    let logged_before = std::fs::read_to_string(log).unwrap().len();
    launched.stop().await;
    assert!(
        kill(pid_of(restarted), None).is_err(),
        "the restarted process outlived the launcher"
    );
    let addr = address.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{address} still serves after shutdown"
    );
    let log = std::fs::read_to_string(log).unwrap();
    let shutdown = &log[logged_before..];
    assert!(
        !shutdown.contains("restarting it on"),
        "restarted during shutdown: {shutdown}"
    );
}

/// A replica whose port another process took after it crashed cannot start again: after five
/// exits it is `failed`, `/status` names the port and shows its last log lines, and the rest of
/// the mesh keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_cannot_start_again_ends_failed_and_the_mesh_serves() {
    let (dir, flow) = flow_dir("port-taken", FLOW);
    let mut launched = launch::up(&flow, &dir, &[], None).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    index_text(&http, &gateway, "kept", 7).await;

    let label = "encoder/0/1";
    let before = process(&http, &gateway, label).await;
    let address = before["address"].as_str().unwrap().to_owned();
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    kill(pid_of(&before), Signal::SIGKILL).unwrap();
    // Take the port before the first restart (0.5 s later); the kernel frees it once the
    // process is gone.
    let taken = {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            if socket.bind(([127, 0, 0, 1], port).into()).is_ok() {
                if let Ok(listener) = socket.listen(16) {
                    break listener;
                }
            }
            assert!(Instant::now() < until, "port {port} never freed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let began = Instant::now();
    let failed = wait_failed(&http, &gateway, label, Duration::from_secs(60)).await;
    eprintln!("{label} failed after {:?}: {failed}", began.elapsed());
    assert_eq!(failed["restarts"], 4, "five exits, four restarts: {failed}");
    assert_eq!(restarts_counted(&http, &gateway, label).await, Some(4.0));
    assert_eq!(failed["pid"], Value::Null, "{failed}");
    assert_eq!(failed["last_exit"]["code"], 1, "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("cannot re-bind 127.0.0.1:{port}"))
            && error.contains("exited 5 times"),
        "{error}"
    );
    let log = failed["log"].as_array().unwrap();
    assert!(!log.is_empty() && log.len() <= 20, "{failed}");
    assert!(
        log.iter()
            .any(|l| l.as_str().unwrap().contains("Address already in use")),
        "the executor's own words are in the log: {failed}"
    );

    // The rest of the mesh serves reads and writes, and the others never restarted.
    for _ in 0..5 {
        let r = http
            .post(
                &format!("{gateway}/search"),
                &json!({"data": [{"text": text(7)}], "parameters": {"top_k": 1}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["data"][0]["matches"][0]["id"], "kept");
    }
    index_text(&http, &gateway, "later", 8).await;
    for p in others(&http, &gateway, label).await {
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(p["restarts"], 0, "{p}");
    }
    // Freeing the port does not bring a failed process back.
    drop(taken);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(process(&http, &gateway, label).await["state"], "failed");
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An indexer shard whose workspace became unusable (a file where its folder was) crashes at
/// every start: with `FLOWMESH_RESTART_LIMIT=2` it is `failed` after one restart, its log says
/// why, the other processes run on, and the gateway still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_workspace_is_broken_ends_failed_with_its_reason() {
    let (dir, flow) = flow_dir("broken-workspace", FLOW);
    let env = [("FLOWMESH_RESTART_LIMIT", "2".to_owned())];
    let mut launched = launch::up(&flow, &dir, &env, None).await;
    let gateway = launched.gateway.clone();
    let http = Http::new();
    let label = "indexer/1/0";
    let before = process(&http, &gateway, label).await;
    kill(pid_of(&before), Signal::SIGKILL).unwrap();
    let workspace = dir.join("ws/supervised/indexer/shard-1/replica-0");
    std::fs::remove_dir_all(&workspace).unwrap();
    std::fs::write(&workspace, "not a folder").unwrap();

    let failed = wait_failed(&http, &gateway, label, Duration::from_secs(30)).await;
    assert_eq!(failed["restarts"], 1, "{failed}");
    assert_eq!(failed["last_exit"]["code"], 1, "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("exited 2 times"),
        "{failed}"
    );
    let log = failed["log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|l| l.as_str().unwrap().contains("cannot open the shard")),
        "the indexer's own reason is in the log: {failed}"
    );
    for p in others(&http, &gateway, label).await {
        assert_eq!(p["state"], "running", "{p}");
    }
    // The other shard still takes the documents that hash to it.
    let acked = (0..8)
        .map(|i| {
            let http = &http;
            let gateway = &gateway;
            async move {
                http.post(
                    &format!("{gateway}/index"),
                    &json!({"data": [{"id": format!("after-{i}"), "text": text(i)}]}),
                )
                .await
                .status
            }
        })
        .collect::<Vec<_>>();
    let statuses = futures::future::join_all(acked).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    launched.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while a killed process waits out its backoff: the launcher stops at once and starts
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_backoff_restarts_nothing() {
    let (dir, flow) = flow_dir("stop-in-backoff", FLOW);
    let log = dir.join("stderr.log");
    let mut launched =
        launch::up(&flow, &dir, &[], Some(std::fs::File::create(&log).unwrap())).await;
    let http = Http::new();
    let ranker = process(&http, &launched.gateway, "ranker/0/0").await;
    kill(pid_of(&ranker), Signal::SIGKILL).unwrap();
    let began = Instant::now();
    while process(&http, &launched.gateway, "ranker/0/0").await["state"] != "restarting" {
        assert!(began.elapsed() < Duration::from_secs(5), "exit not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    launched.stop().await;
    let address = ranker["address"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("restarting it on"), "{log}");
    assert!(!log.contains("executor process restarted"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
