//! Search end to end: `flowmesh up` with the shipped Flows, real models (MiniLM, MobileNetV2 on
//! ONNX Runtime, from `models/prepare.sh`), real indexer shards and the ranker with each
//! document store (embedded redb, and Redis through a `redis-server` the test starts).
//! Needs the service binaries (`cargo build --workspace --bins`) and the prepared models, which
//! the test command provides.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use std::path::{Path, PathBuf};

use flowmesh_shared::testing::corpus::{CORPUS, QUERIES};
use flowmesh_shared::testing::RedisServer;
use serde_json::{json, Value};
use support::launch::{self, Launched};
use support::Http;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A Flow started by `flowmesh up` (see [`launch::up`]).
struct Mesh(Launched);

impl Mesh {
    async fn up(flow: &Path, dir: &Path, env: &[(&str, String)]) -> Self {
        Self(launch::up(flow, dir, env, None).await)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.0.gateway)
    }

    /// SIGTERM, and wait for every process to stop.
    async fn down(mut self) {
        self.0.stop().await;
    }

    async fn post(&self, http: &Http, endpoint: &str, body: &Value) -> Value {
        let r = http.post(&self.url(endpoint), body).await;
        assert_eq!(
            r.status,
            200,
            "{endpoint}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// The matches of a one-query search: (id, text).
    async fn search(&self, http: &Http, text: &str, top_k: usize) -> Vec<(String, Value)> {
        let answer = self
            .post(
                http,
                "search",
                &json!({"data": [{"text": text}], "parameters": {"top_k": top_k}}),
            )
            .await;
        let matches = answer["data"][0]["matches"].as_array().unwrap().clone();
        assert!(
            matches.len() <= top_k,
            "more than top_k = {top_k}: {answer}"
        );
        matches
            .into_iter()
            .map(|m| (m["id"].as_str().unwrap().to_owned(), m["text"].clone()))
            .collect()
    }

    /// A search with the pictures `probes` of `blobs` as queries (ids `q{i}`); the answer has
    /// one document per query.
    async fn search_images(
        &self,
        http: &Http,
        blobs: &[String],
        probes: &[usize],
        parameters: Value,
    ) -> Value {
        let queries: Vec<Value> = probes
            .iter()
            .map(|&i| json!({"id": format!("q{i}"), "blob": blobs[i]}))
            .collect();
        let body = json!({"data": queries, "parameters": parameters});
        let answer = self.post(http, "search", &body).await;
        let answered = answer["data"].as_array().unwrap().len();
        assert_eq!(answered, probes.len(), "one answer per query: {answer}");
        answer
    }
}

async fn text_search_end_to_end(env: &[(&str, String)], name: &str) {
    let dir = launch::temp_dir(&format!("e2e-{name}"));
    let flow = repo_file("flows/text.yml");
    let http = Http::new();
    let mesh = Mesh::up(&flow, &dir, env).await;

    let data: Vec<Value> = CORPUS
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text, "tags": {"topic": id}}))
        .collect();
    mesh.post(&http, "index", &json!({ "data": data })).await;

    for (query, expected) in QUERIES {
        let matches = mesh.search(&http, query, 3).await;
        assert_eq!(matches[0].0, *expected, "{query:?} -> {matches:?}");
        let text = CORPUS.iter().find(|(id, _)| id == expected).unwrap().1;
        assert_eq!(matches[0].1, text, "the match carries its stored text");
    }
    // The indexer returns each query chunk's best chunk in top_k different documents
    // (`distinct_parents`), so with 8 documents of 3 sentences every top_k up to 8 is filled.
    for top_k in [1, 2, 5, 8] {
        let matches = mesh.search(&http, "people outside", top_k).await;
        assert_eq!(matches.len(), top_k, "{matches:?}");
    }

    // Delete: the horse document is gone from every answer.
    mesh.post(&http, "delete", &json!({"data": [{"id": "horse"}]}))
        .await;
    let matches = mesh.search(&http, "a person rides a horse", 8).await;
    assert!(matches.iter().all(|(id, _)| id != "horse"), "{matches:?}");
    // Update: the train document is now about a cat.
    let cat = "A grey cat sleeps on the warm windowsill. It purrs in the afternoon sun.";
    mesh.post(
        &http,
        "update",
        &json!({"data": [{"id": "train", "text": cat}]}),
    )
    .await;
    let matches = mesh
        .search(&http, "a kitten napping by the window", 3)
        .await;
    assert_eq!(matches[0], ("train".to_owned(), json!(cat)), "{matches:?}");
    let matches = mesh.search(&http, "travelling by rail overnight", 3).await;
    assert_ne!(
        matches[0].0, "train",
        "the old text is not indexed any more"
    );

    // Stop every process and start them again: everything is still there.
    mesh.down().await;
    let mesh = Mesh::up(&flow, &dir, env).await;
    for (query, expected) in QUERIES
        .iter()
        .filter(|(_, id)| *id != "horse" && *id != "train")
    {
        let matches = mesh.search(&http, query, 3).await;
        assert_eq!(
            matches[0].0, *expected,
            "after restart: {query:?} -> {matches:?}"
        );
    }
    let matches = mesh.search(&http, "a person rides a horse", 8).await;
    assert!(
        matches.iter().all(|(id, _)| id != "horse"),
        "deleted stays deleted"
    );
    let matches = mesh
        .search(&http, "a kitten napping by the window", 3)
        .await;
    assert_eq!(
        matches[0],
        ("train".to_owned(), json!(cat)),
        "updated stays updated"
    );
    mesh.down().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ranker's embedded store.
