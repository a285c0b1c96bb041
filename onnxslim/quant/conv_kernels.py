"""Which integer kernel onnxruntime runs each convolution on, chosen by timing both: ``--conv-kernel``.

onnxruntime's CPU provider runs a QLinearConv whose INT8 weights are symmetric (every zero point 0) on
its symmetric convolution kernels, and any other on its general integer matrix product, which on a CPU
with AMX runs on the tile unit. Neither is faster everywhere: on an AVX512-VNNI and AMX Xeon
(onnxruntime 1.32, one thread) a 3x3 convolution over 256 channels of 14x14 took half the time on the
matrix product, a 1x1 convolution from 64 to 256 channels of 56x56 nearly twice as long. Storing the
same weights with a zero point of -1 (every code one lower: [-127, 127] becomes [-128, 126]) moves a
layer to the matrix product without changing a value it computes: the integer sums are exact either
way, and the requantized outputs came out equal bit for bit.

``auto`` times each candidate layer alone in both forms at its input's size (at --threads and at 1
thread, by the rule the other forms use), offsets the layers where the matrix product wins, and keeps
the result only when the whole model is measured faster with it and its outputs are unchanged. Where
weights use the reduced range (CPUs whose kernels add pairs of products in 16 bits), nothing is
offset: a code of -65 could saturate there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from onnxslim.ir.counts import node_macs
from onnxslim.ir.tensors import from_array, to_array
from onnxslim.measure import fidelity, worst_score
from onnxslim.measure.latency import latency_ratios
from onnxslim.passes.matching import GraphIndex
from onnxslim.progress import track
from onnxslim.quant.forms import SETTLE_AT, fidelity_verdict, timed_decision, timing_verdict, worth_timing_alone
from onnxslim.runtime.probe import observer
from onnxslim.runtime.session import Runner

OFFSET = -1  # the zero point that moves a layer off the symmetric kernels; codes in [-127, 127] stay within INT8 after it
SHARE_TIMED = 0.01  # a layer shape holding less of the candidates' multiply-adds than this is not worth its timing
MOST_SHAPES_TIMED = 16  # the shapes holding the most work are timed, at most this many


@dataclasses.dataclass(frozen=True)
class ConvSite:
    """A quantized convolution onnxruntime fuses into QLinearConv: the nodes that make it and the tensors they read."""

    conv: onnx.NodeProto
    codes: str  # the UINT8 activation codes it reads
    weight: str  # the INT8 weight codes
    zero_point: str  # their zero points, all 0
    nodes: tuple[onnx.NodeProto, ...]  # input and weight (and bias) DequantizeLinear, the Conv, the QuantizeLinear after it


def offset_candidates(model: onnx.ModelProto) -> list[ConvSite]:
    """Convolutions of ``model``'s main graph with one group whose INT8 weights are symmetric, within [-127, 127] and (with
    their zero points) read by this layer alone, between a DequantizeLinear of UINT8 codes and one QuantizeLinear: the layers onnxruntime runs on its
    symmetric kernels and could run on its matrix product instead."""
    index = GraphIndex(model.graph)
    sites = []
    for conv in model.graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2 or any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue
        source, weights = index.producers.get(conv.input[0]), index.producers.get(conv.input[1])
        readers = index.readers(conv.output[0])
        if not (_dequantizes(source, index, onnx.TensorProto.UINT8) and _dequantizes(weights, index, onnx.TensorProto.INT8)):
            continue
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or not index.private(conv.input[1]) or len(weights.input) < 3:
            continue
        codes, zero_points = index.array(weights.input[0]), index.array(weights.input[2])
        if zero_points is None or np.any(zero_points != 0) or codes.min(initial=0) < -127 or not index.private(weights.input[0]) or not index.private(weights.input[2]):
            continue
        bias = index.producers.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if bias is not None and bias.op_type != "DequantizeLinear":
            continue
        nodes = (source, weights, *((bias,) if bias is not None else ()), conv, readers[0])
        sites.append(ConvSite(conv, source.input[0], weights.input[0], weights.input[2], nodes))
    return sites


def _dequantizes(node: onnx.NodeProto | None, index: GraphIndex, element_type: int) -> bool:
    """Whether ``node`` is a DequantizeLinear of a tensor of ``element_type`` whose scale and zero point are constants."""
    if node is None or node.op_type != "DequantizeLinear" or not all(name in index.constants for name in node.input[1:]):
        return False
    source = node.input[0]
    if source in index.inits:
        return index.inits[source].data_type == element_type
    producer = index.producers.get(source)
    return producer is not None and producer.op_type == "QuantizeLinear" and len(producer.input) > 2 and index.inits.get(producer.input[2]) is not None \
        and index.inits[producer.input[2]].data_type == element_type


def offset_weights(model: onnx.ModelProto, sites: Sequence[ConvSite]) -> onnx.ModelProto:
    """A copy of ``model`` whose ``sites`` store their weights with a zero point of OFFSET and every code moved by it: the same values."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inits = {init.name: init for init in result.graph.initializer}
    for site in sites:
        codes, zero_points = to_array(inits[site.weight]), to_array(inits[site.zero_point])
        inits[site.weight].CopyFrom(from_array((codes.astype(np.int16) + OFFSET).astype(np.int8), site.weight))
        inits[site.zero_point].CopyFrom(from_array(np.full(zero_points.shape, OFFSET, np.int8), site.zero_point))
    return result


