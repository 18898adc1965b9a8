//! The flat index's storage: every entry as one row of a dense row-major matrix, with the maps
//! that find a row by id and the chunks of a parent.

use std::collections::{HashMap, HashSet};

use flowmesh_shared::vector::l2_normalise;

use crate::backend::{Entry, Metric};

/// The stored entries. Row `r` is `ids[r]`, `parent_ids[r]` and
/// `vectors[r * dim..(r + 1) * dim]`; `row_of` and `children` index them.
#[derive(Default)]
pub(super) struct Table {
    /// Fixed by the first stored vector, kept when the index empties.
    pub(super) dim: Option<usize>,
    pub(super) ids: Vec<String>,
    pub(super) parent_ids: Vec<Option<String>>,
    /// Row-major; normalised rows under the cosine metric.
    pub(super) vectors: Vec<f32>,
    pub(super) row_of: HashMap<String, usize>,
    /// Parent id -> ids of the stored entries with that parent, so that replacing or deleting a
    /// document finds its chunks without a scan.
    pub(super) children: HashMap<String, HashSet<String>>,
}

impl Table {
    /// Stores one entry (its dimension checked), replacing the entry with the same id.
    pub(super) fn put(&mut self, entry: &Entry<'_>, metric: Metric) {
        let dim = self.dim.unwrap_or(entry.vector.len());
        debug_assert_eq!(entry.vector.len(), dim);
        let parent_id = entry.parent_id.map(str::to_owned);
        let row = if let Some(&row) = self.row_of.get(entry.id) {
            let old = std::mem::replace(&mut self.parent_ids[row], parent_id);
            self.unlink(old.as_deref(), entry.id);
            row
        } else {
            let row = self.ids.len();
            self.ids.push(entry.id.to_owned());
            self.parent_ids.push(parent_id);
            self.vectors.resize((row + 1) * dim, 0.0);
            self.row_of.insert(entry.id.to_owned(), row);
            row
        };
        if let Some(parent) = entry.parent_id {
            self.children
                .entry(parent.to_owned())
                .or_default()
                .insert(entry.id.to_owned());
        }
        let slot = &mut self.vectors[row * dim..(row + 1) * dim];
        slot.copy_from_slice(entry.vector);
        if metric == Metric::Cosine {
            l2_normalise(slot);
        }
    }

    /// Removes the entry `id`, moving the last row into its place. False when absent.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        let Some(row) = self.row_of.remove(id) else {
            return false;
        };
        let dim = self.dim.unwrap_or(0);
        let last = self.ids.len() - 1;
        if row != last {
            self.vectors
                .copy_within(last * dim..(last + 1) * dim, row * dim);
        }
        self.vectors.truncate(last * dim);
        let removed = self.ids.swap_remove(row);
        let parent = self.parent_ids.swap_remove(row);
        if row != last {
            if let Some(moved) = self.row_of.get_mut(&self.ids[row]) {
                *moved = row;
            }
        }
        self.unlink(parent.as_deref(), &removed);
        true
    }

    fn unlink(&mut self, parent: Option<&str>, id: &str) {
        let Some(parent) = parent else { return };
        if let Some(kids) = self.children.get_mut(parent) {
            kids.remove(id);
            if kids.is_empty() {
                self.children.remove(parent);
            }
        }
    }

    pub(super) fn debug_check(&self) {
        debug_assert_eq!(self.ids.len(), self.parent_ids.len());
        debug_assert_eq!(self.ids.len(), self.row_of.len());
        debug_assert_eq!(self.vectors.len(), self.ids.len() * self.dim.unwrap_or(0));
    }
}
