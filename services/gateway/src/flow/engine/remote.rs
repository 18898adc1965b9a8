//! Calls to a remote executor's shards: `any` polling routes each document to its shard, `all`
//! polling sends the batch to every shard and merges their answers. On a write, a shard's
//! failure sets its documents aside and the others go on.

use futures::future::try_join_all;
use serde::Serialize;

use flowmesh_shared::api::top_k;
use flowmesh_shared::balance::{Call, ReplicaSet};
use flowmesh_shared::codec::Format;
use flowmesh_shared::fanout::{merge_shard_answers, split_by_shard, MatchMerge};
use flowmesh_shared::{ApiError, Document, Header, Parameters};

use super::super::outcome::{fail_docs, reassemble, Failed, NodeOutput, Output};
use flowmesh_shared::flow::{Merge, Polling};

use super::{Mirrored, Node, RequestCtx};
use flowmesh_shared::hash::fnv1a64;
use flowmesh_shared::Endpoint;

/// The executor a batch is sent to: its shards and, when mirrored, their logs.
pub(super) struct Target<'a> {
    pub(super) node: &'a Node,
    pub(super) shards: &'a [ReplicaSet],
    pub(super) mirror: Option<&'a Mirrored>,
    /// The batch's index in its request (part of the write's id in the log).
    pub(super) batch: usize,
}

/// The envelope sent to an executor, serialised without copying the documents.
#[derive(Serialize)]
struct Outgoing<'a> {
    header: &'a Header,
    parameters: &'a Parameters,
    data: &'a [Document],
}

/// Sends `docs` to the shards of a remote executor as its polling says, under the executor's
/// span `trace`.
pub(super) async fn call_remote(
    ctx: &RequestCtx,
    trace: &opentelemetry::Context,
    target: &Target<'_>,
    polling: Polling,
    merge: Merge,
    docs: Vec<Document>,
) -> NodeOutput {
    let (node, shards) = (target.node, target.shards);
    if shards.len() == 1 {
        return match call_shard(ctx, trace, target, 0, encode(ctx, &docs)?).await {
            Ok(answer) => Ok(Output::done(answer)),
            Err(e) => fail_docs(ctx.write, &docs, e),
        };
    }
    match polling {
        Polling::Any => {
            let total = docs.len();
            // Futures are built in a loop, not a closure: a closure's higher-ranked lifetimes
            // keep rustc from proving the request future `Send`.
            let mut calls = Vec::with_capacity(shards.len());
            for (shard, (positions, part)) in
                split_by_shard(docs, shards.len()).into_iter().enumerate()
            {
                if part.is_empty() {
                    continue;
                }
                calls.push(async move {
                    let body = encode(ctx, &part)?;
                    match call_shard(ctx, trace, target, shard, body).await {
                        Ok(answer) => Ok::<_, ApiError>((positions, Output::done(answer))),
                        Err(e) => Ok((Vec::new(), fail_docs(ctx.write, &part, e)?)),
                    }
                });
            }
            // A shard's failure on a write sets its documents aside; the other shards' documents
            // were written and go on.
            let answers: Vec<(Vec<usize>, Output)> = try_join_all(calls).await?;
            let mut failed = Failed::default();
            let mut done = Vec::with_capacity(answers.len());
            for (positions, out) in answers {
                failed.absorb(out.failed);
                if !positions.is_empty() {
                    done.push((positions, out.docs));
                }
            }
            Ok(Output {
                docs: reassemble(&node.name, total, done),
                failed,
            })
        }
        Polling::All => {
            let body = encode(ctx, &docs)?;
            let mut calls = Vec::with_capacity(shards.len());
            for shard in 0..shards.len() {
                calls.push(call_shard(ctx, trace, target, shard, body.clone()));
            }
            let answers = match try_join_all(calls).await {
                Ok(answers) => answers,
                // A write to every shard that some shard failed did not complete for any of
                // its documents.
                Err(e) => return fail_docs(ctx.write, &docs, e),
            };
            let how = match merge {
                Merge::TopK => MatchMerge::TopK(top_k(&ctx.parameters, ctx.limits.max_top_k)?),
                Merge::Concat => MatchMerge::Concat,
            };
            Ok(Output::done(merge_shard_answers(answers, how)))
        }
    }
}

fn encode(ctx: &RequestCtx, docs: &[Document]) -> Result<bytes::Bytes, ApiError> {
    Format::MsgPack.encode(&Outgoing {
        header: &ctx.header,
        parameters: &ctx.parameters,
        data: docs,
    })
}

async fn call_shard(
    ctx: &RequestCtx,
    trace: &opentelemetry::Context,
    target: &Target<'_>,
    shard: usize,
    body: bytes::Bytes,
) -> Result<Vec<Document>, ApiError> {
    let set = &target.shards[shard];
    let call = Call {
        endpoint: ctx.endpoint_path.clone(),
        body,
        request_id: ctx.request_id.clone(),
        trace: trace.clone(),
        deadline: ctx.limits.deadline,
    };
    match target.mirror {
        Some(mirror) if is_mirrored_write(ctx.endpoint) => {
            write_mirrored(ctx, target, mirror, shard, set, call).await
        }
        _ => Ok(set.call(call).await?.data),
    }
}

/// The endpoints whose calls change a copy's content and so go through the log.
fn is_mirrored_write(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Index | Endpoint::Update | Endpoint::Delete
    )
}

/// A write to a mirrored shard: appended to the shard's log, then sent with its position to
/// every copy.
async fn write_mirrored(
    ctx: &RequestCtx,
    target: &Target<'_>,
    mirror: &Mirrored,
    shard: usize,
    set: &ReplicaSet,
    call: Call,
) -> Result<Vec<Document>, ApiError> {
    let log = &mirror.logs[shard];
    // Appending the same id again within two minutes returns the first position: the id names
    // the write (request, batch, shard) and its bytes, so a request id a client reuses for
    // different content is still a different write.
    let id = format!(
        "{}.{}.{shard}.{:016x}",
        ctx.request_id,
        target.batch,
        fnv1a64(&call.body)
    );
    let appended = match ctx.limits.deadline.remaining() {
        Some(left) => tokio::time::timeout(left, log.append(ctx.endpoint, call.body.clone(), &id))
            .await
            .unwrap_or_else(|_| {
                Err(flowmesh_shared::mirror::LogError::Unavailable(
                    "the request's deadline passed while appending".into(),
                ))
            }),
        None => log.append(ctx.endpoint, call.body.clone(), &id).await,
    };
    let seq = appended.map_err(|e| match e {
        flowmesh_shared::mirror::LogError::TooLarge { .. } => ApiError::from(e),
        other => ApiError::Unavailable {
            executor: format!("{} shard {shard} (log {})", target.node.name, log.name()),
            message: other.to_string(),
        },
    })?;
    let required = mirror.consistency.required(set.replicas().len());
    Ok(set.write_mirrored(call, seq, required).await?.data)
}
