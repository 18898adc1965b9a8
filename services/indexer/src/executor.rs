//! The indexer executor: which vectors of a request are stored, searched with, or deleted.
//!
//! Documents with chunks are indexed and searched by their leaf chunks; a leaf without a
//! `parent_id` gets the id of the document that holds it. Every endpoint but `index`, `update`,
//! `search` and `delete` passes through unchanged.

use std::sync::Arc;

use flowmesh_shared::api::{top_k, DEFAULT_TOP_K};
use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Deadline, Document, Endpoint, Envelope};

use crate::backend::{Entry, Hit, IndexError, VectorIndex};
use crate::shard::Shard;
use crate::stop::Stop;

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        // Exhaustive on purpose: a new variant must choose its status here.
        match e {
            IndexError::Storage(_) | IndexError::Search { .. } => ApiError::Internal(e.to_string()),
            IndexError::UnknownId { .. } => ApiError::NotFound(e.to_string()),
            IndexError::MissingId { .. }
            | IndexError::MissingEmbedding { .. }
            | IndexError::EmptyEmbedding { .. }
            | IndexError::NotFinite { .. }
            | IndexError::WrongDimension { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// The indexer executor over one [`VectorIndex`].
pub struct Indexer {
    index: Arc<Shard>,
    options: Options,
}

/// How the operations behave, from the indexer's flags.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Search: one match per parent document (see `--distinct-parents`).
    distinct_parents: bool,
    /// Search: most matches one request may ask for, query vectors x top_k (`--max-matches`).
    max_matches: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            distinct_parents: false,
            max_matches: DEFAULT_MAX_MATCHES,
        }
    }
}

/// The default of `--max-matches`: about 400 MB of peak memory at the indexer (measured:
/// 1,000 queries x top_k 1,000 over 4,000 vectors, JSON answer, peak at 416 MB resident;
/// 396 MB with --distinct-parents). Without it, --max-documents x --max-top-k (10^7 matches)
/// would be about 4 GB.
pub(crate) const DEFAULT_MAX_MATCHES: usize = 1_000_000;

/// Runs `endpoint` on the shard. A write first checks that the call is not over (`stop`), and
/// once started it completes: it is never stopped half-way (durability first). A search checks
/// `stop` between its units of work instead.
fn run(
    endpoint: Endpoint,
    index: &dyn VectorIndex,
    request: Envelope,
    options: Options,
    stop: &Stop,
) -> Result<Envelope, ApiError> {
    if endpoint != Endpoint::Search {
        stop.check(endpoint.path())?;
    }
    match endpoint {
        Endpoint::Index => Ok(store(index, request, false)?),
        Endpoint::Update => Ok(store(index, request, true)?),
        Endpoint::Search => matches_search(index, request, options, stop),
        Endpoint::Delete => documents_delete(index, request),
    }
}

impl Indexer {
    /// An executor over `shard`.
    pub fn new(shard: Shard) -> Self {
        Self {
            index: Arc::new(shard),
            options: Options::default(),
        }
    }

    /// With `true`, each query's matches have distinct parents (`--distinct-parents`).
    #[must_use]
    pub fn with_distinct_parents(mut self, distinct: bool) -> Self {
        self.options.distinct_parents = distinct;
        self
    }

    /// At most `max` matches per search request, query vectors x top_k (`--max-matches`).
    #[must_use]
    pub fn with_max_matches(mut self, max: usize) -> Self {
        self.options.max_matches = max;
        self
    }

    /// The shard, for `/stats` and for tests.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.index
    }
}

impl Executor for Indexer {
    async fn call(
        &self,
        endpoint: Endpoint,
        request: Envelope,
        deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        // The blocking work cannot be dropped with this future: it checks `stop` before it
        // starts and, for searches, between units of work; `_abandon` trips it when this future
        // is dropped (deadline, client gone).
        let (stop, _abandon) = Stop::new(deadline);
        // A small search runs right here: handing it to the blocking pool costs two thread
        // switches, more than the scan itself.
        if endpoint == Endpoint::Search && search_work(self.index.as_ref(), &request) <= INLINE_WORK
        {
            return run(endpoint, self.index.as_ref(), request, self.options, &stop);
        }
        // Every write, and every large search, runs on the blocking pool. A write waits for the
        // shard's writer lock, for the index lock (which a running scan holds) and for
        // `fdatasync`: milliseconds that must not stall an async worker and every request it
        // serves. `spawn_blocking` rather than a writer thread per shard: the writer lock
        // already puts the shard's writes in order, the thread switch is small beside the
        // sync, and a blocking task runs to its end even when this future is dropped, so a
        // write that has started is completed and logged, exactly as the answer would say.
        let index = Arc::clone(&self.index);
        let options = self.options;
        tokio::task::spawn_blocking(move || run(endpoint, index.as_ref(), request, options, &stop))
            .await
            .map_err(|e| ApiError::Internal(format!("index task failed: {e}")))?
    }
}

