//! Annoy files written here and searched with annoy-rs: edge cases, errors, recall, threads.

use std::fs;
use std::path::{Path, PathBuf};

use flowmesh_shared::rng::SplitMix64;

use super::layout::{get_i32, Layout};
use super::{write_index, AnnoyFile, AnnoyMetric};

const METRICS: [AnnoyMetric; 2] = [AnnoyMetric::Angular, AnnoyMetric::Euclidean];

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-annoy-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` vectors of dimension `dim` around `clusters` Gaussian centres; row-major.
fn clustered(gen: &mut SplitMix64, n: usize, dim: usize, clusters: usize, spread: f32) -> Vec<f32> {
    let centres: Vec<f32> = (0..clusters * dim).map(|_| gen.normal()).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centres[(i % clusters) * dim..][..dim];
        out.extend(c.iter().map(|x| x + spread * gen.normal()));
    }
    out
}

/// Annoy's distance between two vectors.
fn distance(metric: AnnoyMetric, a: &[f32], b: &[f32]) -> f32 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    match metric {
        AnnoyMetric::Angular => {
            let norms = dot(a, a) * dot(b, b);
            let d = if norms > 0.0 {
                2.0 - 2.0 * dot(a, b) / norms.sqrt()
            } else {
                2.0
            };
            d.max(0.0).sqrt() as f32
        }
        AnnoyMetric::Euclidean => a
            .iter()
            .zip(b)
            .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
            .sum::<f64>()
            .sqrt() as f32,
    }
}

/// The exact `k` nearest rows to `query` (ties: the smaller id first).
fn exact(metric: AnnoyMetric, rows: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, r)| (distance(metric, query, r), i as u32))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|(_, i)| i).collect()
}

fn write_and_open(path: &Path, dim: usize, rows: &[f32], metric: AnnoyMetric) -> AnnoyFile {
    write_index(path, dim, rows, metric, 10, 7).unwrap();
    AnnoyFile::open(path, dim, metric).unwrap()
}

#[test]
fn annoy_file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<AnnoyFile>();
}

#[test]
fn zero_items_load_and_find_nothing() {
    let dir = TempDir::new("empty");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        let file = write_and_open(&path, 8, &[], metric);
        assert_eq!(file.len(), 0);
        assert!(file.is_empty());
        assert_eq!(file.search(&[0.5; 8], 10, None).unwrap(), vec![]);
    }
}

#[test]
fn one_item_is_found() {
    let dir = TempDir::new("one");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        let file = write_and_open(&path, 4, &[1.0, 2.0, 3.0, 4.0], metric);
        assert_eq!(file.len(), 1);
        let found = file.search(&[1.0, 2.0, 3.0, 4.5], 5, None).unwrap();
        assert_eq!(found.len(), 1, "{metric:?}");
        assert_eq!(found[0].0, 0);
        let want = distance(metric, &[1.0, 2.0, 3.0, 4.5], &[1.0, 2.0, 3.0, 4.0]);
        assert!((found[0].1 - want).abs() < 1e-4, "{metric:?} {found:?}");
    }
}

#[test]
fn fewer_items_than_a_bucket_are_all_found_in_order() {
    // K = dim + 2 = 8: six items make every root a bucket.
    let dim = 6;
    let mut gen = SplitMix64::new(11);
    let rows: Vec<f32> = (0..6 * dim).map(|_| gen.normal()).collect();
    let dir = TempDir::new("few");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        let file = write_and_open(&path, dim, &rows, metric);
        assert_eq!(file.len(), 6);
        let query = &rows[2 * dim..3 * dim];
        let found: Vec<u32> = file
            .search(query, 10, None)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(found, exact(metric, &rows, dim, query, 10), "{metric:?}");
    }
}

#[test]
fn duplicates_and_zero_vectors_split_at_random_and_stay_findable() {
    // 300 copies of one vector, 100 zero vectors: no plane separates them, so Annoy's random
    // split must kick in (else the recursion would never end).
    let dim = 5;
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows.extend([0.3_f32, -1.0, 2.0, 0.0, 0.5]);
    }
    rows.extend(std::iter::repeat_n(0.0, 100 * dim));
    let dir = TempDir::new("dups");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        let file = write_and_open(&path, dim, &rows, metric);
        assert_eq!(file.len(), 400);
        let found = file.search(&rows[..dim], 20, Some(10_000)).unwrap();
        assert_eq!(found.len(), 20, "{metric:?}");
        for (id, d) in &found {
            assert!(*id < 300, "{metric:?}: {id} is not a copy");
            assert!(d.abs() < 1e-3, "{metric:?}: distance {d} to a copy");
        }
        // Every item is reachable: a full search finds all 400.
        let all = file.search(&[1.0; 5], 400, Some(usize::MAX)).unwrap();
        let mut ids: Vec<u32> = all.iter().map(|h| h.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..400).collect::<Vec<u32>>(), "{metric:?}");
        if metric == AnnoyMetric::Angular {
            // Annoy's angular distance to a zero vector is sqrt(2).
            let zero = all.iter().find(|h| h.0 >= 300).map(|h| h.1);
            assert_eq!(zero, Some(2.0_f32.sqrt()));
        }
    }
}

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let mut gen = SplitMix64::new(3);
    let rows = clustered(&mut gen, 500, 16, 5, 0.5);
    let dir = TempDir::new("seed");
    let (a, b, c) = (dir.file("a"), dir.file("b"), dir.file("c"));
    write_index(&a, 16, &rows, AnnoyMetric::Euclidean, 4, 42).unwrap();
    write_index(&b, 16, &rows, AnnoyMetric::Euclidean, 4, 42).unwrap();
    write_index(&c, 16, &rows, AnnoyMetric::Euclidean, 4, 43).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_ne!(fs::read(&a).unwrap(), fs::read(&c).unwrap());
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 3);
}

#[test]
fn items_are_stored_as_annoy_stores_them() {
    let dim = 3;
    let rows = [1.0_f32, 2.0, 2.0, -1.0, 0.0, 0.5];
    let dir = TempDir::new("items");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        write_index(&path, dim, &rows, metric, 2, 1).unwrap();
        let bytes = fs::read(&path).unwrap();
        let layout = Layout { dim, metric };
        let size = layout.node_size().unwrap();
        // Two items; one bucket root per tree; a copy of each root.
        assert_eq!(bytes.len(), size * (2 + 2 + 2));
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            let node = &bytes[i * size..(i + 1) * size];
            assert_eq!(get_i32(node, 0), 1);
            let v: Vec<f32> = node[layout.vector_at()..]
                .chunks_exact(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            assert_eq!(v, row);
        }
        let last = &bytes[bytes.len() - size..];
        assert_eq!(get_i32(last, 0), 2, "a root counts every item");
    }
}

#[test]
fn bad_input_is_refused() {
    let dir = TempDir::new("bad-input");
    let path = dir.file("x");
    let euclidean = AnnoyMetric::Euclidean;
    for (dim, rows, trees) in [
        (0, vec![], 1),
        (3, vec![1.0; 4], 1),
        (2, vec![1.0, f32::NAN], 1),
        (2, vec![1.0, f32::INFINITY], 1),
        (2, vec![1.0, 2.0], 0),
    ] {
        let err = write_index(&path, dim, &rows, euclidean, trees, 0).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
    assert!(!path.exists());
    let file = write_and_open(&path, 2, &[1.0, 2.0], euclidean);
    let err = file.search(&[1.0], 1, None).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = file.search(&[1.0, f32::NAN], 1, None).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(file.search(&[1.0, 2.0], 1, Some(0)).unwrap(), vec![]);
    assert_eq!(file.search(&[1.0, 2.0], 0, None).unwrap(), vec![]);
}

#[test]
fn broken_files_are_errors_not_panics() {
    let dir = TempDir::new("broken");
    let dim = 8;
    let metric = AnnoyMetric::Angular;
    let size = Layout { dim, metric }.node_size().unwrap();
    let mut gen = SplitMix64::new(5);
    let rows = clustered(&mut gen, 200, dim, 4, 0.3);
    let good = dir.file("good");
    write_index(&good, dim, &rows, metric, 3, 9).unwrap();
    let bytes = fs::read(&good).unwrap();

    let missing = AnnoyFile::open(&dir.file("missing"), dim, metric).unwrap_err();
    assert!(
        format!("{missing:#}").contains("cannot open"),
        "{missing:#}"
    );

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", bytes[..bytes.len() - 5].to_vec()),
        ("short", bytes[..size / 2].to_vec()),
    ];
    // A split node pointing at itself would make a search loop; one pointing past the end would
    // read outside the file.
    let split = (200..bytes.len() / size)
        .find(|&i| get_i32(&bytes[i * size..], 0) > dim as i32 + 2)
        .unwrap();
    for (name, child) in [
        ("loop", split as i32),
        ("outside", i32::MAX),
        ("negative", -3),
    ] {
        let mut b = bytes.clone();
        b[split * size + 4..split * size + 8].copy_from_slice(&child.to_le_bytes());
        cases.push((name, b));
    }
    let mut negative = bytes;
    negative[200 * size..200 * size + 4].copy_from_slice(&(-7_i32).to_le_bytes());
    cases.push(("negative count", negative));
    for (name, content) in cases {
        let path = dir.file(name);
        fs::write(&path, content).unwrap();
        let err = AnnoyFile::open(&path, dim, metric).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("is not an annoy file"),
            "{name}: {message}"
        );
    }
    // Another dimension or metric: caught by the size, or by what the nodes then seem to hold.
    for (dim, metric) in [
        (dim + 1, metric),
        (dim, AnnoyMetric::Euclidean),
        (dim * 2, metric),
    ] {
        let err = AnnoyFile::open(&good, dim, metric).unwrap_err();
        assert!(
            format!("{err:#}").contains("is not an annoy file"),
            "{err:#}"
        );
    }
}

#[test]
fn recall_on_clustered_data() {
    // 5,000 vectors of dimension 64 in 50 Gaussian clusters; 100 queries near data points.
    let (n, dim, k, trees) = (5_000, 64, 10, 20);
    let mut gen = SplitMix64::new(2024);
    let rows = clustered(&mut gen, n, dim, 50, 0.35);
    let queries: Vec<Vec<f32>> = (0..100)
        .map(|_| {
            let i = gen.below(n);
            rows[i * dim..(i + 1) * dim]
                .iter()
                .map(|x| x + 0.05 * gen.normal())
                .collect()
        })
        .collect();
    let dir = TempDir::new("recall");
    for metric in METRICS {
        let path = dir.file(metric.as_str());
        write_index(&path, dim, &rows, metric, trees, 1).unwrap();
        let file = AnnoyFile::open(&path, dim, metric).unwrap();
        assert_eq!(file.num_trees(), trees);
        let mut hits = 0;
        for q in &queries {
            let truth = exact(metric, &rows, dim, q, k);
            let found = file.search(q, k, None).unwrap();
            hits += found.iter().filter(|h| truth.contains(&h.0)).count();
        }
        let recall = hits as f64 / (k * queries.len()) as f64;
        println!("annoy {metric:?}: recall@{k} {recall:.3} ({trees} trees, default search_k)");
        assert!(recall >= 0.9, "{metric:?}: recall@{k} {recall:.3} < 0.9");
    }
}

#[test]
fn every_thread_searches_and_dropped_files_release_their_handles() {
    use std::sync::mpsc::channel;
    use std::sync::Arc;

    let dim = 16;
    let mut gen = SplitMix64::new(8);
    let rows = Arc::new(clustered(&mut gen, 1_000, dim, 10, 0.4));
    let dir = TempDir::new("threads");
    let file = Arc::new(write_and_open(
        &dir.file("a"),
        dim,
        &rows,
        AnnoyMetric::Euclidean,
    ));
    let other = Arc::new(write_and_open(
        &dir.file("b"),
        dim,
        &rows,
        AnnoyMetric::Euclidean,
    ));
    let want = file.search(&rows[..dim], 5, None).unwrap();
    assert_eq!(want[0].0, 0);
    let (id, other_id) = (file.id(), other.id());

    let (report_tx, report_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let worker = {
        let (file, other, rows) = (Arc::clone(&file), Arc::clone(&other), Arc::clone(&rows));
        std::thread::spawn(move || {
            let query = &rows[..dim];
            let found = file.search(query, 5, None).unwrap();
            other.search(query, 5, None).unwrap();
            let mut held = super::file::handles_on_this_thread();
            held.sort_unstable();
            report_tx.send((found, held)).unwrap();
            drop(file);
            go_rx.recv().unwrap();
            // `file` is gone everywhere now: the next search here releases its handle.
            other.search(query, 5, None).unwrap();
            super::file::handles_on_this_thread()
        })
    };
    let (found, held) = report_rx.recv().unwrap();
    assert_eq!(found, want, "the same answers on every thread");
    assert_eq!(held, vec![id, other_id]);
    assert!(super::file::handles_on_this_thread().contains(&id));
    // The worker dropped its reference first, so this is the last one: the handle on this
    // thread goes at once.
    while Arc::strong_count(&file) > 1 {
        std::thread::yield_now();
    }
    drop(file);
    assert!(!super::file::handles_on_this_thread().contains(&id));
    go_tx.send(()).unwrap();
    let held = worker.join().unwrap();
    assert_eq!(
        held,
        vec![other_id],
        "the dropped file's handle is released"
    );
}

#[test]
fn replacing_the_path_does_not_change_an_open_file() {
    let dim = 8;
    let mut gen = SplitMix64::new(21);
    let old_rows = clustered(&mut gen, 300, dim, 3, 0.5);
    let new_rows = clustered(&mut gen, 50, dim, 3, 0.5);
    let dir = TempDir::new("replace");
    let path = dir.file("index");
    let old = write_and_open(&path, dim, &old_rows, AnnoyMetric::Angular);
    // An atomic rebuild renames a new file over the path while the old one is served.
    write_index(&path, dim, &new_rows, AnnoyMetric::Angular, 10, 1).unwrap();
    let query = &old_rows[..dim];
    let on_new_thread = std::thread::scope(|s| {
        s.spawn(|| old.search(query, 400, Some(usize::MAX)).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(
        on_new_thread.len(),
        300,
        "the new thread mapped the old file"
    );
    fs::remove_file(&path).unwrap();
    let after_delete = std::thread::scope(|s| {
        s.spawn(|| old.search(query, 400, Some(usize::MAX)).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(after_delete, on_new_thread);
}

/// Build time of a file the size of a real shard: `cargo test --release -p flowmesh-indexer
/// --lib -- --ignored --nocapture annoy_build_time`.
#[test]
#[ignore = "a timing, not a check: run it in release mode"]
fn annoy_build_time_100k_384() {
    let (n, dim, trees) = (100_000, 384, 10);
    let mut gen = SplitMix64::new(77);
    let rows = clustered(&mut gen, n, dim, 1_000, 0.5);
    let dir = TempDir::new("build-time");
    let path = dir.file("index");
    let started = std::time::Instant::now();
    write_index(&path, dim, &rows, AnnoyMetric::Angular, trees, 1).unwrap();
    let built = started.elapsed();
    let started = std::time::Instant::now();
    let file = AnnoyFile::open(&path, dim, AnnoyMetric::Angular).unwrap();
    let opened = started.elapsed();
    let started = std::time::Instant::now();
    for i in 0..100 {
        let row = &rows[i * 997 * dim..][..dim];
        assert_eq!(file.search(row, 10, None).unwrap()[0].0, (i * 997) as u32);
    }
    let searched = started.elapsed() / 100;
    println!(
        "annoy {n} x {dim}, {trees} trees, {} threads: built in {built:.2?} ({} MB), opened in \
         {opened:.2?}, {searched:.2?} a search (k 10, default search_k)",
        std::thread::available_parallelism().map_or(1, |p| p.get()),
        fs::metadata(&path).unwrap().len() / 1_000_000
    );
}
