"""Convolutional recurrent cells: ConvLSTM (Shi et al. 2015) and ConvGRU (Ballas et al. 2016).

The dense cells' matrix products become convolutions over the spatial axes, so inputs,
states and outputs are feature maps ``(*batch, *spatial, channels)`` (channels last, as
Flax and ``jax.lax`` with ``"NHWC"``). Kernels are ``(*kernel_size, in, out)`` (HWIO), gate
blocks concatenated along ``out`` as in the dense cells. The length of ``kernel_size`` gives
the number of spatial axes (1-D sequences of signals, 2-D video frames, 3-D volumes).

Frame size. Convolutions keep the spatial size and do not care what it is, so the frame
size comes from the input: ``initialize_carry(params, x_t.shape)`` builds a zero state of
``x_t``'s batch and spatial shape, and ``unroll`` does so from ``xs``. Only Shi et al.'s
peephole weights, Hadamard products with the cell state and so one weight per position and
channel, fix a frame size: ``init(key, (*spatial, C))`` takes it from the input shape. A
cell without peepholes takes ``init(key, C)`` (or a shape) and runs on frames of any size
with the same params.
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
from jaxseq import specs
from jaxseq.cells.base import (Cell, Initializer, LSTMState, cast, check_callable,
                               check_carry, check_number, common_options, fused_cell,
                               input_half, step_shape)
from jaxseq.cells.gru import gru_update
from jaxseq.cells.lstm import PEEPHOLES, lstm_update

Activation = Callable[[jax.Array], jax.Array]
PADDINGS = ("SAME", "CIRCULAR")


def fan_in_uniform() -> Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = prod(kernel_size) * in``: PyTorch's
  ``nn.Conv`` default for a ``(*kernel_size, in, out)`` kernel (He et al. 2015's
  ``kaiming_uniform(a=sqrt(5))``)."""
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(x: jax.Array, kernel: jax.Array, padding: str = "SAME", *,
         patch_kernel_grad: bool | None = None) -> jax.Array:
  """Stride-1 cross-correlation that keeps the spatial size.

  Args:
    x: ``(*batch, *spatial, in)``, any number of batch axes (none included).
    kernel: ``(*kernel_size, in, out)``.
    padding: ``"SAME"`` (zeros) or ``"CIRCULAR"`` (periodic boundaries); both pad
      ``((k - 1) // 2, k // 2)`` on each spatial axis, as ``lax`` and Flax do.
    patch_kernel_grad: the kernel gradient as a matmul of patches (``None``:
      ``PATCH_KERNEL_GRAD``'s choice); ``False`` keeps lax's own convolution, whose
      derivative is transposable (the fused path's linear tangents need that).

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
  use_patches = PATCH_KERNEL_GRAD if patch_kernel_grad is None else patch_kernel_grad
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


def _conv_options(features, kernel_size, padding, use_bias, dtype, param_dtype):
  """Validates the options the conv cells share; returns ``(F, kernel_size)``."""
  features = _checks.positive_int("features", features)
  common_options(features, use_bias, dtype, param_dtype)
  expected = "a tuple of positive ints, one per spatial axis, e.g. (3, 3)"
  if not isinstance(kernel_size, Sequence) or isinstance(kernel_size, str):
    _checks.fail("kernel_size", expected, repr(kernel_size), TypeError)
  if not kernel_size:
    _checks.fail("kernel_size", expected, repr(kernel_size))
  kernel_size = tuple(_checks.positive_int("kernel_size", k) for k in kernel_size)
  _checks.choice("padding", padding, PADDINGS)
  return features, kernel_size


def _kernel(init: Initializer, key: jax.Array, kernel_size: tuple[int, ...], rows: int,
            features: int, num_gates: int, dtype) -> jax.Array:
  """A ``(*kernel_size, rows, num_gates * features)`` kernel of per-gate blocks."""
  keys = jax.random.split(key, num_gates)
  return jnp.concatenate([init(k, kernel_size + (rows, features), dtype) for k in keys],
                         axis=-1)


def _input_shape(name: str, input_shape, nd: int, *, need_frame: bool):
  """``(channels, frame)`` from ``init``'s input: ``C`` or a shape ``(..., *spatial, C)``."""
  expected = (f"one step's input shape (*spatial ({nd} axes), channels)" +
              ("" if need_frame else ", or the number of channels"))
  if isinstance(input_shape, (tuple, list)):
    if len(input_shape) < nd + 1:
      _checks.fail("input_shape", expected + (f" ({name} with peephole=True has one "
                   "peephole weight per position)" if need_frame else ""), repr(input_shape))
    channels = _checks.positive_int("input_shape", input_shape[-1])
    frame = tuple(_checks.positive_int("input_shape", s) for s in input_shape[-nd - 1:-1])
    return channels, frame if len(frame) == nd else None
  if need_frame:
    _checks.fail("input_shape", expected + f" ({name} with peephole=True has one peephole "
                 "weight per position and channel of the state)", repr(input_shape))
  return _checks.positive_int("input_size", input_shape), None


