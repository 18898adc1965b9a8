//! The ranker executor: stores documents' content on `index`/`update`, forgets it on `delete`,
//! and on `search` turns chunk matches into document matches and fills them with content.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Ids of matches still missing from the store after [`ORPHAN_REREADS`], and when: a later
    /// search does not wait for them again within [`ORPHAN_MEMORY`].
    orphans: Mutex<HashMap<String, Instant>>,
}

impl<S: DocStore> Ranker<S> {
    /// A ranker over `store`, aggregating chunk scores with `aggregation`; with `reverse`, chunk
    /// scores are "lower is better" (see [`aggregate`]).
    pub fn new(store: S, aggregation: Aggregation, reverse: bool) -> Self {
        Self {
            store,
            aggregation,
            reverse,
            orphans: Mutex::new(HashMap::new()),
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
    /// stored content. A candidate the store does not hold is never answered: the next
    /// candidates are read in a further round (at most [`FILL_ROUNDS`]), so a query still gets
    /// `top_k` matches when there are that many stored ones.
    ///
    /// A query left short with candidates missing waits for them: a document being indexed is
    /// searchable in the indexer a moment before the ranker (the next step of the same index
    /// request) stores it, and a search in between would otherwise answer fewer than `top_k`
    /// matches. The missing ones are read again up to [`ORPHAN_REREADS`] times, [`ORPHAN_PAUSE`]
    /// apart and within the deadline, and take their rank among the others when they appear.
    /// Those still missing (indexed, but their write to the store failed, or deleted since) are
    /// left out, and remembered so that searches do not wait for them again for a while.
    async fn matches_fill(
        &self,
        queries: &mut [Document],
        mut candidates: Vec<Candidates>,
        include_blob: bool,
        deadline: Deadline,
    ) -> Result<(), ApiError> {
        debug_assert_eq!(queries.len(), candidates.len(), "candidates per query");
        // (query, rank) of each match taken, to restore the order after late arrivals.
        let mut ranks: Vec<Vec<usize>> = vec![Vec::new(); queries.len()];
        let mut missing: Vec<(usize, usize, Document)> = Vec::new();
        for _ in 0..FILL_ROUNDS {
            let mut batch: Vec<(usize, usize, Document)> = Vec::new();
            for (i, c) in candidates.iter_mut().enumerate() {
                let short = c.want.saturating_sub(queries[i].matches.len());
                let take = short.min(c.queue.len());
                batch.extend(c.queue.drain(..take).map(|(rank, m)| (i, rank, m)));
            }
            if batch.is_empty() {
                break;
            }
            missing.extend(
                self.fill_from_store(queries, &mut ranks, batch, include_blob, &deadline)
                    .await?,
            );
        }
        let mut rereads = 0;
        loop {
            // Only a query left short waits, and only for candidates not known to be missing.
            let waited: Vec<(usize, usize, Document)>;
            (waited, missing) = missing.into_iter().partition(|(i, _, m)| {
                queries[*i].matches.len() < candidates[*i].want && !self.known_orphan(&m.id)
            });
            if waited.is_empty() {
                break;
            }
            let pause_fits = deadline
                .remaining()
                .is_none_or(|left| left > ORPHAN_PAUSE * 2);
            if rereads == ORPHAN_REREADS || !pause_fits {
                self.remember_orphans(waited.iter().map(|(_, _, m)| m.id.clone()));
                missing.extend(waited);
                break;
            }
            rereads += 1;
            tokio::time::sleep(ORPHAN_PAUSE).await;
            missing.extend(
                self.fill_from_store(queries, &mut ranks, waited, include_blob, &deadline)
                    .await?,
            );
        }
        if !missing.is_empty() {
            tracing::warn!(
                orphans = missing.len(),
                "matches without stored content left out (indexed, but not in the store)"
            );
        }
        if rereads > 0 {
            // Late arrivals take their rank; a query may have got more than it wants (several
            // arrived at once), and keeps its best.
            for ((query, ranks), c) in queries.iter_mut().zip(ranks).zip(&candidates) {
                let mut ranked: Vec<(usize, Document)> = ranks
                    .into_iter()
                    .zip(std::mem::take(&mut query.matches))
                    .collect();
                ranked.sort_by_key(|(rank, _)| *rank);
                ranked.truncate(c.want);
                query.matches = ranked.into_iter().map(|(_, m)| m).collect();
            }
        }
        Ok(())
    }

    /// Reads the candidates of `batch` (query, rank, match) from the store: each one stored is
    /// filled and appended to its query's matches (its rank to `ranks`); the others are returned.
    async fn fill_from_store(
        &self,
        queries: &mut [Document],
        ranks: &mut [Vec<usize>],
        batch: Vec<(usize, usize, Document)>,
        include_blob: bool,
        deadline: &Deadline,
    ) -> Result<Vec<(usize, usize, Document)>, ApiError> {
        let mut seen = HashSet::new();
        let ids: Vec<String> = batch
            .iter()
            .map(|(_, _, m)| &m.id)
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
        let mut missing = Vec::new();
        for (i, rank, mut m) in batch {
            match stored.get(m.id.as_str()) {
                Some(doc) => {
                    fill_content(&mut m, doc, include_blob);
                    queries[i].matches.push(m);
                    ranks[i].push(rank);
                }
                None => missing.push((i, rank, m)),
            }
        }
        Ok(missing)
    }

    /// Whether `id` stayed missing from the store in a search of the last [`ORPHAN_MEMORY`].
    fn known_orphan(&self, id: &str) -> bool {
        let orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        orphans
            .get(id)
            .is_some_and(|seen| seen.elapsed() < ORPHAN_MEMORY)
    }

    /// Remembers `ids` as missing from the store now (forgetting every older one when the
    /// memory is full).
    fn remember_orphans(&self, ids: impl Iterator<Item = String>) {
        let mut orphans = self.orphans.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for id in ids {
            if orphans.len() >= ORPHAN_MEMORY_IDS {
                orphans.retain(|_, seen| seen.elapsed() < ORPHAN_MEMORY);
                if orphans.len() >= ORPHAN_MEMORY_IDS {
                    orphans.clear();
                }
            }
            orphans.insert(id, now);
        }
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

/// A query's ranked candidates, best first with their ranks, and how many of them it answers
/// with.
struct Candidates {
    queue: VecDeque<(usize, Document)>,
    want: usize,
}

impl Candidates {
    fn new(ranked: Vec<Document>, want: usize) -> Self {
        Self {
            queue: ranked.into_iter().enumerate().collect(),
            want,
        }
    }
}

/// Most store reads of one search: candidates missing from the store are replaced by the
/// next ones this many times at most (missing documents are rare: half-failed writes).
const FILL_ROUNDS: usize = 4;

/// How many times a query left short re-reads its candidates missing from the store, and how
/// long it waits before each read: together longer than an index request takes from its
/// indexer step to its ranker step (a mirrored write waits up to 50 ms for slow copies).
const ORPHAN_REREADS: usize = 4;
const ORPHAN_PAUSE: Duration = Duration::from_millis(50);
/// How long a candidate that stayed missing is not waited for again, and how many such ids are
/// remembered at most.
const ORPHAN_MEMORY: Duration = Duration::from_secs(60);
const ORPHAN_MEMORY_IDS: usize = 10_000;

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
