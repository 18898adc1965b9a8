//! all-MiniLM-L6-v2 on ONNX Runtime against sentence-transformers' own embeddings of the same
//! sentences (`models/testdata/minilm_reference.json`, computed independently with torch).
//! Needs `models/prepare.sh` to have run (the test command runs it); `FLOWMESH_CACHE` as there.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod support;

use clap::Parser;
use flowmesh_encoder::{app, models_dir, Config, Model, OnnxTextModel, SessionOptions};
use flowmesh_shared::testing::post;
use serde_json::{json, Value};
use support::cosine;

/// The tolerance the issue sets: every embedding within cosine 0.9999 of the reference.
const MIN_COSINE: f64 = 0.9999;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/testdata/minilm_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model() -> OnnxTextModel {
    let dir = models_dir();
    OnnxTextModel::load(
        &dir.join("minilm/config.json"),
        &SessionOptions::new(dir.join("lib/libonnxruntime.so.1.31.1"), 2),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nrun models/prepare.sh first (the test command does)"))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = reference();
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    assert_eq!(
        expected.len(),
        sentences.len(),
        "a reference for every sentence"
    );
    assert!(
        sentences.len() >= 10 && sentences.contains(&" "),
        "a varied set, a single space included"
    );
    let model = model();
    assert_eq!(model.dim(), 384);

    // Token ids exactly as sentence-transformers fed them (truncation at 256 included).
    if let Some(ids) = reference["input_ids"].as_array() {
        assert_eq!(ids.len(), sentences.len(), "token ids of every sentence");
        for (s, want) in sentences.iter().zip(ids) {
            let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(model.token_ids(s).unwrap(), want, "token ids of {s:?}");
        }
    }

    // All in one batch (padded to the longest), and each alone: the padding must not matter.
    let batch = model.embed_texts(&sentences).unwrap();
    let mut worst = f64::MAX;
    for (i, s) in sentences.iter().enumerate() {
        let alone = model.embed_texts(&[s]).unwrap().remove(0);
        for got in [&batch[i], &alone] {
            let c = cosine(got, &expected[i]);
            worst = worst.min(c);
            assert!(c >= MIN_COSINE, "cosine {c} for {s:?}");
        }
    }
    eprintln!("minimum cosine against sentence-transformers: {worst:.12}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_embeds_chunks_with_the_onnx_model() {
    let dir = models_dir();
    let app = app(&Config::parse_from([
        "e",
        "--model",
        "onnx",
        "--model-config",
        dir.join("minilm/config.json").to_str().unwrap(),
        "--threads",
        "2",
    ]))
    .unwrap();
    let (status, body) = post(
        &app,
        "index",
        &json!({"data": [{"id": "d", "text": "A man is riding a horse.", "chunks": [
            {"id": "d#0", "text": "A man is riding a horse."},
            {"id": "d#1", "text": "A woman is playing violin."}]}]}),
    )
    .await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let chunks = body["data"][0]["chunks"].as_array().unwrap();
    let e0: Vec<f32> = serde_json::from_value(chunks[0]["embedding"].clone()).unwrap();
    let e1: Vec<f32> = serde_json::from_value(chunks[1]["embedding"].clone()).unwrap();
    assert_eq!(e0.len(), 384);
    let norm: f32 = e0.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
    let similar = model()
        .embed_texts(&["Someone rides a horse."])
        .unwrap()
        .remove(0);
    assert_eq!(similar.len(), e0.len());
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(
        dot(&similar, &e0) > dot(&similar, &e1),
        "a paraphrase is closer than an unrelated sentence"
    );
}

#[test]
fn a_missing_library_or_model_is_a_clear_error() {
    let dir = models_dir();
    let config = dir.join("minilm/config.json");
    let library = dir.join("lib/libonnxruntime.so.1.31.1");
    let err = |r: anyhow::Result<OnnxTextModel>| format!("{:#}", r.err().expect("an error"));
    let e = err(OnnxTextModel::load(
        &config,
        &SessionOptions::new("/nonexistent/libonnxruntime.so", 1),
    ));
    assert!(
        e.contains("the ONNX Runtime library /nonexistent/libonnxruntime.so does not exist"),
        "{e}"
    );
    let e = err(OnnxTextModel::load(
        std::path::Path::new("/nonexistent/config.json"),
        &SessionOptions::new(library.clone(), 1),
    ));
    assert!(
        e.contains("cannot read the model config /nonexistent/config.json"),
        "{e}"
    );
    // A failed attempt leaves nothing behind: the real library still loads afterwards.
    assert_eq!(
        OnnxTextModel::load(&config, &SessionOptions::new(library, 1))
            .unwrap()
            .dim(),
        384
    );
}

/// A sentence of `n` words for item `i`, from a small vocabulary.
fn sentence(i: usize, n: usize) -> String {
    const WORDS: [&str; 12] = [
        "river", "quiet", "horse", "runs", "across", "the", "bright", "city", "under", "rain",
        "music", "plays",
    ];
    (0..n)
        .map(|w| WORDS[(i * 7 + w * 5 + w * w) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_by_length_keeps_every_callers_order_under_concurrency() {
    let model: std::sync::Arc<dyn Model> = std::sync::Arc::new(model());
    let config = flowmesh_encoder::BatchConfig {
        workers: 1,
        max_batch: 64,
        max_tokens: 4096,
        max_wait: std::time::Duration::ZERO,
        queue_capacity: 1024,
        by_length: true,
    };
    let encoder =
        std::sync::Arc::new(flowmesh_encoder::Encoder::batched(model.clone(), &config).unwrap());
    // Eight callers at once, each with 20 texts of 4 to 40 words in a scrambled order.
    let jobs: Vec<Vec<String>> = (0..8)
        .map(|j| {
            (0..20)
                .map(|k| sentence(j * 20 + k, 4 + (k * 13 + j * 7) % 37))
                .collect()
        })
        .collect();
    let handles: Vec<_> = jobs
        .iter()
        .map(|texts| {
            let encoder = encoder.clone();
            let mut docs: Vec<flowmesh_shared::Document> = texts
                .iter()
                .enumerate()
                .map(|(k, t)| flowmesh_shared::Document::text(k.to_string(), t.clone()))
                .collect();
            tokio::spawn(async move { encoder.encode(&mut docs).await.map(|()| docs) })
        })
        .collect();
    let mut worst = f64::MAX;
    for (texts, handle) in jobs.iter().zip(handles) {
        let docs = handle.await.unwrap().unwrap();
        for (t, d) in texts.iter().zip(docs) {
            let alone: Vec<f64> = model.embed_texts(&[t.as_str()]).unwrap()[0]
                .iter()
                .map(|x| f64::from(*x))
                .collect();
            let c = cosine(d.embedding.as_ref().unwrap(), &alone);
            worst = worst.min(c);
            assert!(
                c >= 1.0 - 1e-6,
                "cosine {c} for {t:?}: not its own embedding"
            );
        }
    }
    eprintln!("minimum cosine, batched by length against alone: {worst:.9}");
}
