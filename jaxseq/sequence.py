"""Backpropagation through time: ``unroll`` scans a cell's step over a sequence."""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxseq import _checks
from jaxseq.cells.base import Cell


def feature_ndim(cell: Cell) -> int:
  """Rank of one step's input without batch axes (1 for dense cells, 3 for 2-D conv cells)."""
  return (cell.spec or {}).get("feature_ndim", 1)


def unroll(cell: Cell, params: Any, xs: jax.Array, carry: Any = None,
           lengths: jax.Array | None = None, reverse: bool = False, time_major: bool = False,
           unroll: int | bool = 1, remat: bool | int = False) -> tuple[Any, Any]:
  r"""Runs ``cell`` over a sequence with ``jax.lax.scan`` (backpropagation through time).

  Args:
    cell: a ``Cell``.
    params: the cell's parameters.
    xs: inputs ``(*batch, T, *features)`` (``(T, *batch, *features)`` when ``time_major``);
      any number of batch axes, none included.
    carry: initial carry; zeros (``cell.initial_carry``) when ``None``.
    lengths: integer valid lengths, shaped like the batch axes. Outputs past a length are
      zero, inputs there are never read, and the returned carry is the carry after the last
      valid step (the initial carry for an empty sequence).
    reverse: run from the end to the start. With ``lengths`` each sequence runs from its
      last valid step back to step 0, so padding stays at the end. Outputs stay aligned
      with the inputs: ``ys[t]`` is the output computed at input ``xs[t]``.
    time_major: time is the leading axis of ``xs`` and ``ys``.
    unroll: ``lax.scan``'s unroll factor (steps per loop iteration).
    remat: gradient checkpointing for long sequences. ``True``: chunks of
      ``ceil(sqrt(T))`` steps, so backward memory is O(sqrt(T)) carries instead of O(T)
      at the cost of one extra forward pass; an int: that chunk length.

  Returns:
    ``(ys, carry)``: the outputs ``(*batch, T, *out_features)`` and the final carry.
  """
  nf = feature_ndim(cell)
  xs = _checks.float_array("xs", xs)
  if xs.ndim < nf + 1:
    _checks.fail("xs", f"an array of rank >= {nf + 1} (*batch, T, *features)",
                 f"shape {tuple(xs.shape)}")
  if not isinstance(reverse, bool):
    _checks.fail("reverse", "a bool", repr(reverse), TypeError)
  if not isinstance(time_major, bool):
    _checks.fail("time_major", "a bool", repr(time_major), TypeError)
  if isinstance(unroll, bool):  # lax.scan's unroll=True unrolls fully; False means 1
    unroll = True if unroll else 1
  else:
    unroll = _checks.positive_int("unroll", unroll)
  chunk = _chunk_length(remat, xs.shape[0 if time_major else xs.ndim - nf - 1])

  time_axis = 0 if time_major else xs.ndim - nf - 1
  xs = jnp.moveaxis(xs, time_axis, 0)
  num_steps = xs.shape[0]
  if num_steps == 0:
    _checks.fail("xs", "at least one time step", f"shape {tuple(xs.shape)} with T = 0")
  batch_shape = tuple(xs.shape[1:xs.ndim - nf])
  _checks.cell_params(cell, params, xs.shape[-1])
  lengths = _checks.lengths(lengths, batch_shape, num_steps)
  if carry is None:
    carry = cell.initial_carry(params, batch_shape)
    # A step computing in a wider dtype than the params (float64 inputs, say) would change
    # the carry's dtype inside the scan: start from the step's own output dtypes.
    out = jax.eval_shape(cell.step, params, carry, xs[0])[0]
    carry = jax.tree.map(lambda c, o: c.astype(o.dtype), carry, out)
  else:
    _checks.carry(cell, params, carry, batch_shape)

  carry, ys = _scan(cell.step, params, carry, xs, lengths, reverse, unroll, chunk)
  ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
  return ys, carry


def _chunk_length(remat: bool | int, num_steps: int) -> int | None:
  if remat is False:
    return None
  if remat is True:
    return max(1, math.isqrt(max(num_steps - 1, 0)) + 1)  # ceil(sqrt(T))
  return _checks.positive_int("remat", remat)


def _broadcast_to_leaf(mask: jax.Array, leaf: jax.Array) -> jax.Array:
  """Appends unit axes to a batch-shaped mask so that it broadcasts against ``leaf``."""
  return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _scan(step, params, carry, xs, lengths, reverse, unroll, chunk):
  # jit with the step as a static argument: eager calls reuse the compiled scan instead of
  # re-tracing it every time (inside an outer jit this is simply inlined).
  num_steps = xs.shape[0]
  total = num_steps if chunk is None else -(-num_steps // chunk) * chunk
  limit = lengths
  if total != num_steps:  # pad to whole chunks; padded steps are masked out
    xs = jnp.concatenate([xs, jnp.zeros((total - num_steps,) + xs.shape[1:], xs.dtype)])
    limit = num_steps if lengths is None else lengths

  def body(carry, inputs):
    t, x_t = inputs
    if limit is None:
      return step(params, carry, x_t)
    valid = jnp.asarray(t < limit)
    # Zero the padding before the step reads it, so garbage there (inf, nan) cannot reach
    # the valid results or their gradients.
    x_t = jnp.where(_broadcast_to_leaf(valid, x_t), x_t, 0)
    new_carry, y = step(params, carry, x_t)
    keep = lambda new, old: jnp.where(_broadcast_to_leaf(valid, new), new, old)
    new_carry = jax.tree.map(keep, new_carry, carry)
    y = jax.tree.map(lambda y: keep(y, jnp.zeros_like(y)), y)
    return new_carry, y

  ts = jnp.arange(total)
  if chunk is None:
    return lax.scan(body, carry, (ts, xs), reverse=reverse, unroll=unroll)

  num_chunks = total // chunk
  split = lambda a: a.reshape((num_chunks, chunk) + a.shape[1:])

  @jax.checkpoint
  def chunk_body(carry, inputs):
    return lax.scan(body, carry, inputs, reverse=reverse, unroll=unroll)

  carry, ys = lax.scan(chunk_body, carry, (split(ts), split(xs)), reverse=reverse)
  ys = jax.tree.map(lambda y: y.reshape((total,) + y.shape[2:])[:num_steps], ys)
  return carry, ys
