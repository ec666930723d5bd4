"""Read a bundle's weights back into PyTorch: the bundle is the durable copy of the trained weights.

Every initializer the writer stored under a weight name (`name`, or `name.T` for a transposed Linear)
is read back, with its external data, and returned in the writer's naming and PyTorch layout. The
writer stores the fp16 checkpoint values unchanged, so `TinyLlava.load_state_dict(weights, strict=False)`
restores exactly what training produced for every exported part (the ViT layers after the feature
layer and the training-only heads are not in a bundle).
"""

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def bundle_weights(bundle_dir):
    """{weight name: float32 ndarray in PyTorch layout} from every graph of the bundle."""
    root = Path(bundle_dir)
    manifest = json.loads((root / "manifest.json").read_text())
    out = {}
    for graph in manifest["graphs"].values():
        model = onnx.load(str(root / graph["path"]), load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(model, str((root / graph["path"]).parent))
        for init in model.graph.initializer:
            name = init.name
            if not (name.startswith(("vision.", "projector.", "language."))):
                continue
            arr = numpy_helper.to_array(init).astype(np.float32)
            if name.endswith(".T"):
                name, arr = name[:-2], arr.T.copy()
            if name in out and not np.array_equal(out[name], arr):
                raise ValueError(f"{graph['path']}: {name} differs from the copy in another graph")
            out[name] = arr
    return out, manifest


def load_model_from_bundle(bundle_dir, device="cpu"):
    import torch

    from .model import TinyLlava, TinyLlavaConfig

    weights, manifest = bundle_weights(bundle_dir)
    v, lang = manifest["vision"], manifest["language"]
    config = TinyLlavaConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], vision_hidden=v["hidden_size"],
        vision_heads=v["num_heads"], vision_intermediate=v["intermediate_size"], vision_layers=v["trained_layers"],
        feature_layer=v["num_layers"] - 1, layer_norm_eps=v["layer_norm_eps"], hidden=lang["hidden_size"],
        heads=lang["num_heads"], kv_heads=lang["num_kv_heads"], intermediate=lang["intermediate_size"],
        layers=lang["num_layers"], rms_norm_eps=lang["rms_norm_eps"], rope_theta=lang["rope_theta"],
        vocab_size=lang["vocab_size"], max_positions=lang["max_positions"])
    model = TinyLlava(config)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(a) for k, a in weights.items()}, strict=False)
    if unexpected:
        raise ValueError(f"bundle weights unknown to TinyLlava: {unexpected[:8]}")
    bad = [m for m in missing if not (m.startswith("heads.") or m.startswith(f"vision.layers.{config.feature_layer + 1}"))
           and not any(m.startswith(f"vision.layers.{i}.") for i in range(config.feature_layer + 1, config.vision_layers))]
    if bad:
        raise ValueError(f"bundle lacks weights the exported model needs: {bad[:8]}")
    return model.to(device).eval(), manifest
