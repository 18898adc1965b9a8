//! Image bytes from what callers send: base64 (a document's `blob`) or a base64 `data:` URI (its
//! `uri`; other schemes are refused, the encoder fetches nothing), then PNG or JPEG to RGB pixels
//! with the `image` crate. Decoded images are bounded ([`ImageLimits::max_pixels`], checked from
//! the file's header before decoding) so that a small compressed file cannot make the service
//! allocate gigabytes (a decompression bomb).

use std::io::Cursor;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use image::{ImageDecoder, ImageFormat, ImageReader, Limits};

/// Bounds on what the encoder decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Most pixels (width x height) of one decoded image.
    pub max_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 16 * 1024 * 1024,
            max_images: 256,
        }
    }
}

/// Why an image could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The base64 text is malformed.
    #[error("the image is not valid base64 ({0})")]
    Base64(String),
    /// A URI of another scheme than `data:`.
    #[error("uri {0:?} is not a data: URI; the encoder does not fetch remote URIs (send the image's bytes as blob, or as a base64 data: URI)")]
    Remote(String),
    /// A `data:` URI that is not base64 or not an image.
    #[error("the data: URI is not a base64 image (expected data:image/png;base64,... or data:image/jpeg;base64,...)")]
    DataUri,
    /// The bytes are not a PNG or JPEG file.
    #[error("the image is {0}; the encoder decodes PNG and JPEG")]
    Format(String),
    /// The image has more pixels than allowed.
    #[error("the image is {width}x{height} pixels; the encoder decodes images of at most {max} pixels, width x height (--max-image-pixels, FLOWMESH_ENCODER_MAX_IMAGE_PIXELS)")]
    TooLarge {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The limit.
        max: u64,
    },
    /// The decoder failed (a truncated or corrupt file).
    #[error("cannot decode the {format} image: {message}")]
    Decode {
        /// PNG or JPEG.
        format: &'static str,
        /// The decoder's message.
        message: String,
    },
}

/// Standard base64, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bytes of a document's `blob` (base64 image bytes).
pub fn blob_bytes(blob: &str) -> Result<Vec<u8>, ImageError> {
    // Line breaks are common in base64 produced by tools (`base64` wraps at 76 columns).
    let decoded = if blob.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: String = blob.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        BASE64.decode(compact)
    } else {
        BASE64.decode(blob)
    };
    decoded.map_err(|e| ImageError::Base64(e.to_string()))
}

/// The bytes of an image given as a `data:` URI (`data:[image/...];base64,<data>`); any other
/// scheme is refused, since the encoder fetches nothing.
pub fn data_uri_bytes(uri: &str) -> Result<Vec<u8>, ImageError> {
    let Some(rest) = uri
        .get(..5)
        .filter(|scheme| scheme.eq_ignore_ascii_case("data:"))
        .map(|_| &uri[5..])
    else {
        let shown: String = uri.chars().take(80).collect();
        return Err(ImageError::Remote(shown));
    };
    let (meta, data) = rest.split_once(',').ok_or(ImageError::DataUri)?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or_default().trim();
    let base64 = params.any(|p| p.trim().eq_ignore_ascii_case("base64"));
    let image = media_type.is_empty()
        || media_type
            .get(..6)
            .is_some_and(|t| t.eq_ignore_ascii_case("image/"));
    if !base64 || !image {
        return Err(ImageError::DataUri);
    }
    blob_bytes(data)
}

/// A base64 image or a `data:` URI, as `POST /encode` takes them.
pub fn image_bytes(source: &str) -> Result<Vec<u8>, ImageError> {
    if source
        .get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("data:"))
    {
        data_uri_bytes(source)
    } else if source.contains("://") {
        let shown: String = source.chars().take(80).collect();
        Err(ImageError::Remote(shown))
    } else {
        blob_bytes(source)
    }
}

