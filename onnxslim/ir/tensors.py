"""Typed views of a graph's inputs, outputs and weights."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; dims are ints, names, or None."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype) if self.dtype is not None else "unknown"

    def shape_text(self) -> str:
        if self.shape is None:
            return "unknown rank"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype_name, "shape": None if self.shape is None else list(self.shape)}


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if ttype is None:
        return TensorSpec(value.name, None, None)
    dtype = None
    if ttype.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = None
    if not ttype.HasField("shape"):
        return TensorSpec(value.name, dtype, None)
    dims: list[Dim] = []
    for dim in ttype.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, dtype, tuple(dims))


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Inputs a caller must feed: graph inputs that are not also initializers."""
    initialized = {t.name for t in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in initialized]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph's outputs as typed specs, in order."""
    return [_spec(v) for v in model.graph.output]


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializer name -> tensor, for ``graph`` itself (not its subgraphs)."""
    return {t.name: t for t in graph.initializer}


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers a caller cannot override (those not listed as graph inputs)."""
    overridable = {v.name for v in graph.input}
    return {t.name for t in graph.initializer if t.name not in overridable}


def is_mapped(tensor: onnx.TensorProto) -> bool:
    """True for a weight kept on disk by onnxslim (external data at an absolute path, see ``ir.mapped``)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    return os.path.isabs(location)


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length) of a tensor's external data."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    length = entries.get("length")
    return entries.get("location", ""), int(entries.get("offset") or 0), None if length is None else int(length)


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values; a mapped weight comes back as a read-only memory map of its file."""
    if is_mapped(tensor):
        return _read_mapped(tensor)
    return numpy_helper.to_array(tensor)


def _read_mapped(tensor: onnx.TensorProto) -> np.ndarray:
    location, offset, length = external_info(tensor)
    shape = tuple(int(d) for d in tensor.dims)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    count = int(np.prod(shape, dtype=np.int64))
    if dtype is not None and dtype.kind in "biuf" and (length is None or length == count * dtype.itemsize):
        if count == 0:
            return np.zeros(shape, dtype)
        return np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=shape)
    # packed or exotic types (int4, float8, bfloat16...): let onnx decode the bytes
    with open(location, "rb") as handle:
        handle.seek(offset)
        payload = handle.read() if length is None else handle.read(length)
    inline = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=payload)
    return numpy_helper.to_array(inline)


def from_array(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def tensor_elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count


PACKED_4BIT = frozenset(getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name))


def nominal_bytes(tensor: onnx.TensorProto) -> int:
    """Size implied by a tensor's dims and type: what its raw data holds (4-bit types two to a byte), or external data
    written without a length. Reading ``raw_data`` itself to measure it copies its bytes."""
    if tensor.data_type in PACKED_4BIT:
        return (tensor_elements(tensor) + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return tensor_elements(tensor) * itemsize


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken``; the result is added to it."""
    name = base
    index = 1
    while name in taken:
        name = f"{base}_{index}"
        index += 1
    taken.add(name)
    return name


def all_value_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name used in ``graph`` and its subgraphs."""
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    names |= {t.name for t in graph.initializer} | {v.name for v in graph.value_info}
    for node in graph.node:
        names.update(n for n in node.input if n)
        names.update(n for n in node.output if n)
        for sub in subgraphs(node):
            names |= all_value_names(sub)
    return names


def subgraphs(node: onnx.NodeProto):
    """The graphs held in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself: its references to enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                used.add(name)
        for sub in subgraphs(node):
            used |= outer_references(sub) - defined
        defined.update(o for o in node.output if o)
    for out in graph.output:
        if out.name not in defined:
            used.add(out.name)
    return used


def consumers_map(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes reading it, counting reads from inside a node's subgraphs."""
    result: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        reads = {n for n in node.input if n}
        for sub in subgraphs(node):
            reads |= outer_references(sub)
        for name in reads:
            result.setdefault(name, []).append(node)
    return result


def producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node of ``graph`` that produces it."""
    return {out: node for node in graph.node for out in node.output if out}
