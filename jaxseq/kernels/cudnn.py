"""The cuDNN (NVIDIA) / MIOpen (AMD) LSTM through ``jax.experimental.rnn.lstm``.

The whole recurrence, both halves, runs as one library call:
``unroll`` takes the raw inputs ``xs`` (not ``project``'s output), packs the jaxseq params
into the library's flat weight vector (``pack``), and handles what the library does not do
the jaxseq way: any number of batch axes, time-major layout, ``lengths`` of 0, and
``reverse`` over each sequence's valid part.

Choose this path in Python before tracing, with ``available()`` and ``reason(...)``: the op
has no CPU lowering, and on a CPU-only jaxlib even ``jax.eval_shape`` of it fails (its
abstract evaluation asks the GPU plugin for workspace sizes).

Limits (``jax.experimental.rnn`` in JAX 0.10.2):

* LSTM only: the jaxseq ``lstm`` cell with sigmoid gates and tanh cell/hidden activations,
  no peepholes, no coupled input-forget gate, no projection (``reason`` says which).
  ``forget_bias``/``chrono_t_max`` live in the params' bias, so they are supported.
* float32 only: params, inputs, carry and compute dtype (the op's ``TODO`` lists other
  dtypes). Under the default matmul precision cuDNN may use TF32 tensor-core math, as XLA's
  float32 matmuls do on the same GPU; ``precision="highest"`` (or
  ``jax.default_matmul_precision("float32")``) turns it off. ``"default"``/``"bfloat16"``
  precision, given or set globally, makes the op raise ``NotImplementedError``.
* No ``vmap``: the ``rnn_fwd`` primitive has no batching rule, so ``jax.vmap`` over
  ``unroll`` raises ``NotImplementedError: Batching rule for 'rnn_fwd' not implemented``.
  ``unroll`` takes any number of batch axes instead: put the mapped axis in ``xs``.
* No forward mode: the op is a ``jax.custom_vjp``, so ``jax.jvp``/``jax.jacfwd``/
  ``jax.hessian`` raise (reverse mode, ``jax.grad``/``jax.vjp``, works). No second-order
  reverse mode either: the backward pass is another cuDNN call with no derivative.
* Lengths: the op takes right-padded sequences with per-sequence lengths; JAX tests it
  with lengths in ``[1, T]`` only, and ``rnn.lstm_ref``, its CPU reference, returns the
  carry at step ``T - 1`` for a length of 0. So ``unroll`` clips lengths to ``[0, T]``,
  runs an empty sequence as length 1 on zeroed input, then returns its initial carry and
  zero outputs; it also zeroes padded inputs and outputs itself.
* ROCm: JAX's own tests swap the ``g`` and ``o`` gate blocks (``rnn.swap_lstm_gates``)
  before calling the op on ROCm, i.e. MIOpen orders them ``i, f, o, g``; ``unroll`` does
  the same (untested here: no ROCm machine). ``pack``/``unpack`` are always
  cuDNN's layout. Unidirectional, one layer: stacks and ``bidirectional`` call ``unroll``
  per layer and direction.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxseq import specs

try:  # the module imports on every jaxlib; only its op needs a GPU plugin
  from jax.experimental import rnn
except ImportError:  # pragma: no cover - very old or stripped JAX
  rnn = None

_LSTM = None if rnn is None else rnn.lstm
"""The op ``unroll`` calls, ``rnn.lstm``'s signature. Tests on CPU replace it with a
stand-in built on ``rnn.lstm_ref``, so every step around the op runs there too."""

_PLUGINS = {"cuda": "_cuda_rnn", "rocm": "_hip_rnn"}


def _gpu_platform() -> str | None:
  """``"cuda"`` or ``"rocm"`` when JAX's default backend is a GPU, else ``None``."""
  try:
    if jax.default_backend() != "gpu":
      return None
    version = jax.devices()[0].client.platform_version.lower()
  except RuntimeError:  # no backend could be initialised
    return None
  for platform in _PLUGINS:
    if platform in version:
      return platform
  return None


def available() -> bool:
  """Whether this process can run the cuDNN/MIOpen LSTM: the default backend is a GPU and
  jaxlib loaded that GPU's RNN plugin. Never traces the op (False on CPU)."""
  platform = _gpu_platform()
  if rnn is None or platform is None:
    return False
  gpu_rnn = getattr(rnn, "gpu_rnn", None)
  return gpu_rnn is not None and getattr(gpu_rnn, _PLUGINS[platform], None) is not None


