"""TinyLlava: a LLaVA-1.5-shaped model small enough for a 2-core CPU (PyTorch, runs on torch 1.13 and 2.x).

CLIP-style ViT (pre-LN, CLS, learned positions, pre_layernorm) -> features of the penultimate layer
without CLS and without post-LN -> mlp2x_gelu projector -> LLaMA-style decoder (RMSNorm, rotate-half
RoPE, SwiGLU, untied lm_head). The math is exactly the stage math of docs/bundle-format.md, and the
state_dict names of the exported parts are the bundle writer's weight names, so export is a filter.

Training-only parts live under `heads.` (the CLS multi-label scene-contents head, with CLIP's
post-layernorm, and the per-patch colour/shape heads) and in the last ViT layer, which only the CLS
objective reads; neither is exported.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TinyLlavaConfig:
    image_size: int = 112
    patch_size: int = 8
    vision_hidden: int = 192
    vision_heads: int = 6
    vision_intermediate: int = 768
    vision_layers: int = 8          # trained depth
    feature_layer: int = 6          # features = output of this layer (0-based): the penultimate one
    layer_norm_eps: float = 1e-5
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 8
    intermediate: int = 688
    layers: int = 12
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    vocab_size: int = 158
    max_positions: int = 256
    num_contents: int = 60          # colour x shape x size combinations for the CLS objective
    num_patch_colors: int = 7       # background + colours
    num_patch_shapes: int = 6       # background + shapes
    num_patch_sizes: int = 3        # background + small/large (robustness fine-tune, tools/model/robust.py)
    num_patch_cells: int = 15       # background + grid row/column of the covering object's centre

    @property
    def grid(self):
        return self.image_size // self.patch_size

    @property
    def num_patches(self):
        return self.grid * self.grid

    def to_dict(self):
        return asdict(self)


def _attention(q, k, v, causal, mask=None):
    """q, k, v [B, H, T, dh] -> [B, H, T, dh]; flash/SDPA on torch 2, explicit math on torch 1.13.
    mask: optional bool [B, 1, T, T] (True = may attend) that replaces the causal rule."""
    if hasattr(F, "scaled_dot_product_attention"):
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is None and causal:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1) @ v


class VisionLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.vision_hidden
        self.heads = c.vision_heads
        self.ln1 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(d, c.vision_intermediate)
        self.fc2 = nn.Linear(c.vision_intermediate, d)

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def attn_probs(self, h):
        """Head-mean softmax attention [B, T, T] of this layer on input h (the scores graph's `probs`)."""
        x = self.ln1(h)
        q, k = self.split(self.q_proj(x)), self.split(self.k_proj(x))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return logits.float().softmax(-1).mean(1)

    def forward(self, h, mask=None):
        x = self.ln1(h)
        ctx = _attention(self.split(self.q_proj(x)), self.split(self.k_proj(x)), self.split(self.v_proj(x)), False, mask)
        h = h + self.o_proj(ctx.transpose(1, 2).reshape(h.shape))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class VisionTower(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.vision_hidden
        self.patch_embed = nn.Conv2d(3, d, c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(c.num_patches + 1, d) * 0.02)
        self.pre_layernorm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(VisionLayer(c) for _ in range(c.vision_layers))

    def embed(self, pixel_values):
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, P, D] row-major
        cls = self.class_embedding.view(1, 1, -1).expand(patches.shape[0], 1, -1)
        return self.pre_layernorm(torch.cat([cls, patches], 1) + self.position_embedding)

    def forward(self, pixel_values, upto=None):
        """Hidden states after every layer (list, index i = output of layer i) up to layer `upto`."""
        h = self.embed(pixel_values)
        outs = []
        for layer in self.layers[: (upto + 1) if upto is not None else None]:
            h = layer(h)
            outs.append(h)
        return outs


class Projector(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.linear1 = nn.Linear(c.vision_hidden, c.hidden)
        self.linear2 = nn.Linear(c.hidden, c.hidden)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1(x)))


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(position_ids, dim, theta):
    """cos, sin [B, T, dim] in float32 (rotate-half layout, inv_freq_i = theta^(-2i/dim))."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=position_ids.device) / dim))
    freqs = position_ids.float().unsqueeze(-1) * inv_freq.float()
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, dh]; cos/sin [B, T, dh]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.heads, self.kv_heads = c.hidden, c.heads, c.kv_heads
        self.head_dim = d // c.heads
        self.input_layernorm = RMSNorm(d, c.rms_norm_eps)
        self.q_proj = nn.Linear(d, c.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, c.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, c.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * self.head_dim, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, c.rms_norm_eps)
        self.gate_proj = nn.Linear(d, c.intermediate, bias=False)
        self.up_proj = nn.Linear(d, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, d, bias=False)

    def qkv(self, h, cos, sin):
        b, t, _ = h.shape
        x = self.input_layernorm(h)
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.heads // self.kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return q, k, v

    def forward(self, h, cos, sin, mask=None):
        q, k, v = self.qkv(h, cos, sin)
        ctx = _attention(q, k, v, True, mask)
        h = h + self.o_proj(ctx.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        x = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Language(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)
        self.head_dim = c.hidden // c.heads
        self.rope_theta = c.rope_theta

    def forward(self, embeds, position_ids=None):
        """Final hidden states (before the final norm) [B, T, D]; causal, no padding mask (pads trail)."""
        b, t, _ = embeds.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=embeds.device).unsqueeze(0).expand(b, t)
        cos, sin = rope_tables(position_ids, self.head_dim, self.rope_theta)
        h = embeds
        for layer in self.layers:
            h = layer(h, cos, sin)
        return h

    def logits(self, h):
        return self.lm_head(self.norm(h))


class TrainingHeads(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cls_norm = nn.LayerNorm(c.vision_hidden, eps=c.layer_norm_eps)  # CLIP's post_layernorm
        self.contents = nn.Linear(c.vision_hidden, c.num_contents)
        self.patch_color = nn.Linear(c.vision_hidden, c.num_patch_colors)
        self.patch_shape = nn.Linear(c.vision_hidden, c.num_patch_shapes)
        self.patch_size = nn.Linear(c.vision_hidden, c.num_patch_sizes)
        self.patch_row = nn.Linear(c.vision_hidden, c.num_patch_cells)
        self.patch_col = nn.Linear(c.vision_hidden, c.num_patch_cells)


class TinyLlava(nn.Module):
    def __init__(self, c: TinyLlavaConfig):
        super().__init__()
        self.config = c
        self.vision = VisionTower(c)
        self.projector = Projector(c)
        self.language = Language(c)
        self.heads = TrainingHeads(c)
        self._init_weights()

    def _init_weights(self):
        for name, p in self.named_parameters():
            if p.dim() >= 2 and "position_embedding" not in name:
                nn.init.normal_(p, std=0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        depth_scale = 1 / math.sqrt(2 * max(self.config.layers, self.config.vision_layers))
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "fc2.weight")):
                p.data.mul_(depth_scale)

    def image_features(self, pixel_values, all_layers=False):
        """(features [B, P, Dv] from the feature layer without CLS, final-layer CLS [B, Dv] or None)."""
        c = self.config
        outs = self.vision(pixel_values, upto=None if all_layers else c.feature_layer)
        features = outs[c.feature_layer][:, 1:]
        cls = outs[-1][:, 0] if all_layers else None
        return features, cls

    def assemble(self, prefix_ids, image_embeds, suffix_ids):
        """[embed(prefix) | image_embeds | embed(suffix)] -> [B, T, Dl]; prefix_ids [Tp] shared by the batch."""
        b = image_embeds.shape[0]
        emb = self.language.embed_tokens
        prefix = emb(prefix_ids).unsqueeze(0).expand(b, -1, -1)
        return torch.cat([prefix.to(image_embeds.dtype), image_embeds, emb(suffix_ids).to(image_embeds.dtype)], 1)

    def forward_logits(self, pixel_values, prefix_ids, suffix_ids, keep=None):
        """Full-sequence logits [B, T, V] (evaluation); keep: optional long [B, N] image-token rows kept."""
        features, _ = self.image_features(pixel_values)
        embeds = self.projector(features)
        if keep is not None:
            embeds = embeds.gather(1, keep.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        h = self.language(self.assemble(prefix_ids, embeds, suffix_ids))
        return self.language.logits(h)


def exported_state(model: TinyLlava):
    """The bundle's weight dict {name: float32 ndarray}: everything except training heads and the ViT
    layers after the feature layer."""
    c = model.config
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("heads."):
            continue
        parts = name.split(".")
        if parts[:2] == ["vision", "layers"] and int(parts[2]) > c.feature_layer:
            continue
        out[name] = t.detach().float().cpu().numpy()
    return out
