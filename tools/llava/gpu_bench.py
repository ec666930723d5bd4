"""LLaVA-1.5-7B architecture with random weights on the GPU host: checkpoint, transformers reference, comparison.

Each step runs on its own, under 10 minutes on an H100 (no network, transformers 5.x):

    python3 tools/llava/gpu_bench.py make --out /tmp/l7                 # hf/ checkpoint (fp16, 14 GB) + images/
    python3 tools/llava/gpu_bench.py reference --dir /tmp/l7            # ref.json + ref_logits.npy (HF fp32 greedy)
    python3 tools/llava/export.py /tmp/l7/hf --out /tmp/l7/bundle --io-dtype float16 --model-id llava-1.5-7b-random-gpu
    node tools/llava/ts_run.cjs --model /tmp/l7/bundle --items /tmp/l7/ref.json --out /tmp/l7/ts.json ...
    python3 tools/llava/gpu_bench.py compare --dir /tmp/l7              # HF vs the TypeScript runtime

The weights are drawn as in make_fixture.py (every parameter random, lm_head scaled so greedy choices
are not near-ties), from a fixed seed, on the GPU, then rounded to fp16: the checkpoint, transformers
and the bundle all hold the same numbers. The tokenizer is the fixture's Llama-layout BPE, padded to
LLaVA-1.5's 32000 entries plus `<image>` (32000) and `<pad>` (32001); the embedding has 32064 rows, as
llava-1.5-7b-hf.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.llava.hf_config import VICUNA_V1_TEMPLATE, IMAGE_TOKEN, CLIP_MEAN, CLIP_STD  # noqa: E402

FIXTURE_TOKENIZER = ROOT / "test" / "fixtures" / "llava-tiny" / "hf" / "tokenizer.json"
IMAGE_SIZE = 336
ITEMS = [
    ("circle.png", "What is in the image?"),
    ("squares.png", "What color is the square on the left?"),
    ("stripes.png", "Describe the picture in detail."),
]


# ---------------------------------------------------------------------------------------------------
# make


def padded_tokenizer(out: Path) -> dict:
    """The fixture tokenizer with unreachable filler words up to id 31999, then <image> and <pad>."""
    tok = json.loads(FIXTURE_TOKENIZER.read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    added = [t for t in tok["added_tokens"] if t["content"] == IMAGE_TOKEN]
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != IMAGE_TOKEN]
    vocab.pop(IMAGE_TOKEN, None)
    next_id = max(vocab.values()) + 1
    while next_id < 32000:
        vocab[f"▁w{next_id}"] = next_id  # no merge produces these: they only appear when decoded
        next_id += 1
    template = dict(added[0]) if added else {"single_word": False, "lstrip": False, "rstrip": False,
                                             "normalized": False, "special": True}
    for content, token_id in ((IMAGE_TOKEN, 32000), ("<pad>", 32001)):
        vocab[content] = token_id
        tok["added_tokens"].append({**template, "id": token_id, "content": content})
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "add_bos_token": True, "model_max_length": 4096}, indent=2))
    return tok


def make_images(folder: Path) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    s = IMAGE_SIZE
    img = Image.new("RGB", (s, s), (235, 235, 220))
    ImageDraw.Draw(img).ellipse([60, 70, 270, 280], fill=(220, 30, 40))
    img.save(folder / "circle.png")
    img = Image.new("RGB", (s, s), (30, 30, 60))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 100, 150, 230], fill=(40, 200, 60))
    d.rectangle([190, 120, 310, 240], fill=(250, 220, 30))
    img.save(folder / "squares.png")
    arr = np.zeros((s, s, 3), np.uint8)
    for y in range(s):
        arr[y] = (255, 140, 0) if (y // 42) % 2 == 0 else (60, 60, 200)
    arr[:, 120:144] = (250, 250, 250)
    Image.fromarray(arr).save(folder / "stripes.png")


def cmd_make(args) -> None:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from tools.llava.make_fixture import randomize

    hf = args.out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    padded_tokenizer(hf)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=IMAGE_SIZE, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                              projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=32001, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config).eval()
    randomize(model, args.seed, device="cuda")
    model.half()
    print(f"built and drew {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in {time.time() - t0:.0f} s", flush=True)
    model.save_pretrained(str(hf), max_shard_size="5GB")
    (hf / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE}}, indent=2))
    make_images(args.out / "images")
    print(f"wrote {hf} in {time.time() - t0:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------------
# reference


def prompt_ids(tok, question: str):
    prefix, suffix = VICUNA_V1_TEMPLATE.split(IMAGE_TOKEN)
    suffix = suffix.replace("{question}", question)
    return [1] + tok.encode(prefix, add_special_tokens=False).ids, tok.encode(suffix, add_special_tokens=False).ids


def pixel_values(path: Path):
    import torch
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def cmd_reference(args) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    d: Path = args.dir
    tok = Tokenizer.from_file(str(d / "hf" / "tokenizer.json"))
    t0 = time.time()
    model = LlavaForConditionalGeneration.from_pretrained(str(d / "hf"), dtype=torch.float32, device_map="cuda").eval()
    print(f"loaded fp32 in {time.time() - t0:.0f} s", flush=True)
    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=args.max_new_tokens, eos_token_id=None,
                           pad_token_id=32001, output_logits=True, return_dict_in_generate=True)
    items, logits_all = [], []
    for image, question in ITEMS:
        prefix, suffix = prompt_ids(tok, question)
        ids = torch.tensor([prefix + [32000] * 576 + suffix], device="cuda")
        pv = pixel_values(d / "images" / image).cuda()
        with torch.no_grad():
            out = model.generate(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids), generation_config=gen)
        logits = torch.cat([x.float() for x in out.logits]).cpu().numpy()
        top2 = np.sort(logits, axis=-1)[:, -2:]
        items.append({"image": str(d / "images" / image), "question": question, "prefix": prefix, "suffix": suffix,
                      "prompt_length": ids.shape[1], "tokens": out.sequences[0, ids.shape[1]:].tolist(),
                      "top2_margins": (top2[:, 1] - top2[:, 0]).tolist(), "logits_max_abs": float(np.abs(logits).max())})
        logits_all.append(logits)
        print(f"{image}: fp32 tokens {items[-1]['tokens']}, min margin {min(items[-1]['top2_margins']):.3f}", flush=True)
    np.save(d / "ref_logits.npy", np.stack(logits_all))

    # transformers' own speed at fp16 (sdpa), for the benchmark table: prefill and per-token decode.
    model.half()
    model.set_attn_implementation("sdpa")
    timing = []
    for image, question in ITEMS[:1]:
        prefix, suffix = prompt_ids(tok, question)
        ids = torch.tensor([prefix + [32000] * 576 + suffix], device="cuda")
        pv = pixel_values(d / "images" / image).cuda().half()
        fp16_tokens = None
        for n_new in (1, args.max_new_tokens):
            runs = []
            for _ in range(4):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.no_grad():
                    o = model.generate(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids),
                                       generation_config=GenerationConfig(do_sample=False, max_new_tokens=n_new,
                                                                          eos_token_id=None, pad_token_id=32001))
                torch.cuda.synchronize()
                runs.append(time.perf_counter() - t)
            timing.append({"new_tokens": n_new, "median_s": statistics.median(runs[1:]), "runs_s": runs})
            fp16_tokens = o[0, ids.shape[1]:].tolist()
        items[0]["hf_fp16_tokens"] = fp16_tokens
    first, full = timing[0]["median_s"], timing[1]["median_s"]
    per_token = (full - first) / (args.max_new_tokens - 1)
    result = {"model": "llava-1.5-7b architecture, random weights (fp16-exact), seed in hf/",
              "reference": "transformers fp32 (sdpa) greedy", "max_new_tokens": args.max_new_tokens, "items": items,
              "hf_fp16_timing": {"prefill_plus_first_token_s": first, "decode_s_per_token": per_token, "runs": timing,
                                 "device": torch.cuda.get_device_name(0), "attn": "sdpa"}}
    (d / "ref.json").write_text(json.dumps(result, indent=1))
    print(f"transformers fp16 sdpa: prefill+1 token {first * 1e3:.1f} ms, decode {per_token * 1e3:.1f} ms/token "
          f"(fp16 tokens of item 0: {fp16_tokens})", flush=True)


# ---------------------------------------------------------------------------------------------------
# compare


def cmd_compare(args) -> None:
    d: Path = args.dir
    ref = json.loads((d / "ref.json").read_text())
    ref_logits = np.load(d / "ref_logits.npy")
    ts = json.loads((d / "ts.json").read_text())
    print(f"reference: {ref['reference']}; TypeScript runtime: {ts.get('provider')} {ts.get('io_dtype')}")
    for run in ts["runs"]:
        item = ref["items"][run["item"]]
        line = f"[{run['policy']}] {Path(item['image']).name}: "
        if "error" in run:
            print(line + "ERROR " + run["error"])
            continue
        tokens = run["tokens"]
        agree = 0
        while agree < min(len(tokens), len(item["tokens"])) and tokens[agree] == item["tokens"][agree]:
            agree += 1
        # first step whose HF margin is below what fp16 hidden states can move a logit by
        limit = next((i for i, m in enumerate(item["top2_margins"]) if m < args.margin), len(item["tokens"]))
        line += f"tokens agree {agree}/{len(item['tokens'])} (well-separated prefix {limit})"
        if run.get("logits_file"):
            ours = np.fromfile(d / run["logits_file"], "<f4").reshape(run["logits_shape"])
            steps = min(len(ours), agree + 1, ref_logits.shape[1])
            diffs = [float(np.abs(ours[s] - ref_logits[run["item"], s]).max()) for s in range(steps)]
            scale = float(np.abs(ref_logits[run["item"], 0]).max())
            line += f"; logits max|diff| step0 {diffs[0]:.2e} (max|HF| {scale:.2f}), worst over {steps} steps {max(diffs):.2e}"
        if run.get("visual_tokens") is not None:
            line += f"; visual tokens {run['visual_tokens']}"
        if run.get("timing"):
            line += f"; {run['timing']}"
        print(line)
    print(f"transformers fp16 timing: {json.dumps(ref['hf_fp16_timing'], default=str)[:400]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=20241)
    p = sub.add_parser("reference")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p = sub.add_parser("compare")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--margin", type=float, default=0.05)
    args = ap.parse_args()
    {"make": cmd_make, "reference": cmd_reference, "compare": cmd_compare}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
