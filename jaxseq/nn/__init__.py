"""Convolutional networks as pure functions.

* Array functions on channels-last inputs ``(N, *spatial, C)``: ``conv``, ``max_pool``,
  ``avg_pool``, ``global_avg_pool``, ``global_max_pool``, ``adaptive_avg_pool``, and the
  shape arithmetic ``output_size``.
* Layers, ``init(key, input_shape) -> (params, state)`` and
  ``apply(params, state, x, *, train=False, key=None) -> (y, state)``, with shape inference
  (``Conv``, ``Dense``, ``MaxPool``, ``BatchNorm``, ``Dropout``, ``DropConnect``, ...) and
  combinators ``serial``, ``concat``, ``residual``.
* ``summary(model, input_shape)``: the per-layer table of shapes, sizes and parameters.
"""
from jaxseq.nn.functional import (adaptive_avg_pool, avg_pool, conv, global_avg_pool,
                                  global_max_pool, max_pool, output_size)
from jaxseq.nn.layers import (AdaptiveAvgPool, Activation, AvgPool, BatchNorm, Conv, Dense,
                              DropConnect, Dropout, Embedding, Flatten, Gelu, GlobalAvgPool,
                              GlobalMaxPool, Identity, Layer, LogSoftmax, MaxPool, Relu,
                              Sigmoid, Softmax, Tanh, concat, residual, serial,
                              variance_scaling)
from jaxseq.nn.table import Summary, SummaryRow, summary

__all__ = [
    "adaptive_avg_pool", "avg_pool", "conv", "global_avg_pool", "global_max_pool",
    "max_pool", "output_size",
    "AdaptiveAvgPool", "Activation", "AvgPool", "BatchNorm", "Conv", "Dense", "DropConnect",
    "Dropout", "Embedding", "Flatten", "Gelu", "GlobalAvgPool", "GlobalMaxPool", "Identity",
    "Layer", "LogSoftmax", "MaxPool", "Relu", "Sigmoid", "Softmax", "Tanh", "concat",
    "residual", "serial", "variance_scaling",
    "Summary", "SummaryRow", "summary",
]
