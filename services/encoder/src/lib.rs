//! flowmesh's encoder service: turns the text or the image of documents into embeddings.
//!
//! On `index`, `search` and `update` every document gets an `embedding`, or, when it has chunks,
//! every leaf chunk does (the document itself is left as it is); every other endpoint passes
//! through unchanged, as Jina's executors do. One encoder serves one model, of texts or of
//! images, behind the [`Model`] trait: `hash` ([`HashModel`]), a deterministic feature-hashing
//! text encoder that needs no files, or an ONNX model described by a config file (a text model
//! such as all-MiniLM-L6-v2, or an image model such as MobileNetV2). Images come as a document's
//! `blob` (base64 PNG or JPEG) or a base64 `data:` URI in its `uri`; they are decoded, resized and
//! normalised per request off the async threads (`preprocess.rs`), before the batch queue. With
//! `--workers N` the model runs on N inference threads that batch requests across callers (see
//! `batcher.rs`: bounded queue, 429 when full, batches bounded by inputs and, for texts, tokens);
//! with the default 0 the `hash` model runs on the request's own thread and ONNX models on one
//! inference thread.
//!
//! Every request is bounded before any work (`--max-inputs`, `--max-text-bytes`, `--max-images`,
//! `--max-image-pixels`: 413 naming the flag), runs in batch-sized parts, and stops between
//! parts, images and queued batches once its deadline (`x-flowmesh-deadline-ms`) has passed or
//! its caller has gone; `/readyz` answers 503 while the batch queue is full.

#![forbid(unsafe_code)]

mod batcher;
pub mod decode;
mod error;
mod executor;
mod http;
pub mod model;
mod onnx;
pub mod preprocess;
mod resize;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{executor_router, Limits, ServeArgs};

pub use batcher::{BatchConfig, BatchError};
pub use decode::{ImageError, ImageLimits};
pub use error::EncodeError;
pub use executor::{Encoder, InputLimits};
pub use http::{openapi, openapi_json, EncodeRequest, EncodeResponse};
pub use model::{Batch, HashModel, InferenceError, Inputs, Modality, Model, ModelError};
pub use onnx::{load_model, OnnxImageModel, OnnxTextModel, SessionOptions};
pub use preprocess::{ImageSpec, ImageTensor};

/// Where `models/prepare.sh` writes: `$FLOWMESH_CACHE/models`, `FLOWMESH_CACHE` defaulting to
/// `~/.cache/flowmesh`.
pub fn models_dir() -> PathBuf {
    let cache = std::env::var_os("FLOWMESH_CACHE").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(".cache/flowmesh")
        },
        PathBuf::from,
    );
    cache.join("models")
}

/// The service's name in logs, metrics and its `listening on` line.
pub const SERVICE: &str = "encoder";

/// Which model computes the embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Feature hashing of words and character trigrams; needs no files.
    Hash,
    /// An ONNX text or image model described by `--model-config` (default: all-MiniLM-L6-v2 as
    /// prepared by `models/prepare.sh`), on ONNX Runtime loaded from `--onnxruntime`.
    Onnx,
}

/// The order in which batched texts meet the model (`--batch-order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchOrder {
    /// Texts of similar token counts share a model call, so that little of it is padding.
    Length,
    /// Texts run in the order they arrived, as many as fit one batch.
    Arrival,
}

/// A `--model-config` that is a bare name (`mobilenetv2`, no such file here) names a prepared
/// model: `MODELS/<name>/config.json`; anything else is a path.
fn resolve_model_config(given: &std::path::Path, models: &std::path::Path) -> PathBuf {
    let bare = given.components().count() == 1 && given.extension().is_none();
    if bare && !given.exists() {
        models.join(given).join("config.json")
    } else {
        given.to_owned()
    }
}

