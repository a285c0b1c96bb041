"""``distill``: train a student ONNX model to reproduce its teacher, from unlabeled inputs and the two files alone.

Order: check that student and teacher share their interface; turn the student
into a trainable module and check that it reproduces onnxruntime's outputs;
run the teacher once over the data (its outputs, and the features both graphs
share by name and shape, are the targets); train with a loss shaped by each
output; after every epoch write the weights back into the student's graph and
measure it against the teacher on held-out data; keep the best epoch, stop
early when it no longer improves, and write it only if it beats the student as
given. With ``int8`` the forward pass rounds as quantize's INT8 model will
(:mod:`onnxslim.distill.fakequant`), every score is of an INT8 model, and what
is written is INT8: the best epoch's, or quantize's own model of the student.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from onnxslim.data.sources import evaluation_split, for_several_passes, open_data
from onnxslim.distill.fakequant import FakeQuantization, attach, quantized_tensors
from onnxslim.distill.losses import VALUES, Term, output_kind, total_loss
from onnxslim.distill.module import device_name, forward, full_float32, ready_to_train, require_torch, to_module, training_device, written_back
from onnxslim.distill.targets import TeacherTargets
from onnxslim.errors import DataError, NothingToDoError, UnsupportedModelError, UsageError, first_line
from onnxslim.ir.graph import with_outputs
from onnxslim.ir.io import load_model
from onnxslim.ir.shapes import element_types
from onnxslim.ir.tensors import graph_inputs, graph_outputs
from onnxslim.measure import OutputComparison, fidelity, worst_score
from onnxslim.measure.fidelity import PADDING_MASK, SCORES, RememberedReference
from onnxslim.memory import available_bytes
from onnxslim.options import check_settings, setting
from onnxslim.passes import CLEANUP, remove_dead_nodes
from onnxslim.progress import stderr_console, track
from onnxslim.quant import QuantConfig, quantize
from onnxslim.quant.pipeline import QuantRun
from onnxslim.records import Record
from onnxslim.runtime import Runner
from onnxslim.runtime.write import write_verified

REPRODUCTION_TOLERANCE = 1e-3  # the converted module must match onnxruntime's outputs this closely (relative to their scale)
MAX_FEATURES = 16
FEATURE_MIN_SHARE = 64
MAX_RELATIVE_STEP = 0.01  # no tensor's step exceeds about this share of its RMS
CALIBRATION_SAMPLES = 256  # batches --int8 calibrates its scales on (quantize's own runs inside distill)
MIN_TEACHER_MEMORY_MB = 2048.0  # the teacher's targets may take this much whatever the machine reports available


@dataclass(frozen=True)
class DistillConfig:
    """How to distill: how long, how fast, what to match, and the shared data settings."""

    epochs: int = setting(10, "Passes over the training batches (fewer when --time-budget runs out first).", low=1)
    time_budget: float | None = setting(None, "Stop after this many minutes of training (the best epoch so far is kept).", low=0.0, low_open=True, metavar="MIN")
    lr: float | None = setting(None, "Adam learning rate (default 1e-4; 1e-5 with --int8, which fine-tunes weights that are already trained).", low=0.0, low_open=True)
    lr_schedule: str = setting("cosine", "cosine: decays the rate to zero along a cosine over --epochs, or over --time-budget when that ends "
                               "first (the last steps settle the weights instead of jittering them); constant: the same rate throughout.",
                               choices=("constant", "cosine"))
    patience: int = setting(3, "Stop when this many epochs in a row do not improve the held-out score (with the cosine schedule, once its rate is "
                            "down to half).", low=1)
    features: str = setting("auto", "Also match intermediate tensors that both graphs have by name and shape (auto), or outputs only (none).", choices=("auto", "none"))
    temperature: float = setting(2.0, "Softening temperature for outputs that are class logits.", low=0.0, low_open=True)
    batch_size: int = setting(16, "Samples per training step: consecutive batches of the same shapes are stacked up to this many samples.", low=1)
    augment: str = setting("none", "flip: also train on horizontally flipped images (4-D float inputs), the teacher run on each.", choices=("none", "flip"))
    accuracy_metric: str = setting("cosine", "How the held-out score compares the student with the teacher (as quantize).", choices=SCORES)
    max_calibration_samples: int | None = setting(None, "Train on at most this many batches.", low=1, option="--max-samples")
    eval_fraction: float = setting(0.2, "Share of --data held out to score every epoch.", low=0.05, high=0.5)
    max_eval_batches: int = setting(64, "Score on at most this many held-out batches.", low=1)
    int8: bool = setting(False, "Quantization-aware: train with quantize's INT8 rounding in the forward pass (calibrated scales, straight-through "
                                "gradients), score each epoch's INT8 model, and write the INT8 model of the best epoch (or quantize's own "
                                "INT8 model of the student when training does not beat it).")
    train_precision: str = setting(
        "float32", "Arithmetic of the training steps: float32, or bfloat16 (torch's autocast: matrix products and convolutions in bfloat16, "
        "weights, normalizations and the loss in float32), for CPUs with bfloat16 arithmetic (AVX512-BF16, AMX). On an AVX512-BF16 CPU "
        "without AMX it gave MiniLM's steps 1.24x the speed at the same held-out score, a recognizer's 1.09x at a slightly lower one.",
        choices=("float32", "bfloat16"),
    )
    train_device: str = setting("auto", "Where the training steps run: cuda (torch's GPU), cpu, or auto (cuda when torch sees a GPU). The teacher "
                                        "and every held-out score run in onnxruntime on the CPU either way.", choices=("auto", "cpu", "cuda"))
    teacher_memory_mb: float | None = setting(None, "Memory for the teacher's outputs and features kept across epochs; past it the teacher runs "
                                                    "again on the remaining batches at every epoch (default: half the memory available when "
                                                    f"distill starts, at least {MIN_TEACHER_MEMORY_MB:g} MB).", low=0.0, metavar="MB")
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings(self)
        if self.int8 and self.train_precision == "bfloat16":
            raise UsageError("--int8 rounds to quantize's INT8 grid, which bfloat16 cannot hold: train it with --train-precision float32")


@dataclass
class EpochRecord(Record):
    epoch: int
    loss: float
    score: float
    seconds: float
    lr: float  # the learning rate at the epoch's last step (each tensor's own rate is at most this; see _parameter_groups)


@dataclass
class DistillReport(Record):
    """Scores against the teacher before and after, every epoch, and what was written."""

    command: ClassVar[str] = "distill"

    student: str
    teacher: str
    output: str | None
    config: dict = field(default_factory=dict)  # the settings, the learning rate as used
    evaluation: str = ""
    accuracy_metric: str = "cosine"
    trainable_parameters: int = 0
    train_device: str = "cpu"  # where the training steps ran, with the GPU's name
    features: list[str] = field(default_factory=list)
    output_kinds: dict[str, str] = field(default_factory=dict)
    int8: bool = False  # scores are of INT8 models: before = quantize's INT8 model of the student, after = the written one
    rounded_activations: int = 0
    rounded_weights: int = 0
    score_before: float | None = None
    score_after: float | None = None
    best_epoch: int = 0
    teacher_memory_mb: float = 0.0  # as used: --teacher-memory-mb, or half the memory available when distill started
    teacher_batches_kept: int = 0
    teacher_batches_recomputed: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)
    fidelity_before: list[OutputComparison] = field(default_factory=list)
    fidelity: list[OutputComparison] = field(default_factory=list)
    written: str = "distilled"
    warnings: list[str] = field(default_factory=list)


def _check_interface(student: onnx.ModelProto, teacher: onnx.ModelProto, label: str) -> None:
    s_in, t_in = {s.name for s in graph_inputs(student)}, {s.name for s in graph_inputs(teacher)}
    if s_in != t_in:
        name = sorted(s_in ^ t_in)[0]
        raise DataError(f"{label}: input '{name}' is not in both the student and the teacher; distill needs the same inputs")
    s_out, t_out = [s.name for s in graph_outputs(student)], [s.name for s in graph_outputs(teacher)]
    if s_out != t_out:
        name = next((a for a, b in zip(s_out + [""] * len(t_out), t_out + [""] * len(s_out)) if a != b), "?")
        raise DataError(f"{label}: the student's outputs differ from the teacher's (at '{name or '(missing)'}'); distill needs the same outputs")


def _shared_features(student: onnx.ModelProto, teacher: onnx.ModelProto, batch: dict, *, differing_only: bool = True) -> list[str]:
    """Float tensors both graphs compute under the same name with the same shape (pruning keeps names), spread over the graph.

    Left out: with ``differing_only``, tensors both compute alike on ``batch`` (upstream of every change: nothing to learn, and a
    term that starts at 0 would anchor them at full weight; --int8 keeps them, since its rounding makes them differ), and reductions (a normalization's per-token mean, a squeeze-excitation's pooled
    vector) of less than 1/FEATURE_MIN_SHARE the size of the largest candidate: a hint per stage, not per statistic.
    """
    from onnxslim.runtime.probe import runtime_values

    s_types, t_types = element_types(student), element_types(teacher)
    outputs = {o.name for o in student.graph.output}
    names = [o for n in student.graph.node for o in n.output if o and o not in outputs and s_types.get(o) == onnx.TensorProto.FLOAT and t_types.get(o) == onnx.TensorProto.FLOAT]
    teacher_names = {o for n in teacher.graph.node for o in n.output}
    names = [n for n in names if n in teacher_names]
    if not names:
        return []
    leading = {np.shape(v)[0] for v in batch.values() if np.ndim(v)}
    stacked = len(leading) == 1 and leading.pop() > 1  # samples stacked along axis 0: one is enough, and every tensor of two models is held at once
    sample = {k: (v[:1] if stacked and np.ndim(v) else v) for k, v in batch.items()}
    s_values, t_values = runtime_values(student, sample, set(names)), runtime_values(teacher, sample, set(names))
    same = [n for n in names if n in s_values and n in t_values and s_values[n].shape == t_values[n].shape and s_values[n].ndim >= 2]
    same = [n for n in same if not differing_only or not np.allclose(s_values[n], t_values[n], rtol=1e-5, atol=1e-6 * (float(np.abs(t_values[n]).max()) or 1.0))]
    largest = max((s_values[n].size for n in same), default=0)
    same = [n for n in same if s_values[n].size * FEATURE_MIN_SHARE >= largest]
    if len(same) > MAX_FEATURES:  # evenly spaced along the graph: one hint per stage, not a hundred from one block
        same = [same[round(i * (len(same) - 1) / (MAX_FEATURES - 1))] for i in range(MAX_FEATURES)]
    return list(dict.fromkeys(same))


def _stacked(batches: list, size: int) -> list:
    """Consecutive batches with the same input shapes joined along axis 0 until ``size`` samples; others stay as they are."""
    stacked, group, count = [], [], 0

    def flush():
        if len(group) == 1:  # as it came (a scalar input, a sample rate, cannot be joined to anything)
            stacked.append(group[0])
        elif group:
            joined = {name: np.concatenate([b[name] for _, b in group]) for name in group[0][1]}
            stacked.append((f"{group[0][0]} .. {group[-1][0]}", joined))

    for label, batch in batches:
        rows = min(v.shape[0] for v in batch.values() if v.ndim) if any(v.ndim for v in batch.values()) else 1
        same = group and all(group[0][1][k].shape[1:] == v.shape[1:] and v.ndim for k, v in batch.items())
        if not same or count + rows > size:
            flush()
            group, count = [], 0
        group.append((label, batch))
        count += rows
    flush()
    return stacked


def _real_tokens(batch: dict, device):
    """Where the batch's padding mask marks real tokens (a torch bool tensor on ``device``), as the held-out score reads them; None without one."""
    import torch

    mask = batch.get(PADDING_MASK)
    return torch.from_numpy(np.asarray(mask) != 0).to(device) if mask is not None and np.ndim(mask) == 2 else None


