//! What every index backend offers, whatever its algorithm: the [`VectorIndex`] trait, its
//! inputs and outputs, and its errors.

use serde::Serialize;

/// How vectors are compared. Scores are always "higher is better".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity, in `[-1, 1]`; vectors are normalised when stored.
    Cosine,
    /// Euclidean distance; the score is minus the distance.
    L2,
}

impl Metric {
    /// The metric's name as the flag and `/stats` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::L2 => "l2",
        }
    }
}

/// One vector with its identity, borrowed from a request document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    /// The document's (or chunk's) id.
    pub id: &'a str,
    /// The id of the document it is a chunk of.
    pub parent_id: Option<&'a str>,
    /// The vector; finite values only.
    pub vector: &'a [f32],
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The stored entry's id.
    pub id: String,
    /// The stored entry's parent id.
    pub parent_id: Option<String>,
    /// Higher is better: cosine similarity, or minus the Euclidean distance.
    pub score: f32,
}

/// What `/stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Number of stored vectors.
    pub count: usize,
    /// Their dimension, fixed by the first stored vector; `null` before.
    pub dimension: Option<usize>,
    /// The backend's name.
    pub backend: &'static str,
    /// The metric.
    pub metric: Metric,
}

/// Why an index operation was refused. Every variant but [`IndexError::Storage`] and
/// [`IndexError::Search`] is the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// A document to store, or one of its chunks, has an empty id.
    #[error("data[{position}] or one of its chunks has no id")]
    MissingId {
        /// Its position in the request's `data`.
        position: usize,
    },
    /// A document to store or to search with has no embedding.
    #[error("document {id:?} has no embedding")]
    MissingEmbedding {
        /// The document's id.
        id: String,
    },
    /// A document's embedding has no values.
    #[error("document {id:?} has an empty embedding")]
    EmptyEmbedding {
        /// The document's id.
        id: String,
    },
    /// A document's embedding holds NaN or an infinity.
    #[error("document {id:?} has a NaN or infinite value in its embedding")]
    NotFinite {
        /// The document's id.
        id: String,
    },
    /// A document's embedding does not have the index's dimension.
    #[error(
        "document {id:?} has an embedding of dimension {got}, the index holds dimension {expected}"
    )]
    WrongDimension {
        /// The document's id.
        id: String,
        /// The index's dimension.
        expected: usize,
        /// The embedding's.
        got: usize,
    },
    /// `update` names a document the shard does not hold; nothing was changed.
    #[error("document {id:?} is not in the index; use /index to add it")]
    UnknownId {
        /// The document's id.
        id: String,
    },
    /// The write could not be made durable (the data directory failed); nothing was changed.
    #[error("cannot write to the shard's data directory: {0}")]
    Storage(String),
    /// The approximate structure failed a search (an unreadable Annoy file, a faiss error):
    /// answering from the fresh entries alone would lose recall without anyone knowing.
    #[error("the {backend} index of shard {shard} failed a search: {message}")]
    Search {
        /// The backend (`annoy`, `faiss`).
        backend: &'static str,
        /// The shard, as `flowmesh up` names it (`FLOWMESH_EXECUTOR`/`FLOWMESH_SHARD`).
        shard: String,
        /// What the backend said.
        message: String,
    },
}

impl IndexError {
    /// [`IndexError::Search`] of this process's shard.
    pub(crate) fn search(backend: &'static str, error: impl std::fmt::Display) -> Self {
        let [(_, executor), (_, shard)] = crate::shard_labels();
        Self::Search {
            backend,
            shard: format!("{executor}/{shard}"),
            message: error.to_string(),
        }
    }
}

/// A vector index: one shard's storage and search.
///
/// Methods take `&self`: a backend synchronises itself, so that searches can run side by side.
/// They may take long (a brute-force scan is O(n·d)): callers run them off the async threads.
pub trait VectorIndex: Send + Sync + 'static {
    /// The backend's name (`flat`, ...).
    fn backend(&self) -> &'static str;

    /// Count, dimension, backend and metric.
    fn stats(&self) -> Stats;

    /// Stores `entries`, replacing any stored entry with the same id, and drops every stored
    /// chunk of the documents `replaced` (entries whose parent id is one of them) that `entries`
    /// does not hold again: after the call, what is stored of a replaced document is exactly
    /// what this call brought. All or nothing: on an error nothing is changed.
    fn upsert(&self, replaced: &[&str], entries: &[Entry<'_>]) -> Result<(), IndexError>;

    /// The best `k` stored entries for each query, best first (ties: the smaller id first).
    /// A query's `parent_id` is ignored. An empty index answers every query with no hits.
    fn search(&self, queries: &[Entry<'_>], k: usize) -> Result<Vec<Vec<Hit>>, IndexError>;

    /// Removes the entries with these ids, and the stored chunks of these ids (recursively);
    /// unknown ids are ignored. Returns how many entries were removed.
    fn delete(&self, ids: &[&str]) -> Result<usize, IndexError>;

    /// Whether an entry with this id, or a chunk whose parent it is, is stored.
    fn contains(&self, id: &str) -> bool;
}
