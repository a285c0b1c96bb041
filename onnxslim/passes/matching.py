"""What a pattern-matching pass looks up in a graph: constants, producers, readers, graph outputs."""

from __future__ import annotations

import numpy as np
import onnx

from onnxslim.ir.tensors import constant_names, consumers_map, initializer_map, producer_map, to_array


class GraphIndex:
    """One graph's constants, producers and readers, built once for a pass that matches patterns in it."""

    def __init__(self, graph: onnx.GraphProto):
        self.constants = constant_names(graph)
        self.inits = initializer_map(graph)
        self.producers = producer_map(graph)
        self.consumers = consumers_map(graph)
        self.outputs = {v.name for v in graph.output}

    def array(self, name: str) -> np.ndarray | None:
        """The values of constant ``name``, or None when it is not a constant initializer."""
        return to_array(self.inits[name]) if name in self.constants else None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant, or None."""
        values = self.array(name)
        return float(values.reshape(())) if values is not None and values.size == 1 else None

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes reading ``tensor``; none for a graph output, whose value must stay as it is."""
        return [] if tensor in self.outputs else self.consumers.get(tensor, [])

    @staticmethod
    def other(node: onnx.NodeProto, name: str) -> str:
        """The input of two-input ``node`` that is not ``name``."""
        return node.input[1] if node.input[0] == name else node.input[0]

    def private(self, tensor: str) -> bool:
        """True when one node reads ``tensor`` and it is not a graph output: a pattern may absorb it."""
        return len(self.readers(tensor)) == 1
