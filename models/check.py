#!/usr/bin/env python3
"""Check the prepared ONNX models against the committed references in models/testdata/.

Runs in the prepare venv (numpy, onnxruntime, tokenizers, Pillow). Prints the minimum cosine
similarity per model and exits non-zero if any is below the tolerance (default 0.9999).

Usage: check.py [CACHE_MODELS_DIR] [--tol 0.9999]
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

from bilinear import bilinear_no_aa

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "testdata")


def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def embed_text(sess, tok, sentences):
    encs = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in encs], np.int64)
    mask = np.array([e.attention_mask for e in encs], np.int64)
    types = np.array([e.type_ids for e in encs], np.int64)
    (hidden,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None), ids.shape


def check_text(mdir):
    ref = json.load(open(os.path.join(TESTDATA, "minilm_reference.json"), encoding="utf-8"))
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    tok = Tokenizer.from_file(os.path.join(mdir, cfg["tokenizer"]))
    sess = session(os.path.join(mdir, cfg["model"]))
    sents, refs = ref["sentences"], ref["embeddings"]
    if "input_ids" in ref:  # the tokenizer must give sentence-transformers' ids exactly
        ours = [[i for i, m in zip(e.ids, e.attention_mask) if m] for e in tok.encode_batch(sents)]
        bad = [s for s, a, b in zip(sents, ours, ref["input_ids"]) if a != b]
        if bad:
            print(f"FAIL: token ids differ from sentence-transformers' for {bad!r}", file=sys.stderr)
            return -1.0
        print(f"text: token ids identical to sentence-transformers' for all {len(sents)} sentences")
    batched, shape = embed_text(sess, tok, sents)
    print(f"text: batch of {len(sents)} padded to {shape[1]} tokens")
    cosines = []
    for i, s in enumerate(sents):
        single, _ = embed_text(sess, tok, [s])  # no padding at all
        c_b, c_s = cos(batched[i], refs[i]), cos(single[0], refs[i])
        cosines += [c_b, c_s]
        print(f"  1-cos batched {1 - c_b:+.1e}  single {1 - c_s:+.1e}  {s[:50]!r}")
    return min(cosines)


def check_image(mdir):
    ref = json.load(open(os.path.join(TESTDATA, "mobilenetv2_reference.json")))
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    sess = session(os.path.join(mdir, cfg["model"]))
    size = cfg["size"]
    cosines, batch, want = [], [], []
    for e in ref["images"]:
        img = Image.open(os.path.join(TESTDATA, e["file"])).convert("RGB")
        raw = np.asarray(img, np.uint8)
        if hashlib.sha256(raw.tobytes()).hexdigest() != e["decoded_rgb_sha256"]:
            print(f"  warning: {e['file']} decodes to different pixels here than for the reference")
        if e["resize"] == "none":
            px = raw.astype(np.float64)
        elif e["resize"] == "pil_bilinear":
            px = np.asarray(img.resize((size, size), Image.BILINEAR), np.float64)
        elif e["resize"] == "bilinear_half_pixel_no_antialias_float":
            px = bilinear_no_aa(raw, size, size)
        else:
            raise SystemExit("unknown resize " + e["resize"])
        x = (px / 127.5 - 1.0).astype(np.float32)  # preprocessing is not in the graph
        batch.append(x)
        want.append(e["embedding"])
        (y,) = sess.run([cfg["output"]["name"]], {cfg["input"]["name"]: x[None]})
        c = cos(y[0], e["embedding"])
        cosines.append(c)
        print(f"  1-cos {1 - c:+.1e}  max|diff| {np.abs(y[0] - np.array(e['embedding'])).max():.2e}  {e['file']} ({e['resize']})")
    (yb,) = sess.run([cfg["output"]["name"]], {cfg["input"]["name"]: np.stack(batch)})
    cb = [cos(a, b) for a, b in zip(yb, want)]
    print(f"  batched (N={len(batch)}): min cos {min(cb):.9f}")
    return min(cosines + cb)


def main():
    ap = argparse.ArgumentParser()
    default = os.path.join(os.environ.get("FLOWMESH_CACHE", os.path.expanduser("~/.cache/flowmesh")), "models")
    ap.add_argument("cache", nargs="?", default=default)
    ap.add_argument("--tol", type=float, default=0.9999)
    args = ap.parse_args()
    print("onnxruntime", ort.__version__)
    t = check_text(os.path.join(args.cache, "minilm"))
    print("image:")
    i = check_image(os.path.join(args.cache, "mobilenetv2"))
    print(f"min cosine: text {t:.12f} (1-cos {1 - t:.1e}), image {i:.12f} (1-cos {1 - i:.1e}), tolerance {args.tol}")
    if min(t, i) < args.tol:
        print("FAIL: below tolerance", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
