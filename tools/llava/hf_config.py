"""A Hugging Face LLaVA-1.5 checkpoint's config files -> the bundle writer's config (docs/bundle-format.md).

Reads config.json (LlavaConfig: CLIP vision config + Llama text config), preprocessor_config.json
(CLIPImageProcessor, or LlavaImageProcessor with `do_pad`) and tokenizer_config.json. Anything the
bundle cannot express (a feature layer list, CLS kept, RoPE scaling, biased MLPs, other activations) is
refused with the field named, rather than exported wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

# LLaVA-1.5's conversation template `vicuna_v1` (llava/conversation.py): system prompt, "USER: " and
# " ASSISTANT:", with the image placeholder first and a newline before the question.
VICUNA_V1_TEMPLATE = ("A chat between a curious human and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the human's questions. "
                      "USER: <image>\n{question} ASSISTANT:")
IMAGE_TOKEN = "<image>"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

# The papers' anchors, stated for LLaVA-1.5-7B (24-layer CLIP ViT-L, 32-layer Vicuna-7B) and used unchanged
# by the papers for 13B (40 layers).
PAPER_VISION_LAYERS = 24
PAPER_LANGUAGE_LAYERS = 32
PAPER_ANCHORS = {"ficoco_v": 12, "tome": 0, "ficoco_l": 5, "sparsevlm": (2, 6, 15), "fastv": 2}


class ExportError(ValueError):
    """The checkpoint cannot become a bundle; the message names the field and what to do."""


def _ids(value) -> list:
    """A token id or a list of them, as configs write eos_token_id; None: none."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _feature_layers(vision_feature_layer, trained: int) -> int:
    """Exported depth: hidden_states[k] is the output of layer k-1 (index 0 is the embeddings)."""
    if not isinstance(vision_feature_layer, int):
        raise ExportError(f"vision_feature_layer {vision_feature_layer!r}: only a single layer is supported "
                          "(the bundle's feature is one layer's output)")
    k = vision_feature_layer + trained + 1 if vision_feature_layer < 0 else vision_feature_layer
    if not 1 <= k <= trained:
        raise ExportError(f"vision_feature_layer {vision_feature_layer} selects no encoder layer of {trained}")
    return k


def _rope_theta(text: dict) -> float:
    params = text.get("rope_parameters") or {}
    scaling = text.get("rope_scaling")
    rope_type = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type != "default":
        raise ExportError(f"text_config RoPE type {rope_type!r}: only plain rotate-half RoPE is supported")
    return float(params.get("rope_theta", text.get("rope_theta", 10000.0)))


def scaled_anchors(vision_trained: int, vision_exported: int, language_layers: int) -> dict:
    """The papers' anchors at LLaVA-1.5's depth or deeper (13B); proportionally placed for shallower models."""
    def scale(layer: int, depth: int, paper_depth: int, limit: int) -> int:
        at = layer if depth >= paper_depth else round(layer * depth / paper_depth)
        return max(0, min(limit - 1, at))

    sparse = []
    for layer in PAPER_ANCHORS["sparsevlm"]:
        at = scale(layer, language_layers, PAPER_LANGUAGE_LAYERS, language_layers)
        if sparse and at <= sparse[-1]:
            at = sparse[-1] + 1
        if at < language_layers:
            sparse.append(at)
    return {
        "ficoco_v": {"start_layer": scale(PAPER_ANCHORS["ficoco_v"], vision_trained, PAPER_VISION_LAYERS, vision_exported)},
        "tome": {"start_layer": PAPER_ANCHORS["tome"]},
        "ficoco_l": {"start_layer": scale(PAPER_ANCHORS["ficoco_l"], language_layers, PAPER_LANGUAGE_LAYERS, language_layers)},
        "sparsevlm": {"layers": sparse},
        "fastv": {"k": max(1, scale(PAPER_ANCHORS["fastv"], language_layers, PAPER_LANGUAGE_LAYERS, language_layers))},
    }


def preprocess_config(proc: Optional[dict], image_size: int, resize_override: Optional[str]) -> dict:
    """LLaVA's preprocessing as the checkpoint's image processor says (or as `resize_override` forces)."""
    proc = proc or {}
    mean = [float(x) for x in proc.get("image_mean", CLIP_MEAN)]
    std = [float(x) for x in proc.get("image_std", CLIP_STD)]
    resample = _RESAMPLE.get(int(proc.get("resample", 3)))
    if resample is None:
        raise ExportError(f"preprocessor_config resample {proc.get('resample')!r} is not nearest (0), bilinear (2) or bicubic (3)")
    if proc.get("do_pad"):
        resize = "pad_to_square"
    elif proc.get("do_center_crop", True):
        resize = "shortest_edge_center_crop"
    else:
        resize = "squash"
    if resize_override:
        resize = resize_override
    crop = proc.get("crop_size") or {}
    size = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    if size != image_size:
        raise ExportError(f"preprocessor crop size {size} differs from the vision tower's image_size {image_size}")
    return {
        "size": image_size, "resize": resize, "resample": resample,
        # LLaVA's expand2square pads with the mean colour, truncated to 0-255 (int(x * 255)).
        "pad_color": [int(m * 255) for m in mean],
        # transformers' convert_rgb composites transparent images onto white.
        "alpha_background": [255, 255, 255],
        "rescale": float(proc.get("rescale_factor", 1 / 255)), "mean": mean, "std": std,
    }


