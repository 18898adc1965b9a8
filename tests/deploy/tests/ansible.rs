//! The Ansible rollout, for real: six containers on a private Docker network stand in for the
//! seed's five machines (client, flow, encoder, indexer, ranker with Redis) and a second indexer
//! host, each with systemd as PID 1 (the path real hosts take), sshd and a sudo user. The index
//! has two shards with two mirrored copies each, copy c of shard s on indexer host (s + c) mod 2,
//! following their shard's log (nats-server on the flow host, behind its firewall). This
//! machine is the controller: `ansible-playbook` from `scripts/ansible-venv.sh` runs
//! `ansible/site.yml` over SSH with the staged binaries and models (`scripts/dist.sh`), secure as
//! the AWS inventory is: API keys, the mesh token, TLS from the inventory's private CA, services
//! on the hosts' private addresses, Redis and nats-server behind their firewalls. From the client host it checks that executors refuse calls
//! without the mesh token and that the read-only key searches (and cannot write); it checks the
//! units (restart on failure; no secret in `systemctl show`, the journal or any command line);
//! then, under a steady load of searches and of small index requests, one indexer host loses
//! its services and its data and is brought back by `site.yml`: no search fails, no write is
//! refused, every acknowledged document is found afterwards and the two copies of every shard
//! agree (position, count, digest); then `ansible/rolling-update.yml` rolls a new release out
//! while searches from this machine keep going, and none may fail.
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

use ansible_support::{
    docker, ensure_staged, host_image, repo_root, run_cmd, tail, wait_until, Hosts, Http, HOSTS,
};
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

/// The inventory of the six containers: hosts by IP (their private address), the SSH user and
/// key, TLS on, and the settings of hosts without network. Its secrets are made by the
/// credentials role in `credentials/` beside it, except the read-only API key, which the test
/// brings (as a user may).
fn inventory(hosts: &Hosts, key: &Path, dist: &Path) -> anyhow::Result<Value> {
    let mut groups = serde_json::Map::new();
    for (host, group) in HOSTS {
        let entry = groups
            .entry(group.to_owned())
            .or_insert_with(|| json!({"hosts": {}}));
        entry["hosts"][inventory_name(host)] = json!({"ansible_host": hosts.ip(host)});
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
            // Two shards, two mirrored copies of each: one copy of every shard on each indexer
            // host.
            "flowmesh_indexer_shards": 2,
            "flowmesh_indexer_replicas": 2,
            "flowmesh_ranker_replicas": 2,
        },
        "children": groups,
    }}))
}

/// A host's name in the inventory: `indexer-2` as it is, `ROLE-1` for the first of each role.
fn inventory_name(host: &str) -> String {
    if host.contains('-') {
        host.to_owned()
    } else {
        format!("{host}-1")
    }
}

