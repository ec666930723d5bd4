"""The one bundle writer (docs/bundle-format.md): config + weight dict + tokenizer -> bundle folder.

    from tools.bundle.writer import write_bundle
    manifest = write_bundle("models/tiny", config, weights, tokenizer_json, source={"producer": "..."})

The folder is written next to `out_dir` under a temporary name and renamed into place at the end, so a
failed export never leaves a half bundle behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from onnx import TensorProto

from . import graphs
from .config import BundleError, check_weights, normalize_config
from .tokenizer import tokenizer_vocab_size

FORMAT = "vlm-bundle"
FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "shared" / "bundle" / "manifest.schema.json"
# A layer whose attn+scores weights exceed this many bytes shares them through layer_NN.data by default;
# smaller layers embed them (two copies of a small layer cost less than an extra file).
EXTERNAL_DATA_THRESHOLD = 4 << 20
# Large tensors start on a page boundary so onnxruntime can memory-map them; small ones only on a cache
# line (page-aligning every bias would make a tiny bundle mostly padding).
PAGE_ALIGNMENT, SMALL_ALIGNMENT, SMALL_TENSOR = 4096, 64, 64 << 10
FP16_MAX = 65504.0


def write_bundle(out_dir: Union[str, Path], config: dict, weights: Dict[str, np.ndarray],
                 tokenizer_json: Union[str, dict], source: dict, weight_dtype: str = "float16",
                 external_data: Union[bool, str] = "auto", overwrite: bool = False,
                 matmul_dtype: str = "float32") -> dict:
    """Writes a complete bundle and returns its manifest.

    weight_dtype: how initializers are stored ('float16' halves the bundle; graphs cast to float32).
    external_data: True / False / 'auto' (share each layer's attn+scores weights through `layer_NN.data`
      when they exceed EXTERNAL_DATA_THRESHOLD bytes).
    overwrite: replace an existing bundle at out_dir (only a folder that holds a manifest.json).
    matmul_dtype: 'float16' runs the MatMuls with stored weights in half precision on the stored
      float16 weights (GPU bundles: no float32 weight copies); norms, softmax and RoPE stay float32.
    """
    out = Path(out_dir)
    cfg = normalize_config(config)
    if weight_dtype not in ("float16", "float32"):
        raise BundleError(f"weight_dtype must be 'float16' or 'float32', got {weight_dtype!r}")
    if matmul_dtype not in ("float32", "float16") or (matmul_dtype == "float16" and weight_dtype != "float16"):
        raise BundleError(f"matmul_dtype must be 'float32', or 'float16' with float16 weights; got {matmul_dtype!r} "
                          f"with {weight_dtype!r} weights")
    w = check_weights(cfg, weights)
    if weight_dtype == "float16":
        _check_fp16_range(w)
    tokenizer_text, tokenizer = _tokenizer_text(tokenizer_json)
    _check_tokenizer(cfg, tokenizer)
    if not isinstance(source, dict):
        raise BundleError("source must be a dict (free-form provenance)")

    _prepare_target(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / "tokenizer.json").write_text(tokenizer_text, encoding="utf-8")
        graph_entries = _write_graphs(tmp, cfg, w, weight_dtype, _share_layer_data(cfg, w, weight_dtype, external_data),
                                      matmul_dtype)
        files = _file_list(tmp)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_id": cfg["model_id"],
            "content_hash": content_hash(files),
            "io_dtype": cfg["io_dtype"],
            **{k: cfg[k] for k in ("vision", "projector", "language", "preprocess", "prompt", "tokens",
                                   "generation", "reduction")},
            "graphs": graph_entries,
            "files": files,
            "source": {"weight_dtype": weight_dtype, **source},
        }
        validate_manifest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: list) -> str:
    """sha256 over `<path>\\t<sha256>\\n` for every file entry, sorted by path (ASCII order)."""
    lines = "".join(f"{f['path']}\t{f['sha256']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return "sha256:" + hashlib.sha256(lines.encode("ascii")).hexdigest()


def _file_list(root: Path) -> list:
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == "manifest.json":
            continue
        files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return sorted(files, key=lambda f: f["path"])


# ---------------------------------------------------------------------------------------------------
# graphs and external data


def _share_layer_data(cfg: dict, w: dict, weight_dtype: str, external_data: Union[bool, str]) -> bool:
    if external_data in (True, False):
        return bool(external_data)
    if external_data != "auto":
        raise BundleError(f"external_data must be True, False or 'auto', got {external_data!r}")
    itemsize = 2 if weight_dtype == "float16" else 4
    largest = 0
    for prefix, n in (("vision", cfg["vision"]["num_layers"]), ("language", cfg["language"]["num_layers"])):
        for i in range(n):
            names = [k for k in w if k.startswith(f"{prefix}.layers.{i}.") and any(
                s in k for s in ("q_proj", "k_proj", "v_proj", "o_proj"))]
            largest = max(largest, sum(w[k].size for k in names) * itemsize)
    return largest > EXTERNAL_DATA_THRESHOLD


class _DataFile:
    """One external-data file; a tensor written once is referenced by every graph that needs it."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.size = 0
        self.entries: Dict[str, tuple] = {}  # initializer name -> (offset, length, sha256)

    def place(self, name: str, raw: bytes) -> tuple:
        digest = hashlib.sha256(raw).hexdigest()
        if name in self.entries:
            offset, length, known = self.entries[name]
            if known != digest:
                raise BundleError(f"{self.path.name}: two graphs store different data under {name!r}")
            return offset, length
        pad = (-self.size) % (PAGE_ALIGNMENT if len(raw) >= SMALL_TENSOR else SMALL_ALIGNMENT)
        self.file.write(b"\0" * pad)
        offset = self.size + pad
        self.file.write(raw)
        self.size = offset + len(raw)
        self.entries[name] = (offset, len(raw), digest)
        return offset, len(raw)

    def close(self) -> None:
        self.file.close()


