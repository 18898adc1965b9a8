//! The Jina comparison's model checks: the Jina encoder's embeddings against
//! flowmesh-encoder's, and the raw model's throughput on the same sentences.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use serde::{Deserialize, Serialize};

use super::{python, Ctx, MAX_BATCH, REPLICAS, TEXT_THREADS};
use crate::launch::Launched;
use crate::load;
use crate::texts::sentence;
use crate::workload::Workload;

/// `POST /encode`'s body.
#[derive(Serialize)]
struct Texts<'a> {
    texts: &'a [String],
}

/// What the check reads of `/encode`'s answer.
#[derive(Deserialize)]
struct Embeddings {
    embeddings: Vec<Vec<f32>>,
}

/// The result of the embedding check.
#[derive(Debug, Clone, Serialize)]
pub(super) struct EmbeddingCheck {
    texts: usize,
    cosines: Vec<f64>,
    min_cosine: f64,
    max_abs_difference: f64,
}

/// The raw model's figures of the index workload.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RawOnnx {
    pub(super) replicas: usize,
    pub(super) threads_per_replica: usize,
    pub(super) batch: usize,
    pub(super) sentences_per_doc: usize,
    /// `before_flowmesh` and `before_jina`.
    pub(super) runs: BTreeMap<&'static str, RawRun>,
    /// The same sentences sorted by length (batches of similar lengths), measured once before
    /// the first side: the most any batching of them can reach.
    pub(super) sorted_by_length: Option<RawRun>,
}

/// The raw model measured just before one side.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RawRun {
    pub(super) sentences_per_s: f64,
    pub(super) docs_per_s: f64,
    pub(super) cpu_ms_per_sentence: Option<f64>,
}

/// Texts for the embedding check: short, long (truncated at the model's 256 tokens), cased,
/// punctuated, non-ASCII.
fn check_texts() -> Vec<String> {
    let long = (0..400).map(sentence).collect::<Vec<_>>().join(" ");
    vec![
        "A quick check.".to_owned(),
        sentence(7),
        "Neural search in Rust: fast, small, and easy to deploy!".to_owned(),
        "Crème brûlée – 3 × naïve café façades… ok?".to_owned(),
        long,
    ]
}

/// Cosine similarity of the Jina encoder's embeddings with flowmesh-encoder's `/encode`, per
/// text; fails below 1 - 1e-5.
pub(super) async fn embedding_check(ctx: &Ctx) -> anyhow::Result<EmbeddingCheck> {
    let texts = check_texts();
    let flags: Vec<String> = [
        "--model",
        "onnx",
        "--threads",
        "1",
        "--model-config",
        &ctx.model_config.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let service = Launched::service("flowmesh-encoder", &flags).await?;
    let client = load::http_client();
    let body = serde_json::to_vec(&Texts { texts: &texts })?;
    let answer = load::post(&client, &format!("{}/encode", service.base), body.into()).await;
    service.stop().await;
    let answer = answer?;
    anyhow::ensure!(
        answer.status == 200,
        "flowmesh-encoder /encode: status {}",
        answer.status
    );
    let ours = serde_json::from_slice::<Embeddings>(&answer.body)?.embeddings;
    let theirs = python::embed(
        &ctx.python,
        &ctx.jina_dir,
        &ctx.model_config,
        &texts,
        &ctx.guard_log,
    )
    .await?;
    anyhow::ensure!(
        ours.len() == texts.len() && theirs.len() == texts.len(),
        "embedding check: {} and {} embeddings for {} texts",
        ours.len(),
        theirs.len(),
        texts.len()
    );
    let mut cosines = Vec::new();
    let mut max_abs = 0.0_f64;
    for (a, b) in ours.iter().zip(&theirs) {
        anyhow::ensure!(a.len() == b.len(), "dimensions {} and {}", a.len(), b.len());
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        cosines.push(dot / (na * nb));
        for (x, y) in a.iter().zip(b) {
            max_abs = max_abs.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("embedding check: min cosine {min:.8}, max |difference| {max_abs:.2e}");
    anyhow::ensure!(
        min >= 1.0 - 1e-5,
        "the Jina encoder's embeddings differ from flowmesh's: cosines {cosines:?}"
    );
    Ok(EmbeddingCheck {
        texts: texts.len(),
        cosines,
        min_cosine: min,
        max_abs_difference: max_abs,
    })
}

/// The raw model on `sentences`: one model per encoder replica, each on its own thread with
/// the replica's intra-op threads, batches of [`MAX_BATCH`] back to back; sentences/s.
pub(super) async fn raw_onnx(
    ctx: &Ctx,
    sentences: &Arc<Workload>,
    duration: Duration,
) -> anyhow::Result<(f64, Option<f64>)> {
    let config = flowmesh_encoder::Config::try_parse_from([
        "flowmesh-encoder",
        "--model",
        "onnx",
        "--threads",
        &TEXT_THREADS.to_string(),
        "--model-config",
        &ctx.model_config.to_string_lossy(),
    ])?;
    let mut tasks = Vec::new();
    for _ in 0..REPLICAS {
        let model = config.model()?;
        let sentences = sentences.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            crate::encoder::raw_throughput(model.as_ref(), &sentences, MAX_BATCH, duration)
        }));
    }
    let mut per_s = 0.0;
    let mut cpu = Vec::new();
    for t in tasks {
        let raw = t.await??;
        per_s += raw.per_s;
        cpu.extend(raw.cpu_ms);
    }
    // Each loop's CPU figure is the whole process's: both loops' time, over one loop's inputs.
    let cpu_ms =
        (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64 / REPLICAS as f64);
    Ok((per_s, cpu_ms))
}
