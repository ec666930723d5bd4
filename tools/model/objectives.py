"""The training objectives both training paths share (train.py's plain run and robust.py's fine-tune)."""

import torch
import torch.nn.functional as F

from tools.vqa import vocab as V

IMAGE_START = len(V.PREFIX_IDS)

# Per-patch heads and their batch targets.
PATCH_TARGETS = {"color": "patch_color", "shape": "patch_shape", "size": "patch_size", "row": "patch_row", "col": "patch_col"}


def answer_objective(model, h, batch, image_tokens):
    """Cross-entropy of the answer (+0.25 x the </s> after it) from the final hidden states h
    [B, T, D] of a prompt with `image_tokens` image rows; returns (loss, correct [B] bool)."""
    pos = IMAGE_START + image_tokens + batch["answer_pos"]
    idx = torch.stack([pos - 1, pos], 1)  # hidden states that predict the answer and </s>
    hsel = h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    logits = model.language.logits(hsel).float()  # [B, 2, V]
    valid = batch["valid"].float()
    ce_answer = F.cross_entropy(logits[:, 0], batch["answer"], reduction="none")
    ce_eos = F.cross_entropy(logits[:, 1], torch.full_like(batch["answer"], V.EOS), reduction="none")
    loss = ((ce_answer + 0.25 * ce_eos) * valid).sum() / valid.sum().clamp(min=1)
    correct = (logits[:, 0].argmax(-1) == batch["answer"]) & batch["valid"]
    return loss, correct


def contents_objective(model, cls, batch):
    """Multi-label scene contents from the final ViT CLS through CLIP's post-layernorm (BCE)."""
    heads = model.heads
    return F.binary_cross_entropy_with_logits(heads.contents(heads.cls_norm(cls)).float(), batch["contents"])


def patch_objective(model, features, batch, weights):
    """Weighted sum of dense per-patch cross-entropies on the feature layer; weights {head: w} in
    PATCH_TARGETS' names, summed in the order given."""
    total = 0
    for head, w in weights.items():
        logits = getattr(model.heads, f"patch_{head}")(features).float().flatten(0, 1)
        total = total + w * F.cross_entropy(logits, batch[PATCH_TARGETS[head]].flatten())
    return total
