//! Support of tests/ansible.rs: six hosts as containers on a private Docker network, each with
//! systemd as PID 1 and sshd (a guard removes them however the test ends), the controller's
//! commands, and a small HTTPS client.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The hosts: (name, the inventory group it is in). The five roles of the seed's benchmark, one
/// host each, and a second indexer host, so that the two mirrored copies of each index shard
/// run on different hosts.
pub const HOSTS: [(&str, &str); 6] = [
    ("client", "client"),
    ("flow", "flow"),
    ("encoder", "encoder"),
    ("indexer", "indexer"),
    ("indexer-2", "indexer"),
    ("ranker", "ranker"),
];

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

/// Builds [`HOST_IMAGE`] from `base`: systemd as PID 1 (as on a cloud host), sshd started by it
/// (host keys made at first boot, per container), a `deploy` user with passwordless sudo, and
/// neither Redis nor Debian's nats-server started (the redis role enables Redis; the nats role
/// runs its own nats-server unit). Docker's build cache makes a second
/// build instant.
pub async fn host_image(base: &str) -> anyhow::Result<()> {
    let dockerfile = format!(
        r#"FROM {base}
RUN useradd --create-home --shell /bin/bash deploy \
 && usermod -p '*' deploy \
 && printf 'deploy ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/deploy \
 && chmod 0440 /etc/sudoers.d/deploy \
 && sed -i 's/^session\s*required\s*pam_loginuid.so/session optional pam_loginuid.so/' /etc/pam.d/sshd \
 && printf '%s\n' '[Unit]' 'Description=SSH host keys of this container' 'Before=ssh.service' \
      '[Service]' 'Type=oneshot' 'ExecStart=/usr/bin/ssh-keygen -A' \
      '[Install]' 'WantedBy=multi-user.target' > /etc/systemd/system/ssh-host-keys.service \
 && systemctl enable ssh-host-keys.service ssh.service \
 && systemctl disable redis-server.service nats-server.service \
 && systemctl mask getty@tty1.service console-getty.service \
 && install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
EXPOSE 22
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
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

/// The hosts' containers on a private network, removed (with the network) on drop.
#[derive(Debug)]
pub struct Hosts {
    pub network: String,
    /// Host (a name of [`HOSTS`]) -> (container name, IP address on the network).
    pub hosts: BTreeMap<&'static str, (String, String)>,
}

impl Hosts {
    /// Creates the network `prefix` and one container per host of [`HOSTS`], named
    /// `prefix-HOST` with the network alias HOST, each running systemd, whose sshd accepts `public_key` for `deploy`.
    /// What systemd needs in a container without privileges: tmpfs on /run, the cgroup tree,
    /// and no seccomp filter (Debian's redis-server unit sets PrivateUsers=, a user namespace);
    /// NET_ADMIN for the firewall in front of Redis.
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
        for (role, _) in HOSTS {
            let name = format!("{prefix}-{role}");
            // Registered before it runs, so that the guard removes it even if `run` fails late.
            this.hosts.insert(role, (name.clone(), String::new()));
            docker(&[
                "run",
                "-d",
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
                "--security-opt",
                "seccomp=unconfined",
                "--cap-add",
                "NET_ADMIN",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                HOST_IMAGE,
            ])
            .await
            .with_context(|| format!("starting the {role} host"))?;
            // The key goes in through stdin, as a file: systemd gives its services no
            // variables of `docker run`.
            run_cmd(
                "docker",
                &[
                    "exec",
                    "-i",
                    &name,
                    "sh",
                    "-c",
                    "cat > /home/deploy/.ssh/authorized_keys && \
                     chown deploy:deploy /home/deploy/.ssh/authorized_keys && \
                     chmod 0600 /home/deploy/.ssh/authorized_keys",
                ],
                &[],
                &repo_root(),
                Some(&format!("{}\n", public_key.trim())),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("installing the SSH key on the {role} host"))?;
        }
        for (role, _) in HOSTS {
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

    /// Every flowmesh instance (`flowmesh-SERVICE@PORT`), nats-server (`flowmesh-nats`) and
    /// Redis that systemd runs on `role`'s host: unit -> "PID@START" (the main process and its
    /// start time), so that a restart shows as a changed value even if a PID were reused.
    pub async fn processes(&self, role: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let out = self
            .exec(
                role,
                r#"systemctl list-units --plain --no-legend --state=active --type=service \
                     'flowmesh-*@*' flowmesh-nats.service redis-server.service \
                     | while read -r unit _; do
                   pid=$(systemctl show -p MainPID --value "$unit");
                   start=$(systemctl show -p ExecMainStartTimestampMonotonic --value "$unit");
                   echo "${unit%.service} $pid@$start"; done"#,
                Duration::from_secs(20),
            )
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(unit, id)| (unit.to_owned(), id.to_owned()))
            .collect())
    }

    /// The main PID systemd has for `unit` on `role`'s host (0 when it is not running).
    pub async fn main_pid(&self, role: &str, unit: &str) -> anyhow::Result<u32> {
        let out = self
            .exec(
                role,
                &format!("systemctl show -p MainPID --value {unit}"),
                Duration::from_secs(20),
            )
            .await?;
        Ok(out.trim().parse()?)
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

/// A small JSON HTTP client that verifies HTTPS servers with a private CA and sends an API key.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    api_key: Option<String>,
}

impl Http {
    /// A client trusting only the CA in `ca` (PEM), sending `api_key` as `api-key`.
    pub fn new(ca: &Path, api_key: Option<String>) -> anyhow::Result<Self> {
        let tls = flowmesh_shared::tls::client_config_with(ca, None, None)?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            api_key,
        })
    }

    /// The same client with another API key (or none).
    pub fn with_key(&self, api_key: Option<String>) -> Self {
        Self {
            client: self.client.clone(),
            api_key,
        }
    }

    /// POSTs `body` as JSON to `url` within `limit`: the status and the JSON answer (or the raw
    /// text as a JSON string when it is not JSON).
    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        limit: Duration,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("api-key", key);
        }
        let request = request.body(Full::new(Bytes::from(body.to_string())))?;
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
