"""The INT8 rounding quantize plans, simulated in the trainable module so distillation can learn around it.

Quantization-aware distillation trains the float weights while the forward
pass rounds as the INT8 model will: every planned activation through its
calibrated scale and zero point (clamped to the code range), every planned
weight per output channel, symmetric, from its current values. Gradients pass
the rounding straight through (zero where a value is clamped). Afterwards the
hooks come off and the module holds plain float weights again, which quantize
turns into the INT8 model.

What it does not simulate: biases' INT32 rounding (finer than the products'),
and tensors quantized for only some of their readers (every reader of a
hooked tensor sees the rounded value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxslim.distill.module import Binding


def _rounded(x, scale: float, zero: int, low: int, high: int):
    """x on the INT8 grid, with a straight-through gradient inside the code range (zero outside)."""
    import torch

    codes = torch.clamp(torch.round(x / scale) + zero, low, high)
    inside = ((codes > low) & (codes < high)).to(x.dtype)
    return ((codes - zero) * scale).detach() + (x - x.detach()) * inside


def _weight_rounding(axis: int | None, levels: int):
    import torch

    class WeightRounding(torch.nn.Module):
        """Symmetric INT8 in [-levels, levels] per output channel (or per tensor), scales from the current weight, straight-through gradient."""

        def forward(self, weight):
            if axis is None:
                peak = weight.detach().abs().max()
            else:
                peak = weight.detach().abs().amax(dim=tuple(d for d in range(weight.dim()) if d != axis), keepdim=True)
            scale = torch.where(peak > 0, peak / float(levels), torch.ones_like(peak))
            codes = torch.clamp(torch.round(weight / scale), -levels, levels)
            return (codes * scale).detach() + (weight - weight.detach())

    return WeightRounding()


@dataclass
class FakeQuantization:
    """The hooks and weight parametrizations attached to a module; :meth:`remove` restores plain float weights."""

    activations: int = 0
    weights: int = 0
    missed: list[str] = field(default_factory=list)  # planned tensors no module output carries (functional ops, later outputs)
    inputs: dict[str, tuple[float, int]] = field(default_factory=dict)  # graph inputs rounded before the forward pass
    _handles: list = field(default_factory=list, repr=False)
    _parametrized: list = field(default_factory=list, repr=False)
    _codes: tuple[int, int] = (0, 255)

    def round_inputs(self, tensors: dict) -> dict:
        low, high = self._codes
        return {name: (_rounded(t, *self.inputs[name], low, high) if name in self.inputs else t) for name, t in tensors.items()}

    def remove(self) -> None:
        from torch.nn.utils import parametrize

        for handle in self._handles:
            handle.remove()
        for module, name in self._parametrized:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        self._handles.clear()
        self._parametrized.clear()


def _hard_swish_on_grid(_module, inputs, _output):
    x = inputs[0]
    gate = _rounded(x / 6.0 + 0.5, 1.0 / 255.0, 0, 0, 255)
    return x * gate


def attach(
    net, bindings: list[Binding], activations: dict[str, tuple[float, int]], weights: dict[str, tuple[int | None, int]], *, signed: bool, input_names: list[str],
    hard_swish: frozenset[str] = frozenset(),
) -> FakeQuantization:
    """Round ``activations`` (tensor -> (scale, zero point)) and ``weights`` (initializer -> (per-channel axis in ONNX or None, largest code))
    inside ``net``, a module built by :func:`onnxslim.distill.module.to_module`; ``hard_swish``: outputs of HardSwish nodes
    quantize writes in integer form, whose gate is rounded too."""
    import torch
    from torch.nn.utils import parametrize

    low, high = (-128, 127) if signed else (0, 255)
    found = FakeQuantization(_codes=(low, high))
    for tensor, (scale, zero) in activations.items():
        if tensor in input_names:
            found.inputs[tensor] = (float(scale), int(zero))
            continue
        module = getattr(net, net.mapping.get(tensor, ""), None)
        if not isinstance(module, torch.nn.Module):
            found.missed.append(tensor)
            continue

        def hook(_module, _inputs, output, scale=float(scale), zero=int(zero)):
            return _rounded(output, scale, zero, low, high)

        if tensor in hard_swish:  # the gate's own UINT8 grid first (see onnxslim.quant.qdq), then the output's rounding
            found._handles.append(module.register_forward_hook(_hard_swish_on_grid))
        found._handles.append(module.register_forward_hook(hook))
        found.activations += 1
    modules = dict(net.named_modules())  # the converter's module names may hold dots (a tensor's name): no get_submodule
    for binding in bindings:
        if binding.initializer not in weights:
            continue
        owner, _, name = binding.parameter.rpartition(".")
        module = modules[owner]
        parameter = getattr(module, name)
        axis, levels = weights[binding.initializer]
        # a Linear holds a MatMul weight transposed: its output channels are axis 0 either way
        torch_axis = None if axis is None else (0 if binding.transposed or parameter.dim() > 2 else axis)
        parametrize.register_parametrization(module, name, _weight_rounding(torch_axis, levels))
        found._parametrized.append((module, name))
        found.weights += 1
    return found


def quantized_tensors(plan, params, model) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[int | None, int]], frozenset[str]]:
    """From a quantize plan, its parameters and the model it plans: every rounded activation (by the name its readers see),
    every INT8 weight's axis and largest code, and the outputs of HardSwish nodes written in integer form."""
    activations = {key: (float(np.asarray(params[key][0])), int(np.asarray(params[key][1]))) for key in plan.activations}
    weights = {name: (spec.axis, spec.levels) for name, spec in plan.weights.items()}
    hard_swish = frozenset(n.output[0] for n in model.graph.node if n.name in plan.hard_activations and n.op_type == "HardSwish")
    return activations, weights, hard_swish
