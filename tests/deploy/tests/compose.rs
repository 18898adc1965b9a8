//! compose.yaml on this machine's Docker engine, with the real image, models and Redis.
//!
//! It builds the image (docker/Dockerfile over target/dist, on the local base image), brings
//! the text stack up under a project name of its own with the gateway on a free host port,
//! indexes documents and finds them with paraphrased queries (real MiniLM), then: stops one
//! encoder replica in the middle of a load of searches (no search may fail), starts it again.
//! Each index shard runs as two mirrored copies that follow the shard's log (nats-server): under
//! a load of searches (none may fail) and while documents are indexed in small requests, one
//! copy is killed and started again (it catches up from the log: both copies' `/stats` show the
//! same position, count and digest, and every indexed document finds itself), then another
//! copy loses its volume (a lost disk) and comes back empty (it restores from its peer and the
//! copies are equal again). It restarts an index copy (every document is found again), and
//! takes the whole stack down and up again keeping its volumes (the copies' data, the log and
//! Redis's AOF keep everything);
//! finally it switches the project to the image Flow (compose.image.yaml: MobileNetV2, the
//! shards on volumes of their own) and every test image finds itself. The project is taken down
//! with its volumes however the test ends.
//!
//! The stack runs as shipped, secure by default: the `secrets` service makes the mesh token, the
//! Redis password and the read-write API key (the test brings its own read-only key, through
//! FLOWMESH_READ_ONLY_API_KEY); the test reads the read-write key with the one command
//! docs/compose.md gives. From another container on the compose network (no secrets of its
//! own) it checks that every executor refuses calls without the mesh token, that Redis wants
//! its password, and that through the gateway the read-only key searches but cannot write; no
//! container's configuration (`docker inspect`) shows a generated secret.
//!
//! Needs what `scripts/docker-base.sh` (the base image) and `scripts/dist.sh` (target/dist)
//! make; `scripts/test.sh` runs both first.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod compose_support;

use flowmesh_shared::testing::corpus::{CORPUS, QUERIES};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use compose_support::{
    base64, ensure_staged, load, repo_root, run_cmd, wait_until, Compose, Http, ProjectGuard,
};
use serde_json::{json, Value};

/// The image the test builds and runs: a tag of its own, so that a user's `flowmesh:local` is
/// never replaced; kept after the test so that the next build finds its layers in the cache.
const TEST_IMAGE: &str = "flowmesh:compose-test";
const EXECUTORS: &[&str] = &[
    "redis",
    "nats",
    "ranker",
    "indexer-0a",
    "indexer-0b",
    "indexer-1a",
    "indexer-1b",
    "encoder-1",
    "encoder-2",
];

/// The two mirrored copies of each index shard (compose.yaml's services), shard by shard.
const SHARD_COPIES: &[[&str; 2]] = &[["indexer-0a", "indexer-0b"], ["indexer-1a", "indexer-1b"]];

const TOP_K: usize = 3;

/// Fails with the script to run when the base image or the staged folder is missing.
async fn preflight(base_image: &str) {
    let dist = repo_root().join("target/dist");
    ensure_staged(
        &dist,
        &[
            "bin/flowmesh-gateway",
            "cache/models/minilm/config.json",
            "flows/compose-text.yml",
        ],
        "run scripts/dist.sh first (it stages binaries, models and Flows in target/dist)",
    )
    .expect("the staged folder is complete");
    let inspect = run_cmd(
        "docker",
        &["image", "inspect", "-f", "{{.Id}}", base_image],
        &[],
        &repo_root(),
        None,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        inspect.is_ok(),
        "the base image {base_image} is missing: run scripts/docker-base.sh first ({})",
        inspect.unwrap_err()
    );
}

/// The gateway's base URL once it is published and ready.
async fn gateway_ready(compose: &Compose, http: &Http) -> String {
    let addr = compose.published("gateway", 8080).await.unwrap();
    let gateway = format!("http://{addr}");
    http.wait_ok(&format!("{gateway}/readyz"), Duration::from_secs(120))
        .await
        .unwrap();
    gateway
}

async fn post_ok(http: &Http, gateway: &str, endpoint: &str, body: &Value) -> Value {
    let answer = http
        .post(
            &format!("{gateway}/{endpoint}"),
            body,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "/{endpoint}: {}", answer.text());
    answer.json()
}

