"""Train TinyLlava on the generated VQA task, in resumable chunks of bounded wall time.

    python3 -m tools.model.train --out runs/ckpt --minutes 6.5 --total-steps 12000 [--resume runs/ckpt]

Each chunk runs until --minutes or --total-steps, then writes an fp16 checkpoint (tools/model/checkpoint.py)
and appends to `train_log.jsonl` in --out. Data are generated on the device from seed 10_000_000 + step,
so a resumed run sees exactly the batches it would have seen uninterrupted. The full fp32 + optimizer
state also goes to --state (a local path on the training host): a chunk that finds it, at the same
step as the checkpoint, resumes exactly; otherwise it resumes from fp16 weights with a fresh optimizer
and a short re-warmup.

Losses: answer (+ </s>) cross-entropy; CLS multi-label scene contents (BCE, final ViT layer, through
CLIP's post-layernorm); per-patch colour/shape of the penultimate-layer features (dense supervision,
it teaches the tower where objects are, which relation and counting questions need).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bundle.tokenizer import build_wordpiece_vocab  # noqa: E402
from tools.model import checkpoint  # noqa: E402
from tools.model.model import TinyLlava, TinyLlavaConfig  # noqa: E402
from tools.model.objectives import answer_objective, contents_objective, patch_objective  # noqa: E402
from tools.model.robust import robust_losses, sample_plan  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402
from tools.vqa.batch import make_batch  # noqa: E402

TRAIN_SEED_BASE = 10_000_000
VAL_SEED = 1
TYPE_WEIGHTS = {"color": 1.0, "shape": 1.0, "size": 1.0, "exist": 1.0, "count": 1.5, "relation": 2.5, "compare": 1.5}


def relation_margin(step, total):
    """Curriculum: clearly separated pairs first, then down to 6 px (the eval set uses >= 8 px)."""
    f = step / max(total, 1)
    if f < 0.15:
        return 16.0
    if f > 0.45:
        return 6.0
    return 16.0 - 10.0 * (f - 0.15) / 0.30


def lr_at(step, total, peak, warmup, rewarm_from=None):
    if rewarm_from is not None and step < rewarm_from + 100:
        scale = (step - rewarm_from + 1) / 100
    else:
        scale = 1.0
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return scale * peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def losses(model, batch, prefix_ids):
    features, cls = model.image_features(batch["pixel_values"], all_layers=True)
    embeds = model.projector(features)
    h = model.language(model.assemble(prefix_ids, embeds, batch["suffix"]))
    answer_loss, correct = answer_objective(model, h, batch, features.shape[1])
    patch_loss = patch_objective(model, features, batch, {"color": 1.0, "shape": 1.0})
    return answer_loss, contents_objective(model, cls, batch), patch_loss, correct


def fixed_plan(batch, keep_fraction, language_from, seed):
    """A deterministic removal for validation: the same random patches gone from one decoder layer on."""
    n, P = batch["patch_color"].shape
    device = batch["pixel_values"].device
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    never = torch.full((n,), 10**6, dtype=torch.long, device=device)
    return {"keep": torch.rand(n, P, generator=g, device=device) < keep_fraction, "vision_from": never,
            "language_from": torch.full((n,), language_from, dtype=torch.long, device=device),
            "prefix_lm": torch.zeros(n, dtype=torch.bool, device=device)}


@torch.no_grad()
def validate(model, val_batches, prefix_ids, device, amp, plan=None):
    """Accuracy per type; with `plan` (a fixed_plan spec) under that removal instead of unreduced."""
    model.eval()
    right = torch.zeros(len(V.QUESTION_TYPES), device=device)
    total = torch.zeros(len(V.QUESTION_TYPES), device=device)
    for k, batch in enumerate(val_batches):
        with amp():
            if plan is None:
                _, _, _, correct = losses(model, batch, prefix_ids)
            else:
                _, _, _, correct = robust_losses(model, batch, prefix_ids, fixed_plan(batch, *plan, seed=k))
        valid = batch["valid"]
        right.index_add_(0, batch["types"][valid], correct[valid].float())
        total.index_add_(0, batch["types"][valid], torch.ones_like(correct[valid], dtype=torch.float))
    model.train()
    acc = (right / total.clamp(min=1)).tolist()
    out = {t: round(a, 4) for t, a in zip(V.QUESTION_TYPES, acc)}
    out["mean"] = round(sum(acc) / len(acc), 4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--state", default="/tmp/tiny_llava_state.pt")
    ap.add_argument("--minutes", type=float, default=6.5)
    ap.add_argument("--total-steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss (torch 2 only)")
    ap.add_argument("--init-bundle", default=None, help="start from a bundle's weights (fine-tune)")
    ap.add_argument("--init-extras", default=None, help="the non-exported weights (ViT layers after the feature "
                    "layer, training heads) saved beside that bundle's checkpoint")
    ap.add_argument("--robust", action="store_true", help="token-removal / prefix-LM fine-tune (tools/model/robust.py)")
    ap.add_argument("--merge-share", type=float, default=0.0, help="--robust: share of vision removals that merge")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else (
        lambda: torch.autocast("cpu", enabled=False))

    vocab_size = len(build_wordpiece_vocab(V.WORDS[len(V.SPECIALS):]))
    start_step, history, rewarm_from, elapsed_before = 0, [], None, 0.0
    if args.resume and (Path(args.resume) / "ckpt.json").exists():
        model, meta = checkpoint.load_model(args.resume, device)
        start_step, history = meta["step"], meta.get("history", [])
        if args.total_steps <= 0:
            args.total_steps = meta["total_steps"]
        elapsed_before = meta.get("train_seconds", 0.0)
    elif args.init_bundle:
        from tools.model.from_bundle import load_model_from_bundle
        model, _ = load_model_from_bundle(args.init_bundle)
        if args.init_extras:
            extras = {k: v.float() for k, v in torch.load(args.init_extras, map_location="cpu").items()}
            missing, unexpected = model.load_state_dict(extras, strict=False)
            if unexpected:
                raise SystemExit(f"unknown extra weights: {unexpected[:8]}")
            print(f"fresh (not in bundle or extras): {[m for m in missing if m.startswith('heads.')]}", flush=True)
        model = model.to(device)
    else:
        model = TinyLlava(TinyLlavaConfig(vocab_size=vocab_size)).to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    if start_step and os.path.exists(args.state):
        state = torch.load(args.state, map_location=device)
        if state["step"] == start_step:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            print(f"resumed exactly from {args.state} at step {start_step}", flush=True)
        else:
            rewarm_from = start_step
    elif start_step:
        rewarm_from = start_step
    if rewarm_from is not None:
        print(f"resumed fp16 weights at step {start_step} with a fresh optimizer (re-warmup)", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M (training heads included), device {device}, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}", flush=True)
    prefix_ids = torch.tensor(V.PREFIX_IDS, device=device)
    base_loss = robust_losses if args.robust else (lambda m, b, p, _plan: losses(m, b, p))
    loss_fn = torch.compile(base_loss) if args.compile else base_loss
    c = model.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train_log.jsonl", "a")

    gen = torch.Generator(device=device)
    gen.manual_seed(VAL_SEED)
    val_batches = [make_batch(min(512, args.val_size - i), gen, device, relation_margin=8.0, augment=False)
                   for i in range(0, args.val_size, 512)]

    t0 = time.time()
    step = start_step
    run_stats = torch.zeros(len(V.QUESTION_TYPES), 2, device=device)
    sums = torch.zeros(3, device=device)
    window_t, window_step = time.time(), step
    while step < args.total_steps and time.time() - t0 < args.minutes * 60:
        gen.manual_seed(TRAIN_SEED_BASE + step)
        # a fine-tune starts where the curriculum ended (6 px relation margins)
        margin = 6.0 if args.init_bundle else relation_margin(step, args.total_steps)
        batch = make_batch(args.batch, gen, device, TYPE_WEIGHTS, margin)
        if args.init_bundle:
            # a fine-tune of bounded wall time: warmup, then cosine over the minutes to 5 % of peak
            done = (time.time() - t0) / (args.minutes * 60)
            lr = args.lr * min(1.0, (step - start_step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))
        else:
            lr = lr_at(step, args.total_steps, args.lr, args.warmup, rewarm_from)
        for group in opt.param_groups:
            group["lr"] = lr
        plan = sample_plan(batch, gen, c.num_patches, c.vision_layers, c.layers, p_merge=args.merge_share) if args.robust else None
        with amp():
            answer_loss, cls_loss, patch_loss, correct = loss_fn(model, batch, prefix_ids, plan)
        loss = answer_loss + cls_loss + 0.5 * patch_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        sums += torch.stack([answer_loss.detach(), cls_loss.detach(), patch_loss.detach()])
        valid = batch["valid"]
        run_stats[:, 0].index_add_(0, batch["types"][valid], correct[valid].float())
        run_stats[:, 1].index_add_(0, batch["types"][valid], torch.ones_like(correct[valid], dtype=torch.float))
        if step % args.log_every == 0:
            s = (sums / args.log_every).tolist()
            acc = (run_stats[:, 0] / run_stats[:, 1].clamp(min=1)).tolist()
            now = time.time()
            rec = {"step": step, "lr": round(lr, 6), "answer_loss": round(s[0], 4), "cls_loss": round(s[1], 4),
                   "patch_loss": round(s[2], 4), "train_acc": {t: round(a, 3) for t, a in zip(V.QUESTION_TYPES, acc)},
                   "steps_per_s": round((step - window_step) / (now - window_t), 2),
                   "margin": margin, "elapsed_s": round(now - t0, 1)}
            window_t, window_step = now, step
            sums.zero_()
            run_stats.zero_()
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
        if step % args.val_every == 0 or step == args.total_steps:
            val = validate(model, val_batches, prefix_ids, device, amp)
            rec = {"step": step, "val": val}
            if args.robust:
                rec["val_random25_from2"] = validate(model, val_batches, prefix_ids, device, amp, plan=(0.25, 2))
            history.append(rec)
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()

    train_seconds = elapsed_before + time.time() - t0
    val = validate(model, val_batches, prefix_ids, device, amp)
    if args.robust:
        val_reduced = validate(model, val_batches, prefix_ids, device, amp, plan=(0.25, 2))
        print(json.dumps({"step": step, "val_random25_from2": val_reduced}), flush=True)
    meta = checkpoint.save(out, model, {"step": step, "total_steps": args.total_steps, "batch": args.batch,
                                        "lr": args.lr, "seed": args.seed, "train_seconds": round(train_seconds, 1),
                                        "examples": step * args.batch, "val": val, "history": history,
                                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"})
    torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict()}, args.state)
    print(json.dumps({"final": True, "step": step, "val": val, "train_seconds": meta["train_seconds"]}), flush=True)


if __name__ == "__main__":
    main()
