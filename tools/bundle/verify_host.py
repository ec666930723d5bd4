"""Cross-checks the bundle tooling where onnx 1.23, onnxruntime, tokenizers and transformers exist (the GPU host).

    python3 -m tools.bundle.verify_host [OUT_DIR]

1. Rebuilds the random bundles with this machine's onnx/numpy/torch and reports whether every file is
   byte-identical to the committed fixtures (the writer's output must not depend on the onnx version).
2. Runs every reference case through Python onnxruntime on both bundles (max|a-b| / max|ref| per output).
3. Encodes the reference prompt with Python `tokenizers` (must equal the committed ids).
4. Checks reference_torch.py against Hugging Face: CLIPVisionModel (hidden states after each layer) and
   LlamaForCausalLM (hidden states after each layer and logits) with the same weights.
Prints one JSON report; exits 1 on any failure.
"""

from __future__ import annotations

import base64
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import make_random
from . import reference_torch as ref

FIXTURES = make_random.ROOT / "test" / "fixtures"


def _tensor(t: dict) -> np.ndarray:
    dtype = np.int64 if t["dtype"] == "int64" else np.float32
    return np.frombuffer(base64.b64decode(t["data"]), dtype=dtype).reshape(t["shape"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    if b.size == 0:
        return 0.0 if a.size == 0 else float("inf")
    return float(np.max(np.abs(a.astype(np.float32) - b)) / max(np.max(np.abs(b)), 1e-30))


def rebuild_identical(work: Path) -> dict:
    saved = make_random.BUNDLE_DIR, make_random.BUNDLE_F16_DIR, make_random.REFERENCE_PATH
    make_random.BUNDLE_DIR, make_random.BUNDLE_F16_DIR = work / "random-bundle", work / "random-bundle-f16"
    make_random.REFERENCE_PATH = work / "random-bundle-reference.json"
    try:
        make_random.main()
    finally:
        make_random.BUNDLE_DIR, make_random.BUNDLE_F16_DIR, make_random.REFERENCE_PATH = saved
    report = {}
    for name in ("random-bundle", "random-bundle-f16"):
        files = json.loads((FIXTURES / name / "manifest.json").read_text())["files"]
        differing = [f["path"] for f in files if not filecmp.cmp(FIXTURES / name / f["path"], work / name / f["path"], shallow=False)]
        report[name] = {"identical": not differing, "differing": differing}
    new_ref = json.loads((work / "random-bundle-reference.json").read_text())
    old_ref = json.loads((FIXTURES / "random-bundle-reference.json").read_text())
    worst = max(_rel(_tensor(new_ref["tensors"][k]), _tensor(old_ref["tensors"][k]).astype(np.float32))
                for k in old_ref["tensors"] if old_ref["tensors"][k]["dtype"] == "float32")
    report["reference_max_rel_change"] = worst
    return report


def onnxruntime_cases(reference: dict) -> dict:
    import onnxruntime as ort

    report = {"onnxruntime": ort.__version__}
    for name, spec in reference["bundles"].items():
        manifest = json.loads((FIXTURES / name / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        worst = 0.0
        for case in reference["cases"]:
            graph = manifest["graphs"][case["stage"]]
            sess = ort.InferenceSession(str(FIXTURES / name / graph["path"]), opts, providers=["CPUExecutionProvider"])
            feeds = {}
            for decl in graph["inputs"]:
                x = _tensor(reference["tensors"][case["inputs"][decl["name"]]])
                feeds[decl["name"]] = x.astype(np.float16) if decl["dtype"] == "float16" else x
            outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            for out, tid in case["outputs"].items():
                worst = max(worst, _rel(outs[out], _tensor(reference["tensors"][tid])))
        report[name] = {"worst_rel": worst, "tolerance": spec["tolerance"], "ok": worst <= spec["tolerance"]}
    return report


def tokenizer_ids(reference: dict) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURES / "random-bundle" / "tokenizer.json"))
    p = reference["prompt"]
    got = [tok.encode(p["prefix"], add_special_tokens=False).ids, tok.encode(p["suffix"], add_special_tokens=False).ids]
    return {"ok": got == [p["prefix_ids"], p["suffix_ids"]], "ids": got}


def hf_agreement() -> dict:
    """reference_torch vs transformers' CLIP vision tower and LLaMA on the random bundle's weights."""
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    manifest = json.loads((FIXTURES / "random-bundle" / "manifest.json").read_text())
    tokenizer = make_random.build_wordpiece_tokenizer(make_random.WORDS)
    weights = make_random.random_weights(make_random.random_config(manifest["language"]["vocab_size"]),
                                         np.random.default_rng(make_random.SEED))
    w = ref.as_weights(weights)
    v, lang = manifest["vision"], manifest["language"]
    report = {"transformers": transformers.__version__}

    clip = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"], num_hidden_layers=v["trained_layers"],
        num_attention_heads=v["num_heads"], image_size=v["image_size"], patch_size=v["patch_size"],
        hidden_act=v["activation"], layer_norm_eps=v["layer_norm_eps"], attn_implementation="eager")).eval()
    sd = {"vision_model.embeddings.class_embedding": w["vision.class_embedding"],
          "vision_model.embeddings.patch_embedding.weight": w["vision.patch_embed.weight"],
          "vision_model.embeddings.position_embedding.weight": w["vision.position_embedding"],
          "vision_model.pre_layrnorm.weight": w["vision.pre_layernorm.weight"],
          "vision_model.pre_layrnorm.bias": w["vision.pre_layernorm.bias"]}
    hf_names = {"ln1": "layer_norm1", "ln2": "layer_norm2", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                "v_proj": "self_attn.v_proj", "o_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(v["trained_layers"]):
        for ours, theirs in hf_names.items():
            for kind in ("weight", "bias"):
                sd[f"vision_model.encoder.layers.{i}.{theirs}.{kind}"] = w[f"vision.layers.{i}.{ours}.{kind}"]
    if "vision_model.pre_layrnorm.weight" not in clip.state_dict():  # transformers 5 drops the prefix
        sd = {k.removeprefix("vision_model."): x for k, x in sd.items()}
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    pixels = torch.randn(1, 3, v["image_size"], v["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
        h = ref.vision_embed(manifest, w, pixels)
        errs = [_rel(h.numpy(), hs[0].numpy())]
        zero = torch.zeros(h.shape[:2])
        for i in range(v["num_layers"]):
            h = ref.vision_mlp(manifest, w, i, ref.vision_attn(manifest, w, i, h, zero))
            errs.append(_rel(h.numpy(), hs[i + 1].numpy()))
    report["clip"] = {"rel_per_layer": errs,
                      "missing": [k for k in missing if "post_layernorm" not in k and "position_ids" not in k],
                      "unexpected": list(unexpected)}

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"], intermediate_size=lang["intermediate_size"],
        num_hidden_layers=lang["num_layers"], num_attention_heads=lang["num_heads"],
        num_key_value_heads=lang["num_kv_heads"], head_dim=lang["head_dim"], rms_norm_eps=lang["rms_norm_eps"],
        rope_theta=lang["rope_theta"], max_position_embeddings=lang["max_positions"], tie_word_embeddings=False,
        attn_implementation="eager")).eval()
    sd = {"model.embed_tokens.weight": w["language.embed_tokens.weight"], "model.norm.weight": w["language.norm.weight"],
          "lm_head.weight": w["language.lm_head.weight"]}
    for i in range(lang["num_layers"]):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"model.layers.{i}.self_attn.{name}.weight"] = w[f"language.layers.{i}.{name}.weight"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[f"model.layers.{i}.mlp.{name}.weight"] = w[f"language.layers.{i}.{name}.weight"]
        for name in ("input_layernorm", "post_attention_layernorm"):
            sd[f"model.layers.{i}.{name}.weight"] = w[f"language.layers.{i}.{name}.weight"]
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    ids = torch.tensor([[2] + make_random.encode_wordpiece(tokenizer, "user: what color is the circle? assistant:")])
    t = ids.shape[1]
    with torch.no_grad():
        out = llama(input_ids=ids, output_hidden_states=True)
        h = ref.language_embed(manifest, w, ids)
        pos, mask = torch.arange(t)[None], torch.ones(1, t, dtype=torch.int64)
        pk, pv = ref.empty_cache(manifest)
        errs = []
        for i in range(lang["num_layers"]):
            a = ref.language_attn(manifest, w, i, h, pos, pk, pv, mask)
            h = ref.language_mlp(manifest, w, i, a["hidden_out"])
            if i + 1 < lang["num_layers"]:  # HF's last hidden state is after the final norm
                errs.append(_rel(h.numpy(), out.hidden_states[i + 1].numpy()))
        logits = ref.language_head(manifest, w, h)
    report["llama"] = {"rel_per_layer": errs, "logits_rel": _rel(logits.numpy(), out.logits.numpy()),
                       "missing": [k for k in missing if "rotary" not in k], "unexpected": list(unexpected)}
    return report


def main() -> int:
    reference = json.loads((FIXTURES / "random-bundle-reference.json").read_text())
    report = {"onnx": __import__("onnx").__version__, "numpy": np.__version__, "torch": torch.__version__}
    work = Path(tempfile.mkdtemp())
    try:
        report["rebuild"] = rebuild_identical(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["onnxruntime_cases"] = onnxruntime_cases(reference)
    report["tokenizers"] = tokenizer_ids(reference)
    report["hf"] = hf_agreement()
    hf = report["hf"]
    ok = (all(report["onnxruntime_cases"][b]["ok"] for b in reference["bundles"]) and report["tokenizers"]["ok"]
          and max(hf["clip"]["rel_per_layer"]) < 1e-4 and max(hf["llama"]["rel_per_layer"] + [hf["llama"]["logits_rel"]]) < 1e-4
          and not (hf["clip"]["missing"] or hf["llama"]["missing"]))
    report["ok"] = ok
    text = json.dumps(report, indent=1)
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
