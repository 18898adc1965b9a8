//! Bilinear resizing of RGB images to a model's input size.
//!
//! The image is stretched to the output size (no crop; the aspect ratio is not kept). Each output
//! coordinate `d` reads the source at `s = (d + 0.5) * in / out - 0.5` (half-pixel centres),
//! clamped to `0 ..= in - 1`, from the pixels `lo = floor(s)` and `hi = min(lo + 1, in - 1)` with
//! weights `1 - (s - lo)` and `s - lo`, in both directions. There is no antialiasing and the result
//! stays in `f32` (no rounding back to 8 bits). This is TensorFlow's
//! `tf.image.resize(..., "bilinear", antialias=False)` and OpenCV's `INTER_LINEAR`, the variant
//! `bilinear_half_pixel_no_antialias_float` of `models/testdata/mobilenetv2_reference.json`.
//! It is not Pillow's `Image.BILINEAR`, which antialiases when it shrinks.

/// Where one output coordinate reads from: two source indices and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lo: usize,
    hi: usize,
    /// Weight of `hi`; `lo` weighs `1 - frac`.
    frac: f32,
}

/// The taps of `out` output coordinates over `input` source ones (both at least 1).
fn taps(out: usize, input: usize) -> Vec<Tap> {
    debug_assert!(out > 0 && input > 0);
    // Coordinates in f64 (they are computed once per row or column); interpolation in f32.
    let scale = input as f64 / out as f64;
    let last = input - 1;
    (0..out)
        .map(|d| {
            let s = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            // `s >= 0`, so the cast floors; past the last pixel both taps are the last pixel.
            let lo = (s.floor() as usize).min(last);
            let hi = (lo + 1).min(last);
            let frac = if hi == lo {
                0.0
            } else {
                (s - lo as f64) as f32
            };
            Tap { lo, hi, frac }
        })
        .collect()
}

/// `src`, interleaved RGB of `width` x `height` (both at least 1), resized to `out_width` x
/// `out_height`: interleaved RGB `f32` values in `0.0 ..= 255.0`, row by row.
pub(crate) fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<f32> {
    debug_assert_eq!(src.len(), width * height * 3, "interleaved RGB");
    if (width, height) == (out_width, out_height) {
        // Every tap is `(d, d + 1, 0.0)`: the image itself (see the `identity` test).
        return src.iter().map(|&v| f32::from(v)).collect();
    }
    let xs = taps(out_width, width);
    let ys = taps(out_height, height);
    let row = width * 3;
    let mut out = Vec::with_capacity(out_width * out_height * 3);
    for y in &ys {
        let top = &src[y.lo * row..(y.lo + 1) * row];
        let bottom = &src[y.hi * row..(y.hi + 1) * row];
        let fy = y.frac;
        for x in &xs {
            for c in 0..3 {
                let at = |line: &[u8], i: usize| f32::from(line[i * 3 + c]);
                let upper = lerp(at(top, x.lo), at(top, x.hi), x.frac);
                let lower = lerp(at(bottom, x.lo), at(bottom, x.hi), x.frac);
                out.push(lerp(upper, lower, fy));
            }
        }
    }
    out
}

/// `a * (1 - t) + b * t`, written so that equal ends give exactly that value (a constant image
/// stays constant to the bit) and `t = 0` gives exactly `a`.
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RGB image whose three channels all hold `gray`.
    fn gray(values: &[u8]) -> Vec<u8> {
        values.iter().flat_map(|&v| [v, v, v]).collect()
    }

    fn channel(rgb: &[f32], c: usize) -> Vec<f32> {
        rgb.iter().skip(c).step_by(3).copied().collect()
    }

    #[test]
    fn identity_at_the_same_size() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let out = resize_rgb8(&src, 5, 4, 5, 4);
        assert_eq!(out, src.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
        // The formula itself gives the identity too, which the shortcut relies on.
        for n in [1, 2, 7, 224] {
            for (d, t) in taps(n, n).into_iter().enumerate() {
                assert_eq!(
                    t,
                    Tap {
                        lo: d,
                        hi: (d + 1).min(n - 1),
                        frac: 0.0
                    }
                );
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant() {
        let src: Vec<u8> = [10u8, 200, 37].repeat(300 * 200);
        for (w, h) in [(224, 224), (7, 3), (1, 1), (600, 401)] {
            let out = resize_rgb8(&src, 300, 200, w, h);
            assert_eq!(out.len(), w * h * 3);
            for px in out.chunks_exact(3) {
                assert_eq!(px, [10.0, 200.0, 37.0], "{w}x{h}");
            }
        }
    }

    #[test]
    fn two_by_two_to_three_by_three_by_hand() {
        // in/out = 2/3: d = 0 reads s = max(0.5 * 2/3 - 0.5, 0) = 0; d = 1 reads 0.5 (halfway);
        // d = 2 reads 1.1667, past the last pixel: the last pixel.
        //   0 30        0 15 30
        //  60 90   ->  30 45 60
        //              60 75 90
        let src = gray(&[0, 30, 60, 90]);
        let out = resize_rgb8(&src, 2, 2, 3, 3);
        let want = [0.0, 15.0, 30.0, 30.0, 45.0, 60.0, 60.0, 75.0, 90.0];
        for c in 0..3 {
            assert_eq!(channel(&out, c), want, "channel {c}");
        }
    }

    #[test]
    fn downscaling_reads_between_pixels_without_antialiasing() {
        // 4 -> 2 columns: s = (d + 0.5) * 2 - 0.5 = 0.5 and 2.5, the mean of pixel pairs
        // (0, 1) and (2, 3); a one-row image keeps its row.
        let src = gray(&[0, 100, 200, 250]);
        let out = resize_rgb8(&src, 4, 1, 2, 1);
        assert_eq!(channel(&out, 0), [50.0, 225.0]);
        // 3 -> 2: s = 0.25 and 1.75: three quarters of one pixel and a quarter of the next.
        let src = gray(&[0, 40, 80]);
        let out = resize_rgb8(&src, 3, 1, 2, 1);
        assert_eq!(channel(&out, 1), [10.0, 70.0]);
    }

    #[test]
    fn channels_stay_apart() {
        // Red rises left to right, green top to bottom, blue is constant.
        let mut src = Vec::new();
        for y in 0..2u8 {
            for x in 0..2u8 {
                src.extend([x * 100, y * 50, 9]);
            }
        }
        let out = resize_rgb8(&src, 2, 2, 3, 3);
        assert_eq!(channel(&out, 0), [0.0, 50.0, 100.0].repeat(3));
        assert_eq!(
            channel(&out, 1),
            [0.0, 0.0, 0.0, 25.0, 25.0, 25.0, 50.0, 50.0, 50.0]
        );
        assert_eq!(channel(&out, 2), [9.0; 9]);
    }
}
