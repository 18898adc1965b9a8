//! Annoy files cross between flowmesh and Spotify's Python `annoy` (1.17.3) both ways: Python
//! reads what `write_index` writes and finds what annoy-rs finds in it, and `AnnoyFile` reads
//! what Python builds and finds what Python finds in it; and flowmesh's trees find as much as
//! Annoy's own.
//!
//! "Finds the same" has one exception, which [`Reference`] accounts for: annoy-rs pops queue
//! entries of equal priority in another order than Annoy, so where `search_k` ends the search
//! in the middle of such a tie the two may collect different candidates. Python's answers are
//! checked against Annoy's algorithm run here on the file's bytes, and annoy-rs's against
//! Python's wherever the answer does not depend on that order.
//!
//! Needs `FLOWMESH_ANNOY_PYTHON`: the python of the venv that `scripts/annoy-venv.sh` makes
//! (`scripts/test.sh` sets it). The Python side is `annoy_interop.py` beside this file.
#![allow(clippy::unwrap_used)]

use std::collections::BinaryHeap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flowmesh_indexer::{write_index, AnnoyFile, AnnoyMetric};
use flowmesh_shared::rng::SplitMix64;
use serde_json::{json, Value};

const METRICS: [AnnoyMetric; 2] = [AnnoyMetric::Angular, AnnoyMetric::Euclidean];
const DIM: usize = 32;

