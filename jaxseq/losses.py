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
import numpy as np
import optax

from jaxseq import _checks

REDUCTIONS = ("mean", "sum", "none")


def sequence_mask(lengths: jax.Array, num_steps: int, time_major: bool = False) -> jax.Array:
  """Boolean mask, ``True`` at valid steps: ``(*batch, T)`` (``(T, *batch)`` time-major)."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
      or num_steps < 0:
    _checks.fail("num_steps", "a non-negative int", repr(num_steps),
                 ValueError if isinstance(num_steps, (int, np.integer)) and
                 not isinstance(num_steps, bool) else TypeError)
  time_major = _checks.boolean("time_major", time_major)
  if not hasattr(lengths, "dtype"):
    lengths = np.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    _checks.fail("lengths", "an integer array", f"dtype {lengths.dtype}", TypeError)
  mask = jnp.arange(num_steps) < lengths[..., None]
  return jnp.moveaxis(mask, -1, 0) if time_major else mask


def _valid_steps(step_shape: tuple[int, ...], lengths, mask, reduction: str,
                 time_major: bool) -> jax.Array:
  """Checks the arguments; returns the mask of valid steps, shaped ``step_shape``."""
  _checks.choice("reduction", reduction, REDUCTIONS)
  _checks.boolean("time_major", time_major)
  step_shape = tuple(step_shape)
  if lengths is not None and mask is not None:
    raise ValueError("lengths, mask: expected at most one of them, got both")
  if lengths is not None:
    if not hasattr(lengths, "dtype"):
      lengths = np.asarray(lengths)
    batch = step_shape[1:] if time_major else step_shape[:-1]
    if tuple(lengths.shape) != tuple(batch):
      _checks.fail("lengths", f"shape {tuple(batch)}", f"shape {tuple(lengths.shape)}")
    # Integer dtype and, when concrete, values in [0, T], as unroll insists.
    lengths = _checks.lengths(lengths, batch, step_shape[0 if time_major else -1])
    mask = sequence_mask(lengths, step_shape[0 if time_major else -1], time_major)
  if mask is None:
    mask = jnp.ones(step_shape, bool)
  else:
    if not hasattr(mask, "dtype"):
      mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(step_shape):
      _checks.fail("mask", f"shape {tuple(step_shape)}", f"shape {tuple(mask.shape)}")
    # A float mask would be read as True wherever it is non-zero, not as weights.
    if not (mask.dtype == bool or jnp.issubdtype(mask.dtype, jnp.integer)):
      _checks.fail("mask", "a boolean (or 0/1 integer) array, True at valid steps",
                   f"dtype {mask.dtype}", TypeError)
  return jnp.asarray(mask, bool)


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


def _rank(argument: str, x: jax.Array, rank: int, what: str) -> None:
  if x.ndim < rank:
    _checks.fail(argument, f"an array of rank >= {rank} ({what})", f"shape {tuple(x.shape)}")


def _class_ids(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
  """Checks concrete class ids at valid steps (padded steps may hold anything, -1 say);
  returns a bool array, True where an id is in ``[0, num_classes)``."""
  in_range = (labels >= 0) & (labels < num_classes)
  if not isinstance(labels, jax.core.Tracer) and not isinstance(valid, jax.core.Tracer):
    ids = np.asarray(labels)[np.asarray(valid)]
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
      _checks.fail("labels", f"class ids in [0, {num_classes}) (K = {num_classes} classes "
                   "in logits) at valid steps", f"values in [{ids.min()}, {ids.max()}]")
  return in_range


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          lengths: jax.Array | None = None, mask: jax.Array | None = None,
                          reduction: str = "mean", time_major: bool = False) -> jax.Array:
  r"""Per-step softmax cross-entropy ``-\log softmax(logits_t)[y_t]``.

  Args:
    logits: ``(*batch, T, K)``.
    labels: integer class ids ``(*batch, T)`` in ``[0, K)`` or (soft) one-hot
      ``(*batch, T, K)``. An id outside ``[0, K)`` at a valid step raises ``ValueError``
      when the labels are concrete; under ``jit`` (traced labels) its loss is NaN, so
      it cannot pass for a class. Ids at padded steps are never read (``-1`` is fine).
    lengths / mask: valid steps; ``"mean"`` averages over valid steps only.
    reduction: ``"mean"``, ``"sum"`` or ``"none"``.
  """
  logits = _checks.float_array("logits", logits)
  _rank("logits", logits, 1, "*batch, K")
  if not hasattr(labels, "dtype"):
    labels = np.asarray(labels)
  integer_labels = jnp.issubdtype(labels.dtype, jnp.integer)
  if not integer_labels and (labels.dtype == bool or tuple(labels.shape) == tuple(
      logits.shape[:-1]) or not jnp.issubdtype(labels.dtype, jnp.floating)):
    _checks.fail("labels", f"integer class ids of shape {tuple(logits.shape[:-1])} or "
                 f"floating one-hot labels of shape {tuple(logits.shape)}",
                 f"dtype {labels.dtype}, shape {tuple(labels.shape)}", TypeError)
  if integer_labels and labels.shape != logits.shape[:-1]:
    _checks.fail("labels", f"integer labels of shape {tuple(logits.shape[:-1])}",
                 f"shape {tuple(labels.shape)}")
  if not integer_labels and labels.shape != logits.shape:
    _checks.fail("labels", f"one-hot labels of shape {tuple(logits.shape)}",
                 f"shape {tuple(labels.shape)}")
  valid = _valid_steps(logits.shape[:-1], lengths, mask, reduction, time_major)
  logits = _zero_padding(valid, logits)
  if integer_labels:
    num_classes = logits.shape[-1]
    in_range = _class_ids(labels, valid, num_classes)
    labels = jnp.clip(jnp.asarray(labels), 0, num_classes - 1)
    per_step = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    per_step = jnp.where(in_range, per_step, jnp.nan)
  else:
    if not isinstance(labels, jax.core.Tracer) and not isinstance(valid, jax.core.Tracer):
      probabilities = np.asarray(labels)[np.asarray(valid)]
      if probabilities.size and not (probabilities >= 0).all():  # NaN fails too
        _checks.fail("labels", "one-hot or soft labels: probabilities >= 0 at valid steps",
                     "NaN values" if np.isnan(probabilities).any()
                     else f"values down to {probabilities.min()}")
    per_step = optax.softmax_cross_entropy(logits, _zero_padding(valid, jnp.asarray(labels)))
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
  _rank("predictions", predictions, 1, "*batch, T, F")
  if not hasattr(targets, "dtype"):
    targets = np.asarray(targets)
  if not (jnp.issubdtype(targets.dtype, jnp.floating)
          or jnp.issubdtype(targets.dtype, jnp.integer)):
    _checks.fail("targets", "a numeric array", f"dtype {targets.dtype}", TypeError)
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
  ys = _checks.float_array("ys", ys)
  _rank("ys", ys, 2, "*batch, T, F")
  time_major = _checks.boolean("time_major", time_major)
  if time_major:
    ys = jnp.moveaxis(ys, 0, -2)
  if lengths is None:
    return ys[..., -1, :]
  if not hasattr(lengths, "dtype"):
    lengths = np.asarray(lengths)
  if tuple(lengths.shape) != tuple(ys.shape[:-2]):
    _checks.fail("lengths", f"shape {tuple(ys.shape[:-2])}", f"shape {tuple(lengths.shape)}")
  # Integer dtype and, when concrete, values in [0, T]: out-of-range lengths were clipped.
  lengths = _checks.lengths(lengths, ys.shape[:-2], ys.shape[-2])
  index = jnp.clip(lengths - 1, 0, ys.shape[-2] - 1)[..., None, None]
  last = jnp.take_along_axis(ys, index, axis=-2)[..., 0, :]
  return jnp.where((lengths > 0)[..., None], last, 0)
