//! The encoder's own routes besides the executor endpoints: `POST /encode` for raw use, and its
//! OpenAPI document.

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

/// Texts to embed with `POST /encode`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeRequest {
    /// The texts, at least one.
    pub texts: Vec<String>,
}

/// The embeddings of `POST /encode`, one per text, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EncodeResponse {
    /// The model's name.
    pub model: String,
    /// Dimensions of every embedding.
    pub dim: usize,
    /// One embedding per text.
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(OpenApi)]
#[openapi(
    paths(texts_encode),
    components(schemas(EncodeRequest, EncodeResponse))
)]
struct EncoderApi;

/// The encoder's OpenAPI document, as committed in `openapi/encoder.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = executor_api(
        "flowmesh encoder",
        "Embeds documents (or their chunks) on /index, /search and /update; /encode embeds raw texts.",
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
        .route("/encode", post(texts_encode))
        .with_state(encoder)
        .route("/openapi.json", get(|| async { Json(openapi()) }))
}

/// Embed raw texts, batched with every other request.
#[utoipa::path(post, path = "/encode", request_body = EncodeRequest,
    responses(
        (status = 200, description = "One embedding per text", body = EncodeResponse),
        (status = 400, description = "Malformed body or no texts", body = ErrorBody),
        (status = 429, description = "The queue is full; retry later", body = ErrorBody),
    ))]
async fn texts_encode(
    State(encoder): State<Arc<Encoder>>,
    request: Negotiated<EncodeRequest>,
) -> Result<Reply<EncodeResponse>, ApiError> {
    let texts = request.body.texts;
    if texts.is_empty() {
        return Err(ApiError::BadRequest(
            "texts is empty: send at least one text".into(),
        ));
    }
    let embeddings = encoder.embed_texts(texts).await?;
    Ok(Reply(
        request.reply,
        EncodeResponse {
            model: encoder.model_name().to_owned(),
            dim: encoder.dim(),
            embeddings,
        },
    ))
}
