"""A quantized model whose every layer reads exact inputs: the noise each layer adds by itself, in one pass.

Comparing the fully quantized model with the float one tensor by tensor mixes
what a layer adds with what it inherits: deep in a network whose early layers
are noisy, a layer's output carries less relative noise than its input (a
convolution averages it down) and it looks harmless whatever its own rounding
costs. Here the float model runs inside the quantized one: every activation
QuantizeLinear reads the float model's value of its tensor instead of the
quantized model's, so each layer sees its inputs rounded once from the exact
values, its weights rounded, and nothing from upstream. The quantized copy keeps
the tensor names the comparison reads; the float copy's are prefixed.
"""

from __future__ import annotations

import onnx

from onnxslim.ir.scopes import find_bodies

FLOAT_PREFIX = "onnxslim_exact/"


def inputs_made_exact(float_model: onnx.ModelProto, quantized: onnx.ModelProto) -> onnx.ModelProto | None:
    """``quantized`` with the float model computed beside it and every activation QuantizeLinear fed from the float copy.

    Both models take the same graph inputs. None where the float model has If/Loop/Scan bodies (their outer
    references would need renaming inside them) or nothing would be rewired.
    """
    if find_bodies(float_model.graph) or find_bodies(quantized.graph):
        return None
    shared = {i.name for i in float_model.graph.input} - {t.name for t in float_model.graph.initializer}

    def exact(name: str) -> str:
        return name if not name or name in shared else float_copy(name)

    merged = onnx.ModelProto()
    merged.CopyFrom(quantized)
    float_values = set()
    nodes = []
    for node in float_model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = FLOAT_PREFIX + node.name
        copy.input[:] = [exact(n) for n in node.input]
        copy.output[:] = [exact(n) for n in node.output]
        float_values.update(o for o in node.output if o)
        nodes.append(copy)
    initializers = []
    for tensor in float_model.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = exact(tensor.name)
        initializers.append(copy)
    rewired = 0
    for node in merged.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in float_values:
            node.input[0] = exact(node.input[0])
            rewired += 1
    if not rewired:
        return None
    # the float copy first: every node still comes after what it reads
    kept = list(merged.graph.node)
    del merged.graph.node[:]
    merged.graph.node.extend(nodes + kept)
    merged.graph.initializer.extend(initializers)
    return merged


def float_copy(name: str) -> str:
    """The name, in :func:`inputs_made_exact`'s model, of the float model's value of the node output ``name``."""
    return FLOAT_PREFIX + name
