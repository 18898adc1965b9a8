//! The indexer's OpenAPI document: the executor API every service shares, its own `/stats`,
//! and every status each route answers with (the shared document lists the common ones only).

use flowmesh_shared::openapi::{add_deadline_header, set_error_responses as add_errors};
use utoipa::openapi::OpenApi;

use crate::backend::{Metric, Stats};
use crate::{BuildState, IndexerStats, ShardStats};
use flowmesh_shared::mirror::{MirrorState, MirrorStats};

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::stats_get),
    components(schemas(
        IndexerStats,
        ShardStats,
        MirrorStats,
        MirrorState,
        Stats,
        BuildState,
        Metric
    ))
)]
struct IndexerApi;

/// The statuses of `POST /{endpoint}`, beyond 200.
const ENDPOINT_ERRORS: [(&str, &str); 9] = [
    ("400", "Malformed body; a document without an id or embedding, with a NaN or infinite value in its embedding (the message names the document), or of another dimension than the index; an invalid parameter (`top_k` not a positive integer or above --max-top-k, a malformed deadline header)"),
    ("404", "/update of a document the shard does not hold (named; nothing is changed)"),
    ("405", "A method other than POST"),
    ("409", "A write to a mirrored copy (--log-url) without its log position (x-flowmesh-log-seq): writes to a mirrored copy come through the gateway, in log order"),
    ("413", "Body above --max-body-bytes, more documents than --max-documents, or a search asking for more matches (query vectors x top_k) than --max-matches"),
    ("429", "More requests in flight than --max-concurrent-requests; retry after `Retry-After`"),
    ("500", "The shard could not write its log (nothing was acknowledged)"),
    ("503", "Not ready"),
    ("504", "The request's deadline (x-flowmesh-deadline-ms) passed: a search stops between units of work; a write is never started past it, and one started completes"),
];

/// The statuses of the `GET` routes, beyond 200 (and 503 where shared already lists it).
const GET_ERRORS: [(&str, &str); 1] = [("405", "A method other than GET")];

/// The indexer's OpenAPI document, as committed in `openapi/indexer.json`: its example body
/// holds a vector of [`EXAMPLE_DIMENSION`] values.
pub fn openapi() -> OpenApi {
    openapi_for_dimension(None)
}

/// The dimension of the example vector of a shard that holds none yet.
pub(crate) const EXAMPLE_DIMENSION: usize = 4;

/// A unit vector of `dim` values (0.6 and 0.8, then zeros), for the example body.
fn example_embedding(dim: usize) -> Vec<f64> {
    match dim {
        0 | 1 => vec![1.0],
        _ => {
            let mut v = vec![0.0; dim];
            v[0] = 0.6;
            v[1] = 0.8;
            v
        }
    }
}

/// The indexer's OpenAPI document whose example body (one document with a vector, 3 matches
/// asked for) fits a shard of dimension `dim`, so that Swagger UI's "Try it out" succeeds on
/// the shard that serves it; `None` (a shard that holds no vector yet): [`EXAMPLE_DIMENSION`].
pub(crate) fn openapi_for_dimension(dim: Option<usize>) -> OpenApi {
    let mut api = flowmesh_shared::openapi::executor_api(
        "flowmesh indexer",
        "One shard of the vector index. /index and /update store the embedding of each document \
         (or of its leaf chunks) with its id and parent_id, replacing what was stored of it \
         (idempotent upserts: sending a write again leaves one copy); /search sets each query's \
         matches (top_k, scores higher is better); /delete removes documents and their chunks. \
         Every answered write is on disk.",
    );
    api.merge(<IndexerApi as utoipa::OpenApi>::openapi());
    let embedding = example_embedding(dim.unwrap_or(EXAMPLE_DIMENSION));
    flowmesh_shared::openapi::set_endpoint_example(
        &mut api,
        &flowmesh_shared::openapi::vector_example(&embedding),
    );
    for (path, item) in &mut api.paths.paths {
        if let Some(op) = item.post.as_mut() {
            add_errors(op, &ENDPOINT_ERRORS);
            add_deadline_header(op);
        }
        if let Some(op) = item.get.as_mut() {
            add_errors(op, &GET_ERRORS);
            if path == "/stats" {
                add_errors(op, &[("500", "The statistics task failed")]);
            }
        }
    }
    // The service's own paths need the mesh token too.
    flowmesh_shared::openapi::add_mesh_security(&mut api);
    api
}
