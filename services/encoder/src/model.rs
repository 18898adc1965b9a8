//! Embedding models: the [`Model`] trait and the `hash` model.
//!
//! A model turns a batch of inputs into one vector each, all of [`Model::dim`] dimensions. A model
//! embeds either texts or images ([`Model::modality`]); a batch holds inputs of one kind only
//! ([`Batch`]), because a model call is one tensor. Images reach a model already decoded, resized
//! and normalised ([`ImageTensor`]): that work is done per request before the batch queue, so that
//! an undecodable image is the caller's error and inference threads only stack tensors. The `hash`
//! model needs no files and is deterministic across processes and platforms, which makes it the
//! default for tests and for trying a Flow out; ONNX models come behind the same trait.

use flowmesh_shared::hash::fnv1a64;
use flowmesh_shared::vector::l2_normalise;

use crate::preprocess::{ImageSpec, ImageTensor};

/// Largest dimension the `hash` model accepts; more would only spend memory on empty buckets.
pub const MAX_HASH_DIM: usize = 1 << 16;

/// Weight of a character trigram relative to a whole token.
const TRIGRAM_WEIGHT: f32 = 0.5;

/// What a model embeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Modality {
    /// Texts.
    Text,
    /// Images, prepared as the spec says before they reach the model.
    Image(ImageSpec),
}

impl Modality {
    /// `texts` or `images`, for messages.
    pub fn inputs_name(&self) -> &'static str {
        match self {
            Self::Text => "texts",
            Self::Image(_) => "images",
        }
    }
}

/// One model call's inputs, all of one kind.
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// Texts.
    Texts(&'a [&'a str]),
    /// Images, each already the tensor of one image as the model's [`ImageSpec`] describes.
    Images(&'a [ImageTensor]),
}

/// The methods [`Batch`] and [`Inputs`] share: both are texts or images.
macro_rules! texts_or_images {
    ($type:ty) => {
        impl $type {
            /// Number of inputs.
            pub fn len(&self) -> usize {
                match self {
                    Self::Texts(t) => t.len(),
                    Self::Images(i) => i.len(),
                }
            }

            /// Whether there is no input.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// `texts` or `images`, for messages.
            pub fn inputs_name(&self) -> &'static str {
                match self {
                    Self::Texts(_) => "texts",
                    Self::Images(_) => "images",
                }
            }
        }
    };
}

texts_or_images!(Batch<'_>);

/// What to embed: texts, or images prepared for the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// Texts.
    Texts(Vec<String>),
    /// Images, each already its model input tensor.
    Images(Vec<ImageTensor>),
}

texts_or_images!(Inputs);

impl Inputs {
    /// Whether both hold inputs of the same kind.
    pub(crate) fn same_kind(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Self::Texts(_), Self::Texts(_)) | (Self::Images(_), Self::Images(_))
        )
    }
}

/// An embedding model, of texts or of images.
pub trait Model: Send + Sync + 'static {
    /// The model's name, for logs (`hash`, ...).
    fn name(&self) -> &str;
    /// Number of dimensions of every embedding.
    fn dim(&self) -> usize;
    /// What the model embeds; texts unless it says otherwise.
    fn modality(&self) -> Modality {
        Modality::Text
    }
    /// One embedding of [`Model::dim`] values per input, in order. A batch of the other
    /// modality is an error (callers check [`Model::modality`] first).
    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError>;
    /// What `text` costs in a batch's token budget; by default its whitespace-separated words.
    fn tokens(&self, text: &str) -> usize {
        text.split_whitespace().count().max(1)
    }
    /// [`Model::embed`] of texts.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed(Batch::Texts(texts))
    }
}

/// The error of a model given a batch of the modality it does not embed.
pub fn wrong_modality(model: &dyn Model, batch: &Batch<'_>) -> InferenceError {
    InferenceError(format!(
        "the {} model embeds {}, not {}",
        model.name(),
        model.modality().inputs_name(),
        batch.inputs_name()
    ))
}

/// An error unless every value of `embeddings` is finite: a model that yields NaN or infinity
/// (a broken export, an overflow) must fail the request, not poison an index with it.
pub(crate) fn check_finite(embeddings: &[Vec<f32>]) -> Result<(), InferenceError> {
    match embeddings
        .iter()
        .position(|e| e.iter().any(|x| !x.is_finite()))
    {
        None => Ok(()),
        Some(i) => Err(InferenceError(format!(
            "the model produced a non-finite value (NaN or infinity) in embedding {i}"
        ))),
    }
}

