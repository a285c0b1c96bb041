"""The student's ONNX graph as a trainable torch module, and its trained weights written back into the graph.

onnx2pytorch turns the graph into modules; the weights of Conv, Gemm/MatMul
(as Linear) and normalization layers become parameters, everything else stays
fixed. Training changes weights only, so the result is the student's own
graph with new initializer values: same inputs, outputs, opset and every other
node. Each parameter is tied to its initializer by value when the module is
built, among the tensors its node and that node's neighbours read (a MatMul
and the Add fused into one Linear), never across the graph.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim.errors import UnsupportedModelError, UsageError, first_line
from onnxslim.ir.layers import RECURRENT_LAYERS
from onnxslim.ir.shapes import infer_shapes
from onnxslim.ir.tensors import consumers_map, from_array, initializer_map, producer_map, to_array

EXTRA = "pip install 'onnxslim[distill]'"


def require_torch():
    """torch and onnx2pytorch, or one line saying how to install them."""
    try:
        import torch
        from onnx2pytorch import ConvertModel
    except ImportError as exc:
        raise UsageError(f"distill needs torch and onnx2pytorch ({exc.name or exc} is missing): {EXTRA}") from None
    return torch, ConvertModel


@dataclass(frozen=True)
class Binding:
    """A trainable parameter and the initializer it came from (``transposed``: a Linear's weight is the MatMul weight's transpose)."""

    parameter: str
    initializer: str
    transposed: bool


def _neighbour_initializers(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Node's first output -> initializers read by the node, by its inputs' producers and by its outputs' readers."""
    graph = model.graph
    weights = initializer_map(graph)
    producer, readers = producer_map(graph), consumers_map(graph)
    near: dict[str, list[str]] = {}
    for node in graph.node:
        nodes = [node] + [producer[i] for i in node.input if i in producer] + [r for o in node.output for r in readers.get(o, [])]
        near[node.output[0]] = list(dict.fromkeys(name for n in nodes for name in n.input if name in weights))
    return near


def _node_of(parameter: str, module_node: dict) -> str:
    """The node output a parameter's module was built for; some modules hold the parameter in a child (ConvTranspose's ``.conv``)."""
    parts = parameter.split(".")[:-1]
    while parts:
        node = module_node.get(".".join(parts))
        if node is not None:
            return node
        parts.pop()
    return ""


def bind_parameters(net, model: onnx.ModelProto) -> tuple[list[Binding], list[str]]:
    """Tie every trainable parameter of ``net`` (built from ``model``) to the initializer holding the same values; the
    parameters of recurrent layers are frozen instead. Returns the bindings and the frozen layers' node names."""
    weights = initializer_map(model.graph)
    near = _neighbour_initializers(model)
    module_node = {module: output for output, module in net.mapping.items()}
    node_by_output = {node.output[0]: node for node in model.graph.node if node.output}
    readers = consumers_map(model.graph)
    shared = {name for name in weights if len(readers.get(name, [])) > 1}  # one weight read by several nodes (an unrolled LSTM's steps)
    bindings, taken, frozen = [], {}, []
    for name, parameter in list(net.named_parameters()):
        output = _node_of(name, module_node)
        node = node_by_output.get(output)
        # torch's recurrent layers keep each gate's weights in another order (i, f, g, o against ONNX's i, o, f, c) and the
        # two biases apart: no parameter holds what one ONNX initializer holds, so these layers keep their weights as they are
        if node is not None and node.op_type in RECURRENT_LAYERS:
            parameter.requires_grad_(False)
            frozen.append(node.name or node.output[0])
            continue
        values = parameter.detach().cpu().numpy()
        found = _matching(name, values, [c for c in near.get(output, []) if c not in taken], weights)
        if found is None:  # a weight several nodes read, bound already: this module's copy becomes that parameter, trained once
            found = _matching(name, values, [c for c in near.get(output, []) if c in shared and c in taken], weights)
            if found is not None and taken[found.initializer][1] == found.transposed and taken[found.initializer][0].shape == parameter.shape:
                owner, _, attribute = name.rpartition(".")
                setattr(net.get_submodule(owner), attribute, taken[found.initializer][0])
                continue
            raise UnsupportedModelError(f"distill: parameter '{name}' of the converted student matches no weight of its node; this graph cannot be trained")
        taken[found.initializer] = (parameter, found.transposed)
        bindings.append(found)
    return bindings, list(dict.fromkeys(frozen))


