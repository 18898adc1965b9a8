//! Images for image models: decoded pixels (see [`crate::decode`]) to the model's input tensor,
//! resized and normalised as its [`ImageSpec`] says.
//!
//! This runs per request, before the batch queue: an image that cannot be decoded is the caller's
//! error (a 400 naming the document), and the inference threads only stack ready tensors.

use crate::decode::{decode_rgb8, ImageError};
use crate::resize::resize_rgb8;

/// How an image model wants its input. Pixels are decoded as RGB `0..=255`, resized to
/// `height` x `width`, put in `channels` order, normalised, and laid out as `layout` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageSpec {
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// How images are brought to `height` x `width`.
    pub resize: Resize,
    /// Order of the colour channels in the tensor.
    pub channels: ChannelOrder,
    /// What each pixel value `x` (`0..=255`) becomes.
    pub normalisation: Normalisation,
    /// Memory layout of one image's tensor.
    pub layout: Layout,
}

impl ImageSpec {
    /// Number of `f32` values of one image's tensor.
    pub fn tensor_len(&self) -> usize {
        self.height * self.width * 3
    }
}

/// How images are resized to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Stretched (no crop), bilinear with half-pixel centres, no antialiasing, `f32` result
    /// (config name `bilinear`; see `resize.rs`).
    Bilinear,
}

/// Order of the colour channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
}

/// Memory layout of one image: channels last or first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[height, width, channels]` (Keras, TensorFlow).
    Nhwc,
    /// `[channels, height, width]` (PyTorch).
    Nchw,
}

/// Per-channel `x / divisor - offset` of the pixel value `x` (`0..=255`), channels in RGB order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    divisor: [f32; 3],
    offset: [f32; 3],
}

impl Normalisation {
    /// The pixel values as they are, `0.0..=255.0`.
    pub const NONE: Self = Self {
        divisor: [1.0; 3],
        offset: [0.0; 3],
    };

    /// A named form: `x/127.5-1` (Keras' `tf` mode, to `-1..=1`), `x/255` (to `0..=1`) or
    /// `none`.
    pub fn named(name: &str) -> Option<Self> {
        let uniform = |divisor: f32, offset: f32| Self {
            divisor: [divisor; 3],
            offset: [offset; 3],
        };
        match name.replace(' ', "").as_str() {
            "x/127.5-1" => Some(uniform(127.5, 1.0)),
            "x/255" => Some(uniform(255.0, 0.0)),
            "none" => Some(Self::NONE),
            _ => None,
        }
    }

    /// `(x / 255 - mean) / std` per channel (RGB order), as torchvision and Hugging Face image
    /// processors state it; `None` when a `std` is not positive.
    pub fn mean_std(mean: [f32; 3], std: [f32; 3]) -> Option<Self> {
        // NaN is not positive either.
        if !std.iter().all(|s| *s > 0.0 && s.is_finite()) {
            return None;
        }
        Some(Self {
            divisor: [0, 1, 2].map(|c| 255.0 * std[c]),
            offset: [0, 1, 2].map(|c| mean[c] / std[c]),
        })
    }

    fn apply(&self, c: usize, x: f32) -> f32 {
        x / self.divisor[c] - self.offset[c]
    }
}

/// One image as its model's input tensor: [`ImageSpec::tensor_len`] values in the spec's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor(Vec<f32>);

impl ImageTensor {
    /// A tensor from its values (already in the model's layout and normalisation).
    pub fn new(values: Vec<f32>) -> Self {
        Self(values)
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

/// Decodes PNG or JPEG `bytes` (at most `max_pixels` pixels) and prepares the tensor `spec`
/// describes.
pub fn prepare(bytes: &[u8], spec: &ImageSpec, max_pixels: u64) -> Result<ImageTensor, ImageError> {
    let (rgb, width, height) = decode_rgb8(bytes, max_pixels)?;
    Ok(to_tensor(&rgb, width, height, spec))
}

/// The tensor of an RGB8 image of `width` x `height` under `spec`.
pub fn to_tensor(rgb: &[u8], width: usize, height: usize, spec: &ImageSpec) -> ImageTensor {
    let mut values = match spec.resize {
        Resize::Bilinear => resize_rgb8(rgb, width, height, spec.width, spec.height),
    };
    let norm = &spec.normalisation;
    match spec.layout {
        Layout::Nhwc => {
            // In place: the resized pixels are interleaved RGB already.
            for px in values.chunks_exact_mut(3) {
                let [r, g, b] = [0, 1, 2].map(|c| norm.apply(c, px[c]));
                let ordered = match spec.channels {
                    ChannelOrder::Rgb => [r, g, b],
                    ChannelOrder::Bgr => [b, g, r],
                };
                px.copy_from_slice(&ordered);
            }
        }
        Layout::Nchw => {
            let plane = spec.width * spec.height;
            let mut planes = vec![0.0_f32; plane * 3];
            for (i, px) in values.chunks_exact(3).enumerate() {
                for (c, x) in px.iter().enumerate() {
                    let at = match spec.channels {
                        ChannelOrder::Rgb => c,
                        ChannelOrder::Bgr => 2 - c,
                    };
                    planes[at * plane + i] = norm.apply(c, *x);
                }
            }
            values = planes;
        }
    }
    debug_assert_eq!(values.len(), spec.tensor_len());
    ImageTensor(values)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(layout: Layout, channels: ChannelOrder) -> ImageSpec {
        ImageSpec {
            height: 2,
            width: 3,
            resize: Resize::Bilinear,
            channels,
            normalisation: Normalisation::named("x/127.5-1").unwrap(),
            layout,
        }
    }

    #[test]
    fn normalisations() {
        let keras = Normalisation::named("x / 127.5 - 1").unwrap();
        assert_eq!(
            [0.0, 127.5, 255.0].map(|x| keras.apply(0, x)),
            [-1.0, 0.0, 1.0]
        );
        assert_eq!(Normalisation::named("x/255").unwrap().apply(2, 51.0), 0.2);
        assert_eq!(Normalisation::named("none").unwrap().apply(1, 7.0), 7.0);
        assert!(Normalisation::named("x/2").is_none());
        let imagenet =
            Normalisation::mean_std([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).unwrap();
        let want = (200.0 / 255.0 - 0.456) / 0.224;
        assert!((imagenet.apply(1, 200.0) - want).abs() < 1e-6);
        assert!(Normalisation::mean_std([0.0; 3], [1.0, 0.0, 1.0]).is_none());
    }

    #[test]
    fn layouts_and_channel_orders() {
        // A 3x2 image (the spec's size: no resizing), pixel i = (i, 10 + i, 20 + i).
        let rgb: Vec<u8> = (0..6u8).flat_map(|i| [i, 10 + i, 20 + i]).collect();
        let n = |x: u8| f32::from(x) / 127.5 - 1.0;
        let nhwc = to_tensor(&rgb, 3, 2, &spec(Layout::Nhwc, ChannelOrder::Rgb));
        assert_eq!(
            nhwc.as_slice(),
            rgb.iter().map(|&x| n(x)).collect::<Vec<_>>()
        );
        let nchw = to_tensor(&rgb, 3, 2, &spec(Layout::Nchw, ChannelOrder::Rgb));
        let planes: Vec<f32> = (0..3)
            .flat_map(|c| (0..6u8).map(move |i| n(10 * c + i)))
            .collect();
        assert_eq!(nchw.as_slice(), planes);
        let bgr = to_tensor(&rgb, 3, 2, &spec(Layout::Nhwc, ChannelOrder::Bgr));
        assert_eq!(&bgr.as_slice()[..3], [n(20), n(10), n(0)]);
    }
}
