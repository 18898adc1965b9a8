//! The OpenAPI description of what every executor service serves: `POST /{endpoint}` with the
//! envelope, and health and metrics. A service merges its own paths into [`executor_api`].
//!
//! The executor endpoints are served by one generic handler ([`crate::server::executor_router`]),
//! which utoipa cannot annotate; the functions below exist only to carry their documentation.
//!
//! Every service serves its document at `/openapi.json` and Swagger UI on it at `/docs`
//! ([`swagger_ui`]). Each route that takes documents carries an example body that the service
//! accepts as it is, so that Swagger UI's "Try it out" works without editing.

#![allow(dead_code)]

use serde_json::{json, Value};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, Ref, Required, Response, ResponseBuilder, Type,
};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{Document, EmbeddingValue, Envelope, Header, Route};
use crate::deadline::{DEADLINE_HEADER, MAX_DEADLINE_MS};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    paths(executor_endpoint, livez, readyz, metrics),
    components(schemas(Envelope, Document, EmbeddingValue, Header, Route, ErrorBody))
)]
struct ExecutorApi;

/// The common part of an executor service's OpenAPI document, titled `title`. `POST
/// /{endpoint}` carries [`text_example`] as its example body; a service whose endpoints take
/// something else sets its own with [`set_endpoint_example`].
pub fn executor_api(title: &str, description: &str) -> utoipa::openapi::OpenApi {
    let mut api = ExecutorApi::openapi();
    api.info.title = title.to_owned();
    api.info.description = Some(description.to_owned());
    set_endpoint_example(&mut api, &text_example());
    add_mesh_security(&mut api);
    api
}

/// The text of the example documents.
pub const EXAMPLE_TEXT: &str = "A man is riding a horse on the beach.";

/// The id of the example documents.
pub const EXAMPLE_ID: &str = "doc-1";

/// An example envelope of one text document ([`EXAMPLE_ID`], [`EXAMPLE_TEXT`]) asking for 3
/// matches: what an executor that reads texts (the encoder) accepts on any endpoint.
pub fn text_example() -> Value {
    json!({
        "data": [{"id": EXAMPLE_ID, "text": EXAMPLE_TEXT}],
        "parameters": {"top_k": 3},
    })
}

/// An example envelope of one document ([`EXAMPLE_ID`]) with the vector `embedding`, asking for
/// 3 matches: what an indexer accepts on any endpoint (when the vector has its dimension).
pub fn vector_example(embedding: &[f64]) -> Value {
    json!({
        "data": [{"id": EXAMPLE_ID, "embedding": embedding}],
        "parameters": {"top_k": 3},
    })
}

/// Sets `example` as the example of every content type of `op`'s request body (Swagger UI puts
/// it in the body editor of "Try it out"). Does nothing to an operation without a body.
pub fn set_request_example(op: &mut Operation, example: &Value) {
    if let Some(body) = op.request_body.as_mut() {
        for content in body.content.values_mut() {
            content.example = Some(example.clone());
            content.examples.clear();
        }
    }
}

/// Sets `example` as the example body of the executor route `POST /{endpoint}` of `api`.
pub fn set_endpoint_example(api: &mut utoipa::openapi::OpenApi, example: &Value) {
    let op = api
        .paths
        .paths
        .get_mut(ENDPOINT_PATH)
        .and_then(|item| item.post.as_mut());
    if let Some(op) = op {
        set_request_example(op, example);
    }
}

/// The path of the executor route in the executors' documents.
pub const ENDPOINT_PATH: &str = "/{endpoint}";

/// Swagger UI at `/docs` (and its assets under `/docs/`) on the service's own document at
/// `/openapi.json`, which the service routes itself. Both stay open with a mesh token: the page
/// asks for the token with its Authorize button ([`crate::server::require_mesh_token`] lets
/// them through). The page's scripts and styles are in the binary: it loads without a network.
pub fn swagger_ui<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::from("/openapi.json"))
        .into()
}

/// The name of the mesh token's security scheme in the executors' OpenAPI documents.
pub const MESH_TOKEN_SCHEME: &str = "mesh_token";

/// Paths an executor serves without the mesh token.
const OPEN_PATHS: [&str; 2] = ["/livez", "/readyz"];

/// Declares the mesh token (an http bearer scheme, [`MESH_TOKEN_SCHEME`]) on every operation of
/// `api` except `/livez` and `/readyz`, with its 401 answer. A service calls it again after
/// merging its own paths into [`executor_api`]; calling it twice changes nothing.
pub fn add_mesh_security(api: &mut utoipa::openapi::OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        MESH_TOKEN_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The mesh token (FLOWMESH_MESH_TOKEN or --mesh-token-file), required on \
                     every route but /livez and /readyz when the service has one",
                ))
                .build(),
        ),
    );
    for (path, item) in &mut api.paths.paths {
        let open = OPEN_PATHS.contains(&path.as_str());
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if open {
                op.security = None;
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new(
                MESH_TOKEN_SCHEME,
                Vec::<String>::new(),
            )]);
            op.responses.responses.insert(
                "401".to_owned(),
                error_response(
                    "No mesh token, or a wrong one (Authorization: Bearer); \
                     with WWW-Authenticate: Bearer realm=\"flowmesh\"",
                )
                .into(),
            );
        }
    }
}

/// `api` as pretty JSON, as the services commit it under `openapi/`.
pub fn to_json(api: &utoipa::openapi::OpenApi) -> String {
    api.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The deadline header an executor call may carry, as [`crate::deadline`] reads it.
pub fn deadline_header() -> Parameter {
    ParameterBuilder::new()
        .name(DEADLINE_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Milliseconds the caller still has for this call (at least 1); past them the work \
             stops and the answer is 504 `deadline_exceeded`. Absent: no deadline.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(1))
                .maximum(Some(MAX_DEADLINE_MS)),
        ))
        .build()
}

/// Adds [`deadline_header`] to `op`, replacing a header of that name it already lists.
pub fn add_deadline_header(op: &mut Operation) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.retain(|p| p.name != DEADLINE_HEADER);
    params.push(deadline_header());
}

/// Sets each `(status, description)` of `errors` on `op`, with the error body, replacing what
/// `op` said of that status.
pub fn set_error_responses(op: &mut Operation, errors: &[(&str, &str)]) {
    for (status, description) in errors {
        op.responses
            .responses
            .insert((*status).to_owned(), error_response(description).into());
    }
}

/// A response described by `description` whose body is the JSON error body ([`ErrorBody`]).
pub fn error_response(description: &str) -> Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build()
}

/// Run the executor on the envelope's documents. Endpoints the executor does not handle return
/// the envelope unchanged. JSON or MessagePack (`application/msgpack`), by `Content-Type` and
/// `Accept`.
#[utoipa::path(post, path = "/{endpoint}",
    params(("endpoint" = String, Path, description = "index, search, update, delete, or another",
        example = "search")),
    request_body = Envelope,
    responses(
        (status = 200, description = "The envelope after the executor", body = Envelope),
        (status = 400, description = "Malformed body or documents the executor cannot take", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Overloaded; retry later", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
fn executor_endpoint() {}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "Live", body = Object)))]
fn livez() {}

/// Readiness: 200 once the service can work (model loaded, index open, store connected).
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Not ready yet", body = ErrorBody)))]
fn readyz() {}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String)))]
fn metrics() {}
