r"""The fused XLA path: a whole-sequence recurrence with a linear-tangent custom derivative.

A cell's recurrent half is written once, as ``equations(params, carry, gx_t, recurrent)``
whose recurrent linear maps all go through ``recurrent(a, w)`` (a matmul for dense cells, a
convolution for conv cells; ``a`` depends on the carry, ``w`` on the params only). The
cell's ``recur`` is ``equations`` with the plain linear map (``recurrence``); ``fused_run``
builds, from the same ``equations``, a whole-sequence run whose derivative is a
``jax.custom_jvp`` with a *linear* tangent rule:

1. the forward scan (the plain recurrence) also keeps, per step, each linear map's left
   operand ``a_t`` and its product ``a_t w``;
2. the weight tangents ``a_t \, dw`` of all steps are one matmul (convolution) over ``T·B``
   rows (frames) each, outside the loop;
3. a linear scan carries only the carry's tangent: ``jax.jvp`` of ``equations`` at the stored
   values, where each linear map returns its stored product (no matmul is recomputed) with
   the tangent ``da \, w`` plus the hoisted ``a \, dw``.

Forward mode is that rule itself (``check_grads(modes=["fwd", "rev"])`` holds, second order
too); values are the plain recurrence's, bit for bit. Reverse mode is JAX's transpose of the
rule, which is the backward of cuDNN, oneDNN or haste: a reverse scan over ``(B, H)``
cotangents whose only matmul is ``\delta_t W^\top``, then ``dW = A^\top \Delta`` as one
matmul over ``T·B`` rows (and ``dW_{ih} = X^\top \Delta``, ``dX = \Delta W_{ih}^\top`` in the
transpose of the cell's input half, outside the kernel).

``input_sums`` removes a duplicate: when a product is added to the input half's ``gx`` right
away (``z = gx + h W_{hh}``), its hoisted tangent is added to ``gx``'s tangent instead, so the
backward scan writes the cotangent ``\Delta`` once and both ``dW_{ih}`` and ``dW_{hh}`` read it.

Mixed precision: every linear map runs through ``mixed`` (``w`` is a param as stored, cast
to ``a``'s compute dtype), and the hoisted weight tangents are taken in the params' dtype,
so under bfloat16 compute ``dW = A^\top \Delta`` is accumulated and returned in float32.

``recompute``: the pointwise part of each step (gate activations and their derivatives) is
recomputed in the backward scan from the stored ``gx_t``, products and carry (``True``, the
default: measured faster on CPU and lighter, ``benchmarks/results/kernels.md``), or stored as
residuals by a separate scan in the forward pass (``False``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Equations = Callable[..., Any]   # equations(params, carry, gx_t, recurrent) -> (carry, y_t)
Linear = Callable[[jax.Array, jax.Array], jax.Array]


class InputSum(NamedTuple):
  """Columns ``[start, stop)`` of the ``product``-th call's result of ``recurrent`` are added
  to ``gx[..., at:at + stop - start]`` and used only through that sum."""
  product: int
  start: int
  stop: int
  at: int


def matmul(a: jax.Array, w: jax.Array) -> jax.Array:
  """``a @ w`` over any leading axes of ``a``, computed as one 2-D product of the rows
  ``a.reshape(-1, D)``: the linear map of the dense cells. On XLA:CPU the gradient of a
  product with two or more leading axes (``(T, B, D) @ (D, G)``, whose weight gradient
  contracts two axes) ran 1.1-1.9x slower than that of the same product on the flattened
  rows, forward+backward (``benchmarks/results/products.md``)."""
  if a.ndim <= 2:
    return jnp.matmul(a, w)
  return jnp.matmul(a.reshape(-1, a.shape[-1]), w).reshape(a.shape[:-1] + w.shape[-1:])


def mixed(linear: Linear) -> Linear:
  """``linear`` computed in the dtype of its operand ``a``: ``linear(a, w.astype(a.dtype))``,
  the map every recurrent and input product goes through, ``w`` being a param as stored.

  Where the dtypes differ (bfloat16 compute on float32 params) the weight's tangent term is
  ``linear(a, dw)`` in ``w``'s dtype, so the weight gradient, ``a^T`` times the cotangent,
  is accumulated and returned in float32, never rounded to bfloat16 on the way."""
  def apply(a, w):
    if not wider(w, a):
      return linear(a, w)    # the usual promotion
    return _mixed(linear, a, w)
  return apply


def wider(w: jax.Array, a: jax.Array) -> bool:
  """Whether ``w``'s dtype is strictly wider than ``a``'s (a float32 param under bfloat16
  compute): then ``w`` is cast down for the value and kept for its gradient."""
  return w.dtype != a.dtype and jnp.promote_types(a.dtype, w.dtype) == w.dtype


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _mixed(linear, a, w):
  return linear(a, w.astype(a.dtype))


@_mixed.defjvp
def _mixed_jvp(linear, primals, tangents):
  a, w = primals
  da, dw = tangents
  return _mixed(linear, a, w), linear(da, w.astype(a.dtype)) + _weight_term(linear, a, dw)


def _weight_term(linear, a, dw):
  """``linear(a, dw)`` (linear in ``dw``) in ``dw``'s dtype, returned in ``a``'s."""
  return linear(a.astype(dw.dtype), dw).astype(a.dtype)


def recurrence(equations: Equations, linear: Linear = matmul) -> Callable[..., Any]:
  """The recurrent half ``recur(params, carry, gx_t)`` of ``equations``: the plain
  ``linear`` map (computed in its operand's dtype, ``mixed``)."""
  linear = mixed(linear)

  def recur(params, carry, gx_t):
    return equations(params, carry, gx_t, linear)
  return recur


def fused_run(equations: Equations, linear: Linear = matmul,
              input_sums: Sequence[InputSum] = (), recompute: bool = True) -> Callable[..., Any]:
  """A ``Kernel.run`` for the recurrence ``equations`` (see the module docstring):
  ``run(params, carry, gxs, lengths, reverse, unroll) -> (carry, ys)`` over the time-major
  ``gxs``; steps at or past ``lengths`` keep the carry and output zeros.

  ``linear(a, w)`` must accept any leading axes on ``a`` (time is added to the batch axes
  when the weight tangents are hoisted), and its output columns must be those of ``w``
  (``linear(a, w)[..., i:j] == linear(a, w[..., i:j])``: a matmul, a convolution)."""
  config = _Config(equations, linear, tuple(InputSum(*s) for s in input_sums), recompute)

  def run(params, carry, gxs, lengths, reverse, unroll):
    valid = None
    if lengths is not None:
      num_steps = jax.tree.leaves(gxs)[0].shape[0]
      valid = jnp.arange(num_steps).reshape((-1,) + (1,) * lengths.ndim) < lengths
    return _fused(config, reverse, unroll, params, carry, gxs, valid)
  run.options = config._asdict()
  return run


def variant(run: Callable[..., Any], **options: Any) -> Callable[..., Any]:
  """The ``fused_run`` of the same equations with some options changed, e.g.
  ``variant(cell.kernel.run, recompute=False)`` (benchmarks)."""
  return fused_run(**{**run.options, **options})


class _Config(NamedTuple):
  equations: Equations
  linear: Linear
  input_sums: tuple
  recompute: bool


def _mask(valid_t, new, old):
  """``new`` where the step is valid, else ``old`` (leaf by leaf)."""
  if valid_t is None:
    return new
  def keep(n, o):
    return jnp.where(valid_t.reshape(valid_t.shape + (1,) * (n.ndim - valid_t.ndim)), n, o)
  return jax.tree.map(keep, new, old)


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


class _Recorder:
  """The forward scan's linear map: the plain product, keeping ``a`` and the product."""

  def __init__(self, linear):
    self.linear, self.operands, self.products = mixed(linear), [], []

  def __call__(self, a, w):
    product = self.linear(a, w)
    self.operands.append(a)
    self.products.append(product)
    return product


class _WeightRecorder:
  """Collects the ``w`` of each call (a function of the params only, in their dtype)."""

  def __init__(self, linear):
    self.linear, self.weights = mixed(linear), []

  def __call__(self, a, w):
    self.weights.append(w)
    return self.linear(a, w)


class _Stored:
  """The tangent scan's linear map: the ``k``-th call returns the stored product, plus the
  hoisted weight term ``injected[k]`` (zero primal, tangent ``a_t dw``) on the column
  ranges ``columns[k]`` not folded into ``gx`` (``None``: all columns). A matmul whose
  weight's transpose ``transposed[k]`` is given takes its tangent ``da w`` from it
  (``_stored_product``)."""

  def __init__(self, linear, products, injected, columns, transposed):
    self.linear, self.products, self.injected, self.columns = (linear, products, injected,
                                                               columns)
    self.transposed = transposed
    self.calls = 0

  def __call__(self, a, w):
    k = self.calls
    self.calls += 1
    if self.transposed[k] is None:
      out = _stored_linear(self.linear, a, w, self.products[k])
    else:
      out = _stored_product(a, self.transposed[k], self.products[k])
    injected, columns = self.injected[k], self.columns[k]
    if injected is None:
      return out
    if columns is not None:
      pieces, offset = [], 0
      for start, stop in columns:
        pieces.append(_placed(injected[..., offset:offset + stop - start], start,
                              out.shape[-1]))
        offset += stop - start
      injected = functools.reduce(jnp.add, pieces)
    return _plus_tangent(out, injected)


@jax.custom_jvp
def _plus_tangent(out, injected):
  """``out``, whose tangent is ``out``'s plus ``injected``'s. ``injected`` is zero (its
  tangent is the hoisted weight term), so the value skips the add, and the zeros and their
  placement are dead code in the backward scan's recomputed step."""
  del injected
  return out


@_plus_tangent.defjvp
def _plus_tangent_jvp(primals, tangents):
  return primals[0], tangents[0] + tangents[1]


def _placed(x: jax.Array, start: int, width: int) -> jax.Array:
  """``x`` at columns ``start:start + x.shape[-1]`` of ``width`` columns, zeros elsewhere
  (a pad, which fuses into the add and transposes to a slice; a scatter would not)."""
  if start == 0 and x.shape[-1] == width:
    return x
  pads = [(0, 0)] * (x.ndim - 1) + [(start, width - start - x.shape[-1])]
  return jnp.pad(x, pads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _stored_linear(linear, a, w, product):
  """``linear(a, w)``, already computed (``product``); its tangent is ``linear(da, w)``
  only: the ``linear(a, dw)`` term is hoisted out of the loop by the caller."""
  del a, w
  return product


@_stored_linear.defjvp
def _stored_linear_jvp(linear, primals, tangents):
  a, w, product = primals
  return product, linear(tangents[0], w.astype(product.dtype))


@jax.custom_jvp
def _stored_product(a, w_t, product):
  """``a @ w_t.T``, already computed (``product``), for a matmul's weight given transposed
  (``w_t``, ``(G, K)``, computed once outside the loop): its tangent ``da w`` contracts
  ``w_t``'s second axis, so JAX's transpose of it, the backward scan's ``\delta_t W^\top``,
  is the plain product ``\delta_t w_t``. Given ``w`` itself, that product contracts ``w``'s
  columns, which on XLA:CPU ran 1.26-1.32x slower in scans at the reference and ``small`` sizes
  (``benchmarks/results/products.md``)."""
  del a, w_t
  return product


@_stored_product.defjvp
def _stored_product_jvp(primals, tangents):
  _, w_t, product = primals
  da = tangents[0]
  return product, lax.dot_general(da, w_t, (((da.ndim - 1,), (1,)), ((), ())))


def _forward(config, params, carry, gxs, valid, reverse, unroll, record):
  """The recurrence over all steps. The next step's ``gx`` is sliced one step ahead into
  the loop's carry: XLA:CPU fuses a step's slice of the stacked ``gxs`` into every
  elementwise consumer, and those fusions (a dynamic slice, then one gate's columns) ran
  2x slower than the same math on a plain ``(B, G*H)`` buffer (LSTM B16 H128)."""
  num_steps = jax.tree.leaves(gxs)[0].shape[0]
  at = lambda t: jax.tree.map(
      lambda g: lax.dynamic_index_in_dim(g, jnp.clip(t, 0, num_steps - 1), keepdims=False),
      gxs)

  def body(state, inputs):
    carry, gx_t = state
    t, valid_t = inputs
    gx_next = at(t - 1 if reverse else t + 1)
    linear = _Recorder(config.linear) if record else mixed(config.linear)
    new_carry, y = config.equations(params, carry, gx_t, linear)
    new_carry = _mask(valid_t, new_carry, carry)
    y = _mask(valid_t, y, _zeros_like(y))
    if not record:
      return (new_carry, gx_next), y
    return (new_carry, gx_next), (y, carry, linear.operands, linear.products)
  first = at(num_steps - 1 if reverse else 0)
  (carry, _), out = lax.scan(body, (carry, first), (jnp.arange(num_steps), valid),
                             reverse=reverse, unroll=unroll)
  return carry, out


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _fused(config, reverse, unroll, params, carry, gxs, valid):
  return _forward(config, params, carry, gxs, valid, reverse, unroll, record=False)


def _unfolded(width: int, sums: list) -> list | None:
  """The column ranges ``[(start, stop), ...]`` of a product of ``width`` columns that
  are not folded into ``gx``; ``None`` when none is folded."""
  if not sums:
    return None
  ranges, start = [], 0
  for s in sorted(sums, key=lambda s: s.start):
    if s.start > start:
      ranges.append((start, s.start))
    start = max(start, s.stop)
  if start < width:
    ranges.append((start, width))
  return ranges


@_fused.defjvp
def _fused_jvp(config, reverse, unroll, primals, tangents):
  params, carry, gxs, valid = primals
  d_params, d_carry, d_gxs, _ = tangents
  equations, linear = config.equations, config.linear
  final, (ys, carries, operands, products) = _forward(
      config, params, carry, gxs, valid, reverse, unroll, record=True)

  # The weight tangents of every step at once: one product over T·B rows per weight (per
  # block of output columns when some are folded into gx, so that each block's weight
  # gradient reads its cotangent where it lies, without assembling one first).
  def weights(p):
    recorder = _WeightRecorder(linear)
    equations(p, carry, jax.tree.map(lambda g: g[0], gxs), recorder)
    return recorder.weights
  primal_weights, d_weights = jax.jvp(weights, (params,), (d_params,))
  # A matmul's weight, transposed once here, in the products' dtype (``_stored_product``).
  transposed = [jnp.swapaxes(w, 0, 1).astype(p.dtype)
                if linear in (matmul, jnp.matmul) and jnp.ndim(w) == 2 else None
                for w, p in zip(primal_weights, products)]
  # In the weights' dtype (float32 weight gradients under bfloat16 compute, as ``mixed``).
  hoisted = lambda a, dw, p: _weight_term(linear, a, dw).astype(p.dtype)
  injected, columns = [], []
  d_gxs = jnp.asarray(d_gxs)
  for k, (a, dw, p) in enumerate(zip(operands, d_weights, products)):
    sums = [s for s in config.input_sums if s.product == k]
    for s in sums:
      d_gxs = d_gxs + _placed(hoisted(a, dw[..., s.start:s.stop], p), s.at,
                              d_gxs.shape[-1])
    rest = _unfolded(p.shape[-1], sums)
    columns.append(rest)
    if rest is None:
      injected.append(hoisted(a, dw, p))
    elif rest:
      injected.append(hoisted(a, jnp.concatenate([dw[..., i:j] for i, j in rest], -1), p))
    else:
      injected.append(None)

  def step(carry_prev, gx_t, zero_t, params, products_t):
    return equations(params, carry_prev, gx_t,
                     _Stored(linear, products_t, zero_t, columns, transposed))
  if config.recompute:
    step = jax.checkpoint(step)

  def body(d_carry, inputs):
    carry_prev, gx_t, d_gx_t, products_t, injected_t, valid_t = inputs
    zero_t = _zeros_like(injected_t)
    _, (d_new, d_y) = jax.jvp(
        lambda c, g, z, p: step(c, g, z, p, products_t),
        (carry_prev, gx_t, zero_t, params), (d_carry, d_gx_t, injected_t, d_params))
    d_new = _mask(valid_t, d_new, d_carry)
    d_y = _mask(valid_t, d_y, _zeros_like(d_y))
    return d_new, d_y

  d_final, d_ys = lax.scan(body, d_carry,
                           (carries, gxs, d_gxs, products, injected, valid),
                           reverse=reverse, unroll=unroll)
  return (final, ys), (d_final, d_ys)