def _flipped(batch: dict) -> dict:
    return {k: (np.ascontiguousarray(v[..., ::-1]) if v.ndim == 4 and v.dtype.kind == "f" else v) for k, v in batch.items()}


def distill(
    student: str | os.PathLike | onnx.ModelProto,
    teacher: str | os.PathLike | onnx.ModelProto,
    data,
    *,
    config: DistillConfig = DistillConfig(),
    output: str | os.PathLike | None = None,
    eval_data=None,
    input_shapes=None,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, DistillReport]:
    """Train ``student`` on ``data`` to reproduce ``teacher``; returns the model written (the best epoch, or the student as given) and the report."""
    torch, _ = require_torch()
    device = training_device(config.train_device)  # before any work: a GPU asked for and missing is a usage error
    torch.manual_seed(config.seed)
    label = str(student) if not isinstance(student, onnx.ModelProto) else "<student>"
    student_model, teacher_model = load_model(student), load_model(teacher)
    _check_interface(student_model, teacher_model, label)
    CLEANUP(student_model)  # Paddle's Constant-node weights become initializers, BatchNorm folds; the opset stays the student's
    inputs = graph_inputs(student_model)
    source = for_several_passes(open_data(data, inputs, input_shapes=input_shapes), config.max_calibration_samples)
    train, held, where = evaluation_split(source, eval_data, inputs, fraction=config.eval_fraction, cap=config.max_eval_batches, input_shapes=input_shapes)
    if not held:
        raise DataError(f"{label}: too few batches to hold any out for scoring; give more --data or --eval-data")
    batch_axis_free = all(spec.shape and not isinstance(spec.shape[0], int) for spec in inputs)  # a fixed batch of 1 cannot take stacked samples
    train_batches = _stacked(list(train), config.batch_size if batch_axis_free else 1)
    lr = config.lr if config.lr is not None else (1e-5 if config.int8 else 1e-4)
    report = DistillReport(label, str(teacher) if not isinstance(teacher, onnx.ModelProto) else "<teacher>", str(output) if output else None,
                           config=dataclasses.asdict(config) | {"lr": lr},
                           evaluation=f"{len(held)} {'batch(es) of --eval-data' if where == 'eval-data' else 'held-out batch(es) of --data'}",
                           accuracy_metric=config.accuracy_metric)

    aware = _QuantizationAware(student_model, source, input_shapes) if config.int8 else None
    if aware is not None:
        student_model = aware.prepared  # trained under quantize's names: its plan names these tensors
    features = _shared_features(student_model, teacher_model, train_batches[0][1], differing_only=not config.int8) if config.features == "auto" else []
    report.features = features
    # one module for training: the student with the feature tensors as extra outputs after its own
    trainable = with_outputs(student_model, features, element_types(student_model)) if features else student_model
    net, bindings, frozen = to_module(trainable)
    report.trainable_parameters = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    report.train_device = device_name(device)
    if frozen:
        report.warnings.append(f"{', '.join(frozen)}: recurrent layer(s) keep their weights (onnx's gate layout has no one-to-one counterpart in torch's); "
                               "the layers around them are trained")
    if not bindings:
        raise NothingToDoError(f"{label}: the student has no trainable weights (Conv, Gemm/MatMul, normalization)")
    input_names = [s.name for s in inputs]
    output_names = [s.name for s in graph_outputs(student_model)]
    net.to(device)
    _check_reproduces(net, student_model, held[0][1], input_names, output_names, label)
    rounding = aware.attach(net, bindings, input_names, report) if aware is not None else None

    teacher_runner = Runner(with_outputs(teacher_model, features, element_types(teacher_model)) if features else teacher_model, threads=None, label="teacher")
    report.teacher_memory_mb = _teacher_memory_mb(config)
    targets = TeacherTargets(teacher_runner, output_names + features, [batch for _, batch in train_batches], int(report.teacher_memory_mb * 2**20),
                             show_progress=show_progress)
    report.teacher_batches_kept, report.teacher_batches_recomputed = len(targets.kept), targets.recomputed
    if targets.recomputed:
        report.warnings.append(f"the teacher's targets for {targets.recomputed} of {len(targets)} training batch(es) did not fit --teacher-memory-mb "
                               f"{report.teacher_memory_mb:.0f}; the teacher runs on those again at every epoch")
    kinds = [output_kind([t[i] for t in targets.sample]) for i in range(len(output_names))]
    report.output_kinds = dict(zip(output_names, kinds))
    terms = [Term(n, k) for n, k in zip(output_names, kinds)] + [Term(n, VALUES, feature=True) for n in features]

    reference = RememberedReference(Runner(teacher_model, threads=None, label="teacher"))  # every epoch is scored on the same held-out batches
    before = fidelity(reference, aware.int8_as_quantized() if aware else student_model, held, label="student")
    report.fidelity_before = before
    report.score_before = worst_score(before, config.accuracy_metric)
    best_score, best_state, best_epoch, stale = report.score_before, None, 0, 0
    optimizer = torch.optim.Adam(_parameter_groups(net, lr))
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        ready_to_train(net)
        losses, factor = [], 1.0
        order = np.random.default_rng(config.seed + epoch).permutation(len(train_batches))
        for step, index in enumerate(track(order, f"epoch {epoch}/{config.epochs}", enabled=show_progress)):
            if config.lr_schedule == "cosine":
                factor = _cosine_factor(epoch - 1 + step / len(order), config.epochs, time.perf_counter() - started, config.time_budget)
                _set_rate(optimizer, factor)
            batch, target = train_batches[index][1], targets[index]
            steps = [(batch, target)]
            if config.augment == "flip":
                flipped = _flipped(batch)
                steps.append((flipped, teacher_runner.run(flipped, output_names + features)))
            for feed, wanted in steps:
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train_precision == "bfloat16"):
                    produced = forward(net, feed, input_names, rounding)
                produced = [p.float() if p.is_floating_point() else p for p in produced]
                expected = [torch.from_numpy(np.asarray(t)).to(device) for t in wanted]
                loss = total_loss(terms, produced, expected, config.temperature, _real_tokens(feed, device))
                if not torch.isfinite(loss):
                    raise DataError(f"{label}: the distillation loss became {float(loss)} at epoch {epoch}; lower --lr")
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        if rounding is not None:
            rounding.remove()  # plain float weights to write back
        candidate = _strip_features(written_back(trainable, net, bindings), output_names)
        scored = aware.int8_with_weights(candidate) if aware else candidate
        if rounding is not None:
            rounding = aware.attach(net, bindings, input_names, report)
        scores = fidelity(reference, scored, held, label="distilled student")
        score = worst_score(scores, config.accuracy_metric)
        seconds = time.perf_counter() - started
        report.epochs.append(EpochRecord(epoch, float(np.mean(losses)), score, seconds, lr * factor))
        improved = not math.isnan(score) and (math.isnan(best_score) or score > best_score)
        if improved:
            best_score, best_state, best_epoch, stale = score, (candidate, scores), epoch, 0
        else:
            stale += 1
        if show_progress:
            stderr_console.print(f"epoch {epoch}: loss {np.mean(losses):.4f}, held-out {config.accuracy_metric} {score:.5f}" + (" (best)" if improved else ""), highlight=False)
        # while a cosine schedule is in its first half the rate is high and the held-out score jitters; its gains come as
        # the rate settles (a recognizer's student: best at epoch 2 of 5 when this stopped it, the rate still above half)
        settling = config.lr_schedule != "cosine" or _cosine_factor(epoch, config.epochs, seconds, config.time_budget) <= SETTLED_RATE
        if stale >= config.patience and settling:
            report.warnings.append(f"stopped after epoch {epoch}: {config.patience} epoch(s) without improvement on the held-out batches")
            break
        if config.time_budget is not None and seconds >= config.time_budget * 60.0:
            report.warnings.append(f"stopped after epoch {epoch}: --time-budget {config.time_budget:g} min reached")
            break
    report.best_epoch = best_epoch
    if aware is not None:
        result = aware.finish(best_state[0] if best_state else None, reference, held, before, report)
    elif best_state is None:
        report.written = "student"
        report.score_after, report.fidelity = report.score_before, before
        report.warnings.append("no epoch improved on the student as given (held-out score); the student is written unchanged")
        result = load_model(student)
    else:
        result, report.fidelity = best_state
        report.score_after = best_score
        remove_dead_nodes(result)  # initializers the cleaning left unread would make onnxruntime warn at every load
    if output is not None:
        write_verified(result, output, source=None if isinstance(student, onnx.ModelProto) else student)
    return result, report


