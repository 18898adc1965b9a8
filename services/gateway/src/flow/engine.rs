//! The Flow engine: runs a request through the executor DAG.
//!
//! A request is cut into batches of `request_size` documents; at most `prefetch` batches are in
//! flight and the answers are put back in order. Within a batch every executor starts as soon as
//! all of its predecessors have answered (parallel branches run concurrently) and an executor with
//! several predecessors gets their documents merged by id. Remote executors are shards of replica
//! sets: `any` polling sends each root document to the shard that owns its id, `all` polling sends
//! the batch to every shard and merges the answers with `uses_after`.
//!
//! Writes (`/index`, `/update`) are honest about partial failure: when a shard or an executor
//! fails (5xx, 429, timeout), the documents it failed for are set aside and the others go on
//! through the rest of the Flow, every batch is run, and the request fails with 503
//! `partial_write` listing exactly the documents whose write did not complete (see
//! docs/flows.md, "Failed writes").

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::future::{try_join_all, BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use flowmesh_shared::balance::{BalanceConfig, ReplicaSet};
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::limits::DEFAULT_MAX_TOP_K;
use flowmesh_shared::mirror::{stream_name, Log, ShardLog, WriteConsistency};
use flowmesh_shared::trace;
use flowmesh_shared::{ApiError, Deadline, Document, Envelope, Header, Parameters, Route};

use super::guard::ChunkBudget;
use super::outcome::{join_outputs, partial_write, Failed, NodeOutput, Output};
use super::sentencizer::Sentencizer;
use super::spec::{ExecutorSpec, FlowError, FlowSpec};
use flowmesh_shared::endpoint::PerEndpoint;
use flowmesh_shared::flow::{Merge, Polling};
use flowmesh_shared::Endpoint;

mod remote;
use remote::call_remote;

enum Kind {
    Sentencizer(Sentencizer),
    Remote {
        shards: Vec<ReplicaSet>,
        /// What merges the answers of `all` polling.
        merge: Merge,
        /// For mirrored copies: each shard's log, and how many copies must apply a write.
        mirror: Option<Mirrored>,
    },
}

/// The writes of a mirrored executor: each shard's replicated log, and how many copies must
/// acknowledge a write (`write_consistency`).
struct Mirrored {
    logs: Vec<ShardLog>,
    consistency: WriteConsistency,
}

struct Node {
    spec: ExecutorSpec,
    name: Arc<str>,
    kind: Kind,
    /// Polling per endpoint.
    polling: PerEndpoint<Polling>,
}

/// A running Flow: executors connected to their replicas.
pub struct Flow {
    spec: FlowSpec,
    nodes: Vec<Node>,
    preds: Vec<Vec<usize>>,
    /// Executors without successors; their answers are the Flow's answer.
    sinks: Vec<usize>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// What bounds one run of a request through the Flow.
#[derive(Debug)]
pub struct RunLimits {
    /// When the request must be answered by; every executor call gets the time left.
    pub deadline: Deadline,
    /// The chunks the built-in sentencizer may still make for the request.
    pub chunks: ChunkBudget,
    /// The largest `top_k` (already checked at the gateway; bounds the mergers' buffers).
    pub max_top_k: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            deadline: Deadline::NONE,
            chunks: ChunkBudget::default(),
            max_top_k: DEFAULT_MAX_TOP_K,
        }
    }
}

/// Per-request context shared by all batches.
struct RequestCtx {
    endpoint: Endpoint,
    /// Whether the endpoint writes (`index`, `update`): failures are then partial.
    write: bool,
    limits: RunLimits,
    header: Header,
    parameters: Parameters,
    request_id: Arc<str>,
    endpoint_path: Arc<str>,
    /// Time spent in each executor on this request.
    spent: Vec<Mutex<Spent>>,
    /// The request's server span, parent of the executors' spans; empty when traces are off.
    trace: opentelemetry::Context,
}

/// Time one executor spent on one request.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    /// When its first call started and its last call ended.
    span: Option<(SystemTime, SystemTime)>,
    /// Its calls' durations, summed over batches.
    total: Duration,
}

/// The answer of a Flow to one request.
#[derive(Debug)]
pub struct Answer {
    /// The envelope for the caller, with Jina-style `routes`.
    pub envelope: Envelope,
    /// Milliseconds spent in each executor that served the request (summed over batches).
    pub timings: Vec<(Arc<str>, f64)>,
}

