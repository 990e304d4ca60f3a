r"""Pallas kernels for the recurrent half of LSTM and GRU cells (whole sequence per call).

Supported cells (``reason(cell) is None``): the built-in ``lstm`` with sigmoid gates and tanh
cell/hidden functions, without peepholes, coupling or projection; the built-in ``gru``, both
reset placements, sigmoid/tanh.

Dtypes: the compute dtype is ``gxs``'s, and ``h`` must be in it. Mixed precision is the
cells' own (``dtype=jnp.bfloat16`` on float32 params): the recurrent weights are cast to the
compute dtype for the products (accumulated in float32, ``preferred_element_type``), the
LSTM cell state ``c`` keeps its wider dtype (float32) with ``c_t = f c_{t-1} + i g`` summed
in it and ``h_t = o \tanh(c_t)`` rounded to the compute dtype, as in the cell's ``recur``;
the LSTM backward carries ``dc`` in ``c``'s dtype; weight gradients are sums over ``T·B`` rows
computed and returned in the weights' dtype (float32).

Forward: one ``pallas_call`` runs the whole sequence, a ``fori_loop`` over the ``T`` steps
with ``W_hh`` loaded once and the carry as loop values; it writes the carried state of every
step (``h_t`` and, for the LSTM, ``c_t``). The outputs ``ys`` (zeros at masked steps) and the
final carry are read from those states outside the kernel.

Backward (``jax.custom_vjp``; ``pallas_call`` has no transpose rule): the forward rule runs
the same kernel and also *stores* the gate activations of every step (``i, f, g, o`` for the
LSTM; ``r, z, n`` and ``h W_n + b_{hn}`` for the reset-after GRU; ``r, z, n`` for the
reset-before GRU), zeroed at masked steps, so the backward kernel recomputes no recurrent
matmul. Residuals: those gates, ``(T, B, 3H..4H)``; the states; and the carry before each
step (the states shifted by one step, built outside the kernels, also the left operand of
``dW_hh``). The backward kernel runs the recurrence in the opposite order carrying only the
``(B, H)`` cotangents ``(dh, dc)``; per step its only matmul is
:math:`\delta_t W_{hh}^\top` (two for the reset-before GRU), and it writes
:math:`\delta_t`, the cotangent of the gate pre-activations, which *is* ``dgx``
(``z_t = gx_t + h_{t-1} W_{hh}``). The weight gradient is one matmul over ``T·B`` rows
outside the kernel, :math:`dW_{hh} = \sum_t h_{t-1}^\top \delta_t` (for the reset-before
GRU, the candidate block's left operand is ``r_t \odot h_{t-1}``), and ``dgx`` flows back
to the input projection (``dW_{ih} = X^\top \Delta``) in the caller's autodiff. Forward
mode (``jax.jvp``) is not available (``custom_vjp``); ``jax.vmap`` is (``pallas_call``
batches).

``lengths``: a ``(T, B, 1)`` validity mask is an input of both kernels (absent when
``lengths`` is ``None``): masked steps keep the carry, their outputs are zero, their
cotangents pass the carry's cotangent through. ``reverse``: the kernels index time
``T - 1 - s`` at loop step ``s`` (nothing is flipped outside). ``unroll`` is the in-kernel
``fori_loop``'s unroll factor.

Interpret mode: ``interpret=True`` (the default on the CPU backend) runs the kernels as JAX
on CPU, which is how they are tested here (float64, float32 and bfloat16 compute; values and
gradients against the ``lax.scan`` of the cell's ``recur``). A
``jax.experimental.pallas.tpu.InterpretParams()`` may be passed instead (TPU semantics,
slower).

Compiling for real hardware (nothing here has run on a TPU or GPU):

* Lowering: ``jax.export(..., platforms=("tpu",))`` on this CPU-only machine runs Pallas's TPU
  lowering of both kernels (float32 and bfloat16, with ``lengths`` and ``reverse``) into
  Mosaic custom calls (``tests/test_kernels_pallas.py``); Mosaic's own compilation (tiling,
  VMEM limits) happens on a TPU only. For a GPU the same export fails in JAX 0.10: Pallas's
  default GPU backend, Mosaic GPU, has no ``dot_general`` at the lane level these kernels are
  written in, needs copies of whole warpgroups, and whole-sequence blocks exceed shared
  memory (T16 B8 H128: 663 KB against 232 KB). So on a GPU backend ``"pallas"`` is not
  available (``backend_reason``; ``interpret=True`` still runs).

* TPU (Mosaic): the kernels use no grid and default (whole-array) BlockSpecs, so every operand
  (``gx``, the states, the stored gates, their cotangents) is copied into VMEM whole: fine
  for small ``T·B·H`` only. For real sizes keep the per-step arrays in HBM
  (``memory_space=pl.ANY``) and DMA a chunk of steps at a time with double buffering
  (``pltpu.make_async_copy``), or grid over time chunks (``"arbitrary"``) with the carry in
  VMEM scratch (``scratch_shapes=[pltpu.VMEM((B, H), jnp.float32)]``) and a ``"parallel"``
  grid axis over batch blocks. The last two dimensions of every block must tile by
  ``(8, 128)`` (float32; ``(16, 128)`` for bfloat16): pad ``B`` to a multiple of 8 and ``H``
  to a multiple of 128, so that the gate slices ``z[:, k H:(k + 1) H]`` and the
  concatenations fall on lane-tile boundaries; the ``(T, B, 1)`` mask should become a
  lane-dense array or ``lengths`` in SMEM (``PrefetchScalarGridSpec``). Mosaic has no
  float64. Matmuls ask for ``Precision.HIGHEST`` (full float32 on the MXU).
* GPU: the Triton backend is deprecated from JAX 0.11 and Mosaic GPU (Hopper/Blackwell) has
  its own programming model (warpgroups, ``plgpu`` memory spaces); a GPU version needs a
  batch-blocked grid and a rewrite against that API. cuDNN's LSTM
  (``jax.experimental.rnn``) is the GPU fast path for plain LSTMs meanwhile.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq import specs

try:
  from jax.experimental import pallas as pl
except Exception:  # ImportError, or a Pallas that fails to initialise on this JAX
  pl = None

AVAILABLE: bool = pl is not None
"""Whether ``jax.experimental.pallas`` imports on this JAX."""

_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- public API


def reason(cell: Any) -> str | None:
  """``None`` when this module has a kernel for exactly ``cell``'s recurrence, else a short
  reason why not (``"peephole LSTM has no Pallas kernel"``)."""
  if not AVAILABLE:
    return "jax.experimental.pallas does not import on this JAX"
  spec = getattr(cell, "spec", None)
  if spec is None:
    return "a cell without a spec (hand-made) has no Pallas kernel"
  kernel, recur = getattr(cell, "kernel", None), getattr(cell, "recur", None)
  if recur is None or kernel is None or kernel.recur is not recur:
    # Wrappers (recurrent dropout, gradflow) keep the spec but change the recurrence.
    return "the cell's recurrence was changed by a wrapper; only built-in cells have a " \
           "Pallas kernel"
  if type(spec) is specs.LSTMSpec:
    if spec.peephole:
      return "peephole LSTM has no Pallas kernel"
    if spec.coupled:
      return "coupled (CIFG) LSTM has no Pallas kernel"
    if spec.proj_size is not None:
      return "projected LSTM (proj_size) has no Pallas kernel"
    return _activations_reason("LSTM", (("gate_fn", spec.gate_fn, jax.nn.sigmoid),
                                        ("cell_fn", spec.cell_fn, jnp.tanh),
                                        ("hidden_fn", spec.hidden_fn, jnp.tanh)))
  if type(spec) is specs.GRUSpec:
    return _activations_reason("GRU", (("gate_fn", spec.gate_fn, jax.nn.sigmoid),
                                       ("activation", spec.activation, jnp.tanh)))
  return f"{getattr(spec, 'name', type(spec).__name__)} cell has no Pallas kernel"


def backend_reason() -> str | None:
  """Why the kernels cannot be compiled for JAX's default backend, or ``None``: they run on
  TPU (Mosaic) and, interpreted, on CPU; they do not lower for GPUs (module docstring)."""
  backend = jax.default_backend()
  if backend in ("cpu", "tpu"):
    return None
  return (f"the Pallas kernels lower for TPU (Mosaic) and run interpreted on CPU; they do "
          f"not lower for the {backend!r} backend (Mosaic GPU)")


def run_for(cell: Any, interpret: Any = None) -> Callable[..., Any]:
  """The whole-sequence ``run`` of ``cell``'s recurrent half with Pallas kernels:
  ``run(params, carry, gxs, lengths, reverse, unroll) -> (carry, ys)``, the contract of
  ``Kernel.run`` (``jaxseq.kernels.xla.fused_run``).

  Args:
    cell: a cell for which ``reason(cell)`` is ``None`` (else ``ValueError``).
    interpret: ``pallas_call``'s ``interpret``: ``None`` interprets on the CPU backend
      (``jax.default_backend() == "cpu"``) and compiles elsewhere; ``True``/``False``; or a
      ``jax.experimental.pallas.tpu.InterpretParams``. Compiling where ``backend_reason()``
      is not ``None`` (a GPU) is a ``ValueError``.

  Returns:
    ``run``: ``gxs`` is the time-major ``cell.project(params, xs)``, ``(T, *batch, G)``
    with any number of batch axes; ``carry`` the cell's carry (``LSTMState(h, c)`` or
    ``h``), in ``gxs``'s dtype; ``lengths`` ``None`` or integers of the batch shape (steps at
    or past them keep the carry and output zeros); ``reverse`` runs ``t = T-1 .. 0``;
    ``unroll`` is the in-kernel loop's unroll factor. The same ``cell`` configuration and
    ``interpret`` give the same ``run`` object (so ``jit`` caches keyed on it are reused).
  """
  why = reason(cell)
  if why is not None:
    raise ValueError(f"cell: expected a cell with a Pallas kernel, got one without ({why})")
  if interpret is False or (interpret is None and jax.default_backend() != "cpu"):
    if backend_reason() is not None:
      raise ValueError(f"interpret: expected True (or a TPU InterpretParams) on this "
                       f"backend, got {interpret!r} ({backend_reason()})")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  spec = cell.spec
  family = "lstm" if type(spec) is specs.LSTMSpec else (
      "gru_reset_after" if spec.reset_after else "gru_reset_before")
  return _run(family, interpret)


# ----------------------------------------------------------------------------- the run


class _Config(NamedTuple):
  """Static configuration of one kernel pair (hashable: ``custom_vjp``'s static arg)."""
  family: str
  reverse: bool
  unroll: Any
  interpret: Any


def _activations_reason(name: str, activations) -> str | None:
  for argument, fn, supported in activations:
    if fn is not supported:
      return f"{name} with a {argument} other than {supported.__name__} has no Pallas kernel"
  return None


@functools.lru_cache(maxsize=None)
def _run(family: str, interpret: Any) -> Callable[..., Any]:
  def run(params, carry, gxs, lengths, reverse, unroll):
    return _run_sequence(family, interpret, params, carry, gxs, lengths, reverse, unroll)
  run.options = {"family": family, "interpret": interpret}
  return run


def _run_sequence(family, interpret, params, carry, gxs, lengths, reverse, unroll):
  gxs = jnp.asarray(gxs)
  dtype = gxs.dtype
  num_steps, batch_shape, width = gxs.shape[0], gxs.shape[1:-1], gxs.shape[-1]
  batch = math.prod(batch_shape)
  leaves = _carry_leaves(family, carry)
  weights = _weights(family, params)
  _check_dtypes(family, dtype, leaves, weights)
  size = leaves[0].shape[-1]
  if num_steps == 0 or batch == 0:
    ys = jnp.zeros((num_steps,) + batch_shape + (size,), dtype)
    return carry, ys

  gx = gxs.reshape(num_steps, batch, width)
  flat = tuple(leaf.reshape(batch, size) for leaf in leaves)
  valid = None
  if lengths is not None:
    lengths = jnp.asarray(lengths).reshape(batch)
    valid = (jnp.arange(num_steps)[:, None] < lengths[None, :]).astype(dtype)[..., None]
  config = _Config(family, bool(reverse), unroll, interpret)
  states = _sequence(config, weights, flat, gx, valid)

  last = 0 if reverse else num_steps - 1
  final = tuple(s[last].reshape(batch_shape + (size,)) for s in states)
  hs = states[0]
  ys = hs if valid is None else jnp.where(valid > 0, hs, 0)
  ys = ys.reshape((num_steps,) + batch_shape + (size,))
  if family == "lstm":
    return carry._replace(h=final[0], c=final[1]), ys
  return final[0], ys


def _carry_leaves(family, carry):
  if family == "lstm":
    return (jnp.asarray(carry.h), jnp.asarray(carry.c))
  return (jnp.asarray(carry),)


def _weights(family, params):
  """The recurrent weights a kernel reads: ``(w_hh,)``; ``(w_hh, b_hn)`` for the
  reset-after GRU (zeros when it has no bias; adding zero is exact)."""
  w_hh = jnp.asarray(params["w_hh"])
  if family != "gru_reset_after":
    return (w_hh,)
  b_hn = params.get("b_hn")
  size = w_hh.shape[0]
  b_hn = jnp.zeros((size,), w_hh.dtype) if b_hn is None else jnp.asarray(b_hn)
  return (w_hh, b_hn.reshape(1, size))


def _check_dtypes(family, dtype, leaves, weights):
  """``h`` in the compute dtype (``gxs``'s); the LSTM's ``c`` in it or a wider float (the
  cells' float32 cell state under bfloat16 compute); floating weights."""
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"gxs: expected a floating-point array, got dtype {dtype}")
  if leaves[0].dtype != dtype:
    raise TypeError(f"carry: expected h in the dtype of gxs ({dtype}) for the Pallas "
                    f"kernel, got {leaves[0].dtype}")
  if family == "lstm" and jnp.promote_types(leaves[1].dtype, dtype) != leaves[1].dtype:
    raise TypeError(f"carry: expected c in the dtype of gxs ({dtype}) or a wider float for "
                    f"the Pallas kernel, got {leaves[1].dtype}")
  for w in weights:
    if not jnp.issubdtype(w.dtype, jnp.floating):
      raise TypeError(f"params: expected floating-point recurrent weights for the Pallas "
                      f"kernel, got {w.dtype}")


