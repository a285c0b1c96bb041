"""Unstructured magnitude pruning: zero the smallest weights of each layer."""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.mapped import ArrayStore
from onnxslim.ir.tensors import constant_names, initializer_map, to_array

WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def magnitude_sparsify(model: onnx.ModelProto, sparsity: float) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with ``sparsity`` of each weight tensor's smallest entries set to zero."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    constants = constant_names(result.graph)
    inits = initializer_map(result.graph)
    store = ArrayStore(result)
    done: set[str] = set()
    lines = []
    for node in result.graph.node:
        index = WEIGHTED.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in constants or node.input[index] in done:
            continue
        name = node.input[index]
        weight = to_array(inits[name])
        if weight.dtype.kind != "f" or weight.size < 2:
            continue
        count = int(np.floor(weight.size * sparsity))
        if count == 0:
            continue
        threshold = np.partition(np.abs(weight).ravel(), count - 1)[count - 1]
        sparse = np.where(np.abs(weight) <= threshold, 0, weight).astype(weight.dtype)
        inits[name].CopyFrom(store.tensor(sparse, name))
        done.add(name)
        lines.append(f"{node.name}: {np.mean(sparse == 0):.1%} of {weight.size} weights are zero")
    return result, lines
