//! Annoy's random-projection trees, built in memory with Annoy's split rules.
//!
//! A set of more than `K` items is split by a hyperplane: two centroids are grown by Annoy's
//! two-means heuristic (200 random steps, each assigning an item to the nearer centroid weighted
//! by how many it already has), and the plane is their perpendicular bisector. An item with a
//! positive margin goes to `children[1]`, a negative one to `children[0]`, a zero margin to a
//! coin flip, exactly as Annoy's `side()`. Up to three planes are tried for a split with at most
//! 95% on one side; when even the last one leaves more than 99% on one side (duplicates, zero
//! vectors), the items are dealt to the sides at random. Sets of at most `K` items become bucket
//! leaves; a single item below the root is referenced directly.
//!
//! Each tree draws from its own generator, seeded from the caller's seed and the tree's number,
//! so that the forest is the same whatever the number of threads that build it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::{io, slice, thread};

use flowmesh_shared::rng::SplitMix64;

use super::AnnoyMetric;
use crate::kernel::{score_rows, Kernel};

/// Annoy's number of two-means steps.
const TWO_MEANS_STEPS: usize = 200;
/// Annoy tries this many planes before it settles for an unbalanced one.
const PLANE_ATTEMPTS: usize = 3;

/// The vectors a forest is built over.
pub(super) struct Items<'a> {
    rows: &'a [f32],
    dim: usize,
    metric: AnnoyMetric,
    /// Squared norms (angular only; empty otherwise).
    sq_norms: Vec<f32>,
}

impl<'a> Items<'a> {
    /// `rows` is row-major, `dim` floats a row; `dim > 0`.
    pub(super) fn new(rows: &'a [f32], dim: usize, metric: AnnoyMetric) -> Self {
        debug_assert!(dim > 0 && rows.len().is_multiple_of(dim));
        let sq_norms = match metric {
            AnnoyMetric::Angular => rows.chunks_exact(dim).map(|r| dot(r, r)).collect(),
            AnnoyMetric::Euclidean => Vec::new(),
        };
        Self {
            rows,
            dim,
            metric,
            sq_norms,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    pub(super) fn row(&self, item: u32) -> &'a [f32] {
        let at = item as usize * self.dim;
        &self.rows[at..at + self.dim]
    }

    /// The squared norm Annoy caches in an angular item node (0 for Euclidean).
    pub(super) fn sq_norm(&self, item: u32) -> f32 {
        self.sq_norms.get(item as usize).copied().unwrap_or(0.0)
    }
}

/// What a tree node points at: an item, or another node of the same tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Child {
    /// An item, by its index.
    Item(u32),
    /// A node of the same tree, by its position in [`Tree::nodes`].
    Node(u32),
}

/// One node of a tree.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TreeNode {
    /// A hyperplane: items with `normal · x + offset > 0` are under `children[1]`.
    Split {
        descendants: u32,
        children: [Child; 2],
        normal: Vec<f32>,
        /// Always 0 for angular.
        offset: f32,
    },
    /// A leaf holding at most `K` items (the root holds them all when there are at most `K`).
    Bucket { items: Vec<u32> },
}

/// A tree's nodes, children before their parents; the root is the last.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Tree {
    pub(super) nodes: Vec<TreeNode>,
}

/// Builds `num_trees` trees over every item, on up to as many threads as the machine has
/// cores. The result depends on `seed` only, not on the number of threads.
pub(super) fn build_forest(
    items: &Items<'_>,
    max_bucket: usize,
    num_trees: usize,
    seed: u64,
) -> io::Result<Vec<Tree>> {
    let threads = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(num_trees);
    let next = AtomicUsize::new(0);
    let built: Mutex<Vec<(usize, Tree)>> = Mutex::new(Vec::with_capacity(num_trees));
    let work = || loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= num_trees {
            break;
        }
        let tree = build_tree(items, max_bucket, seed, t);
        built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((t, tree));
    };
    thread::scope(|scope| -> io::Result<()> {
        let mut handles = Vec::with_capacity(threads);
        for _ in 1..threads {
            handles.push(
                thread::Builder::new()
                    .name("annoy-build".into())
                    .spawn_scoped(scope, work)?,
            );
        }
        work();
        for handle in handles {
            handle
                .join()
                .map_err(|_| io::Error::other("an annoy build thread panicked"))?;
        }
        Ok(())
    })?;
    let mut built = built
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    built.sort_by_key(|(t, _)| *t);
    debug_assert_eq!(built.len(), num_trees);
    Ok(built.into_iter().map(|(_, tree)| tree).collect())
}