# ----------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sequence(config, weights, carry, gx, valid):
  """The carried states of every step, ``(hs,)`` or ``(hs, cs)``, each ``(T, B, H)``."""
  return _FAMILIES[config.family].forward(config, weights, carry, gx, valid, False)[0]


def _sequence_fwd(config, weights, carry, gx, valid):
  states, gates = _FAMILIES[config.family].forward(config, weights, carry, gx, valid, True)
  return states, (weights, carry, valid, states, gates)


def _sequence_bwd(config, residuals, d_states):
  weights, carry, valid, states, gates = residuals
  family = _FAMILIES[config.family]
  previous = tuple(_previous(config, s, c) for s, c in zip(states, carry))
  d_gx, d_carry = family.backward(config, weights, valid, states, previous, gates, d_states)
  d_weights = family.weight_grads(weights, previous, gates, d_gx)
  d_valid = None if valid is None else jnp.zeros_like(valid)
  return d_weights, d_carry, d_gx, d_valid


_sequence.defvjp(_sequence_fwd, _sequence_bwd)


def _previous(config, states, initial):
  """The carry before each step, ``(T, B, H)``: ``initial`` at the first processed step."""
  if config.reverse:
    return jnp.concatenate([states[1:], initial[None]])
  return jnp.concatenate([initial[None], states[:-1]])


