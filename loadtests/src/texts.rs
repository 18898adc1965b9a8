//! The one text generator of every benchmark: words from one vocabulary, the same text for the
//! same seed and index, so that every run, engine and indexer sees the same data.
//!
//! - [`short`]: 8 words and the index (`overhead`, `compare`, `abuse`);
//! - [`sentence`]: one sentence of 8 to 24 words (`encoder`, the Jina comparison's texts);
//! - [`paragraph`]: capitalised, punctuated sentences of 6 to 14 words (`run`).

use std::ops::RangeInclusive;

/// The benchmarks' draws over shared's SplitMix64 ([`flowmesh_shared::rng::SplitMix64`]): per
/// item streams, and numbers in a range by multiply-shift (not shared's remainder), which the
/// generated data was made with.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(flowmesh_shared::rng::SplitMix64);

impl SplitMix64 {
    /// The generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(flowmesh_shared::rng::SplitMix64::new(seed))
    }

    /// The generator of item `i` of `stream` under `seed`: independent streams for documents
    /// and queries of the same seed.
    pub(crate) fn for_item(seed: u64, stream: u64, i: usize) -> Self {
        let base = Self::new(seed ^ stream.rotate_left(32)).next_u64();
        Self::new(base ^ (i as u64).wrapping_mul(0x94d0_49bb_1331_11eb))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n` > 0; 0 for `n` == 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift: the bias for the small `n` used here is below 2^-50.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A number in `range`.
    pub(crate) fn within(&mut self, range: RangeInclusive<usize>) -> usize {
        let (lo, hi) = (*range.start(), *range.end());
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// A number in `0.0..1.0`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1_u64 << 24) as f32
    }
}

/// The vocabulary: nouns, verbs, adjectives and a few function words.
const WORDS: &[&str] = &[
    "search",
    "engine",
    "finds",
    "similar",
    "documents",
    "quickly",
    "people",
    "walk",
    "along",
    "quiet",
    "river",
    "under",
    "bright",
    "summer",
    "light",
    "talk",
    "about",
    "music",
    "horses",
    "mountains",
    "cities",
    "old",
    "stone",
    "bridges",
    "green",
    "garden",
    "winter",
    "storm",
    "market",
    "signal",
    "neural",
    "network",
    "vector",
    "index",
    "shard",
    "replica",
    "query",
    "model",
    "token",
    "sentence",
    "image",
    "camera",
    "forest",
    "ocean",
    "island",
    "harbour",
    "train",
    "station",
    "morning",
    "evening",
    "coffee",
    "bread",
    "kitchen",
    "window",
    "library",
    "student",
    "teacher",
    "doctor",
    "farmer",
    "painter",
    "singer",
    "soldier",
    "sailor",
    "child",
    "red",
    "blue",
    "yellow",
    "silver",
    "golden",
    "small",
    "large",
    "ancient",
    "modern",
    "busy",
    "empty",
    "warm",
    "cold",
    "slowly",
    "loudly",
    "gently",
    "carefully",
    "builds",
    "reads",
    "writes",
    "sings",
    "paints",
    "watches",
    "opens",
    "closes",
    "carries",
    "follows",
    "remembers",
    "forgets",
    "chooses",
    "the",
    "a",
    "and",
    "with",
    "near",
    "behind",
    "before",
    "after",
    "every",
];

/// Streams of the texts: one per kind of text, so that they never coincide.
const SHORT: u64 = 1;
const SENTENCE: u64 = 2;
const MIXED: u64 = 3;

/// `n` words drawn by `rng`, separated by spaces.
fn words(rng: &mut SplitMix64, n: usize, out: &mut String) {
    for w in 0..n {
        if w > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
}

/// A short text for item `i`: 8 words then `i`, so that every document is distinct.
pub(crate) fn short(i: usize) -> String {
    let mut rng = SplitMix64::for_item(0, SHORT, i);
    let mut out = String::new();
    words(&mut rng, 8, &mut out);
    out.push_str(&format!(" {i}"));
    out
}

/// A sentence of 8 to 24 words for item `i`, without punctuation.
pub(crate) fn sentence(i: usize) -> String {
    let mut rng = SplitMix64::for_item(0, SENTENCE, i);
    let n = rng.within(8..=24);
    let mut out = String::new();
    words(&mut rng, n, &mut out);
    out
}

/// A text of 4 to 40 words for item `i`, without punctuation: queries and passages mixed, as
/// an encoder serving both sees them.
pub(crate) fn mixed(i: usize) -> String {
    let mut rng = SplitMix64::for_item(0, MIXED, i);
    let n = rng.within(4..=40);
    let mut out = String::new();
    words(&mut rng, n, &mut out);
    out
}

/// Text `i` of `stream` under `seed`: a number of sentences in `sentences`, each of 6 to 14
/// words, capitalised and ending in `.`, `!` or `?`.
pub(crate) fn paragraph(
    seed: u64,
    stream: u64,
    i: usize,
    sentences: RangeInclusive<usize>,
) -> String {
    let mut rng = SplitMix64::for_item(seed, stream, i);
    let n = rng.within(sentences);
    let mut out = String::new();
    for s in 0..n {
        if s > 0 {
            out.push(' ');
        }
        let start = out.len();
        let count = rng.within(6..=14);
        words(&mut rng, count, &mut out);
        // Every word is ASCII: the first byte is the first letter.
        out[start..=start].make_ascii_uppercase();
        out.push(['.', '.', '!', '?'][rng.below(4)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_mix_matches_the_reference_stream() {
        // The first outputs for seed 1234567 in the reference C implementation.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        let mut r = SplitMix64::new(9);
        assert!((0..1000).all(|_| r.below(7) < 7 && r.unit() < 1.0));
        assert!((0..1000)
            .map(|_| r.within(3..=5))
            .all(|n| (3..=5).contains(&n)));
    }

    #[test]
    fn texts_have_the_documented_word_counts() {
        for i in 0..200 {
            let s = short(i);
            assert_eq!(s.split(' ').count(), 9, "{s}");
            assert!(s.ends_with(&format!(" {i}")));
            let n = sentence(i).split(' ').count();
            assert!((8..=24).contains(&n), "{n}");
        }
        let lengths: std::collections::BTreeSet<usize> =
            (0..200).map(|i| sentence(i).split(' ').count()).collect();
        assert!(lengths.len() > 10, "lengths vary: {lengths:?}");
        assert_eq!(short(3), short(3));
        assert_ne!(short(3), short(4));
    }

    #[test]
    fn paragraphs_are_deterministic_and_multi_sentence() {
        let a = paragraph(1, 1, 5, 2..=5);
        assert_eq!(a, paragraph(1, 1, 5, 2..=5));
        assert_ne!(a, paragraph(2, 1, 5, 2..=5));
        assert_ne!(a, paragraph(1, 2, 5, 2..=5));
        let ends = a.matches(['.', '!', '?']).count();
        assert!((2..=5).contains(&ends), "{a}");
        assert!(a.starts_with(|c: char| c.is_ascii_uppercase()), "{a}");
        for s in a.split_inclusive(['.', '!', '?']) {
            let n = s.split_whitespace().count();
            assert!((6..=14).contains(&n), "{s}");
        }
    }
}
