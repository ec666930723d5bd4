"""Bundle config: fill derived fields, check consistency, and list the weights a config requires.

The config dict carries the manifest's sections (`model_id`, `io_dtype`, `vision`, `projector`,
`language`, `preprocess`, `prompt`, `tokens`, `generation`, `reduction`). Derived fields (`vision.grid`,
`vision.num_patches`, `*.head_dim`) are filled when absent and checked when present, so exporters can
pass either.
"""

from __future__ import annotations

import copy
from typing import Dict, Tuple


class BundleError(ValueError):
    """A config, weight dict or tokenizer that cannot become a valid bundle; the message says what to fix."""


def _need(section: dict, where: str, *keys: str) -> None:
    missing = [k for k in keys if k not in section]
    if missing:
        raise BundleError(f"config.{where} is missing {', '.join(missing)}")


def _derive(section: dict, where: str, key: str, value) -> None:
    if key not in section:
        section[key] = value
    elif section[key] != value:
        raise BundleError(f"config.{where}.{key} is {section[key]!r} but the other fields imply {value!r}")


def normalize_config(config: dict) -> dict:
    cfg = copy.deepcopy(config)
    sections = ("model_id", "io_dtype", "vision", "projector", "language", "preprocess", "prompt", "tokens",
                "generation", "reduction")
    _need(cfg, "(top level)", *sections)
    unknown = sorted(set(cfg) - set(sections))
    if unknown:
        raise BundleError(f"config has unknown top-level keys {unknown}; expected {list(sections)}")
    if cfg["io_dtype"] not in ("float32", "float16"):
        raise BundleError(f"config.io_dtype must be 'float32' or 'float16', got {cfg['io_dtype']!r}")

    v = cfg["vision"]
    _need(v, "vision", "image_size", "patch_size", "hidden_size", "num_heads", "intermediate_size", "num_layers",
          "trained_layers", "class_token", "layer_norm_eps", "activation")
    if v["image_size"] % v["patch_size"]:
        raise BundleError(f"config.vision.image_size {v['image_size']} is not a multiple of patch_size {v['patch_size']}")
    grid = v["image_size"] // v["patch_size"]
    _derive(v, "vision", "grid", grid)
    _derive(v, "vision", "num_patches", grid * grid)
    if v["hidden_size"] % v["num_heads"]:
        raise BundleError(f"config.vision.hidden_size {v['hidden_size']} is not divisible by num_heads {v['num_heads']}")
    _derive(v, "vision", "head_dim", v["hidden_size"] // v["num_heads"])
    if not 1 <= v["num_layers"] <= v["trained_layers"]:
        raise BundleError(f"config.vision.num_layers ({v['num_layers']}, exported) must be in 1..trained_layers ({v['trained_layers']})")
    if v["activation"] not in ("gelu", "quick_gelu"):
        raise BundleError(f"config.vision.activation must be 'gelu' or 'quick_gelu', got {v['activation']!r}")

    lang = cfg["language"]
    _need(lang, "language", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
          "rope_theta", "rms_norm_eps", "vocab_size", "max_positions")
    if lang["num_heads"] % lang["num_kv_heads"]:
        raise BundleError(f"config.language.num_heads {lang['num_heads']} is not a multiple of num_kv_heads {lang['num_kv_heads']}")
    if "head_dim" not in lang:
        if lang["hidden_size"] % lang["num_heads"]:
            raise BundleError("config.language.head_dim is required when hidden_size is not divisible by num_heads")
        lang["head_dim"] = lang["hidden_size"] // lang["num_heads"]
    kv = lang.get("kv_cache", "present")
    if kv not in ("present", "append"):
        raise BundleError(f"config.language.kv_cache must be 'present' or 'append', got {kv!r}")
    if lang["head_dim"] % 2:
        raise BundleError(f"config.language.head_dim must be even for rotate-half RoPE, got {lang['head_dim']}")

    pj = cfg["projector"]
    _need(pj, "projector", "type")
    if pj["type"] != "mlp2x_gelu":
        raise BundleError(f"config.projector.type must be 'mlp2x_gelu', got {pj['type']!r}")
    _derive(pj, "projector", "input_size", v["hidden_size"])
    _derive(pj, "projector", "output_size", lang["hidden_size"])

    prompt = cfg["prompt"]
    _need(prompt, "prompt", "template", "image_token", "add_bos")
    tpl, image = prompt["template"], prompt["image_token"]
    if tpl.count(image) != 1 or tpl.count("{question}") != 1:
        raise BundleError(f"config.prompt.template must contain {image!r} once and '{{question}}' once, got {tpl!r}")
    if tpl.index("{question}") < tpl.index(image):
        raise BundleError("config.prompt.template must put '{question}' after the image token (it is substituted in the suffix)")

    tokens = cfg["tokens"]
    _need(tokens, "tokens", "bos_id", "eos_id", "pad_id", "stop_ids")
    for key in ("bos_id", "eos_id", "pad_id"):
        if not 0 <= tokens[key] < lang["vocab_size"]:
            raise BundleError(f"config.tokens.{key} {tokens[key]} is outside the vocabulary (0..{lang['vocab_size'] - 1})")
    bad = [t for t in tokens["stop_ids"] if not 0 <= t < lang["vocab_size"]]
    if bad or not tokens["stop_ids"]:
        raise BundleError(f"config.tokens.stop_ids must be non-empty ids inside the vocabulary, bad: {bad}")

    _check_reduction(cfg["reduction"], v["num_layers"], lang["num_layers"])
    return cfg


def _check_reduction(red: dict, vision_layers: int, language_layers: int) -> None:
    _need(red, "reduction", "ficoco_v", "tome", "ficoco_l", "sparsevlm", "fastv")

    def in_range(value, limit, where):
        if not isinstance(value, int) or not 0 <= value < limit:
            raise BundleError(f"config.reduction.{where} = {value!r} must be a layer index in 0..{limit - 1}")

    in_range(red["ficoco_v"].get("start_layer"), vision_layers, "ficoco_v.start_layer")
    in_range(red["tome"].get("start_layer"), vision_layers, "tome.start_layer")
    in_range(red["ficoco_l"].get("start_layer"), language_layers, "ficoco_l.start_layer")
    layers = red["sparsevlm"].get("layers")
    if not isinstance(layers, list) or not layers or layers != sorted(set(layers)):
        raise BundleError(f"config.reduction.sparsevlm.layers must be a non-empty increasing list, got {layers!r}")
    for n, layer in enumerate(layers):
        in_range(layer, language_layers, f"sparsevlm.layers[{n}]")
    k = red["fastv"].get("k")
    if not isinstance(k, int) or not 1 <= k < language_layers:
        raise BundleError(f"config.reduction.fastv.k = {k!r} must be in 1..{language_layers - 1} (tokens drop before layer k)")


# ---------------------------------------------------------------------------------------------------
# weights

Shape = Tuple[int, ...]


def weight_shapes(cfg: dict) -> Tuple[Dict[str, Shape], Dict[str, Shape]]:
    """(required, optional) weight names -> shapes for the exported stages (PyTorch Linear [out, in])."""
    v, lang = cfg["vision"], cfg["language"]
    dv, p, iv = v["hidden_size"], v["patch_size"], v["intermediate_size"]
    tokens = v["num_patches"] + (1 if v["class_token"] else 0)
    req: Dict[str, Shape] = {
        "vision.patch_embed.weight": (dv, 3, p, p),
        "vision.position_embedding": (tokens, dv),
    }
    opt: Dict[str, Shape] = {"vision.pre_layernorm.weight": (dv,), "vision.pre_layernorm.bias": (dv,)}
    if v["class_token"]:
        req["vision.class_embedding"] = (dv,)
    for i in range(v["num_layers"]):
        pre = f"vision.layers.{i}"
        for ln in ("ln1", "ln2"):
            req[f"{pre}.{ln}.weight"] = (dv,)
            req[f"{pre}.{ln}.bias"] = (dv,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            req[f"{pre}.{proj}.weight"] = (dv, dv)
            opt[f"{pre}.{proj}.bias"] = (dv,)
        req[f"{pre}.fc1.weight"], req[f"{pre}.fc1.bias"] = (iv, dv), (iv,)
        req[f"{pre}.fc2.weight"], req[f"{pre}.fc2.bias"] = (dv, iv), (dv,)

    dl = lang["hidden_size"]
    req["projector.linear1.weight"], req["projector.linear1.bias"] = (dl, dv), (dl,)
    req["projector.linear2.weight"], req["projector.linear2.bias"] = (dl, dl), (dl,)

    qd, kvd, il = lang["num_heads"] * lang["head_dim"], lang["num_kv_heads"] * lang["head_dim"], lang["intermediate_size"]
    req["language.embed_tokens.weight"] = (lang["vocab_size"], dl)
    for i in range(lang["num_layers"]):
        pre = f"language.layers.{i}"
        req[f"{pre}.input_layernorm.weight"] = (dl,)
        req[f"{pre}.post_attention_layernorm.weight"] = (dl,)
        for proj, out, inp in (("q_proj", qd, dl), ("k_proj", kvd, dl), ("v_proj", kvd, dl), ("o_proj", dl, qd)):
            req[f"{pre}.{proj}.weight"] = (out, inp)
            opt[f"{pre}.{proj}.bias"] = (out,)
        req[f"{pre}.gate_proj.weight"] = (il, dl)
        req[f"{pre}.up_proj.weight"] = (il, dl)
        req[f"{pre}.down_proj.weight"] = (dl, il)
    req["language.norm.weight"] = (dl,)
    req["language.lm_head.weight"] = (lang["vocab_size"], dl)
    return req, opt


def _is_unexported_vision_layer(name: str, cfg: dict) -> bool:
    parts = name.split(".")
    if len(parts) < 3 or parts[:2] != ["vision", "layers"] or not parts[2].isdigit():
        return False
    return cfg["vision"]["num_layers"] <= int(parts[2]) < cfg["vision"]["trained_layers"]


def check_weights(cfg: dict, weights: dict):
    """Returns {name: float16/float32 ndarray} of the weights the bundle uses; raises BundleError listing every problem."""
    import numpy as np

    req, opt = weight_shapes(cfg)
    problems = []
    missing = sorted(set(req) - set(weights))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    unknown = sorted(n for n in weights if n not in req and n not in opt and not _is_unexported_vision_layer(n, cfg))
    if unknown:
        problems.append(f"unknown {len(unknown)}: {', '.join(unknown[:12])}{' ...' if len(unknown) > 12 else ''}")
    # The pre-layernorm is all or nothing.
    if ("vision.pre_layernorm.weight" in weights) != ("vision.pre_layernorm.bias" in weights):
        problems.append("vision.pre_layernorm needs both weight and bias (or neither, for no pre-layernorm)")
    out = {}
    for name, shape in {**req, **opt}.items():
        if name not in weights:
            continue
        try:
            arr = np.asarray(weights[name])
        except (TypeError, RuntimeError) as err:  # e.g. a bfloat16 or CUDA torch tensor
            problems.append(f"{name} is not convertible to a numpy array ({err}); pass .float().cpu().numpy()")
            continue
        if tuple(arr.shape) != shape:
            problems.append(f"{name} has shape {list(arr.shape)}, expected {list(shape)}")
            continue
        if arr.dtype not in (np.float16, np.float32):
            arr = arr.astype(np.float32)  # float64 and friends; float16/32 stay as given (no 7B-sized copies)
        if not np.all(np.isfinite(arr)):
            problems.append(f"{name} contains NaN or infinity")
            continue
        out[name] = arr
    if problems:
        raise BundleError("weights do not match the config:\n  " + "\n  ".join(problems))
    return out
