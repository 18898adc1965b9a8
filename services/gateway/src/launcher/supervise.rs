//! Supervision of the executor processes `flowmesh up` starts.
//!
//! Each process has a task of its own that owns its [`Child`]. When the process exits without
//! having been asked to (a crash, an abort, `kill -9`), the task starts it again with the same
//! flags, environment and workspace on the SAME address (the first start binds port 0; a
//! restart passes `--listen 127.0.0.1:PORT`), so the gateway's balancer finds it where it was.
//! Restarts wait with exponential backoff; a process that crashes `restart_limit` times within
//! `restart_window` stays down and is reported `failed`. Shutdown stops each process with
//! SIGTERM (SIGKILL after 10 s) and restarts nothing.
//!
//! What the launcher knows of each process (state, pid, restarts, last exit status, the last
//! [`LOG_LINES`](super::process::LOG_LINES) lines of its output) is kept in a [`Status`](super::process::Status) that `GET /status` shows. The
//! environment and command line are never shown: they may one day hold secrets.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use flowmesh_shared::logging::forward_line;

use super::process::{Launch, Policy, Shared, State};

/// How long a stopping process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long, once a process has exited, its output may take to be read to the end (only a
/// process it started that still holds the pipes keeps it open that long).
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// How many of a failed process's last lines its launch error repeats.
const ERROR_LINES: usize = 8;

/// A started process: its child, its address, and the tasks copying its output.
struct Started {
    child: Child,
    base: String,
    output: Output,
}

/// The tasks copying a process's stdout and stderr to this process's stderr and its log.
#[derive(Default)]
struct Output(Vec<JoinHandle<()>>);

impl Output {
    /// Waits until the output is read to its end (the process has exited and closed it), at
    /// most [`OUTPUT_GRACE`]: its last lines, why it exited, are then printed and logged.
    async fn finish(&mut self) {
        let all = futures::future::join_all(self.0.drain(..));
        let _ = tokio::time::timeout(OUTPUT_GRACE, all).await;
    }
}

/// A started, supervised executor process.
pub(super) struct Supervised {
    pub shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervised {
    pub(super) fn label(&self) -> &str {
        &self.shared.launch.label
    }

    pub(super) fn base(&self) -> &str {
        self.shared.base()
    }

    pub(super) fn state(&self) -> State {
        self.shared.status().state
    }
}

/// Why a start failed: the process exited (with `status`), or did not listen in time.
struct StartFailed {
    status: Option<ExitStatus>,
    message: String,
}

/// Starts `launch` on `127.0.0.1:0`, waits for its `listening on` line, and supervises it from
/// then on. Until `armed` is set (the whole Flow is ready), an exit is not restarted but
/// reported as [`State::Exited`], which fails the launch.
pub(super) async fn start_supervised(
    launch: Launch,
    policy: Policy,
    armed: Arc<AtomicBool>,
) -> anyhow::Result<Supervised> {
    let shared = Arc::new(Shared::new(launch));
    let started = match start(&shared, None, policy.start_timeout).await {
        Ok(started) => started,
        Err(e) => {
            let status = e
                .status
                .map_or_else(|| "no exit status".to_owned(), |s| s.to_string());
            anyhow::bail!(
                "{} ({}) {} ({status}); {}",
                shared.launch.label,
                shared.launch.binary.display(),
                e.message,
                last_lines(&shared)
            );
        }
    };
    shared.set_base(started.base.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(supervise(
        Arc::clone(&shared),
        policy,
        started,
        stop_rx,
        armed,
    ));
    Ok(Supervised {
        shared,
        stop_tx,
        task,
    })
}

/// The last lines a process logged, for an error that says why it stopped.
pub(super) fn last_lines(shared: &Shared) -> String {
    let status = shared.status();
    let lines: Vec<&str> = status
        .log
        .iter()
        .skip(status.log.len().saturating_sub(ERROR_LINES))
        .map(String::as_str)
        .collect();
    if lines.is_empty() {
        "it printed nothing".to_owned()
    } else {
        format!("its last lines:\n  {}", lines.join("\n  "))
    }
}

/// Spawns the process (on `port`, or on port 0) and waits for its `listening on` line. On a
/// failure, the process's output has been read to its end (and logged) before this returns.
async fn start(
    shared: &Arc<Shared>,
    port: Option<u16>,
    timeout: Duration,
) -> Result<Started, StartFailed> {
    let launch = &shared.launch;
    let failed = |message: String| StartFailed {
        status: None,
        message,
    };
    if let Err(e) = std::fs::create_dir_all(&launch.workspace) {
        // Let the process say what it makes of it; the line explains the rest.
        let line = format!("cannot create {}: {e}", launch.workspace.display());
        eprintln!("{}", forward_line(&launch.label, &line));
        shared.status().push_line(&line);
    }
    let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
    let mut command = Command::new(&launch.binary);
    for k in &launch.env_remove {
        command.env_remove(k);
    }
    if port.is_none() {
        command.args(&launch.first_flags);
    }
    let mut child = command
        .args(&launch.flags)
        .args(["--listen", &listen])
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot be started: {e}")))?;
    shared.status().pid = child.id();
    let mut output = Output::default();
    if let Some(stderr) = child.stderr.take() {
        output.0.push(tokio::spawn(forward(
            Arc::clone(shared),
            BufReader::new(stderr).lines(),
        )));
    }
    let Some(stdout) = child.stdout.take() else {
        return Err(failed("has no stdout".into()));
    };
    let mut lines = BufReader::new(stdout).lines();
    let listening = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(i) = line.find("listening on ") {
                return Some(line[i + "listening on ".len()..].trim().to_owned());
            }
            eprintln!("{}", forward_line(&launch.label, &line));
            shared.status().push_line(&line);
        }
        None
    };
    match tokio::time::timeout(timeout, listening).await {
        Ok(Some(base)) => {
            output
                .0
                .push(tokio::spawn(forward(Arc::clone(shared), lines)));
            Ok(Started {
                child,
                base,
                output,
            })
        }
        Ok(None) => {
            // It closed its stdout: it is exiting, or it is killed now (never waited on forever).
            let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await.ok()
                }
            };
            // Its last words (why it exited) are on stderr: have them all in the log first.
            output.finish().await;
            Err(StartFailed {
                status,
                message: "exited before listening".into(),
            })
        }
        Err(_) => {
            let _ = child.kill().await;
            let status = child.wait().await.ok();
            output.finish().await;
            Err(StartFailed {
                status,
                message: format!("did not start listening in {}s", timeout.as_secs()),
            })
        }
    }
}