/// Why a model could not embed a batch (a fault of the model or its runtime, not of the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InferenceError(pub String);

/// Why a model could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The requested dimension is out of range.
    #[error("the hash model's dimension must be between 1 and {MAX_HASH_DIM}, got {0}")]
    Dim(usize),
}

/// A deterministic feature-hashing text encoder.
///
/// The text is lowercased and split on every character that is not alphanumeric (Unicode aware).
/// Each token adds `±1` to bucket `h % dim` of its FNV-1a hash `h`, the sign taken from the
/// hash's top bit, and each character trigram of the token adds `±0.5` the same way, so that
/// words sharing most of their letters land near each other. The sum is L2-normalised; a text
/// without tokens gives the zero vector.
#[derive(Debug, Clone)]
pub struct HashModel {
    dim: usize,
}

impl HashModel {
    /// A hash model of `dim` dimensions (1 to [`MAX_HASH_DIM`]).
    pub fn new(dim: usize) -> Result<Self, ModelError> {
        if dim == 0 || dim > MAX_HASH_DIM {
            return Err(ModelError::Dim(dim));
        }
        Ok(Self { dim })
    }

    /// The embedding of one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0_f32; self.dim];
        let lower = text.to_lowercase();
        // Byte offsets of the token's characters plus its end, reused across tokens.
        let mut bounds: Vec<usize> = Vec::new();
        for token in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
        {
            self.add(&mut v, token.as_bytes(), 1.0);
            bounds.clear();
            bounds.extend(token.char_indices().map(|(i, _)| i));
            bounds.push(token.len());
            // A window of four bounds spans three characters.
            for w in bounds.windows(4) {
                self.add(&mut v, &token.as_bytes()[w[0]..w[3]], TRIGRAM_WEIGHT);
            }
        }
        l2_normalise(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], feature: &[u8], weight: f32) {
        let h = fnv1a64(feature);
        // `h % dim < dim`, so the cast cannot truncate.
        let bucket = (h % self.dim as u64) as usize;
        // The top bit is independent of the low bits that choose the bucket.
        let signed = if h >> 63 == 1 { -weight } else { weight };
        v[bucket] += signed;
    }
}

impl Model for HashModel {
    fn name(&self) -> &str {
        "hash"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError> {
        match batch {
            Batch::Texts(texts) => Ok(texts.iter().map(|t| self.embed_one(t)).collect()),
            Batch::Images(_) => Err(wrong_modality(self, &batch)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dim: usize) -> HashModel {
        HashModel::new(dim).expect("valid dimension")
    }

    fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn dimension_is_validated() {
        assert_eq!(HashModel::new(0).err(), Some(ModelError::Dim(0)));
        assert!(HashModel::new(MAX_HASH_DIM + 1).is_err());
        assert_eq!(model(7).embed_one("x").len(), 7);
    }

    #[test]
    fn case_and_punctuation_do_not_matter() {
        let m = model(64);
        assert_eq!(m.embed_one("Hello, World!"), m.embed_one("hello world"));
    }

    #[test]
    fn unicode_letters_are_tokens() {
        let m = model(64);
        let v = m.embed_one("Ärger über Straße");
        assert!((norm(&v) - 1.0).abs() < 1e-5);
        assert_eq!(v, m.embed_one("ärger ÜBER straße"));
        assert_ne!(v, m.embed_one("arger uber strasse"));
    }

    #[test]
    fn empty_or_symbol_only_text_is_the_zero_vector() {
        let m = model(16);
        for t in ["", "  ", "?!-- ..."] {
            let v = m.embed_one(t);
            assert!(v.iter().all(|x| *x == 0.0), "{t:?}: {v:?}");
        }
    }

    #[test]
    fn a_single_token_is_its_bucket_plus_trigrams() {
        // "ab" has no trigram: one bucket holds ±1, normalised to ±1.
        let m = model(64);
        let v = m.embed_one("ab");
        let h = fnv1a64(b"ab");
        let expected = if h >> 63 == 1 { -1.0 } else { 1.0 };
        assert_eq!(v[(h % 64) as usize], expected);
        assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 1);
    }

    #[test]
    fn shared_letters_make_texts_closer() {
        let m = model(256);
        let a = m.embed_one("searching");
        let b = m.embed_one("searcher");
        let c = m.embed_one("pineapple");
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2);
    }
}
