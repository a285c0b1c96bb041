"""onnxruntime sessions with timing and node placement.

A :class:`Runner` owns one session of one model on one execution provider. It
runs batches, times single runs, and reports where the nodes actually ran
(from onnxruntime's own profile), so a CUDA session that quietly fell back to
the CPU is seen as such.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxslim.errors import DataError, ModelLoadError, ProviderError, first_line
from onnxslim.ir.graph import node_attr
from onnxslim.ir.mapped import SessionFile
from onnxslim.ir.scopes import all_nodes
from onnxslim.runtime.providers import available_providers, provider_chain, short_name

# A model file's path, its serialized bytes, or a model in memory (written for onnxruntime as needed).
ModelSource = str | os.PathLike | bytes | onnx.ModelProto


_PRELOADED = False


def _ort():
    global _PRELOADED
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    if not _PRELOADED:
        _PRELOADED = True
        # onnxruntime-gpu finds CUDA and cuDNN installed as pip packages (nvidia-*) only when asked to load them
        if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:  # the system's own CUDA libraries may still be found by the loader
                pass
    return ort


def quiet_onnxruntime() -> None:
    """Silence onnxruntime's own log, also for sessions other libraries open (graphsurgeon's folding)."""
    _ort()


@dataclass
class Placement:
    """Which execution provider ran how many nodes, from one profiled run."""

    requested: str
    registered: list[str]
    nodes_by_provider: dict[str, int] = field(default_factory=dict)
    ops_by_provider: dict[str, dict[str, int]] = field(default_factory=dict)  # provider -> op type -> nodes

    @property
    def fell_back(self) -> bool:
        """True when the requested provider ran no node at all (or was never registered)."""
        if self.requested not in self.registered:
            return True
        if not self.nodes_by_provider:
            return False
        return self.nodes_by_provider.get(self.requested, 0) == 0

    def to_dict(self) -> dict:
        return {
            "requested": short_name(self.requested),
            "registered": [short_name(p) for p in self.registered],
            "nodes_by_provider": {short_name(k): v for k, v in self.nodes_by_provider.items()},
            "ops_by_provider": {short_name(k): v for k, v in self.ops_by_provider.items()},
            "fell_back": self.fell_back and self.requested != "CPUExecutionProvider",
        }

    def ran_on(self) -> str:
        """Where the nodes ran, e.g. 'cuda 531, cpu 54', or the registered providers when nothing was profiled."""
        if self.nodes_by_provider:
            ordered = sorted(self.nodes_by_provider.items(), key=lambda item: -item[1])
            return ", ".join(f"{short_name(p)} {n}" for p, n in ordered)
        return ", ".join(short_name(p) for p in self.registered)


# onnxruntime's CPU provider (1.31 and 1.32) crashes the whole process while it opens a float16 graph in
# which a Transpose feeds a MatMul (every float16 ViT or BERT holds one) unless its NCHWc layout pass is
# off. That pass serves convolutions, so it stays on for every other graph.
FLOAT16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


def crashes_cpu_layout_pass(model: onnx.ModelProto) -> bool:
    """True for a graph that computes in float16 (Casts to float16, or float16 weights read as they are) with a Transpose read by a MatMul.

    Float16 weights that are only read by a Cast to float32 (quantize's ``--kept-float-weights float16``)
    are folded back to float32 when onnxruntime opens the model: that graph computes in float32 and
    keeps the layout pass (without it, the recognizer's INT8 model timed 15% slower than it runs).
    """
    if not _computes_in_half(model):
        return False
    transposed = {o for n in model.graph.node if n.op_type == "Transpose" for o in n.output}
    return any(n.op_type in ("MatMul", "Gemm") and any(i in transposed for i in n.input) for n in model.graph.node)


def _casts_to(node: onnx.NodeProto, element_type: int) -> bool:
    return node.op_type == "Cast" and node_attr(node, "to") == element_type


def _computes_in_half(model: onnx.ModelProto) -> bool:
    graph = model.graph
    if any(_casts_to(n, onnx.TensorProto.FLOAT16) for n in graph.node):
        return True
    half = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    return any(name in half for n in graph.node if not _casts_to(n, onnx.TensorProto.FLOAT) for name in n.input)


@functools.lru_cache(maxsize=64)
def _file_facts(path: str, modified: int, size: int) -> tuple[bool, bool]:
    """Whether the model file at ``path`` crashes the CPU layout pass, and whether it keeps weights in external data (one read for both)."""
    model = onnx.load(path, load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return crashes_cpu_layout_pass(model), external


def file_weight_bytes(path: str | os.PathLike) -> int | None:
    """The bytes of the model file at ``path``, or None when its weights lie in external data (their size is not read)."""
    try:
        stat = os.stat(path)
        return None if _file_facts(os.fspath(path), stat.st_mtime_ns, stat.st_size)[1] else stat.st_size
    except Exception:  # onnxruntime says what is wrong with the file when it opens it
        return None


def disabled_optimizers(model: ModelSource) -> list[str]:
    """onnxruntime graph passes to leave out for ``model`` (see FLOAT16_DISABLED_OPTIMIZERS)."""
    try:
        if isinstance(model, onnx.ModelProto):
            crashes = crashes_cpu_layout_pass(model)
        elif isinstance(model, bytes):
            crashes = crashes_cpu_layout_pass(onnx.load_from_string(model))
        else:
            stat = os.stat(model)
            crashes = _file_facts(os.fspath(model), stat.st_mtime_ns, stat.st_size)[0]
    except Exception:  # onnxruntime will say what is wrong with the file when it opens it
        return []
    return list(FLOAT16_DISABLED_OPTIMIZERS) if crashes else []


def _session_options(threads: int | None, optimization: str, profile_prefix: str | None = None, optimized_path: str | None = None):
    ort = _ort()
    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if threads != 1:
        # after each run a session's intra-op threads spin, waiting for more work; with several sessions run in turn
        # (interleaved timing, passes side by side) they hold the cores the next session needs: at two threads on two
        # cores every model timed 2-3x slower than alone, by amounts that depend on the order (measured)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


def as_array(value) -> np.ndarray:
    """One model output as an array. onnxruntime hands non-tensor outputs over as Python objects: a sequence of maps (a
    scikit-learn classifier's ZipMap, one {label: probability} per row) becomes (rows, labels) in label order, a map its
    values in key order, a sequence of tensors its tensors stacked (joined flat where their shapes differ)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Mapping):
        return np.asarray([value[key] for key in sorted(value)])
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, Mapping) for item in value):
            keys = sorted(value[0])
            return np.asarray([[row.get(key, np.nan) for key in keys] for row in value])
        arrays = [np.asarray(item) for item in value]
        if len({a.shape for a in arrays}) == 1:
            return np.stack(arrays)
        return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
    return np.asarray(value)


