//! The Ansible rollout, for real: five containers on a private Docker network stand in for the
//! seed's five machines (client, flow, encoder, indexer, ranker with Redis), each with sshd and a
//! sudo user. This machine is the controller: `ansible-playbook` from `scripts/ansible-venv.sh`
//! runs `ansible/site.yml` over SSH with the staged binaries and models (`scripts/dist.sh`), the
//! client host benchmarks the flow host's gateway, then `ansible/rolling-update.yml` rolls a new
//! release out while searches from this machine keep going, and none may fail.
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
            &[
                "bin/flowmesh-gateway",
                "bin/flowmesh-bench",
                "cache/models/minilm",
            ],
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

/// The inventory of the five containers: hosts by IP, the SSH user and key, and the settings
/// of hosts without systemd or network.
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
            // Containers: no systemd, and apt needs no network (the base has redis-server).
            "flowmesh_service_manager": "supervise",
            "flowmesh_apt_update_cache": false,
            "flowmesh_redis_password": random_hex(16)?,
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

    // 1. Install and start everything.
    setup
        .playbook(&work, "site.yml", &[], Duration::from_secs(300))
        .await?;

    // 2. A short benchmark from the client host against the flow host's gateway: indexes 200
    //    documents, then searches at two concurrencies; every answer must have TOP_K matches.
    let bench = hosts
        .exec(
            "client",
            &format!(
                "flowmesh-bench overhead --gateway http://flow:8080 --docs 200 --request-size 50 \
                 --concurrency 1,4 --requests 300 --duration-secs 5 --top-k {TOP_K} --out /tmp/bench.json \
                 && cat /tmp/bench.json"
            ),
            Duration::from_secs(120),
        )
        .await
        .context("flowmesh-bench on the client host")?;
    let json_start = bench.find('{').context("no JSON from flowmesh-bench")?;
    let result: Value =
        serde_json::from_str(&bench[json_start..]).context("flowmesh-bench's JSON")?;
    let rows = result["search"].as_array().context("no search rows")?;
    ensure!(rows.len() == 2, "expected 2 search phases: {result}");
    for row in rows {
        ensure!(row["errors"] == 0, "benchmark errors: {row}");
        ensure!(
            row["requests"].as_u64().unwrap_or(0) > 0,
            "no benchmark requests: {row}"
        );
    }
    eprintln!(
        "benchmark from the client host:\n{}",
        tail(&bench[..json_start], 8)
    );

    // 3. The reference answers, then the rolling update of a new release under search load.
    let http = Http::default();
    let url = format!("http://{}:8080/search", hosts.ip("flow"));
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
            Duration::from_secs(300),
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

    eprintln!("ansible test passed in {:.0}s", t0.elapsed().as_secs_f64());
    drop(hosts);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn recap_lines(out: &str) -> impl Iterator<Item = &str> {
    out.split("PLAY RECAP")
        .last()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ok="))
}
