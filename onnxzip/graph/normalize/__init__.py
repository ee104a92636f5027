"""Normalization passes: bring any exporter's graph to one canonical form.

After :func:`normalize`, a graph holds:

* dense layers as ``Gemm(x, W, b)`` with ``W`` a constant (out, in), ``transB=1``, ``alpha=beta=1``;
* convolutions as ``Conv(x, W, b)`` with a constant bias (zeros where the file had none);
* BatchNormalization folded into the Conv/Gemm before it where that layer feeds only the BN;
* ``Reshape`` to (batch, features) as ``Flatten(axis=1)``, a channels-last Flatten read only by dense
  layers as the channel-major one (their weight columns permuted), Reshape targets computed from shapes
  (``Shape``/``Slice``/``Gather``/``Concat``) as constants;
* no Identity or (inference) Dropout nodes, no Constant nodes, initializers not listed as inputs, and
  no nodes of constant inputs (e.g. a bias stored as (C,) and reshaped to (1, C, 1, 1): folded).

Each pass is ``pass(graph) -> int`` (the number of rewrites) and edits the onnx-graphsurgeon graph
in place. Only this package edits graphs. Its rooms, by pass family: :mod:`.prepare` (reading a
model in), :mod:`.fold` (constants and shapes), :mod:`.layers` (canonical layer forms),
:mod:`.weights` (weights folded into layers), :mod:`.edit` (the edits passes share).
"""
from __future__ import annotations

import logging
from typing import Callable

import onnx_graphsurgeon as gs

from .edit import remove_identities
from .fold import fold_constants, fold_reshape_shapes, infer_shapes
from .layers import (
    add_conv_bias,
    canonicalize_gemm,
    channels_last_flatten,
    matmul_add_to_gemm,
    reduce_mean_to_pool,
    reshape_to_flatten,
    split_fused_projections,
    token_matmul_to_gemm,
)
from .prepare import READ_OPSETS, drop_initializer_inputs, name_nodes, onnx_opset, prepare
from .weights import fold_batchnorm, fold_scaler, unalias_weights

log = logging.getLogger(__name__)
Pass = Callable[[gs.Graph], int]


DEFAULT_PASSES: tuple[Pass, ...] = (
    drop_initializer_inputs, name_nodes, fold_constants, fold_reshape_shapes, infer_shapes, remove_identities,
    token_matmul_to_gemm, matmul_add_to_gemm, canonicalize_gemm, fold_scaler, add_conv_bias, fold_batchnorm, reduce_mean_to_pool,
    reshape_to_flatten, channels_last_flatten, unalias_weights,
)


def normalize(graph: gs.Graph, passes: tuple[Pass, ...] = DEFAULT_PASSES) -> dict[str, int]:
    """Run ``passes`` in order, then clean up and sort once.

    Returns:
        pass name -> number of rewrites.
    """
    counts = {p.__name__: p(graph) for p in passes}
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    log.debug("normalize: %s", counts)
    return counts


__all__ = ["DEFAULT_PASSES", "READ_OPSETS", "Pass", "add_conv_bias", "canonicalize_gemm", "channels_last_flatten",
           "drop_initializer_inputs",
           "fold_batchnorm", "fold_constants", "fold_reshape_shapes", "fold_scaler", "infer_shapes", "matmul_add_to_gemm",
           "name_nodes", "normalize", "onnx_opset", "prepare", "reduce_mean_to_pool", "remove_identities",
           "reshape_to_flatten", "split_fused_projections", "token_matmul_to_gemm", "unalias_weights"]