def _outer(a, d, dtype):
  """``sum_t a_t^T d_t``: one matmul over ``T·B`` rows, computed and returned in ``dtype``
  (the weight's: float32 sums under bfloat16 compute)."""
  return jnp.einsum("tbh,tbg->hg", a.astype(dtype), d.astype(dtype), precision=_HIGHEST)


def _cast(weights, dtype):
  """The weights in the compute dtype, as the products read them."""
  return tuple(w.astype(dtype) for w in weights)


# ----------------------------------------------------------------------------- in-kernel helpers


def _dot(a, b):
  accumulate = jnp.promote_types(a.dtype, jnp.float32)
  return jnp.dot(a, b, precision=_HIGHEST, preferred_element_type=accumulate).astype(a.dtype)


def _blocks(x, count):
  size = x.shape[-1] // count
  return [x[:, k * size:(k + 1) * size] for k in range(count)]


def _valid_at(valid_ref, t):
  """The ``(B, 1)`` mask of step ``t``, or ``None`` without ``lengths``."""
  return None if valid_ref is None else valid_ref[t] > 0


def _keep(valid_t, new, old):
  return new if valid_t is None else jnp.where(valid_t, new, old)


def _sigmoid_grad(s):
  return s * (1 - s)


def _tanh_grad(y):
  return 1 - y * y


