"""Graph passes and the pipelines that run them.

Each pass is a function ``(model) -> PassResult`` that edits the model in
place (see :mod:`onnxslim.passes.base` for the contract); :data:`CLEANUP`
is the standard sequence every command builds on.
"""

from __future__ import annotations

from onnxslim.passes.affine import fold_affine_into_conv
from onnxslim.passes.base import Decline, DeclineCode, GraphPass, PassError, PassResult, Pipeline, graph_is_sorted, model_is_valid, run_passes
from onnxslim.passes.batchnorm import fuse_batchnorm
from onnxslim.passes.branches import parallel_convs_as_one
from onnxslim.passes.clamps import max_min_with_a_constant_as_clip
from onnxslim.passes.cleanup import remove_dead_nodes, remove_identities
from onnxslim.passes.constants import constants_to_initializers, initializers_out_of_inputs
from onnxslim.passes.conv_rank import conv3d_on_one_slice_as_conv2d
from onnxslim.passes.einsum import einsum_to_matmul
from onnxslim.passes.fold import fold_constants
from onnxslim.passes.hardswish import fuse_hardswish
from onnxslim.passes.layernorm import fuse_layernorm
from onnxslim.passes.masks import deepen_attention_masks
from onnxslim.passes.opset import default_opset, upgrade_opset
from onnxslim.passes.pads import pads_into_convs
from onnxslim.passes.picked_concat import picked_concat_inputs_read_directly
from onnxslim.passes.pooling import reduce_mean_to_global_pool
from onnxslim.passes.reciprocal import reciprocal_products_as_division
from onnxslim.passes.recurrent_loops import recurrent_loops_as_layers
from onnxslim.passes.recurrent_state import zero_initial_states_left_out
from onnxslim.passes.repeated_heads import repeated_heads_as_gathers
from onnxslim.passes.unfuse import layernorm_at_opset_17, unfuse_onnxruntime_layers

# a model saved by onnxruntime: its fused layers as the operators every rule knows, and its LayerNormalization nodes,
# written below the opset that defines them, made valid; first in every command's preparation
SAVED_BY_ONNXRUNTIME: tuple[GraphPass, ...] = (unfuse_onnxruntime_layers, layernorm_at_opset_17)
CLEANUP_PASSES: tuple[GraphPass, ...] = (
    *SAVED_BY_ONNXRUNTIME,
    initializers_out_of_inputs,
    constants_to_initializers,
    remove_identities,
    fold_constants,
    einsum_to_matmul,  # after folding: a weight computed from constants is one by now
    pads_into_convs,  # after folding too: "same" padding computed from shapes is a constant by now
    reduce_mean_to_global_pool,  # the dynamo exporter's pooling, as the integer kernels know it
    deepen_attention_masks,  # after folding: a mask built from constants is one by now
    reciprocal_products_as_division,  # after folding (a constant's reciprocal is a constant by now): RMSNorm fuses
    max_min_with_a_constant_as_clip,  # after folding too: the bound is a constant by now
    fold_affine_into_conv,  # a bias Add between a layer and its BatchNormalization (Paddle's ConvTranspose) first,
    fuse_batchnorm,
    parallel_convs_as_one,  # after the folds into each branch's Conv: a multi-branch block's sum as one Conv
    fold_affine_into_conv,  # then a Mul/Add after a BatchNormalization just folded, or after the merged sum
    fuse_hardswish,
    conv3d_on_one_slice_as_conv2d,  # after the folds into Conv, which read the weights as written
    recurrent_loops_as_layers,  # after folding: the weights a step slices are constants by now
    zero_initial_states_left_out,  # after the Loops turned LSTMs and GRUs: their zero states too
    picked_concat_inputs_read_directly,  # a stacked LSTM's last final state, read from its own layer
    remove_dead_nodes,
)
CLEANUP = Pipeline(CLEANUP_PASSES)

__all__ = [
    "CLEANUP",
    "CLEANUP_PASSES",
    "SAVED_BY_ONNXRUNTIME",
    "Decline",
    "DeclineCode",
    "GraphPass",
    "PassError",
    "PassResult",
    "Pipeline",
    "constants_to_initializers",
    "conv3d_on_one_slice_as_conv2d",
    "deepen_attention_masks",
    "einsum_to_matmul",
    "default_opset",
    "fold_affine_into_conv",
    "fold_constants",
    "fuse_batchnorm",
    "fuse_hardswish",
    "fuse_layernorm",
    "layernorm_at_opset_17",
    "unfuse_onnxruntime_layers",
    "graph_is_sorted",
    "initializers_out_of_inputs",
    "max_min_with_a_constant_as_clip",
    "pads_into_convs",
    "parallel_convs_as_one",
    "model_is_valid",
    "picked_concat_inputs_read_directly",
    "reciprocal_products_as_division",
    "recurrent_loops_as_layers",
    "reduce_mean_to_global_pool",
    "remove_dead_nodes",
    "remove_identities",
    "repeated_heads_as_gathers",
    "run_passes",
    "zero_initial_states_left_out",
    "upgrade_opset",
]
