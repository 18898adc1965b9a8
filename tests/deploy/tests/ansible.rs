//! The Ansible rollout, for real: five containers on a private Docker network stand in for the
//! seed's five machines (client, flow, encoder, indexer, ranker with Redis), each with systemd as
//! PID 1 (the path real hosts take), sshd and a sudo user. This machine is the controller:
//! `ansible-playbook` from `scripts/ansible-venv.sh` runs `ansible/site.yml` over SSH with the
//! staged binaries and models (`scripts/dist.sh`), secure as the AWS inventory is: API keys, the
//! mesh token, TLS from the inventory's private CA, services on the hosts' private addresses,
//! Redis behind its firewall. From the client host it checks that executors refuse calls
//! without the mesh token and that the read-only key searches (and cannot write); it checks the
//! units (restart on failure; no secret in `systemctl show`, the journal or any command line);
//! then `ansible/rolling-update.yml` rolls a new release out while searches from this machine
//! keep going, and none may fail.
//!
//! Needs: Docker, the base image (`scripts/docker-base.sh`), `target/dist` (or
//! `FLOWMESH_DIST`), the Ansible venv (`ANSIBLE_BIN`: its bin folder; default
//! `~/.cache/flowmesh/ansible-venv/bin`). `FLOWMESH_KEEP_HOSTS=1` leaves the containers up.

mod ansible_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};

use ansible_support::{docker, ensure_staged, host_image, repo_root, run_cmd, tail, Hosts, Http};
use flowmesh_shared::testing::corpus::CORPUS;

/// Matches per search, checked on every answer.
const TOP_K: usize = 5;

/// Queries of the search load; their answers before the rollout are the reference.
const QUERIES: [&str; 6] = [
    "neural search over a mesh of vectors",
    "a quiet city in winter light",
    "the storm over the green mountain river",
    "fast rust engine for sentence tokens",
    "a market garden in summer",
    "shard replica query document index",
];

/// Where the controller's tools and the staged files are.
struct Setup {
    ansible_bin: PathBuf,
    dist: PathBuf,
    base_image: String,
}