def _loop(config, num_steps, body, init, backward=False):
  """``fori_loop`` over the steps in processing order (``backward``: the opposite order);
  ``body(t, carry)`` gets the time index."""
  def step(s, carry):
    order = num_steps - 1 - s if backward else s
    t = num_steps - 1 - order if config.reverse else order
    return body(t, carry)
  return lax.fori_loop(0, num_steps, step, init, unroll=config.unroll)


def _call(config, name, kernel, valid, inputs, out_shapes):
  """``pallas_call`` of ``kernel(valid_ref, *input_refs, *output_refs)`` with whole-array
  blocks; ``valid_ref`` is ``None`` (and no input) without ``lengths``."""
  if valid is None:
    body, args = functools.partial(kernel, None), inputs
  else:
    body, args = kernel, (valid,) + tuple(inputs)
  return pl.pallas_call(body, out_shape=out_shapes, interpret=config.interpret,
                        name=f"jaxseq_{config.family}_{name}")(*args)


def _shape(num_steps, like, width=None):
  return jax.ShapeDtypeStruct((num_steps, like.shape[-2], width or like.shape[-1]),
                              like.dtype)


# ----------------------------------------------------------------------------- LSTM


def _lstm_forward(config, weights, carry, gx, valid, save):
  (w_hh,), (h0, c0) = _cast(weights, gx.dtype), carry
  num_steps = gx.shape[0]

  def kernel(valid_ref, gx_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, gates_ref=None):
    w = w_ref[...]

    def body(t, carry):
      h, c = carry
      z = gx_ref[t] + _dot(h, w)
      z_i, z_f, z_g, z_o = _blocks(z, 4)
      i, f, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jax.nn.sigmoid(z_o)
      g = jnp.tanh(z_g)
      c_new = f.astype(c.dtype) * c + (i * g).astype(c.dtype)   # c: float32 under bf16
      h_new = (o * jnp.tanh(c_new)).astype(h.dtype)
      valid_t = _valid_at(valid_ref, t)
      h_new, c_new = _keep(valid_t, h_new, h), _keep(valid_t, c_new, c)
      hs_ref[t] = h_new
      cs_ref[t] = c_new
      if gates_ref is not None:
        gates_ref[t] = _keep(valid_t, jnp.concatenate([i, f, g, o], axis=-1), 0)
      return h_new, c_new
    _loop(config, num_steps, body, (h0_ref[...], c0_ref[...]))

  outs = (_shape(num_steps, h0), _shape(num_steps, c0))
  if save:
    outs += (_shape(num_steps, gx),)
  outs = _call(config, "forward", kernel, valid, (gx, w_hh, h0, c0), outs)
  return tuple(outs[:2]), (outs[2] if save else None)