impl Flow {
    /// Connects to every executor of `spec`. Every remote executor must have addresses (the
    /// launcher fills them in for the ones it starts). A Flow with a mirrored executor needs
    /// the log: see [`build_with_log`](Self::build_with_log).
    pub fn build(spec: FlowSpec, client: &ExecutorClient) -> Result<Self, FlowError> {
        Self::build_with_log(spec, client, None)
    }

    /// [`build`](Self::build) with the replicated log (`--log-url`) that orders the writes of
    /// mirrored executors; a Flow with a mirrored executor and no log is refused, naming it.
    pub fn build_with_log(
        spec: FlowSpec,
        client: &ExecutorClient,
        log: Option<&Log>,
    ) -> Result<Self, FlowError> {
        spec.validate()?;
        let preds = spec.predecessors()?;
        let mut nodes = Vec::with_capacity(spec.executors.len());
        for e in &spec.executors {
            let kind = if e.is_builtin() {
                Kind::Sentencizer(Sentencizer::from_settings(&e.name, &e.settings)?)
            } else {
                let Some(addresses) = e.shard_addresses()? else {
                    return Err(FlowError::Executor {
                        executor: e.name.clone(),
                        problem: "has no addresses; give them in the flow, or start the flow with `flowmesh up`, which starts its executors".into(),
                    });
                };
                let config = BalanceConfig {
                    timeout: Duration::from_millis(
                        e.timeout_ms.unwrap_or(spec.settings.timeout_ms),
                    ),
                    retries: e.retries.unwrap_or(spec.settings.retries),
                    health_interval: Duration::from_millis(spec.settings.health_interval_ms),
                    ..BalanceConfig::default()
                };
                let mirror = if e.is_mirrored() {
                    let Some(log) = log else {
                        return Err(FlowError::Executor {
                            executor: e.name.clone(),
                            problem: format!(
                                "{}; its writes go through a replicated log: give the gateway \
                                 --log-url (FLOWMESH_LOG_URL), the NATS server that holds it",
                                e.describe_kind()
                            ),
                        });
                    };
                    Some(Mirrored {
                        logs: (0..addresses.len())
                            .map(|shard| log.shard(&stream_name(&e.name, shard)))
                            .collect(),
                        consistency: e.write_consistency()?,
                    })
                } else {
                    None
                };
                let shards = addresses
                    .iter()
                    .enumerate()
                    .map(|(shard, replicas)| {
                        if mirror.is_some() {
                            ReplicaSet::mirrored(
                                &e.name,
                                shard,
                                replicas,
                                client.clone(),
                                config.clone(),
                            )
                        } else {
                            ReplicaSet::new(
                                &e.name,
                                shard,
                                replicas,
                                client.clone(),
                                config.clone(),
                            )
                        }
                    })
                    .collect();
                Kind::Remote {
                    shards,
                    merge: e.merge(),
                    mirror,
                }
            };
            nodes.push(Node {
                spec: e.clone(),
                name: e.name.as_str().into(),
                kind,
                polling: e.polling()?,
            });
        }
        let mut has_successor = vec![false; nodes.len()];
        for p in preds.iter().flatten() {
            has_successor[*p] = true;
        }
        let sinks = (0..nodes.len()).filter(|i| !has_successor[*i]).collect();
        Ok(Self {
            spec,
            nodes,
            preds,
            sinks,
        })
    }

    /// The Flow as configured.
    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Ready when every shard of every remote executor has a healthy replica.
    pub fn is_ready(&self) -> bool {
        self.nodes.iter().all(|n| match &n.kind {
            Kind::Sentencizer(_) => true,
            Kind::Remote { shards, .. } => shards.iter().all(ReplicaSet::any_up),
        })
    }