def bundle_config(folder: Path, model_id: str, io_dtype: str, max_new_tokens: int,
                  resize_override: Optional[str] = None) -> dict:
    config = _read_json(folder / "config.json")
    if config is None:
        raise ExportError(f"{folder} has no config.json")
    if config.get("model_type") != "llava":
        raise ExportError(f"config.json model_type is {config.get('model_type')!r}; this exporter reads LLaVA-1.5 "
                          "(LlavaForConditionalGeneration) checkpoints")
    vc, tc = config.get("vision_config") or {}, config.get("text_config") or {}
    if vc.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ExportError(f"vision_config.model_type {vc.get('model_type')!r}: only CLIP vision towers are supported")
    if tc.get("model_type", "llama") != "llama":
        raise ExportError(f"text_config.model_type {tc.get('model_type')!r}: only LLaMA/Vicuna decoders are supported")
    if config.get("vision_feature_select_strategy", "default") != "default":
        raise ExportError("vision_feature_select_strategy 'full' keeps CLS in the feature; the bundle drops it (LLaVA-1.5 uses 'default')")
    if config.get("projector_hidden_act", "gelu") != "gelu":
        raise ExportError(f"projector_hidden_act {config['projector_hidden_act']!r}: the bundle's projector is Linear-GELU(erf)-Linear")
    if config.get("multimodal_projector_bias", True) is not True:
        raise ExportError("multimodal_projector_bias false: the bundle's projector has biases")
    if tc.get("hidden_act", "silu") != "silu":
        raise ExportError(f"text_config.hidden_act {tc['hidden_act']!r}: the bundle's MLP is SwiGLU (silu)")
    if tc.get("mlp_bias"):
        raise ExportError("text_config.mlp_bias true: the bundle's decoder MLP has no biases")
    activation = vc.get("hidden_act", "quick_gelu")
    if activation not in ("gelu", "quick_gelu"):
        raise ExportError(f"vision_config.hidden_act {activation!r}: only gelu and quick_gelu are supported")

    trained = int(vc.get("num_hidden_layers", 24))
    exported = _feature_layers(config.get("vision_feature_layer", -2), trained)
    image_size = int(vc.get("image_size", 336))
    heads = int(tc.get("num_attention_heads", 32))
    hidden = int(tc.get("hidden_size", 4096))
    language = {
        "hidden_size": hidden, "num_layers": int(tc.get("num_hidden_layers", 32)), "num_heads": heads,
        "num_kv_heads": int(tc.get("num_key_value_heads") or heads),
        "head_dim": int(tc.get("head_dim") or hidden // heads),
        "intermediate_size": int(tc.get("intermediate_size", 11008)), "rope_theta": _rope_theta(tc),
        "rms_norm_eps": float(tc.get("rms_norm_eps", 1e-5)), "vocab_size": int(tc.get("vocab_size", 32000)),
        "max_positions": int(tc.get("max_position_embeddings", 4096)),
    }
    tok_cfg = _read_json(folder / "tokenizer_config.json") or {}
    bos = int(tc.get("bos_token_id", 1) if tc.get("bos_token_id") is not None else 1)
    # eos_token_id may be one id or a list (newer configs); generation_config.json may add more stop ids.
    stop_ids = _ids(tc.get("eos_token_id")) + _ids((_read_json(folder / "generation_config.json") or {}).get("eos_token_id"))
    stop_ids = list(dict.fromkeys(stop_ids)) or [2]
    eos = stop_ids[0]
    pad = tc.get("pad_token_id", config.get("pad_token_id"))
    return {
        "model_id": model_id,
        "io_dtype": io_dtype,
        "vision": {
            "image_size": image_size, "patch_size": int(vc.get("patch_size", 14)),
            "hidden_size": int(vc.get("hidden_size", 1024)), "num_heads": int(vc.get("num_attention_heads", 16)),
            "intermediate_size": int(vc.get("intermediate_size", 4096)), "num_layers": exported,
            "trained_layers": trained, "class_token": True, "layer_norm_eps": float(vc.get("layer_norm_eps", 1e-5)),
            "activation": activation,
        },
        "projector": {"type": "mlp2x_gelu"},
        "language": language,
        "preprocess": preprocess_config(_read_json(folder / "preprocessor_config.json"), image_size, resize_override),
        "prompt": {"template": VICUNA_V1_TEMPLATE, "image_token": IMAGE_TOKEN,
                   "add_bos": bool(tok_cfg.get("add_bos_token", True))},
        "tokens": {"bos_id": bos, "eos_id": eos, "pad_id": int(pad) if pad is not None else 0, "stop_ids": stop_ids},
        "generation": {"max_new_tokens": max_new_tokens},
        "reduction": scaled_anchors(trained, exported, language["num_layers"]),
    }
