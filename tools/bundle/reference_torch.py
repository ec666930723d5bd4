"""Reference float32 implementation of every bundle stage in PyTorch, independent of the ONNX builders.

It reads the same weight dict (names and PyTorch layouts of writer.py) and the same config, and is the
math a trained model must agree with: a CLIP-style pre-LN ViT, LLaVA's mlp2x_gelu projector and a
LLaMA decoder (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU). Each function is one stage
of docs/bundle-format.md with the same inputs and outputs.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Weights = Dict[str, Tensor]


def as_weights(weights: dict) -> Weights:
    """numpy or torch arrays -> float32 tensors."""
    return {k: torch.as_tensor(v).to(torch.float32) for k, v in weights.items()}


def _linear(w: Weights, name: str, x: Tensor) -> Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


# ---------------------------------------------------------------------------------------------------
# vision


def vision_embed(cfg: dict, w: Weights, pixel_values: Tensor) -> Tensor:
    v = cfg["vision"]
    patches = F.conv2d(pixel_values, w["vision.patch_embed.weight"], stride=v["patch_size"])  # [B,D,g,g]
    h = patches.flatten(2).transpose(1, 2)  # row-major patches [B,P,D]
    if v["class_token"]:
        cls = w["vision.class_embedding"].expand(h.shape[0], 1, -1)
        h = torch.cat([cls, h], dim=1)
    h = h + w["vision.position_embedding"]
    if "vision.pre_layernorm.weight" in w:
        h = F.layer_norm(h, (v["hidden_size"],), w["vision.pre_layernorm.weight"], w["vision.pre_layernorm.bias"],
                         v["layer_norm_eps"])
    return h


def _vision_logits(cfg: dict, w: Weights, i: int, h: Tensor, attn_bias: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(LN1(h), k [B,H,T,dh], logits [B,H,T,T] with the per-key bias added)."""
    v = cfg["vision"]
    pre = f"vision.layers.{i}"
    b, t, _ = h.shape
    hn = F.layer_norm(h, (v["hidden_size"],), w[f"{pre}.ln1.weight"], w[f"{pre}.ln1.bias"], v["layer_norm_eps"])
    heads = lambda x: x.view(b, t, v["num_heads"], v["head_dim"]).transpose(1, 2)
    q, k = heads(_linear(w, f"{pre}.q_proj", hn)), heads(_linear(w, f"{pre}.k_proj", hn))
    logits = q @ k.transpose(-1, -2) / math.sqrt(v["head_dim"]) + attn_bias[:, None, None, :]
    return hn, k, logits


def vision_attn(cfg: dict, w: Weights, i: int, h: Tensor, attn_bias: Tensor) -> Tensor:
    v = cfg["vision"]
    pre = f"vision.layers.{i}"
    b, t, _ = h.shape
    hn, _, logits = _vision_logits(cfg, w, i, h, attn_bias)
    val = _linear(w, f"{pre}.v_proj", hn).view(b, t, v["num_heads"], v["head_dim"]).transpose(1, 2)
    ctx = (logits.softmax(-1) @ val).transpose(1, 2).reshape(b, t, -1)
    return h + _linear(w, f"{pre}.o_proj", ctx)


def vision_scores(cfg: dict, w: Weights, i: int, h: Tensor, attn_bias: Tensor) -> Dict[str, Tensor]:
    _, k, logits = _vision_logits(cfg, w, i, h, attn_bias)
    return {"scores": logits.mean(1), "probs": logits.softmax(-1).mean(1), "keys": k.mean(1)}


def _vision_act(kind: str, x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x) if kind == "quick_gelu" else F.gelu(x)


def vision_mlp(cfg: dict, w: Weights, i: int, h: Tensor) -> Tensor:
    v = cfg["vision"]
    pre = f"vision.layers.{i}"
    hn = F.layer_norm(h, (v["hidden_size"],), w[f"{pre}.ln2.weight"], w[f"{pre}.ln2.bias"], v["layer_norm_eps"])
    return h + _linear(w, f"{pre}.fc2", _vision_act(v["activation"], _linear(w, f"{pre}.fc1", hn)))


def projector(cfg: dict, w: Weights, features: Tensor) -> Tensor:
    return _linear(w, "projector.linear2", F.gelu(_linear(w, "projector.linear1", features)))


def encode_image(cfg: dict, w: Weights, pixel_values: Tensor) -> Tensor:
    """The unreduced vision path: embed, every exported layer, drop CLS, project -> [B,N,Dl]."""
    h = vision_embed(cfg, w, pixel_values)
    bias = torch.zeros(h.shape[:2])
    for i in range(cfg["vision"]["num_layers"]):
        h = vision_mlp(cfg, w, i, vision_attn(cfg, w, i, h, bias))
    return projector(cfg, w, h[:, 1:] if cfg["vision"]["class_token"] else h)


# ---------------------------------------------------------------------------------------------------
# language


