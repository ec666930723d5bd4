"""Export a TinyLlava checkpoint to the bundle with the shared writer.

    /usr/bin/python3 -m tools.model.export --ckpt runs/ckpt --out models/tiny-llava-shapes [--overwrite]

The vision tower is exported up to its feature layer (7 of 8 layers), fp16 weights, float32 io, each
layer's attn and scores graphs sharing one `layer_NN.data`. Before writing, the tokenizer built from the
task vocabulary is checked to give every task word the id training used.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bundle.tokenizer import build_wordpiece_tokenizer, encode_wordpiece, tokenizer_vocab_size  # noqa: E402
from tools.bundle.writer import write_bundle  # noqa: E402
from tools.model import checkpoint  # noqa: E402
from tools.model.eval_items import IMAGE_TOKEN, MEAN, STD, TEMPLATE  # noqa: E402
from tools.model.model import exported_state  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402

MODEL_ID = "tiny-llava-shapes"


def bundle_config(c, vocab_size):
    return {
        "model_id": MODEL_ID,
        "io_dtype": "float32",
        "vision": {"image_size": c.image_size, "patch_size": c.patch_size, "hidden_size": c.vision_hidden,
                   "num_heads": c.vision_heads, "intermediate_size": c.vision_intermediate,
                   "num_layers": c.feature_layer + 1, "trained_layers": c.vision_layers, "class_token": True,
                   "layer_norm_eps": c.layer_norm_eps, "activation": "gelu"},
        "projector": {"type": "mlp2x_gelu"},
        "language": {"hidden_size": c.hidden, "num_layers": c.layers, "num_heads": c.heads,
                     "num_kv_heads": c.kv_heads, "intermediate_size": c.intermediate, "rope_theta": c.rope_theta,
                     "rms_norm_eps": c.rms_norm_eps, "vocab_size": vocab_size, "max_positions": c.max_positions},
        "preprocess": {"size": c.image_size, "resize": "squash", "resample": "bicubic", "pad_color": [128, 128, 128],
                       "alpha_background": [255, 255, 255], "rescale": 1 / 255, "mean": list(MEAN), "std": list(STD)},
        "prompt": {"template": TEMPLATE, "image_token": IMAGE_TOKEN, "add_bos": True},
        "tokens": {"bos_id": V.BOS, "eos_id": V.EOS, "pad_id": V.PAD, "stop_ids": [V.EOS]},
        "generation": {"max_new_tokens": 8},
        # Anchors for 7 exported ViT layers and 12 decoder layers (LLaVA-1.5's scaled to this depth).
        "reduction": {"ficoco_v": {"start_layer": 2}, "tome": {"start_layer": 0}, "ficoco_l": {"start_layer": 2},
                      "sparsevlm": {"layers": [1, 3, 6]}, "fastv": {"k": 2}},
    }


def check_tokenizer(tok):
    for word_id, word in enumerate(V.WORDS):
        if word_id < len(V.SPECIALS):
            continue
        got = encode_wordpiece(tok, word)
        if got != [word_id]:
            raise SystemExit(f"tokenizer gives {got} for {word!r}, training used [{word_id}]")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="runs/ckpt")
    ap.add_argument("--out", default=f"models/{MODEL_ID}")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    model, meta = checkpoint.load_model(args.ckpt)
    tok = build_wordpiece_tokenizer(V.WORDS[len(V.SPECIALS):])
    check_tokenizer(tok)
    vocab_size = tokenizer_vocab_size(tok)
    if vocab_size != model.config.vocab_size:
        raise SystemExit(f"tokenizer has {vocab_size} ids, the model {model.config.vocab_size}")
    source = {"producer": "tools/model/export.py", "training": "tools/model/train.py",
              "checkpoint_step": meta["step"], "train_examples": meta["examples"],
              "train_seconds": meta["train_seconds"], "train_device": meta.get("device"),
              "report": "docs/model-report.md", "task": "tools/vqa (generated shapes VQA)"}
    manifest = write_bundle(args.out, bundle_config(model.config, vocab_size), exported_state(model), tok, source,
                            weight_dtype="float16", external_data=True, overwrite=args.overwrite)
    total = sum(f["bytes"] for f in manifest["files"])
    print(f"wrote {args.out}: {len(manifest['files'])} files, {total / 1e6:.2f} MB, {manifest['content_hash']}")


if __name__ == "__main__":
    main()