# onnxruntime's names of float tensor types -> numpy's
FLOAT_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16), "tensor(double)": np.dtype(np.float64)}


class Runner:
    """One model on one execution provider."""

    def __init__(
        self, model: ModelSource, provider: str = "CPUExecutionProvider", *, threads: int | None = 1, optimization: str = "all", label: str = "model", prepack: bool = True,
        like: Runner | None = None, cast_floats: bool = False,
    ):
        """``like``: a runner of the same ``model`` whose serialized copy and optimizer choices this one reuses (another thread count);
        ``cast_floats``: float inputs fed in another float type (float32 data for a float16 model) are cast to the model's."""
        self.provider = provider
        self.threads = threads
        self.label = label
        if like is not None:
            self._file, self._model, self._disabled = like._file, like._model, like._disabled
        else:
            self._file = SessionFile(model) if isinstance(model, onnx.ModelProto) else None
            self._model = self._file.source if self._file is not None else str(model) if isinstance(model, (str, os.PathLike)) else model
            self._disabled = disabled_optimizers(model)
        self._optimization = optimization
        ort = _ort()
        if provider not in available_providers():
            raise ProviderError(
                f"execution provider '{short_name(provider)}' is not available in this onnxruntime "
                f"(available: {', '.join(short_name(p) for p in available_providers())})"
            )
        options = _session_options(threads, optimization)
        if not prepack:  # a session run once or twice: repacking weights would cost a copy of them for nothing
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self.session = ort.InferenceSession(self._model, sess_options=options, providers=provider_chain(provider), disabled_optimizers=self._disabled)
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise ModelLoadError(f"{label}: onnxruntime cannot load it on {short_name(provider)}: {first_line(exc)}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.float_inputs = {i.name: FLOAT_TYPES[i.type] for i in self.session.get_inputs() if i.type in FLOAT_TYPES} if cast_floats else {}
        self._fitted: tuple[tuple, dict] | None = None

    def fitted(self, feed: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """``feed`` with its float inputs in this model's float types (where ``cast_floats`` was asked; the last one kept, so
        a timing loop casts once)."""
        if not self.float_inputs or all(self.float_inputs.get(k, v.dtype) == v.dtype for k, v in feed.items()):
            return feed
        key = tuple((k, id(v)) for k, v in feed.items())
        if self._fitted is None or self._fitted[0] != key:
            cast = {k: v.astype(self.float_inputs[k]) if k in self.float_inputs and v.dtype.kind == "f" else v for k, v in feed.items()}
            self._fitted = (key, cast)
        return self._fitted[1]

    @property
    def source(self) -> ModelSource:
        """What onnxruntime opened: a file's path or serialized bytes."""
        return self._model

    @property
    def source_bytes(self) -> int | None:
        """The size of what onnxruntime opened, or None when weights lie in files beside it (mapped or external data)."""
        if isinstance(self._model, bytes):
            return len(self._model)
        if self._file is not None:  # a skeleton beside its weights
            return None
        if isinstance(self._model, (str, os.PathLike)):
            return file_weight_bytes(self._model)
        return None

    @property
    def registered_providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, feed: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        return [as_array(value) for value in self._ran(self.session, outputs, dict(self.fitted(feed)))]

    def time_once(self, feed: Mapping[str, np.ndarray]) -> float:
        """Seconds for one run of ``feed``."""
        feed = dict(self.fitted(feed))
        start = time.perf_counter()
        self._ran(self.session, None, feed)
        return time.perf_counter() - start

    def _ran(self, session, outputs: list[str] | None, feed: dict):
        """``session``'s outputs for ``feed``; onnxruntime's failure as one line naming this model."""
        try:
            return session.run(outputs, feed)
        except Exception as exc:
            raise DataError(f"{self.label}: onnxruntime failed to run this input: {first_line(exc)}") from None

    def placement(self, feed: Mapping[str, np.ndarray]) -> Placement:
        """Run ``feed`` once with profiling and count the nodes each provider ran."""
        ort = _ort()
        with tempfile.TemporaryDirectory(prefix="onnxslim-profile-") as folder:
            options = _session_options(self.threads, self._optimization, profile_prefix=str(Path(folder) / "profile"))
            session = ort.InferenceSession(self._model, sess_options=options, providers=provider_chain(self.provider), disabled_optimizers=self._disabled)
            self._ran(session, None, dict(self.fitted(feed)))
            profile_file = session.end_profiling()
            counts, ops = _nodes_by_provider(Path(profile_file))
            registered = list(session.get_providers())
        return Placement(requested=self.provider, registered=registered, nodes_by_provider=counts, ops_by_provider=ops)


def _nodes_by_provider(profile_file: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Nodes per provider, and op types per provider, from an onnxruntime profile."""
    try:
        events = json.loads(profile_file.read_text())
    except (OSError, ValueError):
        return {}, {}
    nodes: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("cat") != "Node":
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        name = str(event.get("name", ""))
        if provider and name.endswith("_kernel_time"):
            nodes[name[: -len("_kernel_time")]] = (provider, str(args.get("op_name", "?")))
    ops: dict[str, Counter] = {}
    for provider, op in nodes.values():
        ops.setdefault(provider, Counter())[op] += 1
    return dict(Counter(provider for provider, _ in nodes.values())), {p: dict(c) for p, c in ops.items()}


def check_loads(path: str | os.PathLike) -> None:
    """Raise ModelLoadError unless onnxruntime's CPU provider can open ``path``."""
    ort = _ort()
    try:
        ort.InferenceSession(str(path), sess_options=_session_options(1, "disable"), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{Path(path).name}: onnxruntime cannot load the result: {first_line(exc)}") from None


def optimized_ops(model: ModelSource, *, threads: int = 1) -> Counter:
    """Op types onnxruntime's CPU provider runs after its own graph optimizations.

    This is how onnxslim checks that a quantized layout was fused into integer
    kernels (QLinearConv, MatMulInteger, ...) rather than left as float ops
    between Quantize/Dequantize pairs.
    """
    return Counter(node.op_type for node in all_nodes(optimized_graph(model, threads=threads).graph))  # inside If/Loop/Scan bodies too


def optimized_graph(model: ModelSource, *, threads: int = 1) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs after its own optimizations (weights not loaded)."""
    ort = _ort()
    file = SessionFile(model) if isinstance(model, onnx.ModelProto) else None
    source = file.source if file is not None else model if isinstance(model, bytes) else str(model)
    disabled = disabled_optimizers(model)
    with tempfile.TemporaryDirectory(prefix="onnxslim-opt-") as folder:
        target = str(Path(folder) / "optimized.onnx")
        options = _session_options(threads, "all", optimized_path=target)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        optimized = onnx.load(target, load_external_data=False)
    if file is not None:
        file.close()
    return optimized
