"""Convolutional recurrent cells: ConvLSTM (Shi et al. 2015) and ConvGRU (Ballas et al. 2016).

The dense cells' matrix products become convolutions over the spatial axes, so inputs,
states and outputs are feature maps ``(*batch, *spatial, channels)`` (channels last, as
Flax and ``jax.lax`` with ``"NHWC"``). Kernels are ``(*kernel_size, in, out)`` (HWIO), gate
blocks concatenated along ``out`` as in the dense cells. The length of ``kernel_size`` gives
the number of spatial axes (1-D sequences of signals, 2-D video frames, 3-D volumes).

Spatial shape. A ``Cell``'s ``init`` only sees the number of input channels and
``initial_carry`` only the batch axes, yet the state is a feature map ``(*batch, *spatial,
F)``. The frame size is therefore a factory argument, ``spatial_shape``: it fixes the shape
of the zero carry and of Shi et al.'s peephole weights, which are Hadamard products with
the cell state and so have one weight per position and channel. A cell built without
``spatial_shape`` has no peepholes and its ``step`` takes frames of any size (convolutions
do not care) from a carry you build, but it has no zero carry, which ``unroll`` needs (to
start from or to check a given carry against).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq import _checks
from jaxseq import initializers
from jaxseq.cells.base import Cell, Initializer, LSTMState, cast, common_options
from jaxseq.cells.gru import gru_update

Activation = Callable[[jax.Array], jax.Array]
PADDINGS = ("SAME", "CIRCULAR")


def fan_in_uniform() -> Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = prod(kernel_size) * in``: PyTorch's
  ``nn.Conv`` default for a ``(*kernel_size, in, out)`` kernel (He et al. 2015's
  ``kaiming_uniform(a=sqrt(5))``)."""
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME") -> jax.Array:
  """Stride-1 cross-correlation that keeps the spatial size.

  Args:
    x: ``(*batch, *spatial, in)``, any number of batch axes (none included).
    kernel: ``(*kernel_size, in, out)``.
    padding: ``"SAME"`` (zeros) or ``"CIRCULAR"`` (periodic boundaries); both pad
      ``((k - 1) // 2, k // 2)`` on each spatial axis, as ``lax`` and Flax do.

  Returns:
    ``(*batch, *spatial, out)``.
  """
  nd = kernel.ndim - 2
  dtype = jnp.result_type(x, kernel)   # lax.conv wants one dtype; promote as ``@`` does
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  batch_shape = x.shape[:x.ndim - nd - 1]
  x = x.reshape((math.prod(batch_shape),) + x.shape[x.ndim - nd - 1:])
  pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in kernel.shape[:nd]] + [(0, 0)]
  x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "constant")
  use_patches = PATCH_KERNEL_GRAD
  if use_patches is None:
    use_patches = jax.default_backend() == "cpu"
  y = _valid_conv_patch_grad(x, kernel) if use_patches else _valid_conv(x, kernel)
  return y.reshape(batch_shape + y.shape[1:])


# Whether the kernel gradient of the cells' convolutions is computed as a matmul of
# im2col patches (``None``: on CPU only). XLA:CPU runs the kernel-gradient convolution
# 10-20x slower inside a while loop (``lax.scan``, so every backward pass through time)
# than outside one; the same gradient as a matmul is fast there. GPUs/TPUs keep lax's
# own gradient. Values are lax's convolution either way.
PATCH_KERNEL_GRAD: bool | None = None


def _valid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``lax``'s unpadded convolution of ``x (N, *spatial, in)`` with a HWIO kernel."""
  nd = kernel.ndim - 2
  # (batch, channel, *spatial) positions of x and out; (out, in, *spatial) of the kernel.
  lhs = (0, nd + 1) + tuple(range(1, nd + 1))
  rhs = (nd + 1, nd) + tuple(range(nd))
  numbers = lax.ConvDimensionNumbers(lhs, rhs, lhs)
  return lax.conv_general_dilated(x, kernel, (1,) * nd, "VALID", dimension_numbers=numbers)


def _valid_conv_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``_valid_conv`` as one matmul: im2col patches (shifted windows) times the kernel."""
  nd = kernel.ndim - 2
  size = kernel.shape[:nd]
  out = tuple(s - k + 1 for s, k in zip(x.shape[1:1 + nd], size))
  windows = [x[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, out))]
             for offset in itertools.product(*(range(k) for k in size))]
  return jnp.concatenate(windows, axis=-1) @ kernel.reshape(-1, kernel.shape[-1])


@jax.custom_jvp
def _valid_conv_patch_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``_valid_conv`` whose kernel tangent (hence kernel gradient) goes through patches."""
  return _valid_conv(x, kernel)


