"""Makes the tiny LLaVA-1.5 fixture: a randomly initialised `LlavaForConditionalGeneration` checkpoint and
Hugging Face's own outputs for it.

Runs where transformers 5.x and tokenizers are installed (the GPU host; the dev machine has neither):

    python3 tools/llava/make_fixture.py --out /tmp/llava-tiny

writes
    hf/          config.json, model.safetensors (fp16, like the released checkpoints), tokenizer.json,
                 tokenizer_config.json, preprocessor_config.json, generation_config.json
    images/      the PNGs the references were computed from
    reference.json + reference.bin   token ids, greedy tokens, per-step logits and stage tensors

`tools/llava/export.py hf/ --out bundle/` then turns the checkpoint into a bundle without transformers.

The model is the LLaVA-1.5 architecture at toy width: CLIP tower (quick_gelu, pre-layernorm, q/k/v/o
biases) read at its penultimate layer without CLS, the mlp2x_gelu projector, a LLaMA decoder with
grouped-query attention. Every parameter is drawn explicitly (LayerNorm/RMSNorm gains and biases
included) so a mis-mapped weight cannot hide behind an initialisation of ones and zeros, and the scale of
lm_head keeps greedy top-2 logit margins far above the runtimes' numerical differences. Weights are
rounded to float16 before the references are computed, so the fp16 bundle holds exactly the weights the
references used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
TEMPLATE = SYSTEM + " USER: <image>\n{question} ASSISTANT:"
IMAGE_TOKEN = "<image>"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

IMAGE_SIZE, PATCH = 56, 7
VOCAB = 640
ITEMS = [
    ("red_circle.png", "What is in the image?"),
    ("two_squares.png", "What color is the square on the left?"),
    ("stripes.png", "Describe the picture in detail."),
]
MAX_NEW_TOKENS = 12


# ---------------------------------------------------------------------------------------------------
# tokenizer: Llama-2 layout (BPE with byte fallback, "▁" word marker prepended by the normalizer)


def corpus() -> list:
    colors = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange", "gray", "pink"]
    shapes = ["circle", "square", "triangle", "star", "stripe", "line", "dot", "box"]
    lines = [SYSTEM, "USER: ASSISTANT:"] * 20
    for c in colors:
        for s in shapes:
            lines += [f"What color is the {s}? It is {c}.", f"How many {s}s are there? There is one {c} {s}.",
                      f"Is the {s} on the left or on the right? The {c} {s} is on the left.",
                      f"Describe the picture in detail. A {c} {s} on a plain background."]
    lines += [q for _, q in ITEMS] * 10
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Training only: split at the word marker so no merge spans two words (as SentencePiece trains).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 1, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    data = json.loads(tok.to_str())
    data["pre_tokenizer"] = None  # the released Llama-2 tokenizer.json has none
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([IMAGE_TOKEN])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


# ---------------------------------------------------------------------------------------------------
# images


def make_images(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    s = IMAGE_SIZE
    out = {}
    img = Image.new("RGB", (s, s), (235, 235, 220))
    ImageDraw.Draw(img).ellipse([10, 12, 44, 46], fill=(220, 30, 40))
    out["red_circle.png"] = img
    img = Image.new("RGB", (s, s), (30, 30, 60))
    d = ImageDraw.Draw(img)
    d.rectangle([4, 16, 24, 36], fill=(40, 200, 60))
    d.rectangle([32, 20, 50, 38], fill=(250, 220, 30))
    out["two_squares.png"] = img
    arr = np.zeros((s, s, 3), np.uint8)
    for y in range(s):
        arr[y, :, :] = (255, 140, 0) if (y // 7) % 2 == 0 else (60, 60, 200)
    arr[:, 20:24, :] = (250, 250, 250)
    out["stripes.png"] = Image.fromarray(arr)
    # Not square and not the model's size: exercises resize + crop / pad in preprocessing tests.
    img = Image.new("RGB", (90, 60), (200, 200, 255))
    d = ImageDraw.Draw(img)
    d.ellipse([5, 5, 55, 55], fill=(10, 120, 10))
    d.rectangle([60, 10, 85, 50], fill=(120, 10, 10))
    out["wide.png"] = img
    for name, im in out.items():
        im.save(folder / name)
    return out


# ---------------------------------------------------------------------------------------------------
# model


def build_model(vocab_size: int, image_token_id: int, seed: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                              projection_dim=64)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    grid = IMAGE_SIZE // PATCH
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=grid * grid, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    try:
        model.set_attn_implementation("eager")
    except Exception as err:  # older API: the config attribute
        print(f"set_attn_implementation failed ({err}); setting config._attn_implementation", flush=True)
        model.config._attn_implementation = "eager"
    randomize(model, seed)
    return model


@torch.no_grad()
def randomize(model, seed: int, device: str = "cpu") -> None:
    """Draws every parameter (see the module doc); `device` only changes where the numbers are drawn."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32, device=device)

    norm_params = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm) or "RMSNorm" in type(mod).__name__:
            for p in mod.parameters(recurse=False):
                norm_params.add(id(p))
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if id(p) in norm_params:
            value = 1.0 + 0.2 * randn(p.shape) if name.endswith("weight") else 0.1 * randn(p.shape)
        elif name.endswith("lm_head.weight"):
            value = randn(p.shape) * (4.0 / math.sqrt(p.shape[1]))
        elif name.endswith("embed_tokens.weight") or name.endswith("class_embedding"):
            value = randn(p.shape)
        elif name.endswith("position_embedding.weight"):
            value = 0.5 * randn(p.shape)
        elif p.dim() == 4:  # patch convolution
            value = randn(p.shape) / math.sqrt(p[0].numel())
        elif p.dim() == 2:
            value = randn(p.shape) / math.sqrt(p.shape[1])
        else:  # biases
            value = 0.1 * randn(p.shape)
        # fp16-representable, so the fp16 checkpoint and bundle hold exactly these values
        p.copy_(value.half().float())


