//! Starting `flowmesh up` with the built binaries, and reading Prometheus text.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `flowmesh` binary; the service binaries must be next to it.
pub fn flowmesh() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_flowmesh"));
    for service in ["flowmesh-encoder", "flowmesh-indexer", "flowmesh-ranker"] {
        let bin = exe.with_file_name(service);
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    exe
}

/// An empty folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmesh-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An empty folder for one test holding the Flow file `flow.yml` with `yaml`: `(dir, flow)`.
pub fn flow_dir(name: &str, yaml: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let flow = dir.join("flow.yml");
    std::fs::write(&flow, yaml).unwrap();
    (dir, flow)
}

/// The mesh token every `flowmesh up` of this test binary gets (made for this run), unless the
/// test sets `FLOWMESH_MESH_TOKEN` itself.
pub fn mesh_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| format!("test-mesh-{}", uuid::Uuid::new_v4().simple()))
}

/// A client that sends [`mesh_token`] with every request: for calls straight to executors
/// (the gateway without API keys ignores it).
pub fn mesh_http() -> super::Http {
    super::Http::new().with_header("authorization", &format!("Bearer {}", mesh_token()))
}

/// A running `flowmesh up`.
pub struct Launched {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of the gateway.
    pub gateway: String,
    /// What it printed on stdout up to the gateway line.
    pub printed: Vec<String>,
    /// The rest of its stdout.
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Starts `flowmesh up` on the Flow file `flow` with its workspace in `dir/ws`, its stderr in
/// `stderr` (or dropped), and `env` added to its environment (an empty value removes the
/// variable); waits for the gateway line.
pub async fn up(
    flow: &Path,
    dir: &Path,
    env: &[(&str, String)],
    stderr: Option<std::fs::File>,
) -> Launched {
    up_limited(flow, dir, env, stderr, None).await
}

/// [`up`] with every process of the mesh limited to `max_address_space` bytes of virtual
/// memory (`prlimit --as`, inherited by the executors), for tests whose failure could be an
/// allocation without bound: it then fails the process, not the machine.
pub async fn up_limited(
    flow: &Path,
    dir: &Path,
    env: &[(&str, String)],
    stderr: Option<std::fs::File>,
    max_address_space: Option<u64>,
) -> Launched {
    up_full(flow, dir, &[], env, stderr, max_address_space).await
}

/// [`up`] with `args` added to `flowmesh up`'s command line (e.g. `--restore-from DIR`).
pub async fn up_with_args(
    flow: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
    stderr: Option<std::fs::File>,
) -> Launched {
    up_full(flow, dir, args, env, stderr, None).await
}

async fn up_full(
    flow: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
    stderr: Option<std::fs::File>,
    max_address_space: Option<u64>,
) -> Launched {
    let mut command = match max_address_space {
        Some(bytes) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--as={bytes}")).arg("--").arg(flowmesh());
            c
        }
        None => Command::new(flowmesh()),
    };
    command
        .arg("up")
        .arg(flow)
        .args(["--listen", "127.0.0.1:0", "--workspace"])
        .arg(dir.join("ws"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr.map_or_else(Stdio::null, Stdio::from))
        .env("FLOWMESH_MESH_TOKEN", mesh_token())
        .kill_on_drop(true);
    for (k, v) in env {
        if v.is_empty() {
            command.env_remove(k);
        } else {
            command.env(k, v);
        }
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    // Two minutes: the shipped Flows load real models first.
    let gateway = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push(line.clone());
            if let Some(url) = line.strip_prefix("gateway: ") {
                return url.to_owned();
            }
        }
        panic!("flowmesh up exited early: {printed:?}");
    })
    .await
    .expect("flowmesh up did not print its gateway address in 120 s");
    Launched {
        child,
        gateway,
        printed,
        lines,
    }
}

impl Launched {
    /// Sends SIGTERM and waits (30 s at most) for a successful exit.
    pub async fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id().unwrap()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stopped in time")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// The sum of the samples of `name` whose labels include every `key="value"` of `labels`, or
/// `None` when there is no such sample. `name` is matched exactly (`x_count` is not `x`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(inner) => match inner.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            let value: f64 = value.trim().parse().unwrap();
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}
