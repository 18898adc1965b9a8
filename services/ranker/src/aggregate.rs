//! Chunk matches to document matches: the seed's `SimpleAggregateRanker`.
//!
//! The matches of a query's chunks are grouped by the matched chunk's `parent_id` (the match's
//! own id when it has none), each group's scores are aggregated into one document score, and the
//! documents are sorted best first (ties: the smaller id first) and cut to `top_k`.

use std::collections::HashMap;

use flowmesh_shared::fanout::better;
use flowmesh_shared::Document;

/// How the scores of one document's matched chunks become the document's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Aggregation {
    /// The best chunk's score.
    Max,
    /// The worst chunk's score.
    Min,
    /// The mean of the chunks' scores.
    Mean,
    /// The sum of the chunks' scores: documents with many matching chunks rank higher.
    Sum,
}

/// Per-document running aggregate.
#[derive(Debug, Clone, Copy)]
struct Acc {
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
}

impl Acc {
    fn new(score: f64) -> Self {
        Self {
            min: score,
            max: score,
            sum: score,
            count: 1,
        }
    }

    fn add(&mut self, score: f64) {
        self.min = self.min.min(score);
        self.max = self.max.max(score);
        self.sum += score;
        self.count += 1;
    }

    fn value(self, how: Aggregation) -> f64 {
        match how {
            Aggregation::Max => self.max,
            Aggregation::Min => self.min,
            Aggregation::Mean => self.sum / f64::from(self.count),
            Aggregation::Sum => self.sum,
        }
    }
}

/// The document matches aggregated from `chunk_matches`, best first, at most `top_k`.
///
/// Matches without a score are skipped. With `reverse`, chunk scores are taken as
/// "lower is better" (distances, as Jina's `is_reversed_score`): the document's score is minus
/// the aggregate, so that a higher score is still better everywhere in the mesh.
pub fn aggregate<'a>(
    chunk_matches: impl IntoIterator<Item = &'a Document>,
    how: Aggregation,
    reverse: bool,
    top_k: usize,
) -> Vec<Document> {
    let mut groups: HashMap<&str, Acc> = HashMap::new();
    for m in chunk_matches {
        let Some(score) = m.score.map(f64::from) else {
            continue;
        };
        let parent = m.parent_id.as_deref().unwrap_or(&m.id);
        groups
            .entry(parent)
            .and_modify(|acc| acc.add(score))
            .or_insert_with(|| Acc::new(score));
    }
    let mut docs: Vec<Document> = groups
        .into_iter()
        .map(|(id, acc)| {
            let value = acc.value(how);
            let score = if reverse { -value } else { value };
            Document {
                id: id.to_owned(),
                // `+ 0.0` turns -0.0 into 0.0.
                score: Some(score as f32 + 0.0),
                ..Document::default()
            }
        })
        .collect();
    docs.sort_by(better);
    docs.truncate(top_k);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, parent: Option<&str>, score: f32) -> Document {
        Document {
            id: id.into(),
            parent_id: parent.map(str::to_owned),
            score: Some(score),
            ..Document::default()
        }
    }

    fn sample() -> Vec<Document> {
        vec![
            m("a-0", Some("a"), 0.75),
            m("a-1", Some("a"), 0.25),
            m("b-0", Some("b"), 0.5),
            m("b-1", Some("b"), 0.625),
            m("b-2", Some("b"), 0.375),
            m("c", None, 0.6875),
        ]
    }

    fn scored(docs: &[Document]) -> Vec<(&str, f32)> {
        docs.iter()
            .map(|d| (d.id.as_str(), d.score.unwrap_or(f32::NAN)))
            .collect()
    }

    fn close(got: &[(&str, f32)], expected: &[(&str, f32)]) {
        assert_eq!(got.len(), expected.len(), "{got:?} vs {expected:?}");
        for ((gi, gs), (ei, es)) in got.iter().zip(expected) {
            assert_eq!(gi, ei, "{got:?} vs {expected:?}");
            assert!((gs - es).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn each_aggregation_scores_and_orders_documents() {
        let docs = sample();
        let cases: [(Aggregation, &[(&str, f32)]); 4] = [
            (
                Aggregation::Max,
                &[("a", 0.75), ("c", 0.6875), ("b", 0.625)],
            ),
            (
                Aggregation::Min,
                &[("c", 0.6875), ("b", 0.375), ("a", 0.25)],
            ),
            // a and b tie at 0.5: the smaller id first.
            (Aggregation::Mean, &[("c", 0.6875), ("a", 0.5), ("b", 0.5)]),
            (Aggregation::Sum, &[("b", 1.5), ("a", 1.0), ("c", 0.6875)]),
        ];
        for (how, expected) in cases {
            close(&scored(&aggregate(&docs, how, false, 10)), expected);
        }
    }

    #[test]
    fn reverse_prefers_lower_scores() {
        let docs = sample();
        let got = aggregate(&docs, Aggregation::Min, true, 10);
        close(
            &scored(&got),
            &[("a", -0.25), ("b", -0.375), ("c", -0.6875)],
        );
    }

    #[test]
    fn top_k_cuts_after_sorting() {
        let docs = sample();
        let got = aggregate(&docs, Aggregation::Sum, false, 2);
        close(&scored(&got), &[("b", 1.5), ("a", 1.0)]);
    }

    #[test]
    fn unscored_matches_are_skipped_and_ties_go_to_the_smaller_id() {
        let mut docs = vec![m("y", None, 0.5), m("x", None, 0.5)];
        docs.push(Document {
            id: "z".into(),
            ..Document::default()
        });
        let got = aggregate(&docs, Aggregation::Max, false, 10);
        close(&scored(&got), &[("x", 0.5), ("y", 0.5)]);
    }
}
