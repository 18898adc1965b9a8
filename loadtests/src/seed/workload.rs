//! The documents of the seed's benchmark: generated multi-sentence texts, or generated images as
//! base64 PNG or JPEG, each the same for the same seed and index so that every indexer, and
//! every engine, sees the same data and the same queries.

use std::io::Cursor;
use std::ops::Range;

use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::ImageEncoder as _;
use serde_json::{json, Value};

use super::WorkloadSpec;
use crate::texts::{paragraph, SplitMix64};

/// What is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    /// Multi-sentence texts: sentencizer, text encoder, indexer shards, ranker.
    Text,
    /// Images: image encoder, indexer shards, no ranker.
    Image,
}

/// How an image is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ImageFormat {
    Jpeg,
    Png,
}

/// Where a document carries its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ImageField {
    /// `blob`: base64 bytes (flowmesh's native field).
    Blob,
    /// `uri`: a `data:image/...;base64,` URI (what Jina's DocArray reads).
    DataUri,
}

/// The data and queries of one benchmark, ready to be cut into requests.
pub(crate) struct Workload {
    pub(crate) spec: WorkloadSpec,
    /// Base64 images of the documents and of the queries (empty for texts).
    doc_images: Vec<String>,
    query_images: Vec<String>,
}

/// Index streams of the generator, so that documents and queries never coincide.
const DOC_STREAM: u64 = 1;
const QUERY_STREAM: u64 = 2;

impl Workload {
    /// Checks `spec` and generates its images, if any.
    pub(crate) fn new(spec: WorkloadSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            spec.docs > 0 && spec.queries > 0,
            "--docs and --queries must be positive"
        );
        anyhow::ensure!(
            spec.request_size > 0 && spec.query_request_size() > 0 && spec.top_k > 0,
            "--request-size, --query-request-size and --top-k must be positive"
        );
        let (mut doc_images, mut query_images) = (Vec::new(), Vec::new());
        if spec.scenario == Scenario::Image {
            anyhow::ensure!(
                (16..=4096).contains(&spec.image_size) && spec.image_pool > 0,
                "--image-size must be 16 to 4096 and --image-pool positive"
            );
            let pool = spec.image_pool;
            doc_images = (0..spec.docs.min(pool))
                .map(|i| image_base64(&spec, DOC_STREAM, i))
                .collect::<anyhow::Result<_>>()?;
            query_images = (0..spec.queries.min(pool))
                .map(|i| image_base64(&spec, QUERY_STREAM, i))
                .collect::<anyhow::Result<_>>()?;
        }
        Ok(Self {
            spec,
            doc_images,
            query_images,
        })
    }

    /// Index requests needed for every document.
    pub(crate) fn index_batches(&self) -> usize {
        self.spec.docs.div_ceil(self.spec.request_size)
    }

    /// Search requests needed for every query document once.
    pub(crate) fn query_batches(&self) -> usize {
        self.spec.queries.div_ceil(self.spec.query_request_size())
    }

    /// The documents of index request `b` (`b` < [`Self::index_batches`]).
    pub(crate) fn index_docs(&self, b: usize) -> Vec<Value> {
        self.batch(b, self.spec.request_size, self.spec.docs)
            .map(|i| self.doc(DOC_STREAM, i))
            .collect()
    }

    /// The query documents of search request `r`, cycling through the queries, with the index
    /// of the first one.
    pub(crate) fn query_docs(&self, r: usize) -> (usize, Vec<Value>) {
        let range = self.batch(
            r % self.query_batches(),
            self.spec.query_request_size(),
            self.spec.queries,
        );
        (
            range.start,
            range.map(|i| self.doc(QUERY_STREAM, i)).collect(),
        )
    }

    fn batch(&self, b: usize, size: usize, total: usize) -> Range<usize> {
        (b * size).min(total)..((b + 1) * size).min(total)
    }

    /// Document `i` of `stream`: `doc-I` or `q-I`, with its text or image.
    fn doc(&self, stream: u64, i: usize) -> Value {
        let id = match stream {
            DOC_STREAM => format!("doc-{i}"),
            _ => format!("q-{i}"),
        };
        match self.spec.scenario {
            Scenario::Text => {
                let sentences = if stream == DOC_STREAM { 2..=5 } else { 2..=3 };
                json!({"id": id, "text": paragraph(self.spec.seed, stream, i, sentences)})
            }
            Scenario::Image => {
                let pool = if stream == DOC_STREAM {
                    &self.doc_images
                } else {
                    &self.query_images
                };
                debug_assert!(!pool.is_empty(), "images are generated in new()");
                let b64 = pool.get(i % pool.len().max(1)).map_or("", String::as_str);
                match self.spec.image_field {
                    ImageField::Blob => json!({"id": id, "blob": b64}),
                    ImageField::DataUri => json!({
                        "id": id,
                        "uri": format!("data:{};base64,{b64}", self.mime()),
                    }),
                }
            }
        }
    }

    fn mime(&self) -> &'static str {
        match self.spec.image_format {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }
}

/// Image `i` of `stream` as base64 JPEG (quality 90) or PNG.
fn image_base64(spec: &WorkloadSpec, stream: u64, i: usize) -> anyhow::Result<String> {
    let variant = SplitMix64::for_item(spec.seed, stream, i).below(1 << 32);
    let picture = crate::workload::picture(variant, spec.image_size);
    let mut bytes = Cursor::new(Vec::new());
    match spec.image_format {
        ImageFormat::Jpeg => {
            JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&picture)?;
        }
        ImageFormat::Png => PngEncoder::new(&mut bytes).write_image(
            picture.as_raw(),
            picture.width(),
            picture.height(),
            image::ExtendedColorType::Rgb8,
        )?,
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes.into_inner()))
}

/// A small workload for tests.
#[cfg(test)]
pub(crate) fn test_spec(scenario: Scenario) -> WorkloadSpec {
    WorkloadSpec {
        scenario,
        docs: 10,
        queries: 5,
        request_size: 4,
        query_request_size: Some(2),
        top_k: 3,
        seed: 7,
        image_size: 32,
        image_format: ImageFormat::Png,
        image_field: ImageField::Blob,
        image_pool: 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_document_once() {
        let w = Workload::new(test_spec(Scenario::Text)).expect("valid");
        assert_eq!(w.index_batches(), 3);
        let ids: Vec<String> = (0..w.index_batches())
            .flat_map(|b| w.index_docs(b))
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let expected: Vec<String> = (0..10).map(|i| format!("doc-{i}")).collect();
        assert_eq!(ids, expected);
        // Queries cycle: request 3 is request 0 again.
        assert_eq!(w.query_batches(), 3);
        assert_eq!(w.query_docs(3), w.query_docs(0));
        assert_eq!(w.query_docs(2).0, 4);
        assert_eq!(w.query_docs(2).1.len(), 1);
    }

    #[test]
    fn images_decode() {
        let w = Workload::new(test_spec(Scenario::Image)).expect("valid");
        let doc = w.index_docs(2).pop().expect("a document");
        let b64 = doc["blob"].as_str().expect("a blob");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let img = image::load_from_memory(&bytes).expect("an image");
        assert_eq!((img.width(), img.height()), (32, 32));
        assert_ne!(w.doc_images[0], w.doc_images[1]);
    }
}
