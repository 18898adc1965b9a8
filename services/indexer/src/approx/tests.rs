//! A built structure that fails a search fails the search: never a quieter, lower recall.

use super::*;

/// A structure whose every search fails, as an unreadable Annoy file does.
struct Broken;

impl Built for Broken {
    fn search(&self, _queries: &[f32], _dim: usize, _k: usize) -> Result<Ranked, IndexError> {
        Err(IndexError::search("annoy", "cannot map the file"))
    }
}

struct BuildsBroken;

impl Builder for BuildsBroken {
    fn name(&self) -> &'static str {
        "annoy"
    }

    fn build(&self, _input: BuildInput<'_>) -> anyhow::Result<Box<dyn Built>> {
        Ok(Box::new(Broken))
    }
}

#[test]
fn a_failed_search_of_the_built_structure_is_an_error() {
    let policy = RebuildPolicy {
        min_changes: 1,
        fraction: 0.0,
    };
    let approx = Approx::new(Metric::Cosine, Arc::new(BuildsBroken), policy);
    assert!(approx.begin_rebuild());
    approx.finish_rebuild(Rows {
        dim: Some(2),
        ids: vec!["a".to_owned()],
        parent_ids: vec![None],
        vectors: vec![1.0, 0.0],
    });
    assert_eq!(approx.build_state().built, 1);
    let query = Entry {
        id: "q",
        parent_id: None,
        vector: &[1.0, 0.0],
    };
    match approx.search(&[query], 1) {
        Err(IndexError::Search { backend, .. }) => assert_eq!(backend, "annoy"),
        other => panic!("expected the built structure's error, got {other:?}"),
    }
}
