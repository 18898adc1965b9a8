//! Text models on ONNX Runtime (the default: all-MiniLM-L6-v2): the config names the ONNX file,
//! the `tokenizer.json`, the input and output names, the maximum sequence length, the pooling and
//! whether to normalise.
//!
//! Texts are tokenized with truncation at the maximum sequence length and padding to the longest
//! text of the batch (not to a fixed length), run through the model, mean-pooled under the
//! attention mask, and L2-normalised, as sentence-transformers does.
//!
//! The tokenizer builds every token of its input before it truncates (with offsets and strings:
//! ~100 bytes a token), so a 1 MB text would cost tens of MB and most of a second for 256 tokens
//! kept. Long texts are therefore cut first ([`OnnxTextModel::bounded_prefix`]) to a prefix that
//! holds the tokens the model reads.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail};
use flowmesh_shared::vector::l2_normalise;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{model_path, read_config, session, ModelConfig, Named, SessionOptions};
use crate::model::{wrong_modality, Batch, InferenceError, Model};

/// Texts up to this many bytes are tokenized whole; longer ones are measured in pieces of about
/// this size (each cut before a whitespace character where there is one).
const PIECE_BYTES: usize = 4096;

/// The config of a text model (`"kind": "text"`).
#[derive(Debug, Deserialize)]
pub(super) struct TextConfig {
    name: String,
    /// The ONNX file, relative to the config file.
    model: PathBuf,
    /// The tokenizer file, relative to the config file.
    tokenizer: Option<PathBuf>,
    inputs: Vec<Named>,
    output: Named,
    dim: usize,
    max_seq_len: Option<usize>,
    pooling: Option<String>,
    normalize: Option<bool>,
}

/// What a text model's input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextInput {
    Ids,
    Mask,
    TypeIds,
}

/// A text embedding model on ONNX Runtime.
pub struct OnnxTextModel {
    name: String,
    dim: usize,
    max_seq_len: usize,
    normalize: bool,
    tokenizer: Tokenizer,
    inputs: Vec<(String, TextInput)>,
    output: String,
    /// `Session::run` takes `&mut self`; batches come one at a time per inference thread.
    session: Mutex<Session>,
}

impl OnnxTextModel {
    /// Loads the text model that the config file `config` describes.
    pub fn load(config: &Path, options: &SessionOptions) -> anyhow::Result<Self> {
        match read_config(config)? {
            ModelConfig::Text(cfg) => Self::from_config(cfg, config, options),
            ModelConfig::Image(_) => bail!(
                "model config {}: an image model, not a text model",
                config.display()
            ),
        }
    }

    pub(super) fn from_config(
        cfg: TextConfig,
        config: &Path,
        options: &SessionOptions,
    ) -> anyhow::Result<Self> {
        if cfg.pooling.as_deref().is_some_and(|p| p != "mean") {
            bail!(
                "model config {}: pooling {:?} is not supported (mean only)",
                config.display(),
                cfg.pooling
            );
        }
        let max_seq_len = cfg.max_seq_len.unwrap_or(512);
        let tokenizer_path = model_path(
            config,
            cfg.tokenizer
                .as_deref()
                .unwrap_or_else(|| Path::new("tokenizer.json")),
        );
        let tokenizer = load_tokenizer(&tokenizer_path, max_seq_len)?;
        let inputs = cfg
            .inputs
            .iter()
            .map(|i| {
                let role = match i.name.as_str() {
                    "input_ids" => TextInput::Ids,
                    "attention_mask" => TextInput::Mask,
                    "token_type_ids" => TextInput::TypeIds,
                    other => bail!("model config {}: unknown text input {other:?} (input_ids, attention_mask, token_type_ids)", config.display()),
                };
                Ok((i.name.clone(), role))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        let session = session(
            options,
            &model_path(config, &cfg.model),
            &names,
            &cfg.output.name,
        )?;
        Ok(Self {
            name: cfg.name,
            dim: cfg.dim,
            max_seq_len,
            normalize: cfg.normalize.unwrap_or(true),
            tokenizer,
            inputs,
            output: cfg.output.name,
            session: Mutex::new(session),
        })
    }

    /// A prefix of `text` whose tokens begin with every token the model reads of `text` (its
    /// first `max_seq_len`): the text itself when short, else the text up to the end of the
    /// piece after the one in which `max_seq_len` tokens were counted. Pieces end before
    /// whitespace, where word-level tokenizers split, and the spare piece keeps a cut word well
    /// past the tokens kept; so the embedding is the whole text's (exactly so unless a single
    /// "word" runs over 4 KB). Tokenizing piece by piece bounds the memory to one piece's tokens.
    pub fn bounded_prefix<'a>(&self, text: &'a str) -> &'a str {
        if text.len() <= 2 * PIECE_BYTES {
            return text;
        }
        let (mut start, mut tokens) = (0, 0);
        while start < text.len() {
            let end = piece_end(text, start);
            if tokens >= self.max_seq_len {
                return &text[..end];
            }
            // Truncated at max_seq_len: enough to know whether the budget is reached.
            tokens += self
                .tokenizer
                .encode(&text[start..end], false)
                .map_or(0, |e| e.get_ids().len());
            start = end;
        }
        text
    }

