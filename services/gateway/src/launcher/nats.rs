//! The `nats-server` that `flowmesh up` starts when the Flow has a mirrored executor: it holds
//! the replicated log of every mirrored shard (one JetStream stream each).
//!
//! Its configuration file is `{workspace}/{flow}/log/nats.conf` (mode 0600: it holds the mesh
//! token, which NATS requires of every client; the token is never on a command line), its
//! JetStream data `{workspace}/{flow}/log/js`. It listens on a loopback port it picks itself
//! (`listen: 127.0.0.1:-1`) and says which in its ports file; when it exits unasked it is started
//! again on the same port and data, with backoff, so the clients (gateway, copies) reconnect.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use flowmesh_shared::secret::Secret;

use super::process::Policy;

/// The variable naming the `nats-server` binary (default: `nats-server` on the `PATH`).
pub(super) const NATS_SERVER_ENV: &str = "FLOWMESH_NATS_SERVER";

/// How long `nats-server` may take to write its ports file.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A supervised `nats-server`.
pub(super) struct LogServer {
    url: String,
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LogServer {
    /// `nats://127.0.0.1:PORT`.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Starts `nats-server` with its configuration and data in `dir`, requiring `token`.
    pub(super) async fn start(dir: &Path, token: &Secret, policy: Policy) -> anyhow::Result<Self> {
        let binary = nats_binary()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let config = Config {
            binary,
            dir: dir.clone(),
            token: quoted(token.expose())?,
        };
        let (child, port) = config.spawn(None).await?;
        let url = format!("nats://127.0.0.1:{port}");
        let line = format!("replicated log at {url} (data in {})", dir.display());
        eprintln!("{}", flowmesh_shared::logging::forward_line("nats", &line));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(config, port, child, policy, stop_rx));
        Ok(Self { url, stop_tx, task })
    }

    /// Stops the server (SIGTERM, then SIGKILL) and restarts it no more.
    pub(super) async fn stop(self) {
        let _ = self.stop_tx.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "nats-server supervisor failed");
        }
    }
}

/// `$FLOWMESH_NATS_SERVER`, else `nats-server` on the `PATH`.
pub(super) fn nats_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{NATS_SERVER_ENV} names {}, which is not a file; mirrored executors need nats-server \
             (apt-get install nats-server)",
            path.display()
        );
    }
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "the Flow has mirrored executors (stateful, replicas >= 2), whose writes go through \
                 a replicated log in nats-server, and nats-server is not on the PATH: install it \
                 (apt-get install nats-server) or name it with {NATS_SERVER_ENV}"
            )
        })
}

/// `value` as a quoted NATS configuration string. Control characters are refused: NATS would
/// read them as the end of the value.
fn quoted(value: &str) -> anyhow::Result<String> {
    if value.chars().any(char::is_control) {
        bail!("the mesh token holds a control character; NATS cannot be configured with it");
    }
    Ok(format!(
        "\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

struct Config {
    binary: PathBuf,
    dir: PathBuf,
    /// The token, quoted for the configuration file.
    token: String,
}

impl Config {
    /// Writes the configuration (on `port`, or a port the server picks) and starts the server;
    /// answers once it has written its ports file.
    async fn spawn(&self, port: Option<u16>) -> anyhow::Result<(Child, u16)> {
        let ports = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports)
            .with_context(|| format!("cannot create {}", ports.display()))?;
        let listen = port.map_or_else(|| "127.0.0.1:-1".to_owned(), |p| format!("127.0.0.1:{p}"));
        let text = format!(
            "# Written by flowmesh up: the replicated log of the Flow's mirrored executors.\n\
             listen: {listen}\n\
             ports_file_dir: {}\n\
             max_payload: 8MB\n\
             authorization {{ token: {} }}\n\
             jetstream {{ store_dir: {} }}\n",
            quoted(&ports.display().to_string())?,
            self.token,
            quoted(&self.dir.join("js").display().to_string())?,
        );
        let conf = self.dir.join("nats.conf");
        write_private(&conf, text.as_bytes())?;
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{}", flowmesh_shared::logging::forward_line("nats", &line));
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = read_port(&ports) {
                return Ok((child, port));
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("nats-server exited while starting ({status}); its log is above");
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "nats-server did not write its ports file in {}s; its log is above",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes `bytes` to `path`, readable by this user only (the file holds the mesh token).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("conf.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The client port in the ports file `nats-server` writes to `dir` (`{"nats": ["nats://127.0.0.1:PORT"], ...}`).
fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"]
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find_map(|url| url.rsplit(':').next()?.parse().ok())
}

/// Restarts the server on `port` whenever it exits unasked (or a restart fails), with backoff,
/// until stopped or until it exited `policy.restart_limit` times within `policy.restart_window`.
async fn supervise(
    config: Config,
    port: u16,
    child: Child,
    policy: Policy,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut crashes: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut backoff = policy.backoff_initial;
    let mut child = Some(child);
    loop {
        let exit = match child.as_mut() {
            Some(c) => tokio::select! {
                exit = c.wait() => exit.map_or_else(|e| e.to_string(), |s| s.to_string()),
                () = stopped(&mut stop_rx) => {
                    terminate(c).await;
                    return;
                }
            },
            None => "not started".to_owned(),
        };
        let now = Instant::now();
        crashes.retain(|t| now.duration_since(*t) < policy.restart_window);
        if crashes.is_empty() {
            backoff = policy.backoff_initial;
        }
        crashes.push_back(now);
        if crashes.len() >= policy.restart_limit as usize {
            tracing::error!(
                exit = %exit,
                "nats-server exited {} times within {}s; not restarted again: writes to mirrored \
                 executors fail until flowmesh up is restarted",
                crashes.len(),
                policy.restart_window.as_secs()
            );
            return;
        }
        tracing::warn!(exit = %exit, "nats-server exited; restarting it on port {port}");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop_rx) => return,
        }
        backoff = (backoff * 2).min(policy.backoff_max);
        child = match config.spawn(Some(port)).await {
            Ok((restarted, _)) => {
                tracing::info!("nats-server restarted on port {port}");
                Some(restarted)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot restart nats-server");
                None
            }
        };
    }
}

/// Resolves once the server is to stop.
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

/// SIGTERM (nats-server flushes JetStream and exits), SIGKILL after 10 s.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_nats() {
        assert_eq!(quoted("abc").unwrap(), "\"abc\"");
        assert_eq!(quoted("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert!(quoted("a\nb").is_err());
    }

    #[test]
    fn the_port_is_read_from_the_ports_file() {
        let dir = std::env::temp_dir().join(format!("flowmesh-nats-ports-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_port(&dir), None);
        std::fs::write(
            dir.join("nats-server_12.ports"),
            r#"{"nats": ["nats://127.0.0.1:4567"], "monitoring": []}"#,
        )
        .unwrap();
        assert_eq!(read_port(&dir), Some(4567));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
