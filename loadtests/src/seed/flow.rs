//! The Flows `flowmesh-bench run` starts itself: a Flow YAML written from the knobs (the
//! seed's topologies: sentencizer, encoder replicas, indexer shards, ranker for texts; encoder,
//! indexer shards for images), the wait for the indexers' approximate structures, and the
//! topology a gateway reports on `GET /status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use flowmesh_gateway::flow::spec::{
    ExecutorSpec, FlowSettings, FlowSpec, Merge, PollingSpec, Uses,
};
use serde_json::{json, Map, Value};

use super::workload::Scenario;
use super::{FlowArgs, WorkloadSpec};
use crate::indexer::spec::BackendSpec;
use crate::load::{get, HttpClient};

/// The ranker's document store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Store {
    /// A redb file in the ranker's workspace.
    Embedded,
    /// Redis at `--redis-url`.
    Redis,
    /// The ranker's memory (lost when the Flow stops).
    Memory,
}

impl Store {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Redis => "redis",
            Self::Memory => "memory",
        }
    }
}

/// The encoder's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoder {
    /// MiniLM for texts, MobileNetV2 for images, on ONNX Runtime (`models/prepare.sh`).
    Onnx,
    /// Feature hashing (texts only; needs no model files): for tests and the mesh's own cost.
    Hash,
}

/// When the indexers build their approximate structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Build {
    /// Never: the index Flow only stores vectors (every backend stores them alike).
    Never,
    /// On every change, so that the structure holds every vector once writes stop (a query
    /// Flow opening an indexed workspace builds once, from everything).
    Always,
}

/// Everything a Flow is written from: the Flow's flags, the workload's scenario and request
/// size, and the executors' timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowPlan<'a> {
    pub(crate) flags: &'a FlowArgs,
    pub(crate) workload: &'a WorkloadSpec,
    pub(crate) timeout: Duration,
}

/// Every Flow of a run has this name, so that each finds the data of the one before in the
/// shared workspace (`<workspace>/<flow>/<executor>/shard-S/replica-R`).
pub(crate) const FLOW_NAME: &str = "bench";

/// The `with:` settings of a backend spec: its flags, `--index-key X` as `index_key: X`.
fn indexer_with(spec: &BackendSpec, build: Build) -> Map<String, Value> {
    let mut with = Map::new();
    for pair in spec.flags.chunks(2) {
        if let [flag, value] = pair {
            let key = flag.trim_start_matches("--").replace('-', "_");
            let value = value
                .parse::<u64>()
                .map_or_else(|_| json!(value), |n| json!(n));
            with.insert(key, value);
        }
    }
    if spec.name != "flat" {
        let min: u64 = match build {
            Build::Never => 1 << 40,
            Build::Always => 1,
        };
        with.insert("rebuild_min".into(), json!(min));
        with.insert("rebuild_fraction".into(), json!(0.0));
    }
    with
}