def _spec_reason(spec: Any) -> str | None:
  if not isinstance(spec, specs.LSTMSpec):
    return f"cuDNN runs only the plain LSTM, not {getattr(spec, 'name', type(spec).__name__)}"
  if spec.peephole:
    return "cuDNN's LSTM has no peepholes"
  if spec.coupled:
    return "cuDNN's LSTM has no coupled input-forget gate"
  if spec.proj_size is not None:
    return "jax.experimental.rnn has no projection (proj_size)"
  if spec.gate_fn is not jax.nn.sigmoid:
    return "cuDNN's gates are sigmoids (gate_fn is not jax.nn.sigmoid)"
  if spec.cell_fn is not jnp.tanh or spec.hidden_fn is not jnp.tanh:
    return "cuDNN's cell and hidden activations are tanh (cell_fn/hidden_fn)"
  return None


def _params_reason(params: Any, hidden_size: int) -> str | None:
  if not isinstance(params, dict) or not {"w_ih", "w_hh"} <= set(params):
    return "params are not an LSTM's {w_ih, w_hh[, b]}"
  extra = sorted(set(params) - {"w_ih", "w_hh", "b"})
  if extra:
    return f"params have entries cuDNN has no place for: {', '.join(extra)}"
  G = 4 * hidden_size
  shapes = {name: tuple(getattr(value, "shape", ())) for name, value in params.items()}
  if (len(shapes["w_ih"]) != 2 or shapes["w_ih"][1] != G or shapes["w_hh"] != (hidden_size, G)
      or shapes.get("b", (G,)) != (G,)):
    return f"params are not shaped w_ih (D, {G}), w_hh ({hidden_size}, {G}), b ({G},)"
  for name, value in params.items():
    dtype = getattr(value, "dtype", None)
    dtype = jnp.result_type(value) if dtype is None else jnp.dtype(dtype)
    if dtype != jnp.float32:
      return f"jax.experimental.rnn is float32 only ({name} is {dtype})"
  return None


def reason(cell: Any, params: Any, dtype: Any = None) -> str | None:
  """Why ``unroll`` cannot run ``cell`` with ``params``, or ``None`` when cuDNN implements
  exactly its recurrence.

  Args:
    cell: a jaxseq ``Cell``; only ``lstm(...)`` with sigmoid/tanh and no peephole, coupled
      gate or projection qualifies, with or without bias (``forget_bias``/chrono are fine).
    params: its params: ``w_ih (D, 4H)``, ``w_hh (H, 4H)``, optional ``b (4H,)``, float32;
      arrays or ``jax.ShapeDtypeStruct`` (only shapes and dtypes are read).
    dtype: the dtype the step computes in, the cell's ``dtype`` option or else the
      promotion of the inputs' and params' dtypes; ``None``: the params' dtype. Must be
      float32. The cell's own ``dtype`` option is also read off its carry.

  A cell whose ``recur`` a wrapper replaced (recurrent dropout, ``gradflow``) keeps the
  LSTM's spec: the caller must check that the cell runs its own recurrence.
  """
  spec = getattr(cell, "spec", None)
  why = _spec_reason(spec)
  if why is None:
    why = _params_reason(params, spec.hidden_size)
  if why is not None:
    return why
  if dtype is not None and jnp.dtype(dtype) != jnp.float32:
    return f"jax.experimental.rnn is float32 only (compute dtype {jnp.dtype(dtype)})"
  try:
    carry = jax.eval_shape(lambda p: cell.initialize_carry(p, (params["w_ih"].shape[0],)),
                           params)
  except Exception as error:  # a carry we cannot build is a cell we cannot vouch for
    return f"the cell's carry could not be built ({type(error).__name__})"
  for leaf in jax.tree.leaves(carry):
    if leaf.dtype != jnp.float32:
      return f"jax.experimental.rnn is float32 only (the cell computes in {leaf.dtype})"
  return None


