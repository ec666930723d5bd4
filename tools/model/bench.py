"""Pilot measurements on the training host: data generation time and train-step time, eager vs
torch.compile, printed as JSON (the pilot picks the faster setting and the step budget from it)."""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bundle.tokenizer import build_wordpiece_vocab  # noqa: E402
from tools.model.model import TinyLlava, TinyLlavaConfig  # noqa: E402
from tools.model.train import TYPE_WEIGHTS, losses  # noqa: E402
from tools.vqa import vocab as V  # noqa: E402
from tools.vqa.batch import make_batch  # noqa: E402


def timed(fn, n):
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t) / n


def main(batch=int(sys.argv[1]) if len(sys.argv) > 1 else 512, try_compile=True):
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    gen = torch.Generator(device=device).manual_seed(0)
    data_s = timed(lambda: make_batch(batch, gen, device, TYPE_WEIGHTS, 8.0), 10)
    vocab_size = len(build_wordpiece_vocab(V.WORDS[len(V.SPECIALS):]))
    model = TinyLlava(TinyLlavaConfig(vocab_size=vocab_size)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    prefix = torch.tensor(V.PREFIX_IDS, device=device)
    fixed = make_batch(batch, gen, device, TYPE_WEIGHTS, 8.0)
    result = {"batch": batch, "data_ms": round(data_s * 1000, 2)}

    def step(fn):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a, c, p, _ = fn(model, fixed, prefix)
        opt.zero_grad(set_to_none=True)
        (a + c + 0.5 * p).backward()
        opt.step()

    timed(lambda: step(losses), 3)
    result["eager_step_ms"] = round(timed(lambda: step(losses), 10) * 1000, 2)
    print(json.dumps(result), flush=True)
    if try_compile:
        compiled = torch.compile(losses)
        t = time.time()
        timed(lambda: step(compiled), 2)
        result["compile_s"] = round(time.time() - t, 1)
        result["compiled_step_ms"] = round(timed(lambda: step(compiled), 10) * 1000, 2)
    result["mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