def _matching(name: str, values: np.ndarray, candidates: list[str], weights: dict) -> Binding | None:
    """The binding of parameter ``name`` (holding ``values``) to the first of ``candidates`` holding the same values, or None."""
    for candidate in candidates:
        array = to_array(weights[candidate])
        if array.size != values.size:
            continue
        if np.array_equal(array.reshape(values.shape), values) and np.squeeze(array).shape == np.squeeze(values).shape:
            return Binding(name, candidate, False)  # the same values, maybe with broadcast axes of 1 (an Add's bias)
        if array.ndim == 2 and array.T.shape == values.shape and np.array_equal(array.T, values):
            return Binding(name, candidate, True)
    return None


def to_module(model: onnx.ModelProto):
    """The trainable module for ``model``, its parameter bindings and the layers whose weights stay as they are
    (``bind_parameters``); one line naming the node when conversion fails."""
    torch, convert = require_torch()
    flow = next((n for n in model.graph.node if n.op_type in CONTROL_FLOW), None)
    if flow is not None:  # the converter builds no module for a subgraph's layers, or one that cannot run
        raise UnsupportedModelError(f"distill: the student's graph has control flow ({flow.op_type} {flow.name or flow.output[0]}), which the trainable module "
                                    "cannot follow; this graph cannot be distilled")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        working = onnx.ModelProto()
        working.CopyFrom(model)  # the converter rewrites the graph it is given (it folds a MatMul's bias Add away)
        _drop_default_attributes(working)
        _flat_linear_biases(working)
        try:
            net = convert(working, experimental=True)
        except Exception as exc:  # the converter raises many kinds for ops it lacks
            raise UnsupportedModelError(f"distill: the student cannot be turned into a trainable module: {first_line(exc, 200)}") from None
    for buffer in net.buffers():
        buffer.requires_grad_(False)
    return (net, *bind_parameters(net, model))


CONTROL_FLOW = ("If", "Loop", "Scan")

# attributes the converter does not read, which change nothing at the value the graph gives them: (op, attribute, value)
DEFAULT_ATTRIBUTES = (("BatchNormalization", "training_mode", 0),)


def _drop_default_attributes(model: onnx.ModelProto) -> None:
    """Remove from ``model`` (the converter's copy) the attributes of DEFAULT_ATTRIBUTES that hold their default value (torch
    writes BatchNormalization's training_mode=0 from opset 14); one line naming the node where one holds another value."""
    for node in model.graph.node:
        for op, name, default in DEFAULT_ATTRIBUTES:
            if node.op_type != op:
                continue
            found = next((a for a in node.attribute if a.name == name), None)
            if found is None:
                continue
            if onnx.helper.get_attribute_value(found) != default:
                raise UnsupportedModelError(f"distill: {op} {node.name or node.output[0]} has {name}={onnx.helper.get_attribute_value(found)}, which cannot be trained here")
            node.attribute.remove(found)


