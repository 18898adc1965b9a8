//! Support of tests/ansible.rs: five SSH hosts as containers on a private Docker network (a
//! guard removes them however the test ends), the controller's commands, and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The five roles of the seed's benchmark, one host each.
pub const ROLES: [&str; 5] = ["client", "flow", "encoder", "indexer", "ranker"];

/// The image the hosts run: the base with a login user and sshd (built by [`host_image`]).
pub const HOST_IMAGE: &str = "flowmesh-ansible-host:bookworm";

pub use flowmesh_deploy_tests::{ensure_staged, repo_root, run_cmd, tail, wait_until};

/// `docker ARGS` within a minute; its trimmed stdout.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = run_cmd(
        "docker",
        args,
        &[],
        &repo_root(),
        None,
        Duration::from_secs(60),
    )
    .await?;
    Ok(out.trim().to_owned())
}

/// Builds [`HOST_IMAGE`] from `base`: a `deploy` user with passwordless sudo (as on a cloud
/// image), sshd as the container's main process, and the public key given at `docker run`.
/// Docker's build cache makes a second build instant.
pub async fn host_image(base: &str) -> anyhow::Result<()> {
    let dockerfile = format!(
        r#"FROM {base}
RUN useradd --create-home --shell /bin/bash deploy \
 && usermod -p '*' deploy \
 && printf 'deploy ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/deploy \
 && chmod 0440 /etc/sudoers.d/deploy \
 && sed -i 's/^session\s*required\s*pam_loginuid.so/session optional pam_loginuid.so/' /etc/pam.d/sshd \
 && printf '%s\n' '#!/bin/sh' 'set -e' \
      'mkdir -p /run/sshd /home/deploy/.ssh' \
      'printf "%s\n" "$FLOWMESH_AUTHORIZED_KEY" > /home/deploy/.ssh/authorized_keys' \
      'chown -R deploy:deploy /home/deploy/.ssh' \
      'chmod 700 /home/deploy/.ssh && chmod 600 /home/deploy/.ssh/authorized_keys' \
      'ssh-keygen -A >/dev/null' \
      'exec /usr/sbin/sshd -D -e' > /usr/local/sbin/flowmesh-host \
 && chmod 0755 /usr/local/sbin/flowmesh-host
EXPOSE 22
CMD ["/usr/local/sbin/flowmesh-host"]
"#
    );
    run_cmd(
        "docker",
        &["build", "--quiet", "-t", HOST_IMAGE, "-"],
        &[],
        &repo_root(),
        Some(&dockerfile),
        Duration::from_secs(300),
    )
    .await
    .context("building the Ansible host image")?;
    Ok(())
}

/// Five containers on a private network, removed (with the network) on drop.
#[derive(Debug)]
pub struct Hosts {
    pub network: String,
    /// Role -> (container name, IP address on the network).
    pub hosts: BTreeMap<&'static str, (String, String)>,
}

impl Hosts {
    /// Creates the network `prefix` and one container per role, named `prefix-ROLE` with the
    /// network alias ROLE, each running sshd that accepts `public_key` for `deploy`.
    pub async fn start(prefix: &str, public_key: &str) -> anyhow::Result<Self> {
        docker(&[
            "network",
            "create",
            "--label",
            "org.flowmesh.test=ansible",
            prefix,
        ])
        .await
        .context("creating the test network")?;
        let mut this = Self {
            network: prefix.to_owned(),
            hosts: BTreeMap::new(),
        };
        for role in ROLES {
            let name = format!("{prefix}-{role}");
            let key_env = format!("FLOWMESH_AUTHORIZED_KEY={}", public_key.trim());
            // Registered before it runs, so that the guard removes it even if `run` fails late.
            this.hosts.insert(role, (name.clone(), String::new()));
            docker(&[
                "run",
                "-d",
                "--init",
                "--name",
                &name,
                "--hostname",
                role,
                "--network",
                prefix,
                "--network-alias",
                role,
                "--label",
                "org.flowmesh.test=ansible",
                "-e",
                &key_env,
                HOST_IMAGE,
            ])
            .await
            .with_context(|| format!("starting the {role} host"))?;
        }
        for role in ROLES {
            let name = this.hosts[role].0.clone();
            let ip = docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &name,
            ])
            .await?;
            ensure!(!ip.is_empty(), "container {name} has no IP address");
            this.hosts.insert(role, (name, ip));
        }
        Ok(this)
    }

    /// The container of `role`.
    pub fn name(&self, role: &str) -> &str {
        &self.hosts[role].0
    }

    /// The IP address of `role`'s container on the private network.
    pub fn ip(&self, role: &str) -> &str {
        &self.hosts[role].1
    }

    /// Waits until every host's sshd accepts TCP connections.
    pub async fn wait_for_ssh(&self, limit: Duration) -> anyhow::Result<()> {
        for (role, (_, ip)) in &self.hosts {
            let what = format!("the {role} host's sshd ({ip}:22) answers");
            wait_until(&what, limit, Duration::from_millis(200), || async {
                let connect = tokio::net::TcpStream::connect((ip.as_str(), 22));
                Ok(matches!(
                    tokio::time::timeout(Duration::from_secs(2), connect).await,
                    Ok(Ok(_))
                ))
            })
            .await?;
        }
        Ok(())
    }

    /// `docker exec CONTAINER sh -c SCRIPT` on `role`'s host, within `limit`; its stdout.
    pub async fn exec(&self, role: &str, script: &str, limit: Duration) -> anyhow::Result<String> {
        run_cmd(
            "docker",
            &["exec", self.name(role), "sh", "-c", script],
            &[],
            &repo_root(),
            None,
            limit,
        )
        .await
    }

    /// Every service process the supervise manager runs on `role`'s host: unit -> "PID@START"
    /// (the start time in clock ticks since boot, from /proc/PID/stat), so that a restart shows
    /// as a changed value even if a PID were reused.
    pub async fn processes(&self, role: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let out = self
            .exec(
                role,
                r#"for f in /run/flowmesh/*.pid; do [ -e "$f" ] || continue; pid=$(cat "$f");
                   start=$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null || echo gone);
                   echo "$(basename "$f" .pid) $pid@$start"; done"#,
                Duration::from_secs(20),
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(unit, id)| (unit.to_owned(), id.to_owned()))
            .collect())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let names: Vec<&str> = self.hosts.values().map(|(n, _)| n.as_str()).collect();
        if std::env::var_os("FLOWMESH_KEEP_HOSTS").is_some() {
            eprintln!(
                "FLOWMESH_KEEP_HOSTS: leaving {names:?} on network {}",
                self.network
            );
            return;
        }
        let rm = std::process::Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&names)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let net = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!((rm, net), (Ok(a), Ok(b)) if a.success() && b.success()) {
            eprintln!(
                "warning: could not remove all of {names:?} and network {}",
                self.network
            );
        }
    }
}

/// A small JSON HTTP client.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// POSTs `body` as JSON to `url` within `limit`: the status and the JSON answer (or the raw
    /// text as a JSON string when it is not JSON).
    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        limit: Duration,
    ) -> anyhow::Result<(u16, Value)> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let response = tokio::time::timeout(limit, self.client.request(request))
            .await
            .with_context(|| format!("POST {url}: no answer within {}s", limit.as_secs()))?
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}
