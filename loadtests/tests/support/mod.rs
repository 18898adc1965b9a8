//! What the end-to-end tests of `flowmesh-bench` share: the binary (with the services it
//! starts next to it), the repository root, a bounded run of a command, and the Jina venv.

// Each test crate uses its own part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The services `flowmesh up` starts, which must sit next to `flowmesh-bench`.
const SERVICES: [&str; 4] = [
    "flowmesh",
    "flowmesh-encoder",
    "flowmesh-indexer",
    "flowmesh-ranker",
];

/// `flowmesh-bench`, after checking that the services were built next to it.
pub(crate) fn bench() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_flowmesh-bench"));
    let missing: Vec<String> = SERVICES
        .iter()
        .map(|s| exe.with_file_name(s))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: run `cargo build --workspace --bins` first"
    );
    exe
}

/// The repository's root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// What a bounded run gave: whether it exited successfully in time, and its output.
pub(crate) struct Ran {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `command` (stdin closed) to its end, killing it after `limit`.
pub(crate) fn run_bounded(command: &mut Command, limit: Duration) -> Ran {
    let stem = std::env::temp_dir().join(format!(
        "flowmesh-bench-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let (out_path, err_path) = (stem.with_extension("out"), stem.with_extension("err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let take = |p: &Path| {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        s
    };
    Ran {
        ok: status.is_some_and(|s| s.success()),
        stdout: take(&out_path),
        stderr: take(&err_path),
    }
}

/// A fresh, empty directory for `name` under the temporary directory.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmesh-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Jina venv's Python: `FLOWMESH_JINA_PYTHON`, or the last line `scripts/jina-venv.sh`
/// prints (it makes the venv the first time).
pub(crate) fn jina_python() -> String {
    std::env::var("FLOWMESH_JINA_PYTHON").unwrap_or_else(|_| {
        let ran = run_bounded(
            &mut Command::new(repo_root().join("scripts/jina-venv.sh")),
            Duration::from_secs(1800),
        );
        assert!(ran.ok, "scripts/jina-venv.sh failed:\n{}", ran.stderr);
        ran.stdout.lines().last().unwrap().trim().to_owned()
    })
}
