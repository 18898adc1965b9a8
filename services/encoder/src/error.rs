//! Why a request could not be encoded, and the HTTP answer each reason gets.

use flowmesh_shared::ApiError;

use crate::batcher::BatchError;
use crate::decode::ImageError;
use crate::model::InferenceError;

/// Why a request could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A document (or chunk) to embed has no text.
    #[error("document {id:?} has no text to encode (the {model} model encodes text only)")]
    MissingText {
        /// The document's id.
        id: String,
        /// The model's name.
        model: String,
    },
    /// A document (or chunk) to embed has no image.
    #[error("document {id:?} has no image to encode (the {model} model encodes images only, given as blob: base64 PNG or JPEG bytes, or as uri: a base64 data: URI)")]
    MissingImage {
        /// The document's id.
        id: String,
        /// The model's name.
        model: String,
    },
    /// Inputs of the kind the model does not embed.
    #[error("the {model} model encodes {accepts}, not {got}")]
    WrongInputs {
        /// The model's name.
        model: String,
        /// `texts` or `images`: what it embeds.
        accepts: &'static str,
        /// What it was given.
        got: &'static str,
    },
    /// An image could not be decoded or is not acceptable.
    #[error("{item}: {error}")]
    Image {
        /// Which input: `document "id"`, or `images[i]`.
        item: String,
        /// What is wrong with it.
        error: ImageError,
    },
    /// More images in one request than allowed.
    #[error("{count} images in one request; the limit is {max} (--max-images, FLOWMESH_ENCODER_MAX_IMAGES): split the request")]
    TooManyImages {
        /// Images sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More inputs (texts or images) in one request than allowed.
    #[error("{count} inputs (documents or their chunks) in one request; the limit is {max} (--max-inputs, FLOWMESH_ENCODER_MAX_INPUTS): split the request")]
    TooManyInputs {
        /// Inputs sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text longer than allowed.
    #[error("{item}: its text is {bytes} bytes; the limit is {max} (--max-text-bytes, FLOWMESH_ENCODER_MAX_TEXT_BYTES): split it into chunks")]
    TextTooLong {
        /// Which input: `document "id"`, or `texts[i]`.
        item: String,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The batching queue refused or failed the job.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The model failed (inline backend), or image preparation did.
    #[error("the model failed: {0}")]
    Inference(#[from] InferenceError),
}

impl From<EncodeError> for ApiError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Image {
                error: ImageError::TooLarge { .. },
                ..
            } => ApiError::LimitExceeded(e.to_string()),
            EncodeError::MissingText { .. }
            | EncodeError::MissingImage { .. }
            | EncodeError::WrongInputs { .. }
            | EncodeError::Image { .. } => ApiError::BadRequest(e.to_string()),
            EncodeError::TooManyImages { .. }
            | EncodeError::TooManyInputs { .. }
            | EncodeError::TextTooLong { .. } => ApiError::LimitExceeded(e.to_string()),
            EncodeError::Batch(BatchError::QueueFull(_)) => ApiError::Overloaded(e.to_string()),
            EncodeError::Batch(BatchError::DeadlineExceeded) => {
                ApiError::DeadlineExceeded(e.to_string())
            }
            EncodeError::Batch(BatchError::Stopped) => ApiError::NotReady(e.to_string()),
            EncodeError::Batch(BatchError::Model(_)) | EncodeError::Inference(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}
