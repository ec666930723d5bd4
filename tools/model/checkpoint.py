"""fp16 checkpoints that travel in pieces (the device host returns files of at most 16 MiB).

A checkpoint folder holds `ckpt.json` (step, config, schedule, history) and `ckpt.partN` files, the
byte pieces of one `torch.save` of the fp16 state_dict. Every weight of the model, training heads
included, round-trips: training resumes from it (with a fresh optimizer) and export reads it.
"""

import io
import json
from pathlib import Path

import torch

PART_BYTES = 15 * 1024 * 1024


def save(folder, model, meta):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("ckpt.part*"):
        old.unlink()
    buf = io.BytesIO()
    torch.save({k: v.detach().to(torch.float16).cpu() for k, v in model.state_dict().items()}, buf)
    data = buf.getvalue()
    parts = 0
    for parts, start in enumerate(range(0, len(data), PART_BYTES), 1):
        (folder / f"ckpt.part{parts - 1}").write_bytes(data[start : start + PART_BYTES])
    meta = dict(meta, parts=parts, config=model.config.to_dict())
    (folder / "ckpt.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_meta(folder):
    return json.loads((Path(folder) / "ckpt.json").read_text())


def load_state(folder):
    """(fp16 state_dict, meta)."""
    folder = Path(folder)
    meta = load_meta(folder)
    data = b"".join((folder / f"ckpt.part{i}").read_bytes() for i in range(meta["parts"]))
    return torch.load(io.BytesIO(data), map_location="cpu"), meta


def load_model(folder, device="cpu"):
    """A TinyLlava in float32 with the checkpoint's weights, and the meta."""
    from .model import TinyLlava, TinyLlavaConfig

    state, meta = load_state(folder)
    model = TinyLlava(TinyLlavaConfig(**meta["config"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), meta