/// One search: `Ok` with the matches' (id, text), or why the answer is not a full one.
async fn search(http: &Http, gateway: &str, query: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let body = json!({"data": [{"text": query}], "parameters": {"top_k": TOP_K}});
    let answer = http
        .post(&format!("{gateway}/search"), &body, Duration::from_secs(30))
        .await?;
    anyhow::ensure!(
        answer.status == 200,
        "status {}: {}",
        answer.status,
        answer.text()
    );
    let json = answer.json();
    let matches = json["data"][0]["matches"]
        .as_array()
        .with_context(|| format!("no matches: {}", answer.text()))?;
    // `top_k` chunks come from the index; the ranker groups them by document, so an answer may
    // hold fewer documents than `top_k` (two chunks of one document), never none and never more.
    anyhow::ensure!(
        (1..=TOP_K).contains(&matches.len()),
        "{} matches, not 1 to {TOP_K}: {}",
        matches.len(),
        answer.text()
    );
    let found: Vec<(String, Value)> = matches
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["text"].clone(),
            )
        })
        .collect();
    let mut ids: Vec<&str> = found.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    anyhow::ensure!(
        ids.len() == found.len(),
        "a document matched twice: {}",
        answer.text()
    );
    Ok(found)
}

/// The ids each query of [`QUERIES`] finds now: what every later answer must repeat.
async fn reference_answers(http: &Http, gateway: &str) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for (query, _) in QUERIES {
        let matches = search(http, gateway, query).await.unwrap();
        answers.push(matches.into_iter().map(|(id, _)| id).collect());
    }
    answers
}

/// Every query finds its document first, with the document's stored text.
async fn every_document_found(http: &Http, gateway: &str, when: &str) {
    for (query, expected) in QUERIES {
        let matches = search(http, gateway, query).await.unwrap();
        assert_eq!(matches[0].0, *expected, "{when}: {query:?} -> {matches:?}");
        let text = CORPUS.iter().find(|(id, _)| id == expected).unwrap().1;
        assert_eq!(
            matches[0].1,
            json!(text),
            "{when}: the match carries its stored text"
        );
    }
}

/// One index copy's `GET /stats` (count, dimension, `mirror`: log, position, digest, ...),
/// asked inside its container with the mesh token from its secrets volume (as a header read
/// from stdin: on no command line).
async fn copy_stats(compose: &Compose, copy: &str) -> anyhow::Result<Value> {
    let script =
        "printf 'Authorization: Bearer %s\\n' \"$(cat /run/flowmesh/secrets/mesh_token)\" \
                  | curl -fsS -H @- http://127.0.0.1:8080/stats";
    let out = compose
        .run(
            &["exec", "-T", copy, "sh", "-c", script],
            Duration::from_secs(30),
        )
        .await?;
    serde_json::from_str(&out).with_context(|| format!("{copy} /stats: {out}"))
}

/// Whether the two copies of shard `shard` agree: both ready, following the shard's log, at the
/// same position with the same count and content digest (32 hex digits).
fn copies_agree(shard: usize, a: &Value, b: &Value) -> anyhow::Result<()> {
    let log = format!("FLOWMESH_indexer_{shard}");
    for (copy, stats) in [(SHARD_COPIES[shard][0], a), (SHARD_COPIES[shard][1], b)] {
        let mirror = &stats["mirror"];
        anyhow::ensure!(
            mirror["log"] == log.as_str(),
            "{copy} follows {log}: {stats}"
        );
        anyhow::ensure!(mirror["state"] == "ready", "{copy} is ready: {stats}");
        let digest = mirror["digest"].as_str().unwrap_or_default();
        anyhow::ensure!(
            digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{copy}: a digest of 32 hex digits: {stats}"
        );
        anyhow::ensure!(
            mirror["count"] == stats["count"],
            "{copy}: the digest's count is the index's: {stats}"
        );
    }
    for field in ["log_id", "position", "count", "digest"] {
        anyhow::ensure!(
            a["mirror"][field] == b["mirror"][field],
            "the copies of shard {shard} differ in {field}: {a} / {b}"
        );
    }
    anyhow::ensure!(a["count"] == b["count"], "the copies' counts: {a} / {b}");
    Ok(())
}

