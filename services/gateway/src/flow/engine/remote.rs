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

use super::{Node, RequestCtx};

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
    node: &Node,
    shards: &[ReplicaSet],
    polling: Polling,
    merge: Merge,
    docs: Vec<Document>,
) -> NodeOutput {
    if shards.len() == 1 {
        return match call_shard(ctx, trace, &shards[0], encode(ctx, &docs)?).await {
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
            for ((positions, part), shard) in
                split_by_shard(docs, shards.len()).into_iter().zip(shards)
            {
                if part.is_empty() {
                    continue;
                }
                calls.push(async move {
                    let body = encode(ctx, &part)?;
                    match call_shard(ctx, trace, shard, body).await {
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
            for shard in shards {
                calls.push(call_shard(ctx, trace, shard, body.clone()));
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
    shard: &ReplicaSet,
    body: bytes::Bytes,
) -> Result<Vec<Document>, ApiError> {
    let call = Call {
        endpoint: ctx.endpoint_path.clone(),
        body,
        request_id: ctx.request_id.clone(),
        trace: trace.clone(),
        deadline: ctx.limits.deadline,
    };
    Ok(shard.call(call).await?.data)
}
