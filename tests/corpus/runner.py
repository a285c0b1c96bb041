"""Run every model of onnx's backend test corpus through onnxslim and classify what happened.

For each case: the cleanup passes must keep the outputs at the case's tolerance
whenever onnxruntime can run the original; quantize (with the case's own inputs
as calibration data) and prune must either produce a model that passes the
checker and loads in onnxruntime, or decline with an onnxslim error that says
why. Anything else, an unexpected exception or a broken result, is a failure.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim import PruneConfig, QuantConfig, prune, quantize
from onnxslim.errors import OnnxSlimError
from onnxslim.ir import load_model
from onnxslim.passes import CLEANUP_PASSES, Pipeline

# vgg19, zfnet512 and bvlc_alexnet (233-548 MB, a few huge fully connected layers) take 1-4 minutes each to quantize
# and prune on a 2-core machine: they go through cleanup only. Their layer types are those of the other light models
# (resnet50, densenet121, inception), which every step covers, and tests/test_large_model.py runs quantize and prune
# on a model over 2 GB.
HEAVY_BYTES = 200 << 20
QUANT = QuantConfig(latency_runs=0, output_layers="int8")  # single-layer cases: the layer is the output layer
PRUNE = PruneConfig(ratio=0.5, latency_runs=0)


@dataclass
class Outcome:
    case: str
    step: str
    result: str  # transformed, declined, failed
    detail: str = ""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, *args) -> None:
        self.outcomes.append(Outcome(*args))

    def counts(self) -> dict[str, Counter]:
        table: dict[str, Counter] = {}
        for outcome in self.outcomes:
            table.setdefault(outcome.step, Counter())[outcome.result] += 1
        return table

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "failed"]


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model, inputs):
    session = _session(model)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def _loads(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    _session(model)


def _close(actual, expected, rtol, atol) -> bool:
    for a, e in zip(actual, expected):
        if isinstance(a, (list, tuple)) or isinstance(e, (list, tuple)):
            if not isinstance(a, (list, tuple)) or not isinstance(e, (list, tuple)) or len(a) != len(e) or not _close(a, e, rtol, atol):
                return False
            continue
        if a is None or e is None:
            if a is not e:
                return False
            continue
        a, e = np.asarray(a), np.asarray(e)
        if a.shape != e.shape:
            return False
        if a.dtype.kind in "fc":
            if not np.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not np.array_equal(a, e):
            return False
    return True


def random_inputs(model: onnx.ModelProto) -> list | None:
    rng = np.random.default_rng(0)
    names = {t.name for t in model.graph.initializer}
    values = []
    for value in model.graph.input:
        if value.name in names:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            return None
        values.append(rng.standard_normal(dims).astype(np.float32))
    return values


def check_case(name: str, model: onnx.ModelProto, inputs: list | None, expected: list | None, rtol: float, atol: float, tally: Tally) -> None:
    if inputs is None:
        inputs = random_inputs(model)
        if inputs is None:
            tally.add(name, "cleanup", "declined", "no test inputs")
            return
    try:
        reference = _run(model, inputs)
        runs = True
    except Exception:  # onnxruntime lacks this op or version: onnxslim must still not break
        reference, runs = None, False
    # cleanup passes
    try:
        cleaned = load_model(model)
        results = Pipeline(CLEANUP_PASSES, verify_unmodified=True)(cleaned)
        if runs:
            outputs = _run(cleaned, inputs)
            target = expected if expected is not None and _close(reference, expected, rtol, atol) else reference
            if not _close(outputs, target, rtol, atol):
                tally.add(name, "cleanup", "failed", "outputs changed")
            else:
                reasons = [d.reason.text for r in results for d in r.declined] or ["no cleanup pass applies to this graph"]
                tally.add(name, "cleanup", "transformed" if any(r.modified for r in results) else "declined", "; ".join(reasons[:2]))
        else:
            tally.add(name, "cleanup", "declined", "onnxruntime cannot run the original")
    except OnnxSlimError as exc:
        tally.add(name, "cleanup", "declined", str(exc))
    except Exception:
        tally.add(name, "cleanup", "failed", traceback.format_exc(limit=3))
    feed = {}
    graph_inputs = [v for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) == len(inputs) and all(isinstance(x, np.ndarray) for x in inputs):
        feed = {v.name: x for v, x in zip(graph_inputs, inputs)}
    for step, action in (("quantize", lambda: quantize(model, [feed], config=QUANT)), ("prune", lambda: prune(model, config=PRUNE))):
        if model.ByteSize() > HEAVY_BYTES:
            continue  # cleanup only: see HEAVY_BYTES
        if not runs:
            tally.add(name, step, "declined", "onnxruntime cannot run the original")
            continue
        if step == "quantize" and not feed:
            tally.add(name, step, "declined", "inputs are not plain tensors")
            continue
        try:
            result, _ = action()
            _loads(result)
            tally.add(name, step, "transformed")
        except OnnxSlimError as exc:
            tally.add(name, step, "declined", str(exc))
        except Exception:
            tally.add(name, step, "failed", traceback.format_exc(limit=4))


WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def with_constant_weights(model: onnx.ModelProto, inputs: list) -> tuple[onnx.ModelProto, list] | None:
    """The case with every input after the first turned into an initializer, as exported layers hold their weights."""
    if len(model.graph.node) != 1 or model.graph.node[0].op_type not in WEIGHTED or len(inputs) < 2:
        return None
    if not all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in inputs):
        return None
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    graph = variant.graph
    names = [v.name for v in graph.input]
    for name, value in zip(names[1:], inputs[1:]):
        graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    kept = [v for v in graph.input if v.name == names[0]]
    del graph.input[:]
    graph.input.extend(kept)
    return variant, inputs[:1]


def node_cases():
    from onnx.backend.test.case import node

    for case in node.collect_testcases(None):
        if case.model is None or not case.data_sets:
            continue
        inputs, outputs = case.data_sets[0]
        yield case.name, case.model, list(inputs), list(outputs), case.rtol, case.atol
        variant = with_constant_weights(case.model, list(inputs))
        if variant is not None:
            yield case.name + "[weights as initializers]", variant[0], variant[1], list(outputs), case.rtol, case.atol


def file_cases():
    """The model test directories that ship inside the onnx wheel (light models, pytorch exports, simple graphs)."""
    import glob
    import os

    from onnx import TensorProto

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    for folder in sorted(glob.glob(os.path.join(root, "*", "*"))):
        path = os.path.join(folder, "model.onnx")
        if not os.path.isfile(path):
            continue
        model = onnx.load(path)
        data = os.path.join(folder, "test_data_set_0")
        inputs, outputs = [], []
        for kind, target in (("input", inputs), ("output", outputs)):
            for file in sorted(glob.glob(os.path.join(data, f"{kind}_*.pb")), key=lambda f: int(f.rsplit("_", 1)[1].split(".")[0])):
                tensor = TensorProto()
                with open(file, "rb") as handle:
                    tensor.ParseFromString(handle.read())
                target.append(onnx.numpy_helper.to_array(tensor))
        if inputs:
            yield os.path.basename(folder), model, inputs, outputs, 1e-3, 1e-7
    for path in sorted(glob.glob(os.path.join(root, "light", "*.onnx"))):
        model = with_materialized_weights(onnx.load(path))
        yield os.path.basename(path), model, None, None, 1e-3, 1e-7


def with_materialized_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A "light" model as exported models are: its weights, which it builds with ConstantOfShape, held as initializers.

    The light models ship without weights to stay small (every fill is zero); onnxslim's constant
    folding never grows a model, so it would leave such fills to run time, where no layer has
    constant weights to prune, and all-zero weights give constant outputs that prove nothing.
    Random stand-ins with trained-like scales take their place: He-scaled filters, BatchNorm
    scales and variances around 1, small biases and means.
    """
    rng = np.random.default_rng(0)
    inits = {t.name: t for t in model.graph.initializer}
    role = {name: (node.op_type, index) for node in model.graph.node for index, name in enumerate(node.input)}
    kept = []
    for node in model.graph.node:
        shape = inits.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
        if shape is None:
            kept.append(node)
            continue
        dims = tuple(int(d) for d in onnx.numpy_helper.to_array(shape))
        reader = role.get(node.output[0], ("", 0))
        if reader[0] == "BatchNormalization" and reader[1] in (1, 4):
            values = rng.uniform(0.5, 1.5, dims)
        elif len(dims) >= 2:
            values = rng.standard_normal(dims) * np.sqrt(2.0 / max(1, int(np.prod(dims[1:]))))
        else:
            values = rng.standard_normal(dims) * 0.05
        model.graph.initializer.append(onnx.numpy_helper.from_array(values.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model
