//! Shard routing and the mergers of `all` polling.
//!
//! `any` polling routes each root document by a stable hash of its id, so a document and all its
//! chunks live on one shard and an update or delete reaches the shard that holds it. `all` polling
//! sends a request to every shard; [`merge_top_k`] (the default `uses_after`) keeps each query's
//! global top-k with a k-way merge, and [`merge_concat`] returns every shard's matches as Jina's
//! MatchMerger does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use crate::api::{merge_by_id_with, Document};

/// The shard that owns the root document `id` among `shards`. FNV-1a: stable across processes,
/// platforms and releases, unlike `std`'s hasher.
pub fn shard_of(id: &str, shards: usize) -> usize {
    debug_assert!(shards > 0);
    usize::try_from(crate::hash::fnv1a64(id.as_bytes()) % shards as u64).unwrap_or(0)
}

/// Splits `docs` by owning shard. Each part keeps the documents' positions in `docs`, so that the
/// answers can be put back in order.
pub fn split_by_shard(docs: Vec<Document>, shards: usize) -> Vec<(Vec<usize>, Vec<Document>)> {
    let mut parts: Vec<(Vec<usize>, Vec<Document>)> = vec![(Vec::new(), Vec::new()); shards];
    for (pos, doc) in docs.into_iter().enumerate() {
        let s = shard_of(&doc.id, shards);
        parts[s].0.push(pos);
        parts[s].1.push(doc);
    }
    parts
}

/// How a merger combines the matches of one query from several shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchMerge {
    /// The global top-k: k-way merge by score, deduplicated by id, cut to `top_k`.
    TopK(usize),
    /// Every shard's matches, one shard after the other.
    Concat,
}

/// Merges the answers of several shards to the same query documents. Documents are matched by
/// id (the first answer's order is kept); their matches are combined by `how`, recursively in
/// their chunks; other fields are united as in [`Document::merge_from`].
pub fn merge_shard_answers(answers: Vec<Vec<Document>>, how: MatchMerge) -> Vec<Document> {
    let mut answers = answers.into_iter();
    let Some(mut merged) = answers.next() else {
        return Vec::new();
    };
    let rest: Vec<Vec<Document>> = answers.collect();
    if rest.is_empty() {
        for d in &mut merged {
            finish(d, how);
        }
        return merged;
    }
    // Collect, per query document, the match lists of every shard, then merge once.
    let mut per_doc: Vec<Vec<Vec<Document>>> = merged
        .iter_mut()
        .map(|d| vec![std::mem::take(&mut d.matches)])
        .collect();
    let mut chunk_answers: Vec<Vec<Vec<Document>>> = merged
        .iter_mut()
        .map(|d| vec![std::mem::take(&mut d.chunks)])
        .collect();
    // The matches and chunks of every answer are taken out before the documents merge, to be
    // combined by `how` below.
    merge_by_id_with(&mut merged, rest.into_iter().flatten(), |slot, doc| {
        let matches = std::mem::take(&mut doc.matches);
        let chunks = std::mem::take(&mut doc.chunks);
        match slot {
            Some(i) => {
                per_doc[i].push(matches);
                chunk_answers[i].push(chunks);
            }
            None => {
                per_doc.push(vec![matches]);
                chunk_answers.push(vec![chunks]);
            }
        }
    });
    for ((doc, lists), chunks) in merged.iter_mut().zip(per_doc).zip(chunk_answers) {
        doc.matches = combine(lists, how);
        doc.chunks = merge_shard_answers(chunks, how);
    }
    merged
}

/// Applies the merger to a single answer (one shard): sorting and cutting still apply.
fn finish(doc: &mut Document, how: MatchMerge) {
    let matches = std::mem::take(&mut doc.matches);
    doc.matches = combine(vec![matches], how);
    for c in &mut doc.chunks {
        finish(c, how);
    }
}

fn combine(lists: Vec<Vec<Document>>, how: MatchMerge) -> Vec<Document> {
    match how {
        MatchMerge::Concat => lists.into_iter().flatten().collect(),
        MatchMerge::TopK(k) => merge_top_k(lists, k),
    }
}

