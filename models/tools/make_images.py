#!/usr/bin/env python3
"""Generate flowmesh's deterministic test images (numpy + Pillow). Run once; outputs are committed."""
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "testdata")


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 255 * y / (h - 1)
    b = 127.5 + 127.5 * np.sin(2 * np.pi * (x + y) / 64)
    return np.stack([r, g, b], -1)


def shapes(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3)) + [30, 60, 90]
    disc = (x - 0.35 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.22 * min(h, w)) ** 2
    img[disc] = [230, 40, 40]
    rect = (x > 0.55 * w) & (x < 0.9 * w) & (y > 0.5 * h) & (y < 0.85 * h)
    img[rect] = [40, 200, 80]
    tri = (y > 0.1 * h) & (x - 0.6 * w > -(y - 0.1 * h) * 0.5) & (x - 0.6 * w < (y - 0.1 * h) * 0.5) & (y < 0.45 * h)
    img[tri] = [250, 220, 30]
    stripes = ((x + 2 * y) // 12) % 2 == 0
    img[stripes & ~(disc | rect | tri)] += 50
    return img


def checker_noise(h, w):
    rng = np.random.default_rng(20261121)
    y, x = np.mgrid[0:h, 0:w]
    base = np.where(((x // 25) + (y // 25)) % 2 == 0, 200.0, 50.0)
    img = np.stack([base, base[::-1, :] * 0.8 + 20, 255 - base], -1)
    img += rng.normal(0, 18, size=img.shape)
    return img


def blur(a, sigma):
    """Separable Gaussian blur (numpy only, edge replicated): deterministic across Pillow versions."""
    r = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if i == axis else (0, 0) for i in range(a.ndim)], mode="edge")
        a = sum(k[i] * np.take(p, np.arange(i, i + a.shape[axis]), axis=axis) for i in range(len(k)))
    return a


def photo(h, w):
    """Photo-like: a sky-to-ground gradient, soft (blurred) objects with shading, a vignette and mild
    smoothed grain; no flat areas and no hard edges, unlike shapes()."""
    rng = np.random.default_rng(20261122)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / (w - 1), y / (h - 1)
    sky = np.stack([110 + 80 * v, 150 + 60 * v, 225 - 30 * v], -1)
    ground = np.stack([95 - 30 * v, 120 - 25 * v, 60 - 20 * v], -1)
    horizon = 0.55 + 0.04 * np.sin(2 * np.pi * u * 1.3 + 0.4)
    t = 1 / (1 + np.exp(-(v - horizon) * 40))  # soft horizon
    img = sky * (1 - t)[..., None] + ground * t[..., None]
    # a sun-like glow, a shaded ball, a soft tree-like blob and a warm rectangle, all blurred
    glow = np.exp(-((u - 0.78) ** 2 + (v - 0.2) ** 2) / 0.01)
    img += glow[..., None] * [90, 70, 20]
    d = np.sqrt(((x - 0.3 * w) / (0.14 * w)) ** 2 + ((y - 0.62 * h) / (0.14 * w)) ** 2)
    shade = np.clip(1.1 - 0.6 * np.hypot((x - 0.26 * w) / (0.14 * w), (y - 0.56 * h) / (0.14 * w)), 0.3, 1.1)
    ball = blur((d < 1).astype(np.float64), 2.0)
    img = img * (1 - ball[..., None]) + (shade[..., None] * [200, 70, 50]) * ball[..., None]
    tree = blur((((x - 0.62 * w) / (0.12 * w)) ** 2 + ((y - 0.42 * h) / (0.2 * h)) ** 2 < 1).astype(np.float64), 4.0)
    img = img * (1 - 0.8 * tree[..., None]) + 0.8 * tree[..., None] * [40, 90, 45]
    box = blur(((x > 0.72 * w) & (x < 0.92 * w) & (y > 0.6 * h) & (y < 0.86 * h)).astype(np.float64), 1.5)
    img = img * (1 - box[..., None]) + box[..., None] * np.stack([170 + 40 * u, 140 + 0 * u, 90 + 30 * v], -1)
    # mild texture: smoothed noise, stronger on the ground and the tree than in the sky
    grain = blur(rng.normal(0, 1, (h, w)), 1.2)
    grain = grain / grain.std()
    img += (2.5 + 6 * np.maximum(t, tree))[..., None] * grain[..., None]
    img += 1.5 * blur(rng.normal(0, 1, (h, w, 3)), 0.7)
    vignette = 1 - 0.25 * ((u - 0.5) ** 2 + (v - 0.5) ** 2) / 0.5
    return img * vignette[..., None]


def u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


os.makedirs(out, exist_ok=True)
Image.fromarray(u8(gradient(224, 224)), "RGB").save(os.path.join(out, "img_gradient_224.png"))
Image.fromarray(u8(shapes(224, 224)), "RGB").save(os.path.join(out, "img_shapes_224.jpg"), quality=90)
# 300 wide x 200 high: needs a resize to 224x224
Image.fromarray(u8(checker_noise(200, 300)), "RGB").save(os.path.join(out, "img_checker_300x200.png"))
# photo-like JPEG, 320 wide x 240 high (resized to 224x224 by the encoder); added after the three above,
# which stay byte-identical (each image has its own random generator)
Image.fromarray(u8(photo(240, 320)), "RGB").save(os.path.join(out, "img_photo_320x240.jpg"), quality=90)
print("wrote images to", out)
