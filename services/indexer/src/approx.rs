//! Approximate indexes that cannot grow in place (Annoy files, trained faiss indexes), kept
//! searchable while documents keep coming.
//!
//! An [`Approx`] layer holds one *built* structure over a frozen copy of the shard's entries, a
//! small exact index of the entries written since that copy was taken (*fresh*), and the ids
//! whose built version is out of date (*stale*: deleted or overwritten since). A search asks the
//! built structure for a few more than `k` (to make up for stale hits, which it drops), searches
//! the fresh entries exactly, and merges the two: a document is searchable as soon as its write
//! has been answered.
//!
//! When fresh and stale entries make up enough of the shard, a background thread builds a new
//! structure from a copy of every entry; the writes that arrive meanwhile are recorded twice, for
//! the current structure and for the one being built, so that the swap loses nothing.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use serde::Serialize;

use crate::backend::{Entry, Hit, IndexError, Metric, VectorIndex};
use crate::flat::FlatIndex;
use crate::wal::Rows;

/// Builds a searchable structure from a frozen set of vectors.
pub(crate) trait Builder: Send + Sync + 'static {
    /// The backend's name (`annoy`, `faiss`).
    fn name(&self) -> &'static str;
    /// Builds over `input.rows` (vectors normalised under cosine). Item `i` is row `i`. May take
    /// long; runs on a background thread.
    fn build(&self, input: BuildInput<'_>) -> anyhow::Result<Box<dyn Built>>;
}

/// What a build is over.
#[derive(Clone, Copy)]
pub(crate) struct BuildInput<'a> {
    /// The frozen copy of the shard's entries.
    pub(crate) rows: &'a Rows,
    /// Their dimension (the rows hold at least one vector).
    pub(crate) dim: usize,
    /// How they are compared.
    pub(crate) metric: Metric,
    /// The number of this build since start-up, from 1 (seeds and file names).
    pub(crate) generation: u64,
}

/// A built structure.
pub(crate) trait Built: Send + Sync + 'static {
    /// For each query (row-major, `dim` values each, normalised under cosine), up to `k` items
    /// as `(row, score)`, best first; the score is on the flat backend's scale (cosine
    /// similarity, or minus the Euclidean distance).
    ///
    /// Errors: [`IndexError::Search`] when the structure cannot answer. The caller fails the
    /// request rather than answering from the fresh entries alone, which would lower recall
    /// without anyone knowing.
    fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Ranked, IndexError>;
}

/// For each query, up to `k` items as `(row, score)`, best first.
pub(crate) type Ranked = Vec<Vec<(u32, f32)>>;

/// When to rebuild.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RebuildPolicy {
    /// Fewest fresh-or-stale entries that start a rebuild.
    pub(crate) min_changes: usize,
    /// Or this fraction of the built entries, when larger.
    pub(crate) fraction: f64,
}

/// What `/stats` tells of the approximate structure.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BuildState {
    /// Entries in the current built structure.
    pub built: usize,
    /// Entries written since it was built, searched exactly.
    pub fresh: usize,
    /// Built entries deleted or overwritten since, dropped from its answers.
    pub stale: usize,
    /// Whether a rebuild is running.
    pub building: bool,
    /// How many structures have been built since start-up.
    pub generation: u64,
    /// Why the last build failed (for example too few vectors to train), if it did.
    pub last_error: Option<String>,
}

struct Current {
    rows: Rows,
    built: Box<dyn Built>,
}

/// Changes recorded against one built structure.
struct Delta {
    fresh: FlatIndex,
    stale: HashSet<String>,
}

impl Delta {
    fn new(metric: Metric) -> Self {
        Self {
            fresh: FlatIndex::new(metric),
            stale: HashSet::new(),
        }
    }