/// Tree number `tree_index` of the forest seeded with `seed`.
pub(super) fn build_tree(
    items: &Items<'_>,
    max_bucket: usize,
    seed: u64,
    tree_index: usize,
) -> Tree {
    let mut builder = TreeBuilder {
        items,
        max_bucket,
        rng: Rng::for_tree(seed, tree_index),
        nodes: Vec::new(),
    };
    let all = (0..items.len() as u32).collect();
    builder.make_tree(all, true);
    Tree {
        nodes: builder.nodes,
    }
}

struct TreeBuilder<'i, 'a> {
    items: &'i Items<'a>,
    max_bucket: usize,
    rng: Rng,
    nodes: Vec<TreeNode>,
}

/// A split's hyperplane.
struct Plane {
    normal: Vec<f32>,
    offset: f32,
}

impl TreeBuilder<'_, '_> {
    /// Builds the subtree over `indices` and returns what its parent points at.
    ///
    /// Recursion depth: every split leaves at most 99% of its items on either side, so the depth
    /// is at most `ln(n) / ln(1 / 0.99)`, about 2,100 for 2³¹ items, with small frames.
    fn make_tree(&mut self, indices: Vec<u32>, is_root: bool) -> Child {
        if indices.len() == 1 && !is_root {
            return Child::Item(indices[0]);
        }
        // A root always holds every item: it is a bucket when they fit in one.
        if indices.len() <= self.max_bucket {
            return self.push(TreeNode::Bucket { items: indices });
        }
        let descendants = indices.len() as u32;
        let (plane, [left, right]) = self.split(&indices);
        drop(indices);
        // The smaller side first, as Annoy does: the node order then follows Annoy's.
        let children = if left.len() > right.len() {
            let right = self.make_tree(right, false);
            [self.make_tree(left, false), right]
        } else {
            let left = self.make_tree(left, false);
            [left, self.make_tree(right, false)]
        };
        self.push(TreeNode::Split {
            descendants,
            children,
            normal: plane.normal,
            offset: plane.offset,
        })
    }

    fn push(&mut self, node: TreeNode) -> Child {
        self.nodes.push(node);
        Child::Node((self.nodes.len() - 1) as u32)
    }

    /// A plane and the two sides it deals `indices` to (`[children[0], children[1]]`).
    fn split(&mut self, indices: &[u32]) -> (Plane, [Vec<u32>; 2]) {
        let mut plane = self.two_means_plane(indices);
        let mut sides = self.partition(&plane, indices);
        for _ in 1..PLANE_ATTEMPTS {
            if imbalance(&sides) < 0.95 {
                break;
            }
            plane = self.two_means_plane(indices);
            sides = self.partition(&plane, indices);
        }
        while imbalance(&sides) > 0.99 {
            // No plane separates them: deal them at random under a zero plane. (Annoy keeps
            // the Euclidean offset of the failed plane here, which sends every query to one
            // side first; a zero offset gives both sides the same priority.)
            plane = Plane {
                normal: vec![0.0; self.items.dim],
                offset: 0.0,
            };
            let mut random: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
            for &i in indices {
                random[usize::from(self.rng.flip())].push(i);
            }
            sides = random;
        }
        (plane, sides)
    }

    fn partition(&mut self, plane: &Plane, indices: &[u32]) -> [Vec<u32>; 2] {
        let mut sides: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for &i in indices {
            let margin = plane.offset + dot(&plane.normal, self.items.row(i));
            // Annoy's side(): NaN compares unequal to zero and not above it, so it goes left.
            let side = if margin != 0.0 {
                margin > 0.0
            } else {
                self.rng.flip()
            };
            sides[usize::from(side)].push(i);
        }
        sides
    }