def _frame_carry_shape(name: str, nd: int, features: int, input_shape) -> tuple[int, ...]:
  input_shape = step_shape(input_shape)
  if len(input_shape) < nd + 1:
    _checks.fail("input_shape", f"one step's input shape (*batch, *spatial ({nd} axes), "
                 f"channels) for {name}", repr(input_shape))
  return input_shape[:-1] + (features,)


def _check_step(name: str, params: dict, x_t, carry, initialize_carry) -> None:
  """Cheap per-step checks of a step input and the carry against the params."""
  w_ih = params["w_ih"]
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
  _check_frame(name, params, x_t.shape)
  check_carry(name, initialize_carry, params, carry, x_t)


def _check_frame(name: str, params: dict, input_shape) -> None:
  """Peephole weights fix the frame size: inputs of another size fail here."""
  if "p_o" in params:
    frame = tuple(params["p_o"].shape[:-1])
    nd = len(frame)
    if tuple(input_shape[-nd - 1:-1]) != frame:
      _checks.fail("x_t", f"frames of spatial shape {frame} (the size of these {name} "
                   "params' peephole weights)", f"shape {tuple(input_shape)}")


def _conv_project(dtype, padding):
  """The conv input half ``W_x * x + b`` over any leading axes (time and batch together)."""
  return input_half(dtype, lambda x, w: conv(x, w, padding))


