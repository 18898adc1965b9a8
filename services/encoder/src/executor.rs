//! The encoder executor: which documents get embeddings, on which endpoints.

use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Document, Envelope};

use std::sync::Arc;

use crate::batcher::{BatchConfig, BatchError, Batcher};
use crate::model::{InferenceError, Model};

/// Why a request could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A document (or chunk) to embed has no text.
    #[error("document {id:?} has no text to encode (the {model} model encodes text only)")]
    MissingText {
        /// The document's id.
        id: String,
        /// The model's name.
        model: String,
    },
    /// The batching queue refused or failed the job.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The model failed (inline backend).
    #[error("the model failed: {0}")]
    Inference(#[from] InferenceError),
}

impl From<EncodeError> for ApiError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::MissingText { .. } => ApiError::BadRequest(e.to_string()),
            EncodeError::Batch(BatchError::QueueFull(_)) => ApiError::Overloaded(e.to_string()),
            EncodeError::Batch(BatchError::Stopped) => ApiError::NotReady(e.to_string()),
            EncodeError::Batch(BatchError::Model(_)) | EncodeError::Inference(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

/// Where the model runs.
enum Backend {
    /// On the caller's async thread: for models that take microseconds (`hash`).
    Inline(Arc<dyn Model>),
    /// On inference threads, batched across callers.
    Batched(Batcher),
}

/// The encoder executor: embeds documents on `index`, `search` and `update`, and passes every
/// other endpoint through unchanged.
pub struct Encoder {
    model: Arc<dyn Model>,
    backend: Backend,
}

impl Encoder {
    /// An encoder running `model` on the caller's thread.
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            backend: Backend::Inline(model.clone()),
            model,
        }
    }

    /// An encoder running `model` on `config.workers` inference threads, batched across callers.
    pub fn batched(model: Arc<dyn Model>, config: &BatchConfig) -> std::io::Result<Self> {
        Ok(Self {
            backend: Backend::Batched(Batcher::start(model.clone(), config)?),
            model,
        })
    }

    /// The model's embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        self.model.name()
    }

    /// One embedding per text, in order, from the model's backend (inline or batched).
    pub async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncodeError> {
        match &self.backend {
            Backend::Inline(model) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                Ok(model.embed(&refs)?)
            }
            Backend::Batched(batcher) => Ok(batcher.embed(texts).await?),
        }
    }

    /// Sets the `embedding` of every document of `docs`, or of its leaf chunks when it has
    /// chunks (a document with chunks keeps no embedding of its own from this call). Nothing is
    /// changed when a document to embed has no text, or when the job is refused.
    pub async fn encode(&self, docs: &mut [Document]) -> Result<(), EncodeError> {
        let mut texts = Vec::new();
        for doc in docs.iter() {
            self.leaf_texts(doc, &mut texts)?;
        }
        if texts.is_empty() {
            return Ok(());
        }
        let owned = texts.iter().map(|t| (*t).to_owned()).collect();
        let embeddings = self.embed_texts(owned).await?;
        let leaves = embeddings.len();
        let mut embeddings = embeddings.into_iter();
        for doc in docs.iter_mut() {
            set_leaf_embeddings(doc, &mut embeddings);
        }
        debug_assert!(
            embeddings.next().is_none(),
            "one embedding per leaf ({leaves})"
        );
        Ok(())
    }

    fn leaf_texts<'a>(&self, doc: &'a Document, out: &mut Vec<&'a str>) -> Result<(), EncodeError> {
        if doc.chunks.is_empty() {
            let text = doc
                .text
                .as_deref()
                .ok_or_else(|| EncodeError::MissingText {
                    id: doc.id.clone(),
                    model: self.model.name().to_owned(),
                })?;
            out.push(text);
        } else {
            for chunk in &doc.chunks {
                self.leaf_texts(chunk, out)?;
            }
        }
        Ok(())
    }
}

/// Hands out `embeddings` to the leaves of `doc` in the order [`Encoder::leaf_texts`] read them.
fn set_leaf_embeddings(doc: &mut Document, embeddings: &mut impl Iterator<Item = Vec<f32>>) {
    if doc.chunks.is_empty() {
        doc.embedding = embeddings.next();
    } else {
        for chunk in &mut doc.chunks {
            set_leaf_embeddings(chunk, embeddings);
        }
    }
}

impl Executor for Encoder {
    async fn call(&self, endpoint: &str, mut request: Envelope) -> Result<Envelope, ApiError> {
        match endpoint {
            "index" | "search" | "update" => {
                self.encode(&mut request.data).await?;
                tracing::debug!(
                    endpoint,
                    documents = request.data.len(),
                    "documents encoded"
                );
                Ok(request)
            }
            _ => Ok(request),
        }
    }
}
