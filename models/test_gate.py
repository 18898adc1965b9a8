#!/usr/bin/env python3
"""Tests of the int8 variant's quality gate (check.gate_text), run with the models venv after
models/prepare.sh:

  $CACHE/models/venv/bin/python models/test_gate.py        # CACHE = ${FLOWMESH_CACHE:-~/.cache/flowmesh}

- a fully quantised variant (every op type ORT's dynamic mode knows, weights per tensor) is built in
  a temporary directory and must be rejected: on the reference sentences alone, and on recall@10
  alone (a 1,000-sentence corpus with the cosine bound switched off);
- fp32 against itself passes (recall@10 1.0): the pass branch works;
- the shipped recipe, rebuilt in a temporary directory, gets the verdict and numbers of the report
  prepare.sh wrote (minilm-int8.gate.json, full gate: 10,000 generated sentences, 200 queries), and
  minilm-int8/ exists if and only if it passed; if it did, the variant must be servable as is (its
  config.json names its own model and a tokenizer identical to minilm/'s) and pass the gate again.
About 3 minutes on 2 cores (the fp32 corpus embeddings are reused from prepare.sh's gate).
"""
import contextlib
import filecmp
import io
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check  # noqa: E402
import quantize  # noqa: E402

CACHE = os.path.join(os.environ.get("FLOWMESH_CACHE", os.path.expanduser("~/.cache/flowmesh")), "models")
FP32 = os.path.join(CACHE, "minilm")
INT8 = os.path.join(CACHE, "minilm-int8")
GATE_CACHE = os.path.join(CACHE, ".gate-cache")


def quiet_build(out, profile):
    with contextlib.redirect_stderr(io.StringIO()):  # quantize_dynamic's pre-processing advice
        return quantize.build_variant(FP32, out, profile)


class GateRejects(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.bad = os.path.join(cls.tmp.name, "minilm-all-int8")
        quiet_build(cls.bad, "all")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_reference_sentences_reject_full_quantisation(self):
        passed, n = check.gate_text(self.bad, FP32, corpus_size=0)
        self.assertFalse(passed)
        self.assertLess(n["min_cosine"], check.GATE_MIN_COSINE)

    def test_recall_alone_rejects_full_quantisation(self):
        passed, n = check.gate_text(self.bad, FP32, corpus_size=1000, queries=100, min_cosine=0.0,
                                    cache_dir=GATE_CACHE)
        self.assertFalse(passed)
        self.assertLess(n["recall_at_10"], check.GATE_MIN_RECALL)


class GatePasses(unittest.TestCase):
    def test_fp32_against_itself(self):
        # the pass branch: identical models agree exactly (small corpus: this is about the logic)
        passed, n = check.gate_text(FP32, FP32, corpus_size=1000, queries=100, cache_dir=GATE_CACHE)
        self.assertTrue(passed, n)
        self.assertEqual(n["recall_at_10"], 1.0)


class ShippedVariant(unittest.TestCase):
    """What prepare.sh did with the int8 variant agrees with its gate report, and the report is
    reproducible: the shipped recipe, rebuilt here, gets the same verdict and numbers on the full
    gate (10,000 sentences)."""

    def setUp(self):
        path = os.path.join(CACHE, "minilm-int8.gate.json")
        if not os.path.exists(path):
            self.fail(f"{path} is not there: run models/prepare.sh (without FLOWMESH_SKIP_INT8)")
        self.report = json.load(open(path))

    def test_report_is_reproducible_and_obeyed(self):
        self.assertGreaterEqual(self.report["corpus"], 10_000)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "minilm-int8")
            quiet_build(out, "shipped")
            passed, n = check.gate_text(out, FP32, cache_dir=GATE_CACHE)
        self.assertEqual(passed, self.report["passed"])
        self.assertEqual(n["recall_at_10"], self.report["recall_at_10"])
        self.assertAlmostEqual(n["min_cosine"], self.report["min_cosine"], places=6)
        # shipped if and only if it passed
        self.assertEqual(os.path.exists(INT8), passed)
        if passed:
            self.check_servable()

    def check_servable(self):
        cfg = json.load(open(os.path.join(INT8, "config.json")))
        fcfg = json.load(open(os.path.join(FP32, "config.json")))
        self.assertEqual(cfg["model"], "model.onnx")  # relative to the variant's own directory
        self.assertTrue(filecmp.cmp(os.path.join(INT8, cfg["tokenizer"]), os.path.join(FP32, fcfg["tokenizer"]),
                                    shallow=False))
        for key in ("kind", "inputs", "output", "dim", "max_seq_len", "pooling", "normalize"):
            self.assertEqual(cfg[key], fcfg[key], key)
        import onnx
        ops = {n.op_type for n in onnx.load(os.path.join(INT8, "model.onnx")).graph.node}
        self.assertIn("MatMulInteger", ops)  # it is quantised, not a copy of fp32
        passed, n = check.gate_text(INT8, FP32, cache_dir=GATE_CACHE)
        self.assertTrue(passed, n)


if __name__ == "__main__":
    unittest.main(verbosity=2)