/// Decodes PNG or JPEG `bytes` to interleaved RGB8: the pixels, width and height.
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<(Vec<u8>, usize, usize), ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Format(format!("unreadable ({e})")))?;
    let format = match reader.format() {
        Some(ImageFormat::Png) => "PNG",
        Some(ImageFormat::Jpeg) => "JPEG",
        Some(other) => return Err(ImageError::Format(format!("{other:?}"))),
        None => return Err(ImageError::Format("not a PNG or JPEG file".to_owned())),
    };
    let failed = |e: image::ImageError| ImageError::Decode {
        format,
        message: e.to_string(),
    };
    let mut decoder = reader.into_decoder().map_err(failed)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max: max_pixels,
        });
    }
    // The header's size is checked above; the allocation limit also bounds what the decoder may
    // allocate besides the image (RGBA16 at the most, and as much again for its work).
    let mut limits = Limits::default();
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    decoder.set_limits(limits).map_err(failed)?;
    let image = image::DynamicImage::from_decoder(decoder).map_err(failed)?;
    if image.width() == 0 || image.height() == 0 {
        return Err(ImageError::Decode {
            format,
            message: "the image has no pixels".to_owned(),
        });
    }
    // Alpha is dropped (not composited), as Pillow's `convert("RGB")` does.
    let rgb = image.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok((rgb.into_raw(), w, h))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn png(width: u32, height: u32, rgb: Vec<u8>) -> Vec<u8> {
        let img = image::RgbImage::from_raw(width, height, rgb).unwrap();
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn blobs_and_data_uris() {
        let bytes = png(2, 1, vec![1, 2, 3, 4, 5, 6]);
        let b64 = BASE64.encode(&bytes);
        assert_eq!(blob_bytes(&b64).unwrap(), bytes);
        assert_eq!(image_bytes(&b64).unwrap(), bytes);
        let wrapped: String = b64
            .as_bytes()
            .chunks(20)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(
            blob_bytes(&wrapped).unwrap(),
            bytes,
            "line breaks are skipped"
        );
        for uri in [
            format!("data:image/png;base64,{b64}"),
            format!("DATA:;base64,{b64}"),
            format!("data:image/jpeg;name=x.png;base64,{b64}"),
        ] {
            assert_eq!(data_uri_bytes(&uri).unwrap(), bytes, "{uri}");
            assert_eq!(image_bytes(&uri).unwrap(), bytes, "{uri}");
        }
        assert!(matches!(
            blob_bytes("not base64!"),
            Err(ImageError::Base64(_))
        ));
        let remote = [
            "https://example.com/cat.png",
            "s3://bucket/cat.png",
            "cat.png",
            "",
        ];
        let not_base64 = [
            "data:image/png,rawbytes",
            "data:text/plain;base64,aGk=",
            "data:nocomma",
        ];
        for (uris, remote) in [(&remote[..], true), (&not_base64[..], false)] {
            for uri in uris {
                let e = data_uri_bytes(uri).unwrap_err();
                if remote {
                    assert!(matches!(e, ImageError::Remote(_)), "{uri}: {e}");
                    assert!(e.to_string().contains("does not fetch remote URIs"), "{e}");
                } else {
                    assert_eq!(e, ImageError::DataUri, "{uri}");
                }
            }
        }
        assert!(matches!(
            image_bytes("http://x/y.png"),
            Err(ImageError::Remote(_))
        ));
    }

    #[test]
    fn decoding_checks_format_size_and_content() {
        let bytes = png(3, 2, (0..18).collect());
        let (rgb, w, h) = decode_rgb8(&bytes, 100).unwrap();
        assert_eq!((w, h, rgb), (3, 2, (0..18).collect::<Vec<u8>>()));
        let e = decode_rgb8(&bytes, 5).unwrap_err();
        assert_eq!(
            e,
            ImageError::TooLarge {
                width: 3,
                height: 2,
                max: 5
            }
        );
        assert!(e.to_string().contains("3x2 pixels"), "{e}");
        let e = decode_rgb8(b"GIF89a\x01\x00\x01\x00", 100).unwrap_err();
        assert!(e.to_string().contains("Gif"), "{e}");
        let e = decode_rgb8(b"hello", 100).unwrap_err();
        assert!(e.to_string().contains("not a PNG or JPEG"), "{e}");
        let e = decode_rgb8(&bytes[..bytes.len() - 20], 100).unwrap_err();
        assert!(matches!(e, ImageError::Decode { format: "PNG", .. }), "{e}");
    }

    /// A PNG chunk: length, type, data, CRC-32 of type and data.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = 0xffff_ffff_u32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let len = u32::try_from(data.len()).unwrap();
        [&len.to_be_bytes()[..], kind, data, &(!crc).to_be_bytes()].concat()
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        // The header of a 20000x20000 grey PNG (400 megapixels) in 60 bytes of file.
        let mut ihdr = Vec::new();
        ihdr.extend(20_000_u32.to_be_bytes());
        ihdr.extend(20_000_u32.to_be_bytes());
        ihdr.extend([8, 0, 0, 0, 0]);
        let bytes = [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
            &chunk(b"IEND", &[]),
        ]
        .concat();
        let e = decode_rgb8(&bytes, 16 << 20).unwrap_err();
        assert!(e.to_string().contains("20000x20000 pixels"), "{e}");
        // The chunk helper is right: a real file re-assembled from it decodes.
        let small = png(1, 1, vec![1, 2, 3]);
        assert!(decode_rgb8(&small, 1).is_ok());
    }
}
