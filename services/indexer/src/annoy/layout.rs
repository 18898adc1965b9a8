//! Annoy's node layout, shared by the writer and by the checks a file passes before it is
//! searched.
//!
//! Every node has the same size. Angular nodes are `n_descendants: i32`, `children: [i32; 2]`,
//! `v: [f32; dim]`; Euclidean nodes put the plane's offset `a: f32` between `n_descendants` and
//! `children`. What a node is follows from `n_descendants` alone:
//!
//! - `1`, at an index below the item count: an item, whose `v` is its vector. (Angular items
//!   keep their squared norm, as an `f32`, where `children[0]` would be; Annoy reads it back
//!   as a cached norm.)
//! - `0..=K`: a bucket leaf, whose item ids start at `children[0]` and run on over `v`;
//!   `K = dim + 2` ids fit for both metrics.
//! - more than `K`: a split, with the hyperplane's normal in `v` (and its offset in `a`).
//!
//! Roots are the exception that makes the format awkward: a root's `n_descendants` is the
//! number of items even when it is a bucket, and readers find the roots by walking back from
//! the end of the file over nodes with the same `n_descendants` as the last one.

use super::AnnoyMetric;

/// Bytes of an `i32` or an `f32`.
pub(super) const WORD: usize = 4;

/// The node layout of one dimension and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) dim: usize,
    pub(super) metric: AnnoyMetric,
}

impl Layout {
    /// Byte offset of `children[0]` (and of a bucket's first id).
    pub(super) fn children_at(self) -> usize {
        match self.metric {
            AnnoyMetric::Angular => WORD,
            AnnoyMetric::Euclidean => 2 * WORD,
        }
    }

    /// Byte offset of the Euclidean plane offset `a`; `None` for angular nodes.
    pub(super) fn offset_at(self) -> Option<usize> {
        match self.metric {
            AnnoyMetric::Angular => None,
            AnnoyMetric::Euclidean => Some(WORD),
        }
    }

    /// Byte offset of `v`.
    pub(super) fn vector_at(self) -> usize {
        self.children_at() + 2 * WORD
    }

    /// Bytes of one node; `None` where it would overflow.
    pub(super) fn node_size(self) -> Option<usize> {
        self.dim
            .checked_mul(WORD)
            .and_then(|v| v.checked_add(self.vector_at()))
    }

    /// `K`: how many item ids a bucket leaf holds.
    pub(super) fn max_bucket(self) -> usize {
        self.dim + 2
    }
}

/// Writes `value` little-endian at byte `at` of `node`.
pub(super) fn put_i32(node: &mut [u8], at: usize, value: i32) {
    node[at..at + WORD].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` little-endian at byte `at` of `node`.
pub(super) fn put_f32(node: &mut [u8], at: usize, value: f32) {
    node[at..at + WORD].copy_from_slice(&value.to_le_bytes());
}

/// Reads the little-endian `i32` at byte `at` of `node`.
pub(super) fn get_i32(node: &[u8], at: usize) -> i32 {
    let mut word = [0_u8; WORD];
    word.copy_from_slice(&node[at..at + WORD]);
    i32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes `annoylib.h` computes: `offsetof(Node, v) + f * sizeof(float)`, and
    /// `K = (size - offsetof(Node, children)) / sizeof(int32)`.
    #[test]
    fn sizes_match_annoylib() {
        for dim in [1, 5, 32, 384] {
            let angular = Layout {
                dim,
                metric: AnnoyMetric::Angular,
            };
            let euclidean = Layout {
                dim,
                metric: AnnoyMetric::Euclidean,
            };
            assert_eq!(angular.node_size(), Some(12 + 4 * dim));
            assert_eq!(euclidean.node_size(), Some(16 + 4 * dim));
            for layout in [angular, euclidean] {
                let size = layout.node_size().unwrap_or_default();
                assert_eq!(layout.max_bucket(), (size - layout.children_at()) / WORD);
            }
        }
    }
}
