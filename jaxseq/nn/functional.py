"""Convolution and pooling as pure functions on channels-last arrays.

Inputs are ``(N, *spatial, C)`` (NWC, NHWC, NDHWC); kernels are ``(*spatial, C // groups,
features)`` (WIO, HWIO, DHWIO), as in Flax. The spatial rank comes from the kernel (or the
input, for pooling): 1-D, 2-D and 3-D.

Every function resolves its padding to explicit ``(low, high)`` pairs in Python, with the
same arithmetic as ``output_size``, so shape inference at ``init`` time and the computed
shapes always agree.
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseq import _checks

Padding = Union[str, int, Sequence[Union[int, Sequence[int]]]]
PADDING_HELP = ('"VALID", "SAME", "CAUSAL" (1-D), an int, or one int or (low, high) pair '
                'per spatial dimension')
_SPATIAL_NAMES = {1: "W", 2: "HW", 3: "DHW"}

__all__ = [
    "conv", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool",
    "adaptive_avg_pool", "output_size", "resolve_padding", "window_output_shape",
]


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _non_negative_int(argument: str, value: Any) -> int:
  if not _is_int(value) or value < 0:
    _checks.fail(argument, "a non-negative int", repr(value),
                 ValueError if _is_int(value) else TypeError)
  return int(value)


def _per_dim(argument: str, value: Any, ndim: int) -> tuple[int, ...]:
  """An int or a sequence of ``ndim`` positive ints, as a tuple of ``ndim`` ints."""
  if _is_int(value):
    return (_checks.positive_int(argument, value),) * ndim
  if isinstance(value, (tuple, list)) and len(value) == ndim:
    return tuple(_checks.positive_int(f"{argument}[{i}]", v) for i, v in enumerate(value))
  _checks.fail(argument, f"a positive int or {ndim} positive ints (one per spatial "
               f"dimension)", repr(value),
               ValueError if isinstance(value, (tuple, list)) else TypeError)


def output_size(n: int, f: int, p: int | tuple[int, int], s: int, d: int = 1, *,
                ceil_mode: bool = False) -> int:
  r"""Output length of a convolution or pooling window along one dimension::

      out = \lfloor (n + 2p - d(f - 1) - 1) / s \rfloor + 1

  Args:
    n: input length.
    f: window (filter) size.
    p: padding on each side, or a ``(low, high)`` pair (then ``2p`` is ``low + high``).
    s: stride.
    d: dilation (``d(f - 1) + 1`` is the window's extent).
    ceil_mode: round up instead of down, as PyTorch's pooling ``ceil_mode``: a last,
      partial window is kept when it starts inside the input or the low padding.

  Returns:
    The output length, a positive int.

  Example: ``output_size(7, 3, 0, 2) == 3``.
  """
  ceil_mode = _checks.boolean("ceil_mode", ceil_mode)
  n = _checks.positive_int("n", n)
  f = _checks.positive_int("f", f)
  s = _checks.positive_int("s", s)
  d = _checks.positive_int("d", d)
  if _is_int(p):
    low = high = _non_negative_int("p", p)
  elif isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
    low, high = (_non_negative_int("p", v) for v in p)
  else:
    _checks.fail("p", "a non-negative int or a (low, high) pair of them", repr(p), TypeError)
  extent = d * (f - 1) + 1
  span = n + low + high - extent
  if span < 0:
    _checks.fail("n", f"a padded length n + 2p >= d(f - 1) + 1 = {extent} (the window's "
                 "extent)", f"n + 2p = {n + low + high}")
  if not ceil_mode:
    return span // s + 1
  out = -(-span // s) + 1
  if (out - 1) * s >= n + low:  # the last window would start in the high padding
    out -= 1
  return out


def resolve_padding(padding: Padding, spatial: Sequence[int], window: Sequence[int],
                    strides: Sequence[int], dilation: Sequence[int],
                    argument: str = "padding") -> list[tuple[int, int]]:
  """Explicit ``(low, high)`` padding per spatial dimension.

  ``"SAME"`` pads so that ``out = ceil(n / s)`` with the extra element at the end (as XLA
  and TensorFlow); ``"CAUSAL"`` pads ``d(f - 1)`` at the start of a 1-D input, so output
  ``t`` sees inputs ``<= t`` (WaveNet's causal convolution, van den Oord et al. 2016).
  """
  ndim = len(spatial)
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return [(0, 0)] * ndim
    if mode == "SAME":
      pads = []
      for n, f, s, d in zip(spatial, window, strides, dilation):
        total = max((-(-n // s) - 1) * s + d * (f - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
      return pads
    if mode == "CAUSAL":
      if ndim != 1:
        _checks.fail(argument, '"CAUSAL" only with one spatial dimension (N, W, C)',
                     f'"CAUSAL" with {ndim} spatial dimensions')
      return [(dilation[0] * (window[0] - 1), 0)]
    _checks.fail(argument, PADDING_HELP, repr(padding))
  if _is_int(padding):
    p = _non_negative_int(argument, padding)
    return [(p, p)] * ndim
  if isinstance(padding, (tuple, list)) and len(padding) == ndim:
    pads = []
    for i, item in enumerate(padding):
      if _is_int(item):
        p = _non_negative_int(f"{argument}[{i}]", item)
        pads.append((p, p))
      elif isinstance(item, (tuple, list)) and len(item) == 2 and all(map(_is_int, item)):
        pads.append(tuple(_non_negative_int(f"{argument}[{i}]", v) for v in item))
      else:
        _checks.fail(f"{argument}[{i}]", "a non-negative int or a (low, high) pair",
                     repr(item))
    return pads
  _checks.fail(argument, f"{PADDING_HELP}; {ndim} spatial dimension(s) here", repr(padding))


def window_output_shape(spatial: Sequence[int], window: Sequence[int],
                        strides: Sequence[int], padding: Padding, dilation: Sequence[int],
                        *, ceil_mode: bool = False, argument: str = "x"
                        ) -> tuple[tuple[int, ...], list[tuple[int, int]]]:
  """Output spatial shape and explicit padding of a sliding window (conv or pool).

  With ``ceil_mode`` the returned padding includes the extra high padding that makes the
  last partial window fit.
  """
  ceil_mode = _checks.boolean("ceil_mode", ceil_mode)
  if any(not _is_int(n) or n <= 0 for n in spatial):
    _checks.fail(argument, "a positive size along every spatial axis",
                 f"spatial shape {tuple(spatial)}")
  pads = resolve_padding(padding, spatial, window, strides, dilation)
  out, explicit = [], []
  for i, (n, f, (low, high), s, d) in enumerate(zip(spatial, window, pads, strides,
                                                     dilation)):
    extent = d * (f - 1) + 1
    if n + low + high < extent:
      _checks.fail(argument, f"spatial size >= {extent - low - high} along spatial axis {i} "
                   f"(a window of extent {extent} with padding ({low}, {high}))",
                   f"spatial shape {tuple(spatial)}")
    size = output_size(n, f, (low, high), s, d, ceil_mode=ceil_mode)
    out.append(size)
    explicit.append((low, max(high, (size - 1) * s + extent - n - low)))
  return tuple(out), explicit


def _dimension_numbers(k: int) -> tuple[str, str, str]:
  names = _SPATIAL_NAMES[k]
  return "N" + names + "C", names + "IO", "N" + names + "C"


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *,
         strides: int | Sequence[int] = 1, padding: Padding = "VALID",
         dilation: int | Sequence[int] = 1, groups: int = 1, flip: bool = False) -> jax.Array:
  r"""N-D convolution of channels-last ``x`` with ``kernel`` (``lax.conv_general_dilated``).

  What CNNs call convolution is cross-correlation (the kernel is not flipped)::

      y[n, i, o] = b[o] + \sum_{j, c} x[n, s i + d j - p_{low}, g(o) C_g + c] \, w[j, c, o]

  with ``i, j`` spatial multi-indices, ``C_g = C / groups`` input channels per group and
  ``g(o)`` the group of output feature ``o``. ``flip=True`` reverses the kernel along its
  spatial axes, giving true convolution (``scipy.signal.convolve``).

  Args:
    x: ``(N, *spatial, C)`` with 1, 2 or 3 spatial axes (as many as ``kernel`` has).
    kernel: ``(*window, C // groups, features)``.
    bias: ``(features,)`` or ``None``.
    strides: an int or one per spatial axis.
    padding: ``"VALID"`` (none), ``"SAME"`` (``out = ceil(n / s)``), ``"CAUSAL"`` (1-D:
      ``d(f - 1)`` zeros at the start), an int (each side of every axis), or per spatial
      axis an int or a ``(low, high)`` pair.
    dilation: kernel (atrous) dilation, an int or one per spatial axis.
    groups: feature groups; ``groups == C`` is a depthwise convolution.
    flip: compute true convolution instead of cross-correlation.

  Inputs of different floating dtypes (bfloat16 ``x``, float32 ``kernel``) are promoted as
  ``x @ kernel`` would be (``jnp.result_type``), as the conv cells do; the output has the
  promoted dtype.

  Returns:
    ``(N, *out_spatial, features)`` with ``out = output_size(n, f, p, s, d)`` per axis.
  """
  flip = _checks.boolean("flip", flip)
  x = _checks.float_array("x", x)
  kernel = _checks.float_array("kernel", kernel)
  k = kernel.ndim - 2
  if k not in _SPATIAL_NAMES:
    _checks.fail("kernel", "an array of rank 3, 4 or 5 (*window, C // groups, features)",
                 f"shape {tuple(kernel.shape)}")
  if x.ndim != k + 2:
    _checks.fail("x", f"an array of rank {k + 2} (N, {', '.join(_SPATIAL_NAMES[k])}, C) for "
                 f"a {k}-D kernel of shape {tuple(kernel.shape)}", f"shape {tuple(x.shape)}")
  if not _is_int(groups):
    _checks.fail("groups", "a positive int", repr(groups), TypeError)
  channels, features = x.shape[-1], kernel.shape[-1]
  if groups <= 0 or channels % groups or features % groups:
    _checks.fail("groups", f"a positive int dividing the channels of x ({channels}) and the "
                 f"features of kernel ({features})", repr(groups))
  if kernel.shape[-2] * groups != channels:
    _checks.fail("x", f"{kernel.shape[-2] * groups} channels (kernel's {kernel.shape[-2]} "
                 f"input channels x {groups} group(s))", f"shape {tuple(x.shape)}")
  if bias is not None:
    bias = _checks.float_array("bias", bias)
    if tuple(bias.shape) != (features,):
      _checks.fail("bias", f"shape ({features},) (the features of kernel)",
                   f"shape {tuple(bias.shape)}")
  strides = _per_dim("strides", strides, k)
  dilation = _per_dim("dilation", dilation, k)
  _, pads = window_output_shape(x.shape[1:-1], kernel.shape[:k], strides, padding, dilation)
  if flip:
    kernel = jnp.flip(kernel, axis=tuple(range(k)))
  # lax.conv_general_dilated insists on one dtype; promote as ``@`` does.
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  y = lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pads,
                               rhs_dilation=dilation, dimension_numbers=_dimension_numbers(k),
                               feature_group_count=groups)
  if bias is not None:
    y = y + bias
  return y


def _pool_args(x, window, strides, padding, dilation, ceil_mode=False):
  x = _checks.float_array("x", x)
  k = x.ndim - 2
  if k < 1:
    _checks.fail("x", "an array of rank >= 3 (N, *spatial, C)", f"shape {tuple(x.shape)}")
  window = _per_dim("window", window, k)
  strides = window if strides is None else _per_dim("strides", strides, k)
  dilation = _per_dim("dilation", dilation, k)
  _, pads = window_output_shape(x.shape[1:-1], window, strides, padding, dilation,
                                ceil_mode=ceil_mode)
  one = (1,)
  return (x, one + window + one, one + strides + one, [(0, 0)] + pads + [(0, 0)],
          one + dilation + one)


def max_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int] | None
             = None, padding: Padding = "VALID", *, dilation: int | Sequence[int] = 1,
             ceil_mode: bool = False) -> jax.Array:
  """Max over sliding windows of each channel (``lax.reduce_window``).

  Args:
    x: ``(N, *spatial, C)``.
    window: window size, an int or one per spatial axis.
    strides: defaults to ``window`` (non-overlapping windows, as PyTorch).
    padding: as in ``conv``; padded positions are ``-inf`` (never the max).
    dilation: window dilation.
    ceil_mode: keep a last partial window (PyTorch's ``ceil_mode``).

  Returns:
    ``(N, *out_spatial, C)``.
  """
  ceil_mode = _checks.boolean("ceil_mode", ceil_mode)
  x, window, strides, pads, dilation = _pool_args(x, window, strides, padding, dilation,
                                                  ceil_mode)
  return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads,
                           window_dilation=dilation)


def avg_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int] | None
             = None, padding: Padding = "VALID", *, dilation: int | Sequence[int] = 1,
             count_include_pad: bool = True) -> jax.Array:
  """Mean over sliding windows of each channel (``lax.reduce_window``).

  Args:
    x: ``(N, *spatial, C)``.
    window, strides, padding, dilation: as in ``max_pool`` (padding adds zeros).
    count_include_pad: divide by the window size (PyTorch's default) rather than by the
      number of non-padding elements in the window.

  Returns:
    ``(N, *out_spatial, C)``.
  """
  count_include_pad = _checks.boolean("count_include_pad", count_include_pad)
  x, window, strides, pads, dilation = _pool_args(x, window, strides, padding, dilation)
  total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads, window_dilation=dilation)
  if count_include_pad:
    return total / math.prod(window)
  ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, window, strides, pads,
                            window_dilation=dilation)
  return total / count


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
  if x.ndim < 3:
    _checks.fail("x", "an array of rank >= 3 (N, *spatial, C)", f"shape {tuple(x.shape)}")
  return tuple(range(1, x.ndim - 1))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over all spatial axes: ``(N, *spatial, C) -> (N, C)``."""
  x = _checks.float_array("x", x)
  return jnp.mean(x, axis=_spatial_axes(x))


def global_max_pool(x: jax.Array) -> jax.Array:
  """Max over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (max-over-time in 1-D)."""
  x = _checks.float_array("x", x)
  return jnp.max(x, axis=_spatial_axes(x))


def _adaptive_matrix(n: int, m: int) -> np.ndarray:
  """``(m, n)`` averaging matrix: row ``i`` averages ``[floor(i n / m), ceil((i + 1) n / m))``."""
  a = np.zeros((m, n), np.float32)
  for i in range(m):
    start, end = (i * n) // m, -(-((i + 1) * n) // m)
    a[i, start:end] = 1.0 / (end - start)
  return a


def adaptive_avg_pool(x: jax.Array, output_shape: int | Sequence[int]) -> jax.Array:
  """Average pooling to a fixed spatial shape (PyTorch's ``adaptive_avg_pool``).

  Output cell ``i`` along an axis of length ``n`` averages inputs
  ``floor(i n / m) .. ceil((i + 1) n / m) - 1``; computed as one small matrix product per
  axis.

  Args:
    x: ``(N, *spatial, C)``.
    output_shape: an int or one per spatial axis.

  Returns:
    ``(N, *output_shape, C)``.
  """
  x = _checks.float_array("x", x)
  axes = _spatial_axes(x)
  output_shape = _per_dim("output_shape", output_shape, len(axes))
  for axis, m in zip(axes, output_shape):
    n = x.shape[axis]
    if m == n:
      continue
    a = jnp.asarray(_adaptive_matrix(n, m), x.dtype)
    x = jnp.moveaxis(jnp.tensordot(a, x, axes=[[1], [axis]]), 0, axis)
  return x
