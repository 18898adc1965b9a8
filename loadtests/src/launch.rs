//! Starting the programs a benchmark measures (`flowmesh up`, or one service) and stopping them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Tells apart the workspaces of the Flows one run starts.
static NEXT_WORKSPACE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The variables that turn credentials on (docs/security.md).
const CREDENTIAL_VARIABLES: [&str; 10] = [
    "FLOWMESH_API_KEY",
    "FLOWMESH_API_KEY_FILE",
    "FLOWMESH_READ_ONLY_API_KEY",
    "FLOWMESH_READ_ONLY_API_KEY_FILE",
    "FLOWMESH_MESH_TOKEN",
    "FLOWMESH_MESH_TOKEN_FILE",
    "FLOWMESH_TLS_CERT",
    "FLOWMESH_TLS_KEY",
    "FLOWMESH_TLS_CA",
    "FLOWMESH_TLS_CLIENT_CA",
];

/// Sets `RUST_LOG=error` for a Flow's processes unless `RUST_LOG` says otherwise: the meshes
/// a benchmark measures write no access lines (docs/operations.md, what the access log costs),
/// and the warnings of their health checks while they stop stay out of the progress display.
fn quiet(command: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "error");
    }
}

/// A running program of the mesh.
pub(crate) struct Launched {
    child: Child,
    /// Its base URL: the gateway's for `flowmesh up`, the service's otherwise.
    pub(crate) base: String,
    /// Its gateway's gRPC address (`grpc://HOST:PORT`), when started with one.
    pub(crate) grpc: Option<String>,
    _workspace: Option<TempDir>,
}

/// The gateway a benchmark measures: one given, or a Flow started here.
pub(crate) struct Gateway {
    /// Its base URL, without a trailing `/`.
    pub(crate) base: String,
    launched: Option<Launched>,
}

impl Gateway {
    /// `given` as it is, or a Flow started here from `flow` (each process limited to
    /// `address_space` bytes when given, its executors wanting `mesh_token` when given);
    /// [`Gateway::stop`] stops what was started.
    pub(crate) async fn given_or_started(
        given: Option<&str>,
        flow: &Path,
        address_space: Option<u64>,
        mesh_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let launched = match given {
            Some(_) => None,
            None => Some(Launched::flow_limited(flow, address_space, mesh_token).await?),
        };
        let base = match (&launched, given) {
            (Some(l), _) => l.base.clone(),
            (None, g) => g.unwrap_or_default().trim_end_matches('/').to_owned(),
        };
        Ok(Self { base, launched })
    }