/// The encoder's configuration: command-line flags, or `FLOWMESH_ENCODER_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flowmesh-encoder",
    version,
    about = "flowmesh's encoder service"
)]
pub struct Config {
    /// Model that computes the embeddings.
    #[arg(long, env = "FLOWMESH_ENCODER_MODEL", value_enum, default_value_t = ModelKind::Hash)]
    pub model: ModelKind,
    /// The ONNX model's config file (its `kind` says text or image); default
    /// `$FLOWMESH_CACHE/models/minilm/config.json` (`FLOWMESH_CACHE` defaults to
    /// `~/.cache/flowmesh`). A bare name names a prepared model: `mobilenetv2` is
    /// `$FLOWMESH_CACHE/models/mobilenetv2/config.json`.
    #[arg(long, env = "FLOWMESH_ENCODER_MODEL_CONFIG")]
    pub model_config: Option<PathBuf>,
    /// The ONNX Runtime library; default `$FLOWMESH_CACHE/models/lib/libonnxruntime.so.1.31.1`.
    #[arg(long, env = "FLOWMESH_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime's threads per inference; default: one per core.
    #[arg(long, env = "FLOWMESH_ENCODER_THREADS")]
    pub threads: Option<usize>,
    /// Let ONNX Runtime's idle threads spin (busy-wait) between operators, as it does by default.
    /// Off by default here: spinning threads take the cores that request handling, image
    /// decoding and, on one host, the rest of the mesh need (on a shared 2-core machine
    /// MobileNetV2 used 20-90% more CPU per image with it, MiniLM 20-40% more per text; see
    /// docs/benchmarks.md).
    #[arg(
        long,
        env = "FLOWMESH_ENCODER_INTRA_OP_SPINNING",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub intra_op_spinning: bool,
    /// Number of dimensions of the `hash` model's embeddings (1 to 65536).
    #[arg(long, env = "FLOWMESH_ENCODER_DIM", default_value_t = 64)]
    pub dim: usize,
    /// Inference threads that batch requests across callers; 0 runs the `hash` model on the
    /// request's own thread (it takes microseconds) and ONNX models on one inference thread.
    #[arg(long, env = "FLOWMESH_ENCODER_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Most inputs (texts or images) in one model call; a request with more is split into
    /// several model calls.
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// Most tokens in one model call of texts; a request with more is split into several model
    /// calls (a text is counted at most the model's maximum sequence length). This bounds the
    /// model's memory, which grows with the square of a text's length: a batch of 16 texts of
    /// 256 tokens (the default 4096) takes ~0.25 GB of activations with MiniLM, 64 of them
    /// (16384) ~1 GB, and was slower per text on CPU too (see issue 12's measurements).
    #[arg(
        long,
        env = "FLOWMESH_ENCODER_MAX_BATCH_TOKENS",
        default_value_t = 4096
    )]
    pub max_batch_tokens: usize,
    /// Longest wait, in milliseconds, for more requests to join a batch; 0 batches only what is
    /// already queued (batches still grow under load, while the model is busy).
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_WAIT_MS", default_value_t = 0)]
    pub max_wait_ms: u64,
    /// How batched texts are ordered: `length` sorts each request's texts, and each batch's, by
    /// token count and runs texts of similar lengths together (a model call pads every text to
    /// its longest); `arrival` keeps them in the order they came. Answers keep each request's
    /// order either way; images are unaffected.
    #[arg(long, env = "FLOWMESH_ENCODER_BATCH_ORDER", value_enum, default_value_t = BatchOrder::Length)]
    pub batch_order: BatchOrder,
    /// Most requests (or batch-sized parts of large ones) waiting for the model; more are
    /// answered 429, and `/readyz` answers 503 while it is full.
    #[arg(long, env = "FLOWMESH_ENCODER_QUEUE_SIZE", default_value_t = 1024)]
    pub queue_size: usize,
    /// Most pixels (width x height) of one decoded image; larger images are refused with a 400
    /// before they are decoded (a small compressed file can hold a huge image).
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Most inputs (texts or images: documents, or their leaf chunks) in one request; more are
    /// answered 413 `limit_exceeded` before any work is done.
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_INPUTS", default_value_t = InputLimits::default().max_inputs)]
    pub max_inputs: usize,
    /// Most bytes (UTF-8) of one text; a longer text is answered 413 `limit_exceeded` before any
    /// work is done. Default 1 MiB. Whatever the length, a text model reads only its first
    /// tokens (256 for all-MiniLM-L6-v2), and only about that much of the text is tokenized.
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_TEXT_BYTES", default_value_t = InputLimits::default().max_text_bytes)]
    pub max_text_bytes: usize,
    /// Most images in one request (each becomes the model's input tensor before it is queued:
    /// 0.6 MB for MobileNetV2's 224x224x3 floats).
    #[arg(long, env = "FLOWMESH_ENCODER_MAX_IMAGES", default_value_t = ImageLimits::default().max_images)]
    pub max_images: usize,
    /// Serving options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Config {
    /// The model this configuration names, loaded (for the encoder, and for benchmarks that run
    /// the model alone).
    pub fn model(&self) -> anyhow::Result<Arc<dyn Model>> {
        Ok(match self.model {
            ModelKind::Hash => Arc::new(HashModel::new(self.dim)?),
            ModelKind::Onnx => {
                let models = models_dir();
                let config = match &self.model_config {
                    None => models.join("minilm/config.json"),
                    Some(named) => resolve_model_config(named, &models),
                };
                let library = self
                    .onnxruntime
                    .clone()
                    .unwrap_or_else(|| models.join("lib/libonnxruntime.so.1.31.1"));
                let threads = self
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
                let options = SessionOptions {
                    spinning: self.intra_op_spinning,
                    ..SessionOptions::new(library, threads)
                };
                load_model(&config, &options)?
            }
        })
    }

    /// The encoder this configuration describes; fails on an invalid configuration.
    pub fn encoder(&self) -> anyhow::Result<Encoder> {
        let model = self.model()?;
        anyhow::ensure!(
            self.max_image_pixels > 0 && self.max_images > 0,
            "--max-image-pixels and --max-images must be at least 1"
        );
        anyhow::ensure!(
            self.max_inputs > 0 && self.max_text_bytes > 0,
            "--max-inputs and --max-text-bytes must be at least 1"
        );
        let limits = ImageLimits {
            max_pixels: self.max_image_pixels,
            max_images: self.max_images,
        };
        let inputs = InputLimits {
            max_inputs: self.max_inputs,
            max_text_bytes: self.max_text_bytes,
        };
        if self.workers == 0 && self.model == ModelKind::Hash {
            return Ok(Encoder::new(model)
                .with_image_limits(limits)
                .with_input_limits(inputs));
        }
        anyhow::ensure!(self.max_batch > 0, "--max-batch must be at least 1");
        anyhow::ensure!(
            self.max_batch_tokens > 0,
            "--max-batch-tokens must be at least 1"
        );
        anyhow::ensure!(self.queue_size > 0, "--queue-size must be at least 1");
        let batching = BatchConfig {
            workers: self.workers.max(1),
            max_batch: self.max_batch,
            max_tokens: self.max_batch_tokens,
            max_wait: std::time::Duration::from_millis(self.max_wait_ms),
            queue_capacity: self.queue_size,
            by_length: self.batch_order == BatchOrder::Length,
        };
        Ok(Encoder::batched(model, &batching)?
            .with_image_limits(limits)
            .with_input_limits(inputs))
    }
}