    /// The perpendicular bisector of the two centroids that two-means grows over `indices`
    /// (at least two of them).
    fn two_means_plane(&mut self, indices: &[u32]) -> Plane {
        let items = self.items;
        let angular = items.metric == AnnoyMetric::Angular;
        let count = indices.len();
        let i = self.rng.index(count);
        let mut j = self.rng.index(count - 1);
        j += usize::from(j >= i);
        let mut p = items.row(indices[i]).to_vec();
        let mut q = items.row(indices[j]).to_vec();
        if angular {
            normalize(&mut p);
            normalize(&mut q);
        }
        let (mut p_sq, mut q_sq) = (dot(&p, &p), dot(&q, &q));
        let (mut p_count, mut q_count) = (1_u32, 1_u32);
        for _ in 0..TWO_MEANS_STEPS {
            let k = indices[self.rng.index(count)];
            let x = items.row(k);
            let (dp, dq) = if angular {
                let x_sq = items.sq_norm(k);
                (
                    angular_distance(&p, p_sq, x, x_sq),
                    angular_distance(&q, q_sq, x, x_sq),
                )
            } else {
                (squared_l2(&p, x), squared_l2(&q, x))
            };
            let (dp, dq) = (p_count as f32 * dp, q_count as f32 * dq);
            let norm = if angular {
                items.sq_norm(k).sqrt()
            } else {
                1.0
            };
            if norm.is_nan() || norm <= 0.0 {
                continue;
            }
            if dp < dq {
                update_mean(&mut p, x, norm, p_count);
                p_sq = dot(&p, &p);
                p_count += 1;
            } else if dq < dp {
                update_mean(&mut q, x, norm, q_count);
                q_sq = dot(&q, &q);
                q_count += 1;
            }
        }
        let mut normal: Vec<f32> = p.iter().zip(&q).map(|(a, b)| a - b).collect();
        normalize(&mut normal);
        let offset = if angular {
            0.0
        } else {
            normal
                .iter()
                .zip(p.iter().zip(&q))
                .map(|(n, (a, b))| -n * (a + b) / 2.0)
                .sum()
        };
        Plane { normal, offset }
    }
}

/// The larger side's share of the items.
fn imbalance(sides: &[Vec<u32>; 2]) -> f64 {
    let left = sides[0].len() as f64;
    let right = sides[1].len() as f64;
    let share = left / (left + right + 1e-9);
    share.max(1.0 - share)
}

/// Annoy's angular distance `2 - 2 cos` (2 when either vector is zero), from the squared norms.
fn angular_distance(a: &[f32], a_sq: f32, b: &[f32], b_sq: f32) -> f32 {
    let norms = a_sq * b_sq;
    if norms > 0.0 {
        2.0 - 2.0 * dot(a, b) / norms.sqrt()
    } else {
        2.0
    }
}

/// `mean ← (mean · count + x / norm) / (count + 1)`.
fn update_mean(mean: &mut [f32], x: &[f32], norm: f32, count: u32) {
    let c = count as f32;
    for (m, v) in mean.iter_mut().zip(x) {
        *m = (*m * c + v / norm) / (c + 1.0);
    }
}

/// Scales `v` to unit length; a zero (or non-finite) norm leaves it as it is, as in Annoy.
fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0.0;
    score_rows(Kernel::Dot, a, b, slice::from_mut(&mut out));
    out
}

fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0.0;
    score_rows(Kernel::NegL2Squared, a, b, slice::from_mut(&mut out));
    -out
}

/// Each tree's generator (the shared SplitMix64), with the two draws a split needs.
struct Rng(SplitMix64);

impl Rng {
    /// Tree `tree_index`'s generator: the seed mixed with the first output for that index.
    fn for_tree(seed: u64, tree_index: usize) -> Self {
        let mix = SplitMix64::new(tree_index as u64).next_u64();
        Rng(SplitMix64::new(seed ^ mix))
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift rather than a remainder.
    fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.0.next_u64()) * n as u128) >> 64) as usize
    }

    fn flip(&mut self) -> bool {
        self.0.next_u64() >> 63 == 1
    }
}