def pack(params: dict, spec: Any) -> jax.Array:
  """The flat weight vector ``rnn.lstm`` takes for one unidirectional layer (cuDNN's
  layout, ``rnn.unpack_lstm_weights``): ``W_ih (4H, D)``, ``W_hh (4H, H)``, ``b_ih (4H,)``,
  ``b_hh (4H,)``, row-major, gates ``i, f, g, o`` as in jaxseq. ``b_ih = b`` (zeros without
  bias) and ``b_hh = 0``: cuDNN adds both, so the sum is jaxseq's single bias."""
  why = _spec_reason(spec)
  if why is None:
    why = _params_reason(params, spec.hidden_size)
  if why is not None:
    raise ValueError(f"pack: {why}")
  w_ih, w_hh = params["w_ih"], params["w_hh"]
  b = params.get("b")
  if b is None:
    b = jnp.zeros((w_ih.shape[1],), w_ih.dtype)
  return jnp.concatenate([w_ih.T.ravel(), w_hh.T.ravel(), b, jnp.zeros_like(b)])


def unpack(weights: jax.Array, input_size: int, hidden_size: int, *,
           use_bias: bool = True) -> dict:
  """jaxseq LSTM params from ``rnn.lstm``'s flat weights (one unidirectional layer):
  ``w_ih (D, 4H)``, ``w_hh (H, 4H)`` and, when ``use_bias``, ``b = b_ih + b_hh``; without
  ``use_bias`` the biases are dropped, so use it only for weights packed without them."""
  expected = rnn.get_num_params_in_lstm(input_size, hidden_size, 1, False)
  if jnp.shape(weights) != (expected,):
    raise ValueError(f"unpack: expected weights of shape ({expected},) for input_size="
                     f"{input_size}, hidden_size={hidden_size}, got {jnp.shape(weights)}")
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1,
                                                   False)
  params = {"w_ih": w_ih[0].T, "w_hh": w_hh[0].T}
  if use_bias:
    params["b"] = b_ih[0] + b_hh[0]
  return params


