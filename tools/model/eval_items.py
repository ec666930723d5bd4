"""The committed eval items as model inputs, prepared the way the runtimes prepare them.

Images are decoded with PIL, converted to RGB, squashed to 112x112 with bicubic resampling (a no-op
for the committed images), rescaled by 1/255 and normalised with mean 0.5 / std 0.5 (the manifest's
preprocess). Prompt ids follow docs/bundle-format.md: [<s>] + encode("USER: ") + image span +
encode("\\n{question} ASSISTANT:"), each part encoded without special tokens.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 112
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
IMAGE_TOKEN = "<image>"


def load_items(eval_dir):
    lines = (Path(eval_dir) / "items.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def pixel_values(path):
    """float32 [1, 3, 112, 112]."""
    image = Image.open(path).convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def prompt_parts(question):
    prefix, suffix = TEMPLATE.split(IMAGE_TOKEN)
    return prefix, suffix.replace("{question}", question)


def encode_parts(encode, question):
    """(prefix_ids, suffix_ids) with `encode(text) -> ids` (no special tokens); BOS is added by the caller."""
    prefix, suffix = prompt_parts(question)
    return list(encode(prefix)), list(encode(suffix))
