"""Parity: the bundle, run stage by stage in onnxruntime (CPU) as the TypeScript runtime runs it, against
the PyTorch model on every committed eval item; also writes the golden file, the reference answers
and the tokenizer ids of every eval prompt.

    python3 -m tools.model.parity --bundle models/tiny-llava-shapes --out runs/parity
    (needs onnxruntime and tokenizers; the GPU host has both, the dev machine has neither)

Stage order per item (batch 1, float32 io): vision/embed -> per layer attn (attn_bias 0) -> mlp ->
drop CLS -> vision/projector -> language/embed of [<s>]+prefix and of the suffix -> concatenate ->
per decoder layer attn (empty caches, positions 0..T-1, mask of ones) -> mlp -> language/head on the
last row -> greedy: embed the new token, per layer attn with that layer's cache (position T+step) ->
mlp -> head, until a stop id or max_new_tokens. The PyTorch reference is TinyLlava loaded from the
bundle's own weights (tools/model/from_bundle.py), float32, greedy with full recompute.
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.model.eval_items import encode_parts, load_items, pixel_values, prompt_parts  # noqa: E402

VISION_ROWS = [0, 1, 50, 98, 196]
GOLDEN_SCORE_LAYERS = {"vision": [0, 2], "language": [0, 2, 6]}
GOLDEN_CACHE_LAYERS = [0, 11]


class BundleRunner:
    """onnxruntime sessions keyed by manifest stage name; one intra-op thread (as the CI tests run)."""

    def __init__(self, bundle_dir, threads=1):
        import onnxruntime as ort

        self.root = Path(bundle_dir)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sessions = {name: ort.InferenceSession(str(self.root / g["path"]), opts, providers=["CPUExecutionProvider"])
                         for name, g in self.manifest["graphs"].items()}
        self.v, self.lang = self.manifest["vision"], self.manifest["language"]

    def run(self, stage, feeds, record=None, rows=None, axis=1):
        names = [o["name"] for o in self.manifest["graphs"][stage]["outputs"]]
        outs = dict(zip(names, self.sessions[stage].run(names, feeds)))
        if record is not None:
            for name, arr in outs.items():
                record(f"{stage}:{name}", arr, rows, 2 if name.startswith("present_") else axis)
        return outs

    def encode_image(self, px, record=None):
        h = self.run("vision/embed", {"pixel_values": px}, record, VISION_ROWS)["hidden_out"]
        bias = np.zeros(h.shape[:2], dtype=np.float32)
        for i in range(self.v["num_layers"]):
            feeds = {"hidden_in": h, "attn_bias": bias}
            if record is not None and i in GOLDEN_SCORE_LAYERS["vision"]:
                self.run(f"vision/layer_{i:02d}.scores", feeds, record, VISION_ROWS)
            h = self.run(f"vision/layer_{i:02d}.attn", feeds, record, VISION_ROWS)["hidden_out"]
            h = self.run(f"vision/layer_{i:02d}.mlp", {"hidden_in": h}, record, VISION_ROWS)["hidden_out"]
        embeds = self.run("vision/projector", {"features": np.ascontiguousarray(h[:, 1:])})["embeds"]
        if record is not None:
            record("vision/projector:embeds", embeds, None, 1)
        return embeds

    def layers(self, x, positions, caches, record=None, rows=None):
        total = caches[0][0].shape[2] + x.shape[1]
        mask = np.ones((1, total), dtype=np.int64)
        new = []
        for i in range(self.lang["num_layers"]):
            feeds = {"hidden_in": x, "position_ids": positions, "past_key": caches[i][0], "past_value": caches[i][1],
                     "attention_mask": mask}
            rec = record if (record is not None) else None
            if rec is not None and i in GOLDEN_SCORE_LAYERS["language"]:
                self.run(f"language/layer_{i:02d}.scores", feeds, rec, rows)
            keep_cache = rec if (rec is not None and i in GOLDEN_CACHE_LAYERS) else None
            out = self.run(f"language/layer_{i:02d}.attn", feeds, None, rows)
            if rec is not None:
                rec(f"language/layer_{i:02d}.attn:hidden_out", out["hidden_out"], rows, 1)
                if keep_cache is not None:
                    rec(f"language/layer_{i:02d}.attn:present_key", out["present_key"], rows, 2)
                    rec(f"language/layer_{i:02d}.attn:present_value", out["present_value"], rows, 2)
            new.append((out["present_key"], out["present_value"]))
            x = self.run(f"language/layer_{i:02d}.mlp", {"hidden_in": out["hidden_out"]}, rec, rows)["hidden_out"]
        return x, new

    def generate(self, px, prefix_ids, suffix_ids, record=None):
        """(first-step logits [V], generated ids incl. the stop id if reached)."""
        tokens = self.manifest["tokens"]
        embeds = self.encode_image(px, record)
        head_ids = np.array([[tokens["bos_id"]] + prefix_ids], dtype=np.int64)
        tail_ids = np.array([suffix_ids], dtype=np.int64)
        pre = self.run("language/embed", {"input_ids": head_ids})["embeds"]
        post = self.run("language/embed", {"input_ids": tail_ids})["embeds"]
        x = np.concatenate([pre, embeds, post], axis=1)
        t = x.shape[1]
        rows = sorted({0, head_ids.shape[1], head_ids.shape[1] + 100, head_ids.shape[1] + embeds.shape[1] - 1,
                       head_ids.shape[1] + embeds.shape[1], t - 1})
        if record is not None:
            record("language/input:embeds", x, rows, 1)
        dh, hkv = self.lang["head_dim"], self.lang["num_kv_heads"]
        empty = np.zeros((1, hkv, 0, dh), dtype=np.float32)
        caches = [(empty, empty)] * self.lang["num_layers"]
        x, caches = self.layers(x, np.arange(t, dtype=np.int64)[None], caches, record, rows)
        logits = self.run("language/head", {"hidden_in": np.ascontiguousarray(x[:, -1:])})["logits"]
        if record is not None:
            record("language/head:logits", logits, None, 1)
        first = logits[0, -1].copy()
        generated = []
        max_new = self.manifest["generation"]["max_new_tokens"]
        for step in range(max_new):
            nxt = int(np.argmax(logits[0, -1]))
            generated.append(nxt)
            if nxt in tokens["stop_ids"] or step == max_new - 1:
                break
            x = self.run("language/embed", {"input_ids": np.array([[nxt]], dtype=np.int64)})["embeds"]
            x, caches = self.layers(x, np.array([[t + step]], dtype=np.int64), caches)
            logits = self.run("language/head", {"hidden_in": x})["logits"]
        return first, generated


_runner = None
_ctx = None


def _init(bundle_dir, eval_dir, prompts):
    global _runner, _ctx
    _runner = BundleRunner(bundle_dir, threads=1)
    _ctx = (eval_dir, prompts)


def _ort_item(args):
    idx, image = args
    eval_dir, prompts = _ctx
    first, ids = _runner.generate(pixel_values(Path(eval_dir) / image), *prompts[idx])
    return idx, first, ids


def _words(tok, ids, stop_ids):
    return tok.decode([i for i in ids if i not in stop_ids], skip_special_tokens=True).strip()


def golden(runner, items, picks, prompts, eval_dir, out_dir, model_id):
    blob = []
    entries = []
    offset = 0
    for idx in picks:
        tensors = {}

        def record(name, arr, rows, axis):
            nonlocal offset
            arr = np.asarray(arr, dtype=np.float32)
            kept = arr if rows is None else np.take(arr, rows, axis=axis)
            tensors[name] = {"shape": list(arr.shape), "axis": axis, "rows": rows, "offset": offset,
                             "stored_shape": list(kept.shape)}
            blob.append(kept.ravel())
            offset += kept.size

        px = pixel_values(Path(eval_dir) / items[idx]["image"])
        record("pixel_values", px, None, 1)
        first, ids = runner.generate(px, *prompts[idx], record=record)
        prefix_ids, suffix_ids = prompts[idx]
        entries.append({"image": f"eval/{items[idx]['image']}", "question": items[idx]["question"],
                        "answer": items[idx]["answer"], "generated_ids": ids,
                        "input_ids": {"prefix": [runner.manifest["tokens"]["bos_id"]] + prefix_ids, "suffix": suffix_ids},
                        "image_start": 1 + len(prefix_ids), "tensors": tensors})
    data = np.concatenate(blob).astype("<f4")
    (out_dir / f"{model_id}.bin").write_bytes(data.tobytes())
    doc = {"model_id": model_id, "content_hash": runner.manifest["content_hash"], "bin": f"{model_id}.bin",
           "note": ("rows index the token axis named by `axis` (2 for present_key/present_value, 1 otherwise); "
                    "rows null = stored whole; stored_shape is the shape of the stored block; "
                    "language/input:embeds is the concatenated prefill input; language/head:logits is the "
                    "first decode step (last prefill row); tolerance max|a-b| <= 1e-4 * max|golden| per tensor"),
           "items": entries}
    (out_dir / f"{model_id}.json").write_text(json.dumps(doc, indent=1) + "\n")
    return data.size * 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="models/tiny-llava-shapes")
    ap.add_argument("--eval-dir", default=None)
    ap.add_argument("--out", default="runs/parity")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    import torch
    from tokenizers import Tokenizer

    from tools.bundle.tokenizer import encode_wordpiece
    from tools.model.evaluate import greedy
    from tools.model.from_bundle import load_model_from_bundle

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_dir = Path(args.eval_dir or Path(args.bundle) / "eval")
    items = load_items(eval_dir)
    if args.limit:
        items = items[: args.limit]
    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    stop_ids = manifest["tokens"]["stop_ids"]
    tok = Tokenizer.from_file(str(Path(args.bundle) / "tokenizer.json"))
    tok_json = json.loads((Path(args.bundle) / "tokenizer.json").read_text())
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    prompts = [encode_parts(encode, it["question"]) for it in items]
    mismatched_tok = [i for i, it in enumerate(items) if encode_parts(lambda s: encode_wordpiece(tok_json, s), it["question"]) != prompts[i]]
    token_doc = {"tokenizer": "models/tiny-llava-shapes/tokenizer.json", "producer": "Python tokenizers "
                 + __import__("tokenizers").__version__, "template": manifest["prompt"]["template"],
                 "items": [{"question": it["question"], "prefix": prompt_parts(it["question"])[0],
                            "suffix": prompt_parts(it["question"])[1], "prefix_ids": p, "suffix_ids": s}
                           for it, (p, s) in zip(items, prompts)]}
    (out / "eval-token-ids.json").write_text(json.dumps(token_doc) + "\n")

    # PyTorch reference (float32; on the GPU with TF32 off when there is one).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, _ = load_model_from_bundle(args.bundle, device)
    t0 = time.time()
    ref_first, ref_ids = [None] * len(items), [None] * len(items)
    groups = defaultdict(list)
    for i, (_, s) in enumerate(prompts):
        groups[len(s)].append(i)
    for _, idxs in groups.items():
        for k in range(0, len(idxs), 64):
            chunk = idxs[k : k + 64]
            px = torch.from_numpy(np.concatenate([pixel_values(eval_dir / items[i]["image"]) for i in chunk])).to(device)
            suffix = torch.tensor([prompts[i][1] for i in chunk], device=device)
            ids, first = greedy(model, px, prompts[chunk[0]][0], suffix, max_new=manifest["generation"]["max_new_tokens"])
            for j, i in enumerate(chunk):
                ref_first[i], ref_ids[i] = first[j].numpy(), ids[j]
    torch_s = time.time() - t0

    t0 = time.time()
    with Pool(args.workers, initializer=_init, initargs=(args.bundle, str(eval_dir), prompts)) as pool:
        results = pool.map(_ort_item, [(i, it["image"]) for i, it in enumerate(items)], chunksize=4)
    ort_s = time.time() - t0
    diffs, same, correct = [], 0, defaultdict(lambda: [0, 0])
    answers = []
    for idx, first, ids in sorted(results, key=lambda r: r[0]):
        diffs.append(float(np.max(np.abs(first - ref_first[idx]))))
        ort_answer = _words(tok, ids, stop_ids)
        torch_answer = _words(tok, ref_ids[idx], stop_ids)
        same += int(ort_answer == torch_answer)
        item = items[idx]
        correct[item["type"]][0] += int(ort_answer == item["answer"])
        correct[item["type"]][1] += 1
        answers.append({"image": item["image"], "question": item["question"], "type": item["type"],
                        "gold": item["answer"], "answer": ort_answer, "ids": ids, "correct": ort_answer == item["answer"]})
    with open(out / "reference-answers.jsonl", "w") as f:
        for a in answers:
            f.write(json.dumps(a) + "\n")
    accuracy = {t: round(c / n, 4) for t, (c, n) in correct.items()}
    accuracy["overall"] = round(sum(c for c, _ in correct.values()) / len(items), 4)

    png_correct = [i for i, a in enumerate(answers) if a["correct"] and a["image"].endswith(".png")]
    picks, seen_types = [], set()
    for i in png_correct:
        if items[i]["type"] not in seen_types:
            picks.append(i)
            seen_types.add(items[i]["type"])
        if len(picks) == 3:
            break
    golden_bytes = golden(BundleRunner(args.bundle, threads=4), items, picks, prompts, eval_dir, out, manifest["model_id"])
    # One answer on 2 intra-op threads (the CI machine has 2 cores), decode + preprocess included.
    timer = BundleRunner(args.bundle, threads=2)
    times = []
    for rep in range(12):
        t1 = time.time()
        timer.generate(pixel_values(eval_dir / items[0]["image"]), *prompts[0])
        times.append(time.time() - t1)
    latency_ms = round(1000 * float(np.median(times[2:])), 1)
    summary = {"items": len(items), "identical_greedy_answers": same, "max_abs_logit_diff": max(diffs),
               "mean_max_abs_logit_diff": float(np.mean(diffs)),
               "max_abs_logit": float(max(np.max(np.abs(f)) for f in ref_first)),
               "bundle_accuracy": accuracy, "tokenizer_mismatches_vs_python_encoder": len(mismatched_tok),
               "golden_items": picks, "golden_bin_bytes": golden_bytes, "content_hash": manifest["content_hash"],
               "answer_ms_2_threads_median": latency_ms,
               "torch_seconds": round(torch_s, 1), "ort_seconds": round(ort_s, 1), "ort_workers": args.workers,
               "torch_device": device}
    (out / "parity.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    if same != len(items):
        sys.exit(1)


if __name__ == "__main__":
    main()
