"""Graph cleanup passes and the pipeline that runs them.

Each pass is a function ``(model) -> PassResult`` that edits the model in
place; :func:`cleanup` runs the standard sequence on a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from onnxslim.passes.affine import fold_affine_into_conv
from onnxslim.passes.base import Decline, PassResult
from onnxslim.passes.batchnorm import fuse_batchnorm
from onnxslim.passes.cleanup import remove_dead_nodes, remove_identities
from onnxslim.passes.constants import constants_to_initializers, initializers_out_of_inputs
from onnxslim.passes.fold import fold_constants
from onnxslim.passes.hardswish import fuse_hardswish
from onnxslim.passes.opset import default_opset, upgrade_opset

GraphPass = Callable[[onnx.ModelProto], PassResult]

CLEANUP_PASSES: tuple[GraphPass, ...] = (
    initializers_out_of_inputs,
    constants_to_initializers,
    remove_identities,
    fold_constants,
    fuse_batchnorm,
    fold_affine_into_conv,
    fuse_hardswish,
    remove_dead_nodes,
)


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass] = CLEANUP_PASSES) -> list[PassResult]:
    """Run ``passes`` in order on ``model`` (in place) and return what each did."""
    return [graph_pass(model) for graph_pass in passes]


__all__ = [
    "CLEANUP_PASSES",
    "Decline",
    "GraphPass",
    "PassResult",
    "constants_to_initializers",
    "default_opset",
    "fold_affine_into_conv",
    "fold_constants",
    "fuse_hardswish",
    "initializers_out_of_inputs",
    "fuse_batchnorm",
    "remove_dead_nodes",
    "remove_identities",
    "run_passes",
    "upgrade_opset",
]
