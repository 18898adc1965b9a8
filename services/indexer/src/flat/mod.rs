//! The `flat` backend: exact brute-force search over one contiguous row-major matrix.
//!
//! It is the seed's numpy indexer and the ground truth that approximate backends' recall is
//! measured against. A search scans every row with a vectorised kernel and keeps the best `k`
//! on a bounded heap; a delete swaps the last row into the hole, so the matrix stays dense.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::{Entry, Hit, IndexError, Metric, Stats, VectorIndex};
use flowmesh_shared::vector::l2_normalise;

use crate::kernel::{score_rows_many, Kernel};
use crate::wal::Rows as ExportedRows;

/// An exact in-memory index.
pub struct FlatIndex {
    metric: Metric,
    state: RwLock<Rows>,
}

/// The stored entries. Row `r` is `ids[r]`, `parent_ids[r]` and
/// `vectors[r * dim..(r + 1) * dim]`; `row_of` and `children` index them.
#[derive(Default)]
struct Rows {
    /// Fixed by the first stored vector, kept when the index empties.
    dim: Option<usize>,
    ids: Vec<String>,
    parent_ids: Vec<Option<String>>,
    /// Row-major; normalised rows under the cosine metric.
    vectors: Vec<f32>,
    row_of: HashMap<String, usize>,
    /// Parent id -> ids of the stored entries with that parent, so that replacing or deleting a
    /// document finds its chunks without a scan.
    children: HashMap<String, HashSet<String>>,
}

impl FlatIndex {
    /// An empty index comparing vectors by `metric`.
    pub fn new(metric: Metric) -> Self {
        Self {
            metric,
            state: RwLock::new(Rows::default()),
        }
    }