/// Waits until the two copies of every shard agree (the gateway answers a write once one copy
/// has it, so the other may be a moment behind); one `GET /stats` per shard then.
async fn shard_stats(compose: &Compose) -> Vec<Value> {
    let mut agreed = Vec::new();
    for (shard, [a, b]) in SHARD_COPIES.iter().enumerate() {
        let last = std::sync::Mutex::new(None);
        wait_until(
            &format!("the copies {a} and {b} agree"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let last = &last;
                async move {
                    let sa = copy_stats(compose, a).await?;
                    let sb = copy_stats(compose, b).await?;
                    copies_agree(shard, &sa, &sb)?;
                    *last.lock().unwrap() = Some(sa);
                    Ok(true)
                }
            },
        )
        .await
        .unwrap();
        agreed.push(last.into_inner().unwrap().unwrap());
    }
    agreed
}

/// The number of vectors each index shard holds (both copies alike).
async fn shard_counts(compose: &Compose) -> Vec<u64> {
    let stats = shard_stats(compose).await;
    stats.iter().map(|s| s["count"].as_u64().unwrap()).collect()
}

/// `(up, calls)` of each encoder replica, from the gateway's `/status`.
async fn encoder_replicas(http: &Http, gateway: &str) -> Vec<(bool, u64)> {
    let status = http
        .get(&format!("{gateway}/status"), Duration::from_secs(10))
        .await
        .unwrap()
        .json();
    let encoder = status["executors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "encoder")
        .unwrap();
    encoder["shards"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["up"].as_bool().unwrap(), r["calls"].as_u64().unwrap()))
        .collect()
}

/// The search load around the stop of an encoder: a few clients, bounded in count and time.
const LOAD: load::Plan = load::Plan {
    clients: 4,
    max: 1000,
    limit: Duration::from_secs(120),
    act_after: 40,
    after_act: 80,
};

