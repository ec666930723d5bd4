"""Hugging Face LLaVA-1.5 weight names -> the bundle writer's names (tools/bundle/config.py).

Two layouts exist: checkpoints saved by transformers 4.x (and the released llava-hf ones) use
`vision_tower.* / multi_modal_projector.* / language_model.model.* / language_model.lm_head.*`;
transformers 5 models name them `model.vision_tower.* / model.multi_modal_projector.* /
model.language_model.* / lm_head.*` in memory, and 5.17 saves `vision_tower.*` without `vision_model.`
(its CLIP tower is the bare transformer) next to the 4.x language names. All of them are accepted.
"""

from __future__ import annotations

import re
from typing import Optional

# Longest prefixes first: the v5 names contain the 4.x ones after "model.".
_PREFIXES = (
    ("model.vision_tower.vision_model.", "vision:"),
    ("vision_tower.vision_model.", "vision:"),
    ("model.vision_tower.", "vision:"),
    ("vision_tower.", "vision:"),
    ("model.multi_modal_projector.", "projector:"),
    ("multi_modal_projector.", "projector:"),
    ("model.language_model.model.", "language:"),
    ("model.language_model.", "language:"),
    ("language_model.model.", "language:"),
    ("language_model.lm_head.", "head:"),
    ("lm_head.", "head:"),
)

_VISION = [
    (r"embeddings\.patch_embedding\.weight", "vision.patch_embed.weight"),
    (r"embeddings\.class_embedding", "vision.class_embedding"),
    (r"embeddings\.position_embedding\.weight", "vision.position_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"vision.pre_layernorm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"vision.layers.\1.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"vision.layers.\1.o_proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"vision.layers.\1.ln1.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"vision.layers.\1.ln2.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc(1|2)\.(weight|bias)", r"vision.layers.\1.fc\2.\3"),
]
# Read by CLIP but not by LLaVA: the post-layernorm feeds only the pooled output, position_ids is a buffer.
_VISION_UNUSED = [r"post_layernorm\.(weight|bias)", r"embeddings\.position_ids"]

_PROJECTOR = [(r"linear_(1|2)\.(weight|bias)", r"projector.linear\1.\2")]

_LANGUAGE = [
    (r"embed_tokens\.weight", "language.embed_tokens.weight"),
    (r"norm\.weight", "language.norm.weight"),
    (r"layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"language.layers.\1.\2_proj.\3"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"language.layers.\1.\2_proj.weight"),
    (r"layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight", r"language.layers.\1.\2.weight"),
]
# Old checkpoints carry RoPE's inverse frequencies as a buffer; the graphs compute them from rope_theta.
_LANGUAGE_UNUSED = [r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]

_HEAD = [(r"weight", "language.lm_head.weight")]

_TABLES = {"vision:": (_VISION, _VISION_UNUSED), "projector:": (_PROJECTOR, []),
           "language:": (_LANGUAGE, _LANGUAGE_UNUSED), "head:": (_HEAD, [])}

UNUSED = object()


def bundle_name(hf_name: str):
    """The writer's name for a checkpoint tensor; UNUSED for tensors LLaVA never reads; None if unknown."""
    for prefix, part in _PREFIXES:
        if hf_name.startswith(prefix):
            rest = hf_name[len(prefix):]
            table, unused = _TABLES[part]
            for pattern, target in table:
                if re.fullmatch(pattern, rest):
                    return re.sub(pattern, target, rest)
            if any(re.fullmatch(pattern, rest) for pattern in unused):
                return UNUSED
            return None
    return None


def vision_layer(name: str) -> Optional[int]:
    """The layer index of a writer-named vision layer tensor (`vision.layers.N.*`), else None."""
    m = re.match(r"vision\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None