/// The ranking order of matches, for `sort_by`: the better first, that is the higher score, then
/// the smaller id (a deterministic tie-break). A match without a score comes after every scored
/// one.
pub fn better(a: &Document, b: &Document) -> Ordering {
    let sa = a.score.unwrap_or(f32::NEG_INFINITY);
    let sb = b.score.unwrap_or(f32::NEG_INFINITY);
    sb.total_cmp(&sa).then_with(|| a.id.cmp(&b.id))
}

struct Head {
    doc: Document,
    list: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the better document must compare greater.
        better(&other.doc, &self.doc)
    }
}

/// The global top `k` of several match lists: a k-way merge over a heap of list heads,
/// deduplicated by id (the best-scored copy wins), best first.
pub fn merge_top_k(lists: Vec<Vec<Document>>, k: usize) -> Vec<Document> {
    let mut iters: Vec<std::vec::IntoIter<Document>> = lists
        .into_iter()
        .map(|mut l| {
            // Shards answer sorted; sorting a sorted list is linear, and keeps the merge right
            // when one does not.
            l.sort_by(better);
            l.into_iter()
        })
        .collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (list, it) in iters.iter_mut().enumerate() {
        if let Some(doc) = it.next() {
            heap.push(Head { doc, list });
        }
    }
    // `k` is the caller's number: reserve no more than there are matches to keep.
    let cap = k.min(iters.iter().map(ExactSizeIterator::len).sum::<usize>() + heap.len());
    let mut seen = HashSet::with_capacity(cap);
    let mut out = Vec::with_capacity(cap);
    while out.len() < k {
        let Some(Head { doc, list }) = heap.pop() else {
            break;
        };
        if let Some(next) = iters[list].next() {
            heap.push(Head { doc: next, list });
        }
        if seen.insert(doc.id.clone()) {
            out.push(doc);
        }
    }
    debug_assert!(out
        .windows(2)
        .all(|w| better(&w[0], &w[1]) != Ordering::Greater));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(id: &str, score: f32) -> Document {
        Document {
            id: id.into(),
            score: Some(score),
            ..Document::default()
        }
    }

    #[test]
    fn shard_of_is_stable() {
        // Fixed values: a change of hash would move stored documents to other shards.
        assert_eq!(shard_of("doc-1", 8), 3);
        assert_eq!(shard_of("doc-2", 8), 6);
        assert_eq!(shard_of("doc-1", 1000), 347);
        assert_eq!(shard_of("hello", 3), 0);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(shard_of("a", 1 << 40), 0xaf63_dc4c_8601_ec8c % (1 << 40));
        assert_eq!(shard_of("", 3), (0xcbf2_9ce4_8422_2325_u64 % 3) as usize);
    }

    #[test]
    fn concat_keeps_every_shard_like_match_merger() {
        let q = |ms: Vec<Document>| Document {
            id: "q".into(),
            matches: ms,
            ..Document::default()
        };
        let shards: Vec<Vec<Document>> = (0..10)
            .map(|s| {
                vec![q((0..20)
                    .map(|i| m(&format!("{s}-{i}"), i as f32))
                    .collect())]
            })
            .collect();
        let out = merge_shard_answers(shards, MatchMerge::Concat);
        assert_eq!(out[0].matches.len(), 200);
    }

    fn brute(lists: &[Vec<Document>], k: usize) -> Vec<(String, f32)> {
        let mut all: Vec<Document> = lists.iter().flatten().cloned().collect();
        all.sort_by(better);
        let mut seen = HashSet::new();
        all.into_iter()
            .filter(|d| seen.insert(d.id.clone()))
            .take(k)
            .map(|d| (d.id, d.score.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn a_huge_k_reserves_only_what_there_is() {
        // usize::MAX would abort on allocation if the buffers were sized by k.
        let out = merge_top_k(vec![vec![m("a", 1.0)], vec![m("b", 2.0)]], usize::MAX);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, "b");
    }

    proptest! {
        #[test]
        fn top_k_equals_brute_force(
            lists in prop::collection::vec(
                prop::collection::vec((0u8..40, -100i32..100), 0..30), 1..6),
            k in 1usize..25,
        ) {
            let lists: Vec<Vec<Document>> = lists
                .into_iter()
                .map(|l| l.into_iter().map(|(id, s)| m(&format!("d{id}"), s as f32 / 7.0)).collect())
                .collect();
            let expected = brute(&lists, k);
            let got: Vec<(String, f32)> = merge_top_k(lists, k)
                .into_iter()
                .map(|d| (d.id, d.score.unwrap_or_default()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