def language_embed(cfg: dict, w: Weights, input_ids: Tensor) -> Tensor:
    return F.embedding(input_ids, w["language.embed_tokens.weight"])


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(position_ids: Tensor, head_dim: int, theta: float) -> Tuple[Tensor, Tensor]:
    """cos, sin [B,T,dh] for rotate-half RoPE, inv_freq_i = theta^(-2i/dh), in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _language_qkv(cfg: dict, w: Weights, i: int, h: Tensor, position_ids: Tensor, past_key: Tensor,
                  past_value: Tensor):
    """q [B,H,T,dh], present k/v [B,Hkv,P+T,dh] (keys after RoPE)."""
    lang = cfg["language"]
    pre = f"language.layers.{i}"
    b, t, _ = h.shape
    hq, hkv, dh = lang["num_heads"], lang["num_kv_heads"], lang["head_dim"]
    hn = rms_norm(h, w[f"{pre}.input_layernorm.weight"], lang["rms_norm_eps"])
    q = _linear(w, f"{pre}.q_proj", hn).view(b, t, hq, dh).transpose(1, 2)
    k = _linear(w, f"{pre}.k_proj", hn).view(b, t, hkv, dh).transpose(1, 2)
    val = _linear(w, f"{pre}.v_proj", hn).view(b, t, hkv, dh).transpose(1, 2)
    cos, sin = rope(position_ids, dh, float(lang["rope_theta"]))
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q, torch.cat([past_key, k], dim=2), torch.cat([past_value, val], dim=2)


def repeat_kv(x: Tensor, rep: int) -> Tensor:
    """[B,Hkv,L,dh] -> [B,Hkv*rep,L,dh]; query head h reads kv head h // rep (HF's order)."""
    return x.repeat_interleave(rep, dim=1)


def allowed_keys(t: int, attention_mask: Tensor) -> Tensor:
    """bool [B,T,L]: query t sits at key index P+t and may attend j iff j <= P+t and mask[j] == 1."""
    length = attention_mask.shape[1]
    past = length - t
    causal = torch.arange(length)[None, :] <= (torch.arange(t) + past)[:, None]
    return causal[None] & (attention_mask == 1)[:, None, :]


def _language_logits(cfg: dict, q: Tensor, keys: Tensor) -> Tensor:
    lang = cfg["language"]
    k = repeat_kv(keys, lang["num_heads"] // lang["num_kv_heads"])
    return q @ k.transpose(-1, -2) / math.sqrt(lang["head_dim"])  # [B,H,T,L]


def _masked_softmax(logits: Tensor, allowed: Tensor) -> Tensor:
    return logits.masked_fill(~allowed[:, None], torch.finfo(torch.float32).min).softmax(-1)


def language_attn(cfg: dict, w: Weights, i: int, h: Tensor, position_ids: Tensor, past_key: Tensor,
                  past_value: Tensor, attention_mask: Tensor) -> Dict[str, Tensor]:
    lang = cfg["language"]
    b, t, _ = h.shape
    q, present_key, present_value = _language_qkv(cfg, w, i, h, position_ids, past_key, past_value)
    probs = _masked_softmax(_language_logits(cfg, q, present_key), allowed_keys(t, attention_mask))
    ctx = probs @ repeat_kv(present_value, lang["num_heads"] // lang["num_kv_heads"])
    out = h + _linear(w, f"language.layers.{i}.o_proj", ctx.transpose(1, 2).reshape(b, t, -1))
    return {"hidden_out": out, "present_key": present_key, "present_value": present_value}


def language_scores(cfg: dict, w: Weights, i: int, h: Tensor, position_ids: Tensor, past_key: Tensor,
                    past_value: Tensor, attention_mask: Tensor) -> Dict[str, Tensor]:
    q, present_key, _ = _language_qkv(cfg, w, i, h, position_ids, past_key, past_value)
    logits = _language_logits(cfg, q, present_key)
    probs = _masked_softmax(logits, allowed_keys(h.shape[1], attention_mask))
    return {"scores": logits.mean(1), "probs": probs.mean(1)}


def language_mlp(cfg: dict, w: Weights, i: int, h: Tensor) -> Tensor:
    pre = f"language.layers.{i}"
    hn = rms_norm(h, w[f"{pre}.post_attention_layernorm.weight"], cfg["language"]["rms_norm_eps"])
    return h + _linear(w, f"{pre}.down_proj", F.silu(_linear(w, f"{pre}.gate_proj", hn)) * _linear(w, f"{pre}.up_proj", hn))


def language_head(cfg: dict, w: Weights, h: Tensor) -> Tensor:
    return F.linear(rms_norm(h, w["language.norm.weight"], cfg["language"]["rms_norm_eps"]), w["language.lm_head.weight"])


def empty_cache(cfg: dict, batch: int = 1) -> Tuple[Tensor, Tensor]:
    lang = cfg["language"]
    shape = (batch, lang["num_kv_heads"], 0, lang["head_dim"])
    return torch.zeros(shape), torch.zeros(shape)
