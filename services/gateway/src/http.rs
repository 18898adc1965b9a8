//! The gateway's public API: the Flow's endpoints, Jina's `/post`, status, health, metrics,
//! the OpenAPI document and Swagger UI.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use flowmesh_shared::api::EmbeddingValue;
use flowmesh_shared::codec::{Negotiated, Reply};
use flowmesh_shared::health::Readiness;
use flowmesh_shared::openapi::set_error_responses;
use flowmesh_shared::server::{service_router, shed_with, Limits};
use flowmesh_shared::{
    ApiError, Document, Endpoint, Envelope, ErrorBody, Header, Parameters, Route,
};

use crate::auth::audit::is_printable_id;
use crate::auth::{authorize, caller_of, ApiKeys, Caller, WriteAudit};
use crate::flow::engine::{Answer, RunLimits};
use crate::flow::{Flow, GatewayLimits};

/// What `flowmesh up` reports of the executor processes it supervises, for `GET /status`.
pub type ProcessStatus = Arc<dyn Fn() -> Value + Send + Sync>;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The running Flow.
    pub flow: Arc<Flow>,
    /// The gateway's request and connection limits.
    pub limits: Limits,
    /// The gateway's own limits: text bytes, sentencizer chunks, the request timeout.
    pub guard: GatewayLimits,
    /// The launcher's view of its processes, when the gateway runs inside `flowmesh up`.
    pub processes: Option<ProcessStatus>,
    /// The client API keys; none: the API is open.
    pub keys: ApiKeys,
    /// Whether browsers on other origins may call the API (`--cors`; the Flow's `cors: true`
    /// turns it on too).
    pub cors: bool,
    /// The requests worked on at once, at most `limits.max_concurrent_requests`: HTTP's work
    /// routes and gRPC's data requests share them.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("flow", &self.flow)
            .field("limits", &self.limits)
            .field("guard", &self.guard)
            .field("keys", &self.keys)
            .field("cors", &self.cors)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a gateway serving `flow` under `limits` and the default gateway limits.
    pub fn new(flow: Arc<Flow>, limits: Limits) -> Self {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            limits.max_concurrent_requests.max(1),
        ));
        Self {
            flow,
            limits,
            guard: GatewayLimits::defaults(),
            processes: None,
            keys: ApiKeys::none(),
            cors: false,
            in_flight,
        }
    }

    /// Answers CORS preflight requests and adds the CORS headers to every answer when `cors`
    /// (see [`cors_layer`]); the Flow's `with: {cors: true}` does so whatever this says.
    #[must_use]
    pub fn with_cors(mut self, cors: bool) -> Self {
        self.cors = cors;
        self
    }

    /// Requires the client API keys `keys` (see [`crate::auth`]).
    #[must_use]
    pub fn with_api_keys(mut self, keys: ApiKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Sets the gateway's own limits (`--max-text-bytes`, `--request-timeout`, ...).
    #[must_use]
    pub fn with_guard(mut self, guard: GatewayLimits) -> Self {
        self.guard = guard;
        self
    }

    /// Adds the launcher's process status to `GET /status` (under `processes`).
    #[must_use]
    pub fn with_processes(mut self, status: ProcessStatus) -> Self {
        self.processes = Some(status);
        self
    }
}

