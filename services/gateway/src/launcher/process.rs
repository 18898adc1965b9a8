//! What `flowmesh up` knows of each executor process it supervises: how to start it
//! ([`Launch`]), when to restart it ([`Policy`]), and its [`Status`] for `GET /status`. The
//! environment and command line are never shown there: they may one day hold secrets.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

/// How many lines of a process's output `/status` keeps.
pub(super) const LOG_LINES: usize = 20;
/// Longer lines are cut to this many bytes in the ring buffer (the full line still goes to stderr).
const LOG_LINE_BYTES: usize = 512;

/// How to start one executor process: everything a restart must repeat. Its `Debug` names the
/// variables set, never their values (the mesh token is one).
pub(super) struct Launch {
    /// `EXECUTOR/SHARD/REPLICA`.
    pub label: String,
    pub executor: String,
    pub shard: usize,
    pub replica: usize,
    pub binary: PathBuf,
    /// The flags from `with:` (without `--listen`).
    pub flags: Vec<String>,
    /// Flags of the first start only (`--restore-from`: a restart finds its data in place).
    pub first_flags: Vec<String>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(String, std::ffi::OsString)>,
    /// Variables of this process that the child does not inherit (unless set in `env`).
    pub env_remove: Vec<&'static str>,
    pub workspace: PathBuf,
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Launch")
            .field("label", &self.label)
            .field("binary", &self.binary)
            .field("flags", &self.flags)
            .field("first_flags", &self.first_flags)
            .field("env", &env)
            .field("env_remove", &self.env_remove)
            .field("workspace", &self.workspace)
            .finish_non_exhaustive()
    }
}

/// When to restart, and when to give up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Crashes within `restart_window` after which the process stays down; 0 never restarts.
    pub restart_limit: u32,
    pub restart_window: Duration,
    /// How long a (re)started process may take to print its `listening on` line.
    pub start_timeout: Duration,
}

/// Where a supervised process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Running,
    /// Exited unexpectedly; waiting out the backoff or starting again.
    Restarting,
    /// Crashed too often (or cannot be started again); stays down.
    Failed,
    /// Exited before the launch finished; the launch fails.
    Exited,
    /// Stopped by shutdown.
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
            Self::Exited => "exited",
            Self::Stopped => "stopped",
        }
    }
}

/// What `/status` shows of one process.
#[derive(Debug)]
pub(super) struct Status {
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    /// Why the process is down, when the launcher knows more than the exit status.
    pub error: Option<String>,
    pub log: VecDeque<String>,
    /// Lines logged since the first start (the ring keeps the last [`LOG_LINES`]).
    pub lines_logged: u64,
}

impl Status {
    /// The kept lines logged after `lines_logged` was `since`.
    pub(super) fn lines_since(&self, since: u64) -> impl Iterator<Item = &String> {
        let new = usize::try_from(self.lines_logged.saturating_sub(since)).unwrap_or(usize::MAX);
        self.log.iter().skip(self.log.len().saturating_sub(new))
    }
}

impl Status {
    pub(super) fn push_line(&mut self, line: &str) {
        self.lines_logged += 1;
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        let mut end = line.len().min(LOG_LINE_BYTES);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        self.log.push_back(line[..end].to_owned());
    }
}

/// Shared between a process's task, its output forwarders and `/status`.
#[derive(Debug)]
pub(super) struct Shared {
    pub launch: Launch,
    /// `http://127.0.0.1:PORT`, fixed at the first start.
    base: OnceLock<String>,
    status: Mutex<Status>,
}

impl Shared {
    pub(super) fn new(launch: Launch) -> Self {
        Self {
            launch,
            base: OnceLock::new(),
            status: Mutex::new(Status {
                state: State::Running,
                pid: None,
                restarts: 0,
                last_exit: None,
                error: None,
                log: VecDeque::with_capacity(LOG_LINES),
                lines_logged: 0,
            }),
        }
    }

    /// Fixes the address, at the first start.
    pub(super) fn set_base(&self, base: String) {
        let _ = self.base.set(base);
    }

    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `http://127.0.0.1:PORT` (empty before the first start).
    pub(super) fn base(&self) -> &str {
        self.base.get().map_or("", String::as_str)
    }

    /// The `/status` entry of this process.
    pub(super) fn to_json(&self) -> Value {
        let s = self.status();
        let last_exit = s.last_exit.map(|e| {
            use std::os::unix::process::ExitStatusExt as _;
            json!({"status": e.to_string(), "code": e.code(), "signal": e.signal()})
        });
        json!({
            "label": self.launch.label,
            "executor": self.launch.executor,
            "shard": self.launch.shard,
            "replica": self.launch.replica,
            "address": self.base(),
            "pid": s.pid,
            "state": s.state.name(),
            "restarts": s.restarts,
            "last_exit": last_exit,
            "error": s.error,
            "log": s.log,
        })
    }
}

/// `/status`'s `processes`: one entry per process.
pub(super) fn status_json(processes: &[Arc<Shared>]) -> Value {
    Value::Array(processes.iter().map(|p| p.to_json()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_lines_cut_to_size() {
        let mut status = Status {
            state: State::Running,
            pid: None,
            restarts: 0,
            last_exit: None,
            error: None,
            log: VecDeque::new(),
            lines_logged: 0,
        };
        for i in 0..50 {
            status.push_line(&format!("line {i}"));
        }
        assert_eq!(status.log.len(), LOG_LINES);
        assert_eq!(status.log[0], "line 30");
        assert_eq!(status.log[LOG_LINES - 1], "line 49");
        assert_eq!(
            status.lines_since(48).collect::<Vec<_>>(),
            ["line 48", "line 49"]
        );
        assert_eq!(status.lines_since(0).count(), LOG_LINES);
        status.push_line(&"é".repeat(LOG_LINE_BYTES));
        let last = status.log.back().unwrap();
        assert!(last.len() <= LOG_LINE_BYTES && last.chars().all(|c| c == 'é'));
    }
}