/// The inventory's copies of each index shard: (host, port) of copy c of shard s, on indexer
/// host (s + c) mod 2 (in inventory order: indexer-1, indexer-2), port 9101 + 2 s + c.
const SHARD_COPIES: [[(&str, u16); 2]; 2] = [
    [("indexer", 9101), ("indexer-2", 9102)],
    [("indexer-2", 9103), ("indexer", 9104)],
];

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
/// `TOP_K` matches that have their stored text, and with exactly the reference matches of its
/// query when there is a reference (none while documents are being indexed).
async fn search_load(
    http: Http,
    url: String,
    reference: Option<Arc<Vec<Vec<String>>>>,
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
                    Ok((200, answer)) => match (match_ids(&answer), reference.as_deref()) {
                        (Ok(_), None) => Ok(()),
                        (Ok(ids), Some(reference)) if ids == reference[q] => Ok(()),
                        (Ok(ids), Some(reference)) => Err(format!(
                            "query {q}: ids {ids:?} instead of {:?}",
                            reference[q]
                        )),
                        (Err(e), _) => Err(format!("query {q}: {e}")),
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

/// What the index load saw.
#[derive(Debug, Default)]
struct IndexReport {
    /// The documents whose request was acknowledged (200).
    acknowledged: Vec<(String, String)>,
    failed: u64,
    samples: Vec<String>,
}

/// A document of the index load: one sentence, found first by its own text.
fn load_doc(n: usize) -> (String, String) {
    const MATERIALS: [&str; 6] = ["brass", "ceramic", "walnut", "granite", "copper", "nylon"];
    const PARTS: [&str; 6] = ["hinge", "bracket", "washer", "spindle", "valve", "gasket"];
    (
        format!("ledger-{n:04}"),
        format!(
            "Ledger line {n} lists a {} {} of {} millimetres.",
            MATERIALS[n % 6],
            PARTS[(n / 6) % 6],
            10 + 7 * n
        ),
    )
}

/// Indexes two documents per request, one request every 200 ms (at most 1000 requests), until
/// `stop` is set.
async fn index_load(writer: Http, url: String, stop: Arc<AtomicBool>) -> IndexReport {
    let mut report = IndexReport::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < 2000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let docs = [load_doc(n), load_doc(n + 1)];
        n += 2;
        let data: Vec<Value> = docs
            .iter()
            .map(|(id, text)| json!({"id": id, "text": text}))
            .collect();
        let outcome = match writer
            .post(&url, &json!({ "data": data }), Duration::from_secs(30))
            .await
        {
            Ok((200, _)) => Ok(()),
            Ok((status, answer)) => Err(format!("status {status}: {answer}")),
            Err(e) => Err(format!("{e:#}")),
        };
        match outcome {
            Ok(()) => report.acknowledged.extend(docs),
            Err(e) => {
                report.failed += 1;
                if report.samples.len() < 5 {
                    report.samples.push(e);
                }
            }
        }
    }
    report
}

/// One index copy's `GET /stats`, asked on its host with the mesh token (a header given on
/// curl's stdin, never on a command line).
async fn copy_stats(
    hosts: &Hosts,
    secrets: &Secrets,
    host: &str,
    port: u16,
) -> anyhow::Result<Value> {
    let ip = hosts.ip(host);
    let script = format!(
        "curl -fsS --max-time 10 --cacert /etc/flowmesh/tls/ca.crt -H @- https://{ip}:{port}/stats"
    );
    let out = run_cmd(
        "docker",
        &["exec", "-i", hosts.name(host), "sh", "-c", &script],
        &[],
        &repo_root(),
        Some(&format!("Authorization: Bearer {}\n", secrets.mesh_token)),
        Duration::from_secs(30),
    )
    .await?;
    serde_json::from_str(&out).with_context(|| format!("{host}:{port} /stats: {out}"))
}

/// Whether the two copies of `shard` agree: both ready, following the shard's log, at the same
/// position with the same count and content digest (32 hex digits).
fn copies_agree(shard: usize, a: &Value, b: &Value) -> anyhow::Result<()> {
    let log = format!("FLOWMESH_indexer_{shard}");
    for (copy, stats) in [(SHARD_COPIES[shard][0], a), (SHARD_COPIES[shard][1], b)] {
        let mirror = &stats["mirror"];
        ensure!(
            mirror["log"] == log.as_str(),
            "{copy:?} follows {log}: {stats}"
        );
        ensure!(mirror["state"] == "ready", "{copy:?} is ready: {stats}");
        let digest = mirror["digest"].as_str().unwrap_or_default();
        ensure!(
            digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{copy:?}: a digest of 32 hex digits: {stats}"
        );
    }
    for field in ["log_id", "position", "count", "digest"] {
        ensure!(
            a["mirror"][field] == b["mirror"][field],
            "the copies of shard {shard} differ in {field}: {a} / {b}"
        );
    }
    ensure!(a["count"] == b["count"], "the copies' counts: {a} / {b}");
    Ok(())
}

/// Waits until the two copies of every shard agree; the number of vectors of each shard then.
async fn shards_agree(hosts: &Hosts, secrets: &Secrets) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for (shard, [(ha, pa), (hb, pb)]) in SHARD_COPIES.iter().enumerate() {
        let count = std::sync::Mutex::new(0_u64);
        wait_until(
            &format!("the copies of shard {shard} agree"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let count = &count;
                async move {
                    let a = copy_stats(hosts, secrets, ha, *pa).await?;
                    let b = copy_stats(hosts, secrets, hb, *pb).await?;
                    copies_agree(shard, &a, &b)?;
                    *count.lock().map_err(|_| anyhow::anyhow!("poisoned"))? =
                        a["count"].as_u64().context("a count")?;
                    Ok(true)
                }
            },
        )
        .await?;
        counts.push(
            count
                .into_inner()
                .map_err(|_| anyhow::anyhow!("poisoned"))?,
        );
    }
    Ok(counts)
}

