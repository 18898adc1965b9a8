//! What the Jina client tests share: the repository's root and the venv with Jina's client.

use std::path::PathBuf;
use std::process::Stdio;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python: `FLOWMESH_JINA_PYTHON` (set by the test command), else made now by
/// `scripts/jina-venv.sh`.
pub async fn jina_python() -> String {
    if let Ok(p) = std::env::var("FLOWMESH_JINA_PYTHON") {
        return p;
    }
    let out = tokio::process::Command::new(repo().join("scripts/jina-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run scripts/jina-venv.sh");
    assert!(out.status.success(), "scripts/jina-venv.sh failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}
