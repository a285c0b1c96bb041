"""Where a sequence's length is read: the helpers that prove a loop runs once per step of a sequence.

Exporters read a sequence's length at run time (Shape, then a Slice or Gather of its entry 0, through casts and
squeezes); a pass that replaces a loop over the steps by a layer that takes every step must see that the length the
loop's bounds read is the sequence's own, or that of one as long (a reversed copy).
"""

from __future__ import annotations

import numpy as np

from onnxslim.ir.graph import node_attr
from onnxslim.ir.tensors import to_array

# ops through which a tensor keeps its first dimension (a reversed sequence is as long as the sequence)
SAME_LENGTH = {"Identity", "Cast", "ReverseSequence", "Relu", "Neg", "Abs", "Sigmoid", "Tanh"}


def _behind(name: str, producers: dict, op_types: tuple[str, ...]) -> str:
    """``name`` with the nodes of ``op_types`` in front of it skipped (32 at most)."""
    seen = 0
    while name in producers and producers[name].op_type in op_types and seen < 32:
        name, seen = producers[name].input[0], seen + 1
    return name


def without_identities(name: str, producers: dict) -> str:
    """``name`` with the Identity nodes in front of it skipped."""
    return _behind(name, producers, ("Identity",))


def without_casts(name: str, producers: dict) -> str:
    """``name`` with the Identity and Cast nodes in front of it skipped (tf2onnx casts lengths to int32 and back)."""
    return _behind(name, producers, ("Identity", "Cast"))


def constant_value(name: str, producers: dict, inits: dict) -> np.ndarray | None:
    """The value of ``name`` where a Constant node or an initializer of ``inits`` holds it, else None."""
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return to_array(node.attribute[0].t)
    return to_array(inits[name]) if name in inits else None


def first_dim_of(name: str | None, producers: dict, inits: dict) -> str | None:
    """The tensor whose first dimension the scalar ``name`` holds (read through Shape and a Slice or Gather of its
    entry 0), or None."""
    for _ in range(16):
        node = producers.get(name) if name is not None else None
        if node is None:
            return None
        if node.op_type in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape"):
            name = node.input[0]
            continue
        if node.op_type not in ("Slice", "Gather"):
            return None
        shape = producers.get(without_casts(node.input[0], producers))
        if shape is None or shape.op_type != "Shape" or node_attr(shape, "start", 0) != 0:
            return None
        values = [constant_value(i, producers, inits) if i else None for i in node.input[1:]]
        if node.op_type == "Gather":
            picks_first = values[0] is not None and values[0].size == 1 and int(values[0].reshape(())) == 0
        else:
            starts, ends = values[0], values[1]
            axes = values[2] if len(values) > 2 else None
            picks_first = (starts is not None and ends is not None and starts.size == 1 and ends.size == 1
                           and int(starts.reshape(())) == 0 and int(ends.reshape(())) == 1
                           and (axes is None or int(axes.reshape(-1)[0]) == 0))
        return shape.input[0] if picks_first else None
    return None


def length_root(name: str | None, producers: dict) -> str | None:
    """The tensor ``name`` has its first dimension from, through ops that keep it."""
    for _ in range(64):
        node = producers.get(name) if name is not None else None
        if node is None or node.op_type not in SAME_LENGTH:
            return name
        name = node.input[0]
    return name