/// The gateway's routes. The state's limits bound request bodies (413 beyond them) and the
/// requests worked on at once (429 beyond them). `/livez`, `/readyz` and `/metrics` are shared's,
/// as on every service; the gateway is ready when every shard of every executor has a healthy
/// replica. With API keys in the state, every route but health, `/docs` and `/openapi.json`
/// needs one ([`authorize`], so that unknown paths answer 401 before 404); writes are audited.
/// With CORS on ([`AppState::cors`] or the Flow's `cors: true`), [`cors_layer`] is outermost:
/// a browser's preflight is answered without an API key (it never carries one), and every
/// answer, a 401 included, carries the CORS headers.
pub fn router(state: AppState) -> Router {
    let limits = state.limits.clone();
    let keys = state.keys.clone();
    let cors = state.cors || state.flow.spec().settings.cors;
    let readiness = Readiness::ready();
    let flow = Arc::clone(&state.flow);
    readiness.add_check(move || {
        (!flow.is_ready())
            .then(|| "some executor shard has no healthy replica; see /status".to_owned())
    });
    let mut own = Router::new();
    for endpoint in Endpoint::ALL {
        let handler = move |State(s): State<AppState>, request: Negotiated<Envelope>| async move {
            run_audited(&s, endpoint, request).await
        };
        own = own.route(endpoint.path(), post(handler));
    }
    let own = own
        .route("/post", post(jina_post))
        .route_layer(shed_with(Arc::clone(&state.in_flight)))
        .route("/status", get(flow_status))
        .route("/dry_run", get(dry_run))
        .route(
            "/snapshot/{executor}/{shard}",
            get(crate::snapshot::download),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .with_state(state);
    let app = service_router("gateway", own, readiness, &limits)
        .layer(axum::middleware::from_fn_with_state(keys, authorize));
    let app = if cors { app.layer(cors_layer()) } else { app };
    // Tracked again outside `authorize` and CORS, so that 401s and preflights are counted and
    // logged.
    flowmesh_shared::telemetry::tracked("gateway", app)
}

/// CORS as Jina's `cors: true`: any origin, the methods the API has, and the headers a
/// browser app sends (`content-type`, and the API key as `api-key` or `authorization`). No
/// credentials mode: the key is a header the app sets, not a cookie. `server-timing` is
/// readable by the app.
pub fn cors_layer() -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, Method};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static("api-key"),
        ])
        .expose_headers([HeaderName::from_static("server-timing")])
        .max_age(std::time::Duration::from_secs(600))
}

/// The OpenAPI document of the gateway.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowmesh gateway",
        description = "Neural search as a mesh of services. Send documents to /index, query with /search; \
                       every response reports how long each executor of the Flow took in `routes`."
    ),
    paths(
        jina_post,
        flow_status,
        dry_run,
        livez,
        readyz,
        metrics_text
    ),
    components(schemas(
        Envelope,
        EnvelopeRequest,
        Document,
        EmbeddingValue,
        Header,
        Route,
        ErrorBody,
        PostRequest
    )),
    modifiers(&FlowOperations, &ErrorResponses, &Security)
)]
pub struct ApiDoc;

/// The client API keys in the OpenAPI document (so that Swagger UI's Authorize button sends
/// them): the schemes `api_key` (header `api-key`) and `bearer` (`Authorization: Bearer`),
/// either one required everywhere but on the health checks, and the 401 and 403 answers.
struct Security;

/// What a request without a valid key gets when keys are configured.
const UNAUTHORIZED: (&str, &str) = (
    "401",
    "No API key, or not a valid one (only when the gateway has keys; `WWW-Authenticate: Bearer`)",
);

/// What a write with a read-only key gets.
const FORBIDDEN: (&str, &str) = ("403", "The API key is read-only and this request writes");

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "api-key",
                "A read-write or read-only API key (FLOWMESH_API_KEY, --api-key-file, ...)",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as `Authorization: Bearer KEY`"))
                    .build(),
            ),
        );
        // Either scheme will do.
        api.security = Some(vec![
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
        for (path, item) in &mut api.paths.paths {
            let open = matches!(
                path.as_str(),
                "/livez" | "/readyz" | "/dry_run" | "/openapi.json"
            );
            let writes = matches!(path.as_str(), "/index" | "/update" | "/delete" | "/post");
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                if open {
                    op.security = Some(Vec::new());
                } else {
                    set_error_responses(op, &[UNAUTHORIZED]);
                    if writes {
                        set_error_responses(op, &[FORBIDDEN]);
                    }
                }
            }
        }
    }
}

