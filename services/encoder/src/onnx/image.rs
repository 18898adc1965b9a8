//! Image models on ONNX Runtime (the default: MobileNetV2 1.0 at 224x224): one float32 image
//! tensor in (`[batch, height, width, 3]` or `[batch, 3, height, width]`), one vector per image
//! out (`[batch, dim]`, or any shape of `dim` values per image such as `[batch, dim, 1, 1]`).
//!
//! The config says how images become the input tensor (size, resize method, channel order,
//! normalisation, layout); [`crate::preprocess`] does it per request, before the batch queue, so
//! a model call only stacks the ready tensors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::bail;
use flowmesh_shared::vector::l2_normalise;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;

use super::{model_path, read_config, session, ModelConfig, Named, SessionOptions};
use crate::model::{wrong_modality, Batch, InferenceError, Modality, Model};
use crate::preprocess::{ChannelOrder, ImageSpec, Layout, Normalisation, Resize};

/// Largest input side accepted from a config: beyond it a single image's tensor alone would be
/// hundreds of MB.
const MAX_SIDE: usize = 4096;

/// The config of an image model (`"kind": "image"`).
#[derive(Debug, Deserialize)]
pub(super) struct ImageConfig {
    name: String,
    /// The ONNX file, relative to the config file.
    model: PathBuf,
    input: ImageInput,
    output: Named,
    dim: usize,
    /// Input size: `224` (square) or `[height, width]`.
    size: Size,
    /// `RGB` (default) or `BGR`.
    channels: Option<String>,
    /// `bilinear` (see `resize.rs`).
    resize: String,
    /// `x/127.5-1`, `x/255`, `none`, or `{"mean": [r, g, b], "std": [r, g, b]}` on `x/255`.
    preprocess: Preprocess,
    /// L2-normalise the embeddings; default false (the model's output as it is).
    normalize: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ImageInput {
    name: String,
    /// `NHWC` (default) or `NCHW`.
    layout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Square(usize),
    HeightWidth([usize; 2]),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Preprocess {
    Named(String),
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

/// An image embedding model on ONNX Runtime.
pub struct OnnxImageModel {
    name: String,
    dim: usize,
    spec: ImageSpec,
    normalize: bool,
    input: String,
    output: String,
    /// `Session::run` takes `&mut self`; batches come one at a time per inference thread.
    session: Mutex<Session>,
}

impl OnnxImageModel {
    /// Loads the image model that the config file `config` describes.
    pub fn load(config: &Path, options: &SessionOptions) -> anyhow::Result<Self> {
        match read_config(config)? {
            ModelConfig::Image(cfg) => Self::from_config(cfg, config, options),
            ModelConfig::Text(_) => bail!(
                "model config {}: a text model, not an image model",
                config.display()
            ),
        }
    }

    pub(super) fn from_config(
        cfg: ImageConfig,
        config: &Path,
        options: &SessionOptions,
    ) -> anyhow::Result<Self> {
        let spec =
            spec(&cfg).map_err(|e| e.context(format!("model config {}", config.display())))?;
        let path = model_path(config, &cfg.model);
        let session = session(options, &path, &[&cfg.input.name], &cfg.output.name)?;
        check_input(&session, &cfg.input.name, &spec).map_err(|e| {
            e.context(format!(
                "the ONNX model {} against its config",
                path.display()
            ))
        })?;
        Ok(Self {
            name: cfg.name,
            dim: cfg.dim,
            spec,
            normalize: cfg.normalize.unwrap_or(false),
            input: cfg.input.name,
            output: cfg.output.name,
            session: Mutex::new(session),
        })
    }

    /// How this model's images are prepared.
    pub fn spec(&self) -> &ImageSpec {
        &self.spec
    }
}

/// The preprocessing the config describes.
fn spec(cfg: &ImageConfig) -> anyhow::Result<ImageSpec> {
    let (height, width) = match cfg.size {
        Size::Square(side) => (side, side),
        Size::HeightWidth([h, w]) => (h, w),
    };
    if !(1..=MAX_SIDE).contains(&height) || !(1..=MAX_SIDE).contains(&width) {
        bail!("size {height}x{width} is out of range (1 to {MAX_SIDE} a side)");
    }
    if cfg.dim == 0 {
        bail!("dim must be at least 1");
    }
    let resize = match cfg.resize.as_str() {
        "bilinear" => Resize::Bilinear,
        other => bail!("resize {other:?} is not supported (bilinear)"),
    };
    let channels = match cfg.channels.as_deref().unwrap_or("RGB") {
        "RGB" => ChannelOrder::Rgb,
        "BGR" => ChannelOrder::Bgr,
        other => bail!("channels {other:?} is not supported (RGB, BGR)"),
    };
    let layout = match cfg.input.layout.as_deref().unwrap_or("NHWC") {
        "NHWC" => Layout::Nhwc,
        "NCHW" => Layout::Nchw,
        other => bail!("input layout {other:?} is not supported (NHWC, NCHW)"),
    };
    let normalisation = match &cfg.preprocess {
        Preprocess::Named(name) => Normalisation::named(name).ok_or_else(|| {
            anyhow::anyhow!(
                "preprocess {name:?} is not supported (x/127.5-1, x/255, none, or {{\"mean\": [r, g, b], \"std\": [r, g, b]}})"
            )
        })?,
        Preprocess::MeanStd { mean, std } => Normalisation::mean_std(*mean, *std)
            .ok_or_else(|| anyhow::anyhow!("preprocess std must be positive, got {std:?}"))?,
    };
    Ok(ImageSpec {
        height,
        width,
        resize,
        channels,
        normalisation,
        layout,
    })
}

/// The graph's input must be a float32 tensor of rank 4 whose fixed dimensions agree with the
/// config's size and layout (dynamic ones, -1, agree with anything).
fn check_input(session: &Session, name: &str, spec: &ImageSpec) -> anyhow::Result<()> {
    let Some(input) = session.inputs().iter().find(|i| i.name() == name) else {
        bail!("no input {name:?}");
    };
    let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
        bail!("input {name:?} is not a tensor");
    };
    if *ty != TensorElementType::Float32 {
        bail!("input {name:?} is {ty:?}, not float32");
    }
    let (h, w) = (spec.height as i64, spec.width as i64);
    let want: [i64; 4] = match spec.layout {
        Layout::Nhwc => [-1, h, w, 3],
        Layout::Nchw => [-1, 3, h, w],
    };
    let agrees = shape.len() == 4
        && shape
            .iter()
            .zip(want)
            .all(|(got, want)| *got < 0 || want < 0 || *got == want);
    if !agrees {
        let dims: Vec<i64> = shape.iter().copied().collect();
        bail!(
            "input {name:?} has shape {dims:?}, the config says {:?} ({:?})",
            want,
            spec.layout
        );
    }
    Ok(())
}

impl Model for OnnxImageModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn modality(&self) -> Modality {
        Modality::Image(self.spec)
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Batch::Images(images) = batch else {
            return Err(wrong_modality(self, &batch));
        };
        let n = images.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let per_image = self.spec.tensor_len();
        let mut stacked = Vec::with_capacity(n * per_image);
        for image in images {
            if image.as_slice().len() != per_image {
                return Err(InferenceError(format!(
                    "an image tensor of {} values, expected {per_image}",
                    image.as_slice().len()
                )));
            }
            stacked.extend_from_slice(image.as_slice());
        }
        let (h, w) = (self.spec.height, self.spec.width);
        let shape = match self.spec.layout {
            Layout::Nhwc => [n, h, w, 3],
            Layout::Nchw => [n, 3, h, w],
        };
        let tensor =
            Tensor::from_array((shape, stacked)).map_err(|e| super::fail("input tensor", &e))?;
        let inputs = ort::inputs![self.input.as_str() => tensor];
        super::run_session(&self.session, inputs, &self.output, |dims, values| {
            if dims.first().copied() != Some(n as i64) || values.len() != n * self.dim {
                return Err(InferenceError(format!(
                    "output shape {dims:?}, expected {n} rows of {} values",
                    self.dim
                )));
            }
            Ok(values
                .chunks_exact(self.dim)
                .map(|row| {
                    let mut v = row.to_vec();
                    if self.normalize {
                        l2_normalise(&mut v);
                    }
                    v
                })
                .collect())
        })
    }
}