def single_layer(model: onnx.ModelProto, site: ConvSite, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The layer of ``site`` alone, as ``model`` has it, reading codes of ``input_shape``: what onnxruntime fuses into one QLinearConv."""
    used = {name for node in site.nodes for name in node.input}
    inits = [init for init in model.graph.initializer if init.name in used]
    graph = helper.make_graph(
        list(site.nodes), "conv_kernel_probe", [helper.make_tensor_value_info(site.codes, onnx.TensorProto.UINT8, list(input_shape))],
        [helper.make_tensor_value_info(site.nodes[-1].output[0], onnx.TensorProto.UINT8, [f"d{axis}" for axis in range(len(input_shape))])], inits,
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _shape_key(site: ConvSite, input_shape: tuple[int, ...], weight_dims: tuple[int, ...]) -> tuple:
    """What a layer's timing depends on: its input's and weight's shapes and its attributes."""
    return input_shape, weight_dims, tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in site.conv.attribute))


def gemm_kernels_if_faster(run, config, report, model: onnx.ModelProto, comparisons: list) -> tuple[onnx.ModelProto, list]:
    """The model and comparisons to write (target cpu): as given, or with the convolutions measured faster on onnxruntime's integer
    matrix product offset there (see the module docstring). ``report.conv_kernel`` records what was measured; nothing for a model without candidates."""
    if config.conv_kernel == "symmetric":
        return model, comparisons
    sites = offset_candidates(model)
    if not sites:
        return model, comparisons
    entry: dict = {"candidates": len(sites), "written": "symmetric", "offset_nodes": []}
    report.conv_kernel = entry
    if report.weight_range.get("used") == "reduced":
        entry["why"] = "weights use the reduced range (this CPU adds pairs of products in 16 bits): an offset code could saturate"
        return model, comparisons
    if config.conv_kernel == "gemm":
        return _offset_form(run, config, entry, "--conv-kernel gemm", model, offset_weights(model, sites), sites, comparisons)
    if config.latency_runs <= 0 or not run.eval_batches:
        entry["why"] = "not measured (timing is off): the symmetric kernels are kept"
        return model, comparisons
    chosen, layers = _faster_layers(run, config, model, sites)
    entry["layers"] = layers
    if not layers:
        entry["why"] = "not measured (the layers' input sizes could not be read off a run): the symmetric kernels are kept"
        return model, comparisons
    if not chosen:
        entry["why"] = "no layer timed alone was faster on the matrix product"
        return model, comparisons
    offset = offset_weights(model, chosen)
    verdict, speed = timed_decision(
        run, config, model, offset, entry, "latency_vs_symmetric", description="timing convolution kernels: symmetric vs matrix product",
        labels=("symmetric kernels", "offset weights"), against="the symmetric form's",
    )
    if verdict is not None:
        entry["why"] = f"{len(chosen)} layer(s) timed faster alone on the matrix product, but the model with them there is not faster ({speed})"
        return model, comparisons
    why = f"the layers timed faster alone there; the model with them is {speed}"
    return _offset_form(run, config, entry, why, model, offset, chosen, comparisons)


