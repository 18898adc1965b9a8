"""Jina 3.34 executors that do what flowmesh's executors do, for `flowmesh-bench compare`.

- `Sentencizer`: flowmesh's built-in sentencizer (same rules, chunk ids `PARENT#N`).
- `HashEncoder`: flowmesh-encoder's `hash` model (FNV-1a feature hashing of tokens and
  character trigrams, L2-normalised), so both sides encode the same vectors.
- `OnnxTextEncoder`: the same `model.onnx` and `tokenizer.json` as flowmesh-encoder's `onnx`
  model, on the same ONNX Runtime release: truncation at the config's `max_seq_len`, padding to
  the longest text of a batch, mean pooling under the attention mask, L2 normalisation; one
  intra-op thread, no spinning (flowmesh's defaults in flows/text.yml); batches of at most 64
  texts, as flowmesh-encoder's `--max-batch`.
- `NumpyIndexer`: one shard of exact cosine search (the seed's numpy indexer), over the leaf
  chunks of a document or the document itself.
- `TopKMerger`: `uses_after` of the indexer shards under `all` polling: per query, the global
  top-k of all shards' matches (best first, ties by the smaller id, deduplicated by id), as
  flowmesh's `topk` merger.
- `Ranker`: stores documents' content on /index; on /search, groups chunk matches by
  `parent_id`, takes each document's best chunk score (max), sorts, cuts to top-k, fills text
  and tags from the store (flowmesh-ranker's default). As flowmesh's gateway, it leaves
  embeddings and chunk matches out of the answer.

Every executor returns documents it does not handle unchanged (returning None: Jina keeps the
request's documents as they are).
"""

import json
import os
import re
from typing import Any, Dict, List, Optional

import numpy as np
from docarray import BaseDoc, DocList
from docarray.typing import NdArray
from jina import Executor, requests

DEFAULT_TOP_K = 10


class Match(BaseDoc):
    text: Optional[str] = None
    tags: Optional[Dict[str, Any]] = None
    parent_id: Optional[str] = None
    score: Optional[float] = None


# Nested lists are DocLists with empty defaults, not Optional: Jina's gateway rebuilds every
# executor's schema, and fails on Optional nested documents (KeyError '#/$defs/...') and
# drops a default_factory (the field becomes required); a plain default (pydantic copies it) works.
class Chunk(BaseDoc):
    text: Optional[str] = None
    tags: Optional[Dict[str, Any]] = None
    parent_id: Optional[str] = None
    embedding: Optional[NdArray] = None
    matches: DocList[Match] = DocList[Match]()


class Doc(Chunk):
    """A document: a chunk's fields, and its chunks."""
    chunks: DocList[Chunk] = DocList[Chunk]()


def label_process(executor):
    """Names this process after the executor (`j:indexer/s0/r0`) in /proc, so that the harness
    can tell where the Flow's CPU time goes."""
    name = getattr(getattr(executor, "runtime_args", None), "name", None) or type(executor).__name__
    short = str(name).replace("/shard-", "/s").replace("/rep-", "/r").replace("/uses_after", "/after").replace("/uses-after", "/after")
    try:
        with open("/proc/self/comm", "w", encoding="utf-8") as f:
            f.write(("j:" + short)[:15])
    except OSError:
        pass


def top_k(parameters):
    """`top_k` of the request (Jina's client sends numbers as floats), else 10."""
    try:
        k = int(float((parameters or {}).get("top_k", DEFAULT_TOP_K)))
    except (TypeError, ValueError):
        k = DEFAULT_TOP_K
    return k if k > 0 else DEFAULT_TOP_K


def leaves(docs):
    """The documents' chunks where they have some, else the documents themselves."""
    out = []
    for d in docs:
        if d.chunks:
            out.extend(d.chunks)
        else:
            out.append(d)
    return out


def normalised(matrix):
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


