//! The ranker's OpenAPI document: the executor API every service shares, with every status
//! each route answers with (the shared document lists the common ones only) and the deadline
//! header.

use flowmesh_shared::mirror::{MirrorState, MirrorStats};
use flowmesh_shared::openapi::{add_deadline_header, set_error_responses as set_errors};
use utoipa::openapi::OpenApi;

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::stats_get),
    components(schemas(crate::RankerStats, MirrorStats, MirrorState))
)]
struct RankerApi;

/// The statuses of `POST /{endpoint}`, beyond 200.
const ENDPOINT_ERRORS: [(&str, &str); 7] = [
    ("400", "Malformed body; a document to store without an id; a match with a NaN or infinite score (the message names the match); an invalid parameter (`top_k` not a positive integer or above --max-top-k, a malformed deadline header)"),
    ("405", "A method other than POST"),
    ("409", "A write to a mirrored copy (--log-url) without its log position (x-flowmesh-log-seq): writes to a mirrored copy come through the gateway, in log order"),
    ("413", "Body above --max-body-bytes, or more documents than --max-documents"),
    ("429", "More requests in flight than --max-concurrent-requests; retry after `Retry-After`"),
    ("503", "`unavailable`: the document store (Redis) cannot be reached or failed; `not_ready`: not ready"),
    ("504", "The request's deadline (x-flowmesh-deadline-ms) passed, e.g. while waiting on the document store"),
];

/// The example body of `POST /{endpoint}`: a document with a text and one match (itself, as
/// the indexer would have found it), 3 matches asked for.
fn example() -> serde_json::Value {
    use flowmesh_shared::openapi::{EXAMPLE_ID, EXAMPLE_TEXT};
    serde_json::json!({
        "data": [{
            "id": EXAMPLE_ID,
            "text": EXAMPLE_TEXT,
            "matches": [{"id": EXAMPLE_ID, "score": 0.9}],
        }],
        "parameters": {"top_k": 3},
    })
}

/// The ranker's OpenAPI document, as committed in `openapi/ranker.json`.
pub fn openapi() -> OpenApi {
    let mut api = flowmesh_shared::openapi::executor_api(
        "flowmesh ranker",
        "Turns chunk matches into document matches and fills them with stored content. \
         /index and /update store each root document's text, tags, uri and blob; /delete \
         forgets them; /search groups each query's chunk matches by parent_id, aggregates their \
         scores (max, min, mean or sum, optionally reversed), keeps top_k documents and fills \
         them with text, tags and uri (the blob too with parameters.include_blob = true). A \
         match whose document the store does not hold (indexed, but its write to the store \
         failed) is left out: no answer carries a match without its stored content. \
         503 `unavailable` while the document store (Redis) cannot be reached; /readyz answers \
         503 naming Redis while it is down.",
    );
    api.merge(<RankerApi as utoipa::OpenApi>::openapi());
    // One body for every endpoint: /index stores the document, /search then answers its own
    // match filled from the store, /delete forgets it.
    flowmesh_shared::openapi::set_endpoint_example(&mut api, &example());
    for (path, item) in &mut api.paths.paths {
        if let Some(op) = item.post.as_mut() {
            set_errors(op, &ENDPOINT_ERRORS);
            add_deadline_header(op);
        }
        if let Some(op) = item.get.as_mut() {
            set_errors(op, &[("405", "A method other than GET")]);
            if path == "/readyz" {
                set_errors(
                    op,
                    &[("503", "Not ready: starting, or the document store (Redis) does not answer; the message names it")],
                );
            }
        }
    }
    api
}