def _faster_layers(run, config, model: onnx.ModelProto, sites: list[ConvSite]) -> tuple[list[ConvSite], list[dict]]:
    """The sites whose layer, timed alone at its input's size, wins on the matrix product; and what was measured, per shape."""
    shapes = _input_and_output_shapes(model, sites, run.eval_batches[0][1])
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    by_shape: dict[tuple, list[ConvSite]] = {}
    work: dict[tuple, int] = {}
    for site in sites:
        if site.codes not in shapes:
            continue
        key = _shape_key(site, shapes[site.codes], weights[site.weight])
        by_shape.setdefault(key, []).append(site)
        macs = node_macs(site.conv, {site.conv.output[0]: shapes.get(site.nodes[-1].output[0]), site.conv.input[1]: weights[site.weight]}) or 0
        work[key] = work.get(key, 0) + macs
    total = sum(work.values()) or 1
    timed = sorted((k for k in by_shape if work[k] >= SHARE_TIMED * total), key=lambda k: -work[k])[:MOST_SHAPES_TIMED]
    chosen, layers = [], []
    runs = max(8, min(config.latency_runs, 20))
    for key in track(timed, "timing convolution kernels layer by layer", total=len(timed), enabled=run.show_progress):
        group = by_shape[key]
        alone = single_layer(model, group[0], shapes[group[0].codes])
        feed = {group[0].codes: np.random.default_rng(0).integers(0, 256, size=shapes[group[0].codes], dtype=np.uint8)}
        at_threads, at_one = latency_ratios(
            alone, offset_weights(alone, [group[0]]), feed, threads=config.threads, runs=runs, labels=("symmetric kernel", "matrix product"),
            one_thread_when=worth_timing_alone, settle=SETTLE_AT,
        )
        faster = timing_verdict(at_threads, at_one) is None
        input_shape, weight_dims, _ = key
        layers.append({
            "nodes": [site.conv.name for site in group], "input": list(input_shape), "weight": list(weight_dims), "work_share": work[key] / total,
            "gemm_vs_symmetric": at_threads.ratio, **({"gemm_vs_symmetric_1_thread": at_one.ratio} if at_one is not None else {}), "offset": faster,
        })
        if faster:
            chosen.extend(group)
    return chosen, layers


def _input_and_output_shapes(model: onnx.ModelProto, sites: list[ConvSite], batch) -> dict[str, tuple[int, ...]]:
    """The shapes of the sites' input codes and output codes on ``batch``, read off a run of the part of the model in front
    of them (the codes, unlike the float tensors between, leave onnxruntime's fusions as they are); empty when it fails."""
    names = sorted({site.codes for site in sites} | {site.nodes[-1].output[0] for site in sites})
    try:
        values = observer(model, names).run(batch)
    except Exception:  # an unreadable size leaves the step unmeasured, which the report says
        return {}
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(names, values)}


def _offset_form(run, config, entry: dict, why: str, model: onnx.ModelProto, offset_model: onnx.ModelProto, sites: list[ConvSite], comparisons: list):
    """``offset_model`` (``model`` with ``sites`` offset) when its outputs equal ``model``'s on the first held-out batch (the same
    values, so the comparisons stand) or, where a kernel rounds differently, when it is measured as faithful; else ``model``."""
    written = {"written": "gemm", "why": why, "offset_nodes": [site.conv.name for site in sites]}
    if not run.eval_batches:
        entry.update(written)
        return offset_model, comparisons
    feed = run.eval_batches[0][1]
    offset_outputs = Runner(offset_model, threads=None, label="offset weights").run(feed)
    symmetric_outputs = Runner(model, threads=None, label="symmetric kernels").run(feed)
    if all(np.array_equal(a, b, equal_nan=True) for a, b in zip(offset_outputs, symmetric_outputs)):
        entry.update(written, outputs="equal to the symmetric form's")
        return offset_model, comparisons
    offset_comparisons = fidelity(run.reference, offset_model, run.eval_batches)
    metric = config.accuracy_metric
    score, offset_score = worst_score(comparisons, metric), worst_score(offset_comparisons, metric)
    problem = fidelity_verdict(score, offset_score, config.accuracy_budget)
    if problem is not None:
        entry["why"] = f"{why}, but its outputs differ and it is {problem} ({metric} {offset_score:.5f} against {score:.5f})"
        return model, comparisons
    entry.update(written, outputs=f"differ; {metric} {offset_score:.5f} against {score:.5f}")
    return offset_model, offset_comparisons