@_valid_conv_patch_grad.defjvp
def _valid_conv_patch_grad_jvp(primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  # checkpoint: the patches are rebuilt in the backward pass, not stored for every step.
  return _valid_conv(x, kernel), (_valid_conv(dx, kernel)
                                  + jax.checkpoint(_valid_conv_patches)(x, dkernel))


def _conv_options(features, kernel_size, spatial_shape, padding, use_bias, dtype,
                  param_dtype):
  """Validates the options the conv cells share; returns ``(F, kernel_size, spatial_shape)``."""
  features = _checks.positive_int("features", features)
  common_options(features, use_bias, dtype, param_dtype)
  expected = "a tuple of positive ints, one per spatial axis, e.g. (3, 3)"
  if not isinstance(kernel_size, Sequence) or isinstance(kernel_size, str):
    _checks.fail("kernel_size", expected, repr(kernel_size), TypeError)
  if not kernel_size:
    _checks.fail("kernel_size", expected, repr(kernel_size))
  kernel_size = tuple(_checks.positive_int("kernel_size", k) for k in kernel_size)
  if spatial_shape is not None:
    expected = f"None or {len(kernel_size)} positive ints (one per axis of kernel_size)"
    if not isinstance(spatial_shape, Sequence) or isinstance(spatial_shape, str):
      _checks.fail("spatial_shape", expected, repr(spatial_shape), TypeError)
    if len(spatial_shape) != len(kernel_size):
      _checks.fail("spatial_shape", f"{expected} for kernel_size={kernel_size}",
                   repr(spatial_shape))
    spatial_shape = tuple(_checks.positive_int("spatial_shape", s) for s in spatial_shape)
  _checks.choice("padding", padding, PADDINGS)
  return features, kernel_size, spatial_shape


def _kernel(init: Initializer, key: jax.Array, kernel_size: tuple[int, ...], rows: int,
            features: int, num_gates: int, dtype) -> jax.Array:
  """A ``(*kernel_size, rows, num_gates * features)`` kernel of per-gate blocks."""
  keys = jax.random.split(key, num_gates)
  return jnp.concatenate([init(k, kernel_size + (rows, features), dtype) for k in keys],
                         axis=-1)


def _zero_carry_shape(name: str, spatial_shape, batch_shape, features):
  if spatial_shape is None:
    _checks.fail("spatial_shape", f"the frame size given to {name}(..., spatial_shape=...) "
                 "to build or check a carry of shape (*batch, *spatial, features)", None)
  return tuple(batch_shape) + spatial_shape + (features,)


def _check_step(name: str, w_ih: jax.Array, features: int, spatial_shape, x_t, h) -> None:
  """Cheap per-step checks of a step input and the carry's state against the params."""
  nd = w_ih.ndim - 2
  expected = f"an array of shape (*batch, *spatial ({nd} axes), channels)"
  if not hasattr(x_t, "shape") or not hasattr(x_t, "dtype"):
    _checks.fail("x_t", expected, repr(x_t), TypeError)
  if x_t.ndim < nd + 1:
    _checks.fail("x_t", expected, f"shape {tuple(x_t.shape)}")
  if x_t.shape[-1] != w_ih.shape[-2]:
    _checks.fail("x_t", f"{w_ih.shape[-2]} channels (the input size of these {name} params)",
                 f"shape {tuple(x_t.shape)}")
  if not jnp.issubdtype(x_t.dtype, jnp.floating):
    _checks.fail("x_t", "a floating-point array", f"dtype {x_t.dtype}", TypeError)
  if spatial_shape is not None and tuple(x_t.shape[-nd - 1:-1]) != spatial_shape:
    _checks.fail("x_t", f"spatial shape {spatial_shape} (the spatial_shape of this {name})",
                 f"shape {tuple(x_t.shape)}")
  if tuple(h.shape) != tuple(x_t.shape[:-1]) + (features,):
    _checks.fail("carry", f"a state of shape {tuple(x_t.shape[:-1]) + (features,)} "
                 f"(x_t's leading axes and {features} features)", f"shape {tuple(h.shape)}")


def conv_lstm(features: int, kernel_size: Sequence[int], *,
              spatial_shape: Sequence[int] | None = None, peephole: bool = True,
              padding: str = "SAME", gate_fn: Activation = jax.nn.sigmoid,
              cell_fn: Activation = jnp.tanh, hidden_fn: Activation = jnp.tanh,
              use_bias: bool = True, kernel_init: Initializer | None = None,
              recurrent_init: Initializer | None = None, bias_init: Initializer | None = None,
              peephole_init: Initializer | None = None, forget_bias: float | None = None,
              forget_offset: float = 0.0, dtype=None, param_dtype=jnp.float32) -> Cell:
  r"""Convolutional LSTM cell (Shi et al. 2015, "Convolutional LSTM Network", eq. 3)::

      i_t = \sigma(W_{xi} * x_t + W_{hi} * h_{t-1} + b_i  [+ W_{ci} \odot c_{t-1}])
      f_t = \sigma(W_{xf} * x_t + W_{hf} * h_{t-1} + b_f  [+ W_{cf} \odot c_{t-1}]  + \beta)
      g_t = \phi_c(W_{xg} * x_t + W_{hg} * h_{t-1} + b_g)
      c_t = f_t \odot c_{t-1} + i_t \odot g_t
      o_t = \sigma(W_{xo} * x_t + W_{ho} * h_{t-1} + b_o  [+ W_{co} \odot c_t])
      h_t = o_t \odot \phi_h(c_t)

  ``*`` is a stride-1 convolution (cross-correlation, as in every deep-learning library)
  that keeps the spatial size, ``\odot`` the elementwise product; ``\sigma = gate_fn``,
  ``\phi_c = cell_fn``, ``\phi_h = hidden_fn`` (sigmoid, tanh, tanh by default) and
  ``\beta = forget_offset`` a constant (0 by default; Flax's ``ConvLSTMCell`` uses 1).

  Peepholes (``peephole=True``, the paper's model) are the bracketed Hadamard terms: as in
  Shi et al. the weights ``W_{ci}, W_{cf}, W_{co}`` have the shape of the state,
  ``(*spatial_shape, F)``, one weight per position and channel, so they need
  ``spatial_shape``. ``peephole=False`` is the ConvLSTM of Flax and Keras.

  Args:
    features: ``F``, the channels of ``h`` and ``c``.
    kernel_size: ``(k_1, ..., k_n)``; ``n`` (1, 2, 3, ...) is the number of spatial axes.
      The same size is used on the input and the hidden side.
    spatial_shape: ``(s_1, ..., s_n)``, the frame size. Needed for peepholes and for
      ``initial_carry``, hence for ``unroll``; steps check it.
    peephole: add Shi et al.'s peephole terms.
    padding: ``"SAME"`` (zero padding) or ``"CIRCULAR"`` (periodic boundaries).
    gate_fn, cell_fn, hidden_fn: the activations ``\sigma``, ``\phi_c``, ``\phi_h``.
    use_bias: add ``b``.
    kernel_init, recurrent_init: initializers of ``(*kernel_size, in, F)`` gate blocks;
      default U(+-1/sqrt(fan_in)), fan_in = prod(kernel_size) * in (PyTorch's conv default).
    bias_init, peephole_init: default zeros.
    forget_bias: initial value of ``b_f`` (1.0: Gers et al. 2000, Jozefowicz et al. 2015),
      as in ``jaxseq.lstm``.
    forget_offset: the constant ``\beta`` added inside the forget gate at every step (not a
      parameter; TF1's ``BasicLSTMCell(forget_bias=1.0)`` and Flax's ``ConvLSTMCell``).
    dtype: compute dtype (``None``: JAX's promotion); in bfloat16 ``c`` stays float32.
    param_dtype: dtype of the params.

  Returns:
    A ``Cell``. Params (gates in jaxseq's order ``i, f, g, o``): ``w_ih (*kernel_size, C,
    4F)``, ``w_hh (*kernel_size, F, 4F)``, ``b (4F,)``; peephole adds ``p_i, p_f, p_o
    (*spatial_shape, F)``. Inputs ``x_t`` are ``(*batch, *spatial, C)``; the carry is
    ``LSTMState(h, c)``, both ``(*batch, *spatial, F)``; the output is ``y_t = h_t``.
  """
  F, kernel_size, spatial_shape = _conv_options(features, kernel_size, spatial_shape,
                                                padding, use_bias, dtype, param_dtype)
  if not isinstance(peephole, bool):
    _checks.fail("peephole", "a bool", repr(peephole), TypeError)
  if peephole and spatial_shape is None:
    _checks.fail("spatial_shape", "the frame size for peephole=True (Shi et al.'s peephole "
                 "weights have one entry per position and channel of the state), or "
                 "peephole=False", None)
  for argument, fn in (("gate_fn", gate_fn), ("cell_fn", cell_fn), ("hidden_fn", hidden_fn)):
    if not callable(fn):
      _checks.fail(argument, "a callable", repr(fn), TypeError)
  if not use_bias and forget_bias is not None:
    _checks.fail("forget_bias", "None when use_bias=False (there is no b_f)", forget_bias)
  forget_offset = float(forget_offset)
  kernel_init = kernel_init or fan_in_uniform()
  recurrent_init = recurrent_init or fan_in_uniform()
  bias_init = bias_init or initializers.zeros
  peephole_init = peephole_init or initializers.zeros
  state_dtype = None if dtype is None else jnp.promote_types(dtype, jnp.float32)

  def init(key: jax.Array, input_size: int) -> dict:
    input_size = _checks.positive_int("input_size", input_size)
    k_ih, k_hh, k_b, k_p = jax.random.split(key, 4)
    params = {"w_ih": _kernel(kernel_init, k_ih, kernel_size, input_size, F, 4, param_dtype),
              "w_hh": _kernel(recurrent_init, k_hh, kernel_size, F, F, 4, param_dtype)}
    if use_bias:
      b = bias_init(k_b, (4 * F,), param_dtype)
      if forget_bias is not None:
        b = b.at[F:2 * F].set(forget_bias)
      params["b"] = b
    if peephole:
      for name, k in zip(("p_i", "p_f", "p_o"), jax.random.split(k_p, 3)):
        params[name] = peephole_init(k, spatial_shape + (F,), param_dtype)
    return params

  def initial_carry(params: dict, batch_shape: tuple[int, ...] = ()) -> LSTMState:
    shape = _zero_carry_shape("conv_lstm", spatial_shape, batch_shape, F)
    h_dtype = dtype or params["w_hh"].dtype
    return LSTMState(h=jnp.zeros(shape, h_dtype), c=jnp.zeros(shape, state_dtype or h_dtype))

  def step(params: dict, carry: LSTMState, x_t: jax.Array):
    h, c = carry
    _check_step("conv_lstm", params["w_ih"], F, spatial_shape, x_t, h)
    x_t, h, w_ih, w_hh, b = cast(dtype, x_t, h, params["w_ih"], params["w_hh"],
                                 params.get("b"))
    # One convolution of [x_t, h_{t-1}] with [W_x; W_h] is W_x * x_t + W_h * h_{t-1}.
    z = conv(jnp.concatenate([x_t, h.astype(x_t.dtype)], axis=-1),
             jnp.concatenate([w_ih, w_hh], axis=-2), padding)
    if b is not None:
      z = z + b
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    if peephole:
      p_i, p_f, p_o = cast(dtype, params["p_i"], params["p_f"], params["p_o"])
      z_i = z_i + p_i * c
      z_f = z_f + p_f * c
    i = gate_fn(z_i)
    f = gate_fn(z_f + forget_offset if forget_offset else z_f)
    g = cell_fn(z_g)
    c = f.astype(c.dtype) * c + (i * g).astype(c.dtype)
    o = gate_fn(z_o + p_o * c if peephole else z_o)
    (h,) = cast(dtype, o * hidden_fn(c))
    return LSTMState(h, c), h

  spec = dict(name="conv_lstm", hidden_size=F, output_size=F, features=F,
              kernel_size=kernel_size, spatial_shape=spatial_shape, peephole=peephole,
              padding=padding, gate_fn=gate_fn, cell_fn=cell_fn, hidden_fn=hidden_fn,
              use_bias=use_bias, forget_offset=forget_offset,
              feature_ndim=len(kernel_size) + 1)
  return Cell(init, initial_carry, step, spec)


def conv_gru(features: int, kernel_size: Sequence[int], *,
             spatial_shape: Sequence[int] | None = None, reset_after: bool = False,
             padding: str = "SAME", gate_fn: Activation = jax.nn.sigmoid,
             activation: Activation = jnp.tanh, use_bias: bool = True,
             kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
             bias_init: Initializer | None = None, dtype=None,
             param_dtype=jnp.float32) -> Cell:
  r"""Convolutional GRU cell (Ballas, Yao, Pal & Courville 2016, "Delving Deeper into
  Convolutional Networks for Learning Video Representations", eq. 4-7)::

      r_t = \sigma(W_r * x_t + U_r * h_{t-1} + b_r)
      z_t = \sigma(W_z * x_t + U_z * h_{t-1} + b_z)
      n_t = \tanh(W_n * x_t + U_n * (r_t \odot h_{t-1}) + b_n)            reset_after=False
      n_t = \tanh(W_n * x_t + b_n + r_t \odot (U_n * h_{t-1} + b_{hn}))   reset_after=True
      h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

  ``*`` is a stride-1, size-keeping convolution. ``reset_after=False`` (default) is the
  paper's form (with biases added); ``reset_after=True`` is the cuDNN/PyTorch form of
  ``jaxseq.gru``, which lets one convolution of ``h_{t-1}`` serve all three gates. As in
  ``jaxseq.gru``, ``z_t`` is the share of the old state: Ballas et al. write ``z_t`` for
  ``1 - z_t`` (the same model with the sign of ``z``'s pre-activation flipped).

  Args:
    features: ``F``, the channels of ``h``.
    kernel_size: ``(k_1, ..., k_n)``; ``n`` is the number of spatial axes.
    spatial_shape: ``(s_1, ..., s_n)``, the frame size, needed for ``initial_carry``,
      hence for ``unroll``; steps check it.
    reset_after: where the reset gate acts (above).
    padding: ``"SAME"`` (zero padding) or ``"CIRCULAR"`` (periodic boundaries).
    gate_fn, activation: ``\sigma`` and the candidate's ``\tanh``.
    use_bias: add the biases.
    kernel_init, recurrent_init: initializers of ``(*kernel_size, in, F)`` gate blocks;
      default U(+-1/sqrt(fan_in)) (PyTorch's conv default).
    bias_init: default zeros.
    dtype, param_dtype: compute and parameter dtypes.

  Returns:
    A ``Cell``. Params (gates ``r, z, n``): ``w_ih (*kernel_size, C, 3F)``, ``w_hh
    (*kernel_size, F, 3F)``, ``b (3F,)``; reset-after adds ``b_hn (F,)``. The carry and the
    output are ``h_t``, ``(*batch, *spatial, F)``.
  """
  F, kernel_size, spatial_shape = _conv_options(features, kernel_size, spatial_shape,
                                                padding, use_bias, dtype, param_dtype)
  if not isinstance(reset_after, bool):
    _checks.fail("reset_after", "a bool", repr(reset_after), TypeError)
  for argument, fn in (("gate_fn", gate_fn), ("activation", activation)):
    if not callable(fn):
      _checks.fail(argument, "a callable", repr(fn), TypeError)
  kernel_init = kernel_init or fan_in_uniform()
  recurrent_init = recurrent_init or fan_in_uniform()
  bias_init = bias_init or initializers.zeros

  def init(key: jax.Array, input_size: int) -> dict:
    input_size = _checks.positive_int("input_size", input_size)
    k_ih, k_hh, k_b, k_bn = jax.random.split(key, 4)
    params = {"w_ih": _kernel(kernel_init, k_ih, kernel_size, input_size, F, 3, param_dtype),
              "w_hh": _kernel(recurrent_init, k_hh, kernel_size, F, F, 3, param_dtype)}
    if use_bias:
      params["b"] = bias_init(k_b, (3 * F,), param_dtype)
      if reset_after:
        params["b_hn"] = bias_init(k_bn, (F,), param_dtype)
    return params

  def initial_carry(params: dict, batch_shape: tuple[int, ...] = ()) -> jax.Array:
    shape = _zero_carry_shape("conv_gru", spatial_shape, batch_shape, F)
    return jnp.zeros(shape, dtype or params["w_hh"].dtype)

  def step(params: dict, h: jax.Array, x_t: jax.Array):
    _check_step("conv_gru", params["w_ih"], F, spatial_shape, x_t, h)
    x_t, h, w_ih, w_hh, b, b_hn = cast(dtype, x_t, h, params["w_ih"], params["w_hh"],
                                       params.get("b"), params.get("b_hn"))
    gx = conv(x_t, w_ih, padding)
    if b is not None:
      gx = gx + b
    h = gru_update(gx, h, w_hh, b_hn, lambda v, w: conv(v, w, padding),
                   reset_after=reset_after, gate_fn=gate_fn, activation=activation)
    return h, h

  spec = dict(name="conv_gru", hidden_size=F, output_size=F, features=F,
              kernel_size=kernel_size, spatial_shape=spatial_shape, reset_after=reset_after,
              padding=padding, gate_fn=gate_fn, activation=activation, use_bias=use_bias,
              feature_ndim=len(kernel_size) + 1)
  return Cell(init, initial_carry, step, spec)
