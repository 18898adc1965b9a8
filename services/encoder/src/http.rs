//! The encoder's own routes besides the executor endpoints: `POST /encode` for raw texts or
//! images, and its OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use flowmesh_shared::codec::{Negotiated, Reply};
use flowmesh_shared::openapi::{error_response, executor_api};
use flowmesh_shared::server::shed_beyond;
use flowmesh_shared::{ApiError, Deadline, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::Encoder;

/// Texts or images to embed with `POST /encode`: `texts` for a text model, `images` for an image
/// model (one of the two, not both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"texts": ["a man is riding a horse"]}))]
pub struct EncodeRequest {
    /// The texts, at least one (text models).
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// The images, at least one (image models): each PNG or JPEG bytes in base64, or a base64
    /// `data:` URI (`data:image/png;base64,...`). Remote URIs are not fetched.
    #[serde(default)]
    pub images: Option<Vec<String>>,
}

/// The embeddings of `POST /encode`, one per text or image, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EncodeResponse {
    /// The model's name.
    pub model: String,
    /// Dimensions of every embedding.
    pub dim: usize,
    /// One embedding per input.
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(OpenApi)]
#[openapi(
    paths(inputs_encode),
    components(schemas(EncodeRequest, EncodeResponse))
)]
struct EncoderApi;

/// The encoder's OpenAPI document, as committed in `openapi/encoder.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = executor_api(
        "flowmesh encoder",
        "Embeds documents (or their chunks) on /index, /search and /update, from their text or their image (blob: base64 PNG or JPEG; or uri: a base64 data: URI) as the model takes; /encode embeds raw texts or images.",
    );
    api.merge(EncoderApi::openapi());
    complete_responses(&mut api);
    // The service's own paths need the mesh token too.
    flowmesh_shared::openapi::add_mesh_security(&mut api);
    api
}

/// The error statuses every `POST` route of the encoder can answer, whether its handler says so
/// or the layers around it do (routing, body limit, shedding, deadline).
const POST_ERRORS: [(&str, &str); 8] = [
    ("400", "Malformed body or parameters, a malformed deadline header, or inputs the model does not embed"),
    ("404", "No such route"),
    ("405", "Method not allowed on this route"),
    ("413", "Body too large, or a limit exceeded (inputs, text bytes, images, pixels); the message names the limit and its flag"),
    ("429", "Overloaded (the queue is full, or too many requests in flight); retry later"),
    ("500", "The model failed, or produced non-finite values"),
    ("503", "Not ready"),
    ("504", "The request's deadline (x-flowmesh-deadline-ms) passed"),
];

/// Adds [`POST_ERRORS`] to every `POST` operation that does not list them yet, and the queue to
/// `/readyz`'s 503.
fn complete_responses(api: &mut utoipa::openapi::OpenApi) {
    for (path, item) in &mut api.paths.paths {
        if let Some(op) = item.post.as_mut() {
            flowmesh_shared::openapi::add_deadline_header(op);
            for (status, description) in POST_ERRORS {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error_response(description).into());
            }
        }
        if path == "/readyz" {
            if let Some(op) = item.get.as_mut() {
                op.responses.responses.insert(
                    "503".to_owned(),
                    error_response("Not ready: starting, or the batch queue is full").into(),
                );
            }
        }
    }
}

/// The encoder's OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    flowmesh_shared::openapi::to_json(&openapi())
}

/// `POST /encode` (shed with 429 beyond `max_concurrent` requests at once, as the executor
/// routes are), `GET /openapi.json` and Swagger UI at `/docs`.
pub(crate) fn routes(encoder: Arc<Encoder>, max_concurrent: usize) -> Router {
    Router::new()
        .route("/encode", post(inputs_encode))
        .route_layer(shed_beyond(max_concurrent))
        .with_state(encoder)
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .merge(flowmesh_shared::openapi::swagger_ui())
}

/// Embed raw texts (text models) or images (image models), batched with every other request.
#[utoipa::path(post, path = "/encode", request_body = EncodeRequest,
    responses(
        (status = 200, description = "One embedding per text or image", body = EncodeResponse),
        (status = 400, description = "Malformed body or deadline header; no inputs, or both texts and images; inputs the model does not embed; an image that cannot be decoded", body = ErrorBody),
        (status = 413, description = "Body too large, or over a limit: inputs (--max-inputs), bytes of a text (--max-text-bytes), images (--max-images) or pixels of an image (--max-image-pixels)", body = ErrorBody),
        (status = 429, description = "The queue is full; retry later", body = ErrorBody),
        (status = 504, description = "The deadline (x-flowmesh-deadline-ms) passed before the embeddings were done", body = ErrorBody),
    ),
    params(("x-flowmesh-deadline-ms" = Option<u64>, Header, description = "Milliseconds the caller still waits; past them the work stops and the answer is 504")))]
async fn inputs_encode(
    State(encoder): State<Arc<Encoder>>,
    headers: HeaderMap,
    request: Negotiated<EncodeRequest>,
) -> Result<Reply<EncodeResponse>, ApiError> {
    let deadline = Deadline::from_headers(&headers)?;
    if deadline.is_expired() {
        return Err(deadline.exceeded("/encode"));
    }
    let EncodeRequest { texts, images } = request.body;
    let work = async {
        match (texts, images) {
            (Some(texts), None) if !texts.is_empty() => {
                Ok(encoder.embed_texts(texts, deadline).await?)
            }
            (None, Some(images)) if !images.is_empty() => {
                Ok(encoder.embed_images(images, deadline).await?)
            }
            (texts, images) => Err(nothing_to_encode(
                &encoder,
                texts.is_some(),
                images.is_some(),
            )),
        }
    };
    let embeddings = deadline.run("/encode", work).await?;
    Ok(Reply(
        request.reply,
        EncodeResponse {
            model: encoder.model_name().to_owned(),
            dim: encoder.dim(),
            embeddings,
        },
    ))
}

/// The 400 for a request without inputs to embed, or with both kinds.
fn nothing_to_encode(encoder: &Encoder, texts: bool, images: bool) -> ApiError {
    match (texts, images) {
        (true, true) => ApiError::BadRequest("send texts or images, not both".into()),
        (true, false) => ApiError::BadRequest("texts is empty: send at least one text".into()),
        (false, true) => ApiError::BadRequest("images is empty: send at least one image".into()),
        (false, false) => ApiError::BadRequest(format!(
            "nothing to encode: send {} (the {} model's inputs)",
            encoder.modality().inputs_name(),
            encoder.model_name()
        )),
    }
}