/// Runs the search load and, once it is under way, stops encoder-2 (`compose stop`: SIGTERM,
/// graceful shutdown); every search must still get the answer it got before.
async fn load_while_stopping_encoder(compose: &Compose, http: &Http, gateway: &str) {
    let reference = Arc::new(reference_answers(http, gateway).await);
    let search_http = http.clone();
    let search_gateway = gateway.to_owned();
    let request = move |n: usize| {
        let (http, gateway, reference) = (
            search_http.clone(),
            search_gateway.clone(),
            reference.clone(),
        );
        async move {
            let q = n % QUERIES.len();
            let matches = search(&http, &gateway, QUERIES[q].0)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let ids: Vec<&str> = matches.iter().map(|(id, _)| id.as_str()).collect();
            if ids == reference[q] {
                Ok(())
            } else {
                Err(format!(
                    "{:?} found {ids:?}, not {:?}",
                    QUERIES[q].0, reference[q]
                ))
            }
        }
    };
    let stop = || async {
        let calls = encoder_replicas(http, gateway).await;
        assert!(
            calls.iter().all(|&(up, calls)| up && calls > 0),
            "both encoder replicas serve before one is stopped: {calls:?}"
        );
        compose
            .run(
                &["stop", "--timeout", "20", "encoder-2"],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    };
    let report = load::run(LOAD, request, stop).await;
    let failures = report.failures;
    eprintln!(
        "load: {} searches from {} clients in {:.1}s; encoder-2 stopped in {:.1}s, \
         {} searches after; {} failed",
        report.sent,
        LOAD.clients,
        report.elapsed.as_secs_f64(),
        report.act_took.as_secs_f64(),
        report.after_act,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "searches failed while an encoder stopped:\n{}",
        failures.join("\n")
    );
    assert!(
        report.after_act >= LOAD.after_act,
        "the load ended after {} searches, {} of them on one encoder, before the {} wanted",
        report.sent,
        report.after_act,
        LOAD.after_act
    );
    // What the gateway saw of it: the replica marked down, or taken out by its health check.
    let logs = compose
        .run(&["logs", "--no-color", "gateway"], Duration::from_secs(30))
        .await
        .unwrap();
    for line in logs.lines().filter(|l| l.contains("encoder-2")) {
        eprintln!("load: {line}");
    }
    let replicas = encoder_replicas(http, gateway).await;
    assert!(
        !replicas[1].0,
        "the gateway sees encoder-2 down: {replicas:?}"
    );
}

/// Starts encoder-2 again and waits until the gateway has it back in its pool.
async fn encoder_rejoins(compose: &Compose, http: &Http, gateway: &str) {
    compose
        .run(&["start", "encoder-2"], Duration::from_secs(60))
        .await
        .unwrap();
    compose
        .wait_healthy(&["encoder-2"], Duration::from_secs(120))
        .await
        .unwrap();
    let back = || async {
        let replicas = encoder_replicas(http, gateway).await;
        anyhow::ensure!(replicas.iter().all(|&(up, _)| up), "{replicas:?}");
        Ok(true)
    };
    wait_until(
        "encoder-2 is back in the gateway's pool",
        Duration::from_secs(30),
        Duration::from_millis(250),
        back,
    )
    .await
    .unwrap();
    every_document_found(http, gateway, "with encoder-2 back").await;
}

/// A document of the mirroring scenarios: one sentence, unlike any of the corpus (so the
/// corpus queries keep finding their documents), found first by its own text.
fn mirror_doc(n: usize) -> (String, String) {
    const MATERIALS: [&str; 6] = ["brass", "ceramic", "walnut", "granite", "copper", "nylon"];
    const PARTS: [&str; 6] = ["hinge", "bracket", "washer", "spindle", "valve", "gasket"];
    (
        format!("mirror-{n:03}"),
        format!(
            "Catalogue item {n} is a {} {} of {} millimetres.",
            MATERIALS[n % 6],
            PARTS[(n / 6) % 6],
            10 + 7 * n
        ),
    )
}

/// Indexes mirror documents `range` in requests of `batch`: every request must be acknowledged
/// (200), whether or not every copy of its shard is up.
async fn index_mirror_docs(
    writer: &Http,
    gateway: &str,
    range: std::ops::Range<usize>,
    batch: usize,
) {
    let docs: Vec<(String, String)> = range.map(mirror_doc).collect();
    for chunk in docs.chunks(batch) {
        let data: Vec<Value> = chunk
            .iter()
            .map(|(id, text)| json!({"id": id, "text": text}))
            .collect();
        post_ok(writer, gateway, "index", &json!({ "data": data })).await;
    }
}

/// Every mirror document of `range` finds itself first by its own text.
async fn mirror_docs_found(http: &Http, gateway: &str, range: std::ops::Range<usize>, when: &str) {
    for n in range {
        let (id, text) = mirror_doc(n);
        let matches = search(http, gateway, &text).await.unwrap();
        assert_eq!(matches[0].0, id, "{when}: {text:?} -> {matches:?}");
    }
}

/// The load of searches around a copy's outage: every search answers 200 with its corpus
/// document first (the mirror documents indexed meanwhile may change the rest of the answer).
const MIRROR_LOAD: load::Plan = load::Plan {
    clients: 3,
    max: 10_000,
    limit: Duration::from_secs(600),
    act_after: 30,
    after_act: 60,
};

/// Runs [`MIRROR_LOAD`] around `act`; no search may fail.
async fn searches_survive<A, AF>(http: &Http, gateway: &str, what: &str, act: A)
where
    A: FnOnce() -> AF,
    AF: std::future::Future<Output = ()>,
{
    let search_http = http.clone();
    let search_gateway = gateway.to_owned();
    let request = move |n: usize| {
        let (http, gateway) = (search_http.clone(), search_gateway.clone());
        async move {
            let (query, expected) = QUERIES[n % QUERIES.len()];
            let matches = search(&http, &gateway, query)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if matches[0].0 == expected {
                Ok(())
            } else {
                Err(format!(
                    "{query:?} found {matches:?}, not {expected:?} first"
                ))
            }
        }
    };
    let report = load::run(MIRROR_LOAD, request, act).await;
    eprintln!(
        "mirror: {what}: {} searches in {:.1}s ({:.1}s of them around the outage), {} failed",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.act_took.as_secs_f64(),
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "searches failed while {what}:\n{}",
        report.failures.join("\n")
    );
    assert!(
        report.after_act >= MIRROR_LOAD.after_act,
        "the load ended after {} searches, before the {} wanted after the outage",
        report.sent,
        MIRROR_LOAD.after_act
    );
}

/// Kills one copy of shard 0 (SIGKILL: a crash, in the middle of the writes) while documents
/// are indexed in small requests and searches run; every write is acknowledged while it is
/// down. Started again, it reads what it missed from the log: both copies agree (position,
/// count, digest) and every document indexed finds itself.
async fn copy_outage_while_indexing(
    compose: &Compose,
    http: &Http,
    writer: &Http,
    gateway: &str,
    counts: &[u64],
) {
    let act = || async {
        index_mirror_docs(writer, gateway, 0..20, 4).await;
        // The kill lands while writes are in flight; the writes after it find the copy gone.
        let kill = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            compose
                .run(
                    &["kill", "-s", "SIGKILL", "indexer-0b"],
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
        };
        tokio::join!(index_mirror_docs(writer, gateway, 20..40, 2), kill);
        index_mirror_docs(writer, gateway, 40..60, 4).await;
        let behind = copy_stats(compose, "indexer-0a").await.unwrap();
        eprintln!(
            "mirror: indexer-0a at {} while indexer-0b is down",
            behind["mirror"]
        );
        compose
            .run(&["start", "indexer-0b"], Duration::from_secs(60))
            .await
            .unwrap();
        compose
            .wait_healthy(&["indexer-0b"], Duration::from_secs(180))
            .await
            .unwrap();
    };
    searches_survive(http, gateway, "indexer-0b was down and caught up", act).await;
    let after = shard_counts(compose).await;
    assert_eq!(
        after.iter().sum::<u64>(),
        counts.iter().sum::<u64>() + 60,
        "the 60 documents indexed around the outage, one chunk each, on both copies: {after:?}"
    );
    mirror_docs_found(http, gateway, 0..60, "after indexer-0b caught up").await;
}

/// Removes one copy of shard 1 with its volume (a lost disk) while searches run and more
/// documents are indexed, then starts it on a new, empty volume: it restores a snapshot from
/// its peer and the log's tail, and the copies agree again.
async fn copy_restores_after_lost_disk(
    compose: &Compose,
    http: &Http,
    writer: &Http,
    gateway: &str,
    counts: &[u64],
) {
    let (volume, created) = compose.volume("indexer-1b").await.unwrap();
    let act = || async {
        compose
            .run(&["rm", "-f", "-s", "indexer-1b"], Duration::from_secs(90))
            .await
            .unwrap();
        run_cmd(
            "docker",
            &["volume", "rm", &volume],
            &[],
            &repo_root(),
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        index_mirror_docs(writer, gateway, 60..80, 4).await;
        compose
            .run(
                &["up", "-d", "--no-deps", "indexer-1b"],
                Duration::from_secs(120),
            )
            .await
            .unwrap();
        compose
            .wait_healthy(&["indexer-1b"], Duration::from_secs(300))
            .await
            .unwrap();
    };
    searches_survive(http, gateway, "indexer-1b lost its disk and restored", act).await;
    let (_, recreated) = compose.volume("indexer-1b").await.unwrap();
    assert_ne!(recreated, created, "indexer-1b runs on a new volume");
    let after = shard_counts(compose).await;
    assert_eq!(
        after.iter().sum::<u64>(),
        counts.iter().sum::<u64>() + 80,
        "every document, on both copies of each shard: {after:?}"
    );
    mirror_docs_found(http, gateway, 0..80, "after indexer-1b restored").await;
}

/// Deletes the mirror documents: the deletes reach both copies too, and the shards hold the
/// corpus alone again.
async fn mirror_docs_deleted(compose: &Compose, writer: &Http, gateway: &str, counts: &[u64]) {
    let ids: Vec<Value> = (0..80).map(|n| json!({"id": mirror_doc(n).0})).collect();
    for chunk in ids.chunks(20) {
        post_ok(writer, gateway, "delete", &json!({ "data": chunk })).await;
    }
    assert_eq!(
        shard_counts(compose).await,
        counts,
        "the corpus alone after deleting the mirror documents"
    );
}

/// Restarts copy a of index shard 0; once it is healthy, every document is found again.
async fn indexer_restart_keeps_data(compose: &Compose, http: &Http, gateway: &str, counts: &[u64]) {
    let before = compose.container("indexer-0a").await.unwrap();
    compose
        .run(
            &["restart", "--timeout", "20", "indexer-0a"],
            Duration::from_secs(90),
        )
        .await
        .unwrap();
    assert_eq!(
        compose.container("indexer-0a").await.unwrap(),
        before,
        "the same container restarted"
    );
    compose
        .wait_healthy(&["indexer-0a"], Duration::from_secs(120))
        .await
        .unwrap();
    http.wait_ok(&format!("{gateway}/readyz"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        shard_counts(compose).await,
        counts,
        "index shards after restarting indexer-0a"
    );
    every_document_found(http, gateway, "after restarting indexer-0a").await;
}

/// Takes every container down (volumes kept) and brings the stack up again: same data.
async fn stack_restart_keeps_data(compose: &Compose, http: &Http, counts: &[u64]) -> String {
    compose
        .run(&["down", "--timeout", "20"], Duration::from_secs(120))
        .await
        .unwrap();
    let ps = compose
        .run(&["ps", "-q"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        ps.trim().is_empty(),
        "no container is left after down: {ps}"
    );
    compose
        .run(&["up", "-d"], Duration::from_secs(400))
        .await
        .unwrap();
    let gateway = gateway_ready(compose, http).await;
    assert_eq!(
        shard_counts(compose).await,
        counts,
        "index shards after the stack's restart"
    );
    every_document_found(http, &gateway, "after the stack's restart").await;
    gateway
}

/// The images of models/testdata, the image stack's corpus.
const IMAGES: &[&str] = &[
    "img_checker_300x200.png",
    "img_gradient_224.png",
    "img_photo_320x240.jpg",
    "img_shapes_224.jpg",
];

/// The image Flow (compose.image.yaml) on the same project: the encoders switch to MobileNetV2,
/// the index shards to volumes of their own; every image, indexed, finds itself first.
async fn image_stack_serves(image: &Compose, http: &Http, writer: &Http) {
    let started = Instant::now();
    image
        .run(&["up", "-d"], Duration::from_secs(400))
        .await
        .unwrap();
    let gateway = gateway_ready(image, http).await;
    let status = http
        .get(&format!("{gateway}/status"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status.json()["flow"], "image", "{}", status.text());
    let dir = repo_root().join("models/testdata");
    let blobs: Vec<(&str, String)> = IMAGES
        .iter()
        .map(|name| (*name, base64(&std::fs::read(dir.join(name)).unwrap())))
        .collect();
    let data: Vec<Value> = blobs
        .iter()
        .map(|(name, blob)| json!({"id": name, "blob": blob, "tags": {"file": name}}))
        .collect();
    post_ok(writer, &gateway, "index", &json!({ "data": data })).await;
    for (name, blob) in &blobs {
        let body = json!({"data": [{"blob": blob}], "parameters": {"top_k": 2}});
        let answer = post_ok(http, &gateway, "search", &body).await;
        let first = &answer["data"][0]["matches"][0];
        assert_eq!(first["id"], *name, "{name} finds itself first: {answer}");
        assert_eq!(
            first["tags"]["file"], *name,
            "with its stored tags: {answer}"
        );
    }
    let stats = shard_stats(image).await;
    let count: u64 = stats.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(
        count, 4,
        "only the images are in the image stack's shards: {stats:?}"
    );
    let dims: Vec<&Value> = stats
        .iter()
        .map(|s| &s["dimension"])
        .filter(|d| !d.is_null())
        .collect();
    assert!(
        dims.iter().all(|d| **d == 1280),
        "MobileNetV2's features: {stats:?}"
    );
    eprintln!(
        "compose: image stack served in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The gateway's read-write API key, read the way docs/compose.md says.
async fn read_write_key(compose: &Compose) -> String {
    let out = compose
        .run(
            &[
                "exec",
                "-T",
                "gateway",
                "cat",
                "/run/flowmesh/secrets/api_key",
            ],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let key = out.lines().next().unwrap_or_default().trim().to_owned();
    assert!(key.len() >= 32, "a generated key of 32 bytes or more");
    key
}

/// The name of the compose network the gateway is on.
async fn network(compose: &Compose) -> String {
    let id = compose.container("gateway").await.unwrap();
    let out = run_cmd(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            &id,
        ],
        &[],
        &repo_root(),
        None,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    out.split_whitespace().next().unwrap().to_owned()
}

/// A one-off container on the compose network (the test image, no volume, no secret): runs
/// `script` with `stdin` (headers that carry keys go there, never on a command line); its
/// output.
async fn from_another_container(net: &str, script: &str, stdin: &str) -> String {
    run_cmd(
        "docker",
        &[
            "run",
            "--rm",
            "-i",
            "--network",
            net,
            "--entrypoint",
            "sh",
            TEST_IMAGE,
            "-c",
            script,
        ],
        &[],
        &repo_root(),
        Some(stdin),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// The status of `curl` from another container, with `headers` from stdin.
async fn status_from_outside(
    net: &str,
    url: &str,
    body: Option<&Value>,
    headers: &[&str],
) -> String {
    let data = body.map_or_else(String::new, |b| {
        format!(
            "-H 'content-type: application/json' --data-binary '{}'",
            b.to_string().replace('\'', r"'\''")
        )
    });
    let script = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H @- {data} {url} || true"
    );
    let stdin: String = headers.iter().map(|h| format!("{h}\n")).collect();
    from_another_container(net, &script, &stdin)
        .await
        .trim()
        .to_owned()
}

/// From a container of its own on the compose network: every executor refuses calls without
/// the mesh token (and with a wrong one) but answers `/readyz`; Redis wants its password; the
/// gateway searches with the read-only key, refuses a write with it (403) and any call without
/// a key (401).
async fn the_network_is_closed(compose: &Compose, read_only_key: &str) {
    let net = network(compose).await;
    let search = json!({"data": [{"text": "a person rides a horse"}], "parameters": {"top_k": 2}});
    let wrong = "Authorization: Bearer 0123456789abcdef0123456789abcdef";
    for executor in [
        "indexer-0a",
        "indexer-0b",
        "indexer-1a",
        "indexer-1b",
        "encoder-1",
        "encoder-2",
        "ranker",
    ] {
        for endpoint in ["search", "index", "delete"] {
            let url = format!("http://{executor}:8080/{endpoint}");
            let none = status_from_outside(&net, &url, Some(&search), &[]).await;
            let bad = status_from_outside(&net, &url, Some(&search), &[wrong]).await;
            assert_eq!(
                (none.as_str(), bad.as_str()),
                ("401", "401"),
                "{executor} /{endpoint} without the mesh token, and with a wrong one"
            );
        }
        let url = format!("http://{executor}:8080/readyz");
        assert_eq!(
            status_from_outside(&net, &url, None, &[]).await,
            "200",
            "{executor} /readyz"
        );
    }
    let redis = from_another_container(&net, "redis-cli -h redis ping 2>&1 || true", "").await;
    assert!(
        redis.contains("NOAUTH"),
        "Redis wants its password: {redis}"
    );
    // nats-server (the log) wants the mesh token: a client without it, or with a wrong one, is
    // refused at CONNECT; its monitoring port is not reachable from the network.
    for connect in [
        r#"{"verbose":false,"pedantic":false}"#,
        r#"{"verbose":false,"pedantic":false,"auth_token":"0123456789abcdef"}"#,
    ] {
        let script = format!(
            "printf 'CONNECT %s\\r\\nPING\\r\\n' '{connect}' \
             | curl -s --max-time 3 telnet://nats:4222 2>&1 || true"
        );
        let nats = from_another_container(&net, &script, "").await;
        assert!(
            nats.contains("Authorization Violation") && !nats.contains("PONG"),
            "nats-server wants the mesh token: {nats}"
        );
    }
    let monitor = status_from_outside(&net, "http://nats:8222/healthz", None, &[]).await;
    assert_eq!(
        monitor, "000",
        "nats-server's monitoring port is on its loopback only"
    );

    let read_only = format!("api-key: {read_only_key}");
    let gateway = "http://gateway:8080";
    let cases = [
        ("search", &search, vec![read_only.as_str()], "200"),
        ("search", &search, vec![], "401"),
        (
            "index",
            &json!({"data": [{"id": "x", "text": "HACKED"}]}),
            vec![read_only.as_str()],
            "403",
        ),
    ];
    for (endpoint, body, headers, expected) in cases {
        let url = format!("{gateway}/{endpoint}");
        let status = status_from_outside(&net, &url, Some(body), &headers).await;
        assert_eq!(
            status, expected,
            "/{endpoint} through the gateway with {headers:?}"
        );
    }
    eprintln!("compose: from another container, executors refuse calls without the mesh token, Redis wants its password, nats-server the mesh token, the read-only key only searches");
}

/// No container's configuration shows a generated secret (every service is given file paths).
async fn no_secret_in_the_configuration(compose: &Compose, secrets: &[&str]) {
    let ids = compose
        .run(&["ps", "-q", "-a"], Duration::from_secs(30))
        .await
        .unwrap();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert!(ids.len() >= 7, "the project's containers: {ids:?}");
    let mut args = vec!["inspect"];
    args.extend(ids);
    let inspect = run_cmd(
        "docker",
        &args,
        &[],
        &repo_root(),
        None,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    for secret in secrets {
        assert!(
            !inspect.contains(secret),
            "a generated secret is in `docker inspect`"
        );
    }
}

/// The generated secrets, read from the volume (for the checks above only).
async fn generated_secrets(compose: &Compose) -> Vec<String> {
    let script =
        "cd /run/flowmesh/secrets && stat -c '%a %u %n' * && cat mesh_token redis_password api_key";
    // api_key, mesh_token, nats.conf, read_only_api_key, redis.conf, redis_password
    let out = compose
        .run(
            &["exec", "-T", "gateway", "sh", "-c", script],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut lines = out.lines();
    for _ in 0..6 {
        let line = lines.next().unwrap();
        assert!(
            line.starts_with("600 10001 "),
            "secret files are the flowmesh user's, mode 0600: {line}"
        );
    }
    lines.map(str::to_owned).collect()
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0_u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Docker; run by scripts/test.sh"]
async fn compose_stack_searches_through_replica_loss_and_restarts() {
    let base_image =
        std::env::var("FLOWMESH_BASE_IMAGE").unwrap_or_else(|_| "flowmesh-base:bookworm".into());
    preflight(&base_image).await;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let project = format!("flowmesh-compose-test-{}-{stamp}", std::process::id());
    // The test's own read-only key (a user's own, given in the variable); the rest is made by
    // the stack.
    let read_only_key = random_hex(24);
    let envs = vec![
        (
            "FLOWMESH_READ_ONLY_API_KEY".to_owned(),
            read_only_key.clone(),
        ),
        ("FLOWMESH_IMAGE".to_owned(), TEST_IMAGE.to_owned()),
        ("FLOWMESH_BASE_IMAGE".to_owned(), base_image.clone()),
        ("FLOWMESH_GATEWAY_ADDR".to_owned(), "127.0.0.1".to_owned()),
        // Empty: Docker picks a free host port (127.0.0.1::8080).
        ("FLOWMESH_GATEWAY_PORT".to_owned(), String::new()),
    ];
    let compose = Compose::detect(&project, &["compose.yaml"], envs.clone())
        .await
        .unwrap();
    let image = Compose::detect(&project, &["compose.yaml", "compose.image.yaml"], envs)
        .await
        .unwrap();
    eprintln!(
        "compose: {} project {project}, base {base_image}",
        compose.tool()
    );

    let building = Instant::now();
    compose
        .run(&["build"], Duration::from_secs(900))
        .await
        .unwrap();
    eprintln!(
        "compose: image built in {:.1}s",
        building.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    // Both files: `down --volumes` then also removes the image stack's volumes.
    let _guard = ProjectGuard(image.clone());
    compose
        .run(&["up", "-d"], Duration::from_secs(400))
        .await
        .unwrap();
    let anonymous = Http::new();
    let gateway = gateway_ready(&compose, &anonymous).await;
    let http = anonymous.with_key(&read_only_key);
    let key = read_write_key(&compose).await;
    let writer = anonymous.with_key(&key);
    compose
        .wait_healthy(EXECUTORS, Duration::from_secs(60))
        .await
        .unwrap();
    compose
        .wait_healthy(&["gateway"], Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "compose: stack ready in {:.1}s at {gateway}",
        started.elapsed().as_secs_f64()
    );

    let data: Vec<Value> = CORPUS
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text, "tags": {"topic": id}}))
        .collect();
    post_ok(&writer, &gateway, "index", &json!({ "data": data })).await;
    every_document_found(&http, &gateway, "after indexing").await;
    the_network_is_closed(&compose, &read_only_key).await;
    let secrets = generated_secrets(&compose).await;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    no_secret_in_the_configuration(&compose, &secrets).await;
    let counts = shard_counts(&compose).await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        24,
        "three sentences of each of the eight documents: {counts:?}"
    );
    assert!(
        counts.iter().all(|&c| c > 0),
        "both shards hold documents: {counts:?}"
    );

    load_while_stopping_encoder(&compose, &http, &gateway).await;
    encoder_rejoins(&compose, &http, &gateway).await;
    copy_outage_while_indexing(&compose, &http, &writer, &gateway, &counts).await;
    copy_restores_after_lost_disk(&compose, &http, &writer, &gateway, &counts).await;
    mirror_docs_deleted(&compose, &writer, &gateway, &counts).await;
    every_document_found(&http, &gateway, "after the mirroring scenarios").await;
    indexer_restart_keeps_data(&compose, &http, &gateway, &counts).await;
    stack_restart_keeps_data(&compose, &http, &counts).await;
    assert_eq!(
        read_write_key(&compose).await,
        key,
        "the stack keeps its generated key across down and up"
    );
    image_stack_serves(&image, &http, &writer).await;
    eprintln!(
        "compose: scenario done in {:.1}s after the build",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn base64_matches_the_standard_encoding() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"hi!?"), "aGkhPw==");
    assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
}
