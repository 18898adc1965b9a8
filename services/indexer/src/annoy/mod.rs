//! Annoy files: written by flowmesh ([`write_index`]), searched with the `annoy-rs` crate
//! ([`AnnoyFile`]).
//!
//! No Rust crate writes Annoy's format, so the builder here does: a random-projection forest
//! with Annoy's split rules (a two-means hyperplane through the midpoint of two centroids,
//! items with a positive margin on the side of `children[1]`, a random split when a plane
//! cannot separate the items), laid out exactly as Spotify's `annoylib.h` lays it out. Files
//! written here load in Python's `annoy`, and files from `annoy` load here; the interoperability
//! test checks both directions.
//!
//! The format is a flat array of fixed-size little-endian nodes (`layout`): items `0..n` first,
//! then each tree's nodes, children before parents, then a copy of every tree's root. Nothing
//! in it records the dimension or the metric: a reader must be told both.

mod file;
mod forest;
mod layout;
mod write;

#[cfg(test)]
mod tests;

use crate::backend::Metric;

pub use file::AnnoyFile;
pub use write::write_index;

/// The distance an Annoy file is built and searched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnoyMetric {
    /// Annoy's `angular`: the Euclidean distance of the normalised vectors, `sqrt(2 - 2 cos)`.
    Angular,
    /// Annoy's `euclidean`: the L2 distance.
    Euclidean,
}

impl AnnoyMetric {
    /// Annoy's name for the metric, as Python's `AnnoyIndex(f, metric)` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Angular => "angular",
            Self::Euclidean => "euclidean",
        }
    }

    /// The indexer's score ("higher is better", as [`crate::Hit::score`]) for an Annoy
    /// `distance`: the cosine similarity `1 - d² / 2` for angular, minus the distance for
    /// Euclidean.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Self::Angular => 1.0 - distance * distance / 2.0,
            Self::Euclidean => -distance,
        }
    }
}

/// Cosine similarity ranks like the angular distance; L2 is Euclidean.
impl From<Metric> for AnnoyMetric {
    fn from(metric: Metric) -> Self {
        match metric {
            Metric::Cosine => Self::Angular,
            Metric::L2 => Self::Euclidean,
        }
    }
}
