//! Document stores: where the ranker keeps the content that fills matches.
//!
//! The [`DocStore`] trait is async so that a networked store ([`RedisStore`]) fits behind it as
//! well as the embedded ones ([`EmbeddedStore`] on disk, [`MemoryStore`] for throwaway runs).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{PoisonError, RwLock};

use flowmesh_shared::Document;

mod embedded;
mod redis;

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// A stored document's bytes (MessagePack, field names kept so that later fields can be added).
fn encode(doc: &Document) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(doc).map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))
}

fn decode(bytes: &[u8]) -> Result<Document, StoreError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| StoreError::Unavailable(format!("a stored document is unreadable: {e}")))
}

/// Why a store operation failed. Every variant is a fault of the mesh, not of the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or answered with an error.
    #[error("document store unavailable: {0}")]
    Unavailable(String),
}

/// A key-value store of documents by id.
pub trait DocStore: Send + Sync + 'static {
    /// The stored documents with these ids, position by position (`None` where absent).
    fn get_many(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Document>>, StoreError>> + Send;

    /// Stores `docs` by id, replacing documents with the same ids.
    fn put_many(&self, docs: Vec<Document>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the documents with these ids; unknown ids are ignored. Returns how many were
    /// removed.
    fn delete_many(&self, ids: &[String])
        -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// How many documents are stored, when the store can tell cheaply and without a network
    /// round trip (for the `flowmesh_store_documents` gauge); `None` otherwise (Redis). May
    /// block briefly: it is called from a blocking thread.
    fn count_cheaply(&self) -> Option<u64> {
        None
    }

    /// The store's kind as `/stats` names it: `embedded`, `redis` or `memory`.
    fn kind(&self) -> &'static str;
}

/// The embedded store: a map in memory, lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: RwLock<HashMap<String, Document>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored documents.
    pub fn len(&self) -> usize {
        self.docs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no document is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// The lock is never held across an await, and every critical section is a few map operations:
// a std lock on the async threads is fine. A poisoned lock still holds a consistent map (no
// operation below panics half-way), so it is used as is.
impl DocStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Document>>, StoreError> {
        let docs = self.docs.read().unwrap_or_else(PoisonError::into_inner);
        Ok(ids.iter().map(|id| docs.get(id).cloned()).collect())
    }

    fn count_cheaply(&self) -> Option<u64> {
        Some(self.len() as u64)
    }

    async fn put_many(&self, new: Vec<Document>) -> Result<(), StoreError> {
        let mut docs = self.docs.write().unwrap_or_else(PoisonError::into_inner);
        for doc in new {
            docs.insert(doc.id.clone(), doc);
        }
        Ok(())
    }

    async fn delete_many(&self, ids: &[String]) -> Result<usize, StoreError> {
        let mut docs = self.docs.write().unwrap_or_else(PoisonError::into_inner);
        Ok(ids
            .iter()
            .filter(|id| docs.remove(id.as_str()).is_some())
            .count())
    }
}