def _externalize(stage: graphs.Stage, data: _DataFile) -> None:
    weight_names = set(stage.weight_names)
    for tensor in stage.model.graph.initializer:
        if tensor.name not in weight_names:
            continue
        offset, length = data.place(tensor.name, tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", data.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def _write_graphs(root: Path, cfg: dict, w: dict, weight_dtype: str, share_layer_data: bool,
                  matmul_dtype: str = "float32") -> dict:
    entries: dict = {}
    data_files: Dict[str, _DataFile] = {}
    try:
        for stage in graphs.all_stages(cfg, w, graphs.WeightFormat(weight_dtype, matmul_dtype), share_layer_data):
            target = root / stage.path
            target.parent.mkdir(parents=True, exist_ok=True)
            entry = {"path": stage.path, "inputs": [s.to_manifest() for s in stage.inputs],
                     "outputs": [s.to_manifest() for s in stage.outputs]}
            if stage.shared_data:
                if stage.shared_data not in data_files:
                    data_files[stage.shared_data] = _DataFile(root / stage.shared_data)
                _externalize(stage, data_files[stage.shared_data])
                entry["external_data"] = [stage.shared_data]
            # Serialized directly: onnx.save would try to (re)write the external tensors itself.
            target.write_bytes(stage.model.SerializeToString())
            entries[stage.name] = entry
    finally:
        for data in data_files.values():
            data.close()
    return entries


# ---------------------------------------------------------------------------------------------------
# checks


def _check_fp16_range(w: dict) -> None:
    too_big = [name for name, arr in w.items() if arr.size and float(np.max(np.abs(arr))) > FP16_MAX]
    if too_big:
        raise BundleError(f"weights exceed the float16 range (|x| > {FP16_MAX}); use weight_dtype='float32': {too_big[:8]}")


def _tokenizer_text(tokenizer_json: Union[str, dict]):
    if isinstance(tokenizer_json, dict):
        return json.dumps(tokenizer_json, ensure_ascii=False, indent=1) + "\n", tokenizer_json
    if isinstance(tokenizer_json, str):
        try:
            return tokenizer_json, json.loads(tokenizer_json)  # kept byte for byte
        except json.JSONDecodeError as err:
            raise BundleError(f"tokenizer_json is not valid JSON: {err}") from err
    raise BundleError(f"tokenizer_json must be a JSON string or a dict, got {type(tokenizer_json).__name__}")


def _check_tokenizer(cfg: dict, tokenizer: dict) -> None:
    missing = [k for k in ("model", "normalizer", "pre_tokenizer", "decoder", "post_processor", "added_tokens")
               if k not in tokenizer]
    if missing:
        raise BundleError(f"tokenizer.json lacks {missing} (the JS tokenizer requires every one, null allowed)")
    model_type = tokenizer["model"].get("type") if isinstance(tokenizer["model"], dict) else None
    if model_type not in ("BPE", "WordPiece", "Unigram"):
        raise BundleError(f"tokenizer model type {model_type!r} is not supported by @huggingface/tokenizers 0.2 "
                          "(use BPE, WordPiece or Unigram)")
    size = tokenizer_vocab_size(tokenizer)
    if size > cfg["language"]["vocab_size"]:
        raise BundleError(f"the tokenizer has ids up to {size - 1} but language.vocab_size is {cfg['language']['vocab_size']}")


def _prepare_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        return
    if not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        out.rmdir()
        return
    if not overwrite:
        raise BundleError(f"{out} is not empty; pass overwrite=True to replace the bundle there")
    if not (out / "manifest.json").exists():
        raise BundleError(f"refusing to overwrite {out}: it is not a bundle (no manifest.json)")


def validate_manifest(manifest: dict) -> None:
    """Against shared/bundle/manifest.schema.json with jsonschema when importable, else structurally."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]]
            raise BundleError("manifest does not match manifest.schema.json:\n  " + "\n  ".join(lines))
    else:
        missing = [k for k in schema["required"] if k not in manifest]
        extra = [k for k in manifest if k not in schema["properties"]]
        if missing or extra:
            raise BundleError(f"manifest structure: missing {missing}, unexpected {extra}")
        for section in ("vision", "projector", "language", "preprocess", "prompt", "tokens", "generation"):
            sub = schema["properties"][section]
            missing = [k for k in sub["required"] if k not in manifest[section]]
            extra = [k for k in manifest[section] if k not in sub["properties"]]
            if missing or extra:
                raise BundleError(f"manifest.{section}: missing {missing}, unexpected {extra}")
    listed = {f["path"] for f in manifest["files"]}
    for name, graph in manifest["graphs"].items():
        for path in [graph["path"], *graph.get("external_data", [])]:
            if path not in listed:
                raise BundleError(f"graph {name} refers to {path}, which is not in files")