/// Copies a process's output to this process's stderr and to its `/status` log.
async fn forward(shared: Arc<Shared>, mut lines: Lines<impl AsyncBufRead + Unpin>) {
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{}", forward_line(&shared.launch.label, &line));
        shared.status().push_line(&line);
    }
}

/// Waits for `child` to exit, or for the stop signal (then stops it).
async fn wait_or_stop(
    shared: &Shared,
    child: &mut Child,
    stop_rx: &mut watch::Receiver<bool>,
) -> Ended {
    let exit = tokio::select! {
        exit = child.wait() => exit,
        () = stopped(stop_rx) => {
            terminate(shared, child).await;
            return Ended::Stopped;
        }
    };
    match exit {
        Ok(status) => Ended::Exited(Some(status)),
        Err(e) => {
            tracing::warn!(process = %shared.launch.label, error = %e, "cannot wait for executor process");
            Ended::Exited(None)
        }
    }
}

/// Resolves once shutdown has begun.
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: that is shutdown too.
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn terminate(shared: &Shared, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => shared.status().last_exit = Some(status),
        Ok(Err(_)) => {}
        Err(_) => {
            tracing::warn!(process = %shared.launch.label, "did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}

/// How a run of the process ended.
#[derive(Clone, Copy)]
enum Ended {
    /// It exited (or failed to start again, with the status when it had one).
    Exited(Option<ExitStatus>),
    /// Shutdown stopped it.
    Stopped,
}

/// What the supervisor remembers of past crashes.
struct History<'a> {
    crashes: &'a mut VecDeque<Instant>,
    backoff: &'a mut Duration,
}

/// Records how a run ended; says on which port to restart (and the exit, for the log), or
/// `None` when the process stays down (stopped, exited during the launch, or failed).
fn after_exit(
    shared: &Shared,
    policy: &Policy,
    ended: Ended,
    stopping: bool,
    armed: &AtomicBool,
    port: Option<u16>,
    history: &mut History<'_>,
) -> Option<(u16, String)> {
    let mut status = shared.status();
    status.pid = None;
    let exit = match ended {
        Ended::Exited(exit) if !stopping => exit,
        _ => {
            status.state = State::Stopped;
            return None;
        }
    };
    if exit.is_some() {
        status.last_exit = exit;
    }
    if !armed.load(Ordering::Acquire) {
        status.state = State::Exited;
        return None;
    }
    let now = Instant::now();
    history
        .crashes
        .retain(|t| now.duration_since(*t) < policy.restart_window);
    if history.crashes.is_empty() {
        // Stable for a whole window: the next crash starts the backoff afresh.
        *history.backoff = policy.backoff_initial;
    }
    history.crashes.push_back(now);
    let exit_text = exit.map_or_else(|| "not started".to_owned(), |e| e.to_string());
    let crashes = history.crashes.len();
    let Some(port) = port.filter(|_| crashes < policy.restart_limit as usize) else {
        status.state = State::Failed;
        metrics::gauge!("flowmesh_executor_processes_failed").increment(1.0);
        let why = match port {
            None => format!("its address {} has no port", shared.base()),
            Some(_) => format!(
                "exited {crashes} times within {}s (last: {exit_text}); not restarted again",
                policy.restart_window.as_secs()
            ),
        };
        tracing::error!(process = %shared.launch.label, "{why}");
        status.error = Some(match status.error.take() {
            Some(before) => format!("{why}; {before}"),
            None => why,
        });
        return None;
    };
    status.state = State::Restarting;
    Some((port, exit_text))
}

/// Restarts the process each time it exits unasked, until it crashes too often or is stopped.
async fn supervise(
    shared: Arc<Shared>,
    policy: Policy,
    started: Started,
    mut stop_rx: watch::Receiver<bool>,
    armed: Arc<AtomicBool>,
) {
    let label = shared.launch.label.clone();
    let port = port_of(shared.base());
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut backoff = policy.backoff_initial;
    let Started {
        mut child,
        mut output,
        ..
    } = started;
    let mut ended = wait_or_stop(&shared, &mut child, &mut stop_rx).await;
    loop {
        // Whatever it printed last is logged before its exit is reported (and, during the
        // launch, before the launch fails on it).
        output.finish().await;
        let stopping = *stop_rx.borrow();
        let mut history = History {
            crashes: &mut crashes,
            backoff: &mut backoff,
        };
        let Some((port, exit_text)) = after_exit(
            &shared,
            &policy,
            ended,
            stopping,
            &armed,
            port,
            &mut history,
        ) else {
            return;
        };
        tracing::warn!(
            process = %label,
            exit = %exit_text,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "executor process exited; restarting it on {}",
            shared.base()
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop_rx) => {
                shared.status().state = State::Stopped;
                return;
            }
        }
        backoff = (backoff * 2).min(policy.backoff_max);
        let since = {
            let mut status = shared.status();
            status.restarts += 1;
            status.lines_logged
        };
        metrics::counter!("flowmesh_executor_restarts_total", "process" => label.clone())
            .increment(1);
        let started = tokio::select! {
            started = start(&shared, Some(port), policy.start_timeout) => started,
            () = stopped(&mut stop_rx) => {
                shared.status().state = State::Stopped;
                return;
            }
        };
        ended = match started {
            Ok(Started {
                child: restarted,
                base,
                output: copying,
            }) => {
                child = restarted;
                output = copying;
                if base == shared.base() {
                    let mut status = shared.status();
                    status.state = State::Running;
                    status.error = None;
                    drop(status);
                    tracing::info!(process = %label, address = %base, "executor process restarted");
                } else {
                    // Never expected: it was told the port. The gateway would not find it.
                    tracing::error!(process = %label, expected = %shared.base(), got = %base, "restarted executor listens elsewhere");
                }
                wait_or_stop(&shared, &mut child, &mut stop_rx).await
            }
            Err(e) => {
                let why = not_started(&shared, port, since, &e);
                tracing::error!(process = %label, "{why}");
                shared.status().error = Some(why);
                Ended::Exited(e.status)
            }
        };
    }
}

/// What to say of a restart that failed: a port that cannot be re-bound is named as such.
/// Only the lines of this attempt (logged after `since`) count.
fn not_started(shared: &Shared, port: u16, since: u64, e: &StartFailed) -> String {
    let in_use = shared
        .status()
        .lines_since(since)
        .any(|l| l.to_ascii_lowercase().contains("address already in use"));
    if in_use {
        format!(
            "cannot re-bind 127.0.0.1:{port}: address already in use (another process took the \
             port; the gateway only knows this address)"
        )
    } else {
        match e.status {
            Some(status) => format!("restart {} ({status})", e.message),
            None => format!("restart {}", e.message),
        }
    }
}

/// The port of `http://HOST:PORT` (or `https://`).
fn port_of(base: &str) -> Option<u16> {
    base.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Stops every process (SIGTERM, SIGKILL after 10 s), all at once, restarting none.
pub(super) async fn stop_all(processes: Vec<Supervised>) {
    for p in &processes {
        let _ = p.stop_tx.send(true);
    }
    for p in processes {
        if let Err(e) = p.task.await {
            tracing::warn!(process = %p.shared.launch.label, error = %e, "supervisor task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_addresses() {
        assert_eq!(port_of("http://127.0.0.1:4312"), Some(4312));
        assert_eq!(port_of("http://127.0.0.1:4312/"), Some(4312));
        assert_eq!(port_of("http://127.0.0.1"), None);
        assert_eq!(port_of("https://127.0.0.1:4312"), Some(4312));
    }
}
