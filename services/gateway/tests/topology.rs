//! The Flow's topology semantics, against small real executor servers on 127.0.0.1:0.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use flowmesh_shared::{ApiError, Document, Envelope};
use support::{docs, executor_app, ids, Http, TestGateway, TestServer};

/// An executor that tags every document with its name (and records the tags it was given).
async fn tagger(
    name: &'static str,
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    barrier: Option<Arc<Barrier>>,
) -> TestServer {
    TestServer::start(executor_app(move |_endpoint, mut env: Envelope| {
        let seen = seen.clone();
        let barrier = barrier.clone();
        async move {
            if let Some(b) = barrier {
                // Both branches must be in flight at once to pass this point.
                tokio::time::timeout(Duration::from_secs(5), b.wait())
                    .await
                    .map_err(|_| ApiError::Internal("branches did not run in parallel".into()))?;
            }
            for d in &mut env.data {
                let tags = d.tags.get_or_insert_with(Default::default);
                seen.lock().unwrap().push(tags.keys().cloned().collect());
                tags.insert(name.into(), json!(true));
            }
            Ok(env)
        }
    }))
    .await
}

#[tokio::test]
async fn parallel_branches_run_concurrently_and_join_merges_by_id() {
    let barrier = Arc::new(Barrier::new(2));
    let seen_join = Arc::new(Mutex::new(Vec::new()));
    let p1 = tagger("p1", Default::default(), Some(barrier.clone())).await;
    let p2 = tagger("p2", Default::default(), Some(barrier)).await;
    let join = tagger("join", seen_join.clone(), None).await;
    let gw = TestGateway::start(&format!(
        "executors:\n\
         - {{name: p1, uses: remote, needs: gateway, addresses: ['{}']}}\n\
         - {{name: p2, uses: remote, needs: gateway, addresses: ['{}']}}\n\
         - {{name: join, uses: remote, needs: [p1, p2], addresses: ['{}']}}\n",
        p1.base(),
        p2.base(),
        join.base()
    ))
    .await;
    let want: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
    let r = Http::new().post(&gw.url("/index"), &docs(&want)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!(ids(&answer), want, "order and ids kept through the join");
    for d in answer["data"].as_array().unwrap() {
        for tag in ["p1", "p2", "join"] {
            assert_eq!(d["tags"][tag], json!(true), "{d}");
        }
    }
    // The join saw each document once, already carrying both branches' tags.
    let seen = seen_join.lock().unwrap();
    assert_eq!(seen.len(), 5);
    for tags in seen.iter() {
        let mut t = tags.clone();
        t.sort();
        assert_eq!(t, ["p1", "p2"]);
    }
    let routes: Vec<&str> = answer["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["executor"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["p1", "p2", "join"]);
}

#[tokio::test]
async fn needs_all_waits_for_every_orphan() {
    let a = tagger("a", Default::default(), None).await;
    let b = tagger("b", Default::default(), None).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let r = tagger("r", seen.clone(), None).await;
    let gw = TestGateway::start(&format!(
        "executors:\n\
         - {{name: a, uses: remote, needs: gateway, addresses: ['{}']}}\n\
         - {{name: b, uses: remote, needs: gateway, addresses: ['{}']}}\n\
         - {{name: r, uses: remote, needs: all, addresses: ['{}']}}\n",
        a.base(),
        b.base(),
        r.base()
    ))
    .await;
    let r = Http::new()
        .post(&gw.url("/search"), &docs(&["x".into()]))
        .await;
    assert_eq!(r.status, 200);
    let mut tags = seen.lock().unwrap()[0].clone();
    tags.sort();
    assert_eq!(tags, ["a", "b"]);
}

/// A gateway serving `flow`, where `{shards}` stands for the addresses of `shards`, one
/// replica each.
async fn gateway_over(shards: &[TestServer], flow: &str) -> TestGateway {
    let addrs: Vec<String> = shards.iter().map(|s| format!("['{}']", s.base())).collect();
    TestGateway::start(&flow.replace("{shards}", &addrs.join(", "))).await
}

/// `n` shards made by `shard` from fresh shared state each, and a gateway serving `flow` over
/// them (see [`gateway_over`]): the states, the shards and the gateway.
async fn sharded<S, F, Fut>(
    n: usize,
    shard: F,
    flow: &str,
) -> (Vec<S>, Vec<TestServer>, TestGateway)
where
    S: Default + Clone,
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = TestServer>,
{
    let (states, shards) = started(n, shard).await;
    let gw = gateway_over(&shards, flow).await;
    (states, shards, gw)
}

/// `n` servers made by `server` from fresh shared state each: the states and the servers.
async fn started<S, F, Fut>(n: usize, server: F) -> (Vec<S>, Vec<TestServer>)
where
    S: Default + Clone,
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = TestServer>,
{
    let states: Vec<S> = (0..n).map(|_| S::default()).collect();
    let servers = join_all(states.iter().cloned().map(server)).await;
    (states, servers)
}

/// `(endpoint, root id)` of every document a shard was sent.
type SentLog = Arc<Mutex<Vec<(String, String)>>>;

/// A shard that records the root ids it is sent, per endpoint.
async fn recording_shard(log: SentLog) -> TestServer {
    TestServer::start(executor_app(move |endpoint, env: Envelope| {
        let log = log.clone();
        async move {
            for d in &env.data {
                log.lock().unwrap().push((endpoint.clone(), d.id.clone()));
            }
            Ok(env)
        }
    }))
    .await
}

#[tokio::test]
async fn any_polling_sends_an_id_to_the_same_shard_every_time() {
    let flow = "with: {request_size: 7}\nexecutors:\n- {name: idx, uses: remote, shards: 3, addresses: [{shards}]}\n";
    let (logs, _shards, gw) = sharded(3, recording_shard, flow).await;
    let http = Http::new();
    let all: Vec<String> = (0..60).map(|i| format!("doc-{i}")).collect();
    // Index everything, then update a shuffled subset, then delete (all polling).
    let r = http.post(&gw.url("/index"), &docs(&all)).await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()), all, "answers reassembled in the order sent");
    let subset: Vec<String> = all.iter().rev().step_by(3).cloned().collect();
    assert_eq!(
        http.post(&gw.url("/update"), &docs(&subset)).await.status,
        200
    );
    assert_eq!(
        http.post(&gw.url("/delete"), &docs(&subset[..2]))
            .await
            .status,
        200
    );

    let mut owner: HashMap<String, usize> = HashMap::new();
    for (shard, log) in logs.iter().enumerate() {
        for (endpoint, id) in log.lock().unwrap().iter() {
            if endpoint == "delete" {
                continue;
            }
            if let Some(prev) = owner.insert(id.clone(), shard) {
                assert_eq!(prev, shard, "{id} went to shards {prev} and {shard}");
            }
        }
    }
    assert_eq!(owner.len(), 60);
    let used: HashSet<usize> = owner.values().copied().collect();
    assert_eq!(used.len(), 3, "60 ids spread over all 3 shards");
    for (shard, log) in logs.iter().enumerate() {
        let deletes = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "delete")
            .count();
        assert_eq!(deletes, 2, "delete polls all shards (shard {shard})");
    }
}

