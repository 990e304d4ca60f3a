r"""Sequence losses: per-step losses reduced over the valid steps only.

For a batch of sequences with valid lengths ``T_b`` and per-step losses ``\ell_{b,t}``::

    "sum":  L = \sum_b \sum_{t < T_b} \ell_{b,t}
    "mean": L = (\sum_b \sum_{t < T_b} \ell_{b,t}) / \sum_b T_b
    "none": \ell_{b,t}, zero at padded steps

Gradient clipping is optax's ``clip_by_global_norm``; see ``examples/``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxseq import _checks

REDUCTIONS = ("mean", "sum", "none")


def sequence_mask(lengths: jax.Array, num_steps: int, time_major: bool = False) -> jax.Array:
  """Boolean mask, ``True`` at valid steps: ``(*batch, T)`` (``(T, *batch)`` time-major)."""
  lengths = jnp.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    _checks.fail("lengths", "an integer array", f"dtype {lengths.dtype}", TypeError)
  mask = jnp.arange(num_steps) < lengths[..., None]
  return jnp.moveaxis(mask, -1, 0) if time_major else mask


def _valid_steps(step_shape: tuple[int, ...], lengths, mask, reduction: str,
                 time_major: bool) -> jax.Array:
  """Checks the arguments; returns the mask of valid steps, shaped ``step_shape``."""
  _checks.choice("reduction", reduction, REDUCTIONS)
  step_shape = tuple(step_shape)
  if lengths is not None and mask is not None:
    raise ValueError("lengths, mask: expected at most one of them, got both")
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    batch = step_shape[1:] if time_major else step_shape[:-1]
    if tuple(lengths.shape) != tuple(batch):
      _checks.fail("lengths", f"shape {tuple(batch)}", f"shape {tuple(lengths.shape)}")
    # Integer dtype and, when concrete, values in [0, T], as unroll insists.
    lengths = _checks.lengths(lengths, batch, step_shape[0 if time_major else -1])
    mask = sequence_mask(lengths, step_shape[0 if time_major else -1], time_major)
  if mask is None:
    mask = jnp.ones(step_shape, bool)
  elif tuple(jnp.shape(mask)) != tuple(step_shape):
    _checks.fail("mask", f"shape {tuple(step_shape)}", f"shape {tuple(jnp.shape(mask))}")
  return jnp.asarray(mask)


def _zero_padding(mask: jax.Array, x: jax.Array) -> jax.Array:
  """``x`` (steps with trailing features) with padded steps zeroed before any loss reads
  them: nan/inf there would otherwise make the gradients nan (0 * nan), masked or not."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x, 0)


def _reduce(per_step: jax.Array, mask: jax.Array, reduction: str) -> jax.Array:
  per_step = jnp.where(mask, per_step, 0.0)
  if reduction == "none":
    return per_step
  total = per_step.sum()
  if reduction == "sum":
    return total
  return total / jnp.maximum(jnp.sum(mask), 1)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          lengths: jax.Array | None = None, mask: jax.Array | None = None,
                          reduction: str = "mean", time_major: bool = False) -> jax.Array:
  r"""Per-step softmax cross-entropy ``-\log softmax(logits_t)[y_t]``.

  Args:
    logits: ``(*batch, T, K)``.
    labels: integer class ids ``(*batch, T)`` or (soft) one-hot ``(*batch, T, K)``.
    lengths / mask: valid steps; ``"mean"`` averages over valid steps only.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
  """
  logits = _checks.float_array("logits", logits)
  labels = jnp.asarray(labels)
  integer_labels = jnp.issubdtype(labels.dtype, jnp.integer)
  if integer_labels and labels.shape != logits.shape[:-1]:
    _checks.fail("labels", f"integer labels of shape {tuple(logits.shape[:-1])}",
                 f"shape {tuple(labels.shape)}")
  if not integer_labels and labels.shape != logits.shape:
    _checks.fail("labels", f"one-hot labels of shape {tuple(logits.shape)}",
                 f"shape {tuple(labels.shape)}")
  valid = _valid_steps(logits.shape[:-1], lengths, mask, reduction, time_major)
  logits = _zero_padding(valid, logits)
  if integer_labels:
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  else:
    per_step = optax.softmax_cross_entropy(logits, _zero_padding(valid, labels))
  return _reduce(per_step, valid, reduction)


def squared_error(predictions: jax.Array, targets: jax.Array, *,
                  lengths: jax.Array | None = None, mask: jax.Array | None = None,
                  reduction: str = "mean", time_major: bool = False) -> jax.Array:
  r"""Per-step least squares ``\frac12 \lVert \hat y_t - y_t \rVert^2`` (summed over features).

  Args:
    predictions, targets: ``(*batch, T, F)``.
    lengths / mask: valid steps; ``"mean"`` averages over valid steps only.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
  """
  predictions = _checks.float_array("predictions", predictions)
  targets = jnp.asarray(targets)
  if targets.shape != predictions.shape:
    _checks.fail("targets", f"shape {tuple(predictions.shape)} (as predictions)",
                 f"shape {tuple(targets.shape)}")
  valid = _valid_steps(predictions.shape[:-1], lengths, mask, reduction, time_major)
  errors = _zero_padding(valid, predictions) - _zero_padding(valid, targets)
  per_step = 0.5 * jnp.sum(errors ** 2, axis=-1)
  return _reduce(per_step, valid, reduction)


def last_valid(ys: jax.Array, lengths: jax.Array | None = None,
               time_major: bool = False) -> jax.Array:
  """The output at each sequence's last valid step (many-to-one): ``(*batch, F)``.

  Without ``lengths`` this is ``ys[..., -1, :]``. A sequence of length 0 gives zeros.
  """
  ys = jnp.asarray(ys)
  if time_major:
    ys = jnp.moveaxis(ys, 0, -2)
  if lengths is None:
    return ys[..., -1, :]
  lengths = jnp.asarray(lengths)
  if tuple(lengths.shape) != tuple(ys.shape[:-2]):
    _checks.fail("lengths", f"shape {tuple(ys.shape[:-2])}", f"shape {tuple(lengths.shape)}")
  # Integer dtype and, when concrete, values in [0, T]: out-of-range lengths were clipped.
  lengths = _checks.lengths(lengths, ys.shape[:-2], ys.shape[-2])
  index = jnp.clip(lengths - 1, 0, ys.shape[-2] - 1)[..., None, None]
  last = jnp.take_along_axis(ys, index, axis=-2)[..., 0, :]
  return jnp.where((lengths > 0)[..., None], last, 0)