/// The endpoints that run the Flow, served by one handler: `(endpoint, operation id, summary,
/// what a 200 holds)` for the OpenAPI document.
const FLOW_OPERATIONS: [(Endpoint, &str, &str, &str); 4] = [
    (
        Endpoint::Index,
        "documents_index",
        "Index documents: they go through the Flow and are stored by its indexers.",
        "The indexed documents",
    ),
    (
        Endpoint::Search,
        "matches_search",
        "Search: each document of `data` is a query; its `matches` are filled, best first\n(`parameters.top_k`, default 10).",
        "The queries with their matches",
    ),
    (
        Endpoint::Update,
        "documents_update",
        "Update documents by id: their new version replaces the stored one.",
        "The updated documents",
    ),
    (
        Endpoint::Delete,
        "documents_delete",
        "Delete documents by id (only `id` is needed).",
        "The deleted ids",
    ),
];

/// The example body of an endpoint that runs the Flow, which Swagger UI's "Try it out" sends as
/// it is: one text to index or update as `doc-1`, one query text asking for 3 matches, `doc-1`
/// to delete. Run in that order they index, find, change and remove one document.
fn flow_example(endpoint: Endpoint) -> Value {
    use flowmesh_shared::openapi::{EXAMPLE_ID, EXAMPLE_TEXT};
    match endpoint {
        Endpoint::Index => json!({"data": [{"id": EXAMPLE_ID, "text": EXAMPLE_TEXT}]}),
        Endpoint::Search => json!({
            "data": [{"text": SEARCH_EXAMPLE_TEXT}],
            "parameters": {"top_k": 3},
        }),
        Endpoint::Update => json!({
            "data": [{"id": EXAMPLE_ID, "text": "A woman is riding a horse on the beach."}],
        }),
        Endpoint::Delete => json!({"data": [{"id": EXAMPLE_ID}]}),
    }
}

/// The query of the search examples.
const SEARCH_EXAMPLE_TEXT: &str = "Who is riding a horse?";

/// Adds the operations of [`FLOW_OPERATIONS`]: an [`EnvelopeRequest`] in, an [`Envelope`] out,
/// each with its example body ([`flow_example`]); and the example body of Jina's `/post`.
struct FlowOperations;

impl utoipa::Modify for FlowOperations {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder};
        use utoipa::openapi::request_body::RequestBodyBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        let json = |schema: &str| {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build()
        };
        for (endpoint, id, summary, ok) in FLOW_OPERATIONS {
            let example = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("EnvelopeRequest")))
                .example(Some(flow_example(endpoint)))
                .build();
            let body = RequestBodyBuilder::new()
                .content("application/json", example)
                .required(Some(Required::True))
                .build();
            let answer = ResponseBuilder::new()
                .description(ok)
                .content("application/json", json("Envelope"))
                .build();
            let operation = OperationBuilder::new()
                .tags(Some(Vec::<String>::new()))
                .summary(Some(summary))
                .operation_id(Some(id))
                .request_body(Some(body))
                .response("200", answer)
                .build();
            api.paths
                .add_path_operation(endpoint.path(), vec![HttpMethod::Post], operation);
        }
        let post = api
            .paths
            .paths
            .get_mut("/post")
            .and_then(|item| item.post.as_mut());
        if let Some(op) = post {
            let example = json!({
                "execEndpoint": "/search",
                "data": [{"text": SEARCH_EXAMPLE_TEXT}],
                "parameters": {"top_k": 3},
            });
            flowmesh_shared::openapi::set_request_example(op, &example);
        }
    }
}

/// The errors every endpoint that runs the Flow may answer with.
const FLOW_ERRORS: &[(&str, &str)] = &[
    ("400", "Malformed body, empty data or an invalid parameter (`invalid_parameter` names it)"),
    ("405", "Method not allowed"),
    ("413", "Body, documents, text bytes or sentencizer chunks over a limit (the message names it and its flag)"),
    ("429", "Overloaded: over --max-concurrent-requests or an executor is overloaded; see Retry-After"),
    ("504", "The request's deadline (--request-timeout) or an executor's timeout passed"),
];

