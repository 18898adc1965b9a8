//! Starting a Flow with `flowmesh up` for a benchmark, and stopping it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `flowmesh up`.
pub(crate) struct Launched {
    child: Child,
    /// The gateway's base URL.
    pub(crate) gateway: String,
    _workspace: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Launched {
    /// Runs `flowmesh up FLOW` (found next to this program) on a free port with a fresh
    /// workspace, and waits for its `gateway:` line.
    pub(crate) async fn start(flow: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
        let flowmesh = dir.join("flowmesh");
        if !flowmesh.is_file() {
            bail!(
                "cannot find {}; build with `cargo build --release --workspace`",
                flowmesh.display()
            );
        }
        let workspace =
            TempDir(std::env::temp_dir().join(format!("flowmesh-bench-{}", std::process::id())));
        let mut child = Command::new(&flowmesh)
            .arg("up")
            .arg(flow)
            .args(["--listen", "127.0.0.1:0", "--workspace"])
            .arg(&workspace.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", flowmesh.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let gateway = tokio::time::timeout(Duration::from_secs(600), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("gateway: ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("flowmesh up exited before its gateway was ready")
        })
        .await
        .context("flowmesh up did not become ready in 10 minutes")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            gateway,
            _workspace: workspace,
        })
    }

    /// SIGTERM, so that `flowmesh up` stops its executors too; then waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
