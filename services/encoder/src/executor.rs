//! The encoder executor: which documents get embeddings, on which endpoints, from their text or
//! their image (as the model embeds one or the other).

use flowmesh_shared::server::Executor;
use flowmesh_shared::{ApiError, Deadline, Document, Endpoint, Envelope};

/// Bounds on the inputs of one request, checked before any work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Most inputs (texts or images: documents, or their leaf chunks) in one request.
    pub max_inputs: usize,
    /// Most bytes (UTF-8) of one text.
    pub max_text_bytes: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_inputs: 4096,
            max_text_bytes: 1 << 20,
        }
    }
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::batcher::{BatchConfig, BatchError, Batcher};
use crate::decode::{self, ImageLimits};
use crate::error::EncodeError;
use crate::model::{check_finite, Batch, InferenceError, Inputs, Modality, Model};
use crate::preprocess::{self, ImageSpec, ImageTensor};

/// Where the model runs.
enum Backend {
    /// On the caller's async thread: for models that take microseconds (`hash`).
    Inline(Arc<dyn Model>),
    /// On inference threads, batched across callers.
    Batched(Batcher),
}

/// One image to prepare, and how to name it in an error.
struct ImageSource {
    item: String,
    data: String,
    form: SourceForm,
}

/// How an image is given.
enum SourceForm {
    /// A document's `blob`: base64 bytes.
    Blob,
    /// A document's `uri`: a `data:` URI.
    Uri,
    /// `POST /encode`'s `images`: either.
    Either,
}

impl ImageSource {
    /// The image of a document: its `blob`, else its `uri`.
    fn of_document(doc: &Document) -> Option<Self> {
        let (data, form) = match (&doc.blob, &doc.uri) {
            (Some(blob), _) => (blob, SourceForm::Blob),
            (None, Some(uri)) => (uri, SourceForm::Uri),
            (None, None) => return None,
        };
        Some(Self {
            item: format!("document {:?}", doc.id),
            data: data.clone(),
            form,
        })
    }

    fn prepare(&self, spec: &ImageSpec, max_pixels: u64) -> Result<ImageTensor, EncodeError> {
        let bytes = match self.form {
            SourceForm::Blob => decode::blob_bytes(&self.data),
            SourceForm::Uri => decode::data_uri_bytes(&self.data),
            SourceForm::Either => decode::image_bytes(&self.data),
        };
        bytes
            .and_then(|b| preprocess::prepare(&b, spec, max_pixels))
            .map_err(|error| EncodeError::Image {
                item: self.item.clone(),
                error,
            })
    }
}

/// The encoder executor: embeds documents on `index`, `search` and `update`, and passes every
/// other endpoint through unchanged.
pub struct Encoder {
    model: Arc<dyn Model>,
    backend: Backend,
    limits: ImageLimits,
    inputs: InputLimits,
    /// Requests whose images are being prepared at once: one per core, so that a burst of large
    /// images queues here instead of holding every blocking thread and its decoded pixels.
    preparing: Arc<Semaphore>,
}

