"""The contract of a graph pass, and the pipeline that runs passes in order.

A pass is a function ``model -> PassResult`` that changes the model it is given
in place (onnxslim always hands passes its own copy). It sets ``modified``
itself whenever it changed anything, names each change, and gives a coded
reason for every place it looked at and left alone. :class:`Pipeline` runs a
sequence of passes, names the pass at fault in any error, and in tests checks
post-conditions after every pass, among them that a pass which says it changed
nothing really left the model as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import onnx

from onnxslim.errors import OnnxSlimError, first_line
from onnxslim.reasons import Reason
from onnxslim.records import Record, json_field


class DeclineCode(Enum):
    """Why a pass left a place alone."""

    NOT_CONSTANT = "not_constant"  # an input the rewrite needs as a constant is computed at run time
    SHARED_VALUE = "shared_value"  # a tensor the rewrite would change is also read elsewhere
    GRAPH_OUTPUT = "graph_output"  # the rewrite would rename or remove a graph output
    UNSUPPORTED_FORM = "unsupported_form"  # an attribute, layout or shape the rewrite does not handle
    UNSUPPORTED_TYPE = "unsupported_type"  # an element type the rewrite does not handle
    OPSET = "opset"  # the model's opset or IR version does not allow it
    DYNAMIC = "dynamic"  # the value is only known at run time
    WOULD_GROW = "would_grow"  # the result would be larger than allowed
    INTERFACE = "interface"  # the rewrite would change the model's inputs or outputs
    TOOL_FAILED = "tool_failed"  # a library the pass relies on failed on this model
    TRAINING_MODE = "training_mode"  # the node computes training-only outputs that are read
    NOT_NEEDED = "not_needed"  # the result meets its accuracy budget without the rewrite, which would cost time


@dataclass(frozen=True)
class Decline(Record):
    """A place a pass looked at and did not change, and why."""

    where: str
    reason: Reason


class NotRewritten(Exception):
    """Why a pass leaves one place alone: raised inside its checks, turned into a :class:`Decline` by the pass."""

    def __init__(self, code: DeclineCode, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass
class PassResult(Record):
    """What one run of a pass did: whether it changed the model, each change, each decline."""

    name: str = json_field(key="pass")
    modified: bool = False
    changes: list[str] = field(default_factory=list)
    declined: list[Decline] = field(default_factory=list)
    seconds: float = 0.0

    def change(self, text: str) -> None:
        """Record a change; the model counts as modified."""
        self.modified = True
        self.changes.append(text)

    def decline(self, where: str, code: DeclineCode, text: str) -> None:
        self.declined.append(Decline(where, Reason(code, text)))

    def summary(self) -> str:
        """One line: the change itself, or how many and the first."""
        if not self.changes:
            return "modified" if self.modified else "unchanged"
        if len(self.changes) == 1:
            return self.changes[0]
        return f"{len(self.changes)} changes, e.g. {self.changes[0]}"



GraphPass = Callable[[onnx.ModelProto], PassResult]
# A post-condition: None when ``model`` satisfies it, else what is wrong.
Check = Callable[[onnx.ModelProto], "str | None"]


class PassError(RuntimeError):
    """A pass failed or broke a post-condition; the message names the pass."""


def pass_name(graph_pass: GraphPass) -> str:
    return getattr(graph_pass, "__name__", type(graph_pass).__name__).replace("_", "-")


@dataclass(frozen=True)
class Pipeline:
    """Passes run in order, up to ``max_steps`` times over.

    With ``stop_when_unchanged`` another step runs only while the last one
    modified the model. ``checks`` run after every pass (tests pass
    :func:`model_is_valid`, :func:`graph_is_sorted`); ``verify_unmodified``
    compares the serialized model before and after each pass that reports no
    change. Both cost a serialization per pass and are meant for tests.
    """

    passes: tuple[GraphPass, ...]
    max_steps: int = 1
    stop_when_unchanged: bool = True
    checks: tuple[Check, ...] = ()
    verify_unmodified: bool = False

    def __call__(self, model: onnx.ModelProto) -> list[PassResult]:
        results: list[PassResult] = []
        for _ in range(self.max_steps):
            step = [self._run(graph_pass, model) for graph_pass in self.passes]
            results.extend(step)
            if self.stop_when_unchanged and not any(r.modified for r in step):
                break
        return results

    def _run(self, graph_pass: GraphPass, model: onnx.ModelProto) -> PassResult:
        name = pass_name(graph_pass)
        before = model.SerializeToString() if self.verify_unmodified else None
        start = time.perf_counter()
        try:
            result = graph_pass(model)
        except PassError:
            raise
        except OnnxSlimError:
            raise  # already one line for the user
        except Exception as exc:
            raise PassError(f"pass {name} failed: {type(exc).__name__}: {exc}") from exc
        result.seconds = time.perf_counter() - start
        if before is not None and not result.modified and model.SerializeToString() != before:
            raise PassError(f"pass {result.name} changed the model but reported modified=False")
        for check in self.checks:
            problem = check(model)
            if problem is not None:
                raise PassError(f"after pass {result.name}: {problem}")
        return result


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass]) -> list[PassResult]:
    """Run ``passes`` once, in order, on ``model`` (in place) and return what each did."""
    return Pipeline(tuple(passes))(model)


def model_is_valid(model: onnx.ModelProto) -> str | None:
    """Post-condition: onnx.checker accepts the model (full check, shape inference included)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker raises ValidationError and inference errors alike
        return f"the model no longer passes onnx.checker: {first_line(exc)}"
    return None


def graph_is_sorted(model: onnx.ModelProto) -> str | None:
    """Post-condition: every node's inputs are produced before it (main graph)."""
    available = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        missing = [name for name in node.input if name not in available]
        if missing:
            return f"node {node.name or node.op_type} reads '{missing[0]}' before it is produced"
        available.update(node.output)
    return None