/// Multiply-adds below which a search runs on the async thread (about a millisecond at most).
const INLINE_WORK: usize = 1 << 22;

/// Roughly how many multiply-adds a search costs: it scans every stored vector once per query
/// vector.
fn search_work(index: &dyn VectorIndex, request: &Envelope) -> usize {
    let stats = index.stats();
    let dim = stats.dimension.unwrap_or(0).max(1);
    let vectors: usize = request.data.iter().map(leaf_count).sum();
    vectors.saturating_mul(stats.count).saturating_mul(dim)
}

fn leaf_count(doc: &Document) -> usize {
    if doc.chunks.is_empty() {
        1
    } else {
        doc.chunks.iter().map(leaf_count).sum()
    }
}

/// `index` and `update`: stores the leaves of every document (checked first), replacing what
/// was stored of it; with `must_exist` (`update`), only documents the shard holds (404 naming
/// the first that it does not; nothing is changed then).
fn store(
    index: &dyn VectorIndex,
    request: Envelope,
    must_exist: bool,
) -> Result<Envelope, IndexError> {
    let mut roots = Vec::with_capacity(request.data.len());
    let mut entries = Vec::with_capacity(request.data.len());
    for (position, doc) in request.data.iter().enumerate() {
        if !all_ids_present(doc) {
            return Err(IndexError::MissingId { position });
        }
        roots.push(doc.id.as_str());
        leaf_entries(doc, None, &mut entries)?;
    }
    if must_exist {
        if let Some(id) = roots.iter().find(|id| !index.contains(id)) {
            return Err(IndexError::UnknownId {
                id: (*id).to_owned(),
            });
        }
    }
    index.upsert(&roots, &entries)?;
    tracing::debug!(
        documents = roots.len(),
        vectors = entries.len(),
        "documents stored"
    );
    Ok(request)
}

/// `search`: sets the `matches` of every query document, or of its leaf chunks.
fn matches_search(
    index: &dyn VectorIndex,
    mut request: Envelope,
    options: Options,
    stop: &Stop,
) -> Result<Envelope, ApiError> {
    // Checked against --max-top-k by the executor route before the call. Capped here by what
    // the shard holds, which changes no answer and bounds every buffer sized by `k` even for
    // a call that did not come through the route.
    let requested = top_k(&request.parameters, usize::MAX).unwrap_or(DEFAULT_TOP_K);
    let k = requested.min(index.stats().count.max(1));
    let hits = {
        let mut queries = Vec::with_capacity(request.data.len());
        for doc in &request.data {
            leaf_entries(doc, None, &mut queries)?;
        }
        let asked = queries.len().saturating_mul(requested);
        if asked > options.max_matches {
            return Err(ApiError::LimitExceeded(format!(
                "a search of {} query vectors with top_k {requested} asks for {asked} matches; the limit \
                 is {} (--max-matches, FLOWMESH_INDEXER_MAX_MATCHES)",
                queries.len(),
                options.max_matches
            )));
        }
        search_in_units(index, &queries, k, options, stop)?
    };
    let mut hits = hits.into_iter();
    for doc in &mut request.data {
        set_leaf_matches(doc, &mut hits);
    }
    debug_assert!(hits.next().is_none(), "one answer per query");
    Ok(request)
}

/// Multiply-adds of one unit of search work between two checks of the deadline (tens of
/// milliseconds of one core).
const UNIT_WORK: usize = 1 << 26;

/// Candidates a distinct-parents search holds at once, over all the queries of a round.
const CANDIDATE_BUDGET: usize = 1 << 20;

