"""How well each method's token score tells object patches from background, layer by layer.

    /usr/bin/python3 -m tools.model.score_auc --bundle models/tiny-llava-shapes [--scenes 48]

For validation scenes (seed 1, never the test items) it runs the model in PyTorch from the bundle's
weights and, at every ViT and decoder layer, computes each method's keep-score over the image tokens
(higher = kept) and its AUC against the object mask (patch centres inside an object): 1.0 keeps every
object patch before any background, 0.5 is random, below 0.5 keeps background first. Scores follow the
clean-mode formulas (shared/methods): FiCoCo-V's redundancy on head-mean attention probabilities with
the paper's λ; FiCoCo-L's filter on the unmasked head-mean logits (and its two terms alone); FastV's
last-row attention; the mean attention of every text token (SparseVLM's raters are a subset of them).
Two diagnostics of FiCoCo-L's visual term (kept when low, like the filter): an image token's logit on
the prompt prefix before the image (<s> "USER" ":", the attention sink), and its causal attention mass
on image keys. This explains reduction results; it is not used by any method.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.model.from_bundle import load_model_from_bundle  # noqa: E402
from tools.model.model import rope_tables  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402
from tools.vqa.batch import make_batch  # noqa: E402

VAL_SEED = 1


def auc(score, positive):
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="models/tiny-llava-shapes")
    ap.add_argument("--scenes", type=int, default=48)
    ap.add_argument("--lam", type=float, default=0.35, help="FiCoCo-V λ (paper placement: on the patch term)")
    ap.add_argument("--beta", type=float, default=0.6, help="FiCoCo-L β on the visual-visual term")
    args = ap.parse_args()
    model, manifest = load_model_from_bundle(args.bundle)
    P = model.config.num_patches
    gen = torch.Generator()
    gen.manual_seed(VAL_SEED)
    batch = make_batch(args.scenes, gen, "cpu", relation_margin=8.0, augment=False)
    prefix = torch.tensor(V.PREFIX_IDS)
    img0 = len(V.PREFIX_IDS)
    sums = {}

    def add(key, value):
        if value is not None:
            s = sums.setdefault(key, [0.0, 0])
            s[0] += value
            s[1] += 1

    for n in range(args.scenes):
        obj = batch["patch_color"][n] > 0
        # vision: FiCoCo-V redundancy s_i = λ·mean_j A[i, patches] − (1−λ)·A[CLS, i]; keep = −s
        h = model.vision.embed(batch["pixel_values"][n:n + 1])
        for layer_index, layer in enumerate(model.vision.layers[: model.config.feature_layer + 1]):
            A = layer.attn_probs(h)[0]
            s = args.lam * A[1:, 1:].mean(1) - (1 - args.lam) * A[0, 1:]
            add(("vision", layer_index, "ficoco-v keep"), auc(-s, obj))
            add(("vision", layer_index, "cls attention"), auc(A[0, 1:], obj))
            h = layer(h)
        features = h[:, 1:]
        # language, on the prompt up to the answer
        end = img0 + P + int(batch["answer_pos"][n])
        x = model.assemble(prefix, model.projector(features), batch["suffix"][n:n + 1])[:, :end]
        t = x.shape[1]
        cos, sin = rope_tables(torch.arange(t).unsqueeze(0), model.language.head_dim, model.language.rope_theta)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        img = slice(img0, img0 + P)
        h = x
        for layer_index, layer in enumerate(model.language.layers):
            q, k, _ = layer.qkv(h, cos, sin)
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            S = logits.mean(1)[0]  # head-mean, unmasked (FiCoCo-L's scores)
            A = logits.masked_fill(~causal, float("-inf")).softmax(-1).mean(1)[0]  # causal probs
            vv = S[img, img].mean(1)
            vt = S[img, img0 + P:].mean(1)
            add(("language", layer_index, "ficoco-l keep"), auc(-(args.beta * vv - (1 - args.beta) * vt), obj))
            add(("language", layer_index, "ficoco-l visual term alone"), auc(-vv, obj))
            add(("language", layer_index, "ficoco-l task term alone"), auc(vt, obj))
            add(("language", layer_index, "ficoco-l diagnostic: prefix logit, low kept"), auc(-S[img, :img0].mean(1), obj))
            add(("language", layer_index, "ficoco-l diagnostic: image attention mass, low kept"),
                auc(-A[img, img].sum(1), obj))
            add(("language", layer_index, "fastv last row"), auc(A[-1, img], obj))
            add(("language", layer_index, "text rows mean"), auc(A[img0 + P:, img].mean(0), obj))
            h = layer(h, cos, sin)

    rows = [{"tower": k[0], "layer": k[1], "score": k[2], "auc": round(v[0] / v[1], 3), "scenes": v[1]}
            for k, v in sorted(sums.items())]
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