/// A 503 of an endpoint that writes.
const WRITE_UNAVAILABLE: (&str, &str) = (
    "503",
    "An executor is unavailable; `partial_write` lists in `not_written` the documents whose write did not complete",
);

/// A 503 of an endpoint that does not write.
const READ_UNAVAILABLE: (&str, &str) = ("503", "An executor is unavailable");

/// Adds [`FLOW_ERRORS`] and each endpoint's own errors to the OpenAPI document, written once
/// here rather than on each handler.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let own: [(&str, &[(&str, &str)]); 5] = [
            ("/index", &[WRITE_UNAVAILABLE]),
            ("/search", &[READ_UNAVAILABLE]),
            (
                "/update",
                &[
                    WRITE_UNAVAILABLE,
                    ("404", "A document to update is not in the index (named; nothing of the request is changed on its shard)"),
                ],
            ),
            ("/delete", &[READ_UNAVAILABLE]),
            (
                "/post",
                &[
                    WRITE_UNAVAILABLE,
                    ("404", "An /update of a document that is not in the index"),
                ],
            ),
        ];
        for (path, errors) in own {
            let op = api
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut());
            if let Some(op) = op {
                set_error_responses(op, FLOW_ERRORS);
                set_error_responses(op, errors);
            }
        }
    }
}

/// The body of `/index`, `/search`, `/update` and `/delete`: an [`Envelope`] whose `data` has at
/// least one document (the server answers 400 to an empty or missing `data`). Documentation only.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EnvelopeRequest {
    /// Routing metadata.
    header: Option<Header>,
    /// Request parameters: `top_k` (a whole number from 1 to `--max-top-k`, default 10),
    /// `return_embeddings` and `include_blob` (booleans).
    #[schema(value_type = Option<Object>)]
    parameters: Option<Parameters>,
    /// The documents; at least one.
    #[schema(min_items = 1)]
    data: Vec<Document>,
}

/// The OpenAPI document as pretty JSON, as committed in `openapi/gateway.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// How long after its deadline a request is dropped if the Flow has not answered by then.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// [`run`], leaving in the response what the audit line of a write needs ([`WriteAudit`]).
async fn run_audited(
    state: &AppState,
    endpoint: Endpoint,
    mut request: Negotiated<Envelope>,
) -> Response {
    let request_id = ensure_request_id(&mut request.body.header);
    let docs = request.body.data.len();
    let result = run(state, endpoint, request).await;
    let audit = WriteAudit::new(request_id, endpoint, docs, &result);
    let mut response = result.into_response();
    let id = flowmesh_shared::telemetry::RequestId(audit.request_id.clone());
    response.extensions_mut().insert(id);
    response.extensions_mut().insert(audit);
    response
}

/// Gives the request an id when it has none (generated here rather than by the Flow, so that
/// the audit line has it), and returns the id to log: `invalid` for one the limits refuse (the
/// request then fails with 400).
pub(crate) fn ensure_request_id(header: &mut Header) -> String {
    if header.request_id.is_empty() {
        header.request_id = uuid::Uuid::new_v4().simple().to_string();
    }
    if is_printable_id(&header.request_id) {
        header.request_id.clone()
    } else {
        "invalid".to_owned()
    }
}

async fn run(
    state: &AppState,
    endpoint: Endpoint,
    request: Negotiated<Envelope>,
) -> Result<Response, ApiError> {
    let reply = request.reply;
    let answer = run_flow(state, endpoint, request.body).await?;
    // Per-executor time in the standard header browsers and tools show; Jina clients only accept
    // start and end times in `routes`.
    let timing: Vec<String> = answer
        .timings
        .iter()
        .map(|(name, ms)| format!("{name};dur={ms:.3}"))
        .collect();
    let mut response = Reply(reply, answer.envelope).into_response();
    if let Ok(v) = HeaderValue::from_str(&timing.join(", ")) {
        response.headers_mut().insert("server-timing", v);
    }
    Ok(response)
}