    /// The topology and replica health, for `GET /status`.
    pub fn status(&self) -> Value {
        let executors: Vec<Value> = self
            .nodes
            .iter()
            .zip(&self.preds)
            .map(|(n, preds)| {
                let needs: Vec<&str> = if preds.is_empty() {
                    vec!["gateway"]
                } else {
                    preds.iter().map(|&p| &*self.nodes[p].name).collect()
                };
                let shards: Vec<Value> = match &n.kind {
                    Kind::Sentencizer(_) => Vec::new(),
                    Kind::Remote { shards, .. } => shards
                        .iter()
                        .map(|s| {
                            Value::Array(
                                s.replicas()
                                    .iter()
                                    .map(|r| json!({"address": r.base(), "up": r.is_up(), "reads": r.is_up(), "calls": r.calls()}))
                                    .collect(),
                            )
                        })
                        .collect(),
                };
                let polling: serde_json::Map<String, Value> = n
                    .polling
                    .iter()
                    .map(|(e, p)| (e.path().to_owned(), json!(p)))
                    .collect();
                let mut entry = json!({
                    "name": &*n.name,
                    "uses": n.spec.uses,
                    "kind": if n.spec.is_stateful() { "stateful" } else { "stateless" },
                    "mirrored": n.spec.is_mirrored(),
                    "needs": needs,
                    "replicas": n.spec.replicas,
                    "shards": shards,
                    "polling": polling,
                    "uses_after": n.spec.merge(),
                });
                if let Kind::Remote {
                    mirror: Some(m), ..
                } = &n.kind
                {
                    entry["write_consistency"] = json!(m.consistency.to_string());
                }
                entry
            })
            .collect();
        json!({
            "flow": self.spec.name,
            "ready": self.is_ready(),
            "request_size": self.spec.settings.request_size,
            "prefetch": self.spec.settings.prefetch,
            "executors": executors,
        })
    }

