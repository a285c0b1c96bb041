"""Leave out a recurrent layer's initial state where it is all zeros: the state a missing input stands for.

torch exports ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` called without a state as a ConstantOfShape of zeros, sized from the
batch at run time and sliced per layer, fed as ``initial_h`` (and ``initial_c``). ONNX defines a missing initial state as
zeros, so the input can simply be left out. This keeps the hidden size out of a shape computed at run time (pruning
can then remove hidden units) and saves building the zeros at every run.

    LSTM(x, W, R, B, lens, Slice(ConstantOfShape(shape, value=0)), ...)  ->  LSTM(x, W, R, B, lens, "", ...)
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.layers import INITIAL_STATE_INPUTS
from onnxslim.ir.tensors import to_array
from onnxslim.passes.base import PassResult

# ops that pass a tensor of zeros on as zeros (whatever they select, reshape or repeat)
ZEROS_KEPT = {"Slice", "Squeeze", "Unsqueeze", "Gather", "Identity", "Reshape", "Expand", "Cast", "Tile", "Concat", "Transpose"}


def zero_initial_states_left_out(model: onnx.ModelProto) -> PassResult:
    """Set each initial-state input of the main graph's LSTM, GRU and RNN nodes that is all zeros to '' (dropping trailing
    empty inputs); the nodes that computed those zeros are left for dead-node removal."""
    result = PassResult("zero-initial-states-left-out")
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in INITIAL_STATE_INPUTS or node.domain not in ("", "ai.onnx"):
            continue
        zeros = [i for i in INITIAL_STATE_INPUTS[node.op_type] if i < len(node.input) and node.input[i] and _all_zeros(node.input[i], producers, inits)]
        for position in zeros:
            node.input[position] = ""
            result.change(f"{node.op_type} {node.name or node.output[0]}: initial state input {position} (zeros) left out")
        while zeros and node.input and not node.input[-1]:  # a node left alone keeps its inputs exactly as written
            node.input.pop()
    return result


def _all_zeros(name: str, producers: dict, inits: dict, depth: int = 0) -> bool:
    """Whether tensor ``name`` holds only zeros whatever the inputs: a zero constant, a ConstantOfShape of 0, or such zeros
    passed through ops that only select, reshape or repeat them (a Concat of zeros only)."""
    if depth > 16:
        return False
    if name in inits:
        array = to_array(inits[name])
        return array.dtype.kind == "f" and not np.any(array)
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value is None or not np.any(to_array(value))
    if node.op_type == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return value is not None and not np.any(to_array(value))
    if node.op_type not in ZEROS_KEPT or not node.input:
        return False
    data = node.input if node.op_type == "Concat" else node.input[:1]
    return all(_all_zeros(source, producers, inits, depth + 1) for source in data)
