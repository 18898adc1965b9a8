//! A damaged Annoy file fails the search instead of answering from the fresh entries alone.

use std::fs::OpenOptions;

use flowmesh_shared::rng::SplitMix64;

use super::*;

#[test]
fn a_search_of_a_damaged_file_is_an_error_naming_the_backend() {
    let dir = std::env::temp_dir().join(format!("flowmesh-annoy-built-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("damaged.ann");
    let dim = 8;
    let mut rng = SplitMix64::new(5);
    let vectors: Vec<f32> = (0..200 * dim).map(|_| rng.normal()).collect();
    let metric = AnnoyMetric::Euclidean;
    write_index(&path, dim, &vectors, metric, 4, 1).unwrap();
    let built = AnnoyBuilt {
        file: AnnoyFile::open(&path, dim, metric).unwrap(),
        metric,
        search_k: None,
    };
    let query = &vectors[..dim];
    assert_eq!(built.search(query, dim, 3).unwrap()[0].len(), 3);

    // Cut the file to its items: a thread that maps it now finds another file.
    // A Euclidean node: n_descendants, the plane offset, two children, then the vector.
    let items = 200 * (4 * 4 + 4 * dim);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(items as u64)
        .unwrap();
    let answer = std::thread::scope(|s| s.spawn(|| built.search(query, dim, 3)).join().unwrap());
    match answer {
        Err(IndexError::Search {
            backend, message, ..
        }) => {
            assert_eq!(backend, "annoy");
            assert!(message.contains("damaged.ann"), "{message}");
        }
        other => panic!("expected a search error, got {other:?}"),
    }
    drop(built);
    std::fs::remove_dir_all(&dir).unwrap();
}