/// An executor of `uses` with these `with:` settings, one replica of one shard.
fn executor(name: &str, uses: Uses, settings: Value) -> ExecutorSpec {
    ExecutorSpec {
        name: name.to_owned(),
        uses,
        needs: None,
        replicas: 1,
        shards: 1,
        polling: None,
        uses_after: None,
        settings: match settings {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        addresses: None,
        endpoints: None,
        timeout_ms: None,
        retries: None,
        stateful: None,
        write_consistency: None,
    }
}

impl FlowPlan<'_> {
    /// The Flow, with `spec` as its indexer.
    pub(crate) fn flow(&self, spec: &BackendSpec, build: Build) -> anyhow::Result<FlowSpec> {
        let encoder_with = match (self.flags.encoder, self.workload.scenario) {
            (Encoder::Hash, Scenario::Image) => bail!("the hash encoder reads texts only"),
            (Encoder::Hash, Scenario::Text) => json!({"model": "hash", "dim": self.flags.dim}),
            (Encoder::Onnx, Scenario::Text) => json!({
                "model": "onnx", "threads": self.flags.encoder_threads,
                "batch_order": self.flags.encoder_batch_order,
            }),
            (Encoder::Onnx, Scenario::Image) => json!({
                "model": "onnx", "model_config": "mobilenetv2", "threads": self.flags.encoder_threads,
            }),
        };
        let mut executors = Vec::new();
        if self.workload.scenario == Scenario::Text {
            let with = json!({"min_sent_len": 2, "max_sent_len": 512});
            executors.push(executor("segmenter", Uses::Sentencizer, with));
        }
        let mut encoder = executor("encoder", Uses::Encoder, encoder_with);
        encoder.replicas = self.flags.replicas;
        executors.push(encoder);
        let mut indexer = executor(
            "indexer",
            Uses::Indexer,
            Value::Object(indexer_with(spec, build)),
        );
        indexer.shards = self.flags.shards;
        indexer.polling = Some(PollingSpec::PerEndpoint(BTreeMap::from(
            [
                ("/index", "any"),
                ("/update", "any"),
                ("/search", "all"),
                ("/delete", "all"),
            ]
            .map(|(e, p)| (e.to_owned(), p.to_owned())),
        )));
        indexer.uses_after = Some(Merge::TopK);
        executors.push(indexer);
        if self.workload.scenario == Scenario::Text {
            let mut with = json!({"store": self.flags.store.as_str()});
            if self.flags.store == Store::Redis {
                let url = self
                    .flags
                    .redis_url
                    .as_deref()
                    .context("--store redis needs --redis-url")?;
                with["redis_url"] = json!(url);
                with["redis_prefix"] = json!("flowmesh-bench:doc:");
            }
            executors.push(executor("ranker", Uses::Ranker, with));
        }
        Ok(FlowSpec {
            jtype: None,
            version: None,
            name: FLOW_NAME.to_owned(),
            settings: FlowSettings {
                request_size: self.workload.request_size,
                prefetch: self.flags.prefetch,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                ..FlowSettings::default()
            },
            executors,
        })
    }

    /// Writes the Flow for `spec` into `dir` and returns its path.
    pub(crate) fn write(
        &self,
        dir: &Path,
        spec: &BackendSpec,
        build: Build,
        n: usize,
    ) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("flow-{n}.yml"));
        let yaml = serde_yaml_ng::to_string(&self.flow(spec, build)?)?;
        std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// `GET /status` of a gateway, or `Value::Null` where it has none (Jina).