def _lstm_backward(config, weights, valid, states, previous, gates, d_states):
  (w_hh,), (hs, cs), (_, c_prev) = _cast(weights, gates.dtype), states, previous
  d_hs, d_cs = d_states
  num_steps = cs.shape[0]

  def kernel(valid_ref, gates_ref, cs_ref, c_prev_ref, d_hs_ref, d_cs_ref, w_t_ref,
             d_gx_ref, d_h0_ref, d_c0_ref):
    w_t = w_t_ref[...]

    def body(t, carry):
      d_h, d_c = carry
      # In c's dtype (float32 under bfloat16 compute); d_z is rounded to the gates' dtype.
      d_h = d_h + d_hs_ref[t]
      d_c_total = d_c + d_cs_ref[t]
      i, f, g, o = (a.astype(d_c.dtype) for a in _blocks(gates_ref[t], 4))
      tanh_c = jnp.tanh(cs_ref[t])
      d_hc = d_h.astype(d_c.dtype)
      d_c = d_c_total + d_hc * o * _tanh_grad(tanh_c)
      d_z = jnp.concatenate([d_c * g * _sigmoid_grad(i), d_c * c_prev_ref[t] * _sigmoid_grad(f),
                             d_c * i * _tanh_grad(g), d_hc * tanh_c * _sigmoid_grad(o)],
                            axis=-1).astype(d_gx_ref.dtype)
      d_h_prev = _dot(d_z, w_t)
      valid_t = _valid_at(valid_ref, t)
      d_gx_ref[t] = _keep(valid_t, d_z, 0)
      return _keep(valid_t, d_h_prev, d_h), _keep(valid_t, d_c * f, d_c_total)
    zeros = (jnp.zeros(d_h0_ref.shape, d_h0_ref.dtype), jnp.zeros(d_c0_ref.shape, d_c0_ref.dtype))
    d_h0, d_c0 = _loop(config, num_steps, body, zeros, backward=True)
    d_h0_ref[...] = d_h0
    d_c0_ref[...] = d_c0

  outs = (_shape(num_steps, gates), jax.ShapeDtypeStruct(hs.shape[1:], hs.dtype),
          jax.ShapeDtypeStruct(cs.shape[1:], cs.dtype))
  d_gx, d_h0, d_c0 = _call(config, "backward", kernel, valid,
                           (gates, cs, c_prev, d_hs, d_cs, w_hh.T), outs)
  return d_gx, (d_h0, d_c0)


