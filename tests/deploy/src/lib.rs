//! Tests of flowmesh's deployments against this machine's Docker engine: `compose.yaml`
//! (tests/compose.rs) and the Ansible rollout to five hosts (tests/ansible.rs).
//!
//! They need Docker, the base image (`scripts/docker-base.sh`) and the staged binaries and
//! models (`scripts/dist.sh`), so they are `#[ignore]`d in a plain `cargo test`;
//! `scripts/test.sh` prepares all of it and runs them with `--ignored`.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// The repository's root (compose.yaml, ansible/, target/dist).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `program args` (with `stdin`, if any) to completion within `limit`; its stdout, or an
/// error with the tails of its stdout and stderr.
pub async fn run_cmd(
    program: &str,
    args: &[&str],
    envs: &[(String, String)],
    dir: &Path,
    stdin: Option<&str>,
    limit: Duration,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let line = format!("{program} {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("`{line}` took more than {}s", limit.as_secs()))?
        .with_context(|| format!("`{line}` failed to finish"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            out.status,
            tail(&stdout, 80),
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
    }
    Ok(stdout)
}

/// Fails, naming `hint`, unless every path of `needed` exists under `dist` (the folder
/// `scripts/dist.sh` stages binaries, models and Flows in).
pub fn ensure_staged(dist: &Path, needed: &[&str], hint: &str) -> anyhow::Result<()> {
    for path in needed {
        let path = dist.join(path);
        anyhow::ensure!(path.exists(), "{} is missing: {hint}", path.display());
    }
    Ok(())
}

/// Polls `check` every `every` until it answers `Ok(true)`, for at most `limit`; the error says
/// what was awaited (`what`) and the last thing `check` said (its error, or that it was not yet).
pub async fn wait_until<F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not within {}s ({last})", limit.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}
