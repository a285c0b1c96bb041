"""Retraining-free recovery after pruning: bias compensation and ridge refits of the layers that lost inputs.

The original model is the teacher. For every layer whose inputs lost channels
(a consumer), either:

- bias compensation: the removed channels contributed, on average,
  sum_c mean(x_c) * W[:, c] to the consumer's output; that constant is added
  to its bias, so the output keeps its mean; or
- refit: for linear consumers (Gemm, MatMul, 2-D Conv with a group of one) the
  weights over the kept channels are re-solved by ridge least squares so that, on
  the calibration data, the pruned model's input to the layer reproduces the
  original model's output of the layer; a Conv with a kernel over 1x1, strides,
  dilations or padding is a matrix over its input patches, taken at the sampled
  output positions. The ridge term, ``strength * mean(diag(X^T X))``, pulls
  the weights toward the layer's own kept weights (a strong one keeps them and
  re-solves only the bias); the strength is chosen on every fifth batch, held
  out of the fit, then the fit is made on all. A recurrent layer (LSTM, GRU, RNN) is linear
  in its input before the gates: its input weights W are refit the same way,
  to reproduce the original's X W^T, and the intercept goes into W's bias.

Refits are sequential (each layer is fitted to inputs from the pruned model
whose earlier layers are already refit, so errors do not pile up) without a
pass over the data per layer: one run of the original collects every target
and every input mean, then one run per *wave* of the pruned model, truncated
to what the wave reads, fits all layers whose refit inputs no longer change.
A chain of n refit layers costs n truncated passes; independent branches share
them. Targets are kept for a fixed random subset of rows per layer (at least
``ROWS_PER_UNKNOWN`` per weight of a column, ``ROWS_PER_PATCH_UNKNOWN`` for a
patch-reading Conv), so memory does not grow with the amount of data. What a refit
will need is known before its Gram matrix is summed: a layer with more unknowns
per output than the data gives rows, or whose Gram matrices would exceed
``REFIT_GRAM_BUDGET_BYTES``, is bias-compensated instead, and its step says why.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx

from onnxslim.ir.graph import MS_DOMAIN, node_attr
from onnxslim.ir.layers import RECURRENT_LAYERS, weight_axes
from onnxslim.ir.tensors import all_value_names, from_array, initializer_map, to_array, unique_name
from onnxslim.measure.channels import channel_rows
from onnxslim.progress import track
from onnxslim.reasons import Reason
from onnxslim.records import Record
from onnxslim.runtime.probe import observer

LINEAR = ("Gemm", "MatMul", "Conv")


class RecoveryKind(Enum):
    """How a layer that lost input channels was compensated."""

    REFIT = "refit"  # weights re-solved by ridge least squares
    BIAS = "bias"  # the removed channels' mean contribution added to the bias
    NONE = "none"  # nothing to compensate into; left as pruned


@dataclass(frozen=True)
class RecoveryStep(Record):
    """What recovery did to one layer."""

    layer: str
    reason: Reason

    @property
    def kind(self) -> RecoveryKind:
        return self.reason.code  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"{self.layer}: {self.reason.text}"
MIN_ROWS_PER_INPUT = 1  # a refit needs at least as many observations as unknowns per output; the ridge term does the rest
ROWS_PER_UNKNOWN = 32  # rows of targets kept per input channel of a refit layer (at least MIN_TARGET_ROWS)
MIN_TARGET_ROWS = 16384
ROWS_PER_PATCH_UNKNOWN = 8  # for a Conv refit over its patches (channels x kernel size unknowns per output)
# the Gram matrices a wave of refits holds at once (float64, one to fit and one to check per layer); a layer whose own
# pair is larger gets bias compensation, and a wave whose layers together are larger is fitted in several passes
REFIT_GRAM_BUDGET_BYTES = 2**31


def _changed_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(original node, pruned node) pairs of linear layers whose input channels shrank, in graph order."""
    by_name = {n.name: n for n in original.graph.node}
    before = initializer_map(original.graph)
    pairs = []
    for node in pruned.graph.node:
        old = by_name.get(node.name)
        if old is None or node.op_type not in LINEAR + RECURRENT_LAYERS or node.name not in kept or "in" not in kept[node.name]:
            continue
        if node.op_type == "Conv" and int(node_attr(node, "group", 1)) != 1:
            continue
        axis = 2 if node.op_type in RECURRENT_LAYERS else weight_axes(old)[0]
        total = list(before[old.input[1]].dims)[axis] if old.input[1] in before else None
        if total is not None and len(kept[node.name]["in"]) < total:
            pairs.append((old, node))
    return pairs


