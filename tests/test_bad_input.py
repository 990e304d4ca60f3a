"""A catalogue of malformed calls to jaxseq's feed-forward API (``jaxseq.nn`` functions and
layers, the model zoo, ``losses``, ``initializers``) and to ``interop``'s entry points.

Every case must fail at the call that received the bad value, in jaxseq's own Python
checks, with exactly a ``ValueError`` or ``TypeError`` whose message reads
``"<argument>: expected <what>, got <received>"``: the test matches the argument's name
at the start and the received value after ``got``. No raw JAX/XLA/Python error, no silent
answer. The second half holds inputs that used to be refused or mis-scored and are valid:
each is checked against an independent oracle (a table lookup, PyTorch, NumPy).
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq
import jaxseq.nn as nn
from jaxseq import initializers, interop, losses, models

JAXSEQ_DIR = os.path.dirname(jaxseq.__file__)
KEY = jax.random.PRNGKey(0)
NAN, INF = float("nan"), float("inf")

X2D = np.ones((2, 6, 6, 3), np.float32)            # (N, H, W, C)
K2D = np.ones((3, 3, 3, 4), np.float32)            # (kh, kw, C, F)
X1D = np.ones((2, 8, 3), np.float32)
LOGITS = np.zeros((2, 5, 4), np.float32)            # (B, T, K)
LABELS = np.zeros((2, 5), np.int32)
DENSE = nn.Dense(4)
DENSE_PARAMS, _ = DENSE.init(KEY, (3,))
EMBED = nn.Embedding(5, 3)
EMBED_PARAMS, _ = EMBED.init(KEY, (4,))
BN = nn.BatchNorm()
BN_PARAMS, BN_STATE = BN.init(KEY, (3,))


def case(name, thunk, error, argument, got):
  """``argument: expected ..., got <got>`` raised as exactly ``error``."""
  return pytest.param(thunk, error, f"^{re.escape(argument)}: expected .+, got "
                      f"{re.escape(got)}", id=name)


CASES = [
    # ------------------------------------------------------------ nn.conv
    case("conv-flip-truthy-string", lambda: nn.conv(X2D, K2D, flip="False"), TypeError,
         "flip", "'False'"),
    case("conv-flip-int", lambda: nn.conv(X2D, K2D, flip=1), TypeError, "flip", "1"),
    case("conv-flip-none", lambda: nn.conv(X2D, K2D, flip=None), TypeError, "flip", "None"),
    case("conv-x-integer", lambda: nn.conv(X2D.astype(np.int32), K2D), TypeError, "x",
         "dtype int32"),
    case("conv-x-bool", lambda: nn.conv(X2D > 0, K2D), TypeError, "x", "dtype bool"),
    case("conv-x-string", lambda: nn.conv("image", K2D), TypeError, "x", "str"),
    case("conv-kernel-integer", lambda: nn.conv(X2D, K2D.astype(np.int8)), TypeError,
         "kernel", "dtype int8"),
    case("conv-kernel-rank-2", lambda: nn.conv(X2D, np.ones((3, 4), np.float32)), ValueError,
         "kernel", "shape (3, 4)"),
    case("conv-kernel-rank-6", lambda: nn.conv(X2D, np.ones((1,) * 6, np.float32)),
         ValueError, "kernel", "shape (1, 1, 1, 1, 1, 1)"),
    case("conv-x-rank-3-for-2d-kernel", lambda: nn.conv(X1D, K2D), ValueError, "x",
         "shape (2, 8, 3)"),
    case("conv-x-unbatched", lambda: nn.conv(X2D[0], K2D), ValueError, "x", "shape (6, 6, 3)"),
    case("conv-x-channels", lambda: nn.conv(X2D[..., :2], K2D), ValueError, "x",
         "shape (2, 6, 6, 2)"),
    case("conv-groups-zero", lambda: nn.conv(X2D, K2D, groups=0), ValueError, "groups", "0"),
    case("conv-groups-not-dividing", lambda: nn.conv(X2D, K2D, groups=2), ValueError,
         "groups", "2"),
    case("conv-groups-float", lambda: nn.conv(X2D, K2D, groups=1.0), TypeError, "groups",
         "1.0"),
    case("conv-groups-bool", lambda: nn.conv(X2D, K2D, groups=True), TypeError, "groups",
         "True"),
    case("conv-bias-shape", lambda: nn.conv(X2D, K2D, np.ones(3, np.float32)), ValueError,
         "bias", "shape (3,)"),
    case("conv-bias-integer", lambda: nn.conv(X2D, K2D, np.ones(4, np.int32)), TypeError,
         "bias", "dtype int32"),
    case("conv-strides-zero", lambda: nn.conv(X2D, K2D, strides=0), ValueError, "strides",
         "0"),
    case("conv-strides-per-axis-zero", lambda: nn.conv(X2D, K2D, strides=(1, 0)), ValueError,
         "strides[1]", "0"),
    case("conv-strides-three-for-2d", lambda: nn.conv(X2D, K2D, strides=(1, 1, 1)),
         ValueError, "strides", "(1, 1, 1)"),
    case("conv-strides-string", lambda: nn.conv(X2D, K2D, strides="2"), TypeError, "strides",
         "'2'"),
    case("conv-strides-float", lambda: nn.conv(X2D, K2D, strides=1.5), TypeError, "strides",
         "1.5"),
    case("conv-dilation-negative", lambda: nn.conv(X2D, K2D, dilation=-1), ValueError,
         "dilation", "-1"),
    case("conv-padding-unknown", lambda: nn.conv(X2D, K2D, padding="FULL"), ValueError,
         "padding", "'FULL'"),
    case("conv-padding-negative", lambda: nn.conv(X2D, K2D, padding=-1), ValueError,
         "padding", "-1"),
    case("conv-padding-triple", lambda: nn.conv(X2D, K2D, padding=((1, 2, 3), 0)),
         ValueError, "padding[0]", "(1, 2, 3)"),
    case("conv-padding-causal-2d", lambda: nn.conv(X2D, K2D, padding="CAUSAL"), ValueError,
         "padding", '"CAUSAL" with 2 spatial dimensions'),
    case("conv-padding-float", lambda: nn.conv(X2D, K2D, padding=1.0), ValueError, "padding",
         "1.0"),
    case("conv-input-smaller-than-window", lambda: nn.conv(X2D[:, :2], K2D), ValueError, "x",
         "spatial shape (2, 6)"),
    case("conv-input-empty-spatial", lambda: nn.conv(X2D[:, :0], K2D, padding=2), ValueError,
         "x", "spatial shape (0, 6)"),
    # ------------------------------------------------------------ nn pooling
    case("max-pool-ceil-mode-truthy-string", lambda: nn.max_pool(X2D, 2, ceil_mode="no"),
         TypeError, "ceil_mode", "'no'"),
    case("max-pool-ceil-mode-int", lambda: nn.max_pool(X2D, 2, ceil_mode=0), TypeError,
         "ceil_mode", "0"),
    case("avg-pool-count-include-pad-string",
         lambda: nn.avg_pool(X2D, 2, padding=1, count_include_pad="False"), TypeError,
         "count_include_pad", "'False'"),
    case("max-pool-window-zero", lambda: nn.max_pool(X2D, 0), ValueError, "window", "0"),
    case("max-pool-window-three-for-2d", lambda: nn.max_pool(X2D, (2, 2, 2)), ValueError,
         "window", "(2, 2, 2)"),
    case("max-pool-window-string", lambda: nn.max_pool(X2D, "2"), TypeError, "window", "'2'"),
    case("max-pool-strides-zero", lambda: nn.max_pool(X2D, 2, 0), ValueError, "strides", "0"),
    case("avg-pool-dilation-zero", lambda: nn.avg_pool(X2D, 2, dilation=0), ValueError,
         "dilation", "0"),
    case("avg-pool-padding-unknown", lambda: nn.avg_pool(X2D, 2, padding="SMAE"), ValueError,
         "padding", "'SMAE'"),
    case("max-pool-x-rank-2", lambda: nn.max_pool(np.ones((2, 3), np.float32), 2), ValueError,
         "x", "shape (2, 3)"),
    case("avg-pool-x-integer", lambda: nn.avg_pool(X2D.astype(np.int32), 2), TypeError, "x",
         "dtype int32"),
    case("max-pool-window-too-big", lambda: nn.max_pool(X2D, 7), ValueError, "x",
         "spatial shape (6, 6)"),
    case("global-avg-pool-rank-2", lambda: nn.global_avg_pool(np.ones((2, 3), np.float32)),
         ValueError, "x", "shape (2, 3)"),
    case("global-max-pool-integer", lambda: nn.global_max_pool(np.ones((2, 3, 3), int)),
         TypeError, "x", "dtype int64"),
    case("adaptive-avg-pool-zero", lambda: nn.adaptive_avg_pool(X2D, 0), ValueError,
         "output_shape", "0"),
    case("adaptive-avg-pool-rank", lambda: nn.adaptive_avg_pool(X2D, (2, 2, 2)), ValueError,
         "output_shape", "(2, 2, 2)"),
    # ------------------------------------------------------------ nn.output_size
    case("output-size-n-zero", lambda: nn.output_size(0, 3, 0, 1), ValueError, "n", "0"),
    case("output-size-f-float", lambda: nn.output_size(5, 3.0, 0, 1), TypeError, "f", "3.0"),
    case("output-size-s-zero", lambda: nn.output_size(5, 3, 0, 0), ValueError, "s", "0"),
    case("output-size-d-bool", lambda: nn.output_size(5, 3, 0, 1, True), TypeError, "d",
         "True"),
    case("output-size-p-negative", lambda: nn.output_size(5, 3, -1, 1), ValueError, "p",
         "-1"),
    case("output-size-p-triple", lambda: nn.output_size(5, 3, (1, 1, 1), 1), TypeError, "p",
         "(1, 1, 1)"),
    case("output-size-window-too-big", lambda: nn.output_size(2, 5, 0, 1), ValueError, "n",
         "n + 2p = 2"),
    case("output-size-ceil-mode-string", lambda: nn.output_size(5, 2, 0, 2, ceil_mode="yes"),
         TypeError, "ceil_mode", "'yes'"),
    # ------------------------------------------------------------ nn layers: construction
    case("Conv-features-zero", lambda: nn.Conv(0, 3), ValueError, "features", "0"),
    case("Conv-features-string", lambda: nn.Conv("8", 3), TypeError, "features", "'8'"),
    case("Conv-groups-not-dividing-features", lambda: nn.Conv(3, 3, groups=2), ValueError,
         "groups", "2"),
    case("Conv-flip-string", lambda: nn.Conv(4, 3, flip="False"), TypeError, "flip",
         "'False'"),
    case("Conv-use-bias-string", lambda: nn.Conv(4, 3, use_bias="no"), TypeError, "use_bias",
         "'no'"),
    case("Conv-kernel-init-string", lambda: nn.Conv(4, 3, kernel_init="he_normal"), TypeError,
         "kernel_init", "'he_normal'"),
    case("Conv-bias-init-array", lambda: nn.Conv(4, 3, bias_init=0.0), TypeError, "bias_init",
         "0.0"),
    case("Dense-features-negative", lambda: nn.Dense(-1), ValueError, "features", "-1"),
    case("Dense-features-float", lambda: nn.Dense(4.0), TypeError, "features", "4.0"),
    case("Dense-kernel-init-string", lambda: nn.Dense(4, kernel_init="glorot"), TypeError,
         "kernel_init", "'glorot'"),
    case("Dense-bias-init-int", lambda: nn.Dense(4, bias_init=1), TypeError, "bias_init",
         "1"),
    case("Dense-use-bias-int", lambda: nn.Dense(4, use_bias=1), TypeError, "use_bias", "1"),
    case("Embedding-num-embeddings-zero", lambda: nn.Embedding(0, 3), ValueError,
         "num_embeddings", "0"),
    case("Embedding-features-string", lambda: nn.Embedding(5, "3"), TypeError, "features",
         "'3'"),
    case("Embedding-init-string", lambda: nn.Embedding(5, 3, embedding_init="normal"),
         TypeError, "embedding_init", "'normal'"),
    case("MaxPool-ceil-mode-string", lambda: nn.MaxPool(2, ceil_mode="no"), TypeError,
         "ceil_mode", "'no'"),
    case("AvgPool-count-include-pad-int", lambda: nn.AvgPool(2, count_include_pad=0),
         TypeError, "count_include_pad", "0"),
    case("BatchNorm-momentum-string", lambda: nn.BatchNorm(momentum="0.9"), TypeError,
         "momentum", "'0.9'"),
    case("BatchNorm-momentum-nan", lambda: nn.BatchNorm(momentum=NAN), ValueError, "momentum",
         "nan"),
    case("BatchNorm-momentum-above-one", lambda: nn.BatchNorm(momentum=1.5), ValueError,
         "momentum", "1.5"),
    case("BatchNorm-momentum-bool", lambda: nn.BatchNorm(momentum=True), TypeError,
         "momentum", "True"),
    case("BatchNorm-epsilon-zero", lambda: nn.BatchNorm(epsilon=0.0), ValueError, "epsilon",
         "0.0"),
    case("BatchNorm-epsilon-inf", lambda: nn.BatchNorm(epsilon=INF), ValueError, "epsilon",
         "inf"),
    case("BatchNorm-epsilon-string", lambda: nn.BatchNorm(epsilon="1e-5"), TypeError,
         "epsilon", "'1e-5'"),
    case("BatchNorm-use-scale-string", lambda: nn.BatchNorm(use_scale="False"), TypeError,
         "use_scale", "'False'"),
    case("BatchNorm-use-bias-none", lambda: nn.BatchNorm(use_bias=None), TypeError,
         "use_bias", "None"),
    case("Dropout-rate-one", lambda: nn.Dropout(1.0), ValueError, "rate", "1.0"),
    case("Dropout-rate-nan", lambda: nn.Dropout(NAN), ValueError, "rate", "nan"),
    case("Dropout-rate-string", lambda: nn.Dropout("0.5"), TypeError, "rate", "'0.5'"),
    case("DropConnect-not-a-layer", lambda: nn.DropConnect("dense", 0.5), TypeError, "layer",
         "str"),
    case("DropConnect-rate-negative", lambda: nn.DropConnect(DENSE, -0.1), ValueError, "rate",
         "-0.1"),
    case("Activation-not-callable", lambda: nn.Activation("relu"), TypeError, "fn",
         "'relu'"),
    case("serial-empty", lambda: nn.serial(), ValueError, "layers", "none"),
    case("serial-not-a-layer", lambda: nn.serial(DENSE, "relu"), TypeError, "layers[1]",
         "str"),
    case("variance-scaling-scale-string", lambda: nn.variance_scaling("2"), TypeError,
         "scale", "'2'"),
    case("variance-scaling-scale-inf", lambda: nn.variance_scaling(INF), ValueError, "scale",
         "inf"),
    case("variance-scaling-mode", lambda: nn.variance_scaling(1.0, "fan"), ValueError, "mode",
         "'fan'"),
    # ------------------------------------------------------------ nn layers: init and apply
    case("Conv-init-input-shape-string", lambda: nn.Conv(4, 3).init(KEY, "6,6,3"), TypeError,
         "input_shape", "'6,6,3'"),
    case("Conv-init-input-shape-zero", lambda: nn.Conv(4, 3).init(KEY, (6, 0, 3)), ValueError,
         "input_shape", "(6, 0, 3)"),
    case("Conv-init-kernel-size-rank", lambda: nn.Conv(4, (3, 3)).init(KEY, (8, 3)),
         ValueError, "input_shape", "(8, 3)"),
    case("Conv-init-kernel-size-zero", lambda: nn.Conv(4, 0).init(KEY, (8, 3)), ValueError,
         "kernel_size", "0"),
    case("Dense-apply-features", lambda: DENSE.apply(DENSE_PARAMS, {}, np.ones((2, 5),
                                                                             np.float32)),
         ValueError, "x", "shape (2, 5)"),
    case("Dense-apply-integer", lambda: DENSE.apply(DENSE_PARAMS, {}, np.ones((2, 3), int)),
         TypeError, "x", "dtype int64"),
    case("Dense-apply-train-string", lambda: DENSE.apply(DENSE_PARAMS, {}, np.ones((2, 3)),
                                                         train="True"),
         TypeError, "train", "'True'"),
    case("Dense-apply-key-int", lambda: DENSE.apply(DENSE_PARAMS, {}, np.ones((2, 3)), key=0),
         TypeError, "key", "int"),
    case("Embedding-apply-float-ids", lambda: EMBED.apply(EMBED_PARAMS, {}, np.ones((2, 4))),
         TypeError, "x", "dtype float64"),
    case("Embedding-apply-scalar", lambda: EMBED.apply(EMBED_PARAMS, {}, np.int32(1)),
         ValueError, "x", "shape ()"),
    case("Embedding-apply-id-too-big", lambda: EMBED.apply(EMBED_PARAMS, {},
                                                           np.array([[0, 1, 2, 5]])),
         ValueError, "x", "values in [0, 5]"),
    case("Embedding-apply-id-negative", lambda: EMBED.apply(EMBED_PARAMS, {},
                                                            np.array([[0, -1, 2, 3]])),
         ValueError, "x", "values in [-1, 3]"),
    case("BatchNorm-apply-channels", lambda: BN.apply(BN_PARAMS, BN_STATE,
                                                      np.ones((2, 4), np.float32)),
         ValueError, "x", "shape (2, 4)"),
    case("BatchNorm-apply-one-value-per-channel",
         lambda: BN.apply(BN_PARAMS, BN_STATE, np.ones((1, 3), np.float32), train=True),
         ValueError, "x", "shape (1, 3)"),
    case("BatchNorm-apply-train-int", lambda: BN.apply(BN_PARAMS, BN_STATE,
                                                       np.ones((2, 3), np.float32), train=1),
         TypeError, "train", "1"),
    case("Dense-init-key-string", lambda: nn.Dense(4).init("key", (3,)), TypeError, "key",
         "str"),
    case("Conv-init-key-int", lambda: nn.Conv(4, 3).init(0, (6, 6, 3)), TypeError, "key",
         "int"),
    case("Embedding-init-key-none", lambda: nn.Embedding(5, 3).init(None, (4,)), TypeError,
         "key", "None"),
    case("serial-init-key-float-array", lambda: nn.serial(DENSE).init(np.ones(2, np.float32),
                                                                       (3,)),
         TypeError, "key", "an array of dtype float32 and shape (2,)"),
    case("lenet5-init-key-string", lambda: models.lenet5().init("seed", (32, 32, 1)),
         TypeError, "key", "str"),
    case("Conv-param-dtype-int", lambda: nn.Conv(4, 3, param_dtype=jnp.int32), TypeError,
         "param_dtype", "int32"),
    case("Dense-param-dtype-unknown", lambda: nn.Dense(4, param_dtype="float3"), TypeError,
         "param_dtype", "'float3'"),
    case("Dense-param-dtype-complex", lambda: nn.Dense(4, param_dtype=jnp.complex64),
         TypeError, "param_dtype", "complex64"),
    case("Embedding-param-dtype-int", lambda: nn.Embedding(5, 3, param_dtype="int8"),
         TypeError, "param_dtype", "'int8'"),
    case("BatchNorm-param-dtype-none", lambda: nn.BatchNorm(param_dtype=None), TypeError,
         "param_dtype", "None"),
    case("Dense-apply-params-empty", lambda: DENSE.apply({}, {}, np.ones((2, 3), np.float32)),
         ValueError, "params", "[]"),
    case("Conv-apply-params-list", lambda: nn.Conv(4, 3).apply([K2D], {}, X2D), TypeError,
         "params", "list"),
    case("Embedding-apply-params-other-layer", lambda: EMBED.apply(
        DENSE_PARAMS, {}, np.zeros((2, 4), int)), ValueError, "params", "['bias', 'kernel']"),
    case("BatchNorm-apply-scale-shape", lambda: BN.apply(
        {"scale": np.ones(2, np.float32)}, BN_STATE, np.ones((2, 3), np.float32)), ValueError,
         "params['scale']", "shape (2,)"),
    case("BatchNorm-apply-state-missing", lambda: BN.apply(BN_PARAMS, {},
                                                           np.ones((2, 3), np.float32)),
         ValueError, "state", "[]"),
    case("Dense-apply-int-kernel", lambda: DENSE.apply(
        {"kernel": np.ones((3, 4), np.int32)}, {}, np.ones((2, 3), np.float32)), TypeError,
         "params['kernel']", "dtype int32"),
    case("Conv-apply-int-kernel", lambda: nn.Conv(4, 3).apply(
        {"kernel": K2D.astype(np.int32)}, {}, X2D), TypeError, "kernel", "dtype int32"),
    case("Embedding-apply-int-table", lambda: EMBED.apply(
        {"embedding": np.ones((5, 3), int)}, {}, np.zeros((2, 4), int)), TypeError,
         "params['embedding']", "dtype int64"),
    case("BatchNorm-apply-int-scale", lambda: BN.apply(
        {"scale": np.ones(3, np.int32)}, BN_STATE, np.ones((2, 3), np.float32)), TypeError,
         "params['scale']", "dtype int32"),
    case("BatchNorm-apply-empty-batch-train", lambda: BN.apply(
        BN_PARAMS, BN_STATE, np.ones((0, 3), np.float32), train=True), ValueError, "x",
         "shape (0, 3)"),
    case("variance-scaling-vector-shape", lambda: nn.variance_scaling()(KEY, (3,)),
         ValueError, "shape", "(3,)"),
    case("MaxPool-init-no-spatial-axis", lambda: nn.MaxPool(2).init(KEY, (3,)), ValueError,
         "input_shape", "(3,)"),
    case("AdaptiveAvgPool-init-zero", lambda: nn.AdaptiveAvgPool(0).init(KEY, (6, 6, 3)),
         ValueError, "output_shape", "0"),
    # ------------------------------------------------------------ model zoo
    case("lenet5-channels-int", lambda: models.lenet5(channels=6), TypeError, "channels",
         "6"),
    case("lenet5-channels-three", lambda: models.lenet5(channels=(6, 16, 32)), ValueError,
         "channels", "(6, 16, 32)"),
    case("lenet5-channels-zero", lambda: models.lenet5(channels=(6, 0)), ValueError,
         "channels[1]", "0"),
    case("lenet5-hidden-int", lambda: models.lenet5(hidden=120), TypeError, "hidden", "120"),
    case("lenet5-hidden-float", lambda: models.lenet5(hidden=(120, 84.0)), TypeError,
         "hidden[1]", "84.0"),
    case("lenet5-num-classes-zero", lambda: models.lenet5(num_classes=0), ValueError,
         "num_classes", "0"),
    case("lenet5-in-channels-string", lambda: models.lenet5(in_channels="1"), TypeError,
         "in_channels", "'1'"),
    case("lenet5-activation-string", lambda: models.lenet5(activation="tanh"), TypeError,
         "activation", "'tanh'"),
    case("lenet5-pool-unknown", lambda: models.lenet5(pool="min"), ValueError, "pool",
         "'min'"),
    case("alexnet-num-classes-string", lambda: models.alexnet("10"), TypeError, "num_classes",
         "'10'"),
    case("alexnet-dropout-one", lambda: models.alexnet(dropout=1.0), ValueError, "dropout",
         "1.0"),
    case("vgg16-in-channels-zero", lambda: models.vgg16(in_channels=0), ValueError,
         "in_channels", "0"),
    case("vgg16-dropout-nan", lambda: models.vgg16(dropout=NAN), ValueError, "dropout",
         "nan"),
    case("googlenet-dropout-negative", lambda: models.googlenet(dropout=-0.2), ValueError,
         "dropout", "-0.2"),
    case("googlenet-num-classes-bool", lambda: models.googlenet(num_classes=True), TypeError,
         "num_classes", "True"),
    case("inception-size-zero", lambda: models.inception(64, 96, 128, 16, 32, 0), ValueError,
         "pool_proj", "0"),
    case("inception-name-int", lambda: models.inception(1, 1, 1, 1, 1, 1, name=3), TypeError,
         "name", "3"),
    case("resnet-stage-sizes-int", lambda: models.resnet(4), TypeError, "stage_sizes", "4"),
    case("resnet-stage-sizes-empty", lambda: models.resnet(()), ValueError, "stage_sizes",
         "()"),
    case("resnet-stage-sizes-zero", lambda: models.resnet((2, 0)), ValueError,
         "stage_sizes[1]", "0"),
    case("resnet-bottleneck-string", lambda: models.resnet((1,), bottleneck="yes"), TypeError,
         "bottleneck", "'yes'"),
    case("resnet18-num-classes-zero", lambda: models.resnet18(num_classes=0), ValueError,
         "num_classes", "0"),
    case("resnet50-in-channels-float", lambda: models.resnet50(in_channels=3.0), TypeError,
         "in_channels", "3.0"),
    case("basic-block-strides-zero", lambda: models.basic_block(64, strides=0), ValueError,
         "strides", "0"),
    case("basic-block-project-string", lambda: models.basic_block(64, project="False"),
         TypeError, "project", "'False'"),
    case("bottleneck-block-expansion-zero", lambda: models.bottleneck_block(64, expansion=0),
         ValueError, "expansion", "0"),
    case("text-cnn-vocab-size-zero", lambda: models.text_cnn(0), ValueError, "vocab_size",
         "0"),
    case("text-cnn-widths-int", lambda: models.text_cnn(100, widths=3), TypeError, "widths",
         "3"),
    case("text-cnn-widths-empty", lambda: models.text_cnn(100, widths=()), ValueError,
         "widths", "()"),
    case("text-cnn-widths-zero", lambda: models.text_cnn(100, widths=(3, 0)), ValueError,
         "widths[1]", "0"),
    case("text-cnn-embed-dim-zero", lambda: models.text_cnn(100, embed_dim=0), ValueError,
         "embed_dim", "0"),
    case("text-cnn-filters-string", lambda: models.text_cnn(100, filters="100"), TypeError,
         "filters", "'100'"),
    case("text-cnn-dropout-one", lambda: models.text_cnn(100, dropout=1.0), ValueError,
         "dropout", "1.0"),
    case("text-cnn-num-classes-zero", lambda: models.text_cnn(100, num_classes=0), ValueError,
         "num_classes", "0"),
    case("lenet5-init-channels", lambda: models.lenet5().init(KEY, (32, 32, 3)), ValueError,
         "input_shape", "(32, 32, 3)"),
    case("lenet5-apply-channels", lambda: models.lenet5().apply(
        [], [], np.ones((2, 32, 32, 3), np.float32)), ValueError, "x",
         "shape (2, 32, 32, 3)"),
    # ------------------------------------------------------------ losses
    case("ce-label-minus-one", lambda: losses.softmax_cross_entropy(
        LOGITS, np.array([[0, 1, 2, 3, -1], [0] * 5])), ValueError, "labels",
         "values in [-1, 3]"),
    case("ce-label-equal-to-k", lambda: losses.softmax_cross_entropy(
        LOGITS, np.array([[0, 1, 2, 3, 4], [0] * 5])), ValueError, "labels",
         "values in [0, 4]"),
    case("ce-label-out-of-range-masked-steps-only-read", lambda: losses.softmax_cross_entropy(
        LOGITS, np.array([[9, 1, -1, -1, -1], [0] * 5]), lengths=np.array([2, 5])),
         ValueError, "labels", "values in [0, 9]"),
    case("ce-labels-float-ids", lambda: losses.softmax_cross_entropy(
        LOGITS, LABELS.astype(np.float32)), TypeError, "labels", "dtype float32, shape (2, 5)"),
    case("ce-labels-bool", lambda: losses.softmax_cross_entropy(LOGITS, LOGITS > 0),
         TypeError, "labels", "dtype bool"),
    case("ce-labels-shape", lambda: losses.softmax_cross_entropy(LOGITS, LABELS[:, :3]),
         ValueError, "labels", "shape (2, 3)"),
    case("ce-logits-integer", lambda: losses.softmax_cross_entropy(LABELS[..., None], LABELS),
         TypeError, "logits", "dtype int32"),
    case("ce-logits-scalar", lambda: losses.softmax_cross_entropy(np.float32(1.0),
                                                                  np.int32(0)),
         ValueError, "logits", "shape ()"),
    case("ce-reduction", lambda: losses.softmax_cross_entropy(LOGITS, LABELS, reduction="avg"),
         ValueError, "reduction", "'avg'"),
    case("ce-time-major-string", lambda: losses.softmax_cross_entropy(
        LOGITS, LABELS, time_major="False"), TypeError, "time_major", "'False'"),
    case("ce-mask-float", lambda: losses.softmax_cross_entropy(
        LOGITS, LABELS, mask=np.full((2, 5), 0.5)), TypeError, "mask", "dtype float64"),
    case("ce-mask-shape", lambda: losses.softmax_cross_entropy(
        LOGITS, LABELS, mask=np.ones((2, 4), bool)), ValueError, "mask", "shape (2, 4)"),
    case("ce-soft-labels-negative", lambda: losses.softmax_cross_entropy(
        LOGITS, np.full((2, 5, 4), -0.25, np.float32)), ValueError, "labels",
         "values down to -0.25"),
    case("ce-soft-labels-nan", lambda: losses.softmax_cross_entropy(
        LOGITS, np.full((2, 5, 4), NAN, np.float32)), ValueError, "labels", "NaN values"),
    case("ce-lengths-string", lambda: losses.softmax_cross_entropy(LOGITS, LABELS,
                                                                   lengths="5"),
         ValueError, "lengths", "shape ()"),
    case("se-targets-string", lambda: losses.squared_error(LOGITS, "zeros"), TypeError,
         "targets", "dtype <U5"),
    case("se-lengths-too-long", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=np.array([6, 1])), ValueError, "lengths", "values in [1, 6]"),
    case("se-lengths-float", lambda: losses.squared_error(
        LOGITS, LOGITS, lengths=np.array([1.0, 2.0])), TypeError, "lengths", "dtype float"),
    case("se-predictions-integer", lambda: losses.squared_error(LABELS, LABELS), TypeError,
         "predictions", "dtype int32"),
    case("se-targets-shape", lambda: losses.squared_error(LOGITS, LOGITS[:, :2]), ValueError,
         "targets", "shape (2, 2, 4)"),
    case("last-valid-ys-rank-1", lambda: losses.last_valid(np.ones(5, np.float32)),
         ValueError, "ys", "shape (5,)"),
    case("last-valid-time-major-string", lambda: losses.last_valid(LOGITS, time_major="no"),
         TypeError, "time_major", "'no'"),
    case("last-valid-lengths-negative", lambda: losses.last_valid(LOGITS, np.array([-1, 2])),
         ValueError, "lengths", "values in [-1, 2]"),
    case("sequence-mask-num-steps-negative", lambda: losses.sequence_mask(np.array([1]), -1),
         ValueError, "num_steps", "-1"),
    case("sequence-mask-num-steps-float", lambda: losses.sequence_mask(np.array([1]), 5.0),
         TypeError, "num_steps", "5.0"),
    case("sequence-mask-lengths-string", lambda: losses.sequence_mask("3", 5), TypeError,
         "lengths", "dtype <U1"),
    case("last-valid-lengths-string", lambda: losses.last_valid(LOGITS, "3"), ValueError,
         "lengths", "shape ()"),
    case("sequence-mask-lengths-float", lambda: losses.sequence_mask(np.array([1.0]), 5),
         TypeError, "lengths", "dtype float"),
    # ------------------------------------------------------------ initializers
    case("uniform-scale-negative", lambda: initializers.uniform(-1), ValueError, "scale",
         "-1"),
    case("uniform-scale-nan", lambda: initializers.uniform(NAN), ValueError, "scale", "nan"),
    case("uniform-scale-string", lambda: initializers.uniform("0.1"), TypeError, "scale",
         "'0.1'"),
    case("torch-default-hidden-size-zero", lambda: initializers.torch_default(0), ValueError,
         "hidden_size", "0"),
    case("torch-default-hidden-size-float", lambda: initializers.torch_default(8.0),
         TypeError, "hidden_size", "8.0"),
    case("identity-scale-inf", lambda: initializers.identity(INF), ValueError, "scale",
         "inf"),
    case("identity-shape-not-square", lambda: initializers.identity()(KEY, (2, 3)),
         ValueError, "shape", "(2, 3)"),
    case("chrono-t-max-two", lambda: initializers.chrono(2), ValueError, "t_max", "2"),
    case("chrono-t-max-inf", lambda: initializers.chrono(INF), ValueError, "t_max", "inf"),
    case("chrono-t-max-string", lambda: initializers.chrono("100"), TypeError, "t_max",
         "'100'"),
    # ------------------------------------------------------------ interop entry points
    case("from-torch-not-a-module", lambda: interop.from_torch("lstm"), TypeError, "module",
         "str"),
    case("from-flax-variables-list", lambda: interop.from_flax(None, [1, 2]), TypeError,
         "variables", "list"),
]


@pytest.mark.parametrize("thunk, error, pattern", CASES)
def test_bad_input_names_argument_and_value(thunk, error, pattern):
  with pytest.raises(error, match=pattern) as excinfo:
    thunk()
  assert type(excinfo.value) is error  # not a jax error subclass
  raising = excinfo.traceback[-1]  # raised by jaxseq's own check, not deep inside JAX
  assert str(raising.path).startswith(JAXSEQ_DIR), raising.path


def test_catalogue_size():
  assert len(CASES) >= 80


def test_errors_fire_while_tracing_under_jit():
  """Under jit the option checks still fire in Python, at trace time."""
  with pytest.raises(TypeError, match=r"^flip: expected a bool"):
    jax.jit(lambda x: nn.conv(x, K2D, flip="False"))(X2D)
  with pytest.raises(TypeError, match=r"^ceil_mode: expected a bool"):
    jax.jit(lambda x: nn.max_pool(x, 2, ceil_mode="no"))(X2D)


# ---------------------------------------------------------------- inputs that are valid


def test_embedding_takes_one_id_per_example():
  layer = nn.Embedding(7, 3)
  params, state = layer.init(KEY, ())
  ids = np.array([0, 6, 3], np.int32)
  y, _ = layer.apply(params, state, ids)
  table = np.asarray(params["embedding"])
  np.testing.assert_array_equal(np.asarray(y), table[ids])  # a direct table lookup
  y0, _ = layer.apply(params, state, jnp.zeros((2,), int))
  np.testing.assert_array_equal(np.asarray(y0), np.stack([table[0], table[0]]))
  assert layer.output_shape(()) == (3,)


def test_embedding_out_of_range_ids_under_jit_are_nan_not_another_row():
  ids = jnp.array([[0, -1, 5, 4]])
  y = jax.jit(lambda ids: EMBED.apply(EMBED_PARAMS, {}, ids)[0])(ids)
  y = np.asarray(y)
  assert np.isnan(y[0, 1]).all() and np.isnan(y[0, 2]).all()  # -1 does not wrap around
  table = np.asarray(EMBED_PARAMS["embedding"])
  np.testing.assert_array_equal(y[0, [0, 3]], table[[0, 4]])


def numpy_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  log_softmax = logits - logits.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]


def test_cross_entropy_ignores_out_of_range_labels_at_padded_steps():
  logits = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
  labels = np.array([[2, 0, -1, -1], [1, 1, 1, 7]])
  lengths = np.array([2, 3])
  got = losses.softmax_cross_entropy(logits, labels, lengths=lengths, reduction="sum")
  want = (numpy_cross_entropy(logits[0, :2], labels[0, :2]).sum()
          + numpy_cross_entropy(logits[1, :3], labels[1, :3]).sum())
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_cross_entropy_out_of_range_labels_under_jit_are_nan_not_a_class():
  logits = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
  labels = np.array([[0, -1, 3], [4, 2, 1]])
  per_step = jax.jit(lambda l, y: losses.softmax_cross_entropy(l, y, reduction="none"))(
      logits, labels)
  per_step = np.asarray(per_step)
  assert np.isnan(per_step[0, 1]) and np.isnan(per_step[1, 0])
  ok = np.array([[True, False, True], [False, True, True]])
  np.testing.assert_allclose(per_step[ok], numpy_cross_entropy(logits, np.clip(labels, 0, 3))[
      ok], rtol=1e-6)
  # The gradient stays finite: the NaN is in the loss value, not in the parameters' update.
  grad = jax.jit(jax.grad(lambda l, y: jnp.nansum(losses.softmax_cross_entropy(
      l, y, reduction="none"))))(logits, labels)
  assert np.isfinite(np.asarray(grad)).all()


def test_numpy_bools_are_bools():
  np.testing.assert_array_equal(np.asarray(nn.conv(X2D, K2D, flip=np.bool_(True))),
                                np.asarray(nn.conv(X2D, K2D, flip=True)))


@pytest.mark.parametrize("module_name, bidirectional", [("LSTM", False), ("GRU", True)])
def test_from_torch_accepts_dropout_one(module_name, bidirectional):
  """PyTorch accepts dropout=1.0: in training mode every layer after the first reads zeros
  (F.dropout with p=1); in eval mode nothing is dropped."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  module = getattr(torch.nn, module_name)(3, 4, num_layers=3, dropout=1.0,
                                          batch_first=True, bidirectional=bidirectional)
  x = torch.randn(2, 5, 3)
  layer, params = interop.from_torch(module)
  module.train()
  with torch.no_grad():
    want_train = module(x)[0].numpy()
  got_train = layer.apply(params, x.numpy(), key=KEY)[0]  # a key: PyTorch's train mode
  np.testing.assert_allclose(np.asarray(got_train), want_train, atol=1e-5)
  module.eval()
  with torch.no_grad():
    want_eval = module(x)[0].numpy()
  np.testing.assert_allclose(np.asarray(layer.apply(params, x.numpy())[0]), want_eval,
                             atol=1e-5)
  assert not np.allclose(want_train, want_eval)  # the two modes differ: dropout took effect
