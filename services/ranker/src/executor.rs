//! The ranker executor: stores documents' content on `index`/`update`, forgets it on `delete`,
//! and on `search` turns chunk matches into document matches and fills them with content.

use std::collections::{HashMap, HashSet};

use flowmesh_shared::api::top_k;
use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Deadline, Document, Envelope};

use crate::aggregate::{aggregate, Aggregation};
use crate::store::{DocStore, StoreError};
use crate::SERVICE;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable {
            executor: SERVICE.to_owned(),
            message: e.to_string(),
        }
    }
}

/// The ranker executor over a document store.
pub struct Ranker<S> {
    store: S,
    aggregation: Aggregation,
    reverse: bool,
}

impl<S: DocStore> Ranker<S> {
    /// A ranker over `store`, aggregating chunk scores with `aggregation`; with `reverse`, chunk
    /// scores are "lower is better" (see [`aggregate`]).
    pub fn new(store: S, aggregation: Aggregation, reverse: bool) -> Self {
        Self {
            store,
            aggregation,
            reverse,
        }
    }

    /// The document store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// `index` and `update`: stores the content of each root document (id, text, blob, uri,
    /// tags), nothing of its embedding, chunks or matches.
    async fn documents_store(&self, request: &Envelope) -> Result<(), ApiError> {
        let mut docs = Vec::with_capacity(request.data.len());
        for (position, doc) in request.data.iter().enumerate() {
            if doc.id.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "data[{position}] has no id; a document without an id cannot be stored"
                )));
            }
            docs.push(Document {
                id: doc.id.clone(),
                text: doc.text.clone(),
                blob: doc.blob.clone(),
                uri: doc.uri.clone(),
                tags: doc.tags.clone(),
                ..Document::default()
            });
        }
        let stored = docs.len();
        self.store.put_many(docs).await?;
        tracing::debug!(stored, "documents stored");
        Ok(())
    }

    /// `delete`: forgets the documents by id.
    async fn documents_delete(&self, request: &Envelope) -> Result<(), ApiError> {
        let ids: Vec<String> = request.data.iter().map(|d| d.id.clone()).collect();
        let removed = self.store.delete_many(&ids).await?;
        tracing::debug!(requested = ids.len(), removed, "documents deleted");
        Ok(())
    }

    /// `search`: ranks each query's documents from its chunks' matches (or keeps its own
    /// matches when its chunks have none), then fills every match from the store with one call.
    async fn matches_rank(&self, mut request: Envelope) -> Result<Envelope, ApiError> {
        // Checked against --max-top-k by the executor route before the call.
        let k = top_k(&request.parameters, usize::MAX)?;
        for query in &mut request.data {
            let mut chunk_matches = Vec::new();
            collect_chunk_matches(&query.chunks, &mut chunk_matches);
            if !chunk_matches.is_empty() {
                query.matches = aggregate(chunk_matches, self.aggregation, self.reverse, k);
            }
            // Chunk matches were the ranker's input, not part of the answer.
            clear_chunk_matches(&mut query.chunks);
        }
        let include_blob = request
            .parameters
            .get("include_blob")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        self.matches_fill(&mut request.data, include_blob).await?;
        Ok(request)
    }

    async fn matches_fill(
        &self,
        queries: &mut [Document],
        include_blob: bool,
    ) -> Result<(), ApiError> {
        let mut seen = HashSet::new();
        let ids: Vec<String> = queries
            .iter()
            .flat_map(|q| &q.matches)
            .filter(|m| seen.insert(m.id.as_str()))
            .map(|m| m.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let found = self.store.get_many(&ids).await?;
        debug_assert_eq!(found.len(), ids.len(), "one answer per id");
        let stored: HashMap<&str, Document> = ids
            .iter()
            .zip(found)
            .filter_map(|(id, doc)| doc.map(|d| (id.as_str(), d)))
            .collect();
        for m in queries.iter_mut().flat_map(|q| &mut q.matches) {
            if let Some(doc) = stored.get(m.id.as_str()) {
                fill_content(m, doc, include_blob);
            }
        }
        Ok(())
    }
}

impl<S: DocStore> Executor for Ranker<S> {
    async fn call(
        &self,
        endpoint: &str,
        request: Envelope,
        _deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        match endpoint {
            "index" | "update" => {
                self.documents_store(&request).await?;
                Ok(request)
            }
            "delete" => {
                self.documents_delete(&request).await?;
                Ok(request)
            }
            "search" => self.matches_rank(request).await,
            _ => Ok(request),
        }
    }
}

/// The matches of every chunk of `chunks`, at any depth.
fn collect_chunk_matches<'a>(chunks: &'a [Document], out: &mut Vec<&'a Document>) {
    for chunk in chunks {
        out.extend(&chunk.matches);
        collect_chunk_matches(&chunk.chunks, out);
    }
}

fn clear_chunk_matches(chunks: &mut [Document]) {
    for chunk in chunks {
        chunk.matches.clear();
        clear_chunk_matches(&mut chunk.chunks);
    }
}

/// Takes the stored content that the match does not carry already; the blob (image bytes) only
/// when the request asked for it with `parameters.include_blob`.
fn fill_content(m: &mut Document, stored: &Document, include_blob: bool) {
    if m.text.is_none() {
        m.text.clone_from(&stored.text);
    }
    if m.tags.is_none() {
        m.tags.clone_from(&stored.tags);
    }
    if m.uri.is_none() {
        m.uri.clone_from(&stored.uri);
    }
    if include_blob && m.blob.is_none() {
        m.blob.clone_from(&stored.blob);
    }
}