class _QuantizationAware:
    """What --int8 adds to distillation: quantize's plan and calibrated scales for the student, its INT8 models, the choice at the end."""

    def __init__(self, student: onnx.ModelProto, source, input_shapes):
        # every layer quantize would quantize, with scales from a few hundred batches (ranges settle well before that); the plan is
        # made without the depthwise channel padding, so the module trains the student's own shapes (quantize pads the result)
        self.config = QuantConfig(accuracy_budget=None, latency_runs=0, max_calibration_samples=CALIBRATION_SAMPLES)
        self.source, self.input_shapes = source, input_shapes
        self.run = QuantRun(student, source, self.config, None, input_shapes, False, align=False)
        plan, params = self.run.params(self.run.plan(self.config))
        if not plan.quantized_nodes:
            raise NothingToDoError("distill --int8: the student has nothing quantize would quantize")
        self.activations, self.weights, self.hard_swish = quantized_tensors(plan, params, self.run.prepared)
        self.signed = plan.signed
        self.prepared = load_model(self.run.prepared)

    def attach(self, net, bindings, input_names: list[str], report: DistillReport) -> FakeQuantization:
        rounding = attach(net, bindings, self.activations, self.weights, signed=self.signed, input_names=input_names, hard_swish=self.hard_swish)
        report.int8, report.rounded_activations, report.rounded_weights = True, rounding.activations + len(rounding.inputs), rounding.weights
        return rounding

    def int8_as_quantized(self) -> onnx.ModelProto:
        """quantize's INT8 model of the student as given (what training has to beat)."""
        self.ptq, _ = quantize(self.prepared, self.source, config=self.config, input_shapes=self.input_shapes)
        return self.ptq

    def int8_with_weights(self, candidate: onnx.ModelProto) -> onnx.ModelProto:
        """The INT8 model of a trained candidate with the scales it was trained with."""
        return self.run.rebuilt_with_weights(load_model(candidate), self.config)

    def finish(self, best: onnx.ModelProto | None, reference, held, before, report: DistillReport) -> onnx.ModelProto:
        """Quantize the best epoch's float weights afresh and write the more faithful of that and quantize's INT8 student
        (:meth:`int8_as_quantized` made it before training)."""
        if best is not None:
            trained, _ = quantize(best, self.source, config=self.config, input_shapes=self.input_shapes)
            scores = fidelity(reference, trained, held, label="distilled INT8 student")
            score = worst_score(scores, report.accuracy_metric)
            if not math.isnan(score) and score > report.score_before:
                report.written, report.score_after, report.fidelity = "distilled-int8", score, scores
                return trained
            report.warnings.append(f"the trained weights quantized afresh score {score:.5f}, not above quantize's INT8 student; that one is written")
        else:
            report.warnings.append("no epoch improved on quantize's INT8 student (held-out score); that one is written")
        report.written, report.score_after, report.fidelity = "int8-student", report.score_before, before
        return self.ptq


