//! What `flowmesh-bench encoder` sends: sentences for a text model, generated JPEG images for
//! an image model, and the same inputs ready for the model's raw loop.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use flowmesh_encoder::decode::blob_bytes;
use flowmesh_encoder::preprocess::prepare;
use flowmesh_encoder::{ImageSpec, ImageTensor};
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use serde_json::json;

use crate::texts::{mixed, sentence, SplitMix64};

/// Distinct images sent round robin.
const IMAGES: usize = 64;

/// Distinct request bodies of each size (each a different rotation of the images).
const BODIES: usize = 8;

/// The inputs of a benchmark.
pub(crate) enum Workload {
    /// Generated texts: the first 4,096 for the raw loop, and how text `i` is made.
    Texts {
        texts: Vec<String>,
        make: fn(usize) -> String,
    },
    /// JPEG images: their tensors for the raw loop, and request bodies by images per request.
    Images {
        tensors: Vec<ImageTensor>,
        base64: Vec<String>,
        bodies: BTreeMap<usize, Vec<Bytes>>,
        /// What the service's preparation of one image costs here (base64, JPEG decoding,
        /// resizing, normalisation), in seconds: the work it does besides the model's.
        prepare_seconds: f64,
    },
}

impl Workload {
    /// Sentences of 8 to 24 words.
    pub(crate) fn texts() -> Self {
        Self::texts_of(sentence)
    }

    /// Texts of 4 to 40 words, of mixed lengths.
    pub(crate) fn mixed_texts() -> Self {
        Self::texts_of(mixed)
    }

    fn texts_of(make: fn(usize) -> String) -> Self {
        Self::Texts {
            texts: (0..4096).map(make).collect(),
            make,
        }
    }

    /// [`IMAGES`] generated JPEG images of `side` x `side`, prepared for `spec`, with request
    /// bodies of each size in `per_request`.
    pub(crate) fn images(
        spec: &ImageSpec,
        side: u32,
        max_pixels: u64,
        per_request: &[usize],
    ) -> anyhow::Result<Self> {
        let mut base64 = Vec::with_capacity(IMAGES);
        for i in 0..IMAGES {
            let mut jpeg = Cursor::new(Vec::new());
            JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&picture(i, side))?;
            base64.push(base64::engine::general_purpose::STANDARD.encode(jpeg.into_inner()));
        }
        let prepared = |b: &String| Ok(prepare(&blob_bytes(b)?, spec, max_pixels)?);
        let tensors = base64
            .iter()
            .map(prepared)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Timed apart, each tensor dropped at once, as the service's are after their batch: the
        // first allocations of fresh memory would count its page faults too.
        let started = Instant::now();
        for b in &base64 {
            drop(prepared(b)?);
        }
        let prepare_seconds = started.elapsed().as_secs_f64() / IMAGES as f64;
        let bodies = per_request
            .iter()
            .map(|&n| {
                let bodies = (0..BODIES)
                    .map(|b| {
                        let images: Vec<&String> =
                            (0..n).map(|j| &base64[(b * n + j) % IMAGES]).collect();
                        Bytes::from(json!({ "images": images }).to_string())
                    })
                    .collect();
                (n, bodies)
            })
            .collect();
        Ok(Self::Images {
            tensors,
            base64,
            bodies,
            prepare_seconds,
        })
    }

    /// Seconds to prepare one image (0 for texts).
    pub(crate) fn prepare_seconds(&self) -> f64 {
        match self {
            Self::Texts { .. } => 0.0,
            Self::Images {
                prepare_seconds, ..
            } => *prepare_seconds,
        }
    }

    /// `texts` or `images`.
    pub(crate) fn unit(&self) -> &'static str {
        match self {
            Self::Texts { .. } => "texts",
            Self::Images { .. } => "images",
        }
    }

    /// The `i`-th `POST /encode` body of `n` inputs.
    pub(crate) fn body(&self, i: usize, n: usize) -> Bytes {
        match self {
            Self::Texts { make, .. } => {
                let texts: Vec<String> = (0..n).map(|j| make(i * n + j)).collect();
                Bytes::from(json!({ "texts": texts }).to_string())
            }
            Self::Images { bodies, base64, .. } => match bodies.get(&n) {
                Some(bodies) => bodies[i % bodies.len()].clone(),
                None => {
                    let images: Vec<&String> =
                        (0..n).map(|j| &base64[(i * n + j) % IMAGES]).collect();
                    Bytes::from(json!({ "images": images }).to_string())
                }
            },
        }
    }
}

/// Streams of the pictures' generators.
const PICTURE: u64 = 11;
const GRAIN: u64 = 12;

/// A photo-like picture, the same for the same `i`: smooth colour waves, a few discs, and grain,
/// so that it compresses like a photo (about 15-20 KB as a 224x224 JPEG of quality 90).
pub(crate) fn picture(i: usize, side: u32) -> RgbImage {
    let mut rng = SplitMix64::for_item(0, PICTURE, i);
    let mut unit = move || rng.unit();
    let waves: Vec<[f32; 3]> = (0..3)
        .map(|_| [unit() * 0.1, unit() * 0.1, unit() * 6.3])
        .collect();
    let discs: Vec<([f32; 3], [f32; 3])> = (0..4)
        .map(|_| {
            let s = side as f32;
            let (x, y, r) = (unit() * s, unit() * s, (0.05 + unit() * 0.2) * s);
            ([x, y, r], [unit() * 255.0, unit() * 255.0, unit() * 255.0])
        })
        .collect();
    let mut grain = SplitMix64::for_item(0, GRAIN, i);
    RgbImage::from_fn(side, side, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let mut px = [0.0_f32; 3];
        for (c, [kx, ky, phase]) in waves.iter().enumerate() {
            px[c] = 127.5 + 100.0 * (kx * fx + ky * fy + phase).sin();
        }
        for ([cx, cy, r], colour) in &discs {
            if (fx - cx).powi(2) + (fy - cy).powi(2) < r * r {
                px = *colour;
            }
        }
        let noise = grain.below(13) as f32 - 6.0;
        Rgb(px.map(|v| (v + noise).clamp(0.0, 255.0) as u8))
    })
}