# ---------------------------------------------------------------------------------------------------
# references


class Bin:
    """Concatenated little-endian float32 tensors; the JSON records shape and float offset."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, arr) -> dict:
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
        entry = {"shape": list(a.shape), "offset": self.size}
        self.parts.append(a.reshape(-1))
        self.size += a.size
        return entry

    def write(self, path: Path) -> None:
        np.concatenate(self.parts).astype("<f4").tofile(path)


def pixel_values_for(img: Image.Image) -> torch.Tensor:
    """LLaVA-1.5's preprocessing for an image already at the model's size: rescale and normalise only."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def bundle_rule_ids(tok, question: str, image_token_id: int, num_patches: int):
    """docs/bundle-format.md prompt assembly: [bos] + enc(prefix) + image span + enc(suffix), no specials."""
    prefix, suffix = TEMPLATE.split(IMAGE_TOKEN)
    suffix = suffix.replace("{question}", question)
    pre = tok.encode(prefix, add_special_tokens=False).ids
    suf = tok.encode(suffix, add_special_tokens=False).ids
    bos = tok.token_to_id("<s>")
    return [bos] + pre, suf, [bos] + pre + [image_token_id] * num_patches + suf


def preprocess_references(images: dict, bin_: Bin) -> list:
    """Hugging Face image processors on the non-square image: CLIP's crop and LLaVA's pad mode."""
    out = []
    try:
        from transformers import CLIPImageProcessor
        proc = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                  do_center_crop=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
        pv = proc(images=images["wide.png"], return_tensors="pt")["pixel_values"]
        out.append({"image": "images/wide.png", "resize": "shortest_edge_center_crop", "processor": type(proc).__name__,
                    "pixel_values": bin_.add(pv.numpy())})
    except Exception as err:
        print(f"CLIPImageProcessor reference skipped: {err!r}", flush=True)
    try:
        from transformers import LlavaImageProcessor
        proc = LlavaImageProcessor(do_pad=True, size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=True,
                                   resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
        pv = proc(images=images["wide.png"], return_tensors="pt")["pixel_values"]
        out.append({"image": "images/wide.png", "resize": "pad_to_square", "processor": type(proc).__name__,
                    "pad_color": [int(m * 255) for m in CLIP_MEAN], "pixel_values": bin_.add(pv.numpy())})
    except Exception as err:
        print(f"LlavaImageProcessor reference skipped: {err!r}", flush=True)
    return out


def hf_processor_ids(hf_tok, prompt_question: str, image) -> list:
    """What LlavaProcessor makes of the same prompt (whole-string tokenisation), for the record."""
    from transformers import CLIPImageProcessor, LlavaProcessor
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                             crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                          tokenizer=hf_tok, patch_size=PATCH, vision_feature_select_strategy="default",
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    text = TEMPLATE.replace("{question}", prompt_question)
    return proc(text=text, images=image, return_tensors="pt")["input_ids"][0].tolist()


@torch.no_grad()
def references(model, tok, hf_tok, images: dict, image_token_id: int, bin_: Bin) -> list:
    from transformers import GenerationConfig

    cfg = model.config
    num_patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    gen_cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    items = []
    for n, (image_name, question) in enumerate(ITEMS):
        img = images[image_name]
        pv = pixel_values_for(img)
        prefix, suffix, ids = bundle_rule_ids(tok, question, image_token_id, num_patches)
        input_ids = torch.tensor([ids])
        # generation runs the full max_new_tokens (eos not a stop here), so every step has a reference
        out = model.generate(input_ids=input_ids, pixel_values=pv, attention_mask=torch.ones_like(input_ids),
                             generation_config=gen_cfg, output_logits=True, return_dict_in_generate=True)
        new_tokens = out.sequences[0, input_ids.shape[1]:].tolist()
        step_logits = torch.cat([l.float() for l in out.logits], 0)  # [steps, V]
        top2 = torch.topk(step_logits, 2, dim=-1).values
        margins = (top2[:, 0] - top2[:, 1]).tolist()

        # One full forward over prompt + answer: the same logits without the KV cache (self-check).
        full = model(input_ids=out.sequences, pixel_values=pv, attention_mask=torch.ones_like(out.sequences),
                     output_hidden_states=True)
        prompt_len = input_ids.shape[1]
        recheck = full.logits[0, prompt_len - 1:prompt_len - 1 + len(new_tokens)].float()
        cache_vs_full = float((recheck - step_logits).abs().max())

        vision_out = model.model.vision_tower(pv, output_hidden_states=True)
        hs = vision_out.hidden_states  # embeddings (after pre_layrnorm) + one per layer
        feature = hs[cfg.vision_feature_layer][:, 1:]
        embeds = model.model.multi_modal_projector(feature)

        tensors = {
            "pixel_values": bin_.add(pv.numpy()),
            "vision/embed:hidden_out": bin_.add(hs[0][0].numpy()),
            "vision/feature": bin_.add(feature[0].numpy()),
            "vision/projector:embeds": bin_.add(embeds[0].numpy()),
            "language/head:logits(prefill_last)": bin_.add(step_logits[0].numpy()),
            "decode_logits": bin_.add(step_logits.numpy()),
        }
        n_vision = len(hs) - 1
        for layer in range(n_vision + cfg.vision_feature_layer + 1):
            tensors[f"vision/layer_{layer:02d}.mlp:hidden_out"] = bin_.add(hs[layer + 1][0].numpy())
        assert len(hs) == cfg.vision_config.num_hidden_layers + 1, f"vision hidden_states has {len(hs)} entries"
        if n == 0:
            # HF's language hidden_states over the prompt, by index: [0] = embeddings, [i] = after layer
            # i-1, except that the last entry is taken after the final norm.
            for k, h in enumerate(full.hidden_states):
                tensors[f"language/hf_hidden_states[{k}]"] = bin_.add(h[0, :prompt_len].numpy())
        try:
            hf_ids = hf_processor_ids(hf_tok, question, img)
        except Exception as err:
            print(f"LlavaProcessor ids skipped: {err!r}", flush=True)
            hf_ids = None
        items.append({
            "image": f"images/{image_name}", "question": question,
            "input_ids": {"prefix": prefix, "suffix": suffix}, "image_start": len(prefix),
            "prompt_length": prompt_len, "hf_processor_input_ids": hf_ids,
            "hf_processor_ids_match": hf_ids == ids if hf_ids is not None else None,
            "tokens": new_tokens, "answer": tok.decode(new_tokens), "top2_margins": margins,
            "cache_vs_full_max_abs": cache_vs_full, "tensors": tensors,
        })
        print(f"item {n}: prompt {prompt_len} tokens, answer {new_tokens}, min margin {min(margins):.4f}, "
              f"cache-vs-full {cache_vs_full:.2e}, processor ids match: {items[-1]['hf_processor_ids_match']}", flush=True)
    return items


# ---------------------------------------------------------------------------------------------------


def save_tokenizer(tok, folder: Path):
    """tokenizer.json as the `tokenizers` library writes it, plus transformers' own config files."""
    tok.save(str(folder / "tokenizer.json"))
    hf_tok = None
    try:
        from transformers import PreTrainedTokenizerFast
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                         pad_token="<unk>", model_max_length=512)
        tmp = folder / "_tok"
        hf_tok.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            if f.name != "tokenizer.json":
                f.rename(folder / f.name)
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    except Exception as err:
        print(f"transformers tokenizer wrapper failed ({err!r}); writing tokenizer_config.json by hand", flush=True)
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "model_max_length": 512}, indent=2))
    return hf_tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    import transformers

    out: Path = args.out
    hf_dir = out / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(4)

    tok = build_tokenizer()
    image_token_id = tok.token_to_id(IMAGE_TOKEN)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; vocab {vocab_size}, "
          f"<image> = {image_token_id}", flush=True)
    hf_tok = save_tokenizer(tok, hf_dir)

    model = build_model(vocab_size, image_token_id, args.seed)
    model.generation_config.do_sample = False
    model.save_pretrained(str(hf_dir))
    # Released LLaVA-1.5 checkpoints ship fp16 safetensors; store ours the same way (values are fp16-exact).
    from safetensors.torch import load_file, save_file
    st = hf_dir / "model.safetensors"
    sd = load_file(str(st))
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(st), metadata={"format": "pt"})
    print("checkpoint keys:", sorted(sd)[:3], "...", len(sd), flush=True)
    (hf_dir / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE}}, indent=2) + "\n")

    images = make_images(out / "images")
    bin_ = Bin()
    items = references(model, tok, hf_tok, images, image_token_id, bin_)
    preprocess = preprocess_references(images, bin_)
    bin_.write(out / "reference.bin")
    ref = {
        "model_id": "llava-tiny", "bin": "reference.bin", "producer": "tools/llava/make_fixture.py",
        "transformers": transformers.__version__, "torch": torch.__version__, "seed": args.seed,
        "dtype": "float32 compute, fp16-exact weights, eager attention", "template": TEMPLATE,
        "max_new_tokens": MAX_NEW_TOKENS, "image_token_id": image_token_id, "items": items, "preprocess": preprocess,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