/// The encoder's routes: `POST /{endpoint}`, `POST /encode`, `/openapi.json`, `/docs`, `/livez`,
/// `/readyz`, `/metrics`.
/// `/readyz` answers 503 `not_ready` while the batch queue is full, so that balancers send
/// traffic elsewhere until it drains.
pub fn router(encoder: Arc<Encoder>, readiness: Readiness, limits: &Limits) -> Router {
    let own = http::routes(encoder.clone(), limits.max_concurrent_requests);
    let queue = encoder.clone();
    readiness.add_check(move || {
        queue.queue_full().map(|capacity| {
            format!(
                "the encoder's queue is full ({capacity} requests waiting, --queue-size); send elsewhere until it drains"
            )
        })
    });
    executor_router(SERVICE, encoder, readiness, limits, own)
}

/// The routes of the encoder `config` describes, ready to serve; fails on an invalid
/// configuration.
pub fn app(config: &Config) -> anyhow::Result<Router> {
    let encoder = config.encoder()?;
    tracing::info!(
        model = encoder.model_name(),
        inputs = encoder.modality().inputs_name(),
        dim = encoder.dim(),
        "model loaded"
    );
    Ok(router(
        Arc::new(encoder),
        Readiness::ready(),
        &config.serve.limits,
    ))
}