/// Searches `queries` a group at a time, each group about [`UNIT_WORK`], and stops between
/// groups once `stop` says so: a scan abandoned by its caller does not keep burning CPU.
fn search_in_units(
    index: &dyn VectorIndex,
    queries: &[Entry<'_>],
    k: usize,
    options: Options,
    stop: &Stop,
) -> Result<Vec<Vec<Hit>>, ApiError> {
    let stats = index.stats();
    let per_query = stats
        .count
        .saturating_mul(stats.dimension.unwrap_or(0))
        .max(1);
    let group = (UNIT_WORK / per_query).max(1);
    let mut answers = Vec::with_capacity(queries.len());
    for queries in queries.chunks(group) {
        stop.check("/search")?;
        if options.distinct_parents {
            answers.extend(search_distinct_parents(index, queries, k, stop)?);
        } else {
            answers.extend(index.search(queries, k)?);
        }
    }
    Ok(answers)
}

/// The best `k` hits of each query with distinct parents (an entry without a parent is its
/// own): the best chunk of each of the `k` best documents. Fetches 4k candidates, and for the
/// queries that found too few parents among a full page of them, fetches four times more,
/// until every query has `k` parents or has seen every stored entry. The candidates held at
/// once stay within [`CANDIDATE_BUDGET`] (or one query's page, when that is larger): pending
/// queries are searched in groups.
fn search_distinct_parents(
    index: &dyn VectorIndex,
    queries: &[Entry<'_>],
    k: usize,
    stop: &Stop,
) -> Result<Vec<Vec<Hit>>, ApiError> {
    let stored = index.stats().count;
    let mut answers: Vec<Vec<Hit>> = vec![Vec::new(); queries.len()];
    let mut pending: Vec<usize> = (0..queries.len()).collect();
    let mut fetch = k.saturating_mul(4).min(stored.max(k));
    while !pending.is_empty() {
        let mut still = Vec::new();
        let group = (CANDIDATE_BUDGET / fetch.max(1)).max(1);
        for pending in pending.chunks(group) {
            stop.check("/search")?;
            let batch: Vec<Entry<'_>> = pending.iter().map(|&i| queries[i]).collect();
            let found = index.search(&batch, fetch)?;
            for (&i, hits) in pending.iter().zip(found) {
                let full_page = hits.len() >= fetch;
                let distinct = distinct_by_parent(hits, k);
                if distinct.len() < k && full_page && fetch < stored {
                    still.push(i);
                } else {
                    answers[i] = distinct;
                }
            }
        }
        pending = still;
        fetch = fetch.saturating_mul(4).min(stored);
    }
    Ok(answers)
}

/// The first hit of each parent, in order, at most `k`.
fn distinct_by_parent(hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let mut seen = std::collections::HashSet::with_capacity(k.min(hits.len()));
    let mut out = Vec::with_capacity(k.min(hits.len()));
    for hit in hits {
        if out.len() == k {
            break;
        }
        let parent = hit.parent_id.clone().unwrap_or_else(|| hit.id.clone());
        if seen.insert(parent) {
            out.push(hit);
        }
    }
    out
}

/// `delete`: removes the documents, their chunks named in the request, and their stored chunks.
fn documents_delete(index: &dyn VectorIndex, request: Envelope) -> Result<Envelope, ApiError> {
    let mut ids = Vec::new();
    for doc in &request.data {
        all_ids(doc, &mut ids);
    }
    let removed = index.delete(&ids)?;
    tracing::debug!(requested = ids.len(), removed, "documents deleted");
    Ok(request)
}

/// Collects the leaves of `doc` as entries; `enclosing` is the id of the document holding `doc`.
fn leaf_entries<'a>(
    doc: &'a Document,
    enclosing: Option<&'a str>,
    out: &mut Vec<Entry<'a>>,
) -> Result<(), IndexError> {
    if !doc.chunks.is_empty() {
        for chunk in &doc.chunks {
            leaf_entries(chunk, Some(&doc.id), out)?;
        }
        return Ok(());
    }
    let id = || doc.id.clone();
    let vector = doc
        .embedding
        .as_deref()
        .ok_or_else(|| IndexError::MissingEmbedding { id: id() })?;
    if vector.is_empty() {
        return Err(IndexError::EmptyEmbedding { id: id() });
    }
    if !vector.iter().all(|x| x.is_finite()) {
        return Err(IndexError::NotFinite { id: id() });
    }
    out.push(Entry {
        id: &doc.id,
        parent_id: doc.parent_id.as_deref().or(enclosing),
        vector,
    });
    Ok(())
}

fn set_leaf_matches(doc: &mut Document, hits: &mut impl Iterator<Item = Vec<Hit>>) {
    if doc.chunks.is_empty() {
        doc.matches = hits
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|hit| Document {
                id: hit.id,
                parent_id: hit.parent_id,
                score: Some(hit.score),
                ..Document::default()
            })
            .collect();
    } else {
        for chunk in &mut doc.chunks {
            set_leaf_matches(chunk, hits);
        }
    }
}

fn all_ids_present(doc: &Document) -> bool {
    !doc.id.is_empty() && doc.chunks.iter().all(all_ids_present)
}

fn all_ids<'a>(doc: &'a Document, out: &mut Vec<&'a str>) {
    if !doc.id.is_empty() {
        out.push(&doc.id);
    }
    for chunk in &doc.chunks {
        all_ids(chunk, out);
    }
}

#[cfg(test)]
mod tests;
