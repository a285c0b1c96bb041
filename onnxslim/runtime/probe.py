"""Runs that look inside a model: intermediate tensors, their shapes, and a smoke test of a result."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxslim.errors import DataError
from onnxslim.ir.graph import observing_only, with_outputs
from onnxslim.ir.loops import data_dependent_loops, in_front_of_loops
from onnxslim.ir.scopes import expose
from onnxslim.ir.shapes import element_types
from onnxslim.runtime.passes import PassRunner
from onnxslim.runtime.session import Runner
from onnxslim.runtime.shapes import onnxruntime_types, untyped_outputs


def probe_runner(model: onnx.ModelProto, names: list[str], cores: int | None = None) -> PassRunner:
    """A session of ``model`` that also returns the tensors ``names`` (declared with their own element types: FP16 stays FP16).

    A name may be a scoped key of a tensor inside an If/Loop/Scan body (see :func:`onnxslim.ir.scopes.expose`).

    Without onnxruntime's layout transforms (level 'extended'): its blocked NCHWc rewrite of a graph
    whose intermediate tensors are outputs has failed on real detectors. One session: a batch's every
    tensor is most of a pass's memory (two sessions side by side took a detector's ranking pass from
    0.71 to 1.14 GB), and comparisons run a reference and a candidate probe together.
    ``cores``: the cores its session may use (default: all); two probes run at once share them.
    """
    types = element_types(model)
    outputs = {name: types.get(name, onnx.TensorProto.FLOAT) for name in names}
    return PassRunner(expose(model, names, outputs), optimization="extended", label="probe", workers=1, cores=cores)


def observer(model: onnx.ModelProto, names: list[str]) -> PassRunner:
    """A session that computes only the tensors ``names`` (and what they need), returned in that order."""
    types = element_types(model)
    return PassRunner(observing_only(model, names, types), optimization="extended", label="probe")


def runtime_values(model: onnx.ModelProto, batch: Mapping[str, np.ndarray], wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Values of node outputs (all, or the ``wanted`` ones) on one batch; empty when the model cannot expose them."""
    types = element_types(model)
    # tensors behind another domain's operators, which onnx's inference leaves untyped
    types.update({name: kind for name, (kind, _) in onnxruntime_types(model, untyped_outputs(model, set(types))).items()})
    names = [o for n in model.graph.node for o in n.output if o and types.get(o) and (wanted is None or o in wanted)]
    try:
        runner = Runner(with_outputs(model, names, types), threads=None, optimization="disable", label="shape probe", prepack=False)
        values = runner.run(batch)
    except Exception:  # a model that cannot expose every tensor still prunes with inferred shapes
        return {}
    return dict(zip(runner.output_names, values))


def runtime_shapes(model: onnx.ModelProto, batch: Mapping[str, np.ndarray], wanted: set[str] | None = None) -> dict[str, tuple]:
    """Shapes of node outputs (all, or the ``wanted`` ones) on one batch, read off an actual run."""
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in runtime_values(model, batch, wanted).items()}


def check_random_batch(model: onnx.ModelProto, batch: Mapping[str, np.ndarray], label: str) -> None:
    """Without data, a command times and test-runs on a random batch of the given sizes: one the original cannot run (a
    model that takes a batch of four views of one sample) stops in one line naming the sizes, before anything is built on it."""
    try:
        Runner(model, threads=None, optimization="disable", label="the original", prepack=False).run(batch)
    except DataError as exc:
        sizes = ", ".join(f"{name} {'x'.join(str(d) for d in np.shape(value))}" for name, value in batch.items())
        raise DataError(f"{label}: the random test batch ({sizes}) does not run: {exc}; give --input-shapes sizes the model accepts, or --data") from None


def check_runs(original: onnx.ModelProto, pruned: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> str | None:
    """Run both models on ``feed``, one after the other; why the pruned one is wrong, or None.

    The last line of defence of "never write a wrong graph": a rule that let a
    stale size through shows up here as a failed run or a changed output shape.
    Where the original has loops that stop at a condition the data decide, the
    outputs after them may hold another number of steps (an unrecovered model
    decodes for as long as it likes): those may differ in length, and the
    tensors the loops read, and every output in front of them, must keep their shapes.
    """
    expected = [np.shape(v) for v in Runner(original, threads=None, optimization="disable", label="original", prepack=False).run(feed)]
    try:
        got = [np.shape(v) for v in Runner(pruned, threads=None, optimization="disable", label="pruned model", prepack=False).run(feed)]
    except Exception as exc:  # onnxruntime's own errors, already one line
        return str(exc)
    differing = [(output.name, a, b) for output, a, b in zip(original.graph.output, expected, got) if a != b]
    if not differing:
        return None
    only_lengths = all(len(a) == len(b) for _, a, b in differing) and data_dependent_loops(original.graph)
    cut = in_front_of_loops(pruned) if only_lengths else None
    if cut is not None:
        names = [o.name for o in cut.graph.output]
        if set(names) <= {o for node in original.graph.node for o in node.output}:  # the same tensors, cut from the original
            return check_runs(observing_only(original, names, element_types(original)), cut, feed)
    name, a, b = differing[0]
    return f"output '{name}' has shape {list(b)} instead of {list(a)}"