pub(crate) async fn status(http: &HttpClient, gateway: &str) -> Value {
    match get(http, &format!("{gateway}/status")).await {
        Ok(a) if a.status == 200 => serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// The topology in a few words: `encoder x2 replicas, indexer x2 shards`.
pub(crate) fn topology_line(status: &Value) -> String {
    let executors = status["executors"].as_array().into_iter().flatten();
    let parts: Vec<String> = executors
        .map(|e| {
            let shards = e["shards"].as_array().map_or(0, Vec::len);
            let replicas = e["replicas"].as_u64().unwrap_or(1);
            let mut s = format!(
                "{} ({})",
                e["name"].as_str().unwrap_or("?"),
                e["uses"].as_str().unwrap_or("?")
            );
            if shards > 1 {
                s.push_str(&format!(" x{shards} shards"));
            }
            if replicas > 1 {
                s.push_str(&format!(" x{replicas} replicas"));
            }
            s
        })
        .collect();
    if parts.is_empty() {
        "unknown (no GET /status)".to_owned()
    } else {
        parts.join(" -> ")
    }
}

/// The addresses of every replica of the executor `name`.
fn addresses(status: &Value, name: &str) -> Vec<String> {
    status["executors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == name)
        .flat_map(|e| e["shards"].as_array().into_iter().flatten())
        .flat_map(|shard| shard.as_array().into_iter().flatten())
        .filter_map(|r| r["address"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until every indexer replica's approximate structure holds every vector (flat ones
/// at once); returns the seconds waited. Fails on a failed build or after `limit`.
pub(crate) async fn wait_built(
    http: &HttpClient,
    gateway: &str,
    limit: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let replicas = addresses(&status(http, gateway).await, "indexer");
    anyhow::ensure!(
        !replicas.is_empty(),
        "the gateway's /status names no indexer replica"
    );
    for address in replicas {
        loop {
            let answer = get(http, &format!("{address}/stats")).await?;
            let stats: Value = serde_json::from_slice(&answer.body)
                .with_context(|| format!("{address}/stats is not JSON"))?;
            let build = &stats["build"];
            if build.is_null() {
                break;
            }
            let idle = build["building"] == false;
            if idle
                && build["fresh"] == 0
                && build["stale"] == 0
                && build["generation"].as_u64() > Some(0)
            {
                break;
            }
            if idle {
                if let Some(e) = build["last_error"].as_str() {
                    bail!("the index build of {address} failed: {e}");
                }
            }
            if started.elapsed() > limit {
                bail!("{address} had not built its index after {limit:?}: {build}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use flowmesh_gateway::flow::spec::Polling;

    use super::*;

    fn flags() -> FlowArgs {
        FlowArgs {
            shards: 3,
            replicas: 2,
            store: Store::Redis,
            redis_url: Some("redis://r:6379/0".into()),
            encoder: Encoder::Onnx,
            dim: 64,
            encoder_threads: 1,
            encoder_batch_order: "length".into(),
            prefetch: 4,
        }
    }

    /// The test workload of `scenario`, 50 documents a request.
    fn workload(scenario: Scenario) -> WorkloadSpec {
        WorkloadSpec {
            request_size: 50,
            ..crate::seed::workload::test_spec(scenario)
        }
    }

    /// The Flow of `flags` and `workload`, with a 60 s timeout.
    fn plan<'a>(flags: &'a FlowArgs, workload: &'a WorkloadSpec) -> FlowPlan<'a> {
        FlowPlan {
            flags,
            workload,
            timeout: Duration::from_secs(60),
        }
    }

    /// The Flow of `plan`, written as YAML and parsed back as the gateway parses it.
    fn written(plan: &FlowPlan, spec: &BackendSpec, build: Build) -> FlowSpec {
        // One folder per call: the tests run in parallel threads of one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("flowmesh-bench-flow-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = plan.write(&dir, spec, build, 7).expect("written");
        let text = std::fs::read_to_string(&path).expect("readable");
        let _ = std::fs::remove_dir_all(&dir);
        FlowSpec::from_yaml(&text).expect("a Flow the gateway accepts")
    }

    fn names(flow: &FlowSpec) -> Vec<&str> {
        flow.executors.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn text_flows_have_the_seeds_topology() {
        let spec: BackendSpec = "faiss:IVF50,Flat:nprobe=8".parse().expect("valid");
        let (flags, workload) = (flags(), workload(Scenario::Text));
        let flow = written(&plan(&flags, &workload), &spec, Build::Always);
        assert_eq!(names(&flow), ["segmenter", "encoder", "indexer", "ranker"]);
        let indexer = &flow.executors[2];
        assert_eq!(indexer.shards, 3);
        assert_eq!(indexer.settings["index_key"], "IVF50,Flat");
        assert_eq!(indexer.settings["nprobe"], 8);
        assert_eq!(indexer.settings["rebuild_min"], 1);
        assert_eq!(
            indexer
                .polling_for(flowmesh_shared::Endpoint::Search)
                .expect("valid"),
            Polling::All
        );
        assert_eq!(
            indexer
                .polling_for(flowmesh_shared::Endpoint::Index)
                .expect("valid"),
            Polling::Any
        );
        assert_eq!(indexer.uses_after, Some(Merge::TopK));
        assert_eq!(flow.executors[1].replicas, 2);
        assert_eq!(flow.executors[3].settings["redis_url"], "redis://r:6379/0");
        assert_eq!(flow.settings.timeout_ms, 60_000);
        assert_eq!(flow.settings.request_size, 50);
        assert_eq!(flow.name, FLOW_NAME);
    }

    #[test]
    fn image_flows_have_no_segmenter_nor_ranker() {
        let flat = "flat".parse().expect("valid");
        let (flags, workload) = (flags(), workload(Scenario::Image));
        let flow = written(&plan(&flags, &workload), &flat, Build::Never);
        assert_eq!(names(&flow), ["encoder", "indexer"]);
        assert_eq!(flow.executors[0].settings["model_config"], "mobilenetv2");
        assert!(!flow.executors[1].settings.contains_key("rebuild_min"));
        let hash = FlowArgs {
            encoder: Encoder::Hash,
            ..flags
        };
        assert!(plan(&hash, &workload).flow(&flat, Build::Never).is_err());
    }

    #[test]
    fn status_gives_addresses_and_a_topology_line() {
        let status = json!({"executors": [
            {"name": "encoder", "uses": "encoder", "replicas": 2, "shards": [[{"address": "http://e1"}, {"address": "http://e2"}]]},
            {"name": "indexer", "uses": "indexer", "replicas": 1, "shards": [[{"address": "http://i0"}], [{"address": "http://i1"}]]},
        ]});
        assert_eq!(addresses(&status, "indexer"), ["http://i0", "http://i1"]);
        assert_eq!(
            topology_line(&status),
            "encoder (encoder) x2 replicas -> indexer (indexer) x2 shards"
        );
        assert_eq!(topology_line(&Value::Null), "unknown (no GET /status)");
    }
}
