//! The Jina side's processes: the venv's Python (made by `scripts/jina-venv.sh` when not given)
//! and the Jina Flow (`loadtests/jina/flowmesh_jina_flow.py`), started in its own process group
//! on loopback with the network guard in every process, and stopped with all its executors.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The repository this harness was built from (scripts/, loadtests/jina/).
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python: `given` (the flag or `FLOWMESH_JINA_PYTHON`), else the last line printed
/// by `scripts/jina-venv.sh` (which makes the venv the first time, then returns at once).
pub(crate) async fn python(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let script = repo().join("scripts/jina-venv.sh");
    eprintln!(
        "jina: {} (the first run installs Jina 3.34 from PyPI) ...",
        script.display()
    );
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().map(str::trim).unwrap_or_default();
    anyhow::ensure!(!last.is_empty(), "{} printed no path", script.display());
    Ok(PathBuf::from(last))
}

/// The environment of every Python process of the Jina side: loopback, no telemetry, one
/// BLAS/OpenMP thread, the guard (via `sitecustomize.py` on `PYTHONPATH`) logging to `log`.
fn jina_env(command: &mut Command, dir: &Path, log: &Path) {
    command
        .env("PYTHONPATH", dir)
        .env("FLOWMESH_NETGUARD_LOG", log)
        .env("JINA_OPTOUT_TELEMETRY", "1")
        .env("JINA_DEFAULT_HOST", "127.0.0.1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy");
}

/// What the network guard refused so far in the processes that log to `log` (none when the
/// file does not exist).
pub(crate) fn refusals(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A running Jina Flow.
pub(crate) struct JinaFlow {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT` of its HTTP gateway.
    pub(crate) base: String,
    /// `grpc://127.0.0.1:PORT` of its gRPC gateway, when started with one.
    pub(crate) grpc: Option<String>,
}

/// Which Flow to start.
pub(crate) enum Topology<'a> {
    /// Hash encoder of `dim` dimensions.
    Overhead { dim: usize },
    /// Sentencizer and MiniLM from `model_config`, `threads` intra-op threads per replica.
    Text {
        model_config: &'a Path,
        threads: usize,
    },
}

impl JinaFlow {
    /// Starts the Flow with `replicas` encoders and `shards` indexer shards, its gateway serving
    /// gRPC besides HTTP when `grpc`; its stderr goes to `stderr_log`, the guard's refusals to
    /// `guard_log`. Returns once every executor is ready.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        python: &Path,
        dir: &Path,
        topology: &Topology<'_>,
        replicas: usize,
        shards: usize,
        grpc: bool,
        stderr_log: &Path,
        guard_log: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(python);
        command
            .arg(dir.join("flowmesh_jina_flow.py"))
            .args(["flow", "--replicas", &replicas.to_string()])
            .args(["--shards", &shards.to_string()]);
        if grpc {
            command.arg("--grpc");
        }
        match topology {
            Topology::Overhead { dim } => {
                command.args(["--topology", "overhead", "--dim", &dim.to_string()]);
            }
            Topology::Text {
                model_config,
                threads,
            } => {
                command
                    .args(["--topology", "text", "--model-config"])
                    .arg(model_config)
                    .args(["--threads", &threads.to_string()]);
            }
        }
        jina_env(&mut command, dir, guard_log);
        let stderr = std::fs::File::create(stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", python.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (marker, grpc_marker) = ("jina gateway: ", "jina grpc: ");
        let ready = tokio::time::timeout(Duration::from_secs(300), async {
            let mut grpc_url = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(i) = line.find(grpc_marker) {
                    grpc_url = Some(line[i + grpc_marker.len()..].trim().to_owned());
                }
                if let Some(i) = line.find(marker) {
                    let base = line[i + marker.len()..].trim().to_owned();
                    if grpc && grpc_url.is_none() {
                        bail!("the Jina Flow named no gRPC address before its HTTP one");
                    }
                    return Ok((base, grpc_url));
                }
            }
            bail!(
                "the Jina Flow exited before it was ready (its log: {})",
                stderr_log.display()
            )
        })
        .await;
        let (base, grpc) = match ready {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                Self::kill_group(&child);
                return Err(e);
            }
            Err(_) => {
                Self::kill_group(&child);
                bail!(
                    "the Jina Flow was not ready in 5 minutes (its log: {})",
                    stderr_log.display()
                );
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            stdin,
            base,
            grpc,
        })
    }

    /// The Flow's main process (the executors and the gateway are its descendants).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn kill_group(child: &Child) {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Closes its stdin and sends SIGTERM, so that the Flow closes its executors; after 30 s,
    /// or once it exited, kills whatever is left of its process group.
    pub(crate) async fn stop(mut self) {
        drop(self.stdin.take());
        let pid = self.child.id().and_then(|p| i32::try_from(p).ok());
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill().await;
    }
}

/// Embeddings of `texts` by the Jina side's text encoder alone (`embed` of the runner).
pub(crate) async fn embed(
    python: &Path,
    dir: &Path,
    model_config: &Path,
    texts: &[String],
    guard_log: &Path,
) -> anyhow::Result<Vec<Vec<f32>>> {
    use tokio::io::AsyncWriteExt as _;
    let mut command = Command::new(python);
    command
        .arg(dir.join("flowmesh_jina_flow.py"))
        .args(["embed", "--model-config"])
        .arg(model_config);
    jina_env(&mut command, dir, guard_log);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    stdin
        .write_all(serde_json::to_string(texts)?.as_bytes())
        .await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("the Jina encoder took over 2 minutes")??;
    anyhow::ensure!(
        out.status.success(),
        "the Jina encoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
