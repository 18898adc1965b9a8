//! Searching an Annoy file with `annoy-rs` from any thread.
//!
//! `annoy_rs::AnnoyIndex` holds its memory map in an `Rc`, so it is neither `Send` nor `Sync`:
//! every thread that searches an [`AnnoyFile`] maps the file itself, once, into a thread-local
//! table keyed by the file's unique id. A dropped file's handles are released by the dropping
//! thread at once, and by every other thread at its next search (or when it exits).
//!
//! `annoy-rs` reads the map through raw pointers without bounds checks, so a file is checked
//! node by node before any handle is made: a file that passes cannot make a search read outside
//! the map or loop.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use annoy_rs::{AnnoyIndex, AnnoyIndexSearchApi, IndexType};
use anyhow::{anyhow, Context};

use super::layout::{get_i32, Layout, WORD};
use super::AnnoyMetric;

/// An Annoy file opened for searching from any thread.
///
/// The file stays open while the value lives, and every thread's handle maps that open file
/// (through `/proc/self/fd` on Linux), so replacing or deleting the path afterwards, as an
/// atomic rebuild does, changes nothing for it. Rewriting the file in place is not supported.
#[derive(Debug)]
pub struct AnnoyFile {
    shared: Arc<Shared>,
    layout: Layout,
    len: usize,
    roots: usize,
}

/// What the thread-local handles need; its `Weak` in their table says whether it still lives.
#[derive(Debug)]
struct Shared {
    id: u64,
    /// Kept open so that every handle maps this very file.
    _file: File,
    /// The path each thread's `annoy-rs` handle loads.
    source: String,
    path: PathBuf,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // After the last strong reference is gone: threads that see the new count find this
        // file dead and release their handles.
        DROPPED.fetch_add(1, Ordering::Release);
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// How many `AnnoyFile`s have been dropped: a thread prunes its table when it changes.
static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Handles {
    dropped_seen: u64,
    open: HashMap<u64, (Weak<Shared>, AnnoyIndex)>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

impl AnnoyFile {
    /// Opens the Annoy file at `path`, of vectors of dimension `dim` compared by `metric`
    /// (the format records neither). Errors, with the path and the reason: the file is
    /// missing or unreadable, empty, not a whole number of nodes of this dimension and metric,
    /// or holds a node that points outside the file.
    pub fn open(path: &Path, dim: usize, metric: AnnoyMetric) -> anyhow::Result<Self> {
        let layout = Layout { dim, metric };
        let node_size = match layout.node_size() {
            Some(size) if dim > 0 => size,
            _ => return Err(anyhow!("invalid annoy dimension {dim}")),
        };
        let file = File::open(path)
            .with_context(|| format!("cannot open annoy file {}", path.display()))?;
        let shape = inspect(&file, layout, node_size).with_context(|| {
            format!(
                "{} is not an annoy file of dimension {dim} ({})",
                path.display(),
                metric.as_str()
            )
        })?;
        let source = handle_source(&file, path)?;
        let opened = Self {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                _file: file,
                source,
                path: path.to_owned(),
            }),
            layout,
            len: shape.items,
            roots: shape.roots,
        };
        // Map it on this thread now, so that a file annoy-rs cannot load fails here.
        opened.with_index(|_| ())?;
        Ok(opened)
    }

    /// The number of items (Annoy's `get_n_items`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of roots Annoy finds (its `get_n_trees`): the default `search_k` is `n`
    /// times this.
    pub fn num_trees(&self) -> usize {
        self.roots
    }