def conv_lstm(features: int, kernel_size: Sequence[int], *,
              peephole: bool = True,
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
  ``(*spatial, F)``, one weight per position and channel, so their frame size comes from
  ``init(key, (*spatial, C))``. ``peephole=False`` is the ConvLSTM of Flax and Keras; its
  params run on frames of any size.

  Args:
    features: ``F``, the channels of ``h`` and ``c``.
    kernel_size: ``(k_1, ..., k_n)``; ``n`` (1, 2, 3, ...) is the number of spatial axes.
      The same size is used on the input and the hidden side.
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
    (*spatial, F)``. Inputs ``x_t`` are ``(*batch, *spatial, C)``; the carry is
    ``LSTMState(h, c)``, both ``(*batch, *spatial, F)``; the output is ``y_t = h_t``.
  """
  F, kernel_size = _conv_options(features, kernel_size, padding, use_bias, dtype, param_dtype)
  if not isinstance(peephole, bool):
    _checks.fail("peephole", "a bool", repr(peephole), TypeError)
  for argument, fn in (("gate_fn", gate_fn), ("cell_fn", cell_fn), ("hidden_fn", hidden_fn)):
    check_callable(argument, fn)
  for argument, fn in (("kernel_init", kernel_init), ("recurrent_init", recurrent_init),
                       ("bias_init", bias_init), ("peephole_init", peephole_init)):
    check_callable(argument, fn, optional=True)
  forget_bias = check_number("forget_bias", forget_bias)
  if not use_bias and forget_bias is not None:
    _checks.fail("forget_bias", "None when use_bias=False (there is no b_f)", forget_bias)
  forget_offset = check_number("forget_offset", forget_offset, optional=False)
  kernel_init = kernel_init or fan_in_uniform()
  recurrent_init = recurrent_init or fan_in_uniform()
  bias_init = bias_init or initializers.zeros
  peephole_init = peephole_init or initializers.zeros
  state_dtype = None if dtype is None else jnp.promote_types(dtype, jnp.float32)
  nd = len(kernel_size)

  def init(key: jax.Array, input_shape) -> dict:
    _checks.init_key(key)
    channels, frame = _input_shape("conv_lstm", input_shape, nd, need_frame=peephole)
    k_ih, k_hh, k_b, k_p = jax.random.split(key, 4)
    params = {"w_ih": _kernel(kernel_init, k_ih, kernel_size, channels, F, 4, param_dtype),
              "w_hh": _kernel(recurrent_init, k_hh, kernel_size, F, F, 4, param_dtype)}
    if use_bias:
      b = bias_init(k_b, (4 * F,), param_dtype)
      if forget_bias is not None:
        b = b.at[F:2 * F].set(forget_bias)
      params["b"] = b
    if peephole:
      for name, k in zip(PEEPHOLES, jax.random.split(k_p, 3)):
        params[name] = peephole_init(k, frame + (F,), param_dtype)
    return params

  def initialize_carry(params: dict, input_shape) -> LSTMState:
    shape = _frame_carry_shape("conv_lstm", nd, F, input_shape)
    h_dtype = dtype or params["w_hh"].dtype
    return LSTMState(h=jnp.zeros(shape, h_dtype), c=jnp.zeros(shape, state_dtype or h_dtype))

  def equations(params: dict, carry: LSTMState, gx: jax.Array, recurrent):
    h, c = carry
    (h,), w_hh = cast(dtype, h), params["w_hh"]
    peepholes = None
    if peephole:
      peepholes = dict(zip(PEEPHOLES, cast(dtype, *(params[n] for n in PEEPHOLES))))
    h, c = lstm_update(gx, LSTMState(h, c), w_hh, recurrent,
                       gates="ifgo", peepholes=peepholes, gate_fn=gate_fn, cell_fn=cell_fn,
                       hidden_fn=hidden_fn, forget_offset=forget_offset)
    (h,) = cast(dtype, h)
    return LSTMState(h, c), h

  def check(params, carry, x_t):
    _check_step("conv_lstm", params, x_t, carry, initialize_carry)

  spec = specs.ConvLSTMSpec(hidden_size=F, output_size=F, features=F,
                            kernel_size=kernel_size, peephole=peephole, padding=padding,
                            gate_fn=gate_fn, cell_fn=cell_fn, hidden_fn=hidden_fn,
                            use_bias=use_bias, forget_offset=forget_offset,
                            feature_ndim=nd + 1)
  return fused_cell(init, initialize_carry, _conv_project(dtype, padding), equations, spec,
                    check, input_sums=[(0, 0, 4 * F, 0)], **_recurrent_convs(padding))


def _recurrent_convs(padding: str) -> dict:
  """``fused_cell``'s linear maps for conv cells: ``conv`` in the cell's own ``recur``; lax's
  plain convolution in the fused path (same values; its weight tangents are hoisted out
  of the loop, where XLA:CPU's kernel-gradient convolution is fast)."""
  return {"linear": lambda v, w: conv(v, w, padding),
          "fused_linear": lambda v, w: conv(v, w, padding, patch_kernel_grad=False)}


def conv_gru(features: int, kernel_size: Sequence[int], *,
             reset_after: bool = False,
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
  F, kernel_size = _conv_options(features, kernel_size, padding, use_bias, dtype, param_dtype)
  if not isinstance(reset_after, bool):
    _checks.fail("reset_after", "a bool", repr(reset_after), TypeError)
  for argument, fn in (("gate_fn", gate_fn), ("activation", activation)):
    check_callable(argument, fn)
  for argument, fn in (("kernel_init", kernel_init), ("recurrent_init", recurrent_init),
                       ("bias_init", bias_init)):
    check_callable(argument, fn, optional=True)
  kernel_init = kernel_init or fan_in_uniform()
  recurrent_init = recurrent_init or fan_in_uniform()
  bias_init = bias_init or initializers.zeros
  nd = len(kernel_size)

  def init(key: jax.Array, input_shape) -> dict:
    _checks.init_key(key)
    channels, _ = _input_shape("conv_gru", input_shape, nd, need_frame=False)
    k_ih, k_hh, k_b, k_bn = jax.random.split(key, 4)
    params = {"w_ih": _kernel(kernel_init, k_ih, kernel_size, channels, F, 3, param_dtype),
              "w_hh": _kernel(recurrent_init, k_hh, kernel_size, F, F, 3, param_dtype)}
    if use_bias:
      params["b"] = bias_init(k_b, (3 * F,), param_dtype)
      if reset_after:
        params["b_hn"] = bias_init(k_bn, (F,), param_dtype)
    return params

  def initialize_carry(params: dict, input_shape) -> jax.Array:
    shape = _frame_carry_shape("conv_gru", nd, F, input_shape)
    return jnp.zeros(shape, dtype or params["w_hh"].dtype)

  def equations(params: dict, h: jax.Array, gx: jax.Array, recurrent):
    (h,), w_hh, b_hn = cast(dtype, h), params["w_hh"], params.get("b_hn")
    h = gru_update(gx, h, w_hh, b_hn, recurrent, reset_after=reset_after, gate_fn=gate_fn,
                   activation=activation)
    return h, h

  def check(params, carry, x_t):
    _check_step("conv_gru", params, x_t, carry, initialize_carry)

  spec = specs.ConvGRUSpec(hidden_size=F, output_size=F, features=F,
                           kernel_size=kernel_size, reset_after=reset_after, padding=padding,
                           gate_fn=gate_fn, activation=activation, use_bias=use_bias,
                           feature_ndim=nd + 1)
  sums = [(0, 0, 2 * F, 0)] if reset_after else [(0, 0, 2 * F, 0), (1, 0, F, 2 * F)]
  return fused_cell(init, initialize_carry, _conv_project(dtype, padding), equations, spec,
                    check, input_sums=sums, **_recurrent_convs(padding))