    /// [`status`](Self::status), and for each copy of a stateful executor what its `GET /stats`
    /// says (`position`, `count`, `digest`, `state`; asked of every copy at once, each within
    /// `timeout`), with per shard whether its copies hold the same content (`converged`) and
    /// overall whether any shard's copies differ (`diverged`).
    pub async fn full_status(&self, timeout: Duration) -> Value {
        let mut status = self.status();
        let mut asks = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Kind::Remote { shards, .. } = &n.kind {
                if n.spec.is_stateful() {
                    for (s, set) in shards.iter().enumerate() {
                        asks.push(async move { (i, s, set.copy_stats(timeout).await) });
                    }
                }
            }
        }
        let answers = futures::future::join_all(asks).await;
        let mut diverged = false;
        let mut converged: Vec<Vec<Value>> = vec![Vec::new(); self.nodes.len()];
        for (i, s, stats) in answers {
            let copies = &mut status["executors"][i]["shards"][s];
            let mut seen = Vec::with_capacity(stats.len());
            for (c, stats) in stats.into_iter().enumerate() {
                let mirror = stats.as_ref().and_then(|v| v.get("mirror")).cloned();
                let field = |k: &str| mirror.as_ref().and_then(|m| m.get(k)).cloned();
                let copy = &mut copies[c];
                for k in ["position", "count", "digest", "state"] {
                    copy[k] = field(k).unwrap_or(Value::Null);
                }
                seen.push(mirror.and_then(|m| {
                    Some((
                        m.get("position")?.as_u64()?,
                        m.get("count")?.as_u64()?,
                        m.get("digest")?.as_str()?.to_owned(),
                    ))
                }));
            }
            let verdict = convergence(&seen);
            diverged |= verdict == Some(false);
            converged[i].push(json!(verdict));
        }
        for (i, verdicts) in converged.into_iter().enumerate() {
            if self.nodes[i].spec.is_stateful() && !verdicts.is_empty() {
                status["executors"][i]["converged"] = Value::Array(verdicts);
            }
        }
        status["diverged"] = json!(diverged);
        status
    }

    /// Runs `request` through the Flow for `endpoint` within `limits`.
    pub async fn run(
        &self,
        endpoint: Endpoint,
        request: Envelope,
        limits: RunLimits,
    ) -> Result<Answer, ApiError> {
        let Envelope {
            mut header,
            parameters,
            mut data,
            ..
        } = request;
        if data.is_empty() {
            return Err(ApiError::BadRequest(
                "data is empty: send at least one document".into(),
            ));
        }
        if header.request_id.is_empty() {
            header.request_id = uuid::Uuid::new_v4().simple().to_string();
        }
        header.exec_endpoint = endpoint.path().to_owned();
        trace::set_current_attribute(|| {
            KeyValue::new("flowmesh.request_id", header.request_id.clone())
        });
        trace::set_current_attribute(|| KeyValue::new("flowmesh.documents", data.len() as i64));
        for doc in &mut data {
            if doc.id.is_empty() {
                doc.id = uuid::Uuid::new_v4().simple().to_string();
            }
        }
        let write = endpoint.is_write();
        // The request's order, to list the documents not written in it.
        let order: Vec<String> = if write {
            data.iter().map(|d| d.id.clone()).collect()
        } else {
            Vec::new()
        };
        let ctx = RequestCtx {
            endpoint,
            write,
            limits,
            request_id: header.request_id.as_str().into(),
            endpoint_path: header.exec_endpoint.as_str().into(),
            header,
            parameters,
            spent: (0..self.nodes.len()).map(|_| Mutex::default()).collect(),
            trace: trace::current(),
        };
        let size = self.spec.settings.request_size;
        let batches: Vec<Vec<Document>> = if data.len() <= size {
            vec![data]
        } else {
            let mut it = data.into_iter().peekable();
            let mut out = Vec::new();
            while it.peek().is_some() {
                out.push(it.by_ref().take(size).collect());
            }
            out
        };
        let mut runs = Vec::with_capacity(batches.len());
        for (index, batch) in batches.into_iter().enumerate() {
            runs.push(self.run_batch(&ctx, index, batch));
        }
        let answers: Vec<Output> = futures::stream::iter(runs)
            .buffered(self.spec.settings.prefetch)
            .try_collect()
            .await?;
        let mut failed = Failed::default();
        let mut data = Vec::new();
        for answer in answers {
            data.extend(answer.docs);
            failed.absorb(answer.failed);
        }
        if !failed.ids.is_empty() {
            return Err(partial_write(&order, failed));
        }
        let keep_embeddings = ctx
            .parameters
            .get("return_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !keep_embeddings {
            data.iter_mut().for_each(Document::strip_embeddings);
        }
        let mut routes = Vec::new();
        let mut timings = Vec::new();
        for (node, spent) in self.nodes.iter().zip(&ctx.spent) {
            let spent = *spent.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((start, end)) = spent.span {
                routes.push(Route {
                    executor: node.name.to_string(),
                    start_time: humantime::format_rfc3339_micros(start).to_string(),
                    end_time: humantime::format_rfc3339_micros(end).to_string(),
                });
                timings.push((node.name.clone(), spent.total.as_secs_f64() * 1e3));
            }
        }
        Ok(Answer {
            envelope: Envelope {
                header: ctx.header,
                parameters: ctx.parameters,
                data,
                routes,
            },
            timings,
        })
    }

    async fn run_batch(&self, ctx: &RequestCtx, batch: usize, docs: Vec<Document>) -> NodeOutput {
        let start: Shared<BoxFuture<'_, NodeOutput>> =
            futures::future::ready(Ok(Output::done(docs)))
                .boxed()
                .shared();
        let mut outputs: Vec<Shared<BoxFuture<'_, NodeOutput>>> =
            Vec::with_capacity(self.nodes.len());
        for (i, preds) in self.preds.iter().enumerate() {
            let inputs: Vec<_> = if preds.is_empty() {
                vec![start.clone()]
            } else {
                preds.iter().map(|&p| outputs[p].clone()).collect()
            };
            let fut = async move {
                let (docs, failed) = join_outputs(try_join_all(inputs).await?);
                let mut out = self.run_node(ctx, batch, i, docs).await?;
                out.failed.absorb(failed);
                Ok(out)
            };
            outputs.push(fut.boxed().shared());
        }
        drop(start);
        // Only the sinks are kept, so each intermediate answer has one consumer and moves on
        // without being copied.
        let sinks: Vec<_> = self.sinks.iter().map(|&i| outputs[i].clone()).collect();
        drop(outputs);
        let (docs, failed) = join_outputs(try_join_all(sinks).await?);
        Ok(Output { docs, failed })
    }

    async fn run_node(
        &self,
        ctx: &RequestCtx,
        batch: usize,
        i: usize,
        mut docs: Vec<Document>,
    ) -> NodeOutput {
        let node = &self.nodes[i];
        // Nothing left of the batch (its documents failed upstream): nothing to send.
        if !node.spec.serves(ctx.endpoint) || docs.is_empty() {
            return Ok(Output::done(docs));
        }
        let t0 = Instant::now();
        let started = SystemTime::now();
        let span = node_span(ctx, node, docs.len());
        let out = match &node.kind {
            Kind::Sentencizer(s) => {
                if ctx.endpoint != Endpoint::Delete {
                    s.segment(&mut docs, &ctx.limits.chunks)?;
                }
                Ok(Output::done(docs))
            }
            Kind::Remote {
                shards,
                merge,
                mirror,
            } => {
                let trace = span.context();
                let polling = *node.polling.get(ctx.endpoint);
                let target = remote::Target {
                    node,
                    shards,
                    mirror: mirror.as_ref(),
                    batch,
                };
                call_remote(ctx, &trace, &target, polling, *merge, docs).await
            }
        };
        match &out {
            Err(e) => span.set_error(e),
            Ok(Output {
                failed: Failed { error: Some(e), .. },
                ..
            }) => span.set_error(e),
            Ok(_) => {}
        }
        drop(span);
        let elapsed = t0.elapsed();
        {
            let ended = started + elapsed;
            let mut spent = ctx.spent[i].lock().unwrap_or_else(PoisonError::into_inner);
            spent.total += elapsed;
            spent.span = Some(match spent.span {
                None => (started, ended),
                Some((s, e)) => (s.min(started), e.max(ended)),
            });
        }
        metrics::histogram!("flowmesh_executor_duration_seconds", "executor" => node.name.to_string())
            .record(elapsed.as_secs_f64());
        out
    }
}

