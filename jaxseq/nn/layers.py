"""Network layers as ``init/apply`` pairs with shape inference (the stax pattern).

A ``Layer`` is a NamedTuple of pure functions::

    params, state = layer.init(key, input_shape)        # input_shape: ONE example, no batch
    y, state = layer.apply(params, state, x, train=False, key=None)   # x: (N, *input_shape)
    out_shape = layer.output_shape(input_shape)          # shape inference, no compute

``input_shape`` excludes the batch axis (``(32, 32, 3)`` for a batch of RGB images): shape
inference is arithmetic on it (``output_size``), so a whole model is initialised without
running it. ``apply`` takes exactly one leading batch axis.

``params`` hold what gradients update; ``state`` holds what the forward pass updates
(batch norm's running statistics). Layers without either use ``{}``. ``train`` switches
batch norm to batch statistics and, together with a ``key``, turns dropout on: without a
``key`` every layer is deterministic.

Layer factories are CamelCase as in ``jax.example_libraries.stax`` (``Conv``, ``Dense``,
``MaxPool``); layers without options are ready-made values (``Relu``, ``Flatten``). The
lowercase names of ``jaxseq.nn`` (``conv``, ``max_pool``) are the array functions below them.
``Layer`` is the one layer type of jaxseq: the sequence layers (``jaxseq.recurrent``,
``bidirectional``, ``stack``) are ``Layer`` values too and compose with these in ``serial``
(sequences are ``(N, T, *features)``, per-example shape ``(T, *features)``; ``serial``'s
``apply`` passes ``lengths`` to them). ``over_time(layer)`` applies any layer to every time
step.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import initializers
from jaxseq._layer import Layer
from jaxseq.nn import functional as F

Shape = tuple[int, ...]
Params = Any
State = Any
Initializer = Callable[..., jax.Array]

__all__ = [
    "Layer", "variance_scaling", "Conv", "Dense", "Embedding", "MaxPool", "AvgPool",
    "AdaptiveAvgPool",
    "GlobalAvgPool", "GlobalMaxPool", "Flatten", "Activation", "Relu", "Tanh", "Sigmoid",
    "Gelu", "Softmax", "LogSoftmax", "Identity", "Dropout", "DropConnect", "BatchNorm",
    "serial", "concat", "residual", "over_time",
]


class InitFn(Protocol):
  def __call__(self, key: jax.Array, input_shape: Shape) -> tuple[Params, State]:
    """Fresh ``(params, state)`` for examples shaped ``input_shape`` (no batch axis)."""


class ApplyFn(Protocol):
  def __call__(self, params: Params, state: State, x: jax.Array, *, train: bool = False,
               key: jax.Array | None = None) -> tuple[jax.Array, State]:
    """Runs the layer on a batch ``x`` of shape ``(N, *input_shape)``; returns ``(y, state)``."""


# ----------------------------------------------------------------------------- checks


def input_shape_of(argument: str, shape: Any) -> Shape:
  """Validates a per-example shape: a tuple of positive ints. A leading batch axis given
  as ``None`` or ``-1`` (Keras/TensorFlow style) is dropped."""
  if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
    shape = (shape,)
  if isinstance(shape, (tuple, list)) and len(shape) > 1 and (
      shape[0] is None or (isinstance(shape[0], int) and shape[0] == -1)):
    shape = tuple(shape[1:])
  if not isinstance(shape, (tuple, list)) or not all(
      isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape):
    _checks.fail(argument, "a tuple of positive ints, the shape of one example without the "
                 "batch axis", repr(shape), TypeError if not isinstance(shape, (tuple, list))
                 else ValueError)
  return tuple(int(d) for d in shape)


def _check_apply(train: Any, key: Any) -> None:
  if not isinstance(train, bool):
    _checks.fail("train", "a bool", repr(train), TypeError)
  _checks.prng_key(key)


def _batched(argument: str, x: Any, rank: int | None = None, what: str = "") -> jax.Array:
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim < 2 or (rank is not None and x.ndim != rank):
    _checks.fail(argument, f"an array of rank {rank or '>= 2'} (N, {what or '...'})",
                 f"shape {tuple(x.shape)}")
  return x


def _stateless(name: str, kind: str, fn: Callable[..., jax.Array],
               output_shape: Callable[[Shape], Shape], **spec) -> Layer:
  """A layer without params or state: ``y = fn(x)``."""

  def init(key, input_shape):
    del key
    output_shape(input_shape_of("input_shape", input_shape))
    return {}, {}

  def apply(params, state, x, *, train=False, key=None):
    del params
    _check_apply(train, key)
    return fn(_batched("x", x)), state

  return Layer(init, apply, output_shape, dict(kind=kind, name=name, **spec))


def _dims(value: int | Sequence[int]) -> str:
  return "x".join(str(v) for v in ((value,) if isinstance(value, int) else value))


def _window_label(strides, padding) -> str:
  """The lectures' notation: ``, s=2, p=1`` (defaults left out)."""
  label = "" if strides in (None, 1) else f", s={_dims(strides)}"
  if isinstance(padding, str):
    return label + ("" if padding.upper() == "VALID" else f", {padding.lower()}")
  return label + ("" if padding == 0 else
                  f", p={padding if isinstance(padding, int) else tuple(padding)}")


