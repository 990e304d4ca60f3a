"""Sequence layers (``recurrent``, ``bidirectional``, ``stack``) and ``map_cells``.

They are values of the one ``jaxseq.Layer`` type in its sequence form::

    params = layer.init(key, input_size)        # one step's features (a shape for conv cells)
    ys, carry = layer.apply(params, xs, *, lengths=None, carry=None, key=None)

and compose with network layers (``jaxseq.nn.Conv``, ``Dense``, ...) in ``jaxseq.nn.serial``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import kernels
from jaxseq import specs
from jaxseq._layer import Layer
from jaxseq.cells.base import Cell, LSTMState, halves
from jaxseq import sequence


LayerLike = Union[Layer, Cell]
MERGES: dict[str, Callable[[Any, Any], Any]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
    "mul": lambda a, b: a * b,
}


_check_key = _checks.prng_key


def _sequence_axes(cell: Cell, xs: jax.Array, time_major: bool) -> tuple[int, tuple[int, ...]]:
  """The time axis of ``xs`` and its batch shape."""
  return _sequence_axes_nf(sequence.feature_ndim(cell), xs, time_major)


def _with_recurrent_dropout(cell: Cell, mask: jax.Array) -> Cell:
  """The cell with ``h_{t-1}`` multiplied by a fixed mask before each step (Gal 2016).

  The recurrence changes, so the wrapped cell gets a new ``recur``: a ``Kernel`` bound to the
  original ``recur`` no longer applies and ``unroll`` falls back to the scan."""
  def dropped(carry):
    if isinstance(carry, LSTMState):
      return carry._replace(h=carry.h * mask)
    if isinstance(carry, jax.Array):
      return carry * mask
    raise TypeError("recurrent_dropout: expected a cell whose carry is an array or an "
                    f"LSTMState, got carry of type {type(carry).__name__}")

  project, recur = halves(cell)

  def new_recur(params, carry, gx_t):
    return recur(params, dropped(carry), gx_t)

  def step(params, carry, x_t):
    return cell.step(params, dropped(carry), x_t)

  return cell._replace(step=step, project=project, recur=new_recur, kernel=None)


def _step_input(layer: Layer, step_shape: Any) -> Any:
  """A one-step, one-example stand-in of the layer's input features, for shape inference:
  ``step_shape`` is an int (features) or a shape ``(*spatial, C)``."""
  if isinstance(step_shape, (tuple, list)):
    return tuple(step_shape)
  nf = _feature_ndim(layer)
  return (1,) * (nf - 1) + (step_shape,)


def _children(spec: Any) -> tuple[Layer, ...]:
  """The sequence layers directly inside a sequence layer, in carry order."""
  if isinstance(spec, specs.BidirectionalSpec):
    return (spec.forward, spec.backward)
  if isinstance(spec, specs.StackSpec):
    return tuple(spec.layers)
  if isinstance(spec, specs.FlippedSpec):
    return (spec.layer,)
  return ()


def _first_recurrent(layer: Layer) -> specs.RecurrentSpec | None:
  """The spec of the first recurrent layer inside ``layer`` (the one reading its input)."""
  spec = layer.spec
  while not isinstance(spec, specs.RecurrentSpec):
    children = _children(spec)
    if not children:
      return None
    spec = children[0].spec
  return spec


def _feature_ndim(layer: Layer) -> int:
  first = _first_recurrent(layer)
  return 1 if first is None else sequence.feature_ndim(first.cell)


def _time_major(layer: Layer) -> bool:
  first = _first_recurrent(layer)
  return False if first is None else first.time_major


def _output_features(apply, params: Any, xs_shape: tuple[int, ...], argument: str,
                     expected: str) -> tuple[int, ...]:
  """The per-step output features of a sequence layer's ``apply`` on inputs shaped
  ``xs_shape`` (two leading batch/time axes), by shape inference."""
  xs = jax.ShapeDtypeStruct(tuple(xs_shape), jnp.float32)
  ys, _ = jax.eval_shape(lambda p, x: apply(p, x), params, xs)
  if not hasattr(ys, "shape"):
    _checks.fail(argument, expected, type(ys).__name__)
  return tuple(ys.shape[2:])


def _known_output_size(layer: Layer) -> int | None:
  """The size of the last axis of ``layer``'s outputs when it is known without an input (a
  recurrent layer over a cell whose spec states its ``output_size``, and combinators of
  such layers), else ``None`` (a hand-made cell, a callable merge: ``_output_features``
  then infers it from the input)."""
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    cell_spec = spec.cell.spec
    return cell_spec.output_size if isinstance(cell_spec, specs.CellSpec) else None
  if isinstance(spec, specs.StackSpec):
    return _known_output_size(spec.layers[-1])
  if isinstance(spec, specs.FlippedSpec):
    return _known_output_size(spec.layer)
  if isinstance(spec, specs.BidirectionalSpec):
    fw, bw = _known_output_size(spec.forward), _known_output_size(spec.backward)
    if spec.merge == "concat":
      return None if fw is None or bw is None else fw + bw
    if spec.merge in ("sum", "mean", "mul"):
      return fw if fw is not None else bw
  return None


def _sequence_output_shape(init, apply, time_major: bool = False):
  """``output_shape`` of a sequence layer: ``(T, *features)`` in, ``(T, *out)`` out."""
  def output_shape(input_shape):
    from jaxseq._layer import _step_shape
    step = _step_shape(input_shape)
    params = jax.eval_shape(lambda k: init(k, step), jax.random.PRNGKey(0))
    shape = (input_shape[0], 1) if time_major else (1, input_shape[0])
    return (input_shape[0],) + _output_features(
        apply, params, shape + tuple(input_shape[1:]), "layer",
        "a layer whose outputs are one array (merge=None gives a pair)")
  return output_shape


def recurrent(cell: Cell, *, reverse: bool = False, time_major: bool = False,
              unroll: int | bool = 1, remat: bool | int = False, dropout: float = 0.0,
              recurrent_dropout: float = 0.0, kernel: str = "auto") -> Layer:
  """A layer that runs ``cell`` over the sequence with ``jaxseq.unroll``.

  Args:
    cell: the ``Cell``.
    reverse, time_major, unroll, remat: as in ``jaxseq.unroll``.
    dropout: drop rate on the inputs, one mask per sequence shared by every step
      (variational dropout, Gal & Ghahramani 2016; Keras's ``dropout``).
    recurrent_dropout: drop rate on ``h_{t-1}`` as it enters each step, one mask per
      sequence (Gal & Ghahramani 2016). Both only act when ``apply`` gets a ``key`` (in a
      ``serial``: ``train=True`` and a ``key``, as every network layer).
    kernel: as in ``jaxseq.unroll`` (``"auto"``, ``"reference"``, ``"xla"``), checked
      here. Recurrent dropout changes the recurrence, so with it on the scan runs.

  ``params`` are the cell's params; ``carry`` is the cell's carry.
  """
  if not isinstance(cell, Cell):
    _checks.fail("cell", "a jaxseq Cell", type(cell).__name__, TypeError)
  dropout = _checks.probability("dropout", dropout)
  recurrent_dropout = _checks.probability("recurrent_dropout", recurrent_dropout)
  for argument, value in (("reverse", reverse), ("time_major", time_major)):
    if not isinstance(value, bool):
      _checks.fail(argument, "a bool", repr(value), TypeError)
  if not isinstance(unroll, bool):
    _checks.positive_int("unroll", unroll)
  if not isinstance(remat, bool):
    _checks.positive_int("remat", remat)
  kernel = kernels.check(kernel)
  options = dict(reverse=reverse, time_major=time_major, unroll=unroll, remat=remat,
                 kernel=kernel)

  def init(key: jax.Array, input_size: Any) -> Any:
    return cell.init(key, input_size)

  def apply(params, xs, *, lengths=None, carry=None, key=None):
    _check_key(key)
    step_cell = cell
    if key is not None and (dropout or recurrent_dropout):
      xs = _checks.float_array("xs", xs)
      time_axis, batch_shape = _sequence_axes(cell, xs, time_major)
      key_in, key_rec = jax.random.split(key)
      if dropout:
        shape = xs.shape[:time_axis] + (1,) + xs.shape[time_axis + 1:]
        keep = jax.random.bernoulli(key_in, 1.0 - dropout, shape)
        xs = jnp.where(keep, xs / (1.0 - dropout), 0).astype(xs.dtype)
      if recurrent_dropout:
        # Wrong params must fail here with unroll's message, not as a KeyError below.
        nf = sequence.feature_ndim(cell)
        _checks.cell_params(cell, params, xs.shape[xs.ndim - nf:])
        step_shape = batch_shape + tuple(xs.shape[xs.ndim - nf:])
        zero = jax.eval_shape(lambda p: cell.initialize_carry(p, step_shape), params)
        h = zero.h if isinstance(zero, LSTMState) else zero
        keep = jax.random.bernoulli(key_rec, 1.0 - recurrent_dropout, h.shape)
        step_cell = _with_recurrent_dropout(cell, keep / (1.0 - recurrent_dropout))
    return sequence.unroll(step_cell, params, xs, carry, lengths, **options)

  spec = specs.RecurrentSpec(cell=cell, dropout=dropout, recurrent_dropout=recurrent_dropout,
                             **options)
  return Layer(init, apply, _sequence_output_shape(init, apply, time_major), spec)


def _as_layer(argument: str, layer: LayerLike) -> Layer:
  if isinstance(layer, Cell):
    return recurrent(layer)
  if not isinstance(layer, Layer):
    _checks.fail(argument, "a jaxseq Layer or Cell", type(layer).__name__, TypeError)
  if not layer.is_sequence:
    _checks.fail(argument, "a sequence layer (a Cell, recurrent, bidirectional or stack; "
                 "compose network layers such as nn.Conv or nn.Dense with sequence layers "
                 "in jaxseq.nn.serial, or apply them per step with jaxseq.over_time)",
                 f"a {layer.spec.kind!r} layer", TypeError)
  return layer


def reversed_layer(layer: Layer) -> Layer:
  """``layer`` run backwards over each sequence's valid part, outputs aligned with inputs.

  A ``recurrent`` layer gets ``reverse=True``; a ``stack`` reverses each of its layers
  (running every layer backwards is running the stack on the flipped sequence); any other
  sequence layer runs on the flipped sequences (``flip_sequences``).
  """
  layer = _as_layer("layer", layer)
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return recurrent(spec.cell, **{**spec.options, "reverse": True})
  if isinstance(spec, specs.StackSpec):
    return stack(*(reversed_layer(sub) for sub in spec.layers), dropout=spec.dropout,
                 residual=spec.residual)
  return _flipped(layer)


def flip_sequences(xs: jax.Array, lengths: jax.Array | None, time_axis: int) -> jax.Array:
  """Reverses each sequence's first ``lengths`` steps along ``time_axis`` and leaves the
  padding where it is (Flax's ``flip_sequences``); all steps when ``lengths`` is None."""
  xs = jnp.asarray(xs)
  if isinstance(time_axis, bool) or not isinstance(time_axis, int) or not (
      -xs.ndim <= time_axis < xs.ndim):
    _checks.fail("time_axis", f"an axis of xs (rank {xs.ndim})", repr(time_axis))
  time_axis %= xs.ndim
  if lengths is None:
    return jnp.flip(xs, time_axis)
  num_steps = xs.shape[time_axis]
  rank = np.ndim(lengths)
  batch_shape = tuple(d for i, d in enumerate(xs.shape[:rank + 1]) if i != time_axis)
  lengths = _checks.lengths(lengths, batch_shape, num_steps)
  t = jnp.arange(num_steps)
  lengths = jnp.asarray(lengths)[..., None]                   # (*batch, 1)
  index = jnp.where(t < lengths, lengths - 1 - t, t)          # (*batch, T)
  moved = jnp.moveaxis(xs, time_axis, lengths.ndim - 1)       # (*batch, T, *features)
  index = index.reshape(index.shape + (1,) * (moved.ndim - index.ndim))
  flipped = jnp.take_along_axis(moved, index, axis=lengths.ndim - 1)
  return jnp.moveaxis(flipped, lengths.ndim - 1, time_axis)


def _flipped(layer: Layer) -> Layer:
  time_major = _time_major(layer)

  def apply(params, xs, *, lengths=None, carry=None, key=None):
    xs = _checks.float_array("xs", xs)
    time_axis, _ = _sequence_axes_nf(_feature_ndim(layer), xs, time_major)
    lengths_arr = None if lengths is None else jnp.asarray(lengths)
    ys, carry = layer.apply(params, flip_sequences(xs, lengths_arr, time_axis),
                            lengths=lengths, carry=carry, key=key)
    ys = jax.tree.map(lambda y: flip_sequences(y, lengths_arr, time_axis), ys)
    return ys, carry

  return Layer(layer.init, apply, layer.output_shape, specs.FlippedSpec(layer=layer))


def _sequence_axes_nf(nf: int, xs: jax.Array, time_major: bool):
  if xs.ndim < nf + 1:
    _checks.fail("xs", f"an array of rank >= {nf + 1} (*batch, T, *features)",
                 f"shape {tuple(xs.shape)}")
  time_axis = 0 if time_major else xs.ndim - nf - 1
  batch = xs.shape[:time_axis] + xs.shape[time_axis + 1:xs.ndim - nf]
  return time_axis, tuple(batch)


def bidirectional(fw: LayerLike, bw: LayerLike | None = None,
                  merge: str | Callable[[Any, Any], Any] | None = "concat") -> Layer:
  """Runs a forward and a backward sequence layer over the same sequence.

  Args:
    fw: the forward direction: a ``Cell`` or any sequence layer (``recurrent``, ``stack``,
      ``bidirectional``).
    bw: the backward direction, always run backwards (``reversed_layer``); ``None``: a
      second, independently initialised copy of ``fw``.
    merge: how the two output sequences combine: ``"concat"`` (feature axis), ``"sum"``,
      ``"mean"``, ``"mul"``, a callable ``merge(ys_fw, ys_bw)``, or ``None`` for the pair.
      ``"sum"``, ``"mean"`` and ``"mul"`` need outputs of one size: a mismatch fails here
      when the cells' specs state both sizes, else at ``init``/``apply``.

  With ``lengths`` the backward direction runs over each sequence's valid part only,
  from its last valid step, and outputs stay aligned with inputs (as PyTorch's
  bidirectional layers).

  Params and carry are ``{"forward": ..., "backward": ...}``.
  """
  fw = _as_layer("fw", fw)
  bw = reversed_layer(fw if bw is None else _as_layer("bw", bw))
  return _bidirectional(fw, bw, merge)


def _bidirectional(fw: Layer, bw: Layer, merge) -> Layer:
  """``bidirectional`` of a forward layer and a backward layer that already runs backwards."""
  if merge is None or callable(merge):
    merge_fn = merge or (lambda a, b: (a, b))
  else:
    merge_fn = MERGES[_checks.choice("merge", merge, list(MERGES) + [None])]
  if merge in ("sum", "mean", "mul"):
    # Known now (the cells' specs state their output sizes): fail at build, not at init.
    sizes = _known_output_size(fw), _known_output_size(bw)
    if None not in sizes and sizes[0] != sizes[1]:
      _checks.fail("merge", f"{merge!r} of two directions with outputs of one feature size "
                   "(or merge='concat')", f"forward output size {sizes[0]} and backward "
                   f"output size {sizes[1]}")

  def init(key: jax.Array, input_size: Any) -> dict:
    key_fw, key_bw = jax.random.split(key)
    return {"forward": fw.init(key_fw, input_size), "backward": bw.init(key_bw, input_size)}

  def apply(params, xs, *, lengths=None, carry=None, key=None):
    _check_key(key)
    _check_keys("params", params, ("forward", "backward"))
    if carry is not None:
      _check_keys("carry", carry, ("forward", "backward"))
    carry = carry or {"forward": None, "backward": None}
    key_fw, key_bw = (None, None) if key is None else jax.random.split(key)
    ys_fw, c_fw = fw.apply(params["forward"], xs, lengths=lengths, carry=carry["forward"],
                           key=key_fw)
    ys_bw, c_bw = bw.apply(params["backward"], xs, lengths=lengths, carry=carry["backward"],
                           key=key_bw)
    # Sizes that need the input (hand-made cells, callable merges inside) are compared here.
    if merge in ("sum", "mean", "mul") and jnp.shape(ys_fw) != jnp.shape(ys_bw):
      _checks.fail("merge", f"{merge!r} of two directions with outputs of one shape (or "
                   "merge='concat')", f"forward outputs {tuple(jnp.shape(ys_fw))} and "
                   f"backward outputs {tuple(jnp.shape(ys_bw))}")
    return merge_fn(ys_fw, ys_bw), {"forward": c_fw, "backward": c_bw}

  spec = specs.BidirectionalSpec(forward=fw, backward=bw, merge=merge)
  return Layer(init, apply, _sequence_output_shape(init, apply, _time_major(fw)), spec)


def _check_keys(argument: str, tree: Any, keys: tuple[str, ...]) -> None:
  if not isinstance(tree, Mapping) or set(tree) != set(keys):
    got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    _checks.fail(argument, f"a dict with keys {list(keys)}", got)


def output_size(layer: Layer, params: Any, input_size: Any) -> Any:
  """Feature size of ``layer``'s outputs for one step's input (an int, or a shape for
  convolutional layers, then the output's ``(*spatial, F)``), by shape inference."""
  out = _output_features(layer.apply, params, (1, 1) + _step_input(layer, input_size),
                         "layers", "layers whose outputs are one array (merge=None gives a "
                         "pair)")
  return out[-1] if not isinstance(input_size, (tuple, list)) else out


def stack(*layers: LayerLike, dropout: float = 0.0, residual: bool = False) -> Layer:
  """Stacks sequence layers: each one's output sequence is the next one's input
  (PyTorch's ``num_layers``).

  Args:
    *layers: sequence ``Layer``s or ``Cell``s (wrapped with ``recurrent``).
    dropout: drop rate on each layer's outputs except the last (as PyTorch's ``dropout``),
      a fresh mask per element; only with a ``key``.
    residual: add each layer's input to its output from the second layer on (Wu et al.
      2016); those layers must keep the feature size.

  Params and carry are lists with one entry per layer; ``carry=None`` starts each from
  zeros.
  """
  if not layers:
    _checks.fail("layers", "at least one layer", "none")
  layers = tuple(_as_layer(f"layers[{i}]", layer) for i, layer in enumerate(layers))
  dropout = _checks.probability("dropout", dropout)
  if not isinstance(residual, bool):
    _checks.fail("residual", "a bool", repr(residual), TypeError)

  def init(key: jax.Array, input_size: Any) -> list:
    params = []
    for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)))):
      p = layer.init(k, input_size)
      size = output_size(layer, p, input_size)
      if residual and i > 0 and size != input_size:
        _checks.fail("residual", f"layer {i} to keep the feature size {input_size}",
                     f"output size {size}")
      params.append(p)
      input_size = size
    return params

  def apply(params, xs, *, lengths=None, carry=None, key=None):
    _check_key(key)
    if not isinstance(params, (list, tuple)) or len(params) != len(layers):
      _checks.fail("params", f"a list of {len(layers)} layers' params",
                   f"{type(params).__name__} of length {len(params)}"
                   if isinstance(params, (list, tuple)) else type(params).__name__)
    if carry is not None and (not isinstance(carry, (list, tuple)) or
                              len(carry) != len(layers)):
      _checks.fail("carry", f"a list of {len(layers)} carries (or None)",
                   type(carry).__name__)
    carries = list(carry) if carry is not None else [None] * len(layers)
    keys = [None] * len(layers) if key is None else list(jax.random.split(key, len(layers)))
    out_carries = []
    for i, layer in enumerate(layers):
      key_layer, key_drop = (None, None) if keys[i] is None else jax.random.split(keys[i])
      try:
        ys, c = layer.apply(params[i], xs, lengths=lengths, carry=carries[i], key=key_layer)
      except ValueError as error:
        if i == 0 or not str(error).startswith("xs:"):
          raise
        # Layer i's input is layer i-1's output: a feature-size mismatch is in params[i].
        raise ValueError(f"params[{i}]: do not fit the output of layer {i - 1} "
                         f"({str(error)[4:]})") from None
      if residual and i > 0:
        ys = ys + xs
      if dropout and key_drop is not None and i < len(layers) - 1:
        keep = jax.random.bernoulli(key_drop, 1.0 - dropout, ys.shape)
        ys = jnp.where(keep, ys / (1.0 - dropout), 0).astype(ys.dtype)
      out_carries.append(c)
      xs = ys
    return xs, out_carries

  spec = specs.StackSpec(layers=layers, dropout=dropout, residual=residual)
  return Layer(init, apply, _sequence_output_shape(init, apply, _time_major(layers[0])), spec)


