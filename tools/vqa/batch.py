"""One training/validation batch, generated end to end on the device (scenes, pixels, questions, targets)."""

import torch

from . import scenes as S
from .questions import make_questions
from .vocab import QUESTION_TYPES

MEAN = 0.5
STD = 0.5


def normalize(images):
    """[0,1] pixels -> model input (the manifest's rescale 1/255, mean 0.5, std 0.5)."""
    return (images - MEAN) / STD


def sample_types(n, gen, device, weights):
    w = torch.tensor([weights.get(t, 1.0) for t in QUESTION_TYPES], dtype=torch.float32, device=device)
    return torch.multinomial(w, n, replacement=True, generator=gen)


def make_batch(n, gen, device, type_weights=None, relation_margin=8.0, augment=True):
    scenes = S.sample_scenes(n, gen, device)
    images = S.render(scenes, gen, device)
    if augment:
        images = S.augment(images, gen)
    types = sample_types(n, gen, device, type_weights or {})
    q = make_questions(scenes, types, gen, relation_margin=relation_margin)
    patch_color, patch_shape = S.patch_centre_labels(scenes)
    patch_size, patch_row, patch_col = S.patch_object_labels(scenes)
    return {
        "pixel_values": normalize(images),
        "types": types,
        "contents": S.contents(scenes),
        "patch_color": patch_color,
        "patch_shape": patch_shape,
        "patch_size": patch_size,
        "patch_row": patch_row,
        "patch_col": patch_col,
        **q,
    }