#[tokio::test]
async fn any_polling_keeps_chunks_with_their_root_document() {
    let keeping = |log: Arc<Mutex<Vec<Document>>>| {
        TestServer::start(executor_app(move |_e, env: Envelope| {
            let log = log.clone();
            async move {
                log.lock().unwrap().extend(env.data.iter().cloned());
                Ok(env)
            }
        }))
    };
    let flow = "executors:\n- {name: seg, uses: sentencizer}\n- {name: idx, uses: remote, shards: 4, addresses: [{shards}]}\n";
    let (logs, _shards, gw) = sharded(4, keeping, flow).await;
    let data: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("p{i}"), "text": "One. Two. Three."}))
        .collect();
    let r = Http::new()
        .post(&gw.url("/index"), &json!({"data": data}))
        .await;
    assert_eq!(r.status, 200);
    let mut total = 0;
    for log in &logs {
        for d in log.lock().unwrap().iter() {
            total += 1;
            assert_eq!(d.chunks.len(), 3);
            assert!(d
                .chunks
                .iter()
                .all(|c| c.parent_id.as_deref() == Some(d.id.as_str())));
        }
    }
    assert_eq!(total, 20);
}

/// A shard whose search answer is set by the test: its matches for every query.
async fn scripted_shard(matches: Arc<Mutex<Vec<Document>>>) -> TestServer {
    TestServer::start(executor_app(move |_e, mut env: Envelope| {
        let matches = matches.clone();
        async move {
            let m = matches.lock().unwrap().clone();
            for d in &mut env.data {
                d.matches = m.clone();
            }
            Ok(env)
        }
    }))
    .await
}

