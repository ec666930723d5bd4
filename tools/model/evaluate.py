"""Accuracy of TinyLlava (PyTorch, float32) on the committed eval items, per question type.

    python3 -m tools.model.evaluate --bundle models/tiny-llava-shapes --out runs/eval.json
    python3 -m tools.model.evaluate --ckpt runs/ckpt --out runs/eval.json      (also the CLS attention check)

Conditions: the real image; a blank image (uniform grey 128, the no-image baseline); and a random
12.5% selection of the 196 visual tokens (25 kept in order, positions contiguous), which must cost
accuracy if answers depend on small regions. Greedy decoding, full recompute per step, up to 4 tokens,
stopping at </s>; an answer is correct when the decoded text equals the gold word.
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bundle.tokenizer import build_wordpiece_tokenizer, encode_wordpiece  # noqa: E402
from tools.model.eval_items import encode_parts, load_items, pixel_values  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402

KEEP_FRACTION = 0.125
MAX_NEW = 4


def tokenizer_dict():
    return build_wordpiece_tokenizer(V.WORDS[len(V.SPECIALS):])


@torch.no_grad()
def greedy(model, pixels, prefix_ids, suffix_ids, keep=None, max_new=MAX_NEW):
    """pixels [B,3,H,W]; suffix_ids long [B, L] (equal lengths); returns generated id lists."""
    device = pixels.device
    prefix = torch.tensor([V.BOS] + prefix_ids, device=device)
    features, _ = model.image_features(pixels)
    embeds = model.projector(features)
    if keep is not None:
        embeds = embeds.gather(1, keep.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    seq = suffix_ids
    out = [[] for _ in range(pixels.shape[0])]
    done = torch.zeros(pixels.shape[0], dtype=torch.bool, device=device)
    first_logits = None
    for _ in range(max_new):
        h = model.language(model.assemble(prefix, embeds, seq))
        logits = model.language.logits(h[:, -1])
        if first_logits is None:
            first_logits = logits.float().cpu()
        nxt = logits.argmax(-1)
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                out[b].append(t)
        done |= nxt == V.EOS
        if bool(done.all()):
            break
        seq = torch.cat([seq, nxt.unsqueeze(1)], 1)
    return [[t for t in ids if t != V.EOS] for ids in out], first_logits


def answer_text(ids):
    return " ".join(V.WORDS[i] if i < len(V.WORDS) else f"[{i}]" for i in ids)


def run_condition(model, items, eval_dir, device, condition, encode, batch=64, seed=0):
    """Answers per item for one condition: 'image', 'blank' or 'random'."""
    groups = defaultdict(list)
    prompts = []
    for idx, item in enumerate(items):
        prefix_ids, suffix_ids = encode_parts(encode, item["question"])
        prompts.append((prefix_ids, suffix_ids))
        groups[len(suffix_ids)].append(idx)
    answers = [None] * len(items)
    logits_all = [None] * len(items)
    grid = model.config.num_patches
    keep_n = int(round(grid * KEEP_FRACTION))
    for _, idxs in sorted(groups.items()):
        for s in range(0, len(idxs), batch):
            chunk = idxs[s : s + batch]
            if condition == "blank":
                px = np.full((len(chunk), 3, 112, 112), (128 / 255 - 0.5) / 0.5, dtype=np.float32)
            else:
                px = np.concatenate([pixel_values(Path(eval_dir) / items[i]["image"]) for i in chunk])
            keep = None
            if condition == "random":
                rows = [np.sort(np.random.default_rng(seed * 100003 + i).choice(grid, keep_n, replace=False)) for i in chunk]
                keep = torch.tensor(np.stack(rows), dtype=torch.long, device=device)
            suffix = torch.tensor([prompts[i][1] for i in chunk], device=device)
            ids, first = greedy(model, torch.from_numpy(px).to(device), prompts[chunk[0]][0], suffix, keep)
            for j, i in enumerate(chunk):
                answers[i] = answer_text(ids[j])
                logits_all[i] = first[j]
    return answers, logits_all


def accuracy(items, answers):
    per = defaultdict(lambda: [0, 0])
    for item, ans in zip(items, answers):
        per[item["type"]][0] += int(ans == item["answer"])
        per[item["type"]][1] += 1
    out = {t: round(per[t][0] / per[t][1], 4) for t in V.QUESTION_TYPES if per[t][1]}
    out["overall"] = round(sum(p[0] for p in per.values()) / sum(p[1] for p in per.values()), 4)
    return out


def chance(items):
    """Uniform guessing over each type's answer words, and the majority answer's share in the items."""
    options = {"color": len(V.COLORS), "shape": len(V.SHAPES), "size": 2, "exist": 2, "count": len(V.NUMBERS),
               "relation": 2, "compare": 2}
    out = {}
    for t in V.QUESTION_TYPES:
        answers = [it["answer"] for it in items if it["type"] == t]
        if answers:
            top = max(answers.count(a) for a in set(answers))
            out[t] = {"uniform": round(1 / options[t], 4), "majority": round(top / len(answers), 4)}
    return out


@torch.no_grad()
def cls_attention(model, device, n=256, seed=1):
    """CLS -> patch attention (head mean, softmax) per ViT layer on generated scenes: the mass on object
    patches (>= 50% covered), the share of such patches, and per-patch attention object/background
    (background = < 5% covered)."""
    from tools.vqa import scenes as S
    from tools.vqa.batch import normalize

    gen = torch.Generator(device=device).manual_seed(seed)
    scenes = S.sample_scenes(n, gen, device)
    px = normalize(S.render(scenes, gen, device))
    cover = S.patch_coverage(scenes)
    obj, bg = cover >= 0.5, cover < 0.05
    h = model.vision.embed(px)
    out = []
    for i, layer in enumerate(model.vision.layers):
        probs = layer.attn_probs(h)[:, 0, 1:]  # CLS row, patch columns [n, 196]
        mass = (probs * obj).sum(1) / probs.sum(1)
        per_obj = (probs * obj).sum(1) / obj.sum(1).clamp(min=1)
        per_bg = (probs * bg).sum(1) / bg.sum(1).clamp(min=1)
        out.append({"layer": i, "object_mass": round(float(mass.mean()), 4),
                    "object_patch_share": round(float(obj.float().mean()), 4),
                    "object_over_background": round(float((per_obj / per_bg.clamp(min=1e-9)).mean()), 2)})
        h = layer(h)
    return out


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt")
    src.add_argument("--bundle")
    ap.add_argument("--eval-dir", default="models/tiny-llava-shapes/eval")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--answers-out", default=None, help="write the per-item answers (image condition) as JSONL")
    args = ap.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.ckpt:
        from tools.model.checkpoint import load_model
        model, meta = load_model(args.ckpt, args.device)
    else:
        from tools.model.from_bundle import load_model_from_bundle
        model, meta = load_model_from_bundle(args.bundle, args.device)
    items = load_items(args.eval_dir)
    if args.limit:
        items = items[: args.limit]
    tok = tokenizer_dict()
    encode = lambda text: encode_wordpiece(tok, text)  # noqa: E731
    t0 = time.time()
    result = {"items": len(items), "chance": chance(items)}
    answers, _ = run_condition(model, items, args.eval_dir, args.device, "image", encode)
    result["accuracy"] = accuracy(items, answers)
    result["blank_image"] = accuracy(items, run_condition(model, items, args.eval_dir, args.device, "blank", encode)[0])
    result["random_12_5pct_tokens"] = accuracy(
        items, run_condition(model, items, args.eval_dir, args.device, "random", encode)[0])
    rel = defaultdict(lambda: [0, 0])
    for item, ans in zip(items, answers):
        if item["type"] == "relation":
            kind = next(k for k in ("left", "right", "above", "below") if f" {k} " in f" {item['question']} ")
            rel[kind][0] += int(ans == item["answer"])
            rel[kind][1] += 1
    result["relation_by_kind"] = {k: round(a / b, 4) for k, (a, b) in rel.items()}
    if args.ckpt:
        result["cls_attention"] = cls_attention(model, args.device)
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.answers_out:
        with open(args.answers_out, "w") as f:
            for item, ans in zip(items, answers):
                f.write(json.dumps({"image": item["image"], "question": item["question"], "answer": ans}) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
