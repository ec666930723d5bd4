"""Write the committed evaluation set: images (PNG, JPEG q95, WebP lossless, mixed) and items.jsonl.

    /usr/bin/python3 -m tools.vqa.make_eval --out models/tiny-llava-shapes/eval

Deterministic (CPU torch, seed TEST_SEED, disjoint from the validation seed 1 and the training seeds
>= 10_000_000). Item i has type QUESTION_TYPES[i % 7] (types interleaved, equal counts), and within a
type the answers are balanced: colours and shapes cycle, yes/no alternate, counts cycle 0..3, and
relation items cycle through left of / right of / above / below. Each image carries 5 consecutive items.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.vqa import scenes as S  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402
from tools.vqa.questions import TYPE_INDEX, make_questions  # noqa: E402

TEST_SEED = 2
QUESTIONS_PER_IMAGE = 5
FORMATS = ["png", "jpg", "webp"]
CANDIDATES = 256


def target(qtype, n):
    """(answer word, relation subtype or None) wanted for the n-th item of a type."""
    if qtype == "color":
        return V.COLORS[n % len(V.COLORS)], None
    if qtype == "shape":
        return V.SHAPES[n % len(V.SHAPES)], None
    if qtype == "size":
        return V.SIZES[n % 2], None
    if qtype == "count":
        return V.NUMBERS[n % 4], None
    if qtype == "relation":
        return V.YES_NO[n % 2], (n // 2) % 4
    return V.YES_NO[n % 2], None  # exist, compare


def question_for(scene, qtype, answer, subtype, gen):
    """First candidate question about `scene` with the wanted answer (and subtype), or None."""
    many = scene.repeat(CANDIDATES)
    types = torch.full((CANDIDATES,), TYPE_INDEX[qtype], dtype=torch.long)
    q = make_questions(many, types, gen, relation_margin=8.0, count_from_present=0.5)
    ok = q["valid"] & (q["answer"] == V.ID[answer])
    if subtype is not None:
        ok &= q["subtype"] == subtype
    hits = ok.nonzero()
    if len(hits) == 0:
        return None
    row = int(hits[0])
    words = q["suffix"][row, : int(q["answer_pos"][row]) - 3].tolist()  # drop "? assistant :"
    return V.question_text(words + [V.ID["?"]])


def save_image(pixels, path, fmt):
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    if fmt == "png":
        image.save(path, format="PNG", optimize=True)
    elif fmt == "jpg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="WEBP", lossless=True, quality=100, method=6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/tiny-llava-shapes/eval")
    ap.add_argument("--images", type=int, default=210)
    args = ap.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(TEST_SEED)
    seen = {t: 0 for t in V.QUESTION_TYPES}
    items = []
    for j in range(args.images):
        slots = [V.QUESTION_TYPES[(j * QUESTIONS_PER_IMAGE + m) % len(V.QUESTION_TYPES)] for m in range(QUESTIONS_PER_IMAGE)]
        while True:
            scene = S.sample_scenes(1, gen)
            questions = []
            for qtype in slots:
                answer, subtype = target(qtype, seen[qtype] + sum(1 for s, _ in questions if s == qtype))
                text = question_for(scene, qtype, answer, subtype, gen)
                if text is None:
                    break
                questions.append((qtype, (text, answer)))
            if len(questions) == len(slots):
                break
        pixels = S.render(scene, gen)[0]
        fmt = FORMATS[j % len(FORMATS)]
        name = f"images/{j:04d}.{fmt}"
        save_image(pixels, out / name, fmt)
        for qtype, (text, answer) in questions:
            seen[qtype] += 1
            items.append({"image": name, "question": text, "answer": answer, "type": qtype})
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    print(json.dumps({"items": len(items), "per_type": seen}))


if __name__ == "__main__":
    main()
