"""A thin layer over onnx.helper for hand-built stage graphs.

Only onnx.helper / numpy_helper calls that exist unchanged from onnx 1.12 to 1.23 are used, and every
model is opset 17, default domain, IR version 8, so the same code writes the same graphs on the CPU dev
machine and on the GPU host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Dim = Union[int, str]

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "int64": TensorProto.INT64,
}


@dataclass(frozen=True)
class IoSpec:
    """One graph input or output as the manifest declares it."""

    name: str
    dtype: str  # float32 | float16 | int64
    shape: tuple  # ints and symbols (B, T, P, PT, N)

    def to_manifest(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class GraphBuilder:
    """Accumulates nodes and initializers; names every intermediate uniquely."""

    name: str
    weight_dtype: str = "float16"
    # float16: MatMuls with stored weights run in half precision (graphs._matmul_weight).
    matmul_dtype: str = "float32"
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    # Names of initializers that hold model weights (candidates for external data).
    weight_names: list = field(default_factory=list)
    _count: int = 0
    _consts: dict = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    # -- graph boundary -------------------------------------------------------------------------

    def input(self, name: str, dtype: str, shape: Sequence[Dim]) -> str:
        self.inputs.append(IoSpec(name, dtype, tuple(shape)))
        return name

    def output(self, value: str, name: str, dtype: str, shape: Sequence[Dim]) -> None:
        self.op("Identity", [value], outputs=[name])
        self.outputs.append(IoSpec(name, dtype, tuple(shape)))

    # -- nodes ----------------------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | None = None,
           n_out: int = 1, **attrs) -> str | list:
        outs = list(outputs) if outputs is not None else [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(f"n_{op_type}"), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype=np.float32) -> str:
        """A small constant (shape vectors, eps, scale); deduplicated by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def weight(self, name: str, arr: np.ndarray, transpose: bool = False, cast: bool = True) -> str:
        """A model weight, stored as `weight_dtype` and cast to float32 for compute.

        Linear weights arrive in PyTorch's [out, in] layout and are stored transposed ([in, out]) so the
        graph needs a plain MatMul; the stored name then ends in `.T`.
        """
        data = np.ascontiguousarray(arr.T if transpose else arr)
        stored = f"{name}.T" if transpose else name
        self.initializers.append(numpy_helper.from_array(data.astype(self._np_weight_dtype()), stored))
        self.weight_names.append(stored)
        if self.weight_dtype == "float32" or not cast:
            return stored
        return self.op("Cast", [stored], to=TensorProto.FLOAT)

    def raw_weight(self, name: str, arr: np.ndarray) -> str:
        """A weight stored as `weight_dtype` without the Cast (for Gather-then-Cast lookups)."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr).astype(self._np_weight_dtype()), name))
        self.weight_names.append(name)
        return name

    def _np_weight_dtype(self):
        if self.weight_dtype not in ("float16", "float32"):
            raise ValueError(f"weight_dtype must be 'float16' or 'float32', got {self.weight_dtype!r}")
        return np.float16 if self.weight_dtype == "float16" else np.float32

    # -- model ----------------------------------------------------------------------------------

    def build(self) -> onnx.ModelProto:
        def vi(spec: IoSpec):
            return helper.make_tensor_value_info(spec.name, ONNX_DTYPES[spec.dtype], list(spec.shape))

        graph = helper.make_graph(self.nodes, self.name.replace("/", "_"), [vi(s) for s in self.inputs],
                                  [vi(s) for s in self.outputs], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="vlm-bundle-writer")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        return model