    /// The `n` items nearest to `query`, nearest first, with Annoy's distances (angular:
    /// `sqrt(2 - 2 cos)`; Euclidean: L2). `search_k` is how many candidates to collect before
    /// ranking them; `None` is Annoy's default, `n` times [`Self::num_trees`], and `Some(0)`
    /// collects none, as in Annoy.
    ///
    /// Errors: `InvalidInput` for a query of another dimension or with a NaN or infinite
    /// value; the I/O error when this thread cannot map the file.
    pub fn search(
        &self,
        query: &[f32],
        n: usize,
        search_k: Option<usize>,
    ) -> io::Result<Vec<(u32, f32)>> {
        if query.len() != self.layout.dim {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "query of dimension {}, the index holds dimension {}",
                    query.len(),
                    self.layout.dim
                ),
            ));
        }
        if query.iter().any(|x| !x.is_finite()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "query with a NaN or infinite value",
            ));
        }
        let search_k = search_k.unwrap_or_else(|| n.saturating_mul(self.roots));
        if n == 0 || search_k == 0 || self.len == 0 {
            return Ok(Vec::new());
        }
        // No search collects more than every item once per root, and annoy-rs reserves room
        // for `search_k` up front: capping it there changes no answer.
        let search_k = search_k.min(self.len.saturating_mul(self.roots));
        let search_k = i32::try_from(search_k).unwrap_or(i32::MAX);
        let found = self.with_index(|index| index.get_nearest(query, n, search_k, true))?;
        Ok(found
            .id_list
            .iter()
            .zip(&found.distance_list)
            .filter_map(|(&id, &distance)| {
                // annoy-rs takes the square root of a slightly negative angular distance (an
                // exact match) to NaN; Annoy clamps it to 0 first.
                let distance = if distance.is_nan() { 0.0 } else { distance };
                Some((u32::try_from(id).ok()?, distance))
            })
            .collect())
    }

    /// Runs `search` on this thread's handle, mapping the file first if this thread has none.
    fn with_index<R>(&self, search: impl Fn(&AnnoyIndex) -> R) -> io::Result<R> {
        let in_table = HANDLES.try_with(|cell| {
            let Ok(mut handles) = cell.try_borrow_mut() else {
                return None;
            };
            let handles = &mut *handles;
            let dropped = DROPPED.load(Ordering::Acquire);
            if dropped != handles.dropped_seen {
                handles.open.retain(|_, (file, _)| file.strong_count() > 0);
                handles.dropped_seen = dropped;
            }
            let index = match handles.open.entry(self.shared.id) {
                Entry::Occupied(entry) => &entry.into_mut().1,
                Entry::Vacant(entry) => match self.load() {
                    Ok(index) => &entry.insert((Arc::downgrade(&self.shared), index)).1,
                    Err(e) => return Some(Err(e)),
                },
            };
            Some(Ok(search(index)))
        });
        match in_table {
            Ok(Some(result)) => result,
            // The table is gone (thread exit) or in use: a handle for this call only.
            Ok(None) | Err(_) => Ok(search(&self.load()?)),
        }
    }

    fn load(&self) -> io::Result<AnnoyIndex> {
        let index_type = match self.layout.metric {
            AnnoyMetric::Angular => IndexType::Angular,
            AnnoyMetric::Euclidean => IndexType::Euclidean,
        };
        let index =
            AnnoyIndex::load(self.layout.dim, &self.shared.source, index_type).map_err(|e| {
                io::Error::other(format!(
                    "annoy-rs cannot load {}: {e}",
                    self.shared.path.display()
                ))
            })?;
        if index.size != self.len {
            return Err(io::Error::other(format!(
                "{} changed since it was opened: {} items, then {}",
                self.shared.path.display(),
                self.len,
                index.size
            )));
        }
        Ok(index)
    }
}

impl Drop for AnnoyFile {
    fn drop(&mut self) {
        // This thread's handle goes now; other threads' at their next search.
        let id = self.shared.id;
        let _ = HANDLES.try_with(|cell| {
            if let Ok(mut handles) = cell.try_borrow_mut() {
                handles.open.remove(&id);
            }
        });
    }
}

/// What every thread loads: the open file itself where `/proc/self/fd` shows it, else `path`
/// (which must then stay in place).
fn handle_source(file: &File, path: &Path) -> anyhow::Result<String> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        if let (Ok(via_fd), Ok(opened)) = (std::fs::metadata(&fd_path), file.metadata()) {
            if via_fd.dev() == opened.dev() && via_fd.ino() == opened.ino() {
                return Ok(fd_path);
            }
        }
    }
    let _ = file;
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("annoy-rs needs a UTF-8 path, not {}", path.display()))
}