    pub(crate) async fn stop(self) {
        if let Some(l) = self.launched {
            l.stop().await;
        }
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name`, next to this program.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "cannot find {}; build with `cargo build --release --workspace`",
            path.display()
        );
    }
    Ok(path)
}

impl Launched {
    /// Runs `flowmesh up FLOW` on a free port with a fresh workspace, until its `gateway:` line.
    pub(crate) async fn flow(flow: &Path) -> anyhow::Result<Self> {
        Self::flow_limited(flow, None, None).await
    }

    /// [`Self::flow`], with each process of the Flow limited to `address_space` bytes of virtual
    /// memory when given (`prlimit --as`, inherited by the executors `flowmesh up` starts): a
    /// request that makes a service allocate without bound then fails that process, not the
    /// machine.
    pub(crate) async fn flow_limited(
        flow: &Path,
        address_space: Option<u64>,
        mesh_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let workspace =
            TempDir(std::env::temp_dir().join(format!("flowmesh-bench-{}", std::process::id())));
        let mut command = match address_space {
            Some(bytes) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={bytes}"))
                    .arg("--")
                    .arg(sibling("flowmesh")?);
                c
            }
            None => Command::new(sibling("flowmesh")?),
        };
        command
            .arg("up")
            .arg(flow)
            .args(["--listen", "127.0.0.1:0", "--workspace"])
            .arg(&workspace.0);
        if let Some(token) = mesh_token {
            command.env("FLOWMESH_MESH_TOKEN", token);
        }
        quiet(&mut command);
        let mut launched = Self::start(command, "gateway: ").await?;
        launched._workspace = Some(workspace);
        Ok(launched)
    }

    /// Runs `flowmesh up FLOW` on a free port with a fresh workspace, with `args` after the
    /// Flow and the variables `env`; the credential variables of this process are not passed
    /// on, so a Flow started without them runs with none.
    pub(crate) async fn flow_with(
        flow: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::up(flow, args, env, None).await
    }

    /// [`Self::flow_with`] without extra flags, the gateway serving Jina's gRPC protocol on a
    /// free port too (`--grpc-listen`); its address is [`Launched::grpc`].
    pub(crate) async fn flow_grpc(flow: &Path) -> anyhow::Result<Self> {
        let args = ["--grpc-listen", "127.0.0.1:0"].map(std::ffi::OsString::from);
        Self::up(flow, &args, &[], Some("gRPC (Jina): ")).await
    }

    /// `flowmesh up FLOW ARGS` in a fresh workspace without this process's credential
    /// variables, with `env`, until its `gateway:` line (and then the line holding `then`).
    async fn up(
        flow: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
        then: Option<&str>,
    ) -> anyhow::Result<Self> {
        let workspace = TempDir(std::env::temp_dir().join(format!(
            "flowmesh-bench-{}-{}",
            std::process::id(),
            NEXT_WORKSPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )));
        let mut command = Command::new(sibling("flowmesh")?);
        command
            .arg("up")
            .arg(flow)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--workspace"])
            .arg(&workspace.0);
        for var in CREDENTIAL_VARIABLES {
            command.env_remove(var);
        }
        quiet(&mut command);
        command.envs(env.iter().copied());
        let mut launched = Self::start_with(command, "gateway: ", then).await?;
        launched._workspace = Some(workspace);
        Ok(launched)
    }

    /// Runs `flowmesh up FLOW` on a free port in `workspace`, which the caller owns (and may
    /// hand to the next Flow: a Flow of the same name finds its executors' data there again).
    /// Its processes log errors only, unless `RUST_LOG` says otherwise (the warnings of its
    /// health checks while it stops would cut through the progress display).
    pub(crate) async fn flow_at(flow: &Path, workspace: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(sibling("flowmesh")?);
        command
            .arg("up")
            .arg(flow)
            .args(["--listen", "127.0.0.1:0", "--workspace"])
            .arg(workspace);
        quiet(&mut command);
        Self::start(command, "gateway: ").await
    }

    /// Runs the service `binary` with `args` on a free port, until its `listening on` line.
    pub(crate) async fn service(binary: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut command = Command::new(sibling(binary)?);
        command.args(args).args(["--listen", "127.0.0.1:0"]);
        Self::start(command, "listening on ").await
    }

    /// Runs the service `binary` with `args` like [`Self::service`]; `workspace`, a directory
    /// the caller named in `args`, is removed when the service is dropped.
    pub(crate) async fn service_in(
        binary: &str,
        args: &[String],
        workspace: PathBuf,
    ) -> anyhow::Result<Self> {
        let workspace = TempDir(workspace);
        let mut launched = Self::service(binary, args).await?;
        launched._workspace = Some(workspace);
        Ok(launched)
    }

    /// Starts `command` and reads its stdout until a line holding `marker`, followed by the URL.
    async fn start(command: Command, marker: &str) -> anyhow::Result<Self> {
        Self::start_with(command, marker, None).await
    }

    /// [`Self::start`]; with `then`, reads on until a line holding `then` too, followed by the
    /// gRPC address.
    async fn start_with(
        mut command: Command,
        marker: &str,
        then: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the program to measure")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (base, grpc) = tokio::time::timeout(Duration::from_secs(600), async {
            let mut base = None;
            while let Some(line) = lines.next_line().await? {
                let wanted = if base.is_none() { Some(marker) } else { then };
                let Some(wanted) = wanted else { break };
                if let Some(i) = line.find(wanted) {
                    let url = line[i + wanted.len()..].trim().to_owned();
                    match base {
                        None => base = Some(url),
                        Some(base) => return Ok((base, Some(url))),
                    }
                    if then.is_none() {
                        break;
                    }
                }
            }
            match base {
                Some(base) if then.is_none() => Ok((base, None)),
                _ => bail!("the program exited before it was ready"),
            }
        })
        .await
        .context("the program was not ready in 10 minutes")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            base,
            grpc,
            _workspace: None,
        })
    }

    /// The workspace this program was started in, when it was given one here.
    pub(crate) fn workspace(&self) -> Option<&Path> {
        self._workspace.as_ref().map(|w| w.0.as_path())
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (so that `flowmesh up` stops its executors too), then waits for the exit.
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
