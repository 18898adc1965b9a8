//! The `flat` backend: exact brute-force search over one contiguous row-major matrix.
//!
//! It is the seed's numpy indexer and the ground truth that approximate backends' recall is
//! measured against. A search scans every row with a vectorised kernel and keeps the best `k`
//! on a bounded heap; a delete swaps the last row into the hole, so the matrix stays dense.

mod scan;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use flowmesh_shared::vector::l2_normalise;

use crate::backend::{Entry, Hit, IndexError, Metric, Stats, VectorIndex};
use crate::kernel::Kernel;
use crate::wal::Rows;
use table::Table;

/// An exact in-memory index.
pub struct FlatIndex {
    metric: Metric,
    state: RwLock<Table>,
}

impl FlatIndex {
    /// An empty index comparing vectors by `metric`.
    pub fn new(metric: Metric) -> Self {
        Self {
            metric,
            state: RwLock::new(Table::default()),
        }
    }

    // A panic cannot leave the table half-updated: every mutation below completes once it has
    // started (validation happens first), so a poisoned lock still guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl VectorIndex for FlatIndex {
    fn backend(&self) -> &'static str {
        "flat"
    }

    fn stats(&self) -> Stats {
        let table = self.read();
        Stats {
            count: table.ids.len(),
            dimension: table.dim,
            backend: self.backend(),
            metric: self.metric,
        }
    }

    fn upsert(&self, replaced: &[&str], entries: &[Entry<'_>]) -> Result<(), IndexError> {
        self.upsert_tracked(replaced, entries).map(drop)
    }

    fn search(&self, queries: &[Entry<'_>], k: usize) -> Result<Vec<Vec<Hit>>, IndexError> {
        let table = self.read();
        let Some(dim) = table.dim else {
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
        let answers = table
            .scan_many(&flat, k, kernel)
            .into_iter()
            .map(|best| {
                best.into_iter()
                    .map(|c| Hit {
                        id: table.ids[c.row].clone(),
                        parent_id: table.parent_ids[c.row].clone(),
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
        let table = self.read();
        table.row_of.contains_key(id) || table.children.contains_key(id)
    }
}

impl FlatIndex {
    /// How many documents the stored vectors belong to: the parents of stored chunks, plus the
    /// stored entries that have no parent and are not a parent themselves. O(entries): for
    /// metrics scrapes, not for requests.
    pub fn documents(&self) -> usize {
        let table = self.read();
        let roots = table
            .ids
            .iter()
            .zip(&table.parent_ids)
            .filter(|(id, parent)| parent.is_none() && !table.children.contains_key(id.as_str()))
            .count();
        table.children.len() + roots
    }

    /// Checks that `entries` can be stored (their dimension), without storing them.
    pub(crate) fn check(&self, entries: &[Entry<'_>]) -> Result<(), IndexError> {
        let table = self.read();
        match table
            .dim
            .or_else(|| entries.first().map(|e| e.vector.len()))
        {
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
        let mut table = self.write();
        let dim = table
            .dim
            .or_else(|| entries.first().map(|e| e.vector.len()));
        if let Some(dim) = dim {
            check_dimension(entries, dim)?;
        }
        // Validated: from here on nothing fails.
        let keep: HashSet<&str> = entries.iter().map(|e| e.id).collect();
        let mut gone: Vec<String> = Vec::new();
        for root in replaced {
            if table.row_of.contains_key(*root) && !keep.contains(root) {
                gone.push((*root).to_owned());
            }
            if let Some(kids) = table.children.get(*root) {
                gone.extend(kids.iter().filter(|k| !keep.contains(k.as_str())).cloned());
            }
        }
        for id in &gone {
            table.remove(id);
        }
        gone.extend(
            entries
                .iter()
                .filter(|e| table.row_of.contains_key(e.id))
                .map(|e| e.id.to_owned()),
        );
        if let Some(dim) = dim.filter(|_| !entries.is_empty()) {
            table.dim = Some(dim);
            for entry in entries {
                table.put(entry, self.metric);
            }
        }
        table.debug_check();
        Ok(gone)
    }

    /// [`VectorIndex::delete`], returning the ids removed.
    pub(crate) fn delete_tracked(&self, ids: &[&str]) -> Vec<String> {
        let mut table = self.write();
        let mut work: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        // A chunk may name itself, or an ancestor, as its parent: visit every id once.
        let mut seen: HashSet<String> = HashSet::new();
        let mut removed = Vec::new();
        while let Some(id) = work.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(kids) = table.children.remove(&id) {
                work.extend(kids);
            }
            if table.remove(&id) {
                removed.push(id);
            }
        }
        table.debug_check();
        removed
    }

    /// A copy of every stored entry (vectors as stored: normalised under cosine).
    pub(crate) fn export(&self) -> Rows {
        let table = self.read();
        Rows {
            dim: table.dim,
            ids: table.ids.clone(),
            parent_ids: table.parent_ids.clone(),
            vectors: table.vectors.clone(),
        }
    }

    /// Fixes the dimension of an empty index (a recovered shard that was emptied keeps it).
    pub(crate) fn restore_dim(&self, dim: usize) {
        let mut table = self.write();
        if table.dim.is_none() {
            table.dim = Some(dim);
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