fn brute_force(lists: &[Vec<Document>], k: usize) -> Vec<(String, f32)> {
    let mut all: Vec<&Document> = lists.iter().flatten().collect();
    all.sort_by(|a, b| {
        b.score
            .unwrap()
            .total_cmp(&a.score.unwrap())
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut seen = HashSet::new();
    all.into_iter()
        .filter(|d| seen.insert(d.id.clone()))
        .take(k)
        .map(|d| (d.id.clone(), d.score.unwrap()))
        .collect()
}

#[tokio::test]
async fn all_polling_with_top_k_equals_a_brute_force_merge() {
    let flow = "executors:\n- {name: idx, uses: remote, shards: 3, addresses: [{shards}]}\n";
    let (scripts, _shards, gw) = sharded(3, scripted_shard, flow).await;
    let http = Http::new();
    // A property test over random shard answers; the generator is a fixed-seed LCG so failures
    // reproduce.
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for case in 0..60 {
        let mut lists = Vec::new();
        for script in &scripts {
            let len = next(25);
            let mut list: Vec<Document> = (0..len)
                .map(|_| Document {
                    id: format!("m{}", next(40)),
                    score: Some(next(200) as f32 / 8.0 - 10.0),
                    ..Document::default()
                })
                .collect();
            list.sort_by(|a, b| b.score.unwrap().total_cmp(&a.score.unwrap()));
            *script.lock().unwrap() = list.clone();
            lists.push(list);
        }
        let k = 1 + next(30) as usize;
        let r = http
            .post(
                &gw.url("/search"),
                &json!({"data": [{"id": "q1"}, {"id": "q2"}], "parameters": {"top_k": k}}),
            )
            .await;
        assert_eq!(r.status, 200);
        let want = brute_force(&lists, k);
        for q in r.json()["data"].as_array().unwrap() {
            let got: Vec<(String, f32)> = q["matches"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            (
                                m["id"].as_str().unwrap().to_owned(),
                                m["score"].as_f64().unwrap() as f32,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(got, want, "case {case}, k {k}");
        }
    }
}

#[tokio::test]
async fn concat_merger_returns_every_shards_matches_like_match_merger() {
    let mut shards = Vec::new();
    for s in 0..10 {
        let list: Vec<Document> = (0..20)
            .map(|i| Document {
                id: format!("s{s}-{i}"),
                score: Some(i as f32),
                ..Document::default()
            })
            .collect();
        shards.push(scripted_shard(Arc::new(Mutex::new(list))).await);
    }
    let gw = gateway_over(
        &shards,
        "executors:\n- {name: idx, uses: remote, shards: 10, uses_after: concat, addresses: [{shards}]}\n",
    )
    .await;
    let r = Http::new()
        .post(
            &gw.url("/search"),
            &json!({"data": [{"id": "q"}], "parameters": {"top_k": 20}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"][0]["matches"].as_array().unwrap().len(),
        200
    );
}

#[tokio::test]
async fn request_size_splitting_keeps_document_order() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let log = batches.clone();
    let exec = TestServer::start(executor_app(move |_e, env: Envelope| {
        let log = log.clone();
        async move {
            let n = env.data.len();
            log.lock().unwrap().push(n);
            // Later batches finish first, so order must come from reassembly.
            let first: u64 = env.data[0].id.trim_start_matches('d').parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(30u64.saturating_sub(first / 4))).await;
            Ok(env)
        }
    }))
    .await;
    let gw = TestGateway::start(&format!(
        "with: {{request_size: 7, prefetch: 3}}\nexecutors:\n- {{name: e, uses: remote, addresses: ['{}']}}\n",
        exec.base()
    ))
    .await;
    let want: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
    let r = Http::new().post(&gw.url("/index"), &docs(&want)).await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r.json()), want);
    let sizes = batches.lock().unwrap().clone();
    assert_eq!(sizes.len(), 15, "100 documents in batches of 7");
    assert!(sizes.iter().all(|n| *n <= 7));
    assert_eq!(sizes.iter().sum::<usize>(), 100);
}

#[tokio::test]
async fn shards_combine_with_replicas() {
    let counting = |c: Arc<Mutex<usize>>| {
        TestServer::start(executor_app(move |_e, env: Envelope| {
            let c = c.clone();
            async move {
                *c.lock().unwrap() += 1;
                // Calls overlap, so the balancer sees one replica busy and picks the other.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(env)
            }
        }))
    };
    let (counts, servers) = started(4, counting).await;
    let gw = TestGateway::start(&format!(
        "executors:\n- {{name: idx, uses: remote, shards: 2, replicas: 2, addresses: [['{}', '{}'], ['{}', '{}']]}}\n",
        servers[0].base(),
        servers[1].base(),
        servers[2].base(),
        servers[3].base()
    ))
    .await;
    let http = Http::new();
    let searches = (0..20).map(|i| {
        let http = http.clone();
        let url = gw.url("/search");
        async move { http.post(&url, &docs(&[format!("q{i}")])).await }
    });
    for r in futures::future::join_all(searches).await {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let n: Vec<usize> = counts.iter().map(|c| *c.lock().unwrap()).collect();
    // `all` polling: each search reaches exactly one replica of each of the two shards, and
    // searches at once are spread over both replicas of a shard.
    assert_eq!(n[0] + n[1], 20, "{n:?}");
    assert_eq!(n[2] + n[3], 20, "{n:?}");
    assert!(
        n.iter().all(|&calls| calls > 0),
        "every replica served: {n:?}"
    );
    let status = http.get(&gw.url("/status")).await.json();
    assert_eq!(
        status["executors"][0]["shards"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        status["executors"][0]["shards"][1]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
