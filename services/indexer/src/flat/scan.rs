//! The brute-force scan: every row scored by the distance kernel, the best `k` of each query
//! kept on a bounded heap. Large scans are split by rows over one process-wide rayon pool.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::table::Table;
use crate::kernel::{score_rows_many, Kernel};

/// Bytes of rows scored against every query before the next block is read: well inside L2.
const BLOCK_BYTES: usize = 128 << 10;
/// Multiply-adds above which a scan is split across cores (about a millisecond of work).
const PARALLEL_WORK: usize = 1 << 24;
/// Queries scored together against a block: the kernel's tiles share each row it loads, and
/// the scores of a tile against a block stay small (at most 12 x 4096 floats).
const QUERY_TILE: usize = 12;
/// Most parts one scan is split into.
const MAX_PARTS: usize = 8;

/// The threads that run the parts of large scans: one per core, shared by every scan of the
/// process, so that concurrent searches queue for cores instead of each starting threads of
/// its own. `None` when the pool cannot be started; scans then run on the calling thread.
fn scan_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("indexer-scan-{i}"))
            .build()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot start the scan pool; scans use one thread");
            })
            .ok()
    })
    .as_ref()
}

impl Table {
    /// The best `k` rows for each query of `queries` (row-major) by `kernel` (higher is
    /// better), best first.
    ///
    /// Rows are scanned a block at a time (a block fits in the L2 cache) and every query is
    /// scored against the block before the next is read, so a batch of queries reads the matrix
    /// from memory once rather than once per query. Large scans are split by rows into parts
    /// that run on the scan pool; the parts' heaps are merged in row order. The candidates'
    /// order is total (score, then id), so the answer is the same however the rows are split.
    pub(super) fn scan_many(
        &self,
        queries: &[f32],
        k: usize,
        kernel: Kernel,
    ) -> Vec<Vec<Candidate<'_>>> {
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
        let pool = scan_pool().filter(|_| work >= PARALLEL_WORK);
        let parts = pool.map_or(1, |pool| {
            pool.current_num_threads()
                .min(MAX_PARTS)
                .min(n.div_ceil(block))
        });
        let heaps = match pool.filter(|_| parts > 1) {
            None => self.scan_range(queries, dim, 0..n, block, k, kernel),
            Some(pool) => {
                // Contiguous row ranges, whole blocks each.
                let per = n.div_ceil(block).div_ceil(parts) * block;
                let ranges: Vec<Range<usize>> = (0..n)
                    .step_by(per)
                    .map(|start| start..(start + per).min(n))
                    .collect();
                let found: Vec<Vec<BinaryHeap<Candidate<'_>>>> = pool.install(|| {
                    ranges
                        .into_par_iter()
                        .map(|range| self.scan_range(queries, dim, range, block, k, kernel))
                        .collect()
                });
                merge(found, k)
            }
        };
        heaps.into_iter().map(BinaryHeap::into_sorted_vec).collect()
    }

    /// The best `k` of rows `range` for every query, as bounded heaps (worst on top).
    fn scan_range(
        &self,
        queries: &[f32],
        dim: usize,
        range: Range<usize>,
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
                    self.keep_best(heap, scores, start, k);
                }
            }
            start = end;
        }
        heaps
    }

    /// Offers the rows from `first` on, scored `scores`, to the bounded heap `heap`.
    fn keep_best<'a>(
        &'a self,
        heap: &mut BinaryHeap<Candidate<'a>>,
        scores: &[f32],
        first: usize,
        k: usize,
    ) {
        for (i, score) in scores.iter().enumerate() {
            // `+ 0.0` turns -0.0 into 0.0, so equal scores tie and the id decides.
            let key = *score + 0.0;
            if heap.len() == k && heap.peek().is_some_and(|worst| key < worst.key) {
                continue;
            }
            let row = first + i;
            let candidate = Candidate {
                key,
                id: &self.ids[row],
                row,
            };
            offer(heap, candidate, k);
        }
    }
}

/// The parts' heaps merged query by query into the first part's.
fn merge(parts: Vec<Vec<BinaryHeap<Candidate<'_>>>>, k: usize) -> Vec<BinaryHeap<Candidate<'_>>> {
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
}

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
pub(super) struct Candidate<'a> {
    /// The kernel's score, higher is better.
    pub(super) key: f32,
    id: &'a str,
    /// The row it came from.
    pub(super) row: usize,
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
