//! The Flow as written in YAML, and its validation.
//!
//! The vocabulary is Jina's: `needs`, `replicas`, `shards`, `polling`, `uses_after`. `uses` and
//! `uses_after` are typed ([`Uses`], [`Merge`]) and parsed with the file; the rest is checked
//! by [`FlowSpec::validate`] (in `validate.rs`), which names the problem and the executor it is
//! in, so a typo in a Flow never surfaces as a failed request later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use flowmesh_shared::endpoint::PerEndpoint;
pub use flowmesh_shared::flow::{Merge, Polling, Uses};
pub use flowmesh_shared::mirror::WriteConsistency;
use flowmesh_shared::Endpoint;

mod jina;
mod validate;

/// A Flow file. It serialises back to the vocabulary it parses from (absent options stay absent),
/// so a Flow file can be built from these types.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Accepted for Jina compatibility (`jtype: Flow`); anything but `Flow` is refused.
    #[serde(default, skip_serializing)]
    pub jtype: Option<String>,
    /// Jina's Flow file version (`version: '1'`); accepted, and only `1`.
    #[serde(default, skip_serializing)]
    pub version: Option<Value>,
    /// A name shown by `/status`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Flow-wide settings.
    #[serde(default, rename = "with")]
    pub settings: FlowSettings,
    /// The executors, in the order they were written.
    pub executors: Vec<ExecutorSpec>,
}

fn default_name() -> String {
    "flow".to_owned()
}

/// Flow-wide settings (`with:` at the top of the file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    /// Documents per batch: a request with more documents is cut into batches of this size.
    #[serde(default = "default_request_size")]
    pub request_size: usize,
    /// How many batches of one request are in flight at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Default per-executor timeout of one call (one batch to one replica), in milliseconds:
    /// 10 s, well under the request's 60 s deadline, so that a stalled replica is cut off, named
    /// in the error, and a retry on another replica still fits in the request's time.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a whole request may take, in milliseconds (504 `deadline_exceeded` after it);
    /// the gateway's `--request-timeout` overrides it. Default 60,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Default number of retries on another replica.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How often replicas are health-checked, in milliseconds.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Where the gateway also serves Jina's gRPC protocol (`127.0.0.1:54321`); the gateway's
    /// `--grpc-listen` overrides it. Default: no gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// Jina's `cors: true`: browsers on other origins may call the gateway (as `--cors`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cors: bool,
    /// Jina's gateway `port`: where `flowmesh up` listens (on 127.0.0.1) unless `--listen` is
    /// given; `flowmesh-gateway` takes `--listen` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Jina's gateway `protocol`: only `http` (alone or as the only item of a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
}

/// `protocol:` of the Flow's `with:`, one word or a list, as Jina writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ProtocolSpec {
    /// One protocol.
    One(String),
    /// Several.
    Many(Vec<String>),
}

fn default_request_size() -> usize {
    100
}
fn default_prefetch() -> usize {
    4
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    2
}
fn default_health_interval_ms() -> u64 {
    500
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            request_size: default_request_size(),
            prefetch: default_prefetch(),
            timeout_ms: default_timeout_ms(),
            request_timeout_ms: None,
            retries: default_retries(),
            health_interval_ms: default_health_interval_ms(),
            grpc_listen: None,
            cors: false,
            port: None,
            protocol: None,
        }
    }
}

/// `needs:` of an executor: one name, several, or `all` (every executor without a successor yet).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Needs {
    /// One predecessor (`gateway` for the start of the Flow, `all` for needs-all).
    One(String),
    /// Several predecessors.
    Many(Vec<String>),
}

/// `polling:` one mode for every endpoint, or a mode per endpoint (`"*"` for the rest).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PollingSpec {
    /// The same mode for every endpoint.
    All(String),
    /// Per endpoint.
    PerEndpoint(BTreeMap<String, String>),
}

/// `addresses:` of executors run elsewhere: the replicas of a single shard, or one list of
/// replicas per shard.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AddressesSpec {
    /// Replicas of the only shard.
    Replicas(Vec<String>),
    /// Replicas of each shard.
    Shards(Vec<Vec<String>>),
}

