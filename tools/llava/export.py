"""Exports a Hugging Face LLaVA-1.5 checkpoint (LlavaForConditionalGeneration) to a model bundle.

    python3 tools/llava/export.py /path/to/llava-1.5-7b-hf --out models/llava-1.5-7b
    python3 tools/llava/export.py CKPT --out DIR --io-dtype float16      # GPU bundle (fp16 hidden states,
                                                                          # append KV caches, fp16 MatMuls)

The folder needs config.json, safetensors weights (one file or shards with an index), tokenizer.json
and, optionally, tokenizer_config.json and preprocessor_config.json. No transformers or torch is needed:
weights are memory-mapped with numpy and written through the shared writer (tools/bundle/writer.py).

What is exported (docs/llava.md): the CLIP tower up to the feature layer (penultimate for LLaVA-1.5:
layers 0..22 of 24), patch tokens only, the mlp2x_gelu projector, every decoder layer as attn / scores /
mlp graphs, the head; weights stored float16 (the released checkpoints are fp16; bf16 checkpoints are
rounded to fp16, with a range check); a layer's attn+scores graphs share `layer_NN.data` once its
weights pass 4 MiB, so 7B graphs stay under protobuf's 2 GB limit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.bundle.config import BundleError  # noqa: E402
from tools.bundle.writer import write_bundle  # noqa: E402
from tools.llava.hf_config import ExportError, bundle_config  # noqa: E402
from tools.llava.hf_names import UNUSED, bundle_name, vision_layer  # noqa: E402
from tools.llava.safetensors_np import CheckpointError, iter_tensors  # noqa: E402


def load_weights(folder: Path, vision_layers: int, tie_word_embeddings: bool) -> dict:
    """{writer name: ndarray} for every tensor the bundle uses; unknown tensors are an error."""
    weights, unknown = {}, []
    for hf_name, arr in iter_tensors(folder):
        name = bundle_name(hf_name)
        if name is None:
            unknown.append(hf_name)
            continue
        layer = vision_layer(name) if name is not UNUSED else None
        if name is UNUSED or (layer is not None and layer >= vision_layers):
            continue  # never read by LLaVA's feature (layers after the feature layer, CLIP's post-layernorm)
        weights[name] = arr
    if unknown:
        raise ExportError(f"{len(unknown)} checkpoint tensors have no place in a LLaVA-1.5 bundle "
                          f"(not a LlavaForConditionalGeneration checkpoint?): {unknown[:8]}")
    if "language.lm_head.weight" not in weights and tie_word_embeddings:
        weights["language.lm_head.weight"] = weights.get("language.embed_tokens.weight")
    return weights


def export(checkpoint: Path, out: Path, model_id: str, io_dtype: str = "float32", weight_dtype: str = "float16",
           external_data="auto", max_new_tokens: int = 256, resize=None, overwrite: bool = False,
           kv_cache: str = "present", matmul_dtype: str = "float32") -> dict:
    import json

    cfg = bundle_config(checkpoint, model_id, io_dtype, max_new_tokens, resize)
    if kv_cache != "present":
        cfg["language"]["kv_cache"] = kv_cache
    hf = json.loads((checkpoint / "config.json").read_text())
    tie = bool(hf.get("tie_word_embeddings") or (hf.get("text_config") or {}).get("tie_word_embeddings"))
    weights = load_weights(checkpoint, cfg["vision"]["num_layers"], tie)
    tokenizer_path = checkpoint / "tokenizer.json"
    if not tokenizer_path.exists():
        raise ExportError(f"{checkpoint} has no tokenizer.json. Llama checkpoints that ship only tokenizer.model "
                          "can be converted where transformers and sentencepiece are installed: "
                          "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")
    source = {
        "producer": "tools/llava/export.py",
        "checkpoint": checkpoint.name,
        "architecture": (hf.get("architectures") or ["LlavaForConditionalGeneration"])[0],
        "transformers_version": hf.get("transformers_version"),
        "vision_feature_layer": hf.get("vision_feature_layer", -2),
        "image_token_index": hf.get("image_token_index", hf.get("image_token_id")),
        "matmul_dtype": matmul_dtype,
    }
    return write_bundle(out, cfg, weights, tokenizer_path.read_text(encoding="utf-8"), source,
                        weight_dtype=weight_dtype, external_data=external_data, overwrite=overwrite,
                        matmul_dtype=matmul_dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Hugging Face LLaVA-1.5 checkpoint -> model bundle (docs/llava.md)")
    ap.add_argument("checkpoint", type=Path, help="folder with config.json, *.safetensors, tokenizer.json")
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    ap.add_argument("--model-id", help="manifest model_id (default: the checkpoint folder's name)")
    ap.add_argument("--io-dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of hidden states and KV caches between graphs (float16 for GPU bundles)")
    ap.add_argument("--weight-dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--resize", choices=("pad_to_square", "shortest_edge_center_crop", "squash"),
                    help="override the checkpoint's image processor (LLaVA-1.5's own evaluation pads to square)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    # float16 io marks a GPU bundle; its defaults are the settings measured on the H100 (docs/llava.md).
    ap.add_argument("--matmul-dtype", choices=("auto", "float32", "float16"), default="auto",
                    help="float16: products with the weights run in half precision on the stored fp16 weights "
                         "(no float32 weight copies on the GPU); norms and softmax stay float32. "
                         "auto: float16 with --io-dtype float16 and fp16 weights, else float32")
    ap.add_argument("--kv-cache", choices=("auto", "present", "append"), default="auto",
                    help="append: attention returns only the new cache rows (sequence-major caches), for GPU "
                         "bundles, where every graph output is copied to host memory (docs/bundle-format.md). "
                         "auto: append with --io-dtype float16, else present")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    args = ap.parse_args(argv)

    started = time.time()
    gpu = args.io_dtype == "float16"
    kv_cache = args.kv_cache if args.kv_cache != "auto" else ("append" if gpu else "present")
    matmul_dtype = args.matmul_dtype if args.matmul_dtype != "auto" else (
        "float16" if gpu and args.weight_dtype == "float16" else "float32")
    external = {"auto": "auto", "yes": True, "no": False}[args.external_data]
    model_id = args.model_id or args.checkpoint.resolve().name
    try:
        manifest = export(args.checkpoint, args.out, model_id, args.io_dtype, args.weight_dtype, external,
                          args.max_new_tokens, args.resize, args.overwrite, kv_cache, matmul_dtype)
    except (ExportError, BundleError, CheckpointError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 2
    total = sum(f["bytes"] for f in manifest["files"])
    v, lang = manifest["vision"], manifest["language"]
    print(f"wrote {args.out}: {manifest['model_id']} {manifest['content_hash']}\n"
          f"  vision {v['num_layers']}/{v['trained_layers']} layers, {v['num_patches']} patches; language "
          f"{lang['num_layers']} layers, vocab {lang['vocab_size']}; io {manifest['io_dtype']}; "
          f"kv cache {lang.get('kv_cache', 'present')}; matmuls {matmul_dtype}; "
          f"preprocess {manifest['preprocess']['resize']}\n"
          f"  {len(manifest['files'])} files, {total / 2**20:.1f} MiB, {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
