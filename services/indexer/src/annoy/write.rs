//! Writes a forest in Annoy's file format, atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::forest::{build_forest, Child, Items, Tree, TreeNode};
use super::layout::{put_f32, put_i32, Layout, WORD};
use super::AnnoyMetric;

/// Writes an Annoy index of the `n = vectors.len() / dim` items in `vectors` (row-major: item
/// `i` is row `i`) with `num_trees` trees, built deterministically from `seed`, to `path`.
///
/// The file is written to a temporary file in the same directory, flushed to disk, then renamed
/// over `path` (and the directory synced), so that `path` always holds either the old file or
/// the whole new one. The trees are built on up to as many threads as the machine has cores.
///
/// Errors: `InvalidInput` for a zero `dim`, a `vectors` length that is not a multiple of it,
/// zero trees, a NaN or infinite value, or more items or nodes than Annoy's 32-bit ids
/// address; otherwise the I/O error.
pub fn write_index(
    path: &Path,
    dim: usize,
    vectors: &[f32],
    metric: AnnoyMetric,
    num_trees: usize,
    seed: u64,
) -> io::Result<()> {
    let layout = Layout { dim, metric };
    check_input(layout, vectors, num_trees)?;
    let items = Items::new(vectors, dim, metric);
    let trees = build_forest(&items, layout.max_bucket(), num_trees, seed)?;
    let total_nodes = items.len() + trees.iter().map(|t| t.nodes.len() + 1).sum::<usize>();
    if i32::try_from(total_nodes).is_err() {
        return Err(invalid(format!(
            "the index would have {total_nodes} nodes; annoy's 32-bit ids address at most {}",
            i32::MAX
        )));
    }
    let tmp = temp_path(path)?;
    let written = write_file(&tmp, layout, &items, &trees).and_then(|()| {
        fs::rename(&tmp, path)?;
        sync_parent(path)
    });
    if written.is_err() {
        // Best effort: the temporary file is garbage either way, and the error says why.
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn check_input(layout: Layout, vectors: &[f32], num_trees: usize) -> io::Result<()> {
    let dim = layout.dim;
    if dim == 0 {
        return Err(invalid("the dimension must be at least 1".into()));
    }
    if layout.node_size().is_none() || i32::try_from(layout.max_bucket()).is_err() {
        return Err(invalid(format!("dimension {dim} is too large")));
    }
    if !vectors.len().is_multiple_of(dim) {
        return Err(invalid(format!(
            "{} values are not whole rows of dimension {dim}",
            vectors.len()
        )));
    }
    if num_trees == 0 {
        return Err(invalid("an annoy index needs at least one tree".into()));
    }
    if let Some(at) = vectors.iter().position(|x| !x.is_finite()) {
        return Err(invalid(format!(
            "item {} has a NaN or infinite value",
            at / dim
        )));
    }
    let n = vectors.len() / dim;
    if i32::try_from(n).is_err() {
        return Err(invalid(format!(
            "{n} items; annoy's 32-bit ids address at most {}",
            i32::MAX
        )));
    }
    Ok(())
}

/// A fresh name beside `path`: `.NAME.tmp-PID-N`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} names no file", path.display())))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

fn write_file(tmp: &Path, layout: Layout, items: &Items<'_>, trees: &[Tree]) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut node = NodeWriter::new(layout)?;
    for i in 0..items.len() as u32 {
        node.item(items, i);
        out.write_all(&node.bytes)?;
    }
    // Tree t's node j is file node `bases[t] + j`.
    let mut bases = Vec::with_capacity(trees.len());
    let mut next = items.len();
    for tree in trees {
        bases.push(next);
        next += tree.nodes.len();
    }
    for (tree, &base) in trees.iter().zip(&bases) {
        for tree_node in &tree.nodes {
            node.tree_node(tree_node, base);
            out.write_all(&node.bytes)?;
        }
    }
    // Annoy appends a copy of every root; readers find the roots there.
    for (tree, &base) in trees.iter().zip(&bases) {
        if let Some(root) = tree.nodes.last() {
            node.tree_node(root, base);
            out.write_all(&node.bytes)?;
        }
    }
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// Makes the rename durable: the directory entry is data too.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Encodes one node at a time into a reused buffer.
struct NodeWriter {
    layout: Layout,
    bytes: Vec<u8>,
}

impl NodeWriter {
    fn new(layout: Layout) -> io::Result<Self> {
        let size = layout
            .node_size()
            .ok_or_else(|| invalid(format!("dimension {} is too large", layout.dim)))?;
        Ok(Self {
            layout,
            bytes: vec![0; size],
        })
    }

    fn item(&mut self, items: &Items<'_>, i: u32) {
        self.bytes.fill(0);
        put_i32(&mut self.bytes, 0, 1);
        if self.layout.metric == AnnoyMetric::Angular {
            // Annoy caches the squared norm where children[0] would be.
            put_f32(&mut self.bytes, self.layout.children_at(), items.sq_norm(i));
        }
        self.put_vector(items.row(i));
    }

    /// `base`: the file index of the tree's first node.
    fn tree_node(&mut self, node: &TreeNode, base: usize) {
        self.bytes.fill(0);
        let children_at = self.layout.children_at();
        let id = |child: &Child| match *child {
            Child::Item(i) => i as i32,
            Child::Node(j) => (base + j as usize) as i32,
        };
        match node {
            TreeNode::Split {
                descendants,
                children,
                normal,
                offset,
            } => {
                put_i32(&mut self.bytes, 0, *descendants as i32);
                if let Some(at) = self.layout.offset_at() {
                    put_f32(&mut self.bytes, at, *offset);
                }
                put_i32(&mut self.bytes, children_at, id(&children[0]));
                put_i32(&mut self.bytes, children_at + WORD, id(&children[1]));
                self.put_vector(normal);
            }
            TreeNode::Bucket { items } => {
                // A root bucket holds every item, so its count is the item count, as Annoy
                // wants of a root.
                debug_assert!(items.len() <= self.layout.max_bucket());
                put_i32(&mut self.bytes, 0, items.len() as i32);
                for (k, &item) in items.iter().enumerate() {
                    put_i32(&mut self.bytes, children_at + k * WORD, item as i32);
                }
            }
        }
    }

    fn put_vector(&mut self, v: &[f32]) {
        let at = self.layout.vector_at();
        for (k, x) in v.iter().enumerate() {
            put_f32(&mut self.bytes, at + k * WORD, *x);
        }
    }
}