# ----------------------------------------------------------------------------- init


def variance_scaling(scale: float = 1.0, mode: str = "fan_in") -> Initializer:
  r"""Truncated normal kernels with variance ``scale / fan`` (He et al. 2015; LeCun et al.
  1998): the distribution of ``jax.nn.initializers.variance_scaling(scale, mode,
  "truncated_normal")`` for kernels ``(*window, in, out)``, where
  ``fan_in = prod(window) * in`` and ``fan_out = prod(window) * out``.

  ``scale=1`` is LeCun normal (Flax's default), ``scale=2`` He normal (ReLU networks).
  The samples are drawn as one flat vector and reshaped: XLA:CPU compiles the random bits
  of rank-3+ shapes slowly (seconds per conv kernel), flat ones quickly.
  """
  fans = ("fan_in", "fan_out", "fan_avg")
  _checks.choice("mode", mode, fans)
  scale = _checks.positive_float("scale", scale)

  def init(key, shape, dtype=jnp.float32):
    if len(shape) < 2:
      _checks.fail("shape", "a kernel shape of rank >= 2, (*window, in, out), for "
                   "variance_scaling", tuple(shape))
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    fan = dict(zip(fans, (fan_in, fan_out, (fan_in + fan_out) / 2)))[mode]
    # 0.8796...: the standard deviation of a unit normal truncated to [-2, 2].
    std = math.sqrt(scale / fan) / 0.87962566103423978
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (flat * std).astype(dtype).reshape(shape)
  return init


# ----------------------------------------------------------------------------- layers