/// Under a steady load of searches and of small index requests, the second indexer host loses
/// its flowmesh services and its data folder (a host lost with its disk), then `site.yml
/// --limit indexer-2` brings it back (its copies restore from their peers on the other host,
/// then follow the log). No search fails, no write is refused, the copies of every shard agree
/// afterwards and every acknowledged document finds itself.
async fn indexer_host_lost_and_restored(
    setup: &Setup,
    work: &Path,
    hosts: &Hosts,
    secrets: &Secrets,
    (writer, http): (&Http, &Http),
    gateway: &str,
) -> anyhow::Result<()> {
    let before: u64 = shards_agree(hosts, secrets).await?.iter().sum();
    let stop = Arc::new(AtomicBool::new(false));
    let searches = tokio::spawn(search_load(
        http.clone(),
        format!("{gateway}/search"),
        None,
        2,
        stop.clone(),
    ));
    let writes = tokio::spawn(index_load(
        writer.clone(),
        format!("{gateway}/index"),
        stop.clone(),
    ));
    let outage = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        hosts
            .exec(
                "indexer-2",
                "systemctl stop 'flowmesh-indexer@*' && rm -rf /var/lib/flowmesh/indexer \
                 && test ! -e /var/lib/flowmesh/indexer",
                Duration::from_secs(90),
            )
            .await
            .context("stopping indexer-2's copies and wiping their data")?;
        let lost = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        setup
            .playbook(
                work,
                "site.yml",
                &["--limit", "indexer-2"],
                Duration::from_secs(420),
            )
            .await?;
        eprintln!(
            "indexer-2 lost its data and was back in {:.0}s",
            lost.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let searched = searches.await?;
    let written = writes.await?;
    outage?;
    eprintln!(
        "while indexer-2 was lost and restored: {} searches answered, {} failed {:?}; \
         {} documents acknowledged, {} index requests failed {:?}",
        searched.ok,
        searched.failed,
        searched.samples,
        written.acknowledged.len(),
        written.failed,
        written.samples
    );
    if searched.failed > 0 {
        // What the ranker and the gateway said meanwhile (matches left out, copies taken out).
        let said = ranker_and_gateway_warnings(hosts).await;
        anyhow::bail!(
            "{} searches failed while indexer-2 was lost: {:?}\n{said}",
            searched.failed,
            searched.samples
        );
    }
    ensure!(searched.ok >= 20, "only {} searches ran", searched.ok);
    ensure!(
        written.failed == 0,
        "{} index requests failed while indexer-2 was lost (one copy of each shard was up): {:?}",
        written.failed,
        written.samples
    );
    ensure!(
        written.acknowledged.len() >= 20,
        "only {} documents were indexed",
        written.acknowledged.len()
    );
    let after: u64 = shards_agree(hosts, secrets).await?.iter().sum();
    ensure!(
        after == before + written.acknowledged.len() as u64,
        "{before} chunks before, {} acknowledged one-sentence documents, {after} after",
        written.acknowledged.len()
    );
    let url = format!("{gateway}/search");
    for (id, text) in &written.acknowledged {
        let body = json!({"data": [{"text": text}], "parameters": {"top_k": 1}});
        let (status, answer) = http.post(&url, &body, Duration::from_secs(30)).await?;
        ensure!(status == 200, "search {text:?}: status {status}: {answer}");
        ensure!(
            answer["data"][0]["matches"][0]["id"] == id.as_str(),
            "the acknowledged document {id} is lost: {text:?} -> {answer}"
        );
    }
    eprintln!(
        "indexer-2 lost and restored: 0 failed searches, 0 refused writes, {} acknowledged \
         documents all found, the copies of both shards agree",
        written.acknowledged.len()
    );
    Ok(())
}

/// The last warnings and errors in the journals of the rankers and of the gateway, for a
/// failure's message.
async fn ranker_and_gateway_warnings(hosts: &Hosts) -> String {
    let mut said = String::new();
    for (role, unit) in [
        ("ranker", "flowmesh-ranker@*"),
        ("flow", "flowmesh-gateway@*"),
    ] {
        let lines = hosts
            .exec(
                role,
                &format!(
                    "journalctl -u '{unit}' --no-pager -o cat 2>/dev/null \
                     | grep -E 'WARN|ERROR' | tail -n 20; true"
                ),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| format!("(cannot read: {e:#})"));
        said.push_str(&format!("{role}'s journal, warnings:\n{lines}\n"));
    }
    said
}

/// `flowmesh snapshot` on the flow host, through the deployed (standalone) gateway with the
/// read-write key from its file: a file per index shard, each as its manifest describes it
/// (size and SHA-256), at a position of the shard's log.
async fn snapshot_on_the_flow_host(hosts: &Hosts, gateway: &str) -> anyhow::Result<()> {
    let out = hosts
        .exec(
            "flow",
            &format!(
                "set -e; rm -rf /tmp/flowmesh-snapshot; \
                 FLOWMESH_API_KEY=\"$(head -n 1 /etc/flowmesh/secrets/api_key)\" \
                 /opt/flowmesh/bin/flowmesh snapshot --gateway {gateway} \
                 --tls-ca /etc/flowmesh/tls/ca.crt --out /tmp/flowmesh-snapshot >&2; \
                 cd /tmp/flowmesh-snapshot; cat manifest.json; echo; echo '--- sums'; \
                 sha256sum indexer/*.snap"
            ),
            Duration::from_secs(60),
        )
        .await
        .context("flowmesh snapshot on the flow host")?;
    let (manifest, sums) = out
        .split_once("\n--- sums\n")
        .with_context(|| format!("a manifest, then the files' sums: {out}"))?;
    let manifest: Value = serde_json::from_str(manifest)
        .with_context(|| format!("the snapshot's manifest: {out}"))?;
    let shards = manifest["shards"].as_array().context("shards")?;
    ensure!(shards.len() == 2, "two index shards: {manifest}");
    for shard in shards {
        let file = shard["file"].as_str().context("file")?;
        let sha = shard["sha256"].as_str().context("sha256")?;
        ensure!(
            sums.lines().any(|l| l.split_whitespace().eq([sha, file])),
            "{file} does not have the manifest's SHA-256 {sha}: {sums}"
        );
        ensure!(
            shard["position"].as_u64().is_some_and(|p| p > 0) && shard["bytes"].as_u64() > Some(0),
            "a snapshot of the indexed shard: {shard}"
        );
    }
    eprintln!(
        "flowmesh snapshot through the deployed gateway: {} shards",
        shards.len()
    );
    Ok(())
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
        .filter(|u| u.starts_with("flowmesh-") && u.contains('@'))
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
    indexer_host_lost_and_restored(&setup, &work, &hosts, &secrets, (&writer, &http), &gateway)
        .await?;
    snapshot_on_the_flow_host(&hosts, &gateway).await?;
    let url = format!("{gateway}/search");
    let mut reference = Vec::new();
    for q in QUERIES {
        let (status, answer) = http
            .post(&url, &search_body(q), Duration::from_secs(30))
            .await?;
        ensure!(status == 200, "search {q:?}: status {status}: {answer}");
        reference.push(match_ids(&answer).map_err(anyhow::Error::msg)?);
    }
    let roles = ["encoder", "indexer", "indexer-2", "ranker", "flow"];
    let mut before = Vec::new();
    for role in roles {
        before.push(hosts.processes(role).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(search_load(
        http.clone(),
        url.clone(),
        Some(Arc::new(reference)),
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
    assert_restarted("indexer", &before[1], &after[1], 2)?;
    assert_restarted("indexer-2", &before[2], &after[2], 2)?;
    assert_restarted("ranker", &before[3], &after[3], 2)?;
    ensure!(
        before[3].contains_key("redis-server")
            && before[3].get("redis-server") == after[3].get("redis-server"),
        "Redis must keep running through the rolling update: before {:?}, after {:?}",
        before[3].get("redis-server"),
        after[3].get("redis-server")
    );
    ensure!(
        before[4].contains_key("flowmesh-nats"),
        "nats-server runs on the flow host: {:?}",
        before[4]
    );
    ensure!(
        before[4] == after[4],
        "the gateway (or nats-server) was restarted although skipped: {:?} -> {:?}",
        before[4],
        after[4]
    );
    shards_agree(&hosts, &secrets).await?;

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
    for (i, role) in roles.iter().enumerate().take(4) {
        ensure!(
            after[i] == last[i],
            "{role}: a second rollout of the same release restarted services: {:?} -> {:?}",
            after[i],
            last[i]
        );
    }
    assert_restarted("flow", &after[4], &last[4], 1)?;
    ensure!(
        after[4].get("flowmesh-nats") == last[4].get("flowmesh-nats"),
        "nats-server keeps running through the gateway's restart: {:?} -> {:?}",
        after[4],
        last[4]
    );
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
    let executors = [
        ("encoder", 9001),
        ("indexer", 9101),
        ("indexer-2", 9102),
        ("ranker", 9201),
    ];
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
    // nats-server (the log, on the flow host): dropped by its firewall for any host but the flow
    // and indexer hosts; an indexer host reaches it, but not without the mesh token.
    let flow_ip = hosts.ip("flow");
    let connect = format!(
        "printf 'CONNECT {{\"verbose\":false}}\\r\\nPING\\r\\n' \
         | timeout 8 curl -s --max-time 5 telnet://{flow_ip}:4222 2>&1; echo exit=$?"
    );
    let stranger = hosts
        .exec("client", &connect, Duration::from_secs(20))
        .await?;
    ensure!(
        !stranger.contains("INFO") && !stranger.contains("exit=0"),
        "nats-server must not answer the client host: {stranger}"
    );
    let tokenless = hosts
        .exec("indexer", &connect, Duration::from_secs(20))
        .await?;
    ensure!(
        tokenless.contains("INFO") && tokenless.contains("Authorization Violation"),
        "nats-server answers an indexer host, and wants the mesh token: {tokenless}"
    );
    eprintln!("from the client host: executors refuse calls without the mesh token, the read-only key searches only, Redis and nats-server are out of reach");
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
    for (role, _) in HOSTS {
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
