#!/usr/bin/env python3
"""CPU cost per text of text-encoder variants, as the encoder runs them (ONNX Runtime, one intra-op
and one inter-op thread, batches of 64 padded to their longest, mean pooling + L2 norm).

Rounds are interleaved (variant A, variant B, A, B, ...; the order alternates each round) so that
other load on the machine hits every variant alike; medians are reported. Two orders of the texts:
`random` (batches mix lengths: padding to the longest) and `sorted` (by token length first).

Usage (models venv):
  venv/bin/python models/tools/bench_text.py CACHE/models/minilm CACHE/models/minilm-int8 [--texts 512 --rounds 5]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from check import embed_text, gen_sentences  # noqa: E402


def load(vdir):
    cfg = json.load(open(os.path.join(vdir, "config.json")))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(os.path.join(vdir, cfg["model"]), opts, providers=["CPUExecutionProvider"])
    return sess, Tokenizer.from_file(os.path.join(vdir, cfg["tokenizer"]))


def one_pass(sess, tok, batches):
    c0, w0 = time.process_time(), time.perf_counter()
    for b in batches:
        embed_text(sess, tok, b)
    return time.process_time() - c0, time.perf_counter() - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="variant directories (with config.json)")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=99)
    args = ap.parse_args()
    texts = gen_sentences(args.texts, args.seed)
    models = [(os.path.basename(os.path.normpath(v)), *load(v)) for v in args.variants]
    tok0 = models[0][2]
    lengths = [sum(e.attention_mask) for e in tok0.encode_batch(texts)]
    by_len = [t for _, t in sorted(zip(lengths, texts), key=lambda p: p[0])]
    orders = {"random": [texts[i:i + 64] for i in range(0, len(texts), 64)],
              "sorted": [by_len[i:i + 64] for i in range(0, len(by_len), 64)]}
    print(f"onnxruntime {ort.__version__}; {len(texts)} texts of 4-40 words ({np.mean(lengths):.1f} tokens "
          f"on average, {min(lengths)}-{max(lengths)}), batches of 64, 1 thread, {args.rounds} rounds")
    for name, sess, tok in models:  # warm-up, not counted
        one_pass(sess, tok, orders["random"][:2])
    cpu = {(m[0], o): [] for m in models for o in orders}
    wall = {(m[0], o): [] for m in models for o in orders}
    for r in range(args.rounds):
        seq = models if r % 2 == 0 else models[::-1]
        for o, batches in orders.items():
            for name, sess, tok in seq:
                c, w = one_pass(sess, tok, batches)
                cpu[name, o].append(c * 1e3 / len(texts))
                wall[name, o].append(w * 1e3 / len(texts))
    base = models[0][0]
    for o in orders:
        for name, _, _ in models:
            c = statistics.median(cpu[name, o])
            print(f"{o:6s} {name:20s} CPU {c:6.2f} ms/text (wall {statistics.median(wall[name, o]):6.2f}; "
                  f"rounds {' '.join(f'{x:.2f}' for x in cpu[name, o])})"
                  + ("" if name == base else f"  x{statistics.median(cpu[base, o]) / c:.2f} vs {base}"))
    for v in args.variants:
        cfg = json.load(open(os.path.join(v, "config.json")))
        print(f"{v}: {os.path.getsize(os.path.join(v, cfg['model'])) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
