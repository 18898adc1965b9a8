//! The `annoy` backend: a forest of `num_trees` random-projection trees in Annoy's own file
//! format, written by [`crate::write_index`] and searched through annoy-rs with `search_k`.
//!
//! Each build writes a new file into the shard's directory, opens it and removes its name at
//! once: the open [`AnnoyFile`] keeps the data (every thread maps the already open file), and
//! a crash leaves nothing behind to clean up. A restart rebuilds from the recovered entries.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::annoy::{write_index, AnnoyFile, AnnoyMetric};
use crate::approx::{BuildInput, Builder, Built, Ranked};
use crate::backend::IndexError;

/// Builds Annoy forests.
#[derive(Debug, Clone)]
pub struct AnnoyBuilder {
    dir: PathBuf,
    num_trees: usize,
    search_k: Option<usize>,
}

impl AnnoyBuilder {
    /// A builder writing its files into `dir` (created if needed). Leftovers of an earlier
    /// process's builds there are removed.
    pub fn new(dir: &Path, num_trees: usize, search_k: Option<usize>) -> anyhow::Result<Self> {
        if num_trees == 0 {
            anyhow::bail!("--num-trees must be at least 1");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for item in std::fs::read_dir(dir)?.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with("annoy-") || name.starts_with(".annoy-") {
                let _ = std::fs::remove_file(item.path());
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            num_trees,
            search_k,
        })
    }
}

impl Builder for AnnoyBuilder {
    fn name(&self) -> &'static str {
        "annoy"
    }

    fn build(&self, input: BuildInput<'_>) -> anyhow::Result<Box<dyn Built>> {
        let BuildInput {
            rows,
            dim,
            metric,
            generation,
        } = input;
        let metric = AnnoyMetric::from(metric);
        let path = self.dir.join(format!("annoy-{generation}.ann"));
        write_index(
            &path,
            dim,
            &rows.vectors,
            metric,
            self.num_trees,
            generation,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let file = AnnoyFile::open(&path, dim, metric);
        // The open file keeps its data; the name is not needed any more.
        let _ = std::fs::remove_file(&path);
        Ok(Box::new(AnnoyBuilt {
            file: file?,
            metric,
            search_k: self.search_k,
        }))
    }
}

struct AnnoyBuilt {
    file: AnnoyFile,
    metric: AnnoyMetric,
    search_k: Option<usize>,
}

impl Built for AnnoyBuilt {
    fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Ranked, IndexError> {
        queries
            .chunks_exact(dim.max(1))
            .map(|q| {
                let hits = self
                    .file
                    .search(q, k, self.search_k)
                    .map_err(|e| IndexError::search("annoy", e))?;
                Ok(hits
                    .into_iter()
                    .map(|(item, d)| (item, self.metric.score(d)))
                    .collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