/// What [`inspect`] learns of a valid file.
struct Shape {
    items: usize,
    roots: usize,
}

/// Checks every node of the file so that no search can leave the file or loop: bucket ids are
/// items, split children come before their parents (as Annoy writes them), and counts are not
/// negative. Finds the item count and the roots as Annoy's loader does.
fn inspect(file: &File, layout: Layout, node_size: usize) -> anyhow::Result<Shape> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Err(anyhow!("the file is empty"));
    }
    let size = node_size as u64;
    if len % size != 0 {
        return Err(anyhow!(
            "its {len} bytes are not a whole number of {node_size}-byte nodes: another \
             dimension or metric, or a truncated file"
        ));
    }
    let nodes = usize::try_from(len / size)
        .ok()
        .filter(|&n| i32::try_from(n).is_ok())
        .ok_or_else(|| anyhow!("more nodes than annoy's 32-bit ids address"))?;
    let mut last = vec![0_u8; node_size];
    file.read_exact_at(&mut last, len - size)?;
    // The last node is a root copy: its count is the item count.
    let items = usize::try_from(get_i32(&last, 0))
        .ok()
        .filter(|&m| m <= nodes)
        .ok_or_else(|| anyhow!("its last node is not a root"))?;

    let check = NodeCheck {
        layout,
        items,
        bucket: layout.max_bucket(),
    };
    // Annoy's roots: the trailing run of nodes whose count is the item count.
    let mut run = 0_usize;
    let mut run_first_child = 0_i32;
    let per_read = ((1 << 20) / node_size).max(1);
    let mut buf = vec![0_u8; per_read * node_size];
    let mut at = 0_usize;
    while at < nodes {
        let count = per_read.min(nodes - at);
        let chunk = &mut buf[..count * node_size];
        file.read_exact_at(chunk, at as u64 * size)?;
        for node in chunk.chunks_exact(node_size) {
            check.node(node, at)?;
            if get_i32(node, 0) as usize == items {
                if run == 0 {
                    run_first_child = get_i32(node, layout.children_at());
                }
                run += 1;
            } else {
                run = 0;
            }
            at += 1;
        }
    }
    debug_assert!(run >= 1, "the last node always starts or ends a run");
    // Annoy's loader drops the last tree's root, which precedes the copies, when its first
    // child equals that of the last copy.
    let roots = if run > 1 && get_i32(&last, layout.children_at()) == run_first_child {
        run - 1
    } else {
        run
    };
    Ok(Shape { items, roots })
}

struct NodeCheck {
    layout: Layout,
    items: usize,
    bucket: usize,
}

impl NodeCheck {
    fn node(&self, node: &[u8], index: usize) -> anyhow::Result<()> {
        let descendants = usize::try_from(get_i32(node, 0))
            .map_err(|_| anyhow!("node {index} has a negative descendant count"))?;
        if descendants == 1 && index < self.items {
            return Ok(()); // an item
        }
        let children_at = self.layout.children_at();
        if descendants <= self.bucket {
            for slot in 0..descendants {
                let id = get_i32(node, children_at + slot * WORD);
                if usize::try_from(id).map_or(true, |id| id >= self.items) {
                    return Err(anyhow!(
                        "bucket node {index} holds {id}, which is not an item (0..{})",
                        self.items
                    ));
                }
            }
        } else {
            for slot in 0..2 {
                let child = get_i32(node, children_at + slot * WORD);
                if usize::try_from(child).map_or(true, |child| child >= index) {
                    return Err(anyhow!(
                        "split node {index} points at node {child}, which does not come before it"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The ids of the files this thread holds a handle for.
#[cfg(test)]
pub(super) fn handles_on_this_thread() -> Vec<u64> {
    HANDLES.with(|cell| cell.borrow().open.keys().copied().collect())
}

#[cfg(test)]
impl AnnoyFile {
    pub(super) fn id(&self) -> u64 {
        self.shared.id
    }
}