def _teacher_memory_mb(config: DistillConfig) -> float:
    """--teacher-memory-mb, or half the memory available now (at least MIN_TEACHER_MEMORY_MB): kept targets spare the teacher's
    forward pass at every step, which on two CPU cores costs about half as much as the student's step (MiniLM: 0.09 s of 0.26)."""
    if config.teacher_memory_mb is not None:
        return config.teacher_memory_mb
    available = available_bytes()
    return max(MIN_TEACHER_MEMORY_MB, available / 2**21) if available else MIN_TEACHER_MEMORY_MB


def _parameter_groups(net, lr: float) -> list[dict]:
    """Adam moves every element by about ``lr`` a step whatever its size; a tensor whose values are far smaller (a layer a folded
    normalization scaled down to 3e-5 in PP-OCRv4 det) would change by its own size in one step and wreck the model. Each tensor's
    rate is capped at MAX_RELATIVE_STEP of its RMS; an all-zero tensor (a bias not yet used) keeps ``lr``."""
    groups = []
    for parameter in (p for p in net.parameters() if p.requires_grad):
        rms = float(parameter.detach().double().pow(2).mean().sqrt())
        groups.append({"params": [parameter], "lr": min(lr, MAX_RELATIVE_STEP * rms) if rms > 0 else lr})
    return groups