/// One executor of the Flow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSpec {
    /// Unique name; `gateway` and `all` are reserved.
    pub name: String,
    /// What runs: `sentencizer` (built into the gateway), `encoder`, `indexer`, `ranker` (the
    /// flowmesh services, started by `flowmesh up`), or `remote` (any service speaking the
    /// executor protocol, at `addresses`).
    pub uses: Uses,
    /// Predecessors; default: the executor written before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Needs>,
    /// Copies of each shard.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Partitions of the executor's data.
    #[serde(default = "one")]
    pub shards: usize,
    /// `any` or `all`, for every endpoint or per endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling: Option<PollingSpec>,
    /// What merges the answers of `all` polling: `topk` (default) or `concat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_after: Option<Merge>,
    /// Executor settings: for the flowmesh services, passed as `--key value` flags; for the
    /// sentencizer, its options. Jina's `uses_with` is the same.
    #[serde(
        default,
        rename = "with",
        alias = "uses_with",
        skip_serializing_if = "Map::is_empty"
    )]
    pub settings: Map<String, Value>,
    /// Where the replicas already run (`http://host:port` or `https://host:port`); absent for `flowmesh up` to start them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<AddressesSpec>,
    /// Only these endpoints reach this executor; others pass it by unchanged. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// Timeout of one call in milliseconds; default: the Flow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries on another replica; default: the Flow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Whether the executor keeps data (Jina's word). Default: the indexer does, the ranker
    /// does unless its store is `redis` or `memory`, the rest do not. A stateful executor with
    /// two or more replicas runs them as mirrored copies of each shard (see
    /// [`is_mirrored`](Self::is_mirrored)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<bool>,
    /// How many copies of a mirrored shard must acknowledge a write before it is answered: `1`
    /// (default), `majority`, `all` or a number up to `replicas`. Only on stateful executors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_consistency: Option<ConsistencySpec>,
}

/// `write_consistency:` as written: a number or a word, checked by [`ExecutorSpec::write_consistency`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ConsistencySpec {
    /// A number of copies.
    Count(u64),
    /// `majority`, `all`, or a number as a string.
    Word(String),
}

fn one() -> usize {
    1
}

/// A Flow that does not hold together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    /// The YAML does not parse or has unknown keys or wrong types.
    #[error("flow file: {0}")]
    Syntax(String),
    /// An executor is misconfigured.
    #[error("executor {executor:?}: {problem}")]
    Executor {
        /// Its name.
        executor: String,
        /// What is wrong.
        problem: String,
    },
    /// The graph is wrong as a whole.
    #[error("flow: {0}")]
    Graph(String),
}

fn bad(executor: &str, problem: impl Into<String>) -> FlowError {
    FlowError::Executor {
        executor: executor.to_owned(),
        problem: problem.into(),
    }
}

impl FlowSpec {
    /// Parses and validates a Flow from YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, FlowError> {
        let spec: Self = serde_yaml_ng::from_str(text).map_err(|e| jina::explain(text, &e))?;
        spec.validate()?;
        Ok(spec)
    }
}

impl ExecutorSpec {
    /// The polling mode for `endpoint`: the per-endpoint entry, else `"*"`, else the default
    /// (`all` for search and delete, `any` for index and update).
    pub fn polling_for(&self, endpoint: Endpoint) -> Result<Polling, FlowError> {
        let word = match &self.polling {
            None => None,
            Some(PollingSpec::All(w)) => Some(w.as_str()),
            Some(PollingSpec::PerEndpoint(map)) => map
                .iter()
                .find(|(k, _)| k.trim_start_matches('/') == endpoint.as_str())
                .or_else(|| map.iter().find(|(k, _)| k.as_str() == "*"))
                .map(|(_, v)| v.as_str()),
        };
        match word {
            None => Ok(match endpoint {
                Endpoint::Search | Endpoint::Delete => Polling::All,
                Endpoint::Index | Endpoint::Update => Polling::Any,
            }),
            Some(word) => Polling::from_word(word).ok_or_else(|| {
                bad(
                    &self.name,
                    format!(
                        "unknown polling mode {:?} for {} (use any or all)",
                        word.to_ascii_lowercase(),
                        endpoint.path()
                    ),
                )
            }),
        }
    }

    /// The polling mode of every endpoint.
    pub fn polling(&self) -> Result<PerEndpoint<Polling>, FlowError> {
        PerEndpoint::try_from_fn(|endpoint| self.polling_for(endpoint))
    }

    /// What merges the answers of `all` polling (`uses_after`, default top-k).
    pub fn merge(&self) -> Merge {
        self.uses_after.unwrap_or_default()
    }