def _lstm_weight_grads(weights, previous, gates, d_gx):
  return (_outer(previous[0], d_gx, weights[0].dtype),)


# ----------------------------------------------------------------------------- GRU


def _gru_candidate(family, gx_t, h, hw, b, u_n):
  """``r, z, n`` and (reset-after) ``h W_n + b_{hn}`` of one step, from ``hw = h W``
  (all gates reset-after, ``r, z`` reset-before)."""
  x_r, x_z, x_n = _blocks(gx_t, 3)
  if family == "gru_reset_after":
    h_r, h_z, h_n = _blocks(hw, 3)
    h_n = h_n + b
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    return r, z, jnp.tanh(x_n + r * h_n), h_n
  h_r, h_z = _blocks(hw, 2)
  r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
  return r, z, jnp.tanh(x_n + _dot(r * h, u_n)), None


def _gru_forward(config, weights, carry, gx, valid, save):
  (h0,), num_steps, size = carry, gx.shape[0], carry[0].shape[-1]
  after = config.family == "gru_reset_after"
  weights = _cast(weights, gx.dtype)
  if after:
    inputs = (gx, h0) + weights                            # w_hh (H, 3H), b_hn (1, H)
  else:
    inputs = (gx, h0, weights[0][:, :2 * size], weights[0][:, 2 * size:])  # W_rz, U_n

  def kernel(valid_ref, gx_ref, h0_ref, w_ref, second_ref, hs_ref, gates_ref=None):
    w, second = w_ref[...], second_ref[...]

    def body(t, h):
      r, z, n, h_n = _gru_candidate(config.family, gx_ref[t], h, _dot(h, w),
                                    second if after else None, None if after else second)
      h_new = (1.0 - z) * n + z * h
      valid_t = _valid_at(valid_ref, t)
      h_new = _keep(valid_t, h_new, h)
      hs_ref[t] = h_new
      if gates_ref is not None:
        gates = [r, z, n] + ([h_n] if after else [])
        gates_ref[t] = _keep(valid_t, jnp.concatenate(gates, axis=-1), 0)
      return h_new
    _loop(config, num_steps, body, h0_ref[...])

  outs = (_shape(num_steps, h0),)
  if save:
    outs += (_shape(num_steps, h0, (4 if after else 3) * size),)
  outs = _call(config, "forward", kernel, valid, inputs, outs)
  return (outs[0],), (outs[1] if save else None)