SETTLED_RATE = 0.5  # --patience stops a cosine schedule only once its rate is down to this share of the peak


def _cosine_factor(epochs_done: float, epochs: int, seconds: float, time_budget: float | None) -> float:
    """The share of the base rate at this point of training: 1 at the start, 0 at the end of --epochs or of --time-budget, whichever comes first."""
    progress = epochs_done / epochs
    if time_budget is not None:
        progress = max(progress, seconds / (time_budget * 60.0))
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _set_rate(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def _check_reproduces(net, model: onnx.ModelProto, batch: dict, input_names: list[str], output_names: list[str], label: str) -> None:
    """Refuse a student the converter does not reproduce: training it would train something else (extra feature outputs after the real ones are not compared)."""
    import torch

    expected = Runner(model, threads=None, label="student").run(batch, output_names)
    with torch.no_grad(), full_float32():
        try:
            produced = [p.detach().cpu().numpy() for p in forward(net, batch, input_names)]
        except Exception as exc:  # a module the converter built but torch cannot run (a shape it got wrong)
            raise UnsupportedModelError(
                f"{label}: the trainable module fails on a held-out batch ({type(exc).__name__}: {first_line(exc, 200)}); this graph cannot be distilled"
            ) from None
    for name, want, got in zip(output_names, expected, produced):
        scale = float(np.abs(want).max()) or 1.0
        error = float(np.abs(np.asarray(got, np.float64).reshape(want.shape) - want).max()) / scale if got.size == want.size else math.inf
        if not error <= REPRODUCTION_TOLERANCE:
            raise UsageError(f"{label}: the trainable module does not reproduce output '{name}' (relative error {error:.3g}); this graph cannot be distilled")


def _strip_features(model: onnx.ModelProto, output_names: list[str]) -> onnx.ModelProto:
    kept = [o for o in model.graph.output if o.name in set(output_names)]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model