fn embedded_store() -> Vec<(&'static str, String)> {
    vec![("FLOWMESH_RANKER_STORE", "embedded".into())]
}

/// A Redis server for the ranker's store (with `password`, if any), and the environment that
/// points the ranker at it.
fn redis_store(name: &str, password: Option<&str>) -> (RedisServer, Vec<(&'static str, String)>) {
    let redis = RedisServer::start(name, password);
    let mut env = vec![
        ("FLOWMESH_RANKER_STORE", "redis".into()),
        ("FLOWMESH_RANKER_REDIS_URL", redis.url()),
    ];
    if let Some(password) = password {
        env.push(("FLOWMESH_RANKER_REDIS_PASSWORD", password.into()));
    }
    (redis, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_search_with_the_embedded_store() {
    text_search_end_to_end(&embedded_store(), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_search_with_the_redis_store() {
    let (redis, env) = redis_store("e2e-text", Some("e2e-pass"));
    text_search_end_to_end(&env, "redis").await;
    drop(redis);
}

/// A deterministic picture: a background and a few rectangles of random colours, as PNG bytes.
fn picture(seed: u64) -> Vec<u8> {
    let mut rng = flowmesh_shared::rng::SplitMix64::new(seed);
    let mut next = move |n: u32| u32::try_from(rng.below(n as usize)).unwrap();
    let (w, h) = (96, 80);
    let byte = |n: u32| u8::try_from(n).unwrap();
    let background = image::Rgb([byte(next(256)), byte(next(256)), byte(next(256))]);
    let mut img = image::RgbImage::from_pixel(w, h, background);
    for _ in 0..4 {
        let c = image::Rgb([byte(next(256)), byte(next(256)), byte(next(256))]);
        let (x0, y0) = (next(w), next(h));
        let (x1, y1) = ((x0 + 10 + next(40)).min(w), (y0 + 10 + next(40)).min(h));
        for y in y0..y1 {
            for x in x0..x1 {
                img.put_pixel(x, y, c);
            }
        }
    }
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    png.into_inner()
}

/// A few hundred generated images through flows/image.yml (MobileNetV2): each, searched with,
/// comes back first, with its stored image on request.
async fn image_search_end_to_end(env: &[(&str, String)], name: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = launch::temp_dir(&format!("e2e-image-{name}"));
    let http = Http::new();
    let mesh = Mesh::up(&repo_file("flows/image.yml"), &dir, env).await;

    let blobs: Vec<String> = (0..240).map(|i| b64.encode(picture(i))).collect();
    let data: Vec<Value> = blobs
        .iter()
        .enumerate()
        .map(|(i, blob)| {
            if i % 2 == 0 {
                json!({"id": format!("img-{i:03}"), "blob": blob, "tags": {"n": i}})
            } else {
                json!({"id": format!("img-{i:03}"), "uri": format!("data:image/png;base64,{blob}")})
            }
        })
        .collect();
    for batch in data.chunks(60) {
        mesh.post(&http, "index", &json!({ "data": batch })).await;
    }

    let probes = [0_usize, 1, 7, 42, 99, 150, 201, 239];
    let parameters = json!({"top_k": 5, "include_blob": true});
    let answer = mesh.search_images(&http, &blobs, &probes, parameters).await;
    for (query, &i) in answer["data"].as_array().unwrap().iter().zip(&probes) {
        let matches = query["matches"].as_array().unwrap();
        assert!(!matches.is_empty() && matches.len() <= 5, "{query}");
        assert_eq!(matches[0]["id"], format!("img-{i:03}"), "probe {i}");
        if i % 2 == 0 {
            assert_eq!(
                matches[0]["blob"], blobs[i],
                "the stored image comes back on request"
            );
            assert_eq!(matches[0]["tags"]["n"], i);
        } else {
            assert_eq!(
                matches[0]["uri"],
                format!("data:image/png;base64,{}", blobs[i])
            );
        }
    }
    // An image that cannot be decoded is a 400 naming the document.
    let r = http
        .post(
            &mesh.url("index"),
            &json!({"data": [{"id": "broken", "blob": b64.encode(b"not an image")}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("broken"));

    // Delete one, restart everything, and the rest is still found, the deleted one not.
    mesh.post(&http, "delete", &json!({"data": [{"id": "img-042"}]}))
        .await;
    mesh.down().await;
    let mesh = Mesh::up(&repo_file("flows/image.yml"), &dir, env).await;
    let answer = mesh
        .search_images(&http, &blobs, &[42, 150], json!({"top_k": 3}))
        .await;
    let first = |q: usize| answer["data"][q]["matches"][0]["id"].clone();
    assert_ne!(first(0), "img-042", "deleted before the restart");
    assert_eq!(first(1), "img-150", "found after the restart");
    mesh.down().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_search_with_the_embedded_store() {
    image_search_end_to_end(&embedded_store(), "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_search_with_the_redis_store() {
    let (redis, env) = redis_store("e2e-image", None);
    image_search_end_to_end(&env, "redis").await;
    drop(redis);
}
