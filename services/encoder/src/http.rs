//! The encoder's own routes besides the executor endpoints: `POST /encode` for raw texts or
//! images, and its OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use flowmesh_shared::codec::{Negotiated, Reply};
use flowmesh_shared::openapi::executor_api;
use flowmesh_shared::{ApiError, ErrorBody};
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
    api
}

/// The encoder's OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `POST /encode` and `GET /openapi.json`.
pub(crate) fn routes(encoder: Arc<Encoder>) -> Router {
    Router::new()
        .route("/encode", post(inputs_encode))
        .with_state(encoder)
        .route("/openapi.json", get(|| async { Json(openapi()) }))
}

/// Embed raw texts (text models) or images (image models), batched with every other request.
#[utoipa::path(post, path = "/encode", request_body = EncodeRequest,
    responses(
        (status = 200, description = "One embedding per text or image", body = EncodeResponse),
        (status = 400, description = "Malformed body; no inputs, or both texts and images; inputs the model does not embed; an image that cannot be decoded, or is too large", body = ErrorBody),
        (status = 429, description = "The queue is full; retry later", body = ErrorBody),
    ))]
async fn inputs_encode(
    State(encoder): State<Arc<Encoder>>,
    request: Negotiated<EncodeRequest>,
) -> Result<Reply<EncodeResponse>, ApiError> {
    let EncodeRequest { texts, images } = request.body;
    let embeddings = match (texts, images) {
        (Some(texts), None) if !texts.is_empty() => encoder.embed_texts(texts).await?,
        (None, Some(images)) if !images.is_empty() => encoder.embed_images(images).await?,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "send texts or images, not both".into(),
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::BadRequest(
                "texts is empty: send at least one text".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "images is empty: send at least one image".into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(format!(
                "nothing to encode: send {} (the {} model's inputs)",
                encoder.modality().inputs_name(),
                encoder.model_name()
            )))
        }
    };
    Ok(Reply(
        request.reply,
        EncodeResponse {
            model: encoder.model_name().to_owned(),
            dim: encoder.dim(),
            embeddings,
        },
    ))
}
