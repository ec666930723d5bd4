"""Writes the random-weight test bundle and its torch reference outputs.

    python3 -m tools.bundle.make_random            # from the repository root

-> test/fixtures/random-bundle/            (a complete bundle, tiny dims, fixed seed, < 1 MB)
-> test/fixtures/random-bundle-f16/        (the same weights with io_dtype float16 and embedded weights)
-> test/fixtures/random-bundle-append/     (random-bundle-f16 with language.kv_cache "append": caches
                                            sequence-major, attention returns only the new rows)
-> test/fixtures/random-bundle-gpu/        (random-bundle-append with float16 MatMuls on the stored
                                            weights: export.py's GPU settings)
-> test/fixtures/random-bundle-reference.json
   Every stage run once or more on fixed inputs by reference_torch.py (float32, with the same
   fp16-rounded weights the bundle stores). Layout:
     {"tensors": {id: {"dtype", "shape", "data": base64 little-endian}},
      "cases": [{"stage", "label", "inputs": {name: id}, "outputs": {name: id}}], ...}
   Cases chain (a case's input is usually an earlier case's output), but each stage is compared on
   its own reference input, so errors never accumulate.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import reference_torch as ref
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, build_wordpiece_tokenizer, encode_wordpiece, tokenizer_vocab_size
from .writer import write_bundle

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = ROOT / "test" / "fixtures" / "random-bundle"
# The same weights with float16 io and embedded weights: the GPU-bundle variant, exercised on the CPU.
BUNDLE_F16_DIR = ROOT / "test" / "fixtures" / "random-bundle-f16"
# The same again with append KV caches: the runtime must give random-bundle-f16's answers exactly.
BUNDLE_APPEND_DIR = ROOT / "test" / "fixtures" / "random-bundle-append"
# The GPU export settings (append caches, half-precision MatMuls on the stored weights): close to
# random-bundle-f16 within float16 rounding of the products.
BUNDLE_GPU_DIR = ROOT / "test" / "fixtures" / "random-bundle-gpu"
REFERENCE_PATH = ROOT / "test" / "fixtures" / "random-bundle-reference.json"
SEED = 20240611
# float16 carries ~3 significant digits (half an ulp is 4.9e-4 relative); inputs, caches and outputs are
# each rounded once. Measured worst case on this bundle: 7.4e-4.
F16_TOLERANCE = 2e-3
QUESTION = "What color is the small circle?"

WORDS = """user assistant what which how many is are the a an of in on to and there color colour shape
shapes size small large big red green blue yellow purple orange black white gray circle circles square
squares triangle triangles star left right top bottom middle above below next count number yes no one
two three four five six seven eight nine zero""".split()

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def random_config(vocab_size: int) -> dict:
    return {
        "model_id": "random-tiny",
        "io_dtype": "float32",
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_heads": 2, "intermediate_size": 128,
                   "num_layers": 3, "trained_layers": 4, "class_token": True, "layer_norm_eps": 1e-5,
                   "activation": "quick_gelu"},
        "projector": {"type": "mlp2x_gelu"},
        "language": {"hidden_size": 48, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
                     "intermediate_size": 96, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
                     "vocab_size": vocab_size, "max_positions": 256},
        "preprocess": {"size": 32, "resize": "squash", "resample": "bicubic",
                       "pad_color": [round(255 * m) for m in CLIP_MEAN], "alpha_background": [255, 255, 255],
                       "rescale": 1 / 255, "mean": CLIP_MEAN, "std": CLIP_STD},
        "prompt": {"template": "USER: <image>\n{question} ASSISTANT:", "image_token": "<image>", "add_bos": True},
        "tokens": {"bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID, "stop_ids": [EOS_ID]},
        "generation": {"max_new_tokens": 16},
        # Scaled from LLaVA-1.5's anchors (ViT 12 of 23, LLM 5 / 2,6,15 / K=2 of 32) to this depth.
        "reduction": {"ficoco_v": {"start_layer": 1}, "tome": {"start_layer": 0}, "ficoco_l": {"start_layer": 1},
                      "sparsevlm": {"layers": [1, 2]}, "fastv": {"k": 2}},
    }


def random_weights(cfg: dict, rng: np.random.Generator) -> dict:
    """Weights scaled like a trained model's (unit-ish activations), rounded to float16 values."""
    v, lang = cfg["vision"], cfg["language"]
    w = {}

    def linear(name, out, inp, bias=True):
        w[f"{name}.weight"] = rng.normal(0, 1 / math.sqrt(inp), (out, inp))
        if bias:
            w[f"{name}.bias"] = rng.normal(0, 0.1, (out,))

    def norm(name, dim, bias=True):
        w[f"{name}.weight"] = 1 + rng.normal(0, 0.1, (dim,))
        if bias:
            w[f"{name}.bias"] = rng.normal(0, 0.1, (dim,))

    dv, p = v["hidden_size"], v["patch_size"]
    tokens = (v["image_size"] // p) ** 2 + 1
    w["vision.patch_embed.weight"] = rng.normal(0, 1 / math.sqrt(3 * p * p), (dv, 3, p, p))
    w["vision.class_embedding"] = rng.normal(0, 1, (dv,))
    w["vision.position_embedding"] = rng.normal(0, 0.5, (tokens, dv))
    norm("vision.pre_layernorm", dv)
    for i in range(v["trained_layers"]):  # the last trained layer is not exported: the writer skips it
        pre = f"vision.layers.{i}"
        norm(f"{pre}.ln1", dv)
        norm(f"{pre}.ln2", dv)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            linear(f"{pre}.{proj}", dv, dv)
        linear(f"{pre}.fc1", v["intermediate_size"], dv)
        linear(f"{pre}.fc2", dv, v["intermediate_size"])
    dl = lang["hidden_size"]
    linear("projector.linear1", dl, dv)
    linear("projector.linear2", dl, dl)
    w["language.embed_tokens.weight"] = rng.normal(0, 1, (lang["vocab_size"], dl))
    dh = dl // lang["num_heads"]
    for i in range(lang["num_layers"]):
        pre = f"language.layers.{i}"
        norm(f"{pre}.input_layernorm", dl, bias=False)
        norm(f"{pre}.post_attention_layernorm", dl, bias=False)
        linear(f"{pre}.q_proj", lang["num_heads"] * dh, dl, bias=False)
        linear(f"{pre}.k_proj", lang["num_kv_heads"] * dh, dl, bias=False)
        linear(f"{pre}.v_proj", lang["num_kv_heads"] * dh, dl, bias=False)
        linear(f"{pre}.o_proj", dl, lang["num_heads"] * dh, bias=False)
        linear(f"{pre}.gate_proj", lang["intermediate_size"], dl, bias=False)
        linear(f"{pre}.up_proj", lang["intermediate_size"], dl, bias=False)
        linear(f"{pre}.down_proj", dl, lang["intermediate_size"], bias=False)
    norm("language.norm", dl, bias=False)
    linear("language.lm_head", lang["vocab_size"], dl, bias=False)
    return {k: a.astype(np.float16).astype(np.float32) for k, a in w.items()}


# ---------------------------------------------------------------------------------------------------
# reference cases


class Reference:
    def __init__(self):
        self.tensors: dict = {}
        self.cases: list = []
        self._ids: dict = {}

    def tensor(self, value) -> str:
        arr = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._ids:
            tid = f"t{len(self.tensors)}"
            self._ids[key] = tid
            self.tensors[tid] = {"dtype": "int64" if arr.dtype == np.int64 else "float32", "shape": list(arr.shape),
                                 "data": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode("ascii")}
        return self._ids[key]

    def case(self, stage: str, label: str, inputs: dict, outputs: dict) -> None:
        self.cases.append({"stage": stage, "label": label,
                           "inputs": {k: self.tensor(x) for k, x in inputs.items()},
                           "outputs": {k: self.tensor(x) for k, x in outputs.items()}})


def vision_cases(r: Reference, cfg: dict, w: dict, rng: np.random.Generator) -> torch.Tensor:
    v = cfg["vision"]
    pixels = torch.tensor(rng.normal(0, 1, (1, 3, v["image_size"], v["image_size"])), dtype=torch.float32)
    h = ref.vision_embed(cfg, w, pixels)
    r.case("vision/embed", "one image", {"pixel_values": pixels}, {"hidden_out": h})
    for i in range(v["num_layers"]):
        if i == v["num_layers"] - 1:
            # A reduced sequence (CLS kept, some patches dropped), as after a vision-side method.
            h = h[:, [0, 1, 2, 4, 5, 7, 8, 9, 11, 13, 14, 16]]
        t = h.shape[1]
        # Layer 1 carries ToMe's proportional-attention bias log(size); the others a zero bias.
        bias = torch.log(torch.tensor(rng.integers(1, 4, (1, t)), dtype=torch.float32)) if i == 1 else torch.zeros(1, t)
        label = f"T={t}, {'log-size bias' if i == 1 else 'zero bias'}"
        a = ref.vision_attn(cfg, w, i, h, bias)
        r.case(f"vision/layer_{i:02d}.attn", label, {"hidden_in": h, "attn_bias": bias}, {"hidden_out": a})
        r.case(f"vision/layer_{i:02d}.scores", label, {"hidden_in": h, "attn_bias": bias},
               ref.vision_scores(cfg, w, i, h, bias))
        h = ref.vision_mlp(cfg, w, i, a)
        r.case(f"vision/layer_{i:02d}.mlp", label, {"hidden_in": a}, {"hidden_out": h})
    features = h[:, 1:]
    embeds = ref.projector(cfg, w, features)
    r.case("vision/projector", f"N={features.shape[1]}", {"features": features}, {"embeds": embeds})
    return embeds


def language_cases(r: Reference, cfg: dict, w: dict, image_embeds: torch.Tensor, prefix_ids: list,
                   suffix_ids: list) -> None:
    lang = cfg["language"]
    text_ids = torch.tensor([[BOS_ID] + prefix_ids + suffix_ids])
    text = ref.language_embed(cfg, w, text_ids)
    r.case("language/embed", "prompt text", {"input_ids": text_ids}, {"embeds": text})
    n_pre = 1 + len(prefix_ids)
    h = torch.cat([text[:, :n_pre], image_embeds, text[:, n_pre:]], dim=1)
    t = h.shape[1]

    # Prefill: P = 0, contiguous positions, nothing masked.
    pos = torch.arange(t)[None]
    mask = torch.ones(1, t, dtype=torch.int64)
    past_k, past_v = ref.empty_cache(cfg)
    caches = []
    for i in range(lang["num_layers"]):
        feeds = {"hidden_in": h, "position_ids": pos, "past_key": past_k, "past_value": past_v, "attention_mask": mask}
        out = ref.language_attn(cfg, w, i, *feeds.values())
        r.case(f"language/layer_{i:02d}.attn", f"prefill T={t}, P=0", feeds, out)
        r.case(f"language/layer_{i:02d}.scores", f"prefill T={t}, P=0", feeds, ref.language_scores(cfg, w, i, *feeds.values()))
        caches.append((out["present_key"], out["present_value"]))
        h = ref.language_mlp(cfg, w, i, out["hidden_out"])
        r.case(f"language/layer_{i:02d}.mlp", f"prefill T={t}", {"hidden_in": out["hidden_out"]}, {"hidden_out": h})
    logits = ref.language_head(cfg, w, h)
    r.case("language/head", f"prefill T={t}", {"hidden_in": h}, {"logits": logits})

    # One decode step. Layers 0-1 keep the whole cache and mask one image key (index n_pre + 2);
    # layers 2-3 hold a shorter cache (as after a language-side reduction) with renumbered positions.
    next_id = logits[:, -1].argmax(-1, keepdim=True)
    h = ref.language_embed(cfg, w, next_id)
    r.case("language/embed", "decode token", {"input_ids": next_id}, {"embeds": h})
    for i in range(lang["num_layers"]):
        past_k, past_v = caches[i]
        if i < 2:
            mask = torch.ones(1, t + 1, dtype=torch.int64)
            mask[0, n_pre + 2] = 0
            pos, label = torch.tensor([[t]]), f"decode T=1, P={t}, key {n_pre + 2} masked"
        else:
            keep = [j for j in range(t) if not (n_pre <= j < n_pre + 6 and j % 2)]
            past_k, past_v = past_k[:, :, keep], past_v[:, :, keep]
            mask = torch.ones(1, len(keep) + 1, dtype=torch.int64)
            pos, label = torch.tensor([[len(keep)]]), f"decode T=1, P={len(keep)} (reduced cache)"
        feeds = {"hidden_in": h, "position_ids": pos, "past_key": past_k, "past_value": past_v, "attention_mask": mask}
        out = ref.language_attn(cfg, w, i, *feeds.values())
        r.case(f"language/layer_{i:02d}.attn", label, feeds, out)
        r.case(f"language/layer_{i:02d}.scores", label, feeds, ref.language_scores(cfg, w, i, *feeds.values()))
        h = ref.language_mlp(cfg, w, i, out["hidden_out"])
        r.case(f"language/layer_{i:02d}.mlp", "decode T=1", {"hidden_in": out["hidden_out"]}, {"hidden_out": h})
    r.case("language/head", "decode T=1", {"hidden_in": h}, {"logits": ref.language_head(cfg, w, h)})


def main() -> None:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    tokenizer = build_wordpiece_tokenizer(WORDS)
    vocab_size = -(-tokenizer_vocab_size(tokenizer) // 8) * 8  # padded, as real checkpoints often are
    cfg = random_config(vocab_size)
    weights = random_weights(cfg, rng)
    manifest = write_bundle(BUNDLE_DIR, cfg, weights, tokenizer,
                            source={"producer": "tools/bundle/make_random.py", "seed": SEED,
                                    "note": "random weights; for tests of the bundle contract only"},
                            weight_dtype="float16", external_data=True, overwrite=True)

    manifest_f16 = write_bundle(BUNDLE_F16_DIR, {**cfg, "io_dtype": "float16"}, weights, tokenizer,
                                source={"producer": "tools/bundle/make_random.py", "seed": SEED,
                                        "note": "float16-io variant of random-bundle; for tests only"},
                                weight_dtype="float16", external_data=False, overwrite=True)

    append_cfg = {**cfg, "io_dtype": "float16", "language": {**cfg["language"], "kv_cache": "append"}}
    manifest_append = write_bundle(BUNDLE_APPEND_DIR, append_cfg, weights, tokenizer,
                                   source={"producer": "tools/bundle/make_random.py", "seed": SEED,
                                           "note": "random-bundle-f16 with append KV caches; for tests only"},
                                   weight_dtype="float16", external_data=False, overwrite=True)

    manifest_gpu = write_bundle(BUNDLE_GPU_DIR, append_cfg, weights, tokenizer,
                                source={"producer": "tools/bundle/make_random.py", "seed": SEED, "matmul_dtype": "float16",
                                        "note": "random-bundle-append with float16 MatMuls; for tests only"},
                                weight_dtype="float16", external_data=False, overwrite=True, matmul_dtype="float16")

    template, image_token = cfg["prompt"]["template"], cfg["prompt"]["image_token"]
    prefix, suffix = template.split(image_token)
    suffix = suffix.replace("{question}", QUESTION)
    prefix_ids, suffix_ids = encode_wordpiece(tokenizer, prefix), encode_wordpiece(tokenizer, suffix)

    full = manifest  # its sections carry the derived fields (grid, head_dim, ...)
    w = ref.as_weights(weights)
    r = Reference()
    with torch.no_grad():
        image_embeds = vision_cases(r, full, w, rng)
        language_cases(r, full, w, image_embeds, prefix_ids, suffix_ids)
    reference = {
        "description": "Reference outputs of every stage of test/fixtures/random-bundle, computed by "
                       "tools/bundle/reference_torch.py in float32; written by tools/bundle/make_random.py.",
        # max|a-b| <= tolerance * max|ref| per output; float16 io rounds every hidden state and cache entry.
        "bundles": {
            "random-bundle": {"content_hash": manifest["content_hash"], "io_dtype": "float32", "tolerance": 1e-4},
            "random-bundle-f16": {"content_hash": manifest_f16["content_hash"], "io_dtype": "float16",
                                  "tolerance": F16_TOLERANCE},
        },
        "prompt": {"question": QUESTION, "prefix": prefix, "suffix": suffix,
                   "prefix_ids": prefix_ids, "suffix_ids": suffix_ids},
        "cases": r.cases,
        "tensors": r.tensors,
    }
    REFERENCE_PATH.write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")
    for out, man in ((BUNDLE_DIR, manifest), (BUNDLE_F16_DIR, manifest_f16), (BUNDLE_APPEND_DIR, manifest_append),
                      (BUNDLE_GPU_DIR, manifest_gpu)):
        size = sum(f["bytes"] for f in man["files"])
        print(f"wrote {_shown(out)} ({size} bytes, {len(man['graphs'])} graphs, {man['content_hash']})")
    print(f"wrote {_shown(REFERENCE_PATH)} ({len(r.cases)} cases)")


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    main()
