//! Support of tests/compose.rs: the Compose command line (v2 `docker compose` or v1
//! `docker-compose`) bound to one test project, a guard that takes the project down with its
//! volumes however the test ends; a small JSON HTTP client (`http`) and a bounded load (`load`).

#![allow(dead_code, unreachable_pub)]

mod http;
pub mod load;

pub use http::{base64, Http};

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure};

pub use flowmesh_deploy_tests::{ensure_staged, repo_root, run_cmd, wait_until};

/// The Compose command line bound to one project: its files, name and variables.
#[derive(Clone, Debug)]
pub struct Compose {
    /// `["docker", "compose"]` (v2) or `["docker-compose"]` (v1).
    tool: Vec<String>,
    project: String,
    files: Vec<String>,
    envs: Vec<(String, String)>,
    dir: PathBuf,
}

impl Compose {
    /// The Compose tool of this machine: v2's `docker compose` if it answers, else v1's
    /// `docker-compose`.
    pub async fn detect(
        project: &str,
        files: &[&str],
        envs: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let dir = repo_root();
        let limit = Duration::from_secs(30);
        let tool: Vec<String> =
            if run_cmd("docker", &["compose", "version"], &[], &dir, None, limit)
                .await
                .is_ok()
            {
                vec!["docker".into(), "compose".into()]
            } else if run_cmd("docker-compose", &["version"], &[], &dir, None, limit)
                .await
                .is_ok()
            {
                vec!["docker-compose".into()]
            } else {
                bail!("neither `docker compose` (v2) nor `docker-compose` (v1) runs here");
            };
        Ok(Self {
            tool,
            project: project.to_owned(),
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            envs,
            dir,
        })
    }

    /// The project's name (`-p`).
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The tool's words, for messages.
    pub fn tool(&self) -> String {
        self.tool.join(" ")
    }

    /// The full argument list after the program: tool words, `-f` files, `-p`, then `args`.
    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = self.tool[1..].to_vec();
        for f in &self.files {
            argv.push("-f".into());
            argv.push(f.clone());
        }
        argv.push("-p".into());
        argv.push(self.project.clone());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Runs a Compose command within `limit`; its stdout.
    pub async fn run(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let argv = self.argv(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        run_cmd(&self.tool[0], &argv, &self.envs, &self.dir, None, limit).await
    }

    /// The same, blocking: for `Drop`.
    fn run_blocking(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        std::process::Command::new(&self.tool[0])
            .args(self.argv(args))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
    }

    /// The host address a service's container port is published on (`port`), as `host:port`.
    pub async fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        let out = self
            .run(
                &["port", service, &port.to_string()],
                Duration::from_secs(30),
            )
            .await?;
        let addr = out.trim();
        ensure!(
            addr.contains(':') && !addr.ends_with(":0"),
            "{service}:{port} is not published: {addr:?}"
        );
        Ok(addr.to_owned())
    }

    /// The id of a service's (single) container.
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        let out = self
            .run(&["ps", "-q", service], Duration::from_secs(30))
            .await?;
        let ids: Vec<&str> = out.split_whitespace().collect();
        ensure!(
            ids.len() == 1,
            "{service}: expected one container, found {ids:?}"
        );
        Ok(ids[0].to_owned())
    }

    /// The Docker volume of one of the project's named volumes (`name` as compose.yaml calls
    /// it), found by Compose's labels, and when Docker made it (`CreatedAt`): a volume that
    /// was removed and made again has another creation time.
    pub async fn volume(&self, name: &str) -> anyhow::Result<(String, String)> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let volume = format!("label=com.docker.compose.volume={name}");
        let out = run_cmd(
            "docker",
            &[
                "volume", "ls", "-q", "--filter", &project, "--filter", &volume,
            ],
            &[],
            &self.dir,
            None,
            Duration::from_secs(30),
        )
        .await?;
        let names: Vec<&str> = out.split_whitespace().collect();
        ensure!(
            names.len() == 1,
            "volume {name}: expected one, found {names:?}"
        );
        let created = run_cmd(
            "docker",
            &["volume", "inspect", "-f", "{{.CreatedAt}}", names[0]],
            &[],
            &self.dir,
            None,
            Duration::from_secs(30),
        )
        .await?;
        Ok((names[0].to_owned(), created.trim().to_owned()))
    }

    /// Docker's health status of a service's container (`healthy`, `starting`, ...).
    pub async fn health(&self, service: &str) -> anyhow::Result<String> {
        let id = self.container(service).await?;
        let out = run_cmd(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.State.Status}}/{{.State.Health.Status}}",
                &id,
            ],
            &[],
            &self.dir,
            None,
            Duration::from_secs(30),
        )
        .await?;
        Ok(out.trim().to_owned())
    }

    /// Waits until Docker reports every one of `services` running and healthy.
    pub async fn wait_healthy(&self, services: &[&str], limit: Duration) -> anyhow::Result<()> {
        for service in services {
            let what = format!("{service} is running and healthy");
            wait_until(&what, limit, Duration::from_millis(500), || async {
                let state = self.health(service).await?;
                Ok(state == "running/healthy")
            })
            .await?;
        }
        Ok(())
    }
}

/// Owns a Compose project while it is up: dropping it (the test passed, failed or panicked)
/// takes the project down with its volumes and network, after printing the services' logs when
/// the test failed.
#[derive(Debug)]
pub struct ProjectGuard(pub Compose);

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self.0.run_blocking(&["ps"]) {
                eprintln!(
                    "--- {} ps\n{}",
                    self.0.project,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            if let Ok(out) = self.0.run_blocking(&["logs", "--no-color", "--tail", "60"]) {
                eprintln!(
                    "--- {} logs (last 60 lines per service)\n{}",
                    self.0.project,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        match self
            .0
            .run_blocking(&["down", "--volumes", "--remove-orphans", "--timeout", "10"])
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "{}: `down --volumes` failed: {}",
                self.0.project,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("{}: cannot run `down --volumes`: {e}", self.0.project),
        }
    }
}
