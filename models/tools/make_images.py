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


def u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


os.makedirs(out, exist_ok=True)
Image.fromarray(u8(gradient(224, 224)), "RGB").save(os.path.join(out, "img_gradient_224.png"))
Image.fromarray(u8(shapes(224, 224)), "RGB").save(os.path.join(out, "img_shapes_224.jpg"), quality=90)
# 300 wide x 200 high: needs a resize to 224x224
Image.fromarray(u8(checker_noise(200, 300)), "RGB").save(os.path.join(out, "img_checker_300x200.png"))
print("wrote images to", out)