/// Runs `envelope` through the Flow under the gateway's limits and the request's deadline: the
/// core of every endpoint, over HTTP and gRPC alike.
pub(crate) async fn run_flow(
    state: &AppState,
    endpoint: Endpoint,
    envelope: Envelope,
) -> Result<Answer, ApiError> {
    let flow_timeout = state.flow.spec().settings.request_timeout_ms;
    let deadline = state.guard.deadline(flow_timeout);
    state.guard.check(&state.limits, &envelope)?;
    let limits = RunLimits {
        deadline,
        chunks: state.guard.chunk_budget(),
        max_top_k: state.limits.max_top_k,
    };
    // Executor calls are cut off at the deadline and answered by the Flow (a write then says
    // what it did not write); this is the net for work between calls, a moment later.
    let budget = deadline.remaining().unwrap_or_default();
    match tokio::time::timeout(
        budget + DEADLINE_GRACE,
        state.flow.run(endpoint, envelope, limits),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::DeadlineExceeded(format!(
            "the request took longer than its deadline of {} ms (--request-timeout, \
             FLOWMESH_REQUEST_TIMEOUT, or the Flow's request_timeout_ms)",
            budget.as_millis()
        ))),
    }
}

/// The body of Jina's `POST /post`: an envelope plus the endpoint to run.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PostRequest {
    /// The endpoint: `/index`, `/search`, `/update` or `/delete`; with any other (or none), the
    /// documents pass through unchanged, as through a Jina Flow none of whose executors serves
    /// the endpoint.
    #[serde(rename = "execEndpoint", alias = "exec_endpoint", default)]
    pub exec_endpoint: String,
    /// Routing metadata; `null` reads as absent.
    #[serde(default, deserialize_with = "flowmesh_shared::api::header_or_null")]
    #[schema(nullable)]
    pub header: Header,
    /// Request parameters; `null` reads as absent.
    #[serde(default, deserialize_with = "flowmesh_shared::api::null_as_default")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Parameters,
    /// The documents; at least one.
    #[serde(default, deserialize_with = "flowmesh_shared::api::documents")]
    #[schema(required = true, min_items = 1)]
    pub data: Vec<Document>,
}

/// Jina's generic endpoint: runs the endpoint named by `execEndpoint`. A read-only API key may
/// only search. An endpoint that no executor serves (anything but `/index`, `/search`,
/// `/update` and `/delete`) lets the documents pass through unchanged, as Jina does: the answer
/// is the request's documents, with the endpoint in `header.exec_endpoint`.
#[utoipa::path(post, path = "/post", request_body = PostRequest,
    responses((status = 200, description = "The answer of the endpoint; for an endpoint no executor serves, the documents as sent", body = Envelope)))]
async fn jina_post(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    request: Negotiated<PostRequest>,
) -> Result<Response, ApiError> {
    let PostRequest {
        exec_endpoint,
        header,
        parameters,
        data,
    } = request.body;
    let named = if exec_endpoint.is_empty() {
        header.exec_endpoint.clone()
    } else {
        exec_endpoint
    };
    let Ok(endpoint) = named.trim_start_matches('/').parse::<Endpoint>() else {
        let envelope = Envelope {
            header,
            parameters,
            data,
            routes: Vec::new(),
        };
        return pass_through(&s, named, envelope, request.reply);
    };
    let caller = caller_of(caller.as_deref());
    if WriteAudit::is_write(endpoint) && !caller.may_write() {
        crate::auth::keys::count_failure("read_only");
        let result: Result<(), ApiError> = Err(crate::auth::forbidden(endpoint.path()));
        let request_id = Some(header.request_id.as_str())
            .filter(|id| is_printable_id(id))
            .map_or_else(|| "-".to_owned(), str::to_owned);
        let audit = WriteAudit::new(request_id, endpoint, data.len(), &result);
        let mut response = result.into_response();
        response.extensions_mut().insert(audit);
        return Ok(response);
    }
    let envelope = Envelope {
        header,
        parameters,
        data,
        routes: Vec::new(),
    };
    Ok(run_audited(
        &s,
        endpoint,
        Negotiated {
            body: envelope,
            reply: request.reply,
        },
    )
    .await)
}

