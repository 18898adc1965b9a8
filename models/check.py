#!/usr/bin/env python3
"""Check the prepared ONNX models against the committed references in models/testdata/.

Runs in the prepare venv (numpy, onnxruntime, tokenizers, Pillow). Prints the minimum cosine
similarity per model and exits non-zero if any is below the tolerance (default 0.9999).

Also holds the quality gate of the optimised text variant (``gate_text``; ``--gate DIR``): see
models/README.md, "minilm-int8".

Usage: check.py [CACHE_MODELS_DIR] [--tol 0.9999]
       check.py [CACHE_MODELS_DIR] --gate VARIANT_DIR [--report FILE] [--threads 2]
"""
import argparse
import hashlib
import json
import os
import sys
import time

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


def session(path, threads=2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
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


# --------------------------------------------------------------------------------------------
# The quality gate of an optimised text variant (minilm-int8/): does it rank like fp32?

GATE_MIN_COSINE = 0.99
GATE_MIN_RECALL = 0.99
GATE_CORPUS = 10_000
GATE_QUERIES = 200
GATE_SEED = 20240516

# Word lists of the generated corpus: topic words make sentences on the same subject close to one
# another (many near neighbours, the hard case for top-10 search), general words and function words
# vary the rest. Lengths are uniform in 4..40 words.
TOPICS = [
    "river lake boat fishing water bridge shore current flood canoe harbour stream rain dam island".split(),
    "guitar piano drum song concert band melody orchestra violin singer album chorus rhythm stage jazz".split(),
    "server database network cluster query index shard latency cache kernel thread compiler memory disk".split(),
    "bread cheese soup kitchen recipe oven garlic pepper tomato dinner breakfast pasta sauce butter salad".split(),
    "football goal player match referee stadium team league coach season tournament score ball pitch fans".split(),
    "doctor hospital patient medicine nurse fever surgery vaccine clinic pain treatment heart blood virus".split(),
    "forest tree mountain trail wolf bird deer valley snow cabin moss fox path hill meadow".split(),
    "market price bank loan stock inflation budget tax salary investor profit debt currency trade economy".split(),
    "train station airport flight ticket passenger bus road traffic car bicycle journey map hotel border".split(),
    "school teacher student exam lesson book library homework university class essay grammar science".split(),
    "court judge lawyer law crime police trial witness prison contract election vote parliament minister".split(),
    "star planet telescope moon orbit rocket galaxy astronaut comet solar gravity satellite space".split(),
    "cat dog puppy kitten horse farm cow sheep chicken barn pet leash collar veterinarian".split(),
    "painting museum artist sculpture gallery colour canvas portrait poem novel theatre film actor".split(),
    "phone laptop screen battery keyboard camera software update app password email browser charger".split(),
    "storm wind cloud thunder weather summer winter heat temperature fog sunshine forecast season".split(),
]
GENERAL = ("big small old new red green quiet loud fast slow bright dark happy sad strange simple "
           "good bad early late cold warm heavy light long short cheap expensive "
           "run walk see find make take give build open close watch buy sell carry read write "
           "move stop start break fix clean cook learn teach hear play wait leave").split()
FUNCTION = ("the a an of to in on at by with from for and or but after before near under over "
            "because while when that this these those it they we you she he is was are were "
            "has had will can could should very often never always again still only also").split()


def gen_sentences(n, seed=GATE_SEED):
    """n deterministic sentences of 4..40 words (numpy's legacy RandomState: its stream is fixed)."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        length = rs.randint(4, 41)
        main = TOPICS[rs.randint(len(TOPICS))]
        other = TOPICS[rs.randint(len(TOPICS))] if rs.rand() < 0.3 else main
        words = []
        for _ in range(length):
            r = rs.rand()
            if r < 0.35:
                words.append(main[rs.randint(len(main))])
            elif r < 0.45:
                words.append(other[rs.randint(len(other))])
            elif r < 0.65:
                words.append(GENERAL[rs.randint(len(GENERAL))])
            elif r < 0.97:
                words.append(FUNCTION[rs.randint(len(FUNCTION))])
            else:
                words.append(str(rs.randint(1, 2000)))
        s = " ".join(words)
        out.append(s[0].upper() + s[1:] + ("?" if rs.rand() < 0.1 else "."))
    return out


def embed_many(sess, tok, sentences, batch=64):
    """Embeddings of many sentences, in the input order: batched by token length, so that batches
    are padded little (what the encoder's length groups do too)."""
    encs = tok.encode_batch(sentences)
    lengths = np.array([sum(e.attention_mask) for e in encs])
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(sentences), sess.get_outputs()[0].shape[-1]), np.float32)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        emb, _ = embed_text(sess, tok, [sentences[j] for j in idx])
        out[idx] = emb
    return out


