//! The Flow as written in YAML, and its validation.
//!
//! The vocabulary is Jina's: `needs`, `replicas`, `shards`, `polling`, `uses_after`. Validation
//! names the problem and the executor it is in, so a typo in a Flow never surfaces as a failed
//! request later.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Flow file. It serialises back to the vocabulary it parses from (absent options stay absent),
/// so a Flow file can be built from these types.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Accepted for Jina compatibility (`jtype: Flow`); ignored.
    #[serde(default, skip_serializing)]
    pub jtype: Option<String>,
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
    pub uses: String,
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
    pub uses_after: Option<String>,
    /// Executor settings: for the flowmesh services, passed as `--key value` flags; for the
    /// sentencizer, its options.
    #[serde(default, rename = "with", skip_serializing_if = "Map::is_empty")]
    pub settings: Map<String, Value>,
    /// Where the replicas already run (`http://host:port`); absent for `flowmesh up` to start them.
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
}

fn one() -> usize {
    1
}

/// A polling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Polling {
    /// One shard: the one that owns the root document id.
    Any,
    /// Every shard, answers merged by `uses_after`.
    All,
}

/// The endpoints of the public API.
pub const ENDPOINTS: [&str; 4] = ["index", "search", "update", "delete"];

/// The built-in executors and the flowmesh services the launcher knows.
pub const BUILTIN: [&str; 1] = ["sentencizer"];
/// Services started by `flowmesh up` as `flowmesh-NAME`.
pub const SERVICES: [&str; 3] = ["encoder", "indexer", "ranker"];

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
        let spec: Self =
            serde_yaml_ng::from_str(text).map_err(|e| FlowError::Syntax(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks everything that can be checked before anything starts.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.executors.is_empty() {
            return Err(FlowError::Graph(
                "a flow needs at least one executor".into(),
            ));
        }
        if self.settings.request_size == 0 {
            return Err(FlowError::Graph("request_size must be at least 1".into()));
        }
        if self.settings.prefetch == 0 {
            return Err(FlowError::Graph("prefetch must be at least 1".into()));
        }
        if self.settings.request_timeout_ms == Some(0) {
            return Err(FlowError::Graph(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        if self.settings.timeout_ms == 0 {
            return Err(FlowError::Graph("timeout_ms must be at least 1".into()));
        }
        if self.settings.health_interval_ms < 10 {
            return Err(FlowError::Graph(
                "health_interval_ms must be at least 10".into(),
            ));
        }
        let mut names = HashSet::new();
        for e in &self.executors {
            if e.name.is_empty() || e.name == "gateway" || e.name == "all" {
                return Err(bad(
                    &e.name,
                    "the names \"\", \"gateway\" and \"all\" are reserved",
                ));
            }
            if !names.insert(e.name.as_str()) {
                return Err(bad(&e.name, "the name is used twice"));
            }
            e.validate()?;
        }
        self.predecessors()?;
        Ok(())
    }

    /// The predecessors of each executor, by index, in the order of `executors`; `needs` names
    /// resolved, defaults applied, and the graph checked for unknown names and cycles.
    pub fn predecessors(&self) -> Result<Vec<Vec<usize>>, FlowError> {
        let index: HashMap<&str, usize> = self
            .executors
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut preds: Vec<Vec<usize>> = Vec::with_capacity(self.executors.len());
        for (i, e) in self.executors.iter().enumerate() {
            let names: Vec<&str> = match &e.needs {
                None if i == 0 => vec![],
                None => vec![self.executors[i - 1].name.as_str()],
                Some(Needs::One(n)) if n == "all" => {
                    // Every executor written before this one that nothing needs yet.
                    let needed: HashSet<usize> = preds.iter().flatten().copied().collect();
                    let orphans: Vec<usize> = (0..i).filter(|j| !needed.contains(j)).collect();
                    preds.push(orphans);
                    continue;
                }
                Some(Needs::One(n)) => vec![n.as_str()],
                Some(Needs::Many(ns)) => ns.iter().map(String::as_str).collect(),
            };
            let mut mine = Vec::new();
            for n in names {
                if n == "gateway" {
                    continue;
                }
                let Some(&j) = index.get(n) else {
                    let known: Vec<&str> = self.executors.iter().map(|e| e.name.as_str()).collect();
                    return Err(bad(
                        &e.name,
                        format!("needs {n:?}, which is not an executor of this flow (known: gateway, {})", known.join(", ")),
                    ));
                };
                if j == i {
                    return Err(bad(&e.name, "needs itself"));
                }
                if !mine.contains(&j) {
                    mine.push(j);
                }
            }
            preds.push(mine);
        }
        if let Some(cycle) = find_cycle(&preds) {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| self.executors[i].name.as_str())
                .collect();
            return Err(FlowError::Graph(format!(
                "needs form a cycle: {}",
                path.join(" -> ")
            )));
        }
        Ok(preds)
    }
}

/// A cycle in the predecessor graph, as a path that starts and ends at the same executor.
fn find_cycle(preds: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit(
        n: usize,
        preds: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[n] = 1;
        stack.push(n);
        for &p in &preds[n] {
            if state[p] == 1 {
                let start = stack.iter().position(|&x| x == p).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[start..].to_vec();
                cycle.push(p);
                cycle.reverse();
                return Some(cycle);
            }
            if state[p] == 0 {
                if let Some(c) = visit(p, preds, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[n] = 2;
        None
    }
    let mut state = vec![0u8; preds.len()];
    for n in 0..preds.len() {
        if state[n] == 0 {
            if let Some(c) = visit(n, preds, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

impl ExecutorSpec {
    fn validate(&self) -> Result<(), FlowError> {
        let name = &self.name;
        let builtin = BUILTIN.contains(&self.uses.as_str());
        if !builtin && !SERVICES.contains(&self.uses.as_str()) && self.uses != "remote" {
            return Err(bad(
                name,
                format!(
                    "unknown uses {:?} (use one of sentencizer, encoder, indexer, ranker, remote)",
                    self.uses
                ),
            ));
        }
        if self.replicas == 0 {
            return Err(bad(name, "replicas must be at least 1"));
        }
        if self.shards == 0 {
            return Err(bad(name, "shards must be at least 1"));
        }
        if builtin && (self.replicas > 1 || self.shards > 1 || self.addresses.is_some()) {
            return Err(bad(
                name,
                "a built-in executor runs inside the gateway: no replicas, shards or addresses",
            ));
        }
        if self.uses == "remote" && self.addresses.is_none() {
            return Err(bad(name, "uses: remote needs addresses"));
        }
        for endpoint in ENDPOINTS {
            self.polling_for(endpoint)?;
        }
        if let Some(PollingSpec::PerEndpoint(map)) = &self.polling {
            for key in map.keys() {
                let k = key.trim_start_matches('/');
                if k != "*" && !ENDPOINTS.contains(&k) {
                    return Err(bad(name, format!("polling names unknown endpoint {key:?}")));
                }
            }
        }
        if let Some(after) = &self.uses_after {
            if after != "topk" && after != "concat" {
                return Err(bad(
                    name,
                    format!("unknown uses_after {after:?} (use topk or concat)"),
                ));
            }
        }
        if let Some(eps) = &self.endpoints {
            for ep in eps {
                if !ENDPOINTS.contains(&ep.trim_start_matches('/')) {
                    return Err(bad(
                        name,
                        format!("endpoints names unknown endpoint {ep:?}"),
                    ));
                }
            }
        }
        if self.timeout_ms == Some(0) {
            return Err(bad(name, "timeout_ms must be at least 1"));
        }
        if let Some(addresses) = self.shard_addresses()? {
            for a in addresses.iter().flatten() {
                check_address(name, a)?;
            }
        }
        Ok(())
    }

    /// The polling mode for `endpoint` (without slash): the per-endpoint entry, else `"*"`, else
    /// the default (`all` for search and delete, `any` for index and update).
    pub fn polling_for(&self, endpoint: &str) -> Result<Polling, FlowError> {
        let word = match &self.polling {
            None => None,
            Some(PollingSpec::All(w)) => Some(w.as_str()),
            Some(PollingSpec::PerEndpoint(map)) => map
                .iter()
                .find(|(k, _)| k.trim_start_matches('/') == endpoint)
                .or_else(|| map.iter().find(|(k, _)| k.as_str() == "*"))
                .map(|(_, v)| v.as_str()),
        };
        match word.map(str::to_ascii_lowercase).as_deref() {
            None => Ok(if matches!(endpoint, "search" | "delete") {
                Polling::All
            } else {
                Polling::Any
            }),
            Some("any") => Ok(Polling::Any),
            Some("all") => Ok(Polling::All),
            Some(other) => Err(bad(
                &self.name,
                format!("unknown polling mode {other:?} for /{endpoint} (use any or all)"),
            )),
        }
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
    pub fn serves(&self, endpoint: &str) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|eps| eps.iter().any(|e| e.trim_start_matches('/') == endpoint))
    }

    /// Whether the gateway runs this executor itself.
    pub fn is_builtin(&self) -> bool {
        BUILTIN.contains(&self.uses.as_str())
    }
}

fn check_address(executor: &str, address: &str) -> Result<(), FlowError> {
    let problem = match address.parse::<http::Uri>() {
        Err(e) => Some(e.to_string()),
        Ok(uri) if uri.scheme_str() != Some("http") => Some("the scheme must be http://".into()),
        Ok(uri) if uri.host().is_none() => Some("no host".into()),
        Ok(uri) if uri.path() != "/" && !uri.path().is_empty() => {
            Some("give only scheme, host and port, no path".into())
        }
        Ok(_) => None,
    };
    match problem {
        Some(p) => Err(bad(executor, format!("bad address {address:?}: {p}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        FlowSpec::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn defaults_chain_executors_in_order() {
        let f = FlowSpec::from_yaml(
            "executors:\n  - {name: a, uses: sentencizer}\n  - {name: b, uses: encoder}\n  - {name: c, uses: indexer}\n",
        )
        .unwrap();
        assert_eq!(f.predecessors().unwrap(), vec![vec![], vec![0], vec![1]]);
        assert_eq!(f.executors[2].polling_for("search").unwrap(), Polling::All);
        assert_eq!(f.executors[2].polling_for("index").unwrap(), Polling::Any);
    }

    #[test]
    fn needs_all_joins_the_orphans() {
        let f = FlowSpec::from_yaml(
            "executors:\n  - {name: p1, uses: encoder, needs: gateway}\n  - {name: p2, uses: encoder, needs: gateway}\n  - {name: p3, uses: encoder, needs: gateway}\n  - {name: r1, uses: ranker, needs: all}\n",
        )
        .unwrap();
        assert_eq!(f.predecessors().unwrap()[3], vec![0, 1, 2]);
    }

    #[test]
    fn problems_are_named() {
        assert!(
            err("executors:\n  - {name: a, uses: encoder, needs: nope}\n")
                .contains(r#"executor "a": needs "nope", which is not an executor"#)
        );
        assert!(err("executors:\n  - {name: a, uses: encoder, needs: b}\n  - {name: b, uses: encoder, needs: a}\n")
            .contains("cycle: "));
        assert!(
            err("executors:\n  - {name: a, uses: encoder, replicas: 0}\n")
                .contains(r#"executor "a": replicas must be at least 1"#)
        );
        assert!(
            err("executors:\n  - {name: a, uses: indexer, polling: some}\n")
                .contains("unknown polling mode \"some\"")
        );
        assert!(
            err("executors:\n  - {name: a, uses: remote, addresses: ['ftp://x:1']}\n")
                .contains("bad address \"ftp://x:1\"")
        );
        assert!(
            err("executors:\n  - {name: a, uses: remote, addresses: ['not an address']}\n")
                .contains("bad address")
        );
        assert!(
            err("executors:\n  - {name: a, uses: encodr}\n").contains("unknown uses \"encodr\"")
        );
        assert!(
            err("executors:\n  - {name: a, uses: encoder, replica: 2}\n")
                .contains("unknown field `replica`")
        );
        assert!(err(
            "executors:\n  - {name: a, uses: indexer, shards: 2, addresses: [['http://a:1']]}\n"
        )
        .contains("has 2 shards but addresses for 1"));
    }

    #[test]
    fn per_endpoint_polling_with_fallback() {
        let f = FlowSpec::from_yaml(
            "executors:\n  - name: a\n    uses: indexer\n    polling: {'/search': any, '*': all}\n",
        )
        .unwrap();
        assert_eq!(f.executors[0].polling_for("search").unwrap(), Polling::Any);
        assert_eq!(f.executors[0].polling_for("index").unwrap(), Polling::All);
    }

    /// Every Flow file of the repository, serialised and parsed again, is the same Flow, and the
    /// YAML written leaves absent options out instead of writing `null`.
    #[test]
    fn flow_files_round_trip_through_serialisation() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flows");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = FlowSpec::from_yaml(&text).unwrap();
            let written = serde_yaml_ng::to_string(&parsed).unwrap();
            assert!(!written.contains("null"), "{}: {written}", path.display());
            let again = FlowSpec::from_yaml(&written)
                .unwrap_or_else(|e| panic!("{}: {e}\n{written}", path.display()));
            assert_eq!(parsed, again, "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} flow files in {}", dir.display());
    }

    #[test]
    fn every_option_round_trips() {
        let text = "name: all-options\nwith: {request_size: 3, prefetch: 2, timeout_ms: 500, request_timeout_ms: 9000, retries: 1, health_interval_ms: 50}\nexecutors:\n  - {name: s, uses: sentencizer, with: {min_sent_len: 2}}\n  - name: i\n    uses: remote\n    needs: [gateway, s]\n    shards: 2\n    replicas: 2\n    polling: {/search: all, '*': any}\n    uses_after: concat\n    addresses: [['http://a:1', 'http://b:1'], ['http://c:1', 'http://d:1']]\n    endpoints: [/search, index]\n    timeout_ms: 20\n    retries: 0\n  - {name: r, uses: ranker, needs: all, polling: ALL}\n";
        let parsed = FlowSpec::from_yaml(text).unwrap();
        let written = serde_yaml_ng::to_string(&parsed).unwrap();
        assert_eq!(FlowSpec::from_yaml(&written).unwrap(), parsed, "{written}");
    }
}
