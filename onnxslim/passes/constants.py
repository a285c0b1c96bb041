"""Turn weights held in ``Constant`` nodes into initializers.

Exporters such as Paddle2ONNX put every weight in a Constant node. Quantizers
and pruners look for weights among initializers, so a weight in a Constant
node would be treated as an activation (one scale, or missed entirely). This
pass moves each Constant of the main graph into an initializer of the same
name; Constants inside subgraphs are left where they are, since an initializer
there would change the subgraph's scope.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslim.passes.base import DeclineCode, PassResult


def _constant_tensor(node: onnx.NodeProto) -> tuple[onnx.TensorProto | None, str]:
    attrs = {a.name: a for a in node.attribute}
    output = node.output[0]
    if "value" in attrs:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attrs["value"].t)
        tensor.name = output
        return tensor, ""
    if "value_float" in attrs:
        return numpy_helper.from_array(np.array(attrs["value_float"].f, dtype=np.float32), output), ""
    if "value_floats" in attrs:
        return numpy_helper.from_array(np.array(list(attrs["value_floats"].floats), dtype=np.float32), output), ""
    if "value_int" in attrs:
        return numpy_helper.from_array(np.array(attrs["value_int"].i, dtype=np.int64), output), ""
    if "value_ints" in attrs:
        return numpy_helper.from_array(np.array(list(attrs["value_ints"].ints), dtype=np.int64), output), ""
    if "sparse_value" in attrs:
        return None, "sparse constant kept as a node"
    if "value_string" in attrs or "value_strings" in attrs:
        return None, "string constant kept as a node"
    return None, "constant refers to an outer attribute"


def constants_to_initializers(model: onnx.ModelProto) -> PassResult:
    """Move every Constant node of the main graph into an initializer of the same name."""
    result = PassResult("constants-to-initializers")
    graph = model.graph
    if model.ir_version < 4:
        # Before IR 4 every initializer also had to be a graph input, which would make weights overridable.
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                result.decline(node.name or node.output[0], DeclineCode.OPSET, f"IR version {model.ir_version} < 4 requires initializers to be inputs")
        return result
    kept: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        tensor, reason = _constant_tensor(node)
        if tensor is None:
            result.decline(node.name or node.output[0], DeclineCode.UNSUPPORTED_FORM, reason)
            kept.append(node)
            continue
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
        result.change(f"moved {moved} Constant node(s) into initializers")
    return result



def initializers_out_of_inputs(model: onnx.ModelProto) -> PassResult:
    """Stop listing initializers as graph inputs where the listing is a format rule or an exporter's habit.

    Models of IR version < 4 had to list every initializer as a graph input too; exporters asked to keep
    initializers as inputs (torch's ``keep_initializers_as_inputs``, the default of its early releases) list
    every weight in later IR versions as well. Either way the listing is not a wish to feed weights at run
    time, yet it makes every weight look overridable, so nothing treats them as constants. Old models are
    moved to IR 4 with the listing removed; a later model loses it where every initializer of two or more
    dimensions is listed, and keeps it otherwise (a threshold or a setting with a default is an input on purpose).
    """
    result = PassResult("initializers-out-of-inputs")
    names = {t.name for t in model.graph.initializer}
    listed = names & {v.name for v in model.graph.input}
    if model.ir_version >= 4:
        arrays = {t.name for t in model.graph.initializer if len(t.dims) >= 2}
        if not listed or not arrays or not arrays <= listed:
            return result
    kept = [v for v in model.graph.input if v.name not in names]
    dropped = len(model.graph.input) - len(kept)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(kept)
    if model.ir_version < 4:
        result.change(f"IR version {model.ir_version} -> 4: {dropped} initializer(s) are no longer listed as inputs")
        model.ir_version = 4
    else:
        result.change(f"{dropped} initializer(s), every weight among them, were listed as graph inputs as well (an exporter's habit): no longer listed, so they are constants")
    return result