def top_k(corpus, queries, k):
    """Indices of the k corpus rows of highest cosine per query (rows are L2-normalised)."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row) for row in part]


def fp32_corpus(sess, tok, fp32_dir, cfg, corpus, queries, cache_dir):
    """fp32 embeddings of the gate's corpus and queries, kept in cache_dir (if given) under a key
    of the fp32 model, its tokenizer and the sentences, so that a second gate reuses them."""
    if cache_dir:
        h = hashlib.sha256()
        for f in (cfg["model"], cfg["tokenizer"]):
            with open(os.path.join(fp32_dir, f), "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        h.update("\n".join(corpus + ["--"] + queries).encode())
        path = os.path.join(cache_dir, f"fp32-{h.hexdigest()[:16]}.npy")
        if os.path.exists(path):
            both = np.load(path)
            return both[:len(corpus)], both[len(corpus):]
    fc, fq = embed_many(sess, tok, corpus), embed_many(sess, tok, queries)
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(path + ".tmp.npy", np.concatenate([fc, fq]))
        os.replace(path + ".tmp.npy", path)
    return fc, fq


def gate_text(variant_dir, fp32_dir, corpus_size=GATE_CORPUS, queries=GATE_QUERIES, threads=2,
              min_cosine=GATE_MIN_COSINE, min_recall=GATE_MIN_RECALL, cache_dir=None, log=print):
    """Decides whether an optimised text variant may replace fp32.

    (a) Cosine to fp32 on every reference sentence of testdata/minilm_reference.json, in one padded
        batch and one at a time, and to the committed sentence-transformers embeddings (min of all).
    (b) Recall@10 against fp32 exact cosine search: corpus_size generated sentences, `queries` other
        generated sentences; recall@10 = mean over queries of |top10(variant) & top10(fp32)| / 10.
    Both models are given the same tokenizer (fp32's). Returns (passed, numbers).
    """
    ref = json.load(open(os.path.join(TESTDATA, "minilm_reference.json"), encoding="utf-8"))
    fcfg = json.load(open(os.path.join(fp32_dir, "config.json")))
    tok = Tokenizer.from_file(os.path.join(fp32_dir, fcfg["tokenizer"]))
    vmodel = os.path.join(variant_dir, "model.onnx")
    vcfg_path = os.path.join(variant_dir, "config.json")
    if os.path.exists(vcfg_path):
        vmodel = os.path.join(variant_dir, json.load(open(vcfg_path))["model"])
    fsess = session(os.path.join(fp32_dir, fcfg["model"]), threads)
    vsess = session(vmodel, threads)

    sents, refs = ref["sentences"], np.asarray(ref["embeddings"])
    fb, _ = embed_text(fsess, tok, sents)
    vb, _ = embed_text(vsess, tok, sents)
    cos_fp32 = [cos(a, b) for a, b in zip(vb, fb)]
    cos_ref = [cos(a, b) for a, b in zip(vb, refs)]
    for s in sents:
        f1, _ = embed_text(fsess, tok, [s])
        v1, _ = embed_text(vsess, tok, [s])
        cos_fp32.append(cos(v1[0], f1[0]))
    worst = int(np.argmin(cos_fp32[:len(sents)] + cos_fp32[len(sents):]) % len(sents))
    min_cos = min(cos_fp32 + cos_ref)
    log(f"gate: reference sentences: min cosine to fp32 {min(cos_fp32):.5f}, to sentence-transformers "
        f"{min(cos_ref):.5f} (worst {sents[worst][:40]!r})")

    recall = None
    if corpus_size > 0:
        gen = gen_sentences(corpus_size + queries)
        corpus, qs = gen[:corpus_size], gen[corpus_size:]
        t0 = time.perf_counter()
        fc, fq = fp32_corpus(fsess, tok, fp32_dir, fcfg, corpus, qs, cache_dir)
        vc, vq = embed_many(vsess, tok, corpus), embed_many(vsess, tok, qs)
        exact, approx = top_k(fc, fq, 10), top_k(vc, vq, 10)
        recall = float(np.mean([len(a & b) / 10 for a, b in zip(exact, approx)]))
        corpus_cos = np.sum(fc * vc, axis=1)
        log(f"gate: corpus of {corpus_size} generated sentences, {queries} queries: recall@10 {recall:.4f}, "
            f"cosine to fp32 min {corpus_cos.min():.5f} mean {corpus_cos.mean():.5f} "
            f"({time.perf_counter() - t0:.0f} s)")
    # No corpus, no pass: corpus_size=0 is only for showing a failure on the reference sentences.
    passed = min_cos >= min_cosine and recall is not None and recall >= min_recall
    numbers = {"min_cosine": min_cos, "min_cosine_fp32": min(cos_fp32), "min_cosine_reference": min(cos_ref),
               "recall_at_10": recall, "corpus": corpus_size, "queries": queries if corpus_size > 0 else 0}
    log(f"gate: {'PASS' if passed else 'FAIL'}: min cosine {min_cos:.5f} (needs >= {min_cosine}), recall@10 "
        f"{'not measured' if recall is None else f'{recall:.4f}'} (needs >= {min_recall})")
    return passed, numbers


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
    ap.add_argument("--gate", metavar="VARIANT_DIR",
                    help="instead of the checks: gate this optimised text variant against CACHE/minilm; "
                         "exit 0 if it passes, 2 if it does not")
    ap.add_argument("--report", help="with --gate: write the verdict and numbers to this JSON file")
    ap.add_argument("--threads", type=int, default=2, help="with --gate: intra-op threads")
    args = ap.parse_args()
    print("onnxruntime", ort.__version__)
    if args.gate:
        passed, numbers = gate_text(args.gate, os.path.join(args.cache, "minilm"), threads=args.threads,
                                    cache_dir=os.path.join(args.cache, ".gate-cache"))
        if args.report:
            with open(args.report + ".tmp", "w") as f:
                json.dump(dict(numbers, passed=passed, min_cosine_needed=GATE_MIN_COSINE,
                               recall_needed=GATE_MIN_RECALL), f, indent=2)
                f.write("\n")
            os.replace(args.report + ".tmp", args.report)
        return 0 if passed else 2
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