    /// The addresses of each shard's replicas, when given; checked against `shards`/`replicas`.
    pub fn shard_addresses(&self) -> Result<Option<Vec<Vec<String>>>, FlowError> {
        let shards = match &self.addresses {
            None => return Ok(None),
            Some(AddressesSpec::Replicas(r)) if self.shards == 1 => vec![r.clone()],
            Some(AddressesSpec::Replicas(_)) => {
                return Err(bad(
                    &self.name,
                    format!(
                        "has {} shards: give addresses as one list of replica addresses per shard",
                        self.shards
                    ),
                ))
            }
            Some(AddressesSpec::Shards(s)) => s.clone(),
        };
        if shards.len() != self.shards {
            return Err(bad(
                &self.name,
                format!(
                    "has {} shards but addresses for {}",
                    self.shards,
                    shards.len()
                ),
            ));
        }
        if shards.iter().any(Vec::is_empty) {
            return Err(bad(&self.name, "every shard needs at least one address"));
        }
        Ok(Some(shards))
    }

    /// Whether `endpoint` reaches this executor.
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        self.endpoints.as_ref().is_none_or(|eps| {
            eps.iter()
                .any(|e| e.trim_start_matches('/') == endpoint.as_str())
        })
    }

    /// Whether the gateway runs this executor itself.
    pub fn is_builtin(&self) -> bool {
        self.uses.is_builtin()
    }

    /// Whether the executor keeps data: `stateful:` when given, else the indexer, and the
    /// ranker unless its store (`with: {store: ...}`) is `redis` or `memory`.
    pub fn is_stateful(&self) -> bool {
        self.stateful.unwrap_or(match self.uses {
            Uses::Indexer => true,
            // A ranker run elsewhere (`addresses`) picks its store on its own host, out of the
            // Flow's sight: it is stateful only when the Flow says so (Ansible's rankers share
            // one Redis).
            Uses::Ranker if self.addresses.is_some() => false,
            Uses::Ranker => !matches!(
                self.settings
                    .get("store")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("redis" | "memory")
            ),
            Uses::Sentencizer | Uses::Encoder | Uses::Remote => false,
        })
    }

    /// How many copies each shard has: the longest list of `addresses`, else `replicas`.
    pub fn copies_per_shard(&self) -> usize {
        match &self.addresses {
            Some(AddressesSpec::Replicas(r)) => r.len(),
            Some(AddressesSpec::Shards(s)) => s.iter().map(Vec::len).max().unwrap_or(0),
            None => self.replicas,
        }
    }

    /// Whether the executor runs mirrored copies of each shard: stateful with two or more
    /// copies. Every write then goes through its shard's replicated log to every copy.
    pub fn is_mirrored(&self) -> bool {
        self.is_stateful() && self.copies_per_shard() >= 2
    }

    /// `write_consistency`, parsed (default `1`).
    pub fn write_consistency(&self) -> Result<WriteConsistency, FlowError> {
        let parsed = match &self.write_consistency {
            None => return Ok(WriteConsistency::default()),
            Some(ConsistencySpec::Count(n)) => usize::try_from(*n)
                .ok()
                .and_then(|n| WriteConsistency::parse(&n.to_string())),
            Some(ConsistencySpec::Word(w)) => WriteConsistency::parse(w),
        };
        parsed.ok_or_else(|| {
            bad(
                &self.name,
                "write_consistency must be 1, majority, all or a number of copies of at least 1",
            )
        })
    }

    /// What kind of executor this is, for `flowmesh validate`: `stateful, 2 mirrored copies
    /// per shard, write_consistency 1`, `stateless, 2 load-balanced replicas`, ...
    pub fn describe_kind(&self) -> String {
        let copies = self.copies_per_shard();
        if self.is_builtin() {
            "stateless, built into the gateway".to_owned()
        } else if self.is_mirrored() {
            let consistency = self
                .write_consistency()
                .map_or_else(|e| e.to_string(), |c| c.to_string());
            format!("stateful, {copies} mirrored copies per shard, write_consistency {consistency}")
        } else if self.is_stateful() {
            "stateful, 1 copy per shard".to_owned()
        } else if copies == 1 {
            "stateless, 1 replica".to_owned()
        } else {
            format!("stateless, {copies} load-balanced replicas")
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_jina;
