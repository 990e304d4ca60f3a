r"""Gradient-flow diagnostics: how far back a recurrent network's gradients and
perturbations reach.

Three views of the same object, the product of step Jacobians
``J_t = \partial carry_t / \partial carry_{t-1}`` along a trajectory:

* ``grad_norms``: the backpropagated error ``\|\partial L / \partial carry_t\|`` at every
  step, in one backward pass (the vanishing/exploding gradient picture of Bengio, Simard &
  Frasconi 1994 and Pascanu, Mikolov & Bengio 2013); ``norm_ratios`` turns it into
  per-step contraction factors. ``log=True`` gives log-norms that neither underflow nor
  overflow over any lag (10,000 steps and more in float32).
* ``jacobian_spectrum``: the singular values of ``J_t \cdots J_{s+1}`` (how a perturbation
  of ``carry_s`` is stretched by the time it reaches ``carry_t``).
* ``lyapunov``: the asymptotic growth rates of those singular values, the Lyapunov
  exponents (Vogt et al. 2022; Engelken, Wolf & Abbott 2020).

No dense ``n x n`` Jacobian is ever built: tangents are pushed through ``jax.jvp`` of the
step, ``k`` at a time with ``jax.vmap``, so memory is ``O(n k)``.

Example::

    cell = jaxseq.lstm(64)
    params = cell.init(key, 3)
    loss_fn = lambda ys: ((ys[:, -1] - y) ** 2).sum()
    norms = gradflow.grad_norms(cell, params, xs, loss_fn)
    gradflow.norm_ratios(norms)              # < 1 where the gradient vanishes going back
    logs = gradflow.grad_norms(cell, params, xs, loss_fn, log=True)   # over any lag
    gradflow.norm_ratios(logs, log=True)     # log-ratios, < 0 where it vanishes
    gradflow.lyapunov(cell, params, xs[0], warmup=100)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxseq import _checks
from jaxseq import layers as layers_lib
from jaxseq import sequence
from jaxseq import specs
from jaxseq.cells.base import Cell, halves, split_cell

__all__ = ["grad_norms", "jacobian_spectrum", "lyapunov", "norm_ratios"]


# ----------------------------------------------------------------------------- grad_norms


def grad_norms(model: Cell | layers_lib.Layer, params: Any, xs: jax.Array,
               loss_fn: Callable[[Any], jax.Array], carry: Any = None, *,
               lengths: jax.Array | None = None, per_leaf: bool = False,
               per_example: bool = False, log: bool = False) -> Any:
  r"""Norm of the backpropagated error ``\partial L / \partial carry_t`` at every step.

  ``carry_t`` is the carry produced by the step that reads ``xs[t]`` and
  ``L = loss_fn(ys)``. The derivative is the *total* one, through every path by which
  ``carry_t`` reaches the loss: the output ``y_t`` and all later steps,

      \frac{\partial L}{\partial h_t} = \frac{\partial L}{\partial y_t}
          \frac{\partial y_t}{\partial h_t}
        + \frac{\partial L}{\partial h_{t+1}} J_{t+1},
      \qquad J_{t+1} = \frac{\partial h_{t+1}}{\partial h_t},

  so for a loss on the last output alone ``\partial L / \partial h_t =
  \partial L / \partial h_{T-1} J_{T-1} \cdots J_{t+1}`` and the curve shows gradients
  vanishing or exploding with the lag ``T - 1 - t`` (Bengio, Simard & Frasconi 1994;
  Pascanu, Mikolov & Bengio 2013, Sec. 2).

  All steps come from ONE backward pass: the carry gets a zero perturbation after every
  step, ``carry_t \leftarrow carry_t + \epsilon_t`` with ``\epsilon_t = 0``, so the forward
  pass is unchanged and ``\partial L / \partial \epsilon_t = \partial L / \partial carry_t``.
  The output ``y_t`` sees the perturbation when it *is* the carry or one of its leaves (every
  jaxseq cell: ``y_t = h_t``); a hand-made cell whose output is computed beside the carry
  rather than from it gets only the path through later steps.

  ``log=True`` returns ``\log \|\partial L / \partial carry_t\|`` instead, computed so
  that nothing underflows: in float32 a vanishing gradient's norm reaches 0 within a few
  hundred steps (float64 within a few thousand), its log-norm does not. The backward
  recurrence is run explicitly, with the error carried as a unit vector times a
  log-scale, ``\delta_t = e^{s_t} u_t`` with ``\|u_t\| = 1`` per example, renormalised
  after every step as the Lyapunov QR algorithm does (``lyapunov``):

      e^{s_t} u_t = e^{s_{t+1}} \, \mathrm{vjp}_{t+1}(u_{t+1})
                    + \frac{\partial L}{\partial y_t} \frac{\partial y_t}{\partial h_t},

  the two terms rescaled to their larger log-scale before they are added. The forward
  trajectory comes first (one scan); ``\partial L / \partial y_t`` from ``jax.vjp`` of
  ``loss_fn``; then a reverse scan takes ``jax.vjp`` of each step. Stacks pass the error
  into the lower layer's outputs the same way (unit vector and log-scale per step and
  example), bidirectional layers through their merge, so every combinator is supported.
  The examples are scaled separately, which assumes the cell's step treats them
  independently (every jaxseq cell does) and, in a ``bidirectional`` layer, a ``merge``
  acting step by step (the built-in ones do). The default path, one ``jax.grad`` through
  the perturbed model, has neither assumption; its norms are taken without squaring
  underflow, but the backpropagated error itself underflows below the dtype's range.

  Args:
    model: a ``Cell`` (run with ``jaxseq.unroll``) or a ``Layer`` made by
      ``jaxseq.recurrent``, ``jaxseq.bidirectional`` and ``jaxseq.stack`` (any nesting).
    params: the model's params.
    xs: inputs ``(*batch, T, *features)`` as the model takes them (``(T, *batch, ...)``
      for ``time_major`` layers).
    loss_fn: ``loss_fn(ys) -> scalar``, on the model's outputs ``ys`` (include any readout
      in it). ``per_example`` assumes it is a sum or mean of per-example terms.
    carry: the initial carry, as the model takes it (zeros when ``None``).
    lengths: per-example valid lengths, as in ``jaxseq.unroll``; norms at padded steps are
      0 (the carry is not updated there).
    per_leaf: one norm per carry leaf (``LSTMState(h=(T,), c=(T,))``) instead of the norm of
      all leaves together, ``\sqrt{\|\partial L/\partial h_t\|^2 +
      \|\partial L/\partial c_t\|^2}``.
    per_example: norms over the feature axes only, shaped ``(*batch, T)``; otherwise over
      batch and features, ``(T,)``. With a summed loss the examples do not interact, so
      these are the per-example gradients.
    log: return natural-log norms (``-inf`` where the norm is 0: padded steps, steps the
      loss does not depend on), computed in log space as above. Same structure and shapes.

  Returns:
    For a ``Cell`` or a ``recurrent`` layer, a ``(T,)`` array (``(*batch, T)`` with
    ``per_example``; the carry's structure of them with ``per_leaf``). A ``bidirectional``
    layer gives ``{"forward": ..., "backward": ...}`` and a ``stack`` a list with one entry
    per layer: the structure of the layer's carry, each recurrent sub-layer's carry replaced
    by its norms. Index ``t`` is always the input position ``xs[t]``, also for backward
    directions (whose "later steps" are the earlier positions).
  """
  layer = _as_layer(model)
  if not callable(loss_fn):
    _checks.fail("loss_fn", "a callable loss_fn(ys) -> scalar", repr(loss_fn), TypeError)
  for argument, value in (("per_leaf", per_leaf), ("per_example", per_example),
                          ("log", log)):
    if not isinstance(value, bool):
      _checks.fail(argument, "a bool", repr(value), TypeError)
  xs = _checks.float_array("xs", xs)
  # Shape inference validates params, xs, carry and lengths with the layer's own messages
  # and gives every recurrent sub-layer's carry shape (the layer's final carry).
  _, carry_shapes = jax.eval_shape(
      lambda p, x, c: layer.apply(p, x, lengths=lengths, carry=c), params, xs, carry)
  num_steps, batch_shape = _time_and_batch(layer, xs)
  lengths = _checks.lengths(lengths, batch_shape, num_steps)
  keep = 1 + (len(batch_shape) if per_example else 0)  # leading axes a norm keeps

  if log:
    return _log_grad_norms(layer, params, xs, loss_fn, carry, lengths, per_leaf,
                           per_example)

  def finish(leaves):  # gradients (T, *batch, *features) -> norms (T,) or (*batch, T)
    return jnp.moveaxis(_norm(leaves, keep), 0, -1)

  @jax.jit
  def compute(params, xs, carry, lengths):
    zeros = jax.tree.map(lambda c: jnp.zeros((num_steps,) + c.shape, c.dtype), carry_shapes)

    def loss_of(perturbations):
      parts = _carry_parts(layer, perturbations)
      ys, _ = _perturbed(layer, parts).apply(params, xs, lengths=lengths, carry=carry)
      return _check_loss(loss_fn(ys))

    grads = _input_positions(layer, _carry_parts(layer, jax.grad(loss_of)(zeros)), lengths)
    if per_leaf:
      parts = [jax.tree.map(lambda leaf: finish([leaf]), g) for g in grads]
    else:
      parts = [finish(jax.tree.leaves(g)) for g in grads]
    return _rebuild_carry(layer, iter(parts))

  return compute(params, xs, carry, lengths)


def _input_positions(layer: layers_lib.Layer, parts: list, lengths: jax.Array | None
                     ) -> list:
  """Per-step results ``(T, *batch, ...)`` of each recurrent sub-layer (``parts``), indexed
  by ``layer``'s input positions: a recurrent layer inside a flipped one (the backward
  direction of a ``bidirectional`` whose direction is not a ``recurrent`` or ``stack``
  layer) reads the sequences flipped, so its results are flipped back."""
  def flips(layer, flipped):
    spec = layer.spec
    if isinstance(spec, specs.RecurrentSpec):
      return [flipped]
    if isinstance(spec, specs.BidirectionalSpec):
      return flips(spec.forward, flipped) + flips(spec.backward, flipped)
    if isinstance(spec, specs.StackSpec):
      return [f for sub in spec.layers for f in flips(sub, flipped)]
    return flips(spec.layer, not flipped)  # FlippedSpec (_carry_parts admits no other)

  flip = lambda a: layers_lib.flip_sequences(a, lengths, 0)
  return [jax.tree.map(flip, part) if flipped else part
          for part, flipped in zip(parts, flips(layer, False))]


def _check_loss(loss: Any) -> Any:
  if jnp.ndim(loss) != 0 or not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    _checks.fail("loss_fn", "a function returning a real scalar",
                 f"an output of shape {jnp.shape(loss)} and dtype {jnp.result_type(loss)}")
  return loss


def norm_ratios(norms: Any, *, log: bool = False) -> Any:
  r"""Per-step ratios ``\|\partial L/\partial h_t\| / \|\partial L/\partial h_{t+1}\|``.

  For a loss at the end of the sequence the ratio is the contraction of the backpropagated
  error over one step, ``\|\delta_{t+1} J_{t+1}\| / \|\delta_{t+1}\|``, bounded by the
  largest singular value of ``J_{t+1}`` (Pascanu, Mikolov & Bengio 2013, Sec. 2.1): ratios
  below 1 over many steps mean vanishing gradients, above 1 exploding ones. In log space
  (``log=True``) they are differences of log-norms, the per-step rates whose long-run mean
  is the top Lyapunov exponent (``lyapunov``) when the Jacobians dominate.

  Args:
    norms: ``grad_norms``'s output: an array ``(..., T)`` with time last, or a pytree of them
      (``per_leaf``, layers); with ``log=True``, ``grad_norms(..., log=True)``'s log-norms.
    log: ``norms`` are natural-log norms; the result is then the log-ratios.

  Returns:
    ``norms[..., :-1] / norms[..., 1:]``, shaped ``(..., T - 1)``, with the same structure;
    with ``log=True`` ``norms[..., :-1] - norms[..., 1:]`` (log-ratios, finite wherever both
    log-norms are, however far they are below the dtype's range).

  Zero norms (padded steps, steps the loss does not reach, underflow; ``-inf`` log-norms)
  give the limits of the ratio, and ``log=True`` gives exactly their logs:

  * ``norms[t] == 0 < norms[t+1]``: ratio 0, log-ratio ``-inf`` (the gradient vanished);
  * ``norms[t] > 0 == norms[t+1]``: ratio ``inf``, log-ratio ``inf``;
  * ``norms[t] == norms[t+1] == 0``: ``nan`` in both.

  ``0 / 0`` is ``nan`` on purpose: no gradient reached either step, so there is no
  contraction factor to report (0 would read as a vanished gradient, 1 as a neutral step,
  and either would bias a mean); ``np.nanmean`` and plots skip it. ``inf / inf`` (both
  overflowed) is ``nan`` likewise.

  Raises:
    ValueError: a negative norm with ``log=False`` (checked when ``norms`` are concrete):
      norms are never negative, and log-norms given without ``log=True`` would give
      meaningless ratios.
  """
  if not isinstance(log, bool):
    _checks.fail("log", "a bool", repr(log), TypeError)
  def is_curve(n):  # an array, or a plain list of numbers
    return hasattr(n, "shape") or (isinstance(n, list) and bool(n) and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in n))

  def ratio(n):
    if isinstance(n, list):
      n = np.asarray(n)
    if not hasattr(n, "shape"):
      _checks.fail("norms", "an array (..., T) or a pytree of them", type(n).__name__,
                   TypeError)
    if not log and not isinstance(n, jax.core.Tracer):
      lowest = np.nanmin(np.asarray(n), initial=0.0)
      if lowest < 0:
        _checks.fail("norms", "non-negative norms (pass log=True for grad_norms(..., "
                     "log=True)'s log-norms)", f"values down to {lowest}")
    n = jnp.asarray(n)
    if n.ndim == 0 or n.shape[-1] < 2:
      _checks.fail("norms", "arrays (..., T) with T >= 2 steps", f"shape {tuple(n.shape)}")
    if not jnp.issubdtype(n.dtype, jnp.floating):
      n = n.astype(jnp.float32)
    if log:
      # -inf - -inf is nan in IEEE arithmetic, as 0 / 0 is: the two agree everywhere.
      return n[..., :-1] - n[..., 1:]
    return n[..., :-1] / n[..., 1:]

  if not jax.tree.leaves(norms, is_leaf=is_curve):
    _checks.fail("norms", "an array (..., T) or a pytree of them", repr(norms))
  return jax.tree.map(ratio, norms, is_leaf=is_curve)


def _as_layer(model: Any) -> layers_lib.Layer:
  if isinstance(model, Cell):
    return layers_lib.recurrent(model)
  if not isinstance(model, layers_lib.Layer):
    _checks.fail("model", "a jaxseq Cell or Layer", type(model).__name__, TypeError)
  if not model.is_sequence:
    _checks.fail("model", "a Cell or a sequence layer (recurrent, bidirectional, stack)",
                 f"a {model.spec.kind!r} layer")
  return model


def _time_and_batch(layer: layers_lib.Layer, xs: jax.Array) -> tuple[int, tuple[int, ...]]:
  """Number of steps and batch shape of ``xs`` as the first recurrent sub-layer reads it."""
  spec = layers_lib.recurrent_layers(layer)[0].spec
  nf = sequence.feature_ndim(spec.cell)
  time_axis = 0 if spec.time_major else xs.ndim - nf - 1
  batch = xs.shape[:time_axis] + xs.shape[time_axis + 1:xs.ndim - nf]
  return xs.shape[time_axis], tuple(batch)


def _carry_parts(layer: layers_lib.Layer, tree: Any) -> list:
  """A carry-shaped ``tree`` of ``layer`` as a list, one entry per recurrent sub-layer in
  ``map_layers`` order."""
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return [tree]
  if isinstance(spec, specs.BidirectionalSpec):
    return (_carry_parts(spec.forward, tree["forward"])
            + _carry_parts(spec.backward, tree["backward"]))
  if isinstance(spec, specs.StackSpec):
    return [part for sub, t in zip(spec.layers, tree) for part in _carry_parts(sub, t)]
  if isinstance(spec, specs.FlippedSpec):
    return _carry_parts(spec.layer, tree)
  _checks.fail("model", "a layer built by recurrent, bidirectional and stack",
               f"a {spec.kind!r} layer")


def _rebuild_carry(layer: layers_lib.Layer, parts) -> Any:
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return next(parts)
  if isinstance(spec, specs.BidirectionalSpec):
    forward = _rebuild_carry(spec.forward, parts)
    return {"forward": forward, "backward": _rebuild_carry(spec.backward, parts)}
  if isinstance(spec, specs.StackSpec):
    return [_rebuild_carry(sub, parts) for sub in spec.layers]
  return _rebuild_carry(spec.layer, parts)


def _perturbed(layer: layers_lib.Layer, perturbations: list) -> layers_lib.Layer:
  """``layer`` with ``perturbations[i][t]`` added to the carry of its ``i``-th recurrent
  sub-layer (``map_layers`` order) after the step that reads ``xs[t]``.

  Each perturbation has the structure of that sub-layer's carry, every leaf with a leading
  time axis ``(T, *carry_leaf_shape)``. Each recurrent sub-layer appends its perturbations
  to its input features, time-aligned with its ``xs``; its perturbed cell's input half
  splits them off again and its recurrent half adds them (``_perturbed_cell``), so
  ``unroll`` and the combinators run unchanged, and the new recurrent half drops any kernel
  bound to the cell's own.
  """
  parts = iter(perturbations)

  def perturb(recurrent_layer):
    spec = recurrent_layer.spec
    p = next(parts)
    nf = sequence.feature_ndim(spec.cell)

    def apply(params, xs, *, lengths=None, carry=None, key=None):
      time_axis = 0 if spec.time_major else xs.ndim - nf - 1
      leaves = [jnp.moveaxis(leaf, 0, time_axis) for leaf in jax.tree.leaves(p)]
      for leaf in leaves:
        if leaf.shape[:-1] != xs.shape[:-1]:
          _checks.fail("model", "carry leaves shaped like the inputs but for the last axis "
                       f"(inputs {tuple(xs.shape)})", f"a carry leaf {tuple(leaf.shape)}")
      dtype = jnp.result_type(xs, *leaves)
      augmented = jnp.concatenate([xs.astype(dtype)] + [a.astype(dtype) for a in leaves], -1)
      cell = _perturbed_cell(spec.cell, jax.tree.structure(p),
                             [leaf.shape[-1] for leaf in leaves], xs.shape[-1], xs.dtype)
      inner = layers_lib.recurrent(cell, **spec.options)
      return inner.apply(params, augmented, lengths=lengths, carry=carry, key=key)

    return layers_lib.Layer(recurrent_layer.init, apply, None, spec)

  return layers_lib.map_layers(layer, perturb)


def _perturbed_cell(cell: Cell, treedef: Any, sizes: Sequence[int], input_size: int,
                    x_dtype: Any) -> Cell:
  """``cell`` reading ``[x_t, eps_t]`` (``eps_t``: its flattened carry leaves, each
  ``sizes[i]`` features wide) and adding ``eps_t`` to the new carry and to the output where
  the output is a carry leaf."""
  bounds = np.cumsum([input_size] + list(sizes))
  project, recur = halves(cell)

  def init(key, size):  # the augmented input's params are the cell's own
    if isinstance(size, (tuple, list)):
      return cell.init(key, tuple(size[:-1]) + (input_size,))
    return cell.init(key, input_size)

  def new_project(params, x_aug):
    eps = [x_aug[..., lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return project(params, x_aug[..., :input_size].astype(x_dtype)), eps

  def new_recur(params, carry, gx_eps):
    gx, eps = gx_eps
    new_carry, y = recur(params, carry, gx)
    new_leaves = jax.tree.leaves(new_carry)
    if jax.tree.structure(new_carry) != treedef:
      _checks.fail("model", f"a cell whose step returns a carry structured as {treedef}",
                   jax.tree.structure(new_carry))
    perturbed = [leaf + e.astype(leaf.dtype) for leaf, e in zip(new_leaves, eps)]

    def through_carry(out):  # y_t = h_t: the output is the (now perturbed) carry leaf
      for leaf, new in zip(new_leaves, perturbed):
        if out is leaf:
          return new
      return out

    return jax.tree.unflatten(treedef, perturbed), jax.tree.map(through_carry, y)

  def initialize_carry(params, input_shape):
    return cell.initialize_carry(params, tuple(input_shape[:-1]) + (input_size,))

  return split_cell(init, initialize_carry, new_project, new_recur, cell.spec)


# ----------------------------------------------------------------------------- log space
#
# A sequence of errors in log space is a pair ``(unit, log)``: ``unit`` a pytree shaped like
# the sequence (a layer's outputs or inputs, in its layout), ``log`` one log-scale per step
# and example (the sequence's leading, non-feature axes), the error being
# ``exp(log) * unit`` with ``unit`` of norm 1 (or 0 where ``log`` is ``-inf``).


def _scaled_square_norms(leaves: Sequence[jax.Array], keep: int):
  """``(m, r)`` with ``norm^2 = m^2 r`` over all leaves' axes past the first ``keep``,
  jointly: ``m`` the largest magnitude, ``r`` in ``[1, size]`` (0 where ``m`` is), so
  neither the squares of tiny entries nor their sum underflow (LAPACK's ``nrm2``)."""
  axes = lambda leaf: tuple(range(keep, leaf.ndim))
  big = None
  for leaf in leaves:
    leaf_max = jnp.max(jnp.abs(leaf), axis=axes(leaf)) if leaf.ndim > keep else jnp.abs(leaf)
    big = leaf_max if big is None else jnp.maximum(big, leaf_max)
  safe = jnp.where(big > 0, big, 1)
  total = sum(jnp.sum(jnp.square(leaf / _expand(safe, leaf)), axis=axes(leaf))
              for leaf in leaves)
  return big, total


def _norm(leaves: Sequence[jax.Array], keep: int) -> jax.Array:
  big, total = _scaled_square_norms(leaves, keep)
  return big * jnp.sqrt(total)


def _log_dtype(tree: Any):
  return jnp.promote_types(jnp.result_type(*jax.tree.leaves(tree)), jnp.float32)


def _log_norm(leaves: Sequence[jax.Array], keep: int) -> jax.Array:
  """``log`` of the joint norm of ``leaves`` over their axes past the first ``keep``."""
  big, total = _scaled_square_norms(leaves, keep)
  dtype = _log_dtype(leaves)
  big, total = big.astype(dtype), total.astype(dtype)
  return jnp.where(big > 0, jnp.log(jnp.where(big > 0, big, 1)) + 0.5 * jnp.log(total),
                   -jnp.inf)


def _expand(a: jax.Array, leaf: jax.Array) -> jax.Array:
  """``a`` (the leading axes of ``leaf``) with unit axes appended to broadcast to it."""
  return a.reshape(a.shape + (1,) * (leaf.ndim - a.ndim))


def _log_normalize(tree: Any, keep: int) -> tuple[Any, jax.Array]:
  """``(tree / norm, log norm)``, norms over each leaf's axes past the first ``keep``."""
  leaves, treedef = jax.tree.flatten(tree)
  big, total = _scaled_square_norms(leaves, keep)
  scale = jnp.where(big > 0, big * jnp.sqrt(total), 1)
  unit = [(leaf / _expand(scale, leaf)).astype(leaf.dtype) for leaf in leaves]
  return jax.tree.unflatten(treedef, unit), _log_norm(leaves, keep)


def _log_add(a: tuple[Any, jax.Array], b: tuple[Any, jax.Array], keep: int
             ) -> tuple[Any, jax.Array]:
  """``exp(la) ua + exp(lb) ub`` as ``(unit, log)``: both rescaled to the larger log-scale
  first, so neither ``exp`` overflows and a term more than the dtype's range below the
  other vanishes (as it would in exact arithmetic rounded to the dtype)."""
  (unit_a, log_a), (unit_b, log_b) = a, b
  top = jnp.maximum(log_a, log_b)
  ref = jnp.where(jnp.isneginf(top), 0, top)  # both zero: avoid -inf - -inf
  weight_a, weight_b = jnp.exp(log_a - ref), jnp.exp(log_b - ref)
  total = jax.tree.map(lambda x, y: (_expand(weight_a, x) * x + _expand(weight_b, y) * y
                                     ).astype(x.dtype), unit_a, unit_b)
  unit, extra = _log_normalize(total, keep)
  return unit, ref + extra


def _log_grad_norms(layer, params, xs, loss_fn, carry, lengths, per_leaf, per_example):
  """``grad_norms(..., log=True)``: see there."""
  outer = xs.ndim - _layout(layer)[0]  # the time and batch axes of xs

  @jax.jit
  def compute(params, xs, carry, lengths):
    ys, _ = layer.apply(params, xs, lengths=lengths, carry=carry)
    loss, pullback = jax.vjp(loss_fn, ys)
    loss = _check_loss(loss)
    error = _log_normalize(pullback(jnp.ones_like(loss))[0], outer)
    parts, _ = _log_backward(layer, params, xs, carry, lengths, error, False)
    parts = _input_positions(layer, parts, lengths)

    def finish(leaves):  # log-norms (T, *batch) per leaf -> (T,) or (*batch, T)
      logs = jnp.stack(leaves)
      axes = (0,) if per_example else tuple(i for i in range(logs.ndim) if i != 1)
      return jnp.moveaxis(0.5 * jax.nn.logsumexp(2 * logs, axis=axes), 0, -1)

    if per_leaf:
      parts = [jax.tree.map(lambda leaf: finish([leaf]), part) for part in parts]
    else:
      parts = [finish(jax.tree.leaves(part)) for part in parts]
    return _rebuild_carry(layer, iter(parts))

  return compute(params, xs, carry, lengths)


def _log_backward(layer: layers_lib.Layer, params, xs, carry, lengths, error, need_input):
  """Backpropagates ``error`` (the loss's error on ``layer``'s outputs, in log space)
  through ``layer`` run on ``xs``.

  Returns ``(parts, input_error)``: ``parts`` one carry-shaped tree of log-norms
  ``(T, *batch)`` per recurrent sub-layer (``map_layers`` order); ``input_error`` the error
  on ``xs`` in log space when ``need_input``, else ``None``.
  """
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return _recurrent_backward(spec, params, xs, carry, lengths, error, need_input)
  feature_ndim, time_major = _layout(layer)
  outer = xs.ndim - feature_ndim  # the time and batch axes
  if isinstance(spec, specs.BidirectionalSpec):
    carry = carry or {"forward": None, "backward": None}
    ys_fw, _ = spec.forward.apply(params["forward"], xs, lengths=lengths,
                                  carry=carry["forward"])
    ys_bw, _ = spec.backward.apply(params["backward"], xs, lengths=lengths,
                                   carry=carry["backward"])
    merge = spec.merge
    merge_fn = (merge if callable(merge) else
                (lambda a, b: (a, b)) if merge is None else layers_lib.MERGES[merge])
    out, pullback = jax.vjp(merge_fn, ys_fw, ys_bw)
    unit_fw, unit_bw = pullback(jax.tree.map(lambda u, o: u.astype(o.dtype), error[0], out))
    parts_fw, input_fw = _log_backward(spec.forward, params["forward"], xs,
                                       carry["forward"], lengths, (unit_fw, error[1]),
                                       need_input)
    parts_bw, input_bw = _log_backward(spec.backward, params["backward"], xs,
                                       carry["backward"], lengths, (unit_bw, error[1]),
                                       need_input)
    return parts_fw + parts_bw, _log_add(input_fw, input_bw, outer) if need_input else None
  if isinstance(spec, specs.StackSpec):
    carries = list(carry) if carry is not None else [None] * len(spec.layers)
    inputs = []
    for i, sub in enumerate(spec.layers):  # each layer's inputs (no dropout: no key)
      inputs.append(xs)
      ys, _ = sub.apply(params[i], xs, lengths=lengths, carry=carries[i])
      xs = ys + xs if spec.residual and i > 0 else ys
    parts = []
    for i in reversed(range(len(spec.layers))):
      sub_parts, input_error = _log_backward(spec.layers[i], params[i], inputs[i],
                                             carries[i], lengths, error, need_input or i > 0)
      if spec.residual and i > 0:  # ys_i = layer_i(x_i) + x_i
        input_error = _log_add(input_error, error, outer)
      parts = sub_parts + parts
      error = input_error
    return parts, error
  if isinstance(spec, specs.FlippedSpec):
    time_axis = 0 if time_major else outer - 1
    lengths_array = None if lengths is None else jnp.asarray(lengths)
    flip = lambda a: layers_lib.flip_sequences(a, lengths_array, time_axis)
    parts, input_error = _log_backward(spec.layer, params, flip(xs), carry, lengths,
                                       (jax.tree.map(flip, error[0]), flip(error[1])),
                                       need_input)
    if input_error is not None:
      input_error = (jax.tree.map(flip, input_error[0]), flip(input_error[1]))
    return parts, input_error
  _checks.fail("model", "a layer built by recurrent, bidirectional and stack",
               f"a {spec.kind!r} layer")


def _recurrent_backward(spec, params, xs, carry, lengths, error, need_input):
  """``_log_backward`` of one ``recurrent`` layer: the forward trajectory, then a scan
  over the steps in reverse order of the ``jax.vjp`` of each step, the error carried as a
  unit vector and a log-scale per example."""
  cell = spec.cell
  nf = sequence.feature_ndim(cell)
  time_axis = 0 if spec.time_major else xs.ndim - nf - 1
  to_time_major = lambda a: jnp.moveaxis(a, time_axis, 0)
  xs = to_time_major(xs)
  num_steps, batch_shape = xs.shape[0], xs.shape[1:xs.ndim - nf]
  keep = len(batch_shape)  # the leading axes of one step's arrays: one norm per example
  if lengths is None:
    valid = jnp.ones((num_steps,) + batch_shape, bool)
  else:
    valid = jnp.arange(num_steps).reshape((-1,) + (1,) * keep) < jnp.asarray(lengths)
  xs = jnp.where(_expand(valid, xs), xs, 0)  # as unroll: padding never read
  project, recur = halves(cell)
  gxs, project_pullback = jax.vjp(lambda x: project(params, x), xs)
  step_shape = tuple(xs.shape[1:])
  if carry is None:
    carry = cell.initialize_carry(params, step_shape)
  out = jax.eval_shape(recur, params, carry, jax.tree.map(lambda g: g[0], gxs))[0]
  carry = jax.tree.map(lambda c, o: jnp.asarray(c, o.dtype), carry, out)
  carry_def = jax.tree.structure(carry)
  log_dtype = _log_dtype(carry)

  def forward(c, inputs):
    v, gx = inputs
    new, _ = recur(params, c, gx)
    return jax.tree.map(lambda n, o: jnp.where(_expand(v, n), n, o), new, c), c

  _, befores = lax.scan(forward, carry, (valid, gxs), reverse=spec.reverse)

  # The loss's error on the outputs; padded outputs are zeros the loss cannot move.
  unit_y = jax.tree.map(lambda u: jnp.where(_expand(valid, u), to_time_major(u), 0),
                        error[0])
  log_y = jnp.where(valid, to_time_major(error[1]).astype(log_dtype), -jnp.inf)
  aliases = []  # per output leaf: the carry leaf it is (y_t = h_t), or None

  def step(c, gx):
    new, y = recur(params, c, gx)
    new_leaves = jax.tree.leaves(new)
    aliases[:] = [next((i for i, leaf in enumerate(new_leaves) if out is leaf), None)
                  for out in jax.tree.leaves(y)]
    return new, [out for out, i in zip(jax.tree.leaves(y), aliases) if i is None]

  def backward(later, inputs):
    # later: the error on the carry before the step after this one, from the steps after.
    c, gx, v, u_y, l_y = inputs
    (new, beside), pullback = jax.vjp(step, c, gx)
    u_y = jax.tree.leaves(u_y)
    local = [jnp.zeros_like(leaf) for leaf in jax.tree.leaves(new)]
    for u, i in zip(u_y, aliases):
      if i is not None:
        local[i] = local[i] + u.astype(local[i].dtype)
    unit, log = _log_add(later, (jax.tree.unflatten(carry_def, local), l_y), keep)
    log = jnp.where(v, log, -jnp.inf)
    unit = jax.tree.map(lambda u: jnp.where(_expand(v, u), u, 0), unit)
    leaf_logs = [log + _log_norm([leaf], keep) for leaf in jax.tree.leaves(unit)]

    zeros_beside = [jnp.zeros_like(b) for b in beside]
    cot_carry, cot_gx = pullback((unit, zeros_beside))
    (unit_c, log_c), (unit_gx, log_gx) = (_log_normalize(cot_carry, keep),
                                          _log_normalize(cot_gx, keep))
    earlier, gx_error = (unit_c, log_c + log), (unit_gx, log_gx + log)
    if beside:  # outputs computed beside the carry: their error enters the step directly
      u_beside = [u.astype(b.dtype) for u, b in
                  zip([u for u, i in zip(u_y, aliases) if i is None], beside)]
      cot_carry, cot_gx = pullback((jax.tree.map(jnp.zeros_like, new), u_beside))
      earlier = _log_add(earlier, _shifted(_log_normalize(cot_carry, keep), l_y), keep)
      gx_error = _log_add(gx_error, _shifted(_log_normalize(cot_gx, keep), l_y), keep)
    return earlier, (leaf_logs, gx_error if need_input else None)

  start = (jax.tree.map(jnp.zeros_like, carry), jnp.full(batch_shape, -jnp.inf, log_dtype))
  _, (leaf_logs, gx_error) = lax.scan(backward, start, (befores, gxs, valid, unit_y, log_y),
                                      reverse=not spec.reverse)
  parts = [jax.tree.unflatten(carry_def, leaf_logs)]
  if not need_input:
    return parts, None
  # project acts on each step and example separately, so its pullback takes each step's unit
  # error to that step's input error, whose log-scale is the unit error's plus its norm's.
  unit_x = project_pullback(jax.tree.map(lambda u, g: u.astype(g.dtype), gx_error[0], gxs))[0]
  unit_x, log_x = _log_normalize(unit_x, 1 + keep)
  log_x = jnp.where(valid, log_x + gx_error[1], -jnp.inf)
  unit_x = jnp.where(_expand(valid, unit_x), unit_x, 0)
  back = lambda a: jnp.moveaxis(a, 0, time_axis)
  return parts, (back(unit_x), back(log_x))


def _layout(layer: layers_lib.Layer) -> tuple[int, bool]:
  """``(feature_ndim, time_major)`` of a sequence layer's inputs and outputs."""
  spec = layers_lib.recurrent_layers(layer)[0].spec
  return sequence.feature_ndim(spec.cell), spec.time_major


def _shifted(error: tuple[Any, jax.Array], log: jax.Array) -> tuple[Any, jax.Array]:
  return error[0], error[1] + log


# ----------------------------------------------------------------------------- Jacobians


def jacobian_spectrum(cell: Cell, params: Any, xs: jax.Array, k: int | None = None,
                      carry: Any = None, s: int = 0, t: int | None = None, *,
                      iterations: int = 4, key: jax.Array | None = None) -> jax.Array:
  r"""Singular values of the product of step Jacobians ``\partial h_t / \partial h_s``.

  Along the trajectory ``h_u = step(h_{u-1}, x_u)`` driven by ``xs`` (from ``carry``),

      \frac{\partial h_t}{\partial h_s} = J_t J_{t-1} \cdots J_{s+1},
      \qquad J_u = \frac{\partial h_u}{\partial h_{u-1}},

  the linear map taking a perturbation of the carry after step ``s`` to its effect on the
  carry after step ``t`` (identity when ``s == t``). Its singular values say how much
  perturbations, and (transposed) gradients, are stretched over ``t - s`` steps. The state
  ``h`` is the whole carry flattened (``jax.flatten_util.ravel_pytree``): for LSTMs
  ``[h, c]``, size ``n = 2H``.

  An orthonormal ``n x k`` frame ``Q`` is pushed through the steps by ``jax.jvp`` (``k``
  tangents at once with ``jax.vmap``), so no matrix larger than ``n x k`` is formed, and the
  result is ``svd(P Q)`` with ``P = \partial h_t / \partial h_s``. With ``k = n``
  (default) ``Q = I`` and these are all singular values of ``P``. With ``k < n`` ``Q``
  starts random and ``iterations`` rounds of subspace iteration ``Q \leftarrow
  orth(P^T orth(P Q))`` (``P^T`` by ``jax.vjp``) turn it towards the top right singular
  vectors, so the result approaches the ``k`` largest singular values (Halko, Martinsson
  & Tropp 2011, Alg. 4.4); it is exact when ``P`` is a multiple of an orthogonal matrix.
  For very long products the values over/underflow: use ``lyapunov`` for their rates.

  Args:
    cell: a ``Cell``.
    params: the cell's params.
    xs: one sequence ``(T, *features)`` (unbatched), or a batch of one ``(1, T, *features)``.
    k: number of singular values, ``1 <= k <= n``; ``None``: ``n``.
    carry: the carry before step 0, unbatched (batched with one row for a batch of one);
      zeros when ``None``.
    s, t: the steps, ``0 <= s <= t < T``; ``t = None``: ``T - 1``.
    iterations: subspace-iteration rounds when ``k < n``.
    key: PRNG key of the random starting frame when ``k < n`` (``PRNGKey(0)`` if ``None``).

  Returns:
    ``(k,)`` singular values, descending.
  """
  xs, flat, flat_step, n = _trajectory(cell, params, xs, carry)
  num_steps = xs.shape[0]
  k = _frame_size(k, n)
  s = _step_index("s", s, num_steps)
  t = num_steps - 1 if t is None else _step_index("t", t, num_steps)
  if t < s:
    _checks.fail("t", f"a step >= s = {s}", repr(t))
  iterations = _checks.nonnegative_int("iterations", iterations)

  @jax.jit
  def compute(flat, xs, frame):
    flat = _run(flat_step, flat, xs[:s + 1])
    segment = xs[s + 1:t + 1]
    if k == n or iterations == 0:
      return _singular_values(_push(flat_step, flat, frame, segment)[1])
    _, pullback = jax.vjp(lambda h: _run(flat_step, h, segment), flat)

    def refine(_, q):
      y = _orthonormal(_push(flat_step, flat, q, segment)[1])
      z = jax.vmap(lambda u: pullback(u)[0], in_axes=1, out_axes=1)(y)
      return _orthonormal(z)

    frame = lax.fori_loop(0, iterations, refine, frame)
    return _singular_values(_push(flat_step, flat, frame, segment)[1])

  return compute(flat, xs, _initial_frame(n, k, flat.dtype, key))


def lyapunov(cell: Cell, params: Any, xs: jax.Array, k: int | None = None, warmup: int = 0,
             carry: Any = None, *, key: jax.Array | None = None) -> jax.Array:
  r"""The ``k`` largest Lyapunov exponents of a cell driven by ``xs`` (per step, nats).

  The exponents are the growth rates of the singular values of the Jacobian product,
  ``\lambda_i = \lim_{T \to \infty} \frac{1}{T} \log \sigma_i(J_T \cdots J_1)``. They are
  computed by the standard QR (Benettin) algorithm (Vogt et al. 2022, "On Lyapunov
  exponents for RNNs", Sec. 2; Engelken, Wolf & Abbott 2020, "Lyapunov spectra of chaotic
  recurrent neural networks", Methods): an orthonormal ``n x k`` frame ``Q`` is pushed one
  step with ``jax.jvp`` (``vmap`` over its columns), re-orthonormalised,

      J_u Q_{u-1} = Q_u R_u,    \lambda_i \approx \frac{1}{T - w}
                                  \sum_{u=w}^{T-1} \log |(R_u)_{ii}|,

  and the first ``w = warmup`` steps are left out of the average (the frame and the state
  settle first). ``\lambda_1 < 0``: nearby trajectories converge, gradients vanish at rate
  ``e^{\lambda_1}`` per step; ``\lambda_1 > 0``: chaos, exploding gradients.
  ``\sum_i \lambda_i`` over all ``n`` is the mean ``\log |\det J_u|`` (phase-space
  contraction). The state is the whole carry flattened (``[h, c]`` for LSTMs, ``n = 2H``).
  A singular step Jacobian (dead ReLUs) gives ``-inf``.

  Args:
    cell: a ``Cell``.
    params: the cell's params.
    xs: one sequence ``(T, *features)`` (unbatched), or a batch of one ``(1, T, *features)``.
    k: number of exponents, ``1 <= k <= n``; ``None``: ``n``.
    warmup: steps run but not averaged, ``0 <= warmup < T``.
    carry: the carry before step 0, unbatched (batched with one row for a batch of one);
      zeros when ``None``.
    key: PRNG key of the random starting frame when ``k < n`` (``PRNGKey(0)`` if ``None``);
      ``k = n`` starts from the identity.

  Returns:
    ``(k,)`` exponents, descending.
  """
  xs, flat, flat_step, n = _trajectory(cell, params, xs, carry)
  num_steps = xs.shape[0]
  k = _frame_size(k, n)
  warmup = _checks.nonnegative_int("warmup", warmup)
  if warmup >= num_steps:
    _checks.fail("warmup", f"fewer steps than the {num_steps} of xs", repr(warmup))

  @jax.jit
  def compute(flat, xs, frame):
    def body(state, inputs):
      flat, frame, total = state
      u, x_u = inputs
      flat, tangents = _push_one(flat_step, flat, frame, x_u)
      q, r = jnp.linalg.qr(tangents.astype(_qr_dtype(tangents.dtype)))
      logs = jnp.log(jnp.abs(jnp.diagonal(r)))
      total = total + jnp.where(u >= warmup, logs, 0)
      return (flat, q.astype(frame.dtype), total), None

    total = jnp.zeros((k,), _qr_dtype(frame.dtype))
    (_, _, total), _ = lax.scan(body, (flat, frame, total), (jnp.arange(num_steps), xs))
    return jnp.sort(total / (num_steps - warmup))[::-1]

  return compute(flat, xs, _initial_frame(n, k, flat.dtype, key))


def _trajectory(cell: Cell, params: Any, xs: Any, carry: Any):
  """Validates the inputs; returns ``(xs (T, ...), flat carry, flat step, n)``."""
  if not isinstance(cell, Cell):
    _checks.fail("cell", "a jaxseq Cell", type(cell).__name__, TypeError)
  xs = _checks.float_array("xs", xs)
  nf = sequence.feature_ndim(cell)
  expected = f"one sequence (T, *features) of rank {nf + 1}, or a batch of one (1, T, ...)"
  if xs.ndim == nf + 2:
    if xs.shape[0] != 1:
      _checks.fail("xs", expected, f"shape {tuple(xs.shape)}")
    xs = xs[0]
    if carry is not None:
      _checks.carry(cell, params, carry, (1,) + tuple(xs.shape[1:]))
      carry = jax.tree.map(lambda c: c[0], carry)
  elif xs.ndim != nf + 1:
    _checks.fail("xs", expected, f"shape {tuple(xs.shape)}")
  if xs.shape[0] == 0:
    _checks.fail("xs", "at least one time step", f"shape {tuple(xs.shape)}")
  _checks.cell_params(cell, params, xs.shape[1:])
  if carry is None:
    carry = cell.initialize_carry(params, tuple(xs.shape[1:]))
  else:
    _checks.carry(cell, params, carry, tuple(xs.shape[1:]))
  # Start in the dtypes the step returns, as unroll does (float64 inputs, say).
  out = jax.eval_shape(cell.step, params, carry, xs[0])[0]
  carry = jax.tree.map(lambda c, o: jnp.asarray(c, o.dtype), carry, out)
  flat, unravel = ravel_pytree(carry)

  def flat_step(h, x_t):
    return ravel_pytree(cell.step(params, unravel(h), x_t)[0])[0]

  return xs, flat, flat_step, flat.shape[0]


def _push_one(flat_step, flat, frame, x_t):
  """One step of the state and of an ``(n, k)`` frame of tangents (``vmap`` of ``jvp``)."""
  tangent_map = jax.vmap(lambda v: jax.jvp(lambda h: flat_step(h, x_t), (flat,), (v,)),
                         in_axes=1, out_axes=(None, 1))
  return tangent_map(frame)


def _push(flat_step, flat, frame, xs):
  """Pushes the state and a frame through the steps ``xs``: ``(h_end, P frame)``."""
  def body(state, x_t):
    return _push_one(flat_step, *state, x_t), None
  return lax.scan(body, (flat, frame), xs)[0]


def _run(flat_step, flat, xs):
  return lax.scan(lambda h, x_t: (flat_step(h, x_t), None), flat, xs)[0]


def _qr_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _orthonormal(a):
  return jnp.linalg.qr(a.astype(_qr_dtype(a.dtype)))[0].astype(a.dtype)


def _singular_values(a):
  return jnp.linalg.svd(a.astype(_qr_dtype(a.dtype)), compute_uv=False)


def _initial_frame(n: int, k: int, dtype, key) -> jax.Array:
  if k == n:
    return jnp.eye(n, dtype=dtype)
  key = jax.random.PRNGKey(0) if key is None else key
  gaussian = jax.random.normal(key, (n, k), _qr_dtype(dtype))
  return jnp.linalg.qr(gaussian)[0].astype(dtype)


def _frame_size(k: Any, n: int) -> int:
  if k is None:
    return n
  k = _checks.positive_int("k", k)
  if k > n:
    _checks.fail("k", f"at most the state size n = {n}", repr(k))
  return k


def _step_index(argument: str, value: Any, num_steps: int) -> int:
  value = _checks.nonnegative_int(argument, value)
  if value >= num_steps:
    _checks.fail(argument, f"a step in [0, {num_steps - 1}]", repr(value))
  return value
