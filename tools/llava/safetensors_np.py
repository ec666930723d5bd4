"""Reads safetensors checkpoints (single file or sharded with an index) into numpy, without torch.

The format is 8 bytes of little-endian header length, a JSON header `{name: {dtype, shape,
data_offsets}}`, then the raw tensors. Tensors are memory-mapped, so a 14 GB checkpoint costs only the
tensors actually read. bfloat16 is widened to float32 (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointError(ValueError):
    """The checkpoint folder cannot be read; the message says what is wrong."""


def _header(path: Path) -> Tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 << 20:
            raise CheckpointError(f"{path}: header of {size} bytes; not a safetensors file?")
        header = json.loads(f.read(size))
    return header, 8 + size


def _tensor(path: Path, base: int, info: dict, name: str) -> np.ndarray:
    dtype, shape = info["dtype"], tuple(info["shape"])
    begin, end = info["data_offsets"]
    if dtype == "BF16":
        raw = np.memmap(path, dtype="<u2", mode="r", offset=base + begin, shape=((end - begin) // 2,))
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}, which this reader does not handle")
    np_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    count = (end - begin) // np_dtype.itemsize
    if count != int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(f"{path}: tensor {name} has {end - begin} bytes for shape {list(shape)} {dtype}")
    if count == 0:
        return np.zeros(shape, np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r", offset=base + begin, shape=shape)


def checkpoint_files(folder: Path) -> list:
    """The safetensors files of a checkpoint folder: the shards its index names, or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"{folder} holds no safetensors weights (model.safetensors or an index); "
                              "PyTorch .bin checkpoints must be re-saved with save_pretrained first")
    return found


def tensor_names(folder: Path) -> Dict[str, Path]:
    names: Dict[str, Path] = {}
    for path in checkpoint_files(folder):
        header, _ = _header(path)
        for name in header:
            if name != "__metadata__":
                names[name] = path
    return names


def iter_tensors(folder: Path, wanted=None) -> Iterator[Tuple[str, np.ndarray]]:
    """(name, array) for every tensor (or those `wanted(name)` accepts), memory-mapped where possible."""
    for path in checkpoint_files(folder):
        header, base = _header(path)
        for name, info in header.items():
            if name == "__metadata__" or (wanted is not None and not wanted(name)):
                continue
            yield name, _tensor(path, base, info, name)
