#!/usr/bin/env python3
"""Build the int8 variant of the MiniLM text encoder from the fp32 graph of prepare.py.

Dynamic quantisation (ONNX Runtime's ``quantize_dynamic``): the weights of the chosen ops are
stored as int8 with their scales; activations are quantised to uint8 at run time, per tensor, by
``DynamicQuantizeLinear`` nodes in the graph. The fp32 graph's inputs, output and tokenizer are
unchanged, so the variant directory is served like ``minilm/`` (its own ``config.json``).

Whether the variant ships is decided by the gate in check.py (``gate_text``), not here.

Usage: quantize.py --src CACHE/models/minilm --out CACHE/models/minilm-int8 [--profile NAME]
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile

import onnx

# The BERT modules whose MatMul stays fp32 in the shipped recipe: the nine most sensitive ones,
# ranked by quantising one weight MatMul at a time (1 - cosine to fp32 on the reference sentences,
# worst sentence; see models/README.md). The FFN's two MatMuls and the attention values take inputs
# with a few very large channels, which a per-tensor uint8 activation scale handles badly.
SENSITIVE = [
    "encoder.layer.4.intermediate.dense", "encoder.layer.0.output.dense", "encoder.layer.3.intermediate.dense",
    "encoder.layer.4.attention.self.value", "encoder.layer.2.output.dense", "encoder.layer.2.intermediate.dense",
    "encoder.layer.5.attention.self.value", "encoder.layer.3.attention.self.value",
    "encoder.layer.1.intermediate.dense",
]

# Named recipes. "shipped" is the one prepare.sh builds (27 of the 36 weight MatMuls in int8);
# "matmul" quantises all 36 (the fastest); "all" quantises every op type ORT's dynamic mode knows
# (the embedding Gathers too), weights per tensor: test_gate.py uses it as a variant the gate
# must reject.
PROFILES = {
    "shipped": {"op_types": ["MatMul"], "per_channel": True, "reduce_range": False, "exclude": SENSITIVE},
    "matmul": {"op_types": ["MatMul"], "per_channel": True, "reduce_range": False},
    "all": {"op_types": None, "per_channel": False, "reduce_range": False},
}


def nodes_of_modules(model_path, modules):
    """Names of the MatMul nodes whose weight belongs to one of `modules` (prepare.py names the
    weights "<module>.wT_<n>"), so that recipes do not depend on prepare.py's node numbering."""
    if not modules:
        return []
    graph = onnx.load(model_path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    found = {m: [] for m in modules}
    for n in graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            module = n.input[1].rsplit(".wT_", 1)[0]
            if module in found:
                found[module].append(n.name)
    missing = [m for m, names in found.items() if len(names) != 1]
    if missing:
        raise SystemExit(f"no single weight MatMul for {missing} in {model_path}")
    return [names[0] for names in found.values()]


def quantize(src_model, dst_model, op_types=None, per_channel=True, reduce_range=False, exclude=(),
             extra_options=None):
    """Dynamic int8 quantisation of src_model (a path) into dst_model.

    op_types None quantises every op type of ORT's IntegerOps registry (MatMul, Gather, ...).
    exclude lists node names left in fp32.
    reduce_range False: full 8-bit weights. Right for CPUs with AVX-512 VNNI or AVX-VNNI (u8 x s8
    products summed in int32); on AVX2 without VNNI ORT's u8s8 kernel sums pairs in saturating int16,
    where reduce_range (7-bit weights) avoids overflow: a variant built for such CPUs should set it.
    """
    # Imported here: onnxruntime.quantization needs ml_dtypes, which check.py alone does not.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # its advice to run ORT's pre-processing first (shape inference) is a root-logger warning; the
    # graph of prepare.py needs none (the gate judges the result)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            src_model,
        dst_model,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options=dict(extra_options or {}),
        )
    finally:
        root.setLevel(level)
    onnx.checker.check_model(dst_model)


def build_variant(src_dir, out_dir, profile="shipped", **overrides):
    """Writes out_dir/{model.onnx,tokenizer.json,config.json} from the fp32 variant in src_dir.
    out_dir is a staging directory: prepare.sh moves it to minilm-int8/ only if the gate passes."""
    recipe = dict(PROFILES[profile], **overrides)
    src_cfg = json.load(open(os.path.join(src_dir, "config.json")))
    os.makedirs(out_dir, exist_ok=True)
    # quantize_dynamic writes next to its output; build under a temporary name, then rename.
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_model = os.path.join(tmp, "model.onnx")
        src_model = os.path.join(src_dir, src_cfg["model"])
        quantize(src_model, tmp_model, recipe["op_types"], recipe["per_channel"], recipe["reduce_range"],
                 nodes_of_modules(src_model, recipe.get("exclude", ())))
        os.replace(tmp_model, os.path.join(out_dir, "model.onnx"))
    shutil.copy(os.path.join(src_dir, src_cfg["tokenizer"]), os.path.join(out_dir, "tokenizer.json"))
    cfg = dict(src_cfg)
    cfg["name"] = src_cfg["name"] + "-int8"
    cfg["source"] = (f"{src_cfg['name']} fp32 graph (../{os.path.basename(os.path.normpath(src_dir))}), "
                     f"onnxruntime quantize_dynamic: {describe(recipe)}")
    cfg["model"] = "model.onnx"
    cfg["tokenizer"] = "tokenizer.json"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    return cfg, recipe


def describe(recipe):
    ops = ",".join(recipe["op_types"]) if recipe["op_types"] else "all IntegerOps types"
    text = (f"ops {ops}, weights int8 {'per channel' if recipe['per_channel'] else 'per tensor'}"
            f"{', reduce_range' if recipe['reduce_range'] else ''}, activations uint8 per tensor at run time")
    if recipe.get("exclude"):
        text += f"; {len(recipe['exclude'])} MatMuls kept fp32: {', '.join(recipe['exclude'])}"
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True, help="the fp32 variant directory (…/models/minilm)")
    ap.add_argument("--out", required=True, help="the variant directory to write (…/models/minilm-int8)")
    ap.add_argument("--profile", default="shipped", choices=sorted(PROFILES))
    args = ap.parse_args()
    cfg, recipe = build_variant(args.src, args.out, args.profile)
    size = os.path.getsize(os.path.join(args.out, "model.onnx"))
    print(f"wrote {args.out}/model.onnx ({size / 2**20:.1f} MiB): {describe(recipe)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