def _is_matrix(weight: onnx.TensorProto, node: onnx.NodeProto) -> bool:
    """Whether the layer is linear in its input with one weight matrix: Gemm, 2-D MatMul, a recurrent layer's input
    weights, or a 2-D Conv with explicit padding (a matrix over its input patches): what a refit re-solves."""
    dims = tuple(weight.dims)
    if node.op_type in RECURRENT_LAYERS:
        return len(dims) == 3
    if node.op_type == "Conv":
        return len(dims) == 4 and node_attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
    return len(dims) == 2


def _reads_patches(node: onnx.NodeProto, weight_shape: tuple) -> bool:
    """A Conv whose output rows are not its input rows one for one (a kernel over 1x1, strides, dilations or padding)."""
    if node.op_type != "Conv":
        return False
    plain = [1] * (len(weight_shape) - 2)
    return (
        list(weight_shape[2:]) != plain or list(node_attr(node, "strides", plain)) != plain
        or list(node_attr(node, "dilations", plain)) != plain or any(p != 0 for p in node_attr(node, "pads", [0]))
    )


def conv_patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], rows: np.ndarray) -> np.ndarray:
    """The input patches of a 2-D Conv at the output positions ``rows`` (indices into its (n, y, x) output rows), as
    (len(rows), channels x kernel height x kernel width): times the weight as (c, i, j) columns, the output before bias."""
    batch, channels, height, width = x.shape
    kh, kw = kernel
    sh, sw = node_attr(node, "strides", [1, 1])
    dh, dw = node_attr(node, "dilations", [1, 1])
    top, left, bottom, right = node_attr(node, "pads", [0, 0, 0, 0])
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    n, rest = np.divmod(rows, out_h * out_w)
    oy, ox = np.divmod(rest, out_w)
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    iy = oy[:, None] * sh + np.arange(kh)[None, :] * dh
    ix = ox[:, None] * sw + np.arange(kw)[None, :] * dw
    patches = padded[n[:, None, None, None], np.arange(channels)[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    return patches.reshape(len(rows), channels * kh * kw)


def as_matrix(weight: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A layer's weight as one (inputs, outputs) matrix: x times it is the layer's output before bias (a recurrent layer's: every gate's input share)."""
    if node.op_type in RECURRENT_LAYERS:  # (directions, gates x hidden, features) -> (features, directions x gates x hidden)
        return weight.reshape(-1, weight.shape[2]).T
    if node.op_type == "Conv":  # (out, in, k...) -> (in x k..., out), the rows of conv_patches
        return weight.reshape(weight.shape[0], -1).T
    if node.op_type == "Gemm" and int(node_attr(node, "transB", 0)):
        return weight.T
    return weight


def refittable(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict, readers: Counter) -> bool:
    """Whether a refit would re-solve ``node``'s weights: a linear layer with one weight matrix it does not share,
    and a bias to take the intercept; ``readers`` counts the nodes reading each tensor."""
    if node.op_type not in LINEAR + RECURRENT_LAYERS or len(node.input) < 2 or node.input[1] not in inits:
        return False
    if node.op_type == "Conv" and int(node_attr(node, "group", 1)) != 1:
        return False
    if any(readers[name] > 1 for name in node.input[1:] if name):
        return False
    return _is_matrix(inits[node.input[1]], node) and _bias_slot(model, node) is not None


def _from_matrix(matrix: np.ndarray, node: onnx.NodeProto, like: np.ndarray) -> np.ndarray:
    if node.op_type in RECURRENT_LAYERS:  # (features, directions x gates x hidden) -> (directions, gates x hidden, features)
        return matrix.T.reshape(like.shape[0], like.shape[1], matrix.shape[0])
    if node.op_type == "Conv":
        return matrix.T.reshape(like.shape)
    if node.op_type == "Gemm" and int(node_attr(node, "transB", 0)):
        return matrix.T
    return matrix


def _bias_slot(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """(node, input index) holding the layer's per-output bias: its own, or the Add right after a MatMul."""
    if node.op_type in ("Conv", "Gemm"):
        return node, 2
    if node.op_type in RECURRENT_LAYERS:
        return node, 3
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    inits = initializer_map(model.graph)
    if len(readers) == 1 and readers[0].op_type == "Add":
        other = [i for i, name in enumerate(readers[0].input) if name != node.output[0]]
        if other and readers[0].input[other[0]] in inits and to_array(inits[readers[0].input[other[0]]]).ndim == 1:
            return readers[0], other[0]
    if len(readers) == 1 and readers[0].op_type == "SkipLayerNormalization" and readers[0].domain == MS_DOMAIN and node.output[0] in readers[0].input[:2]:
        # onnxruntime's fused residual Add and LayerNorm: input + skip + bias, then normalized; its bias input is the layer's
        bias = readers[0].input[SKIP_NORM_BIAS] if len(readers[0].input) > SKIP_NORM_BIAS else ""
        if not bias or (bias in inits and to_array(inits[bias]).ndim == 1):
            return readers[0], SKIP_NORM_BIAS
    return None


SKIP_NORM_BIAS = 4  # com.microsoft SkipLayerNormalization's inputs: input, skip, gamma, beta, bias


def _set_input(model: onnx.ModelProto, node: onnx.NodeProto, index: int, array: np.ndarray, taken: set[str], dtype: np.dtype) -> None:
    """Feed ``node``'s input ``index`` from a new initializer holding ``array`` in the layer's own float type."""
    base = node.input[index] if index < len(node.input) and node.input[index] else f"{node.name}_bias"
    name = unique_name(f"{base}_recovered", taken)
    model.graph.initializer.append(from_array(array.astype(dtype), name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


@dataclass
class _Layer:
    """One layer that lost input channels, and what the pass over the original model found for it."""

    old: onnx.NodeProto
    new: onnx.NodeProto
    kept_in: list[int]
    kept_out: list[int] | None
    old_weight: onnx.TensorProto  # read only when the layer's bias is compensated
    refit: bool
    patches: bool = False  # a Conv refit over its input patches rather than its input rows
    not_refit: str = ""  # why a layer recovery would refit is compensated through its bias instead
    input_sum: np.ndarray | None = None  # the original model's input, summed per channel over all rows
    input_rows: int = 0
    picks: list[np.ndarray] = field(default_factory=list)  # per batch: the rows whose targets are kept
    targets: list[np.ndarray] = field(default_factory=list)  # per batch: the original layer's output on those rows


def recover(original: onnx.ModelProto, pruned: onnx.ModelProto, source: Iterable, config, kept: dict, *, show_progress: bool = False) -> list[RecoveryStep]:
    """Compensate (in place on ``pruned``) the layers that lost input channels; returns what was done.

    ``kept`` gives, per layer, the surviving input and output channels in the original numbering.
    """
    steps: dict[str, RecoveryStep] = {}
    readers = Counter(name for node in pruned.graph.node for name in node.input[1:] if name)
    layers = []
    before, after = initializer_map(original.graph), initializer_map(pruned.graph)
    for old, new in _changed_consumers(original, pruned, kept):
        if any(readers[name] > 1 for name in new.input[1:] if name):
            # a refit would give each use its own weights: the shared tensor would be written once per use
            steps[new.name] = RecoveryStep(new.name, Reason(RecoveryKind.NONE, "weights shared with other layers: left as pruned, so they stay one tensor"))
            continue
        refit = config.recovery == "refit" and refittable(pruned, new, after, readers)
        weight = before[old.input[1]]
        kept_out = kept[new.name].get("out")
        if kept_out is not None and old.op_type in RECURRENT_LAYERS:  # kept gate rows of one direction -> of every direction
            directions, rows = weight.dims[0], weight.dims[1]
            kept_out = [direction * rows + row for direction in range(directions) for row in kept_out]
        layer = _Layer(old, new, kept[new.name]["in"], kept_out, weight, refit, refit and _reads_patches(old, tuple(weight.dims)))
        if refit and _gram_bytes(layer) > REFIT_GRAM_BUDGET_BYTES:
            layer.refit, layer.not_refit = False, (f"a refit over {_unknowns(layer):,} unknowns per output ({_inputs(layer)}) needs "
                                                   f"{_gram_bytes(layer) / 1e9:.1f} GB of Gram matrices, more than the {REFIT_GRAM_BUDGET_BYTES / 1e9:.1f} GB allowed")
        layers.append(layer)
    if layers:
        taken = all_value_names(pruned.graph)
        _observe_original(original, layers, source, config.token_mask, show_progress)
        for layer in layers:
            rows = sum(len(pick) for pick in layer.picks)
            if layer.refit and rows < MIN_ROWS_PER_INPUT * _unknowns(layer):  # known before the pass that would sum its Gram
                layer.refit, layer.targets, layer.picks = False, [], []
                layer.not_refit = (f"the calibration data gives {rows:,} rows for {_unknowns(layer):,} unknowns per output ({_inputs(layer)}); "
                                   "a refit needs at least as many")
            if not layer.refit:
                reason = _compensate_bias(pruned, layer, taken)
                if layer.not_refit:
                    reason = Reason(reason.code, f"{reason.text}; not refit: {layer.not_refit}")
                steps[layer.new.name] = RecoveryStep(layer.new.name, reason)
        waves = [part for wave in _waves(pruned, [layer for layer in layers if layer.refit]) for part in _within_budget(wave)]
        for wave in track(waves, "refitting layers (sequential waves)", enabled=show_progress):
            for layer, reason in _refit_wave(pruned, wave, source, config, taken):
                steps[layer.new.name] = RecoveryStep(layer.new.name, reason)
    order = {node.name: i for i, node in enumerate(pruned.graph.node)}
    return sorted(steps.values(), key=lambda step: order.get(step.layer, len(order)))


def _observe_original(original: onnx.ModelProto, layers: list[_Layer], source: Iterable, token_mask, show_progress: bool) -> None:
    """One pass of the original model: every layer's input means, and the refit layers' targets on a sample of rows."""
    known = source.known_length() if hasattr(source, "known_length") else None
    batches = known if known is not None else sum(1 for _ in source)  # counting reads every batch once more
    names = sorted({layer.old.input[0] for layer in layers} | {layer.old.output[0] for layer in layers if layer.refit and layer.old.op_type not in RECURRENT_LAYERS})
    runner = observer(original, [n for n in names if n not in _input_names(original)])
    rng = np.random.default_rng(0)
    for _, batch, outputs in runner.run_many(track(source, "observing the original model", total=batches, enabled=show_progress)):
        values = dict(zip(runner.output_names, outputs))
        values.update(batch)
        for layer in layers:
            x = channel_rows(values[layer.old.input[0]], layer.old, batch, token_mask)
            layer.input_sum = x.sum(axis=0, dtype=np.float64) + (0 if layer.input_sum is None else layer.input_sum)
            layer.input_rows += x.shape[0]
            if layer.refit:
                if layer.old.op_type in RECURRENT_LAYERS:
                    y = x @ _input_matrix(layer)
                else:  # a patch-reading Conv's output rows are positions, never tokens
                    y = channel_rows(values[layer.old.output[0]], layer.old, batch, None if layer.patches else token_mask)
                wanted = math.ceil(_target_rows(layer) / max(batches, 1))
                pick = np.sort(rng.choice(y.shape[0], wanted, replace=False)) if y.shape[0] > wanted else np.arange(y.shape[0])
                y = y[pick]
                layer.picks.append(pick)
                layer.targets.append(np.ascontiguousarray(y[:, layer.kept_out] if layer.kept_out is not None else y, dtype=np.float32))


def _taps(layer: _Layer) -> int:
    """Kernel taps a refit solves for per kept input: the kernel's size over patches, else 1."""
    return int(np.prod(layer.old_weight.dims[2:])) if layer.patches else 1


def _unknowns(layer: _Layer) -> int:
    """Unknowns per output of a layer's refit: a weight per kept input (per kept input and kernel tap, over patches), and the intercept."""
    return len(layer.kept_in) * _taps(layer) + 1


def _inputs(layer: _Layer) -> str:
    if not layer.patches:
        return f"{len(layer.kept_in)} input channel(s) and an intercept"
    return f"{len(layer.kept_in)} input channel(s) x {_taps(layer)} kernel taps, and an intercept"


def _gram_bytes(layer: _Layer) -> int:
    return 2 * 8 * _unknowns(layer) ** 2  # the fit's and the check's, float64


def _within_budget(wave: list[_Layer]) -> list[list[_Layer]]:
    """``wave`` in consecutive parts whose Gram matrices fit REFIT_GRAM_BUDGET_BYTES together (a pass of the data each)."""
    parts, spent = [[]], 0
    for layer in wave:
        if parts[-1] and spent + _gram_bytes(layer) > REFIT_GRAM_BUDGET_BYTES:
            parts.append([])
            spent = 0
        parts[-1].append(layer)
        spent += _gram_bytes(layer)
    return parts


def _target_rows(layer: _Layer) -> int:
    """Rows of targets to keep for a refit layer: enough per unknown weight of an output (a patch has kernel-size times
    the channels, and fewer rows per unknown, or the targets of a wide 3x3 layer would fill memory)."""
    return max(MIN_TARGET_ROWS, (ROWS_PER_PATCH_UNKNOWN if layer.patches else ROWS_PER_UNKNOWN) * _unknowns(layer))


def _input_matrix(layer: _Layer) -> np.ndarray:
    """A recurrent layer's input weights as one (features, directions x gates x hidden) matrix: X times it is the input's share of every gate."""
    return as_matrix(to_array(layer.old_weight).astype(np.float64), layer.old)


def _recurrent_bias(pruned: onnx.ModelProto, node: onnx.NodeProto, weight_shape: tuple) -> np.ndarray:
    """B of a recurrent layer, (directions, 2 x gates x hidden), zeros where the node has none."""
    inits = initializer_map(pruned.graph)
    if len(node.input) > 3 and node.input[3]:
        return to_array(inits[node.input[3]]).astype(np.float64)
    return np.zeros((weight_shape[0], 2 * weight_shape[1]))


def _input_names(model: onnx.ModelProto) -> set[str]:
    return {v.name for v in model.graph.input}


def _waves(model: onnx.ModelProto, layers: list[_Layer]) -> list[list[_Layer]]:
    """The refit layers in waves: a layer comes one wave after the last refit layer in front of it."""
    by_name = {layer.new.name: layer for layer in layers}
    depth: dict[str, int] = {}
    waves: dict[int, list[_Layer]] = {}
    for node in model.graph.node:
        level = max((depth.get(name, 0) for name in node.input), default=0)
        if node.name in by_name:
            waves.setdefault(level, []).append(by_name[node.name])
            level += 1
        for name in node.output:
            depth[name] = level
    return [waves[level] for level in sorted(waves)]


@dataclass
class _Sums:
    """What a least-squares fit of targets Y from inputs X needs, summed over rows."""

    xtx: np.ndarray | None = None
    xty: np.ndarray | None = None
    xsum: np.ndarray | None = None
    ysum: np.ndarray | None = None
    rows: int = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        parts = (x.T @ x, x.T @ y, x.sum(axis=0), y.sum(axis=0))
        if self.xtx is None:
            self.xtx, self.xty, self.xsum, self.ysum = parts
        else:
            self.xtx += parts[0]
            self.xty += parts[1]
            self.xsum += parts[2]
            self.ysum += parts[3]
        self.rows += x.shape[0]

    def absorb(self, other: _Sums) -> _Sums:
        """These sums with ``other``'s added, in place (a wide layer's Gram matrix is not copied)."""
        if other.xtx is None:
            return self
        if self.xtx is None:
            return other
        self.xtx += other.xtx
        self.xty += other.xty
        self.xsum += other.xsum
        self.ysum += other.ysum
        self.rows += other.rows
        return self

    def error(self, weights: np.ndarray, intercept: np.ndarray) -> float:
        """Sum of squared errors of X weights + intercept against Y over these rows, less sum(Y^2) (the same for every fit)."""
        fitted = weights.T @ self.xtx @ weights
        return float(np.trace(fitted) - 2 * np.sum(weights * self.xty) - 2 * intercept @ self.ysum
                     + 2 * intercept @ (weights.T @ self.xsum) + self.rows * intercept @ intercept)


HOLDOUT_EVERY = 5  # every fifth batch checks the refit instead of fitting it, when there are at least this many
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge strengths tried against the held-out batches (relative to mean(diag(X^T X)))


def _refit_wave(pruned: onnx.ModelProto, wave: list[_Layer], source: Iterable, config, taken: set[str]) -> list[tuple[_Layer, Reason]]:
    """Fit every layer of ``wave`` on its input in the pruned model as it is now; the ones that cannot be fitted get bias compensation."""
    names = [layer.new.input[0] for layer in wave]
    runner = observer(pruned, sorted(set(names) - _input_names(pruned)))
    fits = {layer.new.name: _Sums() for layer in wave}
    checks = {layer.new.name: _Sums() for layer in wave}
    for index, (_, batch, outputs) in enumerate(runner.run_many(source)):
        values = dict(zip(runner.output_names, outputs))
        values.update(batch)
        for layer in wave:
            if layer.patches:
                x = conv_patches(values[layer.new.input[0]], layer.new, tuple(layer.old_weight.dims[2:]), layer.picks[index]).astype(np.float64)
            else:
                x = channel_rows(values[layer.new.input[0]], layer.new, batch, config.token_mask)[layer.picks[index]].astype(np.float64)
            held_out = len(layer.picks) >= HOLDOUT_EVERY and index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
            (checks if held_out else fits)[layer.new.name].add(x, layer.targets[index].astype(np.float64))
    done = []
    for layer in wave:
        reason = _apply_refit(pruned, layer, fits[layer.new.name], checks[layer.new.name], config.ridge, taken)
        done.append((layer, reason if reason is not None else _compensate_bias(pruned, layer, taken)))
        layer.targets, layer.picks = [], []  # free the targets as soon as the layer is fitted
    return done


def solve_refit(
    xtx: np.ndarray, xty: np.ndarray, xsum: np.ndarray, ysum: np.ndarray, rows: int, ridge: float, prior: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Ridge least squares with an intercept from the sums: (weights (inputs, outputs), intercept, penalty), or None when underdetermined.

    The ridge term pulls the weights toward ``prior`` (the layer's own weights over the kept inputs) rather than
    toward zero: the stronger it is, the closer the fit comes to keeping the weights and re-solving the bias only.
    """
    count = xtx.shape[0]
    if rows < MIN_ROWS_PER_INPUT * (count + 1):
        return None  # too few samples to determine the weights; bias compensation is safer
    # [X 1]^T [X 1] w = [X 1]^T Y: the last row of the solution is an intercept
    gram = np.zeros((count + 1, count + 1))
    gram[:count, :count] = xtx
    gram[:count, count] = gram[count, :count] = xsum
    gram[count, count] = rows
    cross = np.vstack([xty, ysum[None, :]])
    penalty = ridge * float(np.mean(np.diag(xtx))) if count else 0.0
    if prior is not None:
        cross[:count] += penalty * prior
    gram[np.arange(count), np.arange(count)] += penalty
    try:
        solution = np.linalg.solve(gram, cross)
    except np.linalg.LinAlgError:
        return None
    return solution[:count], solution[count], penalty


def _chosen_ridge(fit: _Sums, check: _Sums, ridge: float, prior: np.ndarray) -> float:
    """The ridge strength whose fit on ``fit`` errs least on the held-out ``check`` rows (``ridge`` without any)."""
    if check.xtx is None or fit.xtx is None:
        return ridge
    errors = {}
    for strength in sorted({ridge, *RIDGE_GRID}):
        solved = solve_refit(fit.xtx, fit.xty, fit.xsum, fit.ysum, fit.rows, strength, prior)
        if solved is not None:
            errors[strength] = check.error(solved[0], solved[1])
    return min(errors, key=errors.get) if errors else ridge


def _apply_refit(pruned, layer: _Layer, fit: _Sums, check: _Sums, ridge: float, taken) -> Reason | None:
    if fit.xtx is None:
        return None
    new = layer.new
    inits = initializer_map(pruned.graph)
    weight = to_array(inits[new.input[1]])
    prior = as_matrix(weight.astype(np.float64), new)
    strength = _chosen_ridge(fit, check, ridge, prior)
    every = fit.absorb(check)
    solved = solve_refit(every.xtx, every.xty, every.xsum, every.ysum, every.rows, strength, prior)
    if solved is None:
        return None
    new_matrix, intercept, penalty = solved
    if new.op_type in RECURRENT_LAYERS:
        bias = _recurrent_bias(pruned, new, weight.shape)
        bias[:, : weight.shape[1]] += intercept.reshape(weight.shape[0], weight.shape[1])  # the targets leave W's bias out: the intercept corrects it
        _set_input(pruned, new, 3, bias, taken, weight.dtype)
        inputs = "input feature(s) of every gate"
    else:
        bias_node, bias_index = _bias_slot(pruned, new)
        has_bias = bias_index < len(bias_node.input) and bool(bias_node.input[bias_index])
        bias = to_array(inits[bias_node.input[bias_index]]).astype(np.float64) if has_bias else np.zeros(every.xty.shape[1])
        # Conv and Gemm outputs include their bias, so the intercept is the new bias; a MatMul's
        # output does not, so the intercept is a correction added to the bias of the Add after it.
        new_bias = intercept if bias_node is new else bias + intercept
        _set_input(pruned, bias_node, bias_index, new_bias.reshape(bias.shape), taken, weight.dtype)
        kernel = "x".join(str(d) for d in weight.shape[2:])
        inputs = f"weights per output over {weight.shape[1]} input channel(s) x {kernel} patches" if layer.patches else "input channel(s)"
    _set_input(pruned, new, 1, _from_matrix(new_matrix, new, weight), taken, weight.dtype)
    chosen = f"ridge {strength:g} of the mean input energy, chosen on {check.rows} held-out rows" if check.xtx is not None else f"ridge {penalty:.3g}"
    return Reason(RecoveryKind.REFIT, f"refit {every.xtx.shape[0]} {inputs} by ridge least squares on {every.rows} rows ({chosen})")


def _compensate_bias(pruned, layer: _Layer, taken) -> Reason:
    """Add the removed input channels' mean contribution (over the original model's inputs to the layer) to the bias."""
    new = layer.new
    slot = _bias_slot(pruned, new)
    if slot is None:
        return Reason(RecoveryKind.NONE, "no bias to compensate into; left as pruned")
    weights = to_array(layer.old_weight)
    if new.op_type in RECURRENT_LAYERS:
        mean = layer.input_sum / max(layer.input_rows, 1)
        removed = np.setdiff1d(np.arange(weights.shape[2]), layer.kept_in)
        if layer.kept_out is not None:  # the gate rows of the hidden units kept
            weights = weights.reshape(-1, weights.shape[2])[layer.kept_out].reshape(weights.shape[0], -1, weights.shape[2])
        bias = _recurrent_bias(pruned, new, weights.shape)
        bias[:, : weights.shape[1]] += weights[:, :, removed].astype(np.float64) @ mean[removed]
        _set_input(pruned, new, 3, bias, taken, weights.dtype)
        return Reason(RecoveryKind.BIAS, f"added the mean contribution of {removed.size} removed feature(s) to every gate's bias")
    axis = weight_axes(new)[0]
    if layer.kept_out is not None:
        weights = np.take(weights, layer.kept_out, axis=weight_axes(new)[1])
    mean = layer.input_sum / max(layer.input_rows, 1)
    removed = np.setdiff1d(np.arange(weights.shape[axis]), layer.kept_in)
    contribution = np.take(weights, removed, axis=axis).astype(np.float64)
    if new.op_type == "Conv":  # (out, in, kernel...) of any spatial rank: each removed input's mean, times its kernel's sum
        delta = contribution.reshape(contribution.shape[0], contribution.shape[1], -1).sum(axis=2) @ mean[removed]
    elif axis == 1:  # Gemm with transB: (N, K)
        delta = contribution @ mean[removed]
    else:
        delta = mean[removed] @ contribution
    bias_node, index = slot
    inits = initializer_map(pruned.graph)
    current = to_array(inits[bias_node.input[index]]) if index < len(bias_node.input) and bias_node.input[index] else np.zeros(delta.shape)
    _set_input(pruned, bias_node, index, current + delta.reshape(current.shape), taken, weights.dtype)
    return Reason(RecoveryKind.BIAS, f"added the mean contribution of {removed.size} removed channel(s) to the bias")
