//! The `faiss` backend: any index that faiss's `index_factory` builds (`Flat`, `IVF50,Flat`,
//! `HNSW32`, `IVF256,PQ16`, ...), trained on the shard's vectors when it needs training, with
//! `nprobe` / `efSearch` set for searching.
//!
//! Cosine uses faiss's inner-product metric over normalised vectors; L2 uses its L2 metric,
//! whose squared distances become minus the distance, the flat backend's scale. faiss's search
//! needs exclusive access to the index (HNSW keeps per-search state), so searches of one shard
//! take turns; a batch of queries is one faiss call, which spreads it over faiss's own threads.

use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, bail, Context as _};
use faiss::index::autotune::ParameterSpace;
use faiss::{index_factory, Index, MetricType};

use crate::approx::{BuildInput, Builder, Built, Ranked};
use crate::backend::{IndexError, Metric};

/// Builds faiss indexes described by an `index_factory` key.
#[derive(Debug, Clone)]
pub struct FaissBuilder {
    index_key: String,
    nprobe: Option<usize>,
    ef_search: Option<usize>,
}

impl FaissBuilder {
    /// A builder for `index_key`, checked now (with a dimension that suits most keys) so that a
    /// typo is a start-up error rather than a failed build later.
    pub fn new(
        index_key: &str,
        nprobe: Option<usize>,
        ef_search: Option<usize>,
    ) -> anyhow::Result<Self> {
        if index_key.trim().is_empty() {
            bail!("the faiss index key is empty (for example Flat, IVF50,Flat or HNSW32)");
        }
        if index_key.contains("IDMap") {
            bail!("faiss index key {index_key:?}: flowmesh numbers the vectors itself; drop IDMap");
        }
        index_factory(256, index_key, MetricType::L2).map_err(|e| {
            anyhow!(
                "faiss cannot build the index key {index_key:?}: {e} (see faiss's index_factory)"
            )
        })?;
        Ok(Self {
            index_key: index_key.to_owned(),
            nprobe,
            ef_search,
        })
    }

    /// The `index_factory` key.
    pub fn index_key(&self) -> &str {
        &self.index_key
    }
}

impl Builder for FaissBuilder {
    fn name(&self) -> &'static str {
        "faiss"
    }

    fn build(&self, input: BuildInput<'_>) -> anyhow::Result<Box<dyn Built>> {
        let BuildInput {
            rows, dim, metric, ..
        } = input;
        let dim32 = u32::try_from(dim).context("dimension too large for faiss")?;
        let metric_type = match metric {
            Metric::Cosine => MetricType::InnerProduct,
            Metric::L2 => MetricType::L2,
        };
        let mut index = index_factory(dim32, &self.index_key, metric_type)
            .map_err(|e| anyhow!("faiss index_factory({dim}, {:?}): {e}", self.index_key))?;
        if !index.is_trained() {
            index.train(&rows.vectors).map_err(|e| {
                anyhow!(
                    "faiss cannot train {:?} on {} vectors: {e}",
                    self.index_key,
                    rows.ids.len()
                )
            })?;
        }
        index
            .add(&rows.vectors)
            .map_err(|e| anyhow!("faiss cannot add the vectors: {e}"))?;
        let space = ParameterSpace::new().map_err(|e| anyhow!("faiss parameter space: {e}"))?;
        if let Some(nprobe) = self.nprobe {
            space
                .set_index_parameter(&index, "nprobe", nprobe as f64)
                .map_err(|e| anyhow!("cannot set nprobe on {:?}: {e}", self.index_key))?;
        }
        if let Some(ef) = self.ef_search {
            space
                .set_index_parameter(&index, "efSearch", ef as f64)
                .map_err(|e| anyhow!("cannot set efSearch on {:?}: {e}", self.index_key))?;
        }
        Ok(Box::new(FaissBuilt {
            index: Mutex::new(index),
            metric,
        }))
    }
}

struct FaissBuilt {
    index: Mutex<faiss::index::IndexImpl>,
    metric: Metric,
}

impl Built for FaissBuilt {
    fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Ranked, IndexError> {
        let nq = queries.len().checked_div(dim).unwrap_or(0);
        if nq == 0 || k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let result = {
            // A panic inside faiss's call would abort (C++), not poison: the index is intact.
            let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            let k = k
                .min(usize::try_from(index.ntotal()).unwrap_or(usize::MAX))
                .max(1);
            index.search(queries, k).map(|r| (r, k))
        };
        let (result, k) = result.map_err(|e| IndexError::search("faiss", e))?;
        Ok(result
            .labels
            .chunks(k)
            .zip(result.distances.chunks(k))
            .map(|(labels, distances)| {
                labels
                    .iter()
                    .zip(distances)
                    .filter_map(|(label, &d)| {
                        let row = u32::try_from(label.get()?).ok()?;
                        let score = match self.metric {
                            Metric::Cosine => d,
                            Metric::L2 => 0.0 - d.max(0.0).sqrt(),
                        };
                        Some((row, score))
                    })
                    .collect()
            })
            .collect())
    }
}