def _gru_backward(config, weights, valid, states, previous, gates, d_states):
  (h_prev,), (d_hs,) = previous, d_states
  num_steps, size = h_prev.shape[0], h_prev.shape[-1]
  after = config.family == "gru_reset_after"
  w_hh = weights[0].astype(h_prev.dtype)
  if after:
    w_ts = (w_hh.T,)                                       # (3H, H)
  else:
    w_ts = (w_hh[:, :2 * size].T, w_hh[:, 2 * size:].T)    # W_rz^T (2H, H), U_n^T (H, H)

  def kernel(valid_ref, gates_ref, h_prev_ref, d_hs_ref, *refs):
    w_t_refs, (d_gx_ref, d_h0_ref) = refs[:-2], refs[-2:]
    w_ts = [ref[...] for ref in w_t_refs]

    def body(t, d_h):
      d_h_total = d_h + d_hs_ref[t]
      h = h_prev_ref[t]
      r, z, n, *h_n = _blocks(gates_ref[t], 4 if after else 3)
      d_n = d_h_total * (1.0 - z) * _tanh_grad(n)
      d_z = d_h_total * (h - n) * _sigmoid_grad(z)
      if after:
        d_r = d_n * h_n[0] * _sigmoid_grad(r)
        d_h = d_h_total * z + _dot(jnp.concatenate([d_r, d_z, d_n * r], axis=-1), w_ts[0])
      else:
        d_rh = _dot(d_n, w_ts[1])
        d_r = d_rh * h * _sigmoid_grad(r)
        d_h = (d_h_total * z + d_rh * r
               + _dot(jnp.concatenate([d_r, d_z], axis=-1), w_ts[0]))
      valid_t = _valid_at(valid_ref, t)
      d_gx_ref[t] = _keep(valid_t, jnp.concatenate([d_r, d_z, d_n], axis=-1), 0)
      return _keep(valid_t, d_h, d_h_total)
    zeros = jnp.zeros(d_h0_ref.shape, d_h0_ref.dtype)
    d_h0_ref[...] = _loop(config, num_steps, body, zeros, backward=True)

  outs = (_shape(num_steps, h_prev, 3 * size),
          jax.ShapeDtypeStruct(h_prev.shape[1:], h_prev.dtype))
  d_gx, d_h0 = _call(config, "backward", kernel, valid, (gates, h_prev, d_hs) + w_ts, outs)
  return d_gx, (d_h0,)


def _gru_weight_grads(weights, previous, gates, d_gx):
  (h_prev,), size = previous, previous[0].shape[-1]
  r, d_n = gates[..., :size], d_gx[..., 2 * size:]
  dtype = weights[0].dtype
  if len(weights) == 2:                                    # reset-after: w_hh, b_hn
    d_hw = jnp.concatenate([d_gx[..., :2 * size], d_n * r], axis=-1)
    return (_outer(h_prev, d_hw, dtype),
            jnp.sum((d_n * r).astype(weights[1].dtype), axis=(0, 1))[None])
  return (jnp.concatenate([_outer(h_prev, d_gx[..., :2 * size], dtype),
                           _outer(r * h_prev, d_n, dtype)], axis=-1),)


class _Family(NamedTuple):
  forward: Callable[..., Any]
  backward: Callable[..., Any]
  weight_grads: Callable[..., Any]


_FAMILIES = {
    "lstm": _Family(_lstm_forward, _lstm_backward, _lstm_weight_grads),
    "gru_reset_after": _Family(_gru_forward, _gru_backward, _gru_weight_grads),
    "gru_reset_before": _Family(_gru_forward, _gru_backward, _gru_weight_grads),
}
