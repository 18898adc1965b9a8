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