    fn upsert(&mut self, replaced: &[&str], entries: &[Entry<'_>], gone: &[String]) {
        self.stale.extend(gone.iter().cloned());
        let gone_refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        self.fresh.delete_tracked(&gone_refs);
        // Checked against the shard's dimension already: cannot fail.
        if let Err(e) = self.fresh.upsert(replaced, entries) {
            tracing::error!(error = %e, "fresh entries rejected a checked write");
        }
    }

    fn delete(&mut self, gone: &[String]) {
        self.stale.extend(gone.iter().cloned());
        let gone_refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        self.fresh.delete_tracked(&gone_refs);
    }
}

struct State {
    current: Option<Arc<Current>>,
    delta: Delta,
    /// Set while a rebuild runs: the changes since its copy was taken.
    next: Option<Delta>,
    generation: u64,
    last_error: Option<String>,
    /// Entries in the shard below which no rebuild is tried after a failed one.
    retry_at: usize,
}

/// The approximate layer of one shard.
pub(crate) struct Approx {
    metric: Metric,
    builder: Arc<dyn Builder>,
    policy: RebuildPolicy,
    state: RwLock<State>,
}

impl Approx {
    pub(crate) fn new(metric: Metric, builder: Arc<dyn Builder>, policy: RebuildPolicy) -> Self {
        Self {
            metric,
            builder,
            policy,
            state: RwLock::new(State {
                current: None,
                delta: Delta::new(metric),
                next: None,
                generation: 0,
                last_error: None,
                retry_at: 0,
            }),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.builder.name()
    }

    // The state is only changed by complete assignments: a poisoned lock guards consistent data.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a write already applied to the shard; `gone` are the ids whose old version went.
    pub(crate) fn upsert(&self, replaced: &[&str], entries: &[Entry<'_>], gone: &[String]) {
        let mut state = self.write();
        state.delta.upsert(replaced, entries, gone);
        if let Some(next) = &mut state.next {
            next.upsert(replaced, entries, gone);
        }
    }

    /// Records a delete already applied to the shard.
    pub(crate) fn delete(&self, gone: &[String]) {
        let mut state = self.write();
        state.delta.delete(gone);
        if let Some(next) = &mut state.next {
            next.delete(gone);
        }
    }

    /// Whether enough has changed to build anew (and no build is running).
    pub(crate) fn wants_rebuild(&self, shard_len: usize) -> bool {
        let state = self.read();
        if state.next.is_some() || shard_len == 0 || shard_len < state.retry_at {
            return false;
        }
        let built = state.current.as_ref().map_or(0, |c| c.rows.ids.len());
        let changes = state.delta.fresh.len() + state.delta.stale.len();
        let threshold = self
            .policy
            .min_changes
            .max((built as f64 * self.policy.fraction) as usize)
            .max(1);
        changes >= threshold
    }

    /// Starts recording changes for a build over `rows`, a copy of the shard taken under the
    /// shard's write lock (so that no write falls between the copy and the recording).
    pub(crate) fn begin_rebuild(&self) -> bool {
        let mut state = self.write();
        if state.next.is_some() {
            return false;
        }
        state.next = Some(Delta::new(self.metric));
        true
    }

    /// Builds over `rows` (on the calling thread) and swaps the result in.
    pub(crate) fn finish_rebuild(&self, rows: Rows) {
        let generation = self.read().generation + 1;
        let started = std::time::Instant::now();
        let count = rows.ids.len();
        let result = match rows.dim {
            Some(dim) => self.builder.build(BuildInput {
                rows: &rows,
                dim,
                metric: self.metric,
                generation,
            }),
            None => Err(anyhow::anyhow!("no vectors to build from")),
        };
        let mut state = self.write();
        let Some(next) = state.next.take() else {
            return;
        };
        match result {
            Ok(built) => {
                state.current = Some(Arc::new(Current { rows, built }));
                state.delta = next;
                state.generation = generation;
                state.last_error = None;
                state.retry_at = 0;
                tracing::info!(
                    backend = self.builder.name(),
                    generation,
                    entries = count,
                    seconds = started.elapsed().as_secs_f64(),
                    "index rebuilt"
                );
            }
            Err(e) => {
                // Keep serving the old structure (and the exact fresh entries); try again when
                // the shard has grown, as a failed build usually means too few vectors.
                state.retry_at = count.saturating_mul(2).max(count + 1);
                state.last_error = Some(format!("{e:#}"));
                tracing::warn!(
                    backend = self.builder.name(),
                    entries = count,
                    error = %format!("{e:#}"),
                    "index build failed; searching the new entries exactly until it succeeds"
                );
            }
        }
    }

    pub(crate) fn build_state(&self) -> BuildState {
        let state = self.read();
        BuildState {
            built: state.current.as_ref().map_or(0, |c| c.rows.ids.len()),
            fresh: state.delta.fresh.len(),
            stale: state.delta.stale.len(),
            building: state.next.is_some(),
            generation: state.generation,
            last_error: state.last_error.clone(),
        }
    }

    /// The best `k` entries for each query: the built structure's hits that are still current,
    /// merged with the fresh entries searched exactly.
    pub(crate) fn search(
        &self,
        queries: &[Entry<'_>],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        let state = self.read();
        let mut answers = state.delta.fresh.search(queries, k)?;
        let Some(current) = state.current.as_ref() else {
            return Ok(answers);
        };
        let Some(dim) = current.rows.dim else {
            return Ok(answers);
        };
        if let Some(bad) = queries.iter().find(|q| q.vector.len() != dim) {
            return Err(IndexError::WrongDimension {
                id: bad.id.to_owned(),
                expected: dim,
                got: bad.vector.len(),
            });
        }
        if k == 0 {
            return Ok(answers);
        }
        let mut flat = Vec::with_capacity(queries.len() * dim);
        for q in queries {
            let start = flat.len();
            flat.extend_from_slice(q.vector);
            if self.metric == Metric::Cosine {
                flowmesh_shared::vector::l2_normalise(&mut flat[start..]);
            }
        }
        // Stale hits are dropped, so ask for more; the rebuild policy keeps `stale` small.
        let extra = state.delta.stale.len().min(k.max(16) * 4);
        let built_hits = current
            .built
            .search(&flat, dim, k + extra)
            .inspect_err(|_| {
                // The request fails (and its error is logged there); the count is for alerts.
                metrics::counter!("flowmesh_indexer_search_errors_total", "backend" => self.name())
                    .increment(1);
            })?;
        for (answer, hits) in answers.iter_mut().zip(built_hits) {
            answer.extend(hits.into_iter().filter_map(|(row, score)| {
                let row = row as usize;
                let id = current.rows.ids.get(row)?;
                if state.delta.stale.contains(id) {
                    return None;
                }
                Some(Hit {
                    id: id.clone(),
                    parent_id: current.rows.parent_ids[row].clone(),
                    score,
                })
            }));
            answer.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            answer.dedup_by(|a, b| a.id == b.id);
            answer.truncate(k);
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests;