    /// The token ids of `text` as the model sees them (special tokens included, no padding).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let e = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| InferenceError(format!("tokenizer: {e}")))?;
        Ok(e.get_ids()
            .iter()
            .zip(e.get_attention_mask())
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect())
    }
}

/// The end of a piece of `text` that starts at `start`: the first whitespace character at or after
/// `start + PIECE_BYTES` (within another `PIECE_BYTES`), else the char boundary there; the end of
/// the text when less is left.
fn piece_end(text: &str, start: usize) -> usize {
    let mut at = start + PIECE_BYTES;
    if at >= text.len() {
        return text.len();
    }
    while !text.is_char_boundary(at) {
        at += 1;
    }
    let window = &text[at..text.len().min(at + PIECE_BYTES)];
    window
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .map_or(at, |(i, _)| at + i)
}

/// The tokenizer with truncation at `max_seq_len` and padding to the longest text of a batch.
fn load_tokenizer(path: &Path, max_seq_len: usize) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| anyhow!("cannot load the tokenizer {}: {e}", path.display()))?;
    let truncation = TruncationParams {
        max_length: max_seq_len,
        ..tokenizer.get_truncation().cloned().unwrap_or_default()
    };
    let padding = PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..tokenizer.get_padding().cloned().unwrap_or_default()
    };
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(|e| anyhow!("tokenizer {}: {e}", path.display()))?
        .with_padding(Some(padding));
    Ok(tokenizer)
}

impl Model for OnnxTextModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn tokens(&self, text: &str) -> usize {
        // A cheap estimate (about 3 bytes a token, plus [CLS] and [SEP]); the budget only needs
        // to be roughly right, and tokenizing twice would cost more than it saves.
        (text.len() / 3 + 2).min(self.max_seq_len)
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Batch::Texts(texts) = batch else {
            return Err(wrong_modality(self, &batch));
        };
        let bounded: Vec<&str> = texts.iter().map(|t| self.bounded_prefix(t)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(bounded, true)
            .map_err(|e| super::fail("tokenizer", &e))?;
        let n = encodings.len();
        let seq = encodings.first().map_or(0, tokenizers::Encoding::len);
        let mut ids = Vec::with_capacity(n * seq);
        let mut mask = Vec::with_capacity(n * seq);
        let mut types = Vec::with_capacity(n * seq);
        for e in &encodings {
            debug_assert_eq!(e.len(), seq, "padded to the longest");
            ids.extend(e.get_ids().iter().map(|x| i64::from(*x)));
            mask.extend(e.get_attention_mask().iter().map(|x| i64::from(*x)));
            types.extend(e.get_type_ids().iter().map(|x| i64::from(*x)));
        }
        // The share of this call's tokens that is padding (every text is padded to the longest).
        let real: i64 = mask.iter().sum();
        if n * seq > 0 {
            metrics::histogram!("flowmesh_encoder_padded_token_share")
                .record(1.0 - real as f64 / (n * seq) as f64);
        }
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.inputs.len());
        for (name, role) in &self.inputs {
            let data = match role {
                TextInput::Ids => ids.clone(),
                TextInput::Mask => mask.clone(),
                TextInput::TypeIds => types.clone(),
            };
            let tensor = Tensor::from_array(([n, seq], data))
                .map_err(|e| super::fail("input tensor", &e))?;
            inputs.push((Cow::from(name.as_str()), tensor.into()));
        }
        super::run_session(&self.session, inputs, &self.output, |dims, hidden| {
            if dims.len() != 3
                || dims[0] as usize != n
                || dims[1] as usize != seq
                || dims[2] as usize != self.dim
            {
                return Err(InferenceError(format!(
                    "output shape {dims:?}, expected [{n}, {seq}, {}]",
                    self.dim
                )));
            }
            Ok((0..n)
                .map(|i| {
                    self.pool(
                        &hidden[i * seq * self.dim..(i + 1) * seq * self.dim],
                        &mask[i * seq..(i + 1) * seq],
                    )
                })
                .collect())
        })
    }
}

impl OnnxTextModel {
    /// Mean of the token vectors under the mask, then L2-normalised when configured.
    fn pool(&self, hidden: &[f32], mask: &[i64]) -> Vec<f32> {
        let mut sum = vec![0.0_f32; self.dim];
        let mut count = 0.0_f32;
        for (token, m) in hidden.chunks_exact(self.dim).zip(mask) {
            if *m != 0 {
                count += 1.0;
                for (s, x) in sum.iter_mut().zip(token) {
                    *s += x;
                }
            }
        }
        let count = count.max(1e-9);
        sum.iter_mut().for_each(|s| *s /= count);
        if self.normalize {
            l2_normalise(&mut sum);
        }
        sum
    }
}