def _flat_linear_biases(model: onnx.ModelProto) -> None:
    """In the converter's copy, a bias of shape (1, ..., 1, N) that only an Add after a MatMul reads becomes (N,): the
    converter folds the pair into a Linear module, whose bias must be 1-D (a jax2tf export's Dense writes (1, 1, 64));
    broadcasting gives the same sums. The student's own graph keeps its shapes (bindings match values, not shapes)."""
    graph = model.graph
    producer, readers = producer_map(graph), consumers_map(graph)
    shapes = None
    for tensor in graph.initializer:
        dims = list(tensor.dims)
        if len(dims) < 2 or any(d != 1 for d in dims[:-1]):
            continue
        users = readers.get(tensor.name, [])
        products = [i for u in users for i in u.input if i != tensor.name]
        if not users or any(u.op_type != "Add" for u in users) or not all(producer.get(i) is not None and producer[i].op_type == "MatMul" for i in products):
            continue
        shapes = infer_shapes(model) if shapes is None else shapes
        # only where the product has at least the bias's rank: a flat bias then broadcasts to the same shape
        if all(shapes.get(i) is not None and len(shapes[i]) >= len(dims) for i in products):
            del tensor.dims[:]
            tensor.dims.append(dims[-1])


def ready_to_train(net):
    """``net`` set up for training steps that compute what the graph computes: a normalization left in the graph (one no layer
    absorbed) uses its stored statistics, as onnxruntime will, not each batch's as torch's training mode would; recurrent
    layers without dropout are in training mode, which cuDNN's backward pass needs."""
    import torch

    net.eval()  # gradients still flow: eval only changes how normalization (and dropout) behave
    for module in net.modules():
        # cuDNN computes a recurrent layer's backward pass only in training mode; without dropout (the converter sets none)
        # training mode computes what eval mode does
        if isinstance(module, torch.nn.RNNBase) and not module.dropout:
            module.train()
    return net


def training_device(name: str, option: str = "--train-device"):
    """The torch device ``name`` (auto, cpu or cuda) stands for: auto is CUDA when torch sees a CUDA device, else the CPU.
    ``option``: the setting's name in the one-line refusal."""
    torch, _ = require_torch()
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        built = torch.version.cuda
        raise UsageError(f"{option} cuda: torch {torch.__version__} sees no CUDA device"
                         + ("" if built else " (it is a CPU-only build)") + f"; use {option} cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu")


def device_name(device) -> str:
    """``device`` as a report says it: 'cpu', or 'cuda (the GPU's name)'."""
    import torch

    return "cpu" if device.type == "cpu" else f"{device.type} ({torch.cuda.get_device_name(device)})"


@contextlib.contextmanager
def full_float32():
    """Matrix products and convolutions in full float32 on a GPU (torch lets cuDNN's convolutions use TF32, 10-bit mantissas,
    by default): what checks the module against onnxruntime's float32 outputs must not round more than onnxruntime does."""
    torch, _ = require_torch()
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def device_of(net):
    """Where ``net``'s parameters live (the CPU for a module without any)."""
    import torch

    return next((p.device for p in net.parameters()), torch.device("cpu"))


def forward(net, batch: dict, input_names: list[str], rounding=None):
    """The module's outputs on one batch (numpy in, torch tensors on the module's device out, in graph-output order);
    ``rounding`` (a :class:`~onnxslim.distill.fakequant.FakeQuantization`) rounds the quantized graph inputs first."""
    torch, _ = require_torch()
    device = device_of(net)
    # copied: a batch kept between passes over the data is read-only, and torch takes numpy's memory as writable
    tensors = {name: torch.from_numpy(np.array(batch[name], order="C")).to(device) for name in input_names}
    if rounding is not None:
        tensors = rounding.round_inputs(tensors)
    tensors = [tensors[name] for name in input_names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = net(*tensors)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def written_back(model: onnx.ModelProto, net, bindings: list[Binding]) -> onnx.ModelProto:
    """A copy of ``model`` whose bound initializers hold the module's current parameter values."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    weights = initializer_map(result.graph)
    parameters = dict(net.named_parameters())
    for binding in bindings:
        values = parameters[binding.parameter].detach().cpu().numpy().astype(np.float32)
        tensor = weights[binding.initializer]
        shape = tuple(int(d) for d in tensor.dims)
        tensor.CopyFrom(from_array((values.T if binding.transposed else values).reshape(shape), binding.initializer))
    return result