impl Setup {
    async fn find() -> anyhow::Result<Self> {
        let root = repo_root();
        let cache = std::env::var_os("FLOWMESH_CACHE").map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/flowmesh"),
            PathBuf::from,
        );
        let ansible_bin = std::env::var_os("ANSIBLE_BIN")
            .map_or_else(|| cache.join("ansible-venv/bin"), PathBuf::from);
        ensure!(
            ansible_bin.join("ansible-playbook").is_file(),
            "no ansible-playbook in {} (run scripts/ansible-venv.sh; set ANSIBLE_BIN to the \
             folder it prints)",
            ansible_bin.display()
        );
        let dist = std::env::var_os("FLOWMESH_DIST")
            .map_or_else(|| root.join("target/dist"), PathBuf::from);
        ensure_staged(
            &dist,
            &["bin/flowmesh-gateway", "cache/models/minilm"],
            "run scripts/dist.sh, or set FLOWMESH_DIST",
        )?;
        let base_image = std::env::var("FLOWMESH_BASE_IMAGE")
            .unwrap_or_else(|_| "flowmesh-base:bookworm".to_owned());
        docker(&["image", "inspect", "-f", "{{.Id}}", &base_image])
            .await
            .with_context(|| format!("no image {base_image} (run scripts/docker-base.sh)"))?;
        Ok(Self {
            ansible_bin,
            dist: dist.canonicalize()?,
            base_image,
        })
    }

    /// Runs `ansible-playbook -i INVENTORY PLAYBOOK ARGS` from `ansible/`; its output.
    async fn playbook(
        &self,
        work: &Path,
        playbook: &str,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<String> {
        let dir = repo_root().join("ansible");
        let inventory = work.join("hosts.yml");
        let mut argv = vec!["-i", inventory.to_str().context("utf-8 path")?, playbook];
        argv.extend_from_slice(args);
        let path = format!(
            "{}:{}",
            self.ansible_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let envs = [
            ("PATH", path),
            (
                "ANSIBLE_CONFIG",
                dir.join("ansible.cfg").display().to_string(),
            ),
            (
                "ANSIBLE_HOME",
                work.join("ansible-home").display().to_string(),
            ),
            ("ANSIBLE_NOCOLOR", "1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let started = Instant::now();
        let program = self.ansible_bin.join("ansible-playbook");
        let out = run_cmd(
            program.to_str().context("utf-8 path")?,
            &argv,
            &envs,
            &dir,
            None,
            limit,
        )
        .await
        .with_context(|| format!("ansible-playbook {playbook} {}", args.join(" ")))?;
        eprintln!(
            "ansible-playbook {playbook} {} took {:.0}s; recap:\n{}",
            args.join(" "),
            started.elapsed().as_secs_f64(),
            recap(&out)
        );
        Ok(out)
    }
}

/// The PLAY RECAP lines of a playbook's output.
fn recap(out: &str) -> String {
    out.split("PLAY RECAP")
        .last()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ok="))
        .collect::<Vec<_>>()
        .join("\n")
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0_u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The inventory of the five containers: hosts by IP (their private address), the SSH user and
/// key, TLS on, and the settings of hosts without network. Its secrets are made by the
/// credentials role in `credentials/` beside it, except the read-only API key, which the test
/// brings (as a user may).
fn inventory(hosts: &Hosts, key: &Path, dist: &Path) -> anyhow::Result<Value> {
    let mut groups = serde_json::Map::new();
    for role in ansible_support::ROLES {
        groups.insert(
            role.to_owned(),
            json!({"hosts": {format!("{role}-1"): {"ansible_host": hosts.ip(role)}}}),
        );
    }
    Ok(json!({"all": {
        "vars": {
            "ansible_user": "deploy",
            "ansible_ssh_private_key_file": key,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "flowmesh_dist_dir": dist,
            // apt needs no network (the base has redis-server); systemd is the service manager.
            "flowmesh_apt_update_cache": false,
            "flowmesh_tls": true,
            // The real model, one inference thread per instance: the machine has two cores.
            "flowmesh_encoder_model": "onnx",
            "flowmesh_encoder_threads": 1,
            "flowmesh_encoder_replicas": 2,
            "flowmesh_indexer_shards_per_host": 2,
            "flowmesh_indexer_copies": 2,
            "flowmesh_ranker_replicas": 2,
        },
        "children": groups,
    }}))
}

fn search_body(query: &str) -> Value {
    json!({"data": [{"text": query}], "parameters": {"top_k": TOP_K}})
}

/// The ids of a search answer's matches, after checking that there are exactly `TOP_K` of them
/// and that each has its stored text (filled in by the ranker from Redis).
fn match_ids(answer: &Value) -> Result<Vec<String>, String> {
    let matches = answer["data"][0]["matches"]
        .as_array()
        .ok_or_else(|| format!("no matches in {answer}"))?;
    if matches.len() != TOP_K {
        return Err(format!("{} matches instead of {TOP_K}", matches.len()));
    }
    matches
        .iter()
        .map(|m| {
            let text = m["text"].as_str().unwrap_or_default();
            if text.is_empty() {
                return Err(format!("match {} has no stored text", m["id"]));
            }
            Ok(m["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

#[derive(Debug, Default)]
struct LoadReport {
    ok: u64,
    failed: u64,
    samples: Vec<String>,
}

/// Searches `url` with `concurrency` loops until `stop` is set; every answer must be a 200 with
/// exactly the reference matches of its query.
async fn search_load(
    http: Http,
    url: String,
    reference: Arc<Vec<Vec<String>>>,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let loops = (0..concurrency).map(|worker| {
        let (http, url, reference, stop) =
            (http.clone(), url.clone(), reference.clone(), stop.clone());
        tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                // A steady load (about 10 searches/s per loop), not a saturating one: the two
                // cores also run the five hosts and the controller.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let q = i % QUERIES.len();
                i += concurrency;
                let outcome = match http
                    .post(&url, &search_body(QUERIES[q]), Duration::from_secs(30))
                    .await
                {
                    Err(e) => Err(format!("{e:#}")),
                    Ok((200, answer)) => match match_ids(&answer) {
                        Ok(ids) if ids == reference[q] => Ok(()),
                        Ok(ids) => Err(format!(
                            "query {q}: ids {ids:?} instead of {:?}",
                            reference[q]
                        )),
                        Err(e) => Err(format!("query {q}: {e}")),
                    },
                    Ok((status, answer)) => Err(format!("status {status}: {answer}")),
                };
                match outcome {
                    Ok(()) => report.ok += 1,
                    Err(e) => {
                        report.failed += 1;
                        if report.samples.len() < 5 {
                            report.samples.push(e);
                        }
                    }
                }
            }
            report
        })
    });
    let mut total = LoadReport::default();
    for r in futures_join(loops.collect()).await {
        total.ok += r.ok;
        total.failed += r.failed;
        total.samples.extend(r.samples);
    }
    total
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<LoadReport>>) -> Vec<LoadReport> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| LoadReport {
            ok: 0,
            failed: 1,
            samples: vec![format!("search loop panicked: {e}")],
        }));
    }
    out
}

/// Every flowmesh unit of `before` has another process in `after`.
fn assert_restarted(
    role: &str,
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    expected_units: usize,
) -> anyhow::Result<()> {
    let units: Vec<&String> = before
        .keys()
        .filter(|u| u.starts_with("flowmesh-"))
        .collect();
    ensure!(
        units.len() == expected_units,
        "{role}: expected {expected_units} flowmesh services, found {units:?}"
    );
    for unit in units {
        let (old, new) = (&before[unit], after.get(unit));
        ensure!(
            new.is_some_and(|n| n != old && !n.ends_with("@gone")),
            "{role}: {unit} was not restarted (before {old}, after {new:?})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker; run by scripts/test.sh"]
async fn site_then_rolling_update_keeps_search_answering() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let setup = Setup::find().await?;
    host_image(&setup.base_image).await?;

    let work =
        std::env::temp_dir().join(format!("fmans-{}-{}", std::process::id(), random_hex(3)?));
    std::fs::create_dir_all(&work)?;
    let key = work.join("id_ed25519");
    run_cmd(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "flowmesh-ansible-test",
            "-f",
            key.to_str().context("utf-8 path")?,
        ],
        &[],
        &work,
        None,
        Duration::from_secs(30),
    )
    .await?;
    let public_key = std::fs::read_to_string(work.join("id_ed25519.pub"))?;

    let prefix = work
        .file_name()
        .and_then(|n| n.to_str())
        .context("name")?
        .to_owned();
    let hosts = Hosts::start(&prefix, &public_key).await?;
    hosts.wait_for_ssh(Duration::from_secs(60)).await?;
    std::fs::write(
        work.join("hosts.yml"),
        serde_json::to_string_pretty(&inventory(&hosts, &key, &setup.dist)?)?,
    )?;
    eprintln!(
        "hosts up after {:.0}s: {:?}",
        t0.elapsed().as_secs_f64(),
        hosts.hosts
    );

    // The read-only API key is the test's own (a user's own key); every other secret is made
    // by the credentials role beside the inventory.
    let credentials = work.join("credentials");
    std::fs::create_dir_all(&credentials)?;
    let read_only_key = random_hex(24)?;
    write_private(
        &credentials.join("read_only_api_key"),
        &format!("# the test's read-only key\n{read_only_key}\n"),
    )?;

    // 1. Install and start everything.
    setup
        .playbook(&work, "site.yml", &[], Duration::from_secs(420))
        .await?;
    let secrets = Secrets::read(&credentials)?;
    ensure!(
        secrets.read_only_key == read_only_key,
        "the given read-only key is kept"
    );

    // 2. The mesh from another host, then the units.
    from_the_client_host(&hosts, &secrets).await?;
    units_restart_on_failure(&hosts).await?;

    // 3. Index, take the reference answers, then the rolling update of a new release under
    //    search load (searches with the read-only key, over HTTPS verified with the CA).
    let ca = credentials.join("ca/ca.crt");
    let writer = Http::new(&ca, Some(secrets.read_write_key.clone()))?;
    let http = writer.with_key(Some(secrets.read_only_key.clone()));
    let gateway = format!("https://{}:8080", hosts.ip("flow"));
    let data: Vec<Value> = CORPUS
        .iter()
        .map(|(id, text)| json!({"id": id, "text": text}))
        .collect();
    let (status, answer) = writer
        .post(
            &format!("{gateway}/index"),
            &json!({ "data": data }),
            Duration::from_secs(60),
        )
        .await?;
    ensure!(status == 200, "index: status {status}: {answer}");
    let url = format!("{gateway}/search");
    let mut reference = Vec::new();
    for q in QUERIES {
        let (status, answer) = http
            .post(&url, &search_body(q), Duration::from_secs(30))
            .await?;
        ensure!(status == 200, "search {q:?}: status {status}: {answer}");
        reference.push(match_ids(&answer).map_err(anyhow::Error::msg)?);
    }
    let roles = ["encoder", "indexer", "ranker", "flow"];
    let mut before = Vec::new();
    for role in roles {
        before.push(hosts.processes(role).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(search_load(
        http.clone(),
        url.clone(),
        Arc::new(reference),
        2,
        stop.clone(),
    ));
    let rollout = setup
        .playbook(
            &work,
            "rolling-update.yml",
            &[
                "-e",
                "flowmesh_release=2",
                "-e",
                "flowmesh_rolling_gateway=false",
            ],
            Duration::from_secs(420),
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await?;
    rollout?;
    eprintln!(
        "searches during the rolling update: {} answered, {} failed {:?}",
        report.ok, report.failed, report.samples
    );
    ensure!(
        report.failed == 0,
        "{} searches failed during the rolling update: {:?}",
        report.failed,
        report.samples
    );
    ensure!(
        report.ok >= 20,
        "only {} searches ran during the rolling update",
        report.ok
    );

    let mut after = Vec::new();
    for role in roles {
        after.push(hosts.processes(role).await?);
    }
    assert_restarted("encoder", &before[0], &after[0], 2)?;
    assert_restarted("indexer", &before[1], &after[1], 4)?;
    assert_restarted("ranker", &before[2], &after[2], 2)?;
    ensure!(
        before[2].contains_key("redis-server")
            && before[2].get("redis-server") == after[2].get("redis-server"),
        "Redis must keep running through the rolling update: before {:?}, after {:?}",
        before[2].get("redis-server"),
        after[2].get("redis-server")
    );
    ensure!(
        before[3] == after[3],
        "the gateway was restarted although skipped: {:?} -> {:?}",
        before[3],
        after[3]
    );

    // 4. The same rollout again, now with the gateway (last): the executors are at this
    //    release already, so nothing of theirs may change or restart; only the gateway is
    //    replaced (clients see a short outage with one flow host), and answers again.
    let again = setup
        .playbook(
            &work,
            "rolling-update.yml",
            &["-e", "flowmesh_release=2"],
            Duration::from_secs(300),
        )
        .await?;
    let changed: Vec<&str> = recap_lines(&again)
        .filter(|l| !l.starts_with("flow-") && !l.contains(" changed=0 "))
        .collect();
    ensure!(
        changed.is_empty(),
        "a second rollout of the same release changed executor hosts: {changed:?}\n{}",
        tail(&again, 80)
    );
    let mut last = Vec::new();
    for role in roles {
        last.push(hosts.processes(role).await?);
    }
    for (i, role) in roles.iter().enumerate().take(3) {
        ensure!(
            after[i] == last[i],
            "{role}: a second rollout of the same release restarted services: {:?} -> {:?}",
            after[i],
            last[i]
        );
    }
    assert_restarted("flow", &after[3], &last[3], 1)?;
    let (status, answer) = http
        .post(&url, &search_body(QUERIES[0]), Duration::from_secs(30))
        .await?;
    ensure!(
        status == 200,
        "search after the gateway's restart: status {status}: {answer}"
    );
    match_ids(&answer).map_err(anyhow::Error::msg)?;

    no_secret_shown(&hosts, &secrets).await?;
    eprintln!("ansible test passed in {:.0}s", t0.elapsed().as_secs_f64());
    drop(hosts);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The inventory's secrets, as the credentials role left them on the controller.
struct Secrets {
    mesh_token: String,
    read_write_key: String,
    read_only_key: String,
    redis_password: String,
}

impl Secrets {
    /// Reads them, after checking that the folder and every file are private to their owner.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| -> anyhow::Result<u32> {
            Ok(std::fs::metadata(p)
                .with_context(|| p.display().to_string())?
                .permissions()
                .mode()
                & 0o777)
        };
        ensure!(mode(dir)? == 0o700, "{} is not 0700", dir.display());
        let read = |name: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            ensure!(mode(&path)? == 0o600, "{name} is not 0600");
            let text = std::fs::read_to_string(&path)?;
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .with_context(|| format!("no secret in {name}"))
        };
        ensure!(mode(&dir.join("ca/ca.key"))? == 0o600, "ca.key is not 0600");
        Ok(Self {
            mesh_token: read("mesh_token")?,
            read_write_key: read("api_key")?,
            read_only_key: read("read_only_api_key")?,
            redis_password: read("redis_password")?,
        })
    }

    fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("the mesh token", &self.mesh_token),
            ("the read-write API key", &self.read_write_key),
            ("the read-only API key", &self.read_only_key),
            ("the Redis password", &self.redis_password),
        ]
    }
}

/// `curl` on the client host, with headers (secrets among them) given on its stdin, never on
/// its command line: the HTTP status, or 0 when no HTTP answer came (TLS or connection error).
async fn curl_status(
    hosts: &Hosts,
    from: &str,
    url: &str,
    headers: &[String],
    body: Option<&Value>,
) -> anyhow::Result<u16> {
    let data = body.map_or_else(String::new, |b| {
        format!(
            "-H 'content-type: application/json' --data-binary {}",
            shell_quote(&b.to_string())
        )
    });
    let script = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 --cacert /etc/flowmesh/tls/ca.crt \
         -H @- {data} {url} || true"
    );
    let stdin: String = headers.iter().map(|h| format!("{h}\n")).collect();
    let out = run_cmd(
        "docker",
        &["exec", "-i", hosts.name(from), "sh", "-c", &script],
        &[],
        &repo_root(),
        Some(&stdin),
        Duration::from_secs(30),
    )
    .await?;
    Ok(out.trim().parse().unwrap_or(0))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// From the client host (another host of the private network): every executor refuses calls
/// without the mesh token or with a wrong one (401) and answers its open health routes; plain
/// HTTP to a TLS port gets no answer; the gateway searches with the read-only key, refuses a
/// write with it (403) and anything without a key (401); Redis does not even answer; and the
/// services listen on the hosts' private addresses only, not on loopback.
async fn from_the_client_host(hosts: &Hosts, secrets: &Secrets) -> anyhow::Result<()> {
    let search = json!({"data": [{"text": "a person rides a horse"}], "parameters": {"top_k": 3}});
    let wrong = format!("Authorization: Bearer {}", random_hex(16)?);
    let executors = [("encoder", 9001), ("indexer", 9101), ("ranker", 9201)];
    for (role, port) in executors {
        let base = format!("https://{}:{port}", hosts.ip(role));
        for endpoint in ["search", "index", "delete"] {
            let url = format!("{base}/{endpoint}");
            let none = curl_status(hosts, "client", &url, &[], Some(&search)).await?;
            let bad = curl_status(
                hosts,
                "client",
                &url,
                std::slice::from_ref(&wrong),
                Some(&search),
            )
            .await?;
            ensure!(
                none == 401 && bad == 401,
                "{role} /{endpoint} without the mesh token: {none}, with a wrong one: {bad}"
            );
        }
        for open in ["livez", "readyz"] {
            let status = curl_status(hosts, "client", &format!("{base}/{open}"), &[], None).await?;
            ensure!(status == 200, "{role} /{open} is open: {status}");
        }
        let plain = format!("http://{}:{port}/livez", hosts.ip(role));
        let status = curl_status(hosts, "client", &plain, &[], None).await?;
        ensure!(
            status == 0,
            "plain HTTP to {role}'s TLS port answered {status}"
        );
        // Bound to the private address only.
        let local = hosts
            .exec(
                role,
                &format!("curl -s -o /dev/null -w '%{{http_code}}' -k https://127.0.0.1:{port}/livez || true"),
                Duration::from_secs(20),
            )
            .await?;
        ensure!(
            local.trim() == "000",
            "{role} answers on 127.0.0.1:{port} ({local}): it should listen on its private address only"
        );
    }
    let gateway = format!("https://{}:8080", hosts.ip("flow"));
    let read_only = format!("api-key: {}", secrets.read_only_key);
    let status = curl_status(
        hosts,
        "client",
        &format!("{gateway}/search"),
        std::slice::from_ref(&read_only),
        Some(&search),
    )
    .await?;
    ensure!(status == 200, "search with the read-only key: {status}");
    let index = json!({"data": [{"id": "intruder", "text": "HACKED"}]});
    let status = curl_status(
        hosts,
        "client",
        &format!("{gateway}/index"),
        &[read_only],
        Some(&index),
    )
    .await?;
    ensure!(status == 403, "index with the read-only key: {status}");
    let status = curl_status(
        hosts,
        "client",
        &format!("{gateway}/search"),
        &[],
        Some(&search),
    )
    .await?;
    ensure!(status == 401, "search without a key: {status}");
    let bearer = format!("Authorization: Bearer {}", secrets.read_write_key);
    let status = curl_status(
        hosts,
        "client",
        &format!("{gateway}/status"),
        &[bearer],
        None,
    )
    .await?;
    ensure!(
        status == 200,
        "status with the read-write key as a bearer token: {status}"
    );

    // Redis: dropped by the firewall for any host but the rankers' (no answer at all), and
    // answering the ranker host with the password (given in redis-cli's environment).
    let ranker_ip = hosts.ip("ranker");
    let stranger = hosts
        .exec(
            "client",
            &format!("timeout 5 redis-cli -h {ranker_ip} -p 6379 ping 2>&1; echo exit=$?"),
            Duration::from_secs(20),
        )
        .await?;
    ensure!(
        !stranger.contains("PONG") && !stranger.contains("NOAUTH") && stranger.contains("exit=124"),
        "Redis must not answer the client host: {stranger}"
    );
    let own = run_cmd(
        "docker",
        &[
            "exec",
            "-i",
            hosts.name("ranker"),
            "sh",
            "-c",
            &format!("read -r pw; REDISCLI_AUTH=\"$pw\" redis-cli -h {ranker_ip} -p 6379 ping"),
        ],
        &[],
        &repo_root(),
        Some(&format!("{}\n", secrets.redis_password)),
        Duration::from_secs(20),
    )
    .await?;
    ensure!(own.trim() == "PONG", "Redis answers the ranker host: {own}");
    let no_password = hosts
        .exec(
            "ranker",
            &format!("redis-cli -h {ranker_ip} -p 6379 ping 2>&1 || true"),
            Duration::from_secs(20),
        )
        .await?;
    ensure!(
        no_password.contains("NOAUTH"),
        "Redis wants its password: {no_password}"
    );
    eprintln!("from the client host: executors refuse calls without the mesh token, the read-only key searches only, Redis is out of reach");
    Ok(())
}

/// systemd runs the units: one killed with SIGKILL is started again by itself (Restart=
/// on-failure) and answers its health check.
async fn units_restart_on_failure(hosts: &Hosts) -> anyhow::Result<()> {
    let unit = "flowmesh-encoder@9001";
    let before = hosts.main_pid("encoder", unit).await?;
    ensure!(before > 0, "{unit} runs under systemd");
    hosts
        .exec(
            "encoder",
            &format!("kill -KILL {before}"),
            Duration::from_secs(20),
        )
        .await?;
    let started = Instant::now();
    loop {
        let now = hosts.main_pid("encoder", unit).await.unwrap_or(0);
        let state = hosts
            .exec(
                "encoder",
                &format!("systemctl is-active {unit} || true"),
                Duration::from_secs(20),
            )
            .await?;
        if now > 0 && now != before && state.trim() == "active" {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{unit} was not restarted after SIGKILL (pid {before} -> {now}, {})",
            state.trim()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ip = hosts.ip("encoder");
    let ready = hosts
        .exec(
            "encoder",
            &format!(
                "for i in $(seq 60); do curl -fsS -o /dev/null --cacert /etc/flowmesh/tls/ca.crt \
                 https://{ip}:9001/readyz && echo ready && break; sleep 1; done"
            ),
            Duration::from_secs(90),
        )
        .await?;
    ensure!(
        ready.contains("ready"),
        "{unit} is not ready after its restart"
    );
    eprintln!(
        "systemd restarted {unit} after SIGKILL in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// No secret in what the hosts show: `systemctl show` of every unit, the journal, the service
/// logs, and the command line of every process.
async fn no_secret_shown(hosts: &Hosts, secrets: &Secrets) -> anyhow::Result<()> {
    for role in ansible_support::ROLES {
        let shown = hosts
            .exec(
                role,
                "systemctl show '*' --all --no-pager 2>/dev/null; \
                 journalctl --no-pager -o verbose 2>/dev/null; \
                 cat /var/log/flowmesh/*.log /var/log/redis/*.log 2>/dev/null; \
                 for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done 2>/dev/null; true",
                Duration::from_secs(120),
            )
            .await?;
        ensure!(
            shown.len() > 1000,
            "{role}: too little to check ({} bytes)",
            shown.len()
        );
        for (what, value) in secrets.all() {
            ensure!(
                !shown.contains(value),
                "{role}: {what} appears in systemctl show, the journal, a log or a command line"
            );
        }
    }
    eprintln!("no secret in systemctl show, the journals, the logs or any command line");
    Ok(())
}

fn recap_lines(out: &str) -> impl Iterator<Item = &str> {
    out.split("PLAY RECAP")
        .last()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ok="))
}