class Sentencizer(Executor):
    """flowmesh's sentencizer: a sentence ends after a run of punctuation or at a line break;
    whitespace is trimmed; shorter than `min_sent_len` characters is dropped; longer than
    `max_sent_len` is cut."""

    def __init__(self, min_sent_len=1, max_sent_len=512, punct_chars="!.?。！？…", **kwargs):
        super().__init__(**kwargs)
        label_process(self)
        self.min_sent_len = min_sent_len
        self.max_sent_len = max_sent_len
        self._splitter = re.compile("[" + re.escape(punct_chars) + "]+|\n")

    def sentences(self, text):
        out, start = [], 0
        for m in self._splitter.finditer(text):
            self._push(text, start, m.end(), out)
            start = m.end()
        self._push(text, start, len(text), out)
        return out

    def _push(self, text, s, e, out):
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e == s or e - s < self.min_sent_len:
            return
        e = min(e, s + self.max_sent_len)
        out.append((s, e, text[s:e]))

    @requests
    def segment(self, docs: DocList[Doc], **kwargs) -> DocList[Doc]:
        for d in docs:
            if d.chunks or d.text is None:
                continue
            d.chunks = DocList[Chunk](
                [
                    Chunk(id=f"{d.id}#{n}", text=t, parent_id=d.id, tags={"location": [s, e]})
                    for n, (s, e, t) in enumerate(self.sentences(d.text))
                ]
            )
        return docs


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_TOKEN = re.compile(r"[^\W_]+")


def fnv1a64(data):
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


class HashEncoder(Executor):
    """flowmesh-encoder's `hash` model."""

    def __init__(self, dim=64, **kwargs):
        super().__init__(**kwargs)
        label_process(self)
        self.dim = dim

    def _add(self, v, feature, weight):
        h = fnv1a64(feature)
        v[h % self.dim] += -weight if h >> 63 else weight

    def embed_one(self, text):
        v = np.zeros(self.dim, dtype=np.float32)
        for token in _TOKEN.findall(text.lower()):
            self._add(v, token.encode(), 1.0)
            for i in range(len(token) - 2):
                self._add(v, token[i : i + 3].encode(), 0.5)
        n = float(np.linalg.norm(v.astype(np.float64)))
        return (v / n).astype(np.float32) if n > 0 else v

    @requests
    def encode(self, docs: DocList[Doc], **kwargs) -> DocList[Doc]:
        for d in leaves(docs):
            if d.text is not None:
                d.embedding = self.embed_one(d.text)
        return docs


