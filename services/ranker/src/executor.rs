//! The ranker executor: stores documents' content on `index`/`update`, forgets it on `delete`,
//! and on `search` turns chunk matches into document matches and fills them with content.

use std::collections::{HashMap, HashSet, VecDeque};

use flowmesh_shared::api::top_k;
use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Deadline, Document, Endpoint, Envelope};

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
    async fn documents_store(
        &self,
        request: &Envelope,
        deadline: Deadline,
    ) -> Result<(), ApiError> {
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
        let write = async { Ok(self.store.put_many(docs).await?) };
        deadline.run(STORE_WRITE, write).await?;
        tracing::debug!(stored, "documents stored");
        Ok(())
    }

    /// `delete`: forgets the documents by id.
    async fn documents_delete(
        &self,
        request: &Envelope,
        deadline: Deadline,
    ) -> Result<(), ApiError> {
        let ids: Vec<String> = request.data.iter().map(|d| d.id.clone()).collect();
        let delete = async { Ok(self.store.delete_many(&ids).await?) };
        let removed = deadline.run(STORE_WRITE, delete).await?;
        tracing::debug!(requested = ids.len(), removed, "documents deleted");
        Ok(())
    }

    /// `search`: ranks each query's documents from its chunks' matches (or keeps its own
    /// matches when its chunks have none), then fills the matches from the store.
    async fn matches_rank(
        &self,
        mut request: Envelope,
        deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        // Checked against --max-top-k by the executor route before the call.
        let k = top_k(&request.parameters, usize::MAX)?;
        check_scores(&request.data)?;
        let mut candidates = Vec::with_capacity(request.data.len());
        for query in &mut request.data {
            let mut chunk_matches = Vec::new();
            collect_chunk_matches(&query.chunks, &mut chunk_matches);
            let ranked = if chunk_matches.is_empty() {
                let own = std::mem::take(&mut query.matches);
                let all = own.len();
                Candidates::new(own, all)
            } else {
                // Every parent, not only the best k (no more than the request's matches): a
                // parent the store does not hold is left out and the next one takes its place.
                let all = aggregate(chunk_matches, self.aggregation, self.reverse, usize::MAX);
                query.matches.clear();
                Candidates::new(all, k)
            };
            candidates.push(ranked);
            // Chunk matches were the ranker's input, not part of the answer.
            clear_chunk_matches(&mut query.chunks);
        }
        let include_blob = request
            .parameters
            .get("include_blob")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        self.matches_fill(&mut request.data, candidates, include_blob, deadline)
            .await?;
        Ok(request)
    }

    /// Sets each query's matches to its best candidates that the store holds, filled with their
    /// stored content. A candidate the store does not hold (indexed by the indexer, but its
    /// write to the store failed, or deleted since) is never answered: the next candidates are
    /// read in a further round (at most [`FILL_ROUNDS`]), so a query still gets `top_k`
    /// matches when there are that many stored ones.
    async fn matches_fill(
        &self,
        queries: &mut [Document],
        mut candidates: Vec<Candidates>,
        include_blob: bool,
        deadline: Deadline,
    ) -> Result<(), ApiError> {
        debug_assert_eq!(queries.len(), candidates.len(), "candidates per query");
        let mut orphans = 0_usize;
        for _ in 0..FILL_ROUNDS {
            let mut batch: Vec<(usize, Document)> = Vec::new();
            for (i, c) in candidates.iter_mut().enumerate() {
                let missing = c.want.saturating_sub(queries[i].matches.len());
                let take = missing.min(c.queue.len());
                batch.extend(c.queue.drain(..take).map(|m| (i, m)));
            }
            if batch.is_empty() {
                break;
            }
            let mut seen = HashSet::new();
            let ids: Vec<String> = batch
                .iter()
                .map(|(_, m)| &m.id)
                .filter(|id| seen.insert(id.as_str()))
                .cloned()
                .collect();
            // The route drops the whole call at the deadline; this names what was waited on.
            let read = async { Ok(self.store.get_many(&ids).await?) };
            let found = deadline.run(STORE_READ, read).await?;
            debug_assert_eq!(found.len(), ids.len(), "one answer per id");
            let stored: HashMap<&str, Document> = ids
                .iter()
                .zip(found)
                .filter_map(|(id, doc)| doc.map(|d| (id.as_str(), d)))
                .collect();
            for (i, mut m) in batch {
                match stored.get(m.id.as_str()) {
                    Some(doc) => {
                        fill_content(&mut m, doc, include_blob);
                        queries[i].matches.push(m);
                    }
                    None => orphans += 1,
                }
            }
        }
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "matches without stored content left out (indexed, but not in the store)"
            );
        }
        Ok(())
    }
}

impl<S: DocStore> Executor for Ranker<S> {
    async fn call(
        &self,
        endpoint: Endpoint,
        request: Envelope,
        deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        match endpoint {
            Endpoint::Index | Endpoint::Update => {
                self.documents_store(&request, deadline).await?;
                Ok(request)
            }
            Endpoint::Delete => {
                self.documents_delete(&request, deadline).await?;
                Ok(request)
            }
            Endpoint::Search => self.matches_rank(request, deadline).await,
        }
    }
}

/// A query's ranked candidates, best first, and how many of them it answers with.
struct Candidates {
    queue: VecDeque<Document>,
    want: usize,
}

impl Candidates {
    fn new(ranked: Vec<Document>, want: usize) -> Self {
        Self {
            queue: ranked.into(),
            want,
        }
    }
}

/// Most store reads of one search: candidates missing from the store are replaced by the
/// next ones this many times at most (missing documents are rare: half-failed writes).
const FILL_ROUNDS: usize = 4;

/// What a store read cut off by the deadline names.
const STORE_READ: &str = "ranker: reading matched documents from the document store";
/// What a store write cut off by the deadline names. A Redis write is one `MSET` or `DEL`,
/// applied whole or not at all; the embedded stores finish a write they started.
const STORE_WRITE: &str = "ranker: writing to the document store";

/// 400 naming the first match, of a query or of one of its chunks, whose score is NaN or
/// infinite: such a score cannot be ranked (NaN would sort first, and JSON cannot carry it).
fn check_scores(queries: &[Document]) -> Result<(), ApiError> {
    fn check(query: &str, docs: &[Document]) -> Result<(), ApiError> {
        for doc in docs {
            if let Some(m) = doc
                .matches
                .iter()
                .find(|m| m.score.is_some_and(|s| !s.is_finite()))
            {
                return Err(ApiError::BadRequest(format!(
                    "match {:?} of {:?} (query {query:?}) has a NaN or infinite score",
                    m.id, doc.id
                )));
            }
            check(query, &doc.chunks)?;
        }
        Ok(())
    }
    for q in queries {
        check(&q.id, std::slice::from_ref(q))?;
    }
    Ok(())
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
