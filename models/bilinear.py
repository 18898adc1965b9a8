"""The reference resize of MobileNetV2's preprocessing, in numpy only: shared by check.py and
tools/keras_reference.py, so that the check and the references resize the same way."""
import numpy as np


def bilinear_no_aa(a, oh=224, ow=224):
    """Bilinear, half-pixel centres, no antialiasing, edge clamped, float result (no rounding).
    Same as tf.image.resize(method='bilinear', antialias=False) and OpenCV INTER_LINEAR."""
    h, w = a.shape[:2]

    def coords(o, i):
        c = np.clip((np.arange(o) + 0.5) * (i / o) - 0.5, 0, None)
        lo = np.minimum(np.floor(c).astype(int), i - 1)
        return lo, np.minimum(lo + 1, i - 1), c - lo

    y0, y1, fy = coords(oh, h)
    x0, x1, fx = coords(ow, w)
    a = a.astype(np.float64)
    top = a[y0][:, x0] * (1 - fx)[None, :, None] + a[y0][:, x1] * fx[None, :, None]
    bot = a[y1][:, x0] * (1 - fx)[None, :, None] + a[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