class OnnxTextEncoder(Executor):
    """The text model of flowmesh-encoder (`--model onnx`), from its prepared config.json."""

    def __init__(self, model_config, threads=1, max_batch=64, **kwargs):
        super().__init__(**kwargs)
        label_process(self)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        with open(model_config, encoding="utf-8") as f:
            cfg = json.load(f)
        base = os.path.dirname(model_config)
        self.max_batch = max_batch
        self.normalize = cfg.get("normalize", True)
        self.tokenizer = Tokenizer.from_file(os.path.join(base, cfg["tokenizer"]))
        truncation = self.tokenizer.truncation or {}
        self.tokenizer.enable_truncation(
            max_length=cfg.get("max_seq_len", 512),
            stride=truncation.get("stride", 0),
            strategy=truncation.get("strategy", "longest_first"),
            direction=truncation.get("direction", "right"),
        )
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(
            direction=padding.get("direction", "right"),
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
            length=None,  # the longest text of the batch, as flowmesh
            pad_to_multiple_of=padding.get("pad_to_multiple_of"),
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            os.path.join(base, cfg["model"]), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in cfg["inputs"]]
        self.output = cfg["output"]["name"]

    def embed(self, texts):
        out = []
        for at in range(0, len(texts), self.max_batch):
            encodings = self.tokenizer.encode_batch(texts[at : at + self.max_batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self.session.run([self.output], {k: feed[k] for k in self.inputs})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            if self.normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out.extend(pooled.astype(np.float32))
        return out

    @requests
    def encode(self, docs: DocList[Doc], **kwargs) -> DocList[Doc]:
        todo = [d for d in leaves(docs) if d.text is not None]
        for d, e in zip(todo, self.embed([d.text for d in todo])):
            d.embedding = e
        return docs


class NumpyIndexer(Executor):
    """One shard of exact cosine search over leaf chunks (or documents without chunks)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        label_process(self)
        self._ids, self._parents, self._rows = [], [], []
        self._matrix = None

    @requests(on="/index")
    def index(self, docs: DocList[Doc], **kwargs) -> DocList[Doc]:
        for d in docs:
            for leaf in d.chunks if d.chunks else [d]:
                if leaf.embedding is None:
                    continue
                self._ids.append(leaf.id)
                self._parents.append(leaf.parent_id or d.id)
                self._rows.append(np.asarray(leaf.embedding, dtype=np.float32).ravel())
        self._matrix = None
        return None

    @requests(on="/search")
    def search(self, docs: DocList[Doc], parameters: Dict = None, **kwargs) -> DocList[Doc]:
        k = top_k(parameters)
        queries = [q for q in leaves(docs) if q.embedding is not None]
        if not queries or not self._rows:
            return docs
        if self._matrix is None:
            self._matrix = normalised(np.vstack(self._rows))
        q = normalised(np.vstack([np.asarray(x.embedding, dtype=np.float32).ravel() for x in queries]))
        scores = q @ self._matrix.T
        n = scores.shape[1]
        kk = min(k, n)
        for query, row in zip(queries, scores):
            candidates = np.argpartition(-row, kk - 1)[:kk] if kk < n else np.arange(n)
            best = sorted(candidates.tolist(), key=lambda j: (-float(row[j]), self._ids[j]))[:kk]
            query.matches = DocList[Match](
                [Match(id=self._ids[j], parent_id=self._parents[j], score=float(row[j])) for j in best]
            )
        return docs


class TopKMerger(Executor):
    """The global top-k of every shard's matches, per query (and per query chunk)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        label_process(self)

    @requests(on="/search")
    def merge(
        self, docs: DocList[Doc], docs_matrix: List[DocList[Doc]] = None, parameters: Dict = None, **kwargs
    ) -> DocList[Doc]:
        # `docs` declares the schema; Jina would otherwise assume its legacy document type.
        if not docs_matrix:
            return None
        k = top_k(parameters)
        merged = docs_matrix[0]
        for i, query in enumerate(merged):
            others = [m[i] for m in docs_matrix[1:] if i < len(m)]
            if query.chunks:
                for c, chunk in enumerate(query.chunks):
                    pools = [chunk.matches or []] + [
                        (o.chunks[c].matches or []) for o in others if o.chunks and c < len(o.chunks)
                    ]
                    chunk.matches = self._top(pools, k)
            else:
                query.matches = self._top([query.matches or []] + [o.matches or [] for o in others], k)
        return merged

    @staticmethod
    def _top(pools, k):
        seen, out = set(), []
        for m in sorted((m for pool in pools for m in pool), key=lambda m: (-(m.score or 0.0), m.id)):
            if m.id not in seen:
                seen.add(m.id)
                out.append(m)
                if len(out) == k:
                    break
        return DocList[Match](out)


class Ranker(Executor):
    """Chunk matches to document matches (max of chunk scores), content from an in-memory store."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        label_process(self)
        self._store = {}

    @requests(on="/index")
    def index(self, docs: DocList[Doc], **kwargs) -> DocList[Doc]:
        for d in docs:
            self._store[d.id] = (d.text, d.tags)
            d.embedding = None
            if d.chunks:
                for c in d.chunks:
                    c.embedding = None
        return docs

    @requests(on="/search")
    def search(self, docs: DocList[Doc], parameters: Dict = None, **kwargs) -> DocList[Doc]:
        k = top_k(parameters)
        for q in docs:
            if q.chunks:
                best = {}
                for c in q.chunks:
                    for m in c.matches or []:
                        parent = m.parent_id or m.id
                        s = m.score or 0.0
                        if parent not in best or s > best[parent]:
                            best[parent] = s
                    c.matches = DocList[Match]()
                    c.embedding = None
                if best:
                    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
                    q.matches = DocList[Match]([Match(id=i, score=s) for i, s in ranked])
            q.embedding = None
            for m in q.matches or []:
                stored = self._store.get(m.id)
                if stored is not None:
                    if m.text is None:
                        m.text = stored[0]
                    if m.tags is None:
                        m.tags = stored[1]
        return docs
