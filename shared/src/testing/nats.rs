//! A real `nats-server` with JetStream for tests (feature `testing`), on a loopback port the
//! server picks itself, with its data in a directory of the test's own. It can be stopped
//! (SIGKILL, as a crash) and started again on the same port and data. The binary is
//! `nats-server` on the `PATH`, or `$FLOWMESH_NATS_SERVER`.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server`.
pub struct NatsServer {
    dir: PathBuf,
    child: Option<Child>,
    token: Option<String>,
    port: u16,
}

/// The `nats-server` binary, checked to run: `$FLOWMESH_NATS_SERVER`, else `nats-server` on the
/// `PATH`, else Debian's `/usr/sbin/nats-server` (not on a normal user's `PATH`).
pub fn nats_server_binary() -> PathBuf {
    let runs = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let candidates: Vec<PathBuf> = match std::env::var_os("FLOWMESH_NATS_SERVER") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            PathBuf::from("nats-server"),
            PathBuf::from("/usr/sbin/nats-server"),
        ],
    };
    match candidates.iter().find(|p| runs(p)) {
        Some(found) => found.clone(),
        None => panic!(
            "nats-server is needed (looked for {candidates:?}); ./scripts/test.sh installs it \
             (apt-get install nats-server)"
        ),
    }
}

impl NatsServer {
    /// Starts a server with JetStream, its data in a new directory named after `name`,
    /// requiring `token` when one is given.
    pub fn start(name: &str, token: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("flowmesh-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            dir,
            child: None,
            token: token.map(str::to_owned),
            port: 0,
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's data directory (JetStream's store is `js/` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the server again (after [`Self::kill`]) on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let ports = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).unwrap();
        // The first start picks a free port; later ones keep it, so clients reconnect.
        let listen = if self.port == 0 {
            "127.0.0.1:-1".to_owned()
        } else {
            format!("127.0.0.1:{}", self.port)
        };
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization {{ token: \"{t}\" }}\n"))
            .unwrap_or_default();
        let config = format!(
            "listen: {listen}\nports_file_dir: \"{}\"\nmax_payload: 8MB\n{auth}jetstream {{ store_dir: \"{}\" }}\n",
            ports.display(),
            self.dir.join("js").display()
        );
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, config).unwrap();
        let log = std::fs::File::create(self.dir.join("nats.log")).unwrap();
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir(&ports)
                .unwrap()
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"));
            if let Some(file) = found {
                let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                if let Some(port) = text
                    .split("127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|p| p.parse().ok())
                {
                    self.port = port;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; its log: {}",
                std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: what it has not written is lost, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