def Conv(features: int, kernel_size: int | Sequence[int], *,
         strides: int | Sequence[int] = 1, padding: F.Padding = "VALID",
         dilation: int | Sequence[int] = 1, groups: int = 1, use_bias: bool = True,
         flip: bool = False, kernel_init: Initializer | None = None,
         bias_init: Initializer | None = None, param_dtype=jnp.float32,
         name: str | None = None) -> Layer:
  """Convolution layer over ``jaxseq.nn.conv`` (1-D, 2-D or 3-D by the input's rank).

  Args:
    features: number of output channels (filters).
    kernel_size: an int (the same along every spatial axis of the input) or one per axis.
    strides, padding, dilation, groups, flip: as in ``jaxseq.nn.conv``.
    use_bias: add a bias per feature.
    kernel_init: ``init(key, shape, dtype)``; default ``variance_scaling(1.0)`` (LeCun
      normal, as Flax); fan-in is ``prod(window) * C / groups``.
    bias_init: default zeros.
    name: display name for ``summary``.

  Params: ``kernel (*window, C // groups, features)`` (HWIO), ``bias (features,)``.
  Input shape ``(*spatial, C)``; output ``(*out_spatial, features)``.
  """
  features = _checks.positive_int("features", features)
  groups = _checks.positive_int("groups", groups)
  use_bias = _checks.boolean("use_bias", use_bias)
  flip = _checks.boolean("flip", flip)
  kernel_init = _checks.initializer("kernel_init", kernel_init) or variance_scaling(1.0)
  bias_init = _checks.initializer("bias_init", bias_init) or initializers.zeros
  _checks.float_dtype("param_dtype", param_dtype)
  if features % groups:
    _checks.fail("groups", f"a positive int dividing features ({features})", repr(groups))

  def window(input_shape: Shape) -> tuple[int, ...]:
    k = len(input_shape) - 1
    if k < 1:
      _checks.fail("input_shape", "(*spatial, channels) with 1 to 3 spatial axes",
                   repr(input_shape))
    if not isinstance(kernel_size, int) and len(kernel_size) != k:
      _checks.fail("input_shape", f"rank {len(kernel_size) + 1} (*spatial, channels) for "
                   f"kernel_size {tuple(kernel_size)}", repr(input_shape))
    return F._per_dim("kernel_size", kernel_size, k)

  def output_shape(input_shape: Shape) -> Shape:
    input_shape = input_shape_of("input_shape", input_shape)
    size = window(input_shape)
    k = len(size)
    if input_shape[-1] % groups:
      _checks.fail("groups", f"a positive int dividing the input channels "
                   f"({input_shape[-1]})", repr(groups))
    spatial, _ = F.window_output_shape(input_shape[:-1], size,
                                       F._per_dim("strides", strides, k), padding,
                                       F._per_dim("dilation", dilation, k),
                                       argument="input_shape")
    return spatial + (features,)

  def init(key, input_shape):
    _checks.init_key(key)
    input_shape = input_shape_of("input_shape", input_shape)
    output_shape(input_shape)
    k_kernel, k_bias = jax.random.split(key)
    shape = window(input_shape) + (input_shape[-1] // groups, features)
    params = {"kernel": kernel_init(k_kernel, shape, param_dtype)}
    if use_bias:
      params["bias"] = bias_init(k_bias, (features,), param_dtype)
    return params, {}

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    _checks.param_dict(params, ("kernel",), label)
    y = F.conv(x, params["kernel"], params.get("bias"), strides=strides, padding=padding,
               dilation=dilation, groups=groups, flip=flip)
    return y, state

  label = f"Conv {features}, f={_dims(kernel_size)}" + _window_label(strides, padding)
  spec = dict(kind="conv", name=name or label, features=features, kernel_size=kernel_size,
              strides=strides, padding=padding, dilation=dilation, groups=groups,
              use_bias=use_bias, flip=flip)
  return Layer(init, apply, output_shape, spec)


def Dense(features: int, *, use_bias: bool = True, kernel_init: Initializer | None = None,
          bias_init: Initializer | None = None, param_dtype=jnp.float32,
          name: str | None = None) -> Layer:
  """Fully connected layer on the last axis: ``y = x W + b``.

  Params: ``kernel (in, features)``, ``bias (features,)``; defaults
  ``variance_scaling(1.0)`` (LeCun normal) and zeros.
  """
  features = _checks.positive_int("features", features)
  use_bias = _checks.boolean("use_bias", use_bias)
  kernel_init = _checks.initializer("kernel_init", kernel_init) or variance_scaling(1.0)
  bias_init = _checks.initializer("bias_init", bias_init) or initializers.zeros
  _checks.float_dtype("param_dtype", param_dtype)

  def output_shape(input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    return input_shape[:-1] + (features,)

  def init(key, input_shape):
    _checks.init_key(key)
    input_shape = input_shape_of("input_shape", input_shape)
    k_kernel, k_bias = jax.random.split(key)
    params = {"kernel": kernel_init(k_kernel, (input_shape[-1], features), param_dtype)}
    if use_bias:
      params["bias"] = bias_init(k_bias, (features,), param_dtype)
    return params, {}

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    _checks.param_dict(params, ("kernel",), f"Dense {features}")
    x = _checks.float_array("x", x)
    kernel = _checks.float_array("params['kernel']", params["kernel"])
    if x.ndim < 2 or x.shape[-1] != kernel.shape[0]:
      _checks.fail("x", f"an array (N, ..., {kernel.shape[0]}) (the input size of the "
                   "kernel)", f"shape {tuple(x.shape)}")
    y = x @ kernel
    if "bias" in params:
      y = y + params["bias"]
    return y, state

  spec = dict(kind="dense", name=name or f"Dense {features}", features=features,
              use_bias=use_bias)
  return Layer(init, apply, output_shape, spec)


def Embedding(num_embeddings: int, features: int, *,
              embedding_init: Initializer | None = None, param_dtype=jnp.float32,
              name: str | None = None) -> Layer:
  """Lookup table: integer ids ``(N, *shape)`` to vectors ``(N, *shape, features)``.

  ``shape`` may be ``()``: one id per example, ``init(key, ())`` and ids ``(N,)``. Ids must
  lie in ``[0, num_embeddings)``: concrete ids outside raise ``ValueError``; under ``jit``
  their vectors are NaN (never another row: a negative id does not wrap around).

  Params: ``embedding (num_embeddings, features)``, default N(0, 1) entries.
  """
  num_embeddings = _checks.positive_int("num_embeddings", num_embeddings)
  features = _checks.positive_int("features", features)
  embedding_init = (_checks.initializer("embedding_init", embedding_init)
                    or initializers.normal(1.0))
  _checks.float_dtype("param_dtype", param_dtype)

  def output_shape(input_shape):
    return input_shape_of("input_shape", input_shape) + (features,)

  def init(key, input_shape):
    _checks.init_key(key)
    output_shape(input_shape)
    return {"embedding": embedding_init(key, (num_embeddings, features), param_dtype)}, {}

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    if not hasattr(x, "shape"):
      x = np.asarray(x)
    if x.ndim < 1:
      _checks.fail("x", "an array of rank >= 1 (N, *shape) of token ids",
                   f"shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      _checks.fail("x", "an integer array of token ids", f"dtype {x.dtype}", TypeError)
    _checks.param_dict(params, ("embedding",), f"Embedding {num_embeddings}x{features}")
    table = _checks.float_array("params['embedding']", params["embedding"])
    rows = table.shape[0]
    if not isinstance(x, jax.core.Tracer) and x.size:
      low, high = np.min(x), np.max(x)
      if low < 0 or high >= rows:
        _checks.fail("x", f"token ids in [0, {rows}) (the rows of the embedding table)",
                     f"values in [{low}, {high}]")
    ids = jnp.where(x < 0, rows, x)  # out of range: NaN rows (mode="fill"), no wrap-around
    return jnp.take(table, ids, axis=0, mode="fill"), state

  spec = dict(kind="embedding", name=name or f"Embedding {num_embeddings}x{features}",
              num_embeddings=num_embeddings, features=features)
  return Layer(init, apply, output_shape, spec)


def _pool_layer(kind: str, label: str, fn, window, strides, padding, name, *,
                dilation=1, ceil_mode=False, **fn_options) -> Layer:
  def output_shape(input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    k = len(input_shape) - 1
    if k < 1:
      _checks.fail("input_shape", "(*spatial, channels) with at least one spatial axis",
                   repr(input_shape))
    size = F._per_dim("window", window, k)
    step = size if strides is None else F._per_dim("strides", strides, k)
    spatial, _ = F.window_output_shape(input_shape[:-1], size, step, padding,
                                       F._per_dim("dilation", dilation, k),
                                       ceil_mode=ceil_mode, argument="input_shape")
    return spatial + input_shape[-1:]

  if ceil_mode:  # max pooling only
    fn_options = dict(fn_options, ceil_mode=True)
  call = lambda x: fn(x, window, strides, padding, dilation=dilation, **fn_options)
  return _stateless(name or f"{label} f={_dims(window)}" + _window_label(strides, padding),
                    kind, call, output_shape,
                    window=window, strides=strides, padding=padding, dilation=dilation,
                    **{"ceil_mode": False, **fn_options})


def MaxPool(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
            padding: F.Padding = "VALID", *, dilation: int | Sequence[int] = 1,
            ceil_mode: bool = False, name: str | None = None) -> Layer:
  """Max pooling layer over ``jaxseq.nn.max_pool`` (strides default to ``window``)."""
  ceil_mode = _checks.boolean("ceil_mode", ceil_mode)
  return _pool_layer("max_pool", "MaxPool", F.max_pool, window, strides, padding, name,
                     dilation=dilation, ceil_mode=ceil_mode)


def AvgPool(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
            padding: F.Padding = "VALID", *, dilation: int | Sequence[int] = 1,
            count_include_pad: bool = True, name: str | None = None) -> Layer:
  """Average pooling layer over ``jaxseq.nn.avg_pool`` (strides default to ``window``)."""
  count_include_pad = _checks.boolean("count_include_pad", count_include_pad)
  return _pool_layer("avg_pool", "AvgPool", F.avg_pool, window, strides, padding, name,
                     dilation=dilation, count_include_pad=count_include_pad)


def AdaptiveAvgPool(output_shape: int | Sequence[int], *, name: str | None = None) -> Layer:
  """Average pooling to a fixed spatial shape (``jaxseq.nn.adaptive_avg_pool``)."""

  def shape_fn(input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    if len(input_shape) < 2:
      _checks.fail("input_shape", "(*spatial, channels)", repr(input_shape))
    return F._per_dim("output_shape", output_shape, len(input_shape) - 1) + input_shape[-1:]

  return _stateless(name or f"AdaptiveAvgPool {_dims(output_shape)}", "adaptive_avg_pool",
                    lambda x: F.adaptive_avg_pool(x, output_shape), shape_fn,
                    target=output_shape)


def _global_shape(input_shape):
  input_shape = input_shape_of("input_shape", input_shape)
  if len(input_shape) < 2:
    _checks.fail("input_shape", "(*spatial, channels)", repr(input_shape))
  return input_shape[-1:]


GlobalAvgPool = _stateless("GlobalAvgPool", "global_avg_pool", F.global_avg_pool,
                           _global_shape)
"""Mean over all spatial axes: ``(*spatial, C) -> (C,)``."""
GlobalMaxPool = _stateless("GlobalMaxPool", "global_max_pool", F.global_max_pool,
                           _global_shape)
"""Max over all spatial axes: ``(*spatial, C) -> (C,)`` (max-over-time in 1-D)."""
Flatten = _stateless("Flatten", "reshape", lambda x: jnp.reshape(x, (x.shape[0], -1)),
                     lambda s: (math.prod(input_shape_of("input_shape", s)),))
"""Flattens each example: ``(*shape) -> (prod(shape),)``, row-major (channels fastest)."""


def Activation(fn: Callable[[jax.Array], jax.Array], name: str | None = None) -> Layer:
  """An elementwise (shape-preserving) function as a layer."""
  if not callable(fn):
    _checks.fail("fn", "a callable", repr(fn), TypeError)
  return _stateless(name or getattr(fn, "__name__", "Activation"), "elementwise", fn,
                    lambda s: input_shape_of("input_shape", s))


Relu = Activation(jax.nn.relu, "ReLU")
Tanh = Activation(jnp.tanh, "Tanh")
Sigmoid = Activation(jax.nn.sigmoid, "Sigmoid")
Gelu = Activation(jax.nn.gelu, "GELU")
Softmax = Activation(jax.nn.softmax, "Softmax")
LogSoftmax = Activation(jax.nn.log_softmax, "LogSoftmax")
Identity = Activation(lambda x: x, "Identity")


def Dropout(rate: float, *, name: str | None = None) -> Layer:
  r"""Inverted dropout (Srivastava et al. 2014): ``y = x \odot m / (1 - rate)``,
  ``m ~ Bernoulli(1 - rate)`` elementwise.

  Active only when ``apply`` gets ``train=True`` and a ``key``; otherwise the identity, so
  evaluation needs no rescaling.
  """
  rate = _checks.probability("rate", rate)

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    x = _checks.float_array("x", x)
    if not (train and key is not None and rate):
      return x, state
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype), state

  layer = _stateless(name or f"Dropout {rate:g}", "dropout", lambda x: x,
                     lambda s: input_shape_of("input_shape", s), rate=rate)
  return layer._replace(apply=apply)


def DropConnect(layer: Layer, rate: float, *, name: str | None = None) -> Layer:
  r"""DropConnect (Wan et al. 2013): drops the *weights* of ``layer`` instead of its
  outputs. While training, ``W' = W \odot M / (1 - rate)``, ``M ~ Bernoulli(1 - rate)``,
  one mask per call shared by the batch; at evaluation ``W`` is used as is (the mean
  network, matching the inverted scaling).

  Args:
    layer: a layer whose params have a ``kernel`` entry (``Dense``, ``Conv``); only the
      kernel is dropped, not the bias.
    rate: drop probability in ``[0, 1)``.

  Active only when ``apply`` gets ``train=True`` and a ``key``. Params and state are
  ``layer``'s.
  """
  if not isinstance(layer, Layer):
    _checks.fail("layer", "a jaxseq.nn Layer", type(layer).__name__, TypeError)
  rate = _checks.probability("rate", rate)

  def init(key, input_shape):
    params, state = layer.init(key, input_shape)
    if not isinstance(params, Mapping) or "kernel" not in params:
      _checks.fail("layer", "a layer whose params have a 'kernel' entry (Dense, Conv)",
                   f"params {jax.tree.map(jnp.shape, params)}")
    return params, state

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    if train and key is not None and rate:
      kernel = params["kernel"]
      keep = jax.random.bernoulli(key, 1.0 - rate, kernel.shape)
      params = {**params, "kernel": jnp.where(keep, kernel / (1.0 - rate), 0).astype(
          kernel.dtype)}
    return layer.apply(params, state, x, train=train)

  label = f"DropConnect({layer.spec['name']}, {rate:g})" if layer.spec else "DropConnect"
  spec = dict(kind="drop_connect", name=name or label, rate=rate, layer=layer)
  return Layer(init, apply, layer.output_shape, spec)


def BatchNorm(*, momentum: float = 0.9, epsilon: float = 1e-5, use_scale: bool = True,
              use_bias: bool = True, param_dtype=jnp.float32, name: str | None = None
              ) -> Layer:
  r"""Batch normalisation (Ioffe & Szegedy 2015) over the last (channel) axis::

      y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta

  With ``train=True``, ``\mu, \sigma^2`` are the batch's mean and biased variance over
  every axis but the channel axis (batch and spatial), and the running statistics move::

      mean <- momentum * mean + (1 - momentum) * \mu
      var  <- momentum * var  + (1 - momentum) * \sigma^2 m / (m - 1)

  (``m`` values per channel: the unbiased variance, as PyTorch; PyTorch's ``momentum`` is
  ``1 - momentum`` here, as in Keras and Flax). With ``train=False`` the running statistics
  normalise and ``state`` is returned unchanged.

  Params: ``scale (C,)`` (``\gamma``, ones), ``bias (C,)`` (``\beta``, zeros).
  State: ``mean (C,)`` (zeros), ``var (C,)`` (ones).
  """
  momentum = _checks.number("momentum", momentum, "a float in [0, 1]",
                            lambda v: 0.0 <= v <= 1.0)
  epsilon = _checks.positive_float("epsilon", epsilon)
  use_scale = _checks.boolean("use_scale", use_scale)
  use_bias = _checks.boolean("use_bias", use_bias)
  _checks.float_dtype("param_dtype", param_dtype)

  def init(key, input_shape):
    del key
    channels = input_shape_of("input_shape", input_shape)[-1]
    params = {}
    if use_scale:
      params["scale"] = jnp.ones((channels,), param_dtype)
    if use_bias:
      params["bias"] = jnp.zeros((channels,), param_dtype)
    state = {"mean": jnp.zeros((channels,), jnp.float32),
             "var": jnp.ones((channels,), jnp.float32)}
    return params, state

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    x = _batched("x", _checks.float_array("x", x))
    if not hasattr(state, "keys") or "mean" not in state or "var" not in state:
      _checks.fail("state", "BatchNorm's state, a dict with keys ['mean', 'var']",
                   sorted(state.keys()) if hasattr(state, "keys") else type(state).__name__)
    if x.shape[-1] != state["mean"].shape[0]:
      _checks.fail("x", f"{state['mean'].shape[0]} channels on the last axis",
                   f"shape {tuple(x.shape)}")
    _checks.param_dict(params, (), "BatchNorm")
    for entry in ("scale", "bias"):
      if entry in params:
        _checks.float_array(f"params['{entry}']", params[entry])
      if entry in params and tuple(jnp.shape(params[entry])) != (x.shape[-1],):
        _checks.fail(f"params['{entry}']", f"shape ({x.shape[-1]},) (the channels of x and "
                     "of the running statistics)", f"shape {tuple(jnp.shape(params[entry]))}")
    axes = tuple(range(x.ndim - 1))
    if train:
      m = math.prod(x.shape[:-1])
      if m < 2:
        _checks.fail("x", "at least 2 values per channel for batch statistics (train=True)",
                     f"shape {tuple(x.shape)}")
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axis=axes)
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
               "var": momentum * state["var"] + (1 - momentum) * var * (m / (m - 1))}
    else:
      mean, var = state["mean"], state["var"]
    y = (x - mean) * jax.lax.rsqrt(var + epsilon)
    if "scale" in params:
      y = y * params["scale"]
    if "bias" in params:
      y = y + params["bias"]
    return y.astype(x.dtype), state

  spec = dict(kind="batch_norm", name=name or "BatchNorm", momentum=momentum,
              epsilon=epsilon)
  return Layer(init, apply, lambda s: input_shape_of("input_shape", s), spec)


# ----------------------------------------------------------------------------- combinators


def _layers_arg(argument: str, layers: Sequence[Layer]) -> tuple[Layer, ...]:
  if not layers:
    _checks.fail(argument, "at least one layer", "none")
  from jaxseq import layers as sequence_layers  # the sequence combinators sit below nn
  from jaxseq.cells.base import Cell
  layers = [sequence_layers.recurrent(layer) if isinstance(layer, Cell) else layer
            for layer in layers]
  for i, layer in enumerate(layers):
    if not isinstance(layer, Layer):
      _checks.fail(f"{argument}[{i}]", "a jaxseq Layer or Cell", type(layer).__name__,
                   TypeError)
  return tuple(layers)


def _sequence_arg(argument: str, value: Any, n: int) -> list:
  if not isinstance(value, (list, tuple)) or len(value) != n:
    got = (f"{type(value).__name__} of length {len(value)}"
           if isinstance(value, (list, tuple)) else type(value).__name__)
    _checks.fail(argument, f"a list with one entry per layer ({n})", got)
  return list(value)


def _keys(key, n):
  return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer, name: str | None = None) -> Layer:
  """Composes layers in order: each one's output is the next one's input.

  Any ``Layer`` goes: network layers (``Conv``, ``Dense``, ``BatchNorm``, ...), sequence
  layers (``jaxseq.recurrent``, ``bidirectional``, ``stack``; cells are wrapped with
  ``recurrent``) and ``over_time`` wrappers, so a CNN front end, a recurrent core and a
  readout make one model::

      model = nn.serial(nn.Embedding(V, 32), nn.Conv(64, 3, padding="SAME"), nn.Relu,
                        jaxseq.bidirectional(jaxseq.gru(32)), nn.Dense(2))
      params, state = model.init(key, (T,))
      logits, state = model.apply(params, state, ids, lengths=lengths)

  ``apply(params, state, x, *, train=False, key=None, lengths=None)``: ``lengths`` reach the
  sequence layers; dropout (network and recurrent alike) is on with ``train=True`` and a
  ``key``. Params and state are lists with one entry per layer.
  """
  layers = _layers_arg("layers", layers)

  def output_shape(input_shape):
    shape = input_shape_of("input_shape", input_shape)
    for layer in layers:
      shape = layer.output_shape(shape)
    return shape

  # One compiled program for the whole model: eager initialisers compile op by op, per
  # shape (truncated normals take seconds on CPU).
  @functools.partial(jax.jit, static_argnums=1)
  def init_compiled(key, shape):
    params, state = [], []
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
      p, s = layer.net_init(k, shape)
      params.append(p)
      state.append(s)
      shape = layer.output_shape(shape)
    return params, state

  def init(key, input_shape):
    _checks.init_key(key)
    return init_compiled(key, input_shape_of("input_shape", input_shape))

  def apply(params, state, x, *, train=False, key=None, lengths=None):
    _check_apply(train, key)
    params = _sequence_arg("params", params, len(layers))
    state = _sequence_arg("state", state, len(layers))
    new_state = []
    for layer, p, s, k in zip(layers, params, state, _keys(key, len(layers))):
      x, s = layer.net_apply(p, s, x, train=train, key=k, lengths=lengths)
      new_state.append(s)
    return x, new_state

  return Layer(init, apply, output_shape,
               dict(kind="serial", name=name or "serial", layers=layers))


def over_time(layer: Layer, *, name: str | None = None) -> Layer:
  """Applies ``layer`` to every time step (Keras's ``TimeDistributed``): inputs
  ``(N, T, *shape)`` run as one batch of ``N * T`` examples ``shape`` (a per-frame CNN in a
  CRNN, a readout on every step). Params and state are ``layer``'s.
  """
  layer = _layers_arg("layer", (layer,))[0]

  def output_shape(input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    if len(input_shape) < 2:
      _checks.fail("input_shape", "(T, *step_shape): one sequence without the batch axis",
                   repr(input_shape))
    return input_shape[:1] + tuple(layer.output_shape(input_shape[1:]))

  def init(key, input_shape):
    input_shape = input_shape_of("input_shape", input_shape)
    output_shape(input_shape)
    return layer.net_init(key, input_shape[1:])

  def apply(params, state, x, *, train=False, key=None):
    _check_apply(train, key)
    x = jnp.asarray(x) if not hasattr(x, "shape") else x
    if x.ndim < 3:
      _checks.fail("x", "an array (N, T, *step_shape)", f"shape {tuple(x.shape)}")
    n, t = x.shape[:2]
    y, state = layer.net_apply(params, state, x.reshape((n * t,) + x.shape[2:]),
                               train=train, key=key)
    return y.reshape((n, t) + y.shape[1:]), state

  return Layer(init, apply, output_shape,
               dict(kind="over_time", name=name or "over_time", layers=(layer,)))


def concat(*branches: Layer, name: str | None = None) -> Layer:
  """Runs branches on the same input and concatenates their outputs on the channel (last)
  axis (an Inception module; Kim 2014's parallel filter widths).

  Params and state are lists with one entry per branch.
  """
  branches = _layers_arg("branches", branches)

  def output_shape(input_shape):
    shapes = [b.output_shape(input_shape) for b in branches]
    if len({s[:-1] for s in shapes}) != 1:
      _checks.fail("branches", "outputs that agree on all but the last axis",
                   f"output shapes {shapes}")
    return shapes[0][:-1] + (sum(s[-1] for s in shapes),)

  def init(key, input_shape):
    _checks.init_key(key)
    output_shape(input_shape_of("input_shape", input_shape))
    pairs = [b.net_init(k, input_shape) for b, k in
             zip(branches, jax.random.split(key, len(branches)))]
    return [p for p, _ in pairs], [s for _, s in pairs]

  def apply(params, state, x, *, train=False, key=None, lengths=None):
    _check_apply(train, key)
    params = _sequence_arg("params", params, len(branches))
    state = _sequence_arg("state", state, len(branches))
    outs = [b.net_apply(p, s, x, train=train, key=k, lengths=lengths) for b, p, s, k in
            zip(branches, params, state, _keys(key, len(branches)))]
    return jnp.concatenate([y for y, _ in outs], axis=-1), [s for _, s in outs]

  return Layer(init, apply, output_shape,
               dict(kind="concat", name=name or "concat", layers=branches))


def residual(body: Layer, shortcut: Layer | None = None, *, name: str | None = None
             ) -> Layer:
  """A residual connection (He et al. 2016): ``y = body(x) + shortcut(x)``.

  ``shortcut=None`` is the identity. Params and state are
  ``{"body": ..., "shortcut": ...}`` (``shortcut`` entries ``{}`` for the identity).
  """
  body = _layers_arg("body", (body,))[0]
  if shortcut is not None:
    shortcut = _layers_arg("shortcut", (shortcut,))[0]
  skip = shortcut or Identity

  def output_shape(input_shape):
    a, b = body.output_shape(input_shape), skip.output_shape(input_shape)
    if a != b:
      _checks.fail("shortcut", f"an output shape equal to the body's {a} (pass a projection "
                   "shortcut when the body changes the shape)", f"output shape {b}")
    return a

  def init(key, input_shape):
    _checks.init_key(key)
    output_shape(input_shape_of("input_shape", input_shape))
    k_body, k_skip = jax.random.split(key)
    pb, sb = body.net_init(k_body, input_shape)
    ps, ss = skip.net_init(k_skip, input_shape)
    return {"body": pb, "shortcut": ps}, {"body": sb, "shortcut": ss}

  def apply(params, state, x, *, train=False, key=None, lengths=None):
    _check_apply(train, key)
    k_body, k_skip = _keys(key, 2)
    y, sb = body.net_apply(params["body"], state["body"], x, train=train, key=k_body,
                           lengths=lengths)
    z, ss = skip.net_apply(params["shortcut"], state["shortcut"], x, train=train, key=k_skip,
                           lengths=lengths)
    return y + z, {"body": sb, "shortcut": ss}

  return Layer(init, apply, output_shape,
               dict(kind="residual", name=name or "residual",
                    layers=(body,) if shortcut is None else (body, shortcut)))
