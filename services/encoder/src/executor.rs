//! The encoder executor: which documents get embeddings, on which endpoints.

use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Document, Envelope};

use crate::model::Model;

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
}

impl From<EncodeError> for ApiError {
    fn from(e: EncodeError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// The encoder executor: embeds documents on `index`, `search` and `update`, and passes every
/// other endpoint through unchanged.
pub struct Encoder {
    model: Box<dyn Model>,
}

impl Encoder {
    /// An encoder running `model`.
    pub fn new(model: impl Model) -> Self {
        Self {
            model: Box::new(model),
        }
    }

    /// The model's embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// Sets the `embedding` of every document of `docs`, or of its leaf chunks when it has
    /// chunks (a document with chunks keeps no embedding of its own from this call). Nothing is
    /// changed when a document to embed has no text.
    pub fn encode(&self, docs: &mut [Document]) -> Result<(), EncodeError> {
        let embeddings = {
            let mut texts = Vec::new();
            for doc in docs.iter() {
                self.leaf_texts(doc, &mut texts)?;
            }
            if texts.is_empty() {
                return Ok(());
            }
            self.model.embed(&texts)
        };
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
                // Feature hashing takes microseconds per text: inline, no blocking pool needed.
                self.encode(&mut request.data)?;
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