def _flip(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
  """Reverses each sequence of the time-major ``xs (T, B, ...)`` within its length, padding
  left in place (an involution); over all of ``T`` without lengths."""
  if lengths is None:
    return xs[::-1]
  t = jnp.arange(xs.shape[0])[:, None]
  index = jnp.where(t < lengths, lengths - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (xs.ndim - 2))
  return jnp.take_along_axis(xs, index, axis=0)


def _check_float32(name: str, value: Any) -> None:
  for leaf in jax.tree.leaves(value):
    if jnp.result_type(leaf) != jnp.float32:
      raise TypeError(f"cudnn.unroll: {name} must be float32 (jax.experimental.rnn is "
                      f"float32 only), got {jnp.result_type(leaf)}")


def unroll(spec: Any, params: dict, carry: Any, xs: jax.Array,
           lengths: jax.Array | None = None, reverse: bool = False, *,
           precision: Any = None) -> tuple[Any, jax.Array]:
  """Runs the LSTM of ``spec`` over the time-major ``xs`` with cuDNN/MIOpen, with
  ``jaxseq.unroll``'s semantics.

  Args:
    spec: an ``LSTMSpec`` the op implements (``reason`` is ``None`` for its cell).
    params: ``w_ih (D, 4H)``, ``w_hh (H, 4H)``, optional ``b (4H,)``, float32.
    carry: ``LSTMState(h, c)``, each ``(*batch, H)`` float32.
    xs: ``(T, *batch, D)`` float32, any number of batch axes (flattened for the op).
    lengths: ``None`` or integer valid lengths shaped ``batch`` (clipped to ``[0, T]``).
      Steps at or past a length output zeros and never read their inputs; the carry is the
      one after the last valid step (the initial carry for a length of 0).
    reverse: run each sequence from its last valid step back to step 0; ``ys[t]`` stays
      aligned with ``xs[t]`` (done by flipping each sequence within its length around the
      forward op).
    precision: ``rnn.lstm``'s ``precision``; ``None`` follows
      ``jax_default_matmul_precision`` (TF32 allowed unless that is float32/highest).

  Returns:
    ``(carry, ys)``: the final ``LSTMState`` and the outputs ``(T, *batch, H)``.

  Raises ``RuntimeError`` when the op is the real one and ``available()`` is False (before
  anything is traced).
  """
  op = _LSTM
  if op is None or (rnn is not None and op is rnn.lstm and not available()):
    raise RuntimeError("cudnn.unroll: the cuDNN/MIOpen LSTM needs JAX's default backend to "
                       "be a CUDA or ROCm GPU (jaxseq.kernels.cudnn.available() is False)")
  why = _spec_reason(spec)
  if why is None:
    why = _params_reason(params, spec.hidden_size)
  if why is not None:
    raise ValueError(f"cudnn.unroll: {why}")
  if not isinstance(reverse, bool):
    raise TypeError(f"cudnn.unroll: reverse must be a bool, got {reverse!r}")
  xs = jnp.asarray(xs)
  H = spec.hidden_size
  D = params["w_ih"].shape[0]
  if xs.ndim < 2 or xs.shape[-1] != D or xs.shape[0] == 0:
    raise ValueError(f"cudnn.unroll: xs must be (T, *batch, {D}) with T >= 1, got "
                     f"{xs.shape}")
  batch_shape = tuple(xs.shape[1:-1])
  # Imported here: jaxseq.kernels may import this module while jaxseq.cells.base loads.
  from jaxseq.cells.base import LSTMState
  if not isinstance(carry, LSTMState):
    carry = LSTMState(*carry)
  for name, leaf in zip(("h", "c"), carry):
    if jnp.shape(leaf) != batch_shape + (H,):
      raise ValueError(f"cudnn.unroll: carry.{name} must be {batch_shape + (H,)}, got "
                       f"{jnp.shape(leaf)}")
  _check_float32("xs", xs)
  _check_float32("carry", carry)
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
      raise TypeError(f"cudnn.unroll: lengths must be integers, got {lengths.dtype}")
    if lengths.shape != batch_shape:
      raise ValueError(f"cudnn.unroll: lengths must be shaped like the batch axes "
                       f"{batch_shape}, got {lengths.shape}")
  return _unroll(op, _gpu_platform() == "rocm", H, reverse, precision, params, carry, xs,
                 lengths)


@jax.jit(static_argnums=(0, 1, 2, 3, 4))
def _unroll(op, rocm, hidden_size, reverse, precision, params, carry, xs, lengths):
  # The op is a static argument, so a substituted stand-in never reuses a trace of another.
  num_steps, batch_shape, D = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
  B, H = math.prod(batch_shape), hidden_size
  if B == 0:  # nothing to run; never hand the library an empty batch
    return carry, jnp.zeros((num_steps,) + batch_shape + (H,), xs.dtype)
  x = xs.reshape(num_steps, B, D)
  h_0, c_0 = (leaf.reshape(1, B, H) for leaf in carry)
  if lengths is None:
    length = None
    seq_lengths = jnp.full((B,), num_steps, jnp.int32)
  else:
    length = jnp.clip(lengths.reshape(B), 0, num_steps).astype(jnp.int32)
    # Padding may hold anything (inf, nan): zero it so it cannot reach results or gradients.
    x = jnp.where((jnp.arange(num_steps)[:, None] < length)[..., None], x, 0)
    # cuDNN wants lengths in [1, T]: an empty sequence runs one step on zeros, undone below.
    seq_lengths = jnp.maximum(length, 1)
  if reverse:
    x = _flip(x, length)
  weights = pack(params, specs.LSTMSpec(hidden_size=H, output_size=H, gate_fn=jax.nn.sigmoid,
                                        cell_fn=jnp.tanh, hidden_fn=jnp.tanh))
  if rocm:  # MIOpen's gate order is i, f, o, g
    weights = rnn.swap_lstm_gates(weights, D, H, 1, False)
  y, h_n, c_n = op(jnp.swapaxes(x, 0, 1), h_0, c_0, weights, seq_lengths, input_size=D,
                   hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False,
                   precision=precision)
  y = jnp.swapaxes(y, 0, 1)  # (T, B, H)
  h_n, c_n = h_n[0], c_n[0]
  if length is not None:
    y = jnp.where((jnp.arange(num_steps)[:, None] < length)[..., None], y, 0)
    empty = (length == 0)[:, None]
    h_n = jnp.where(empty, h_0[0], h_n)
    c_n = jnp.where(empty, c_0[0], c_n)
  if reverse:
    y = _flip(y, length)
  carry = type(carry)(h_n.reshape(batch_shape + (H,)), c_n.reshape(batch_shape + (H,)))
  return carry, y.reshape((num_steps,) + batch_shape + (H,))


__all__ = ["available", "pack", "reason", "unpack", "unroll"]