# ----------------------------------------------------------------------------- traversal


def map_layers(layer: Layer, fn: Callable[[Layer], Layer]) -> Layer:
  """Rebuilds ``layer`` with each ``recurrent`` layer inside it replaced by ``fn(it)``, in
  the order of the layer's carry (a bidirectional layer's forward then backward direction, a
  stack's layers in order). Any other layer without recurrent layers inside is kept.

  The one traversal of the sequence combinators: wrappers (``gradflow``'s perturbations,
  weight interop) use it instead of switching on layer kinds.
  """
  if not callable(fn):
    _checks.fail("fn", "a callable fn(layer) -> layer", repr(fn), TypeError)
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return fn(layer)
  if isinstance(spec, specs.BidirectionalSpec):
    # The backward layer already runs backwards: keep it as ``fn`` made it.
    return _bidirectional(map_layers(spec.forward, fn), map_layers(spec.backward, fn),
                          spec.merge)
  if isinstance(spec, specs.StackSpec):
    return stack(*(map_layers(sub, fn) for sub in spec.layers), dropout=spec.dropout,
                 residual=spec.residual)
  if isinstance(spec, specs.FlippedSpec):
    return _flipped(map_layers(spec.layer, fn))
  return layer


def map_cells(layer: Layer, fn: Callable[[Cell], Cell]) -> Layer:
  """``layer`` with every cell inside replaced by ``fn(cell)``, options kept."""
  if not callable(fn):
    _checks.fail("fn", "a callable fn(cell) -> cell", repr(fn), TypeError)
  return map_layers(layer, lambda r: recurrent(fn(r.spec.cell), **r.spec.options))


def recurrent_layers(layer: Layer) -> list[Layer]:
  """The ``recurrent`` layers inside ``layer``, in the order ``map_layers`` visits them."""
  found = []

  def visit(r):
    found.append(r)
    return r
  map_layers(layer, visit)
  return found