impl Encoder {
    /// An encoder running `model` on the caller's thread.
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self::with_backend(model.clone(), Backend::Inline(model))
    }

    /// An encoder running `model` on `config.workers` inference threads, batched across callers.
    pub fn batched(model: Arc<dyn Model>, config: &BatchConfig) -> std::io::Result<Self> {
        let batcher = Batcher::start(model.clone(), config)?;
        Ok(Self::with_backend(model, Backend::Batched(batcher)))
    }

    fn with_backend(model: Arc<dyn Model>, backend: Backend) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            model,
            backend,
            limits: ImageLimits::default(),
            inputs: InputLimits::default(),
            preparing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The same encoder with other bounds on the images it decodes.
    #[must_use]
    pub fn with_image_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same encoder with other bounds on the inputs of a request.
    #[must_use]
    pub fn with_input_limits(mut self, limits: InputLimits) -> Self {
        self.inputs = limits;
        self
    }

    /// When the batch queue is full (a new request would get 429), its capacity.
    pub fn queue_full(&self) -> Option<usize> {
        match &self.backend {
            Backend::Batched(batcher) if batcher.is_full() => Some(batcher.capacity()),
            _ => None,
        }
    }

    /// A [`EncodeError::TooManyInputs`] when `count` inputs are more than `--max-inputs`.
    fn check_count(&self, count: usize) -> Result<(), EncodeError> {
        if count > self.inputs.max_inputs {
            return Err(EncodeError::TooManyInputs {
                count,
                max: self.inputs.max_inputs,
            });
        }
        Ok(())
    }

    /// A [`EncodeError::TextTooLong`] when `text` has more than `--max-text-bytes` bytes.
    fn check_text(&self, item: impl FnOnce() -> String, text: &str) -> Result<(), EncodeError> {
        if text.len() > self.inputs.max_text_bytes {
            return Err(EncodeError::TextTooLong {
                item: item(),
                bytes: text.len(),
                max: self.inputs.max_text_bytes,
            });
        }
        Ok(())
    }

    /// The model's embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.dim()
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        self.model.name()
    }

    /// What the model embeds.
    pub fn modality(&self) -> Modality {
        self.model.modality()
    }

    /// One embedding per input, in order, from the model's backend (inline or batched), without
    /// a deadline.
    pub async fn embed(&self, inputs: Inputs) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.embed_within(inputs, Deadline::NONE).await
    }

    /// [`Encoder::embed`], given up (between batches, and before a queued batch runs) once
    /// `deadline` has passed.
    pub async fn embed_within(
        &self,
        inputs: Inputs,
        deadline: Deadline,
    ) -> Result<Vec<Vec<f32>>, EncodeError> {
        let (accepts, got) = (self.modality().inputs_name(), inputs.inputs_name());
        if accepts != got {
            return Err(EncodeError::WrongInputs {
                model: self.model_name().to_owned(),
                accepts,
                got,
            });
        }
        match &self.backend {
            Backend::Inline(model) => {
                let embeddings = match &inputs {
                    Inputs::Texts(texts) => {
                        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                        model.embed(Batch::Texts(&refs))?
                    }
                    Inputs::Images(images) => model.embed(Batch::Images(images))?,
                };
                check_finite(&embeddings)?;
                Ok(embeddings)
            }
            Backend::Batched(batcher) => Ok(batcher.embed(inputs, deadline).await?),
        }
    }

    /// One embedding per text, in order, within `deadline` ([`Deadline::NONE`]: no deadline);
    /// the texts are checked against the [`InputLimits`] first. Errors name a text as
    /// `texts[i]`.
    pub async fn embed_texts(
        &self,
        texts: Vec<String>,
        deadline: Deadline,
    ) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.check_count(texts.len())?;
        for (i, text) in texts.iter().enumerate() {
            self.check_text(|| format!("texts[{i}]"), text)?;
        }
        self.embed_within(Inputs::Texts(texts), deadline).await
    }

    /// One embedding per image, in order, within `deadline`; each image is base64 PNG or JPEG
    /// bytes, or a base64 `data:` URI. Errors name the image as `images[i]`.
    pub async fn embed_images(
        &self,
        images: Vec<String>,
        deadline: Deadline,
    ) -> Result<Vec<Vec<f32>>, EncodeError> {
        let spec = self.image_spec()?;
        self.check_count(images.len())?;
        let sources = images
            .into_iter()
            .enumerate()
            .map(|(i, data)| ImageSource {
                item: format!("images[{i}]"),
                data,
                form: SourceForm::Either,
            })
            .collect();
        let tensors = self.prepare(spec, sources, deadline).await?;
        self.embed_within(Inputs::Images(tensors), deadline).await
    }

    /// The model's image spec; a [`EncodeError::WrongInputs`] for a text model.
    fn image_spec(&self) -> Result<ImageSpec, EncodeError> {
        match self.modality() {
            Modality::Image(spec) => Ok(spec),
            Modality::Text => Err(EncodeError::WrongInputs {
                model: self.model_name().to_owned(),
                accepts: "texts",
                got: "images",
            }),
        }
    }

    /// Decodes, resizes and normalises `sources` off the async threads. Every image costs at
    /// least a full input tensor to fill (224x224x3 values for MobileNetV2; about 0.7 ms for a
    /// 224x224 JPEG in all), far more than an async thread should be held, so even one small
    /// image goes to the blocking pool. The blocking task stops between images once `deadline`
    /// has passed or this future is dropped (its caller went away).
    async fn prepare(
        &self,
        spec: ImageSpec,
        sources: Vec<ImageSource>,
        deadline: Deadline,
    ) -> Result<Vec<ImageTensor>, EncodeError> {
        if sources.len() > self.limits.max_images {
            return Err(EncodeError::TooManyImages {
                count: sources.len(),
                max: self.limits.max_images,
            });
        }
        let max_pixels = self.limits.max_pixels;
        // The semaphore is never closed; if it were, preparing without a permit is still right.
        let permit = self.preparing.clone().acquire_owned().await.ok();
        let caller = GoneOnDrop::default();
        let gone = caller.0.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sources
                .iter()
                .map(|s| {
                    if gone.load(Ordering::Relaxed) || deadline.is_expired() {
                        return Err(EncodeError::Batch(BatchError::DeadlineExceeded));
                    }
                    s.prepare(&spec, max_pixels)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        drop(caller);
        prepared.unwrap_or_else(|e| {
            Err(EncodeError::Inference(InferenceError(format!(
                "image preparation failed: {e}"
            ))))
        })
    }

    /// Sets the `embedding` of every document of `docs`, or of its leaf chunks when it has
    /// chunks (a document with chunks keeps no embedding of its own from this call). A text
    /// model embeds each leaf's `text`; an image model its `blob` or else its `uri`. Nothing is
    /// changed when a leaf lacks what the model embeds, when an image cannot be decoded, or when
    /// the job is refused.
    pub async fn encode(&self, docs: &mut [Document]) -> Result<(), EncodeError> {
        self.encode_within(docs, Deadline::NONE).await
    }

    /// [`Encoder::encode`] within `deadline`. The request is checked against the
    /// [`InputLimits`] (and [`ImageLimits`]) before any text is copied or image decoded.
    pub async fn encode_within(
        &self,
        docs: &mut [Document],
        deadline: Deadline,
    ) -> Result<(), EncodeError> {
        let mut leaves = Vec::new();
        for doc in docs.iter() {
            collect_leaves(doc, &mut leaves);
        }
        if leaves.is_empty() {
            return Ok(());
        }
        self.check_count(leaves.len())?;
        let inputs = match self.modality() {
            Modality::Text => {
                let texts = leaves
                    .iter()
                    .map(|d| {
                        let text = d.text.as_deref().ok_or_else(|| EncodeError::MissingText {
                            id: d.id.clone(),
                            model: self.model_name().to_owned(),
                        })?;
                        self.check_text(|| format!("document {:?}", d.id), text)?;
                        Ok(text)
                    })
                    .collect::<Result<Vec<&str>, EncodeError>>()?;
                Inputs::Texts(texts.into_iter().map(str::to_owned).collect())
            }
            Modality::Image(spec) => {
                let sources = leaves
                    .iter()
                    .map(|d| {
                        ImageSource::of_document(d).ok_or_else(|| EncodeError::MissingImage {
                            id: d.id.clone(),
                            model: self.model_name().to_owned(),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Inputs::Images(self.prepare(spec, sources, deadline).await?)
            }
        };
        let embeddings = self.embed_within(inputs, deadline).await?;
        let count = embeddings.len();
        let mut embeddings = embeddings.into_iter();
        for doc in docs.iter_mut() {
            set_leaf_embeddings(doc, &mut embeddings);
        }
        debug_assert!(
            embeddings.next().is_none(),
            "one embedding per leaf ({count})"
        );
        Ok(())
    }
}

/// A flag set when it is dropped: tells work on another thread that its caller went away.
#[derive(Default)]
struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The leaves of `doc` (itself when it has no chunks), depth first.
fn collect_leaves<'a>(doc: &'a Document, out: &mut Vec<&'a Document>) {
    if doc.chunks.is_empty() {
        out.push(doc);
    } else {
        for chunk in &doc.chunks {
            collect_leaves(chunk, out);
        }
    }
}

/// Hands out `embeddings` to the leaves of `doc` in the order [`collect_leaves`] lists them.
fn set_leaf_embeddings(doc: &mut Document, embeddings: &mut impl Iterator<Item = Vec<f32>>) {
    if doc.chunks.is_empty() {
        doc.embedding = embeddings.next();
    } else {
        for chunk in &mut doc.chunks {
            set_leaf_embeddings(chunk, embeddings);
        }
    }
}

impl Executor for Encoder {
    async fn call(
        &self,
        endpoint: Endpoint,
        mut request: Envelope,
        deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        match endpoint {
            Endpoint::Index | Endpoint::Search | Endpoint::Update => {
                self.encode_within(&mut request.data, deadline).await?;
                tracing::debug!(
                    endpoint = endpoint.as_str(),
                    documents = request.data.len(),
                    "documents encoded"
                );
                Ok(request)
            }
            Endpoint::Delete => Ok(request),
        }
    }
}