    // A panic cannot leave `Rows` half-updated: every mutation below completes once it has
    // started (validation happens first), so a poisoned lock still guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, Rows> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rows> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl VectorIndex for FlatIndex {
    fn backend(&self) -> &'static str {
        "flat"
    }

    fn stats(&self) -> Stats {
        let rows = self.read();
        Stats {
            count: rows.ids.len(),
            dimension: rows.dim,
            backend: self.backend(),
            metric: self.metric,
        }
    }

    fn upsert(&self, replaced: &[&str], entries: &[Entry<'_>]) -> Result<(), IndexError> {
        self.upsert_tracked(replaced, entries).map(drop)
    }

    fn search(&self, queries: &[Entry<'_>], k: usize) -> Result<Vec<Vec<Hit>>, IndexError> {
        let rows = self.read();
        let Some(dim) = rows.dim else {
            return Ok(vec![Vec::new(); queries.len()]);
        };
        check_dimension(queries, dim)?;
        let mut flat = Vec::with_capacity(queries.len() * dim);
        for query in queries {
            let start = flat.len();
            flat.extend_from_slice(query.vector);
            if self.metric == Metric::Cosine {
                l2_normalise(&mut flat[start..]);
            }
        }
        let kernel = match self.metric {
            Metric::Cosine => Kernel::Dot,
            Metric::L2 => Kernel::NegL2Squared,
        };
        let answers = rows
            .scan_many(&flat, k, kernel)
            .into_iter()
            .map(|best| {
                best.into_iter()
                    .map(|c| Hit {
                        id: rows.ids[c.row].clone(),
                        parent_id: rows.parent_ids[c.row].clone(),
                        score: match self.metric {
                            Metric::Cosine => c.key,
                            // The key is minus the squared distance.
                            Metric::L2 => 0.0 - (-c.key).sqrt(),
                        },
                    })
                    .collect()
            })
            .collect();
        Ok(answers)
    }

    fn delete(&self, ids: &[&str]) -> Result<usize, IndexError> {
        Ok(self.delete_tracked(ids).len())
    }

    fn contains(&self, id: &str) -> bool {
        let rows = self.read();
        rows.row_of.contains_key(id) || rows.children.contains_key(id)
    }
}

impl FlatIndex {
    /// How many documents the stored vectors belong to: the parents of stored chunks, plus the
    /// stored entries that have no parent and are not a parent themselves. O(entries): for
    /// metrics scrapes, not for requests.
    pub fn documents(&self) -> usize {
        let rows = self.read();
        let roots = rows
            .ids
            .iter()
            .zip(&rows.parent_ids)
            .filter(|(id, parent)| parent.is_none() && !rows.children.contains_key(id.as_str()))
            .count();
        rows.children.len() + roots
    }

    /// Checks that `entries` can be stored (their dimension), without storing them.
    pub(crate) fn check(&self, entries: &[Entry<'_>]) -> Result<(), IndexError> {
        let rows = self.read();
        match rows.dim.or_else(|| entries.first().map(|e| e.vector.len())) {
            Some(dim) => check_dimension(entries, dim),
            None => Ok(()),
        }
    }

    /// [`VectorIndex::upsert`], returning the ids whose stored version is gone: the entries
    /// removed, and those overwritten.
    pub(crate) fn upsert_tracked(
        &self,
        replaced: &[&str],
        entries: &[Entry<'_>],
    ) -> Result<Vec<String>, IndexError> {
        let mut rows = self.write();
        let dim = rows.dim.or_else(|| entries.first().map(|e| e.vector.len()));
        if let Some(dim) = dim {
            check_dimension(entries, dim)?;
        }
        // Validated: from here on nothing fails.
        let keep: HashSet<&str> = entries.iter().map(|e| e.id).collect();
        let mut gone: Vec<String> = Vec::new();
        for root in replaced {
            if rows.row_of.contains_key(*root) && !keep.contains(root) {
                gone.push((*root).to_owned());
            }
            if let Some(kids) = rows.children.get(*root) {
                gone.extend(kids.iter().filter(|k| !keep.contains(k.as_str())).cloned());
            }
        }
        for id in &gone {
            rows.remove(id);
        }
        gone.extend(
            entries
                .iter()
                .filter(|e| rows.row_of.contains_key(e.id))
                .map(|e| e.id.to_owned()),
        );
        if let Some(dim) = dim.filter(|_| !entries.is_empty()) {
            rows.dim = Some(dim);
            for entry in entries {
                rows.put(entry, self.metric);
            }
        }
        rows.debug_check();
        Ok(gone)
    }

    /// [`VectorIndex::delete`], returning the ids removed.
    pub(crate) fn delete_tracked(&self, ids: &[&str]) -> Vec<String> {
        let mut rows = self.write();
        let mut work: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        // A chunk may name itself, or an ancestor, as its parent: visit every id once.
        let mut seen: HashSet<String> = HashSet::new();
        let mut removed = Vec::new();
        while let Some(id) = work.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(kids) = rows.children.remove(&id) {
                work.extend(kids);
            }
            if rows.remove(&id) {
                removed.push(id);
            }
        }
        rows.debug_check();
        removed
    }

    /// A copy of every stored entry (vectors as stored: normalised under cosine).
    pub(crate) fn export(&self) -> ExportedRows {
        let rows = self.read();
        ExportedRows {
            dim: rows.dim,
            ids: rows.ids.clone(),
            parent_ids: rows.parent_ids.clone(),
            vectors: rows.vectors.clone(),
        }
    }

    /// Fixes the dimension of an empty index (a recovered shard that was emptied keeps it).
    pub(crate) fn restore_dim(&self, dim: usize) {
        let mut rows = self.write();
        if rows.dim.is_none() {
            rows.dim = Some(dim);
        }
    }

    /// Number of stored entries.
    pub(crate) fn len(&self) -> usize {
        self.read().ids.len()
    }
}

fn check_dimension(entries: &[Entry<'_>], dim: usize) -> Result<(), IndexError> {
    match entries.iter().find(|e| e.vector.len() != dim) {
        Some(e) => Err(IndexError::WrongDimension {
            id: e.id.to_owned(),
            expected: dim,
            got: e.vector.len(),
        }),
        None => Ok(()),
    }
}

impl Rows {
    /// Stores one entry (its dimension checked), replacing the entry with the same id.
    fn put(&mut self, entry: &Entry<'_>, metric: Metric) {
        let dim = self.dim.unwrap_or(entry.vector.len());
        debug_assert_eq!(entry.vector.len(), dim);
        let parent_id = entry.parent_id.map(str::to_owned);
        let row = if let Some(&row) = self.row_of.get(entry.id) {
            let old = std::mem::replace(&mut self.parent_ids[row], parent_id);
            self.unlink(old.as_deref(), entry.id);
            row
        } else {
            let row = self.ids.len();
            self.ids.push(entry.id.to_owned());
            self.parent_ids.push(parent_id);
            self.vectors.resize((row + 1) * dim, 0.0);
            self.row_of.insert(entry.id.to_owned(), row);
            row
        };
        if let Some(parent) = entry.parent_id {
            self.children
                .entry(parent.to_owned())
                .or_default()
                .insert(entry.id.to_owned());
        }
        let slot = &mut self.vectors[row * dim..(row + 1) * dim];
        slot.copy_from_slice(entry.vector);
        if metric == Metric::Cosine {
            l2_normalise(slot);
        }
    }

    /// Removes the entry `id`, moving the last row into its place. False when absent.
    fn remove(&mut self, id: &str) -> bool {
        let Some(row) = self.row_of.remove(id) else {
            return false;
        };
        let dim = self.dim.unwrap_or(0);
        let last = self.ids.len() - 1;
        if row != last {
            self.vectors
                .copy_within(last * dim..(last + 1) * dim, row * dim);
        }
        self.vectors.truncate(last * dim);
        let removed = self.ids.swap_remove(row);
        let parent = self.parent_ids.swap_remove(row);
        if row != last {
            if let Some(moved) = self.row_of.get_mut(&self.ids[row]) {
                *moved = row;
            }
        }
        self.unlink(parent.as_deref(), &removed);
        true
    }

    fn unlink(&mut self, parent: Option<&str>, id: &str) {
        let Some(parent) = parent else { return };
        if let Some(kids) = self.children.get_mut(parent) {
            kids.remove(id);
            if kids.is_empty() {
                self.children.remove(parent);
            }
        }
    }

    /// The best `k` rows for each query of `queries` (row-major) by `kernel` (higher is
    /// better), best first.
    ///
    /// Rows are scanned a block at a time (a block fits in the L2 cache) and every query is
    /// scored against the block before the next is read, so a batch of queries reads the matrix
    /// from memory once rather than once per query. Large scans are split across cores by rows.
    fn scan_many(&self, queries: &[f32], k: usize, kernel: Kernel) -> Vec<Vec<Candidate<'_>>> {
        let Some(dim) = self.dim.filter(|&d| d > 0) else {
            return Vec::new();
        };
        let nq = queries.len() / dim;
        let n = self.ids.len();
        if k == 0 || n == 0 {
            return (0..nq).map(|_| Vec::new()).collect();
        }
        let block = (BLOCK_BYTES / (4 * dim)).clamp(8, 4096);
        let work = nq.saturating_mul(n).saturating_mul(dim);
        let threads = if work >= PARALLEL_WORK {
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(MAX_THREADS)
                .min(n.div_ceil(block))
        } else {
            1
        };
        let heaps = if threads <= 1 {
            self.scan_range(queries, dim, 0..n, block, k, kernel)
        } else {
            // Contiguous row ranges, whole blocks each.
            let blocks = n.div_ceil(block);
            let per = blocks.div_ceil(threads) * block;
            let parts: Vec<Vec<BinaryHeap<Candidate<'_>>>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..n)
                    .step_by(per)
                    .map(|start| {
                        let range = start..(start + per).min(n);
                        scope.spawn(move || self.scan_range(queries, dim, range, block, k, kernel))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
            let mut parts = parts.into_iter();
            let mut merged = parts.next().unwrap_or_default();
            for part in parts {
                for (into, from) in merged.iter_mut().zip(part) {
                    for candidate in from {
                        offer(into, candidate, k);
                    }
                }
            }
            merged
        };
        heaps.into_iter().map(BinaryHeap::into_sorted_vec).collect()
    }

    /// The best `k` of rows `range` for every query, as bounded heaps (worst on top).
    fn scan_range(
        &self,
        queries: &[f32],
        dim: usize,
        range: std::ops::Range<usize>,
        block: usize,
        k: usize,
        kernel: Kernel,
    ) -> Vec<BinaryHeap<Candidate<'_>>> {
        let nq = queries.len() / dim;
        // `k` comes from the request: never reserve more than there is.
        let cap = k.min(range.len());
        let mut heaps: Vec<BinaryHeap<Candidate<'_>>> =
            (0..nq).map(|_| BinaryHeap::with_capacity(cap)).collect();
        // Scores of a tile of queries against a block, query by query.
        let mut scores = vec![0.0_f32; QUERY_TILE.min(nq) * block.min(range.len())];
        let mut start = range.start;
        while start < range.end {
            let end = (start + block).min(range.end);
            let len = end - start;
            let vectors = &self.vectors[start * dim..end * dim];
            let tiles = queries
                .chunks(QUERY_TILE * dim)
                .zip(heaps.chunks_mut(QUERY_TILE));
            for (tile, heaps) in tiles {
                let scores = &mut scores[..heaps.len() * len];
                score_rows_many(kernel, tile, dim, vectors, scores);
                for (scores, heap) in scores.chunks_exact(len).zip(heaps.iter_mut()) {
                    for (i, score) in scores.iter().enumerate() {
                        // `+ 0.0` turns -0.0 into 0.0, so equal scores tie and the id decides.
                        let key = *score + 0.0;
                        if heap.len() == k && heap.peek().is_some_and(|worst| key < worst.key) {
                            continue;
                        }
                        let row = start + i;
                        let candidate = Candidate {
                            key,
                            id: &self.ids[row],
                            row,
                        };
                        offer(heap, candidate, k);
                    }
                }
            }
            start = end;
        }
        heaps
    }

    fn debug_check(&self) {
        debug_assert_eq!(self.ids.len(), self.parent_ids.len());
        debug_assert_eq!(self.ids.len(), self.row_of.len());
        debug_assert_eq!(self.vectors.len(), self.ids.len() * self.dim.unwrap_or(0));
    }
}

/// Bytes of rows scored against every query before the next block is read: well inside L2.
const BLOCK_BYTES: usize = 128 << 10;
/// Multiply-adds above which a scan is split across cores (about a millisecond of work).
const PARALLEL_WORK: usize = 1 << 24;
/// Queries scored together against a block: the kernel's tiles share each row it loads, and
/// the scores of a tile against a block stay small (at most 12 x 4096 floats).
const QUERY_TILE: usize = 12;
/// Most threads one scan uses.
const MAX_THREADS: usize = 8;

/// Keeps `candidate` in the bounded heap `heap` of the best `k`.
fn offer<'a>(heap: &mut BinaryHeap<Candidate<'a>>, candidate: Candidate<'a>, k: usize) {
    if heap.len() < k {
        heap.push(candidate);
    } else if let Some(mut worst) = heap.peek_mut() {
        if candidate < *worst {
            *worst = candidate;
        }
    }
}

/// A row kept by a scan. Ordered worst-last: a `BinaryHeap` of candidates has its worst on top,
/// ready to be replaced, and `into_sorted_vec` lists them best first.
struct Candidate<'a> {
    key: f32,
    id: &'a str,
    row: usize,
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Greater is worse: a lower key, or an equal key and a larger id.
        other
            .key
            .total_cmp(&self.key)
            .then_with(|| self.id.cmp(other.id))
    }
}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::score_rows;

    /// A tiny deterministic generator (Knuth's MMIX LCG), enough for test data.
    struct Lcg(u64);

    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // The low bits of an LCG are weak; the high ones are fine.
            self.0 >> 32
        }

        /// Uniform in [-1, 1).
        fn next_f32(&mut self) -> f32 {
            (self.next_u64() >> 8) as f32 / (1u64 << 23) as f32 - 1.0
        }

        /// Uniform in 0..n.
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn entry<'a>(id: &'a str, parent_id: Option<&'a str>, vector: &'a [f32]) -> Entry<'a> {
        Entry {
            id,
            parent_id,
            vector,
        }
    }

    /// Every stored row scored against `q`, fully sorted: the reference for the heap.
    fn naive(index: &FlatIndex, q: &[f32], k: usize) -> Vec<(String, f32)> {
        let rows = index.read();
        let dim = rows.dim.expect("dimension");
        let mut q = q.to_vec();
        if index.metric == Metric::Cosine {
            l2_normalise(&mut q);
        }
        // The same kernel scores every row (kernel.rs checks it against f64 sums); what this
        // test checks is the bounded-heap selection against a full sort.
        let kernel = match index.metric {
            Metric::Cosine => Kernel::Dot,
            Metric::L2 => Kernel::NegL2Squared,
        };
        let mut scores = vec![0.0_f32; rows.ids.len()];
        score_rows(
            kernel,
            &q,
            &rows.vectors[..rows.ids.len() * dim],
            &mut scores,
        );
        let mut all: Vec<(String, f32)> = scores
            .iter()
            .zip(&rows.ids)
            .map(|(s, id)| {
                let score = match index.metric {
                    Metric::Cosine => s + 0.0,
                    Metric::L2 => 0.0 - (-s).sqrt(),
                };
                (id.clone(), score)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn bounded_heap_equals_a_full_sort_on_random_data() {
        let mut rng = Lcg(42);
        for metric in [Metric::Cosine, Metric::L2] {
            for round in 0..20 {
                let dim = 1 + rng.below(40);
                let n = rng.below(300);
                let index = FlatIndex::new(metric);
                let mut vectors: Vec<Vec<f32>> = (0..n)
                    .map(|_| (0..dim).map(|_| rng.next_f32()).collect())
                    .collect();
                // Exact duplicates make ties, which the id must break.
                for i in 0..n / 10 {
                    vectors[i * 10] = vectors[0].clone();
                }
                let ids: Vec<String> = (0..n)
                    .map(|i| format!("d{}", rng.below(1000) * 1000 + i))
                    .collect();
                let entries: Vec<Entry<'_>> = ids
                    .iter()
                    .zip(&vectors)
                    .map(|(id, v)| entry(id, None, v))
                    .collect();
                index.upsert(&[], &entries).expect("stored");
                for _ in 0..5 {
                    let q: Vec<f32> = if n > 0 && rng.below(2) == 0 {
                        vectors[0].clone()
                    } else {
                        (0..dim).map(|_| rng.next_f32()).collect()
                    };
                    let k = 1 + rng.below(n + 5);
                    let got: Vec<(String, f32)> = index
                        .search(&[entry("q", None, &q)], k)
                        .expect("searched")
                        .remove(0)
                        .into_iter()
                        .map(|h| (h.id, h.score))
                        .collect();
                    if n == 0 {
                        assert!(got.is_empty());
                    } else {
                        assert_eq!(got, naive(&index, &q, k), "{metric:?} round {round} k {k}");
                    }
                }
            }
        }
    }

    /// A batch is scored in tiles of queries, and large scans are split across threads: each
    /// query's answer must still be exactly what it gets alone.
    #[test]
    fn a_batch_answers_each_query_as_it_would_alone() {
        let mut rng = Lcg(7);
        // The last case is over `PARALLEL_WORK`, so it is split across threads where there are
        // several cores.
        for (metric, dim, n, nq) in [
            (Metric::Cosine, 3, 50, 30),
            (Metric::L2, 17, 301, 29),
            (Metric::Cosine, 40, 600, 13),
            (Metric::L2, 32, 20_000, 27),
        ] {
            let index = FlatIndex::new(metric);
            let vectors: Vec<f32> = (0..n * dim).map(|_| rng.next_f32()).collect();
            let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
            let entries: Vec<Entry<'_>> = ids
                .iter()
                .zip(vectors.chunks_exact(dim))
                .map(|(id, v)| entry(id, None, v))
                .collect();
            index.upsert(&[], &entries).expect("stored");
            let queries: Vec<f32> = (0..nq * dim).map(|_| rng.next_f32()).collect();
            let batch: Vec<Entry<'_>> = queries
                .chunks_exact(dim)
                .map(|q| entry("q", None, q))
                .collect();
            let together = index.search(&batch, 7).expect("searched");
            for (q, answer) in batch.iter().zip(&together) {
                let alone = index.search(std::slice::from_ref(q), 7).expect("searched");
                let pairs = |hits: &[Hit]| -> Vec<(String, u32)> {
                    hits.iter()
                        .map(|h| (h.id.clone(), h.score.to_bits()))
                        .collect()
                };
                assert_eq!(
                    pairs(answer),
                    pairs(&alone[0]),
                    "{metric:?} dim {dim} n {n}"
                );
            }
        }
    }

    #[test]
    fn delete_keeps_the_matrix_dense_and_consistent() {
        let index = FlatIndex::new(Metric::L2);
        let vs: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32, 0.0]).collect();
        let ids = ["a", "b", "c", "d", "e", "f"];
        let entries: Vec<Entry<'_>> = ids
            .iter()
            .zip(&vs)
            .map(|(id, v)| entry(id, None, v))
            .collect();
        index.upsert(&[], &entries).expect("stored");
        assert_eq!(index.delete(&["b", "zzz", "a"]).unwrap(), 2);
        assert_eq!(index.stats().count, 4);
        // Every remaining id still finds its own vector at distance 0.
        for (id, v) in ids.iter().zip(&vs).skip(2) {
            let hits = index.search(&[entry("q", None, v)], 1).expect("searched");
            assert_eq!(hits[0][0].id, *id);
            assert_eq!(hits[0][0].score, 0.0);
        }
    }

    #[test]
    fn replacing_a_document_drops_its_stale_chunks() {
        let index = FlatIndex::new(Metric::Cosine);
        let v = [1.0_f32, 0.0];
        let old = [
            entry("doc-0", Some("doc"), &v),
            entry("doc-1", Some("doc"), &v),
            entry("other-0", Some("other"), &v),
        ];
        index.upsert(&["doc", "other"], &old).expect("stored");
        index
            .upsert(
                &["doc"],
                &[
                    entry("doc-0", Some("doc"), &v),
                    entry("doc-2", Some("doc"), &v),
                ],
            )
            .expect("replaced");
        let ids: Vec<String> = index.search(&[entry("q", None, &v)], 10).expect("searched")[0]
            .iter()
            .map(|h| h.id.clone())
            .collect();
        assert_eq!(ids, ["doc-0", "doc-2", "other-0"]);
    }
}
