//! Models on ONNX Runtime, each described by a small JSON config file beside its ONNX file
//! (`models/prepare.sh` writes the ones of the defaults; `models/README.md` documents the format).
//! `kind` says which: `text` ([`OnnxTextModel`]: a tokenizer, token inputs, mean pooling) or
//! `image` ([`OnnxImageModel`]: one image tensor in, one vector per image out).
//!
//! ONNX Runtime itself is loaded at run time from the shared library named by `--onnxruntime`
//! (the PyPI wheel's `libonnxruntime.so.1.31.1`); a missing or wrong library or model is a clear
//! start-up error.

mod image;
mod text;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::{anyhow, bail, Context as _};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use serde::Deserialize;

use crate::model::{InferenceError, Model};

pub use self::image::OnnxImageModel;
pub use self::text::OnnxTextModel;

/// How ONNX Runtime runs a model's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// The ONNX Runtime shared library (loaded once per process).
    pub library: PathBuf,
    /// Intra-op threads per inference (at least 1).
    pub threads: usize,
    /// Whether idle intra-op threads spin (busy-wait) for the next piece of work, as ONNX
    /// Runtime does by default. Spinning threads keep cores busy between operators, which the
    /// encoder's own request handling and image decoding (and, on one host, the rest of the mesh)
    /// then lack; see `--intra-op-spinning`.
    pub spinning: bool,
}

impl SessionOptions {
    /// `threads` intra-op threads without spinning, with ONNX Runtime from `library`.
    pub fn new(library: impl Into<PathBuf>, threads: usize) -> Self {
        Self {
            library: library.into(),
            threads,
            spinning: false,
        }
    }
}

/// A model config file: a text or an image model, by its `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ModelConfig {
    Text(text::TextConfig),
    Image(image::ImageConfig),
}

/// A named input or output of the ONNX graph.
#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

/// Reads and parses the config file `path`.
fn read_config(path: &Path) -> anyhow::Result<ModelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the model config {} (run models/prepare.sh, or pass --model-config)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("invalid model config {}", path.display()))
}

/// Loads the text or image model the config file `config` describes.
pub fn load_model(config: &Path, options: &SessionOptions) -> anyhow::Result<Arc<dyn Model>> {
    Ok(match read_config(config)? {
        ModelConfig::Text(cfg) => Arc::new(OnnxTextModel::from_config(cfg, config, options)?),
        ModelConfig::Image(cfg) => Arc::new(OnnxImageModel::from_config(cfg, config, options)?),
    })
}

/// The process's ONNX Runtime, loaded from `library` the first time it loads successfully; a
/// failed load is not remembered, and later calls use the runtime already loaded.
fn environment(library: &Path) -> anyhow::Result<&'static Environment> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    if !library.is_file() {
        bail!(
            "the ONNX Runtime library {} does not exist (run models/prepare.sh, or pass --onnxruntime)",
            library.display()
        );
    }
    let _loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env = ort::init_from(library)
        .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", library.display()))?
        .with_name("flowmesh-encoder")
        .build()
        .map_err(|e| anyhow!("cannot start ONNX Runtime from {}: {e}", library.display()))?;
    Ok(ENV.get_or_init(|| env))
}

/// The ONNX file `model`, relative to the config file `config`.
fn model_path(config: &Path, model: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(model)
}

/// A session of the ONNX file `path`, checked to have the `inputs` and `output` the config
/// names.
fn session(
    options: &SessionOptions,
    path: &Path,
    inputs: &[&str],
    output: &str,
) -> anyhow::Result<Session> {
    let env = environment(&options.library)?;
    let session = Session::builder(env)
        .and_then(|b| {
            b.with_intra_threads(options.threads.max(1))
                .map_err(Into::into)
        })
        .and_then(|b| {
            b.with_intra_op_spinning(options.spinning)
                .map_err(Into::into)
        })
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| anyhow!("cannot load the ONNX model {}: {e}", path.display()))?;
    for name in inputs {
        if !session.inputs().iter().any(|i| i.name() == *name) {
            bail!("the ONNX model {} has no input {name:?}", path.display());
        }
    }
    if !session.outputs().iter().any(|o| o.name() == output) {
        bail!("the ONNX model {} has no output {output:?}", path.display());
    }
    Ok(session)
}

/// The inference error of a step (`what`) of a model call that failed with `e`.
fn fail(what: &str, e: &dyn std::fmt::Display) -> InferenceError {
    InferenceError(format!("{what}: {e}"))
}

/// Runs `session` on the named `inputs` and hands the shape and the values of its f32 tensor
/// `output` to `read`. `read` runs under the session's lock: the values are borrowed from the
/// run's outputs, so they are read in place rather than copied out.
fn run_session<T>(
    session: &Mutex<Session>,
    inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
    output: &str,
    read: impl FnOnce(&[i64], &[f32]) -> Result<T, InferenceError>,
) -> Result<T, InferenceError> {
    let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
    let outputs = session.run(inputs).map_err(|e| fail("onnx runtime", &e))?;
    let tensor = outputs
        .get(output)
        .ok_or_else(|| InferenceError(format!("the model gave no output {output:?}")))?;
    let (shape, values) = tensor
        .try_extract_tensor::<f32>()
        .map_err(|e| fail("output", &e))?;
    let dims: Vec<i64> = shape.iter().copied().collect();
    read(&dims, values)
}
