//! A real `redis-server` for tests (feature `testing`), on a Unix socket in a directory of the
//! test's own (no TCP port at all), that can be stopped and started again on the same socket and
//! data. The binary is `redis-server` on the `PATH`, or `$FLOWMESH_REDIS_SERVER`.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
    password: Option<String>,
}

fn binary() -> PathBuf {
    let path = std::env::var_os("FLOWMESH_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
    let found = Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is needed ({}); ./scripts/test.sh installs it (apt-get install redis-server)",
        path.display()
    );
    path
}

impl RedisServer {
    /// Starts a server with its data in a new directory named after `name`.
    pub fn start(name: &str, password: Option<&str>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("flowmesh-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            dir,
            child: None,
            password: password.map(str::to_owned),
        };
        server.restart();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL the ranker connects with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts the server again (after [`Self::stop`]) on the same socket and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg("always")
            .arg("--save")
            .arg("");
        if let Some(password) = &self.password {
            cmd.arg("--requirepass").arg(password);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(&self.socket(), Duration::from_secs(20));
    }

    /// Stops the server (SIGTERM: it finishes writing its data and exits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(socket: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "redis-server did not listen on {} in {limit:?}",
        socket.display()
    );
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