/// Whether the copies of one shard hold the same content, from each copy's `(position, count,
/// digest)` (`None` when it did not say): `false` when two copies at the same position differ,
/// `true` when every copy is at the same position with the same content, else unknown.
fn convergence(copies: &[Option<(u64, u64, String)>]) -> Option<bool> {
    let known: Vec<&(u64, u64, String)> = copies.iter().flatten().collect();
    for (i, a) in known.iter().enumerate() {
        for b in &known[i + 1..] {
            if a.0 == b.0 && (a.1 != b.1 || a.2 != b.2) {
                return Some(false);
            }
        }
    }
    let all_known = known.len() == copies.len();
    let same_position = known.windows(2).all(|w| w[0].0 == w[1].0);
    (all_known && same_position && !known.is_empty()).then_some(true)
}

/// The span of one executor's part of one batch of a request: the parent of its calls' client
/// spans (or, for a built-in executor, the only record of it).
fn node_span(ctx: &RequestCtx, node: &Node, docs: usize) -> trace::SpanGuard {
    if !trace::enabled() {
        return trace::SpanGuard::default();
    }
    let kind = match node.kind {
        Kind::Sentencizer(_) => "builtin",
        Kind::Remote { .. } => "remote",
    };
    trace::internal_span(
        &ctx.trace,
        &node.name,
        vec![
            KeyValue::new("flowmesh.executor", node.name.to_string()),
            KeyValue::new("flowmesh.executor.kind", kind),
            KeyValue::new("flowmesh.endpoint", ctx.endpoint.as_str()),
            KeyValue::new("flowmesh.documents", docs as i64),
            KeyValue::new("flowmesh.request_id", ctx.request_id.to_string()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::convergence;

    fn copy(position: u64, count: u64, digest: &str) -> Option<(u64, u64, String)> {
        Some((position, count, digest.to_owned()))
    }

    #[test]
    fn copies_converge_only_on_equal_content_at_one_position() {
        assert_eq!(
            convergence(&[copy(7, 3, "ab"), copy(7, 3, "ab")]),
            Some(true)
        );
        assert_eq!(
            convergence(&[copy(7, 3, "ab"), copy(7, 3, "cd")]),
            Some(false)
        );
        assert_eq!(
            convergence(&[copy(7, 3, "ab"), copy(7, 4, "ab")]),
            Some(false)
        );
        // Different positions, or a copy that did not answer: not known yet.
        assert_eq!(convergence(&[copy(7, 3, "ab"), copy(6, 2, "cd")]), None);
        assert_eq!(convergence(&[copy(7, 3, "ab"), None]), None);
        // Two copies at one position that differ are divergence whatever a third says.
        assert_eq!(
            convergence(&[copy(7, 3, "ab"), copy(7, 3, "cd"), None]),
            Some(false)
        );
    }
}