/// Runs `annoy_interop.py` with `request` on stdin; its JSON answer.
fn python(request: &Value) -> Value {
    let python = std::env::var_os("FLOWMESH_ANNOY_PYTHON").unwrap_or_else(|| {
        panic!(
            "FLOWMESH_ANNOY_PYTHON is not set: it names the python with Spotify's annoy that \
             this test compares against; run `export FLOWMESH_ANNOY_PYTHON=$(scripts/annoy-venv.sh \
             | tail -n 1)` (scripts/test.sh does)"
        )
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/annoy_interop.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.to_string_lossy()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "annoy_interop.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Python's annoy builds `rows` into `path` with `trees` trees and `seed`; its answer.
fn python_build(
    path: &Path,
    metric: AnnoyMetric,
    rows: &[Vec<f32>],
    trees: usize,
    seed: u64,
) -> Value {
    python(&json!({
        "action": "build",
        "path": path,
        "dim": DIM,
        "metric": metric.as_str(),
        "vectors": rows,
        "trees": trees,
        "seed": seed,
    }))
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-annoy-interop-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` rows around `clusters` centres (unit spread around centres of spread `scale`), and
/// `queries` queries, half near rows, half anywhere.
fn data(
    seed: u64,
    (n, queries): (usize, usize),
    clusters: usize,
    scale: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut gen = SplitMix64::new(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..DIM).map(|_| scale * gen.normal()).collect())
        .collect();
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let centre = &centres[i % clusters];
            centre.iter().map(|c| c + gen.normal()).collect()
        })
        .collect();
    let queries = (0..queries)
        .map(|q| {
            if q % 2 == 0 {
                let row = &rows[gen.below(n)];
                row.iter().map(|x| x + 0.1 * gen.normal()).collect()
            } else {
                (0..DIM).map(|_| gen.normal()).collect()
            }
        })
        .collect();
    (rows, queries)
}

/// Python's answers to `queries` on the file at `path`, and its item vectors.
fn python_search(
    path: &Path,
    metric: AnnoyMetric,
    queries: &[Vec<f32>],
    n: usize,
    search_k: Option<usize>,
    items: usize,
) -> Value {
    python(&json!({
        "action": "search",
        "path": path,
        "dim": DIM,
        "metric": metric.as_str(),
        "queries": queries,
        "n": n,
        "search_k": search_k.map_or(-1, |k| k as i64),
        "items": (0..items).collect::<Vec<_>>(),
    }))
}

/// Annoy's search as `annoylib.h` runs it (`_get_all_nns`), over the raw bytes of a file.
///
/// Annoy keeps its queue in a `std::priority_queue` of `(priority, node id)` pairs, so of two
/// nodes with the same priority the larger id pops first; annoy-rs 0.1 pops them in its heap's
/// order. Priorities tie often (below a plane crossed on the wrong side, both children inherit
/// the parent's priority), and when `search_k` stops the search inside such a tie the two
/// libraries can collect different candidates. This reference tells which answers do not depend
/// on that order: those must be the same in Python and here.
struct Reference {
    bytes: Vec<u8>,
    metric: AnnoyMetric,
    node_size: usize,
    items: usize,
    roots: Vec<usize>,
}

/// A queue priority, ordered as Annoy's floats (no NaN arises from finite inputs).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Priority(f32);

impl Eq for Priority {}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Reference {
    fn load(path: &Path, metric: AnnoyMetric) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let node_size = DIM * 4
            + if metric == AnnoyMetric::Angular {
                12
            } else {
                16
            };
        let nodes = bytes.len() / node_size;
        let mut reference = Self {
            bytes,
            metric,
            node_size,
            items: 0,
            roots: Vec::new(),
        };
        // Annoy's loader: the trailing nodes with the last node's count, less the last tree's
        // root when it precedes the copies.
        let count = reference.descendants(nodes - 1);
        let mut roots: Vec<usize> = (0..nodes)
            .rev()
            .take_while(|&i| reference.descendants(i) == count)
            .collect();
        if roots.len() > 1
            && reference.child(roots[0], 0) == reference.child(roots[roots.len() - 1], 0)
        {
            roots.pop();
        }
        reference.items = count;
        reference.roots = roots;
        reference
    }

    fn word(&self, node: usize, at: usize) -> [u8; 4] {
        let start = node * self.node_size + at;
        self.bytes[start..start + 4].try_into().unwrap()
    }

    fn descendants(&self, node: usize) -> usize {
        i32::from_le_bytes(self.word(node, 0)) as usize
    }

    fn children_at(&self) -> usize {
        if self.metric == AnnoyMetric::Angular {
            4
        } else {
            8
        }
    }

    fn child(&self, node: usize, k: usize) -> usize {
        i32::from_le_bytes(self.word(node, self.children_at() + 4 * k)) as usize
    }

    fn vector(&self, node: usize) -> Vec<f32> {
        let at = self.children_at() + 8;
        (0..DIM)
            .map(|z| f32::from_le_bytes(self.word(node, at + 4 * z)))
            .collect()
    }

    fn margin(&self, node: usize, query: &[f32]) -> f32 {
        let dot = self
            .vector(node)
            .iter()
            .zip(query)
            .fold(0.0_f32, |s, (a, b)| s + a * b);
        match self.metric {
            AnnoyMetric::Angular => dot,
            AnnoyMetric::Euclidean => f32::from_le_bytes(self.word(node, 4)) + dot,
        }
    }

    /// The items Annoy collects for `query` with `search_k`, and whether the collection
    /// depends on the order of equal priorities (a tie at the top of the queue on the way,
    /// unless every item was collected anyway).
    fn candidates(&self, query: &[f32], search_k: usize) -> (Vec<usize>, bool) {
        let mut queue: BinaryHeap<(Priority, usize)> = self
            .roots
            .iter()
            .map(|&r| (Priority(f32::INFINITY), r))
            .collect();
        let mut found = Vec::new();
        let mut tied = false;
        while found.len() < search_k {
            let Some((Priority(d), i)) = queue.pop() else {
                break;
            };
            // The roots all pop before their children, whatever their order.
            tied |= d.is_finite() && queue.peek().is_some_and(|(p, _)| p.0 == d);
            let count = self.descendants(i);
            if count == 1 && i < self.items {
                found.push(i);
            } else if count <= DIM + 2 {
                found.extend((0..count).map(|k| self.child(i, k)));
            } else {
                let m = self.margin(i, query);
                queue.push((Priority(d.min(m)), self.child(i, 1)));
                queue.push((Priority(d.min(-m)), self.child(i, 0)));
            }
        }
        found.sort_unstable();
        found.dedup();
        found.retain(|&i| self.descendants(i) == 1);
        let everything = found.len() == self.items;
        (found, tied && !everything)
    }

    /// Annoy's distance from `query` to item `i`, in f64.
    fn distance(&self, i: usize, query: &[f32]) -> f64 {
        let v = self.vector(i);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum()
        };
        match self.metric {
            AnnoyMetric::Angular => {
                let norms = dot(&v, &v) * dot(query, query);
                let d = if norms > 0.0 {
                    2.0 - 2.0 * dot(&v, query) / norms.sqrt()
                } else {
                    2.0
                };
                d.max(0.0).sqrt()
            }
            AnnoyMetric::Euclidean => v
                .iter()
                .zip(query)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum::<f64>()
                .sqrt(),
        }
    }
}

/// Asserts that `got` and `want` name the same items in the same order, except that two items
/// at equal distance (up to float rounding) may swap.
fn assert_same_ranking(
    what: &str,
    reference: &Reference,
    query: &[f32],
    got: &[usize],
    want: &[usize],
) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        let (dg, dw) = (reference.distance(*g, query), reference.distance(*w, query));
        assert!(
            g == w || (dg - dw).abs() <= 1e-5 * dw.max(1.0),
            "{what}: {got:?} vs {want:?} (item {g} at {dg}, item {w} at {dw})"
        );
    }
}

/// Checks `file`'s answers against Python's (`py`, for the same queries, `n` and `search_k`):
/// Python's are Annoy's search on this file (the reference's, ranked), and `file` answers as
/// Python does wherever the answer does not depend on the order of equal priorities. Returns
/// how many answers did (and were not compared).
fn assert_same_answers(
    what: &str,
    file: &AnnoyFile,
    reference: &Reference,
    queries: &[Vec<f32>],
    (n, search_k): (usize, Option<usize>),
    py: &Value,
) -> usize {
    let results = py["results"].as_array().unwrap();
    assert_eq!(results.len(), queries.len());
    let mut tie_dependent = 0;
    for (q, (query, want)) in queries.iter().zip(results).enumerate() {
        let what = format!("{what}, search_k {search_k:?}, query {q}");
        let python: Vec<usize> = serde_json::from_value(want["ids"].clone()).unwrap();
        let budget = search_k.unwrap_or(n * reference.roots.len());
        let (mut candidates, tied) = reference.candidates(query, budget);
        candidates.sort_by(|a, b| {
            let (da, db) = (reference.distance(*a, query), reference.distance(*b, query));
            da.total_cmp(&db).then(a.cmp(b))
        });
        candidates.truncate(n);
        assert_same_ranking(
            &format!("{what}: Python vs Annoy's search"),
            reference,
            query,
            &python,
            &candidates,
        );
        let got = file.search(query, n, search_k).unwrap();
        let distances: Vec<f64> = serde_json::from_value(want["distances"].clone()).unwrap();
        if tied {
            tie_dependent += 1;
            continue;
        }
        let ids: Vec<usize> = got.iter().map(|h| h.0 as usize).collect();
        assert_same_ranking(
            &format!("{what}: here vs Python"),
            reference,
            query,
            &ids,
            &python,
        );
        assert_eq!(distances.len(), python.len(), "{what}: one distance per id");
        for ((id, d), (py_id, w)) in got.iter().zip(python.iter().zip(&distances)) {
            if *id as usize == *py_id {
                assert!(
                    (f64::from(*d) - w).abs() <= 1e-4 * w.max(1.0),
                    "{what}: distance {d} here, {w} in Python"
                );
            }
        }
    }
    tie_dependent
}

/// The `search_k`s compared: Annoy's default, a short and a long search, and one that
/// collects every item.
const SEARCH_KS: [Option<usize>; 4] = [None, Some(30), Some(300), Some(1_000_000)];

/// Compares `file` with Python on the file at `path` for every `search_k`: at least 3 in 4 of
/// all the answers must be compared exactly (the others depend on the order of equal
/// priorities; there are none with the default `search_k` on this data).
fn compare_with_python(
    what: &str,
    path: &Path,
    file: &AnnoyFile,
    metric: AnnoyMetric,
    rows: &[Vec<f32>],
    queries: &[Vec<f32>],
) {
    let reference = Reference::load(path, metric);
    assert_eq!(reference.items, file.len());
    assert_eq!(reference.roots.len(), file.num_trees());
    let mut tie_dependent = 0;
    for search_k in SEARCH_KS {
        let py = python_search(path, metric, queries, 10, search_k, rows.len());
        assert_eq!(py["n_items"], rows.len(), "{what}");
        assert_eq!(py["n_trees"], file.num_trees(), "{what}");
        let tied = assert_same_answers(what, file, &reference, queries, (10, search_k), &py);
        println!(
            "{what}, search_k {search_k:?}: {} of {} answers compared",
            queries.len() - tied,
            queries.len()
        );
        tie_dependent += tied;
        // Python reads back exactly the vectors the file holds.
        let vectors: Vec<Vec<f32>> = serde_json::from_value(py["vectors"].clone()).unwrap();
        assert_eq!(vectors, rows, "{what}: item vectors");
    }
    assert!(
        tie_dependent * 4 <= queries.len() * SEARCH_KS.len(),
        "{what}: {tie_dependent} answers depend on the order of equal priorities"
    );
}

/// For each metric: `n` rows (and 100 queries) of `data(seed, ..)`, built into a file of 10
/// trees by `build`, opened here and compared with Python's answers; `who` built it.
fn compare_files_built_by(
    who: &str,
    seed: u64,
    n: usize,
    build: impl Fn(&Path, AnnoyMetric, &[Vec<f32>]),
) {
    let dir = TempDir::new(who);
    let (rows, queries) = data(seed, (n, 100), 8, 3.0);
    for metric in METRICS {
        let path = dir.0.join(format!("{}.ann", metric.as_str()));
        build(&path, metric, &rows);
        let file = AnnoyFile::open(&path, DIM, metric).unwrap();
        assert_eq!((file.len(), file.num_trees()), (rows.len(), 10));
        let what = format!("{who}'s {} file", metric.as_str());
        compare_with_python(&what, &path, &file, metric, &rows, &queries);
    }
}

#[test]
fn python_annoy_reads_flowmesh_files_and_finds_what_annoy_rs_finds() {
    compare_files_built_by("flowmesh", 1, 400, |path, metric, rows| {
        write_index(path, DIM, &rows.concat(), metric, 10, 99).unwrap();
    });
}

#[test]
fn flowmesh_reads_python_annoy_files_and_finds_what_python_finds() {
    compare_files_built_by("Python", 2, 300, |path, metric, rows| {
        let built = python_build(path, metric, rows, 10, 7);
        assert_eq!(built["n_items"], rows.len());
    });
}

#[test]
fn flowmesh_trees_find_as_much_as_python_annoy_trees() {
    // The same data in both builders' files, searched the same way (annoy-rs, default
    // search_k): recall@10 against brute force within a small margin of Annoy's own.
    let dir = TempDir::new("recall");
    let (rows, queries) = data(3, (3_000, 500), 30, 3.0);
    let flat: Vec<f32> = rows.concat();
    let k = 10;
    for metric in METRICS {
        let ours = dir.0.join(format!("ours-{}.ann", metric.as_str()));
        let theirs = dir.0.join(format!("theirs-{}.ann", metric.as_str()));
        write_index(&ours, DIM, &flat, metric, 5, 1).unwrap();
        python_build(&theirs, metric, &rows, 5, 1);
        let exact = AnnoyFile::open(&ours, DIM, metric).unwrap();
        let mut recall = [0.0_f64; 2];
        for (r, path) in recall.iter_mut().zip([&ours, &theirs]) {
            let file = AnnoyFile::open(path, DIM, metric).unwrap();
            let mut hits = 0;
            for q in &queries {
                let truth: Vec<u32> = exact
                    .search(q, k, Some(usize::MAX))
                    .unwrap()
                    .iter()
                    .map(|h| h.0)
                    .collect();
                let found = file.search(q, k, None).unwrap();
                hits += found.iter().filter(|h| truth.contains(&h.0)).count();
            }
            *r = hits as f64 / (k * queries.len()) as f64;
        }
        println!(
            "{}: recall@{k} with 5 trees: flowmesh {:.3}, annoy {:.3}",
            metric.as_str(),
            recall[0],
            recall[1]
        );
        assert!(
            recall[0] >= recall[1] - 0.05,
            "{}: flowmesh's trees find less than annoy's: {:.3} vs {:.3}",
            metric.as_str(),
            recall[0],
            recall[1]
        );
    }
}
