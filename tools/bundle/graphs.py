"""Stage graph builders: one small ONNX graph per stage of docs/bundle-format.md.

Every builder takes the (normalized) bundle config, the weight dict (PyTorch layout, see writer.py) and
returns a Stage: the ModelProto plus the inputs/outputs the manifest declares for it. All compute runs
in float32; with io_dtype float16 the hidden states and KV caches cross the graph boundary as float16
and are cast at the edges, while scores/probs/keys/logits are always float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto

from .onnx_builder import GraphBuilder, IoSpec

# Masked logits are replaced (not added to) with the most negative finite float32: a row whose keys are
# all masked then softmaxes to a uniform row instead of NaN, and no logit can overflow to -inf.
MASK_VALUE = float(np.finfo(np.float32).min)

IO_ONNX = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


@dataclass
class Stage:
    name: str  # manifest key, e.g. "vision/layer_03.attn"
    path: str  # bundle-relative, e.g. "vision/layer_03.attn.onnx"
    model: onnx.ModelProto
    inputs: list  # [IoSpec]
    outputs: list  # [IoSpec]
    weight_names: list  # initializers that hold weights
    shared_data: Optional[str] = None  # bundle-relative external data file shared with sibling graphs


@dataclass(frozen=True)
class WeightFormat:
    """How the bundle stores its weights (`dtype`), and whether products use them as stored
    (`matmul_dtype` float16, see `_matmul_weight`) or cast to float32; the writer checks both."""
    dtype: str = "float16"
    matmul_dtype: str = "float32"

    def builder(self, name: str) -> GraphBuilder:
        return GraphBuilder(name, self.dtype, matmul_dtype=self.matmul_dtype)


def _layer(prefix: str, i: int) -> str:
    return f"{prefix}/layer_{i:02d}"


# ---------------------------------------------------------------------------------------------------
# shared pieces


def _to_f32(g: GraphBuilder, x: str, io_dtype: str) -> str:
    return x if io_dtype == "float32" else g.op("Cast", [x], to=TensorProto.FLOAT)


def _to_io(g: GraphBuilder, x: str, io_dtype: str) -> str:
    return x if io_dtype == "float32" else g.op("Cast", [x], to=IO_ONNX[io_dtype])


def _matmul_weight(g: GraphBuilder, x: str, name: str, arr: np.ndarray) -> str:
    """x @ W for a stored [in, out] weight (`arr` in PyTorch's [out, in]); float32 result.

    With matmul_dtype float16 (fp16 weights only) the product runs on the stored weight: no float32
    copy of it exists, in memory or per call, and the GPU uses its half-precision tensor cores. Norms,
    softmax and RoPE stay in float32."""
    if g.matmul_dtype == "float16":
        half = g.op("MatMul", [g.op("Cast", [x], to=TensorProto.FLOAT16), g.weight(name, arr, transpose=True, cast=False)])
        return g.op("Cast", [half], to=TensorProto.FLOAT)
    return g.op("MatMul", [x, g.weight(name, arr, transpose=True)])


def _linear(g: GraphBuilder, x: str, w: dict, name: str) -> str:
    """x @ W^T (+ b) for a PyTorch Linear named `name` (bias optional)."""
    y = _matmul_weight(g, x, f"{name}.weight", w[f"{name}.weight"])
    if f"{name}.bias" in w:
        y = g.op("Add", [y, g.weight(f"{name}.bias", w[f"{name}.bias"])])
    return y


def _layer_norm(g: GraphBuilder, x: str, w: dict, name: str, eps: float) -> str:
    return g.op("LayerNormalization", [x, g.weight(f"{name}.weight", w[f"{name}.weight"]),
                                       g.weight(f"{name}.bias", w[f"{name}.bias"])], axis=-1, epsilon=float(eps))


def _rms_norm(g: GraphBuilder, x: str, w: dict, name: str, eps: float) -> str:
    # x / sqrt(mean(x^2) + eps) * weight  (opset 17 has no RMSNormalization)
    ms = g.op("ReduceMean", [g.op("Mul", [x, x])], axes=[-1], keepdims=1)
    rms = g.op("Sqrt", [g.op("Add", [ms, g.const(eps)])])
    return g.op("Mul", [g.op("Div", [x, rms]), g.weight(f"{name}.weight", w[f"{name}.weight"])])


def _gelu_erf(g: GraphBuilder, x: str) -> str:
    # 0.5 * x * (1 + erf(x / sqrt(2)))  (opset 17 has no Gelu)
    e = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0))])])
    return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [e, g.const(1.0)])])


def _quick_gelu(g: GraphBuilder, x: str) -> str:
    # CLIP's x * sigmoid(1.702 x)
    return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, g.const(1.702)])])])


def _activation(g: GraphBuilder, x: str, kind: str) -> str:
    if kind == "gelu":
        return _gelu_erf(g, x)
    if kind == "quick_gelu":
        return _quick_gelu(g, x)
    raise ValueError(f"vision.activation must be 'gelu' or 'quick_gelu', got {kind!r}")


def _split_heads(g: GraphBuilder, x: str, dims: list, perm: list) -> str:
    """[B,T,H*dh] -> reshape to [B,T,*dims] -> transpose(perm)."""
    return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0] + dims, np.int64)])], perm=perm)


def _finish(g: GraphBuilder, name: str, path: str, shared_data: Optional[str] = None) -> Stage:
    model = g.build()
    return Stage(name, path, model, list(g.inputs), list(g.outputs), list(g.weight_names), shared_data)


# ---------------------------------------------------------------------------------------------------
# vision


def vision_embed(cfg: dict, w: dict, fmt: WeightFormat) -> Stage:
    v, io = cfg["vision"], cfg["io_dtype"]
    s, p, d = v["image_size"], v["patch_size"], v["hidden_size"]
    tokens = v["num_patches"] + (1 if v["class_token"] else 0)
    g = fmt.builder("vision/embed")
    px = g.input("pixel_values", "float32", ["B", 3, s, s])
    conv = g.op("Conv", [px, g.weight("vision.patch_embed.weight", w["vision.patch_embed.weight"])],
                kernel_shape=[p, p], strides=[p, p])  # [B,D,grid,grid]
    patches = g.op("Transpose", [g.op("Reshape", [conv, g.const([0, d, -1], np.int64)])], perm=[0, 2, 1])
    h = patches
    if v["class_token"]:
        cls = g.op("Reshape", [g.weight("vision.class_embedding", w["vision.class_embedding"]),
                               g.const([1, 1, d], np.int64)])
        batch = g.op("Shape", [px], start=0, end=1)
        cls_b = g.op("Expand", [cls, g.op("Concat", [batch, g.const([1, d], np.int64)], axis=0)])
        h = g.op("Concat", [cls_b, patches], axis=1)  # CLS at index 0
    h = g.op("Add", [h, g.weight("vision.position_embedding", w["vision.position_embedding"])])
    if "vision.pre_layernorm.weight" in w:
        h = _layer_norm(g, h, w, "vision.pre_layernorm", v["layer_norm_eps"])
    g.output(_to_io(g, h, io), "hidden_out", io, ["B", tokens, d])
    return _finish(g, "vision/embed", "vision/embed.onnx")


def _vision_qk(g: GraphBuilder, cfg: dict, w: dict, i: int, x: str, bias: str):
    """LN1, q and k split into heads, and the biased scaled logits [B,H,T,T]."""
    v = cfg["vision"]
    pre = f"vision.layers.{i}"
    hn = _layer_norm(g, x, w, f"{pre}.ln1", v["layer_norm_eps"])
    heads = [v["num_heads"], v["head_dim"]]
    q = _split_heads(g, _linear(g, hn, w, f"{pre}.q_proj"), heads, [0, 2, 1, 3])  # [B,H,T,dh]
    k = _split_heads(g, _linear(g, hn, w, f"{pre}.k_proj"), heads, [0, 2, 1, 3])
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    logits = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(1.0 / math.sqrt(v["head_dim"]))])
    key_bias = g.op("Unsqueeze", [bias, g.const([1, 2], np.int64)])  # [B,1,1,T]
    return hn, k, g.op("Add", [logits, key_bias])


def _vision_layer_inputs(g: GraphBuilder, cfg: dict):
    io, d = cfg["io_dtype"], cfg["vision"]["hidden_size"]
    h_in = g.input("hidden_in", io, ["B", "T", d])
    bias = g.input("attn_bias", "float32", ["B", "T"])
    return _to_f32(g, h_in, io), bias


def vision_attn(cfg: dict, w: dict, i: int, fmt: WeightFormat, shared_data: Optional[str]) -> Stage:
    v, io = cfg["vision"], cfg["io_dtype"]
    name = f"{_layer('vision', i)}.attn"
    g = fmt.builder(name)
    x, bias = _vision_layer_inputs(g, cfg)
    hn, _, logits = _vision_qk(g, cfg, w, i, x, bias)
    pre = f"vision.layers.{i}"
    vv = _split_heads(g, _linear(g, hn, w, f"{pre}.v_proj"), [v["num_heads"], v["head_dim"]], [0, 2, 1, 3])
    ctx = g.op("MatMul", [g.op("Softmax", [logits], axis=-1), vv])  # [B,H,T,dh]
    merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                              g.const([0, 0, v["num_heads"] * v["head_dim"]], np.int64)])
    out = g.op("Add", [x, _linear(g, merged, w, f"{pre}.o_proj")])
    g.output(_to_io(g, out, io), "hidden_out", io, ["B", "T", v["hidden_size"]])
    return _finish(g, name, f"{name}.onnx", shared_data)


def vision_scores(cfg: dict, w: dict, i: int, fmt: WeightFormat, shared_data: Optional[str]) -> Stage:
    v = cfg["vision"]
    name = f"{_layer('vision', i)}.scores"
    g = fmt.builder(name)
    x, bias = _vision_layer_inputs(g, cfg)
    _, k, logits = _vision_qk(g, cfg, w, i, x, bias)
    g.output(g.op("ReduceMean", [logits], axes=[1], keepdims=0), "scores", "float32", ["B", "T", "T"])
    probs = g.op("Softmax", [logits], axis=-1)
    g.output(g.op("ReduceMean", [probs], axes=[1], keepdims=0), "probs", "float32", ["B", "T", "T"])
    g.output(g.op("ReduceMean", [k], axes=[1], keepdims=0), "keys", "float32", ["B", "T", v["head_dim"]])
    return _finish(g, name, f"{name}.onnx", shared_data)


def vision_mlp(cfg: dict, w: dict, i: int, fmt: WeightFormat) -> Stage:
    v, io = cfg["vision"], cfg["io_dtype"]
    name = f"{_layer('vision', i)}.mlp"
    pre = f"vision.layers.{i}"
    g = fmt.builder(name)
    x = _to_f32(g, g.input("hidden_in", io, ["B", "T", v["hidden_size"]]), io)
    hn = _layer_norm(g, x, w, f"{pre}.ln2", v["layer_norm_eps"])
    mid = _activation(g, _linear(g, hn, w, f"{pre}.fc1"), v["activation"])
    out = g.op("Add", [x, _linear(g, mid, w, f"{pre}.fc2")])
    g.output(_to_io(g, out, io), "hidden_out", io, ["B", "T", v["hidden_size"]])
    return _finish(g, name, f"{name}.onnx")


def projector(cfg: dict, w: dict, fmt: WeightFormat) -> Stage:
    pj, io = cfg["projector"], cfg["io_dtype"]
    g = fmt.builder("vision/projector")
    x = _to_f32(g, g.input("features", io, ["B", "N", pj["input_size"]]), io)
    h = _linear(g, _gelu_erf(g, _linear(g, x, w, "projector.linear1")), w, "projector.linear2")
    g.output(_to_io(g, h, io), "embeds", io, ["B", "N", pj["output_size"]])
    return _finish(g, "vision/projector", "vision/projector.onnx")


# ---------------------------------------------------------------------------------------------------
# language


def language_embed(cfg: dict, w: dict, fmt: WeightFormat) -> Stage:
    lang, io = cfg["language"], cfg["io_dtype"]
    g = fmt.builder("language/embed")
    ids = g.input("input_ids", "int64", ["B", "T"])
    # Gather from the stored table, then cast only the looked-up rows.
    rows = g.op("Gather", [g.raw_weight("language.embed_tokens.weight", w["language.embed_tokens.weight"]), ids], axis=0)
    stored = "float16" if fmt.dtype == "float16" else "float32"
    if stored != io:
        rows = g.op("Cast", [rows], to=IO_ONNX[io])
    g.output(rows, "embeds", io, ["B", "T", lang["hidden_size"]])
    return _finish(g, "language/embed", "language/embed.onnx")


def _appends_kv(cfg: dict) -> bool:
    """`append` bundles keep caches sequence-major [B,P,Hkv,dh] and return only the new rows, so the
    runtime appends them in place: a call's outputs are O(T), not O(P+T). On the CUDA provider every
    output crosses to host memory (onnxruntime-node cannot keep it on the device), so returning the
    whole cache each step dominated decode time."""
    return cfg["language"].get("kv_cache", "present") == "append"


def _language_layer_inputs(g: GraphBuilder, cfg: dict) -> dict:
    lang, io = cfg["language"], cfg["io_dtype"]
    hkv, dh = lang["num_kv_heads"], lang["head_dim"]
    cache = ["B", "P", hkv, dh] if _appends_kv(cfg) else ["B", hkv, "P", dh]
    return {
        "hidden_in": g.input("hidden_in", io, ["B", "T", lang["hidden_size"]]),
        "position_ids": g.input("position_ids", "int64", ["B", "T"]),
        "past_key": g.input("past_key", io, cache),
        "past_value": g.input("past_value", io, cache),
        "attention_mask": g.input("attention_mask", "int64", ["B", "PT"]),
    }


def _rope_tables(g: GraphBuilder, position_ids: str, dh: int, theta: float):
    """cos, sin [B,T,dh] in float32 for rotate-half RoPE (inv_freq_i = theta^(-2i/dh))."""
    inv_freq = (1.0 / (theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))).astype(np.float32)
    pos = g.op("Unsqueeze", [g.op("Cast", [position_ids], to=TensorProto.FLOAT), g.const([2], np.int64)])
    freqs = g.op("Mul", [pos, g.const(inv_freq.reshape(1, 1, -1))])  # [B,T,dh/2]
    emb = g.op("Concat", [freqs, freqs], axis=-1)
    return g.op("Cos", [emb]), g.op("Sin", [emb])


def _apply_rope(g: GraphBuilder, x: str, cos: str, sin: str, dh: int) -> str:
    x1, x2 = g.op("Split", [x, g.const([dh // 2, dh // 2], np.int64)], axis=-1, n_out=2)
    rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])


def _language_qkv(g: GraphBuilder, cfg: dict, w: dict, i: int, ins: dict):
    """Returns (x_f32, q5 [B,Hkv,rep,T,dh], new_key, new_value, present_key, present_value, keys_f32,
    values_f32); new and present k/v are head-major [B,Hkv,*,dh] in the io dtype.

    Grouped-query attention without repeating K/V: query head h = kv*rep + r (HF's repeat_kv order) is
    laid out as [B,Hkv,rep,T,dh] and MatMul broadcasts K/V [B,Hkv,1,L,dh] over the rep axis.
    """
    lang, io = cfg["language"], cfg["io_dtype"]
    hq, hkv, dh = lang["num_heads"], lang["num_kv_heads"], lang["head_dim"]
    rep = hq // hkv
    pre = f"language.layers.{i}"
    x = _to_f32(g, ins["hidden_in"], io)
    hn = _rms_norm(g, x, w, f"{pre}.input_layernorm", lang["rms_norm_eps"])
    q = _split_heads(g, _linear(g, hn, w, f"{pre}.q_proj"), [hkv, rep, dh], [0, 2, 3, 1, 4])  # [B,Hkv,rep,T,dh]
    k = _split_heads(g, _linear(g, hn, w, f"{pre}.k_proj"), [hkv, dh], [0, 2, 1, 3])  # [B,Hkv,T,dh]
    v = _split_heads(g, _linear(g, hn, w, f"{pre}.v_proj"), [hkv, dh], [0, 2, 1, 3])
    cos, sin = _rope_tables(g, ins["position_ids"], dh, float(lang["rope_theta"]))
    q = _apply_rope(g, q, g.op("Unsqueeze", [cos, g.const([1, 2], np.int64)]),
                    g.op("Unsqueeze", [sin, g.const([1, 2], np.int64)]), dh)
    k = _apply_rope(g, k, g.op("Unsqueeze", [cos, g.const([1], np.int64)]),
                    g.op("Unsqueeze", [sin, g.const([1], np.int64)]), dh)
    # The cache holds io-dtype values; attention reads the cache back, so fp16 bundles attend to exactly
    # what later steps will see.
    past_key, past_value = ins["past_key"], ins["past_value"]
    if _appends_kv(cfg):
        past_key = g.op("Transpose", [past_key], perm=[0, 2, 1, 3])
        past_value = g.op("Transpose", [past_value], perm=[0, 2, 1, 3])
    new_key = _to_io(g, k, io)
    present_key = g.op("Concat", [past_key, new_key], axis=2)
    new_value = _to_io(g, v, io)
    present_value = g.op("Concat", [past_value, new_value], axis=2)
    keys = g.op("Unsqueeze", [_to_f32(g, present_key, io), g.const([2], np.int64)])  # [B,Hkv,1,L,dh]
    values = g.op("Unsqueeze", [_to_f32(g, present_value, io), g.const([2], np.int64)])
    return x, q, new_key, new_value, present_key, present_value, keys, values


def _language_logits(g: GraphBuilder, cfg: dict, q: str, keys: str) -> str:
    dh = cfg["language"]["head_dim"]
    kt = g.op("Transpose", [keys], perm=[0, 1, 2, 4, 3])
    return g.op("Mul", [g.op("MatMul", [q, kt]), g.const(1.0 / math.sqrt(dh))])  # [B,Hkv,rep,T,L]


def _allowed_keys(g: GraphBuilder, hidden_in: str, attention_mask: str) -> str:
    """bool [B,1,1,T,L]: query t (at key index P+t) may attend key j iff j <= P+t and mask[j] == 1."""
    length = g.op("Squeeze", [g.op("Shape", [attention_mask], start=1, end=2), g.const([0], np.int64)])
    t_len = g.op("Squeeze", [g.op("Shape", [hidden_in], start=1, end=2), g.const([0], np.int64)])
    past = g.op("Sub", [length, t_len])
    zero, one = g.const(0, np.int64), g.const(1, np.int64)
    j = g.op("Range", [zero, length, one])  # [L]
    query_at = g.op("Unsqueeze", [g.op("Add", [g.op("Range", [zero, t_len, one]), past]), g.const([1], np.int64)])
    causal = g.op("LessOrEqual", [j, query_at])  # [T,L]
    kept = g.op("Unsqueeze", [g.op("Equal", [attention_mask, g.const(1, np.int64)]), g.const([1], np.int64)])
    allowed = g.op("And", [causal, kept])  # [B,T,L]
    return g.op("Unsqueeze", [allowed, g.const([1, 2], np.int64)])


def _masked_softmax(g: GraphBuilder, logits: str, allowed: str) -> str:
    return g.op("Softmax", [g.op("Where", [allowed, logits, g.const(MASK_VALUE)])], axis=-1)


def language_attn(cfg: dict, w: dict, i: int, fmt: WeightFormat, shared_data: Optional[str]) -> Stage:
    lang, io = cfg["language"], cfg["io_dtype"]
    hkv, dh = lang["num_kv_heads"], lang["head_dim"]
    name = f"{_layer('language', i)}.attn"
    g = fmt.builder(name)
    ins = _language_layer_inputs(g, cfg)
    x, q, new_key, new_value, present_key, present_value, keys, values = _language_qkv(g, cfg, w, i, ins)
    probs = _masked_softmax(g, _language_logits(g, cfg, q, keys), _allowed_keys(g, ins["hidden_in"], ins["attention_mask"]))
    ctx = g.op("MatMul", [probs, values])  # [B,Hkv,rep,T,dh]
    merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2, 4]),
                              g.const([0, 0, lang["num_heads"] * dh], np.int64)])
    out = g.op("Add", [x, _linear(g, merged, w, f"language.layers.{i}.o_proj")])
    g.output(_to_io(g, out, io), "hidden_out", io, ["B", "T", lang["hidden_size"]])
    if _appends_kv(cfg):
        g.output(g.op("Transpose", [new_key], perm=[0, 2, 1, 3]), "new_key", io, ["B", "T", hkv, dh])
        g.output(g.op("Transpose", [new_value], perm=[0, 2, 1, 3]), "new_value", io, ["B", "T", hkv, dh])
    else:
        g.output(present_key, "present_key", io, ["B", hkv, "PT", dh])
        g.output(present_value, "present_value", io, ["B", hkv, "PT", dh])
    return _finish(g, name, f"{name}.onnx", shared_data)


def language_scores(cfg: dict, w: dict, i: int, fmt: WeightFormat, shared_data: Optional[str]) -> Stage:
    name = f"{_layer('language', i)}.scores"
    g = fmt.builder(name)
    ins = _language_layer_inputs(g, cfg)  # past_value is declared (same feeds as attn) but unused
    _, q, _, _, _, _, keys, _ = _language_qkv(g, cfg, w, i, ins)
    logits = _language_logits(g, cfg, q, keys)
    g.output(g.op("ReduceMean", [logits], axes=[1, 2], keepdims=0), "scores", "float32", ["B", "T", "PT"])
    probs = _masked_softmax(g, logits, _allowed_keys(g, ins["hidden_in"], ins["attention_mask"]))
    g.output(g.op("ReduceMean", [probs], axes=[1, 2], keepdims=0), "probs", "float32", ["B", "T", "PT"])
    return _finish(g, name, f"{name}.onnx", shared_data)


def language_mlp(cfg: dict, w: dict, i: int, fmt: WeightFormat) -> Stage:
    lang, io = cfg["language"], cfg["io_dtype"]
    name = f"{_layer('language', i)}.mlp"
    pre = f"language.layers.{i}"
    g = fmt.builder(name)
    x = _to_f32(g, g.input("hidden_in", io, ["B", "T", lang["hidden_size"]]), io)
    hn = _rms_norm(g, x, w, f"{pre}.post_attention_layernorm", lang["rms_norm_eps"])
    gate = _linear(g, hn, w, f"{pre}.gate_proj")
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
    mid = g.op("Mul", [silu, _linear(g, hn, w, f"{pre}.up_proj")])
    out = g.op("Add", [x, _linear(g, mid, w, f"{pre}.down_proj")])
    g.output(_to_io(g, out, io), "hidden_out", io, ["B", "T", lang["hidden_size"]])
    return _finish(g, name, f"{name}.onnx")


def language_head(cfg: dict, w: dict, fmt: WeightFormat) -> Stage:
    lang, io = cfg["language"], cfg["io_dtype"]
    g = fmt.builder("language/head")
    x = _to_f32(g, g.input("hidden_in", io, ["B", "T", lang["hidden_size"]]), io)
    hn = _rms_norm(g, x, w, "language.norm", lang["rms_norm_eps"])
    logits = _matmul_weight(g, hn, "language.lm_head.weight", w["language.lm_head.weight"])
    g.output(logits, "logits", "float32", ["B", "T", lang["vocab_size"]])
    return _finish(g, "language/head", "language/head.onnx")


# ---------------------------------------------------------------------------------------------------


def all_stages(cfg: dict, w: dict, fmt: WeightFormat, share_layer_data: bool):
    """Yields every stage of the bundle in manifest order, built lazily (one graph in memory at a time)."""
    def data(prefix: str, i: int) -> Optional[str]:
        return f"{_layer(prefix, i)}.data" if share_layer_data else None

    yield vision_embed(cfg, w, fmt)
    for i in range(cfg["vision"]["num_layers"]):
        yield vision_attn(cfg, w, i, fmt, data("vision", i))
        yield vision_scores(cfg, w, i, fmt, data("vision", i))
        yield vision_mlp(cfg, w, i, fmt)
    yield projector(cfg, w, fmt)
    yield language_embed(cfg, w, fmt)
    for i in range(cfg["language"]["num_layers"]):
        yield language_attn(cfg, w, i, fmt, data("language", i))
        yield language_scores(cfg, w, i, fmt, data("language", i))
        yield language_mlp(cfg, w, i, fmt)
    yield language_head(cfg, w, fmt)
