"""Robustness fine-tune: the same model and losses, run under random token removal and mixed masks.

LLaVA-scale models tolerate losing most visual tokens because natural images are redundant, CLIP's
patch features describe their neighbourhood, and the LLM has seen sequences of every length. A model
trained from scratch on one fixed 196-token layout has none of that: it reads sizes and counts from
how many tokens an object has, and its decoder never ran on a shorter image span. The fine-tune gives
it those properties without favouring any reduction method:

- vision removal: from a random ViT layer on, a random subset of the patches is removed (masked as
  keys, as if gone; CLS stays); with --merge-share, that share of those samples first averages each
  removed patch into its most similar kept patch with a random weight (merging, as ToMe and FiCoCo's
  compress do); the decoder then sees only the kept patches;
- language drop: from a random decoder layer on, a random subset of the image tokens is removed;
- after a removal the positions are renumbered contiguously (what the runtime does with 'renumber');
- prefix-LM masks for a share of the samples: the prompt (image and question) attends both ways, as
  in PaliGemma-style training, so a visual query's logits on question keys are trained values; a
  causal model from scratch never trains them, and FiCoCo-L reads exactly those (pruning-spec §1.3.1).
  Inference stays causal;
- per-patch targets for the covering object's size and centre cell (besides colour and shape), so a
  subset of an object's patches still tells its size and place.

Removal is a key mask with static shapes (no gather), so one compiled graph serves every sample.
The subsets are uniformly random: no method's scores are used.
"""

import torch
import torch.nn.functional as F

from tools.model.model import rope_tables
from tools.model.objectives import IMAGE_START, answer_objective, contents_objective, patch_objective


def sample_plan(batch, gen, num_patches, vision_layers, language_layers, p_vision=0.25, p_language=0.35,
                p_prefix=0.3, keep_range=(0.08, 0.7), p_merge=0.0):
    """Per-sample removal plan: which patches stay, from which ViT / decoder layer the rest are gone,
    and whether the prompt is bidirectional. Layers of 10**6 mean "never"."""
    n = batch["pixel_values"].shape[0]
    device = batch["pixel_values"].device
    never = 10**6
    kind = torch.rand(n, generator=gen, device=device)
    vision = kind < p_vision
    language = (kind >= p_vision) & (kind < p_vision + p_language)
    frac = keep_range[0] + (keep_range[1] - keep_range[0]) * torch.rand(n, 1, generator=gen, device=device)
    keep = torch.rand(n, num_patches, generator=gen, device=device) < frac
    # at least one patch stays
    first = torch.rand(n, num_patches, generator=gen, device=device).argmax(1)
    keep[torch.arange(n, device=device), first] = True
    v_layer = torch.randint(2, vision_layers - 1, (n,), generator=gen, device=device)
    l_layer = torch.randint(0, language_layers // 2 + 1, (n,), generator=gen, device=device)
    plan = {
        "keep": keep,
        "vision_from": torch.where(vision, v_layer, torch.full_like(v_layer, never)),
        "language_from": torch.where(language, l_layer, torch.full_like(l_layer, never)),
        "prefix_lm": torch.rand(n, generator=gen, device=device) < p_prefix,
    }
    if p_merge > 0:
        # A share of the vision removals merge instead of drop: each removed patch is averaged into
        # its most similar kept patch with a random weight (what merging methods do). Drawn last and
        # only when asked, so p_merge = 0 replays the committed fine-tune's random stream.
        plan["merge"] = vision & (torch.rand(n, generator=gen, device=device) < p_merge)
        plan["merge_weight"] = 0.2 + 0.8 * torch.rand(n, num_patches, generator=gen, device=device)
    return plan


def _merge_removed(h, keep, weight):
    """Every removed patch averaged into its most similar kept patch (cosine), self-preserving:
    X_j <- (X_j + sum_i w_i X_i) / (1 + sum_i w_i). h [n, 1+P, D] with CLS first; keep [n, P]."""
    x = h[:, 1:]
    unit = F.normalize(x.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2)
    sim = sim.masked_fill(~keep.unsqueeze(1), float("-inf"))
    target = sim.argmax(-1)  # [n, P]
    w = torch.where(keep, torch.zeros_like(weight), weight)  # kept patches send nothing
    summed = x.float().clone()
    summed.scatter_add_(1, target.unsqueeze(-1).expand_as(x), w.unsqueeze(-1) * x.float())
    total = torch.ones_like(weight).scatter_add_(1, target, w)
    merged = (summed / total.unsqueeze(-1)).to(h.dtype)
    return torch.cat([h[:, :1], torch.where(keep.unsqueeze(-1), merged, x)], 1)


def _vision(model, pixel_values, plan):
    """ViT hidden states with the plan's removals: (features of the feature layer without CLS, final CLS)."""
    c = model.config
    h = model.vision.embed(pixel_values)
    n, t, _ = h.shape
    cls = torch.ones(n, 1, dtype=torch.bool, device=h.device)
    present_after = torch.cat([cls, plan["keep"]], 1)
    features = None
    for i, layer in enumerate(model.vision.layers):
        if "merge" in plan:
            at = (plan["vision_from"] == i) & plan["merge"]
            h = torch.where(at.view(n, 1, 1), _merge_removed(h, plan["keep"], plan["merge_weight"]), h)
        gone = (i >= plan["vision_from"]).view(n, 1)
        present = present_after | ~gone
        h = layer(h, present.view(n, 1, 1, t))
        if i == c.feature_layer:
            features = h[:, 1:]
    return features, h[:, 0]


def robust_losses(model, batch, prefix_ids, plan):
    features, cls = _vision(model, batch["pixel_values"], plan)
    embeds = model.projector(features)
    x = model.assemble(prefix_ids, embeds, batch["suffix"])
    n, t, _ = x.shape
    P = features.shape[1]
    device = x.device
    ar = torch.arange(t, device=device)
    image = (ar >= IMAGE_START) & (ar < IMAGE_START + P)
    keep_full = torch.ones(n, t, dtype=torch.bool, device=device)
    keep_full[:, IMAGE_START:IMAGE_START + P] = plan["keep"]
    vision_gone = (plan["vision_from"] < 10**6).view(n, 1) & image.view(1, t) & ~keep_full
    prompt_end = IMAGE_START + P + batch["answer_pos"]  # the answer's index: the prompt is before it
    causal = ar.view(1, t, 1) >= ar.view(1, 1, t)
    in_prompt = ar.view(1, t) < prompt_end.view(n, 1)
    both_ways = (in_prompt.view(n, t, 1) & in_prompt.view(n, 1, t)) & plan["prefix_lm"].view(n, 1, 1)
    base = causal | both_ways  # [n, t, t]

    h = x
    for i, layer in enumerate(model.language.layers):
        gone = vision_gone | ((i >= plan["language_from"]).view(n, 1) & image.view(1, t) & ~keep_full)
        present = ~gone
        positions = present.long().cumsum(1) - 1  # renumbered over the tokens still present
        cos, sin = rope_tables(positions, model.language.head_dim, model.language.rope_theta)
        mask = (base & present.view(n, 1, t)).view(n, 1, t, t)
        h = layer(h, cos, sin, mask)

    answer_loss, correct = answer_objective(model, h, batch, P)
    patch_loss = patch_objective(model, features, batch, {"color": 1.0, "shape": 1.0, "size": 1.0, "row": 0.5, "col": 0.5})
    return answer_loss, contents_objective(model, cls, batch), patch_loss, correct