/// The answer to an endpoint no executor serves: the request's documents as they came (within
/// the same limits as any request; a document without an id gets one), its endpoint in the
/// header, no routes.
fn pass_through(
    state: &AppState,
    endpoint: String,
    mut envelope: Envelope,
    reply: flowmesh_shared::codec::Format,
) -> Result<Response, ApiError> {
    state.guard.check(&state.limits, &envelope)?;
    let header = &mut envelope.header;
    if header.request_id.is_empty() {
        header.request_id = uuid::Uuid::new_v4().simple().to_string();
    }
    header.exec_endpoint = endpoint;
    // As the Flow does for every request: a document without an id gets one.
    for doc in &mut envelope.data {
        if doc.id.is_empty() {
            doc.id = uuid::Uuid::new_v4().simple().to_string();
        }
    }
    // Nothing is written: the audit of `/post` is told so (as for a search), and logs no line.
    let audit = WriteAudit::new(
        envelope.header.request_id.clone(),
        Endpoint::Search,
        envelope.data.len(),
        &Ok::<(), ApiError>(()),
    );
    let mut response = Reply(reply, envelope).into_response();
    response.extensions_mut().insert(audit);
    Ok(response)
}

/// Jina's readiness check, as `Client.is_flow_ready()` (and the older `dry_run()`) and
/// `jina ping flow http://...` call it; open like `/readyz` (no API key: `jina ping` has no way
/// to send one). Always 200, with Jina's status: `code` 0 (SUCCESS) when
/// every shard of every executor has a healthy replica, else 3 (ERROR) with a `description` and
/// an `exception`, which the client reads as not ready.
#[utoipa::path(get, path = "/dry_run", responses((status = 200,
    description = "`{\"code\": 0}` when the Flow is ready, `{\"code\": 3, \"description\": ...}` when not",
    body = Object)))]
async fn dry_run(State(s): State<AppState>) -> Json<Value> {
    Json(if s.flow.is_ready() {
        json!({"code": 0, "description": "", "exception": null})
    } else {
        let why = "the Flow is not ready: some executor shard has no healthy replica (see /status)";
        json!({
            "code": 3,
            "description": why,
            "exception": {"name": "FlowNotReady", "args": [why], "stacks": [], "executor": ""},
        })
    })
}

/// How long `/status` waits for each copy's `GET /stats`.
const STATUS_STATS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The Flow's topology and the health of every replica; for Jina's clients also `jina` (the
/// versions, as Jina's `/status` has them) and `envs` (empty: the environment is not shown).
#[utoipa::path(get, path = "/status", responses((status = 200, description = "Topology and health", body = Object)))]
async fn flow_status(State(s): State<AppState>) -> Json<Value> {
    // Each copy of a stateful executor is asked for its content (`GET /stats`) at once, each
    // within a short timeout, so a stalled copy delays /status by at most that.
    let mut status = s.flow.full_status(STATUS_STATS_TIMEOUT).await;
    status["version"] = json!(env!("CARGO_PKG_VERSION"));
    status["jina"] = json!({"flowmesh": env!("CARGO_PKG_VERSION"), "protocol": "http"});
    status["envs"] = json!({});
    if let Some(processes) = &s.processes {
        status["processes"] = processes();
    }
    Json(status)
}

// `/livez`, `/readyz` and `/metrics` are served by shared's routers; these functions only carry
// their documentation (the gateway's readiness says what it waits for).

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/livez", responses((status = 200, description = "Live", body = Object)))]
#[allow(dead_code)]
fn livez() {}

/// Readiness: 200 when every shard of every executor has a healthy replica.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Some shard has no healthy replica", body = ErrorBody)))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String)))]
#[allow(dead_code)]
fn metrics_text() {}
