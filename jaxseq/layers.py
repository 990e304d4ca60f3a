"""Sequence layers: ``Layer(init, apply)`` records and the combinators that build them."""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq.cells.base import Cell, LSTMState
from jaxseq import sequence


class ApplyFn(Protocol):
  def __call__(self, params: Any, xs: jax.Array, *, lengths: jax.Array | None = None,
               carry: Any = None, key: jax.Array | None = None) -> tuple[Any, Any]:
    """Runs the layer over ``xs``; returns ``(ys, carry)``. ``key`` turns dropout on."""


class Layer(NamedTuple):
  """A sequence layer as pure functions (stax's init/apply pair).

  Attributes:
    init: ``init(key, input_size) -> params``.
    apply: ``apply(params, xs, *, lengths=None, carry=None, key=None) -> (ys, carry)``.
      Without a ``key`` the layer is deterministic (dropout off).
    spec: static description (``kind`` and options) used by weight interop.
  """
  init: Callable[[jax.Array, int], Any]
  apply: ApplyFn
  spec: Optional[Mapping[str, Any]] = None


LayerLike = Union[Layer, Cell]
MERGES: dict[str, Callable[[Any, Any], Any]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": lambda a, b: a + b,
    "mean": lambda a, b: (a + b) / 2,
    "mul": lambda a, b: a * b,
}


def _check_key(key: Any) -> None:
  if key is None:
    return
  expected = "a single PRNG key from jax.random.PRNGKey or jax.random.key"
  if not (hasattr(key, "dtype") and hasattr(key, "shape")):
    _checks.fail("key", expected, type(key).__name__, TypeError)
  # A float array or a batch of keys would otherwise fail deep inside jax.random.
  try:
    jax.eval_shape(jax.random.split, key)
  except (TypeError, ValueError):
    _checks.fail("key", expected, f"an array of dtype {key.dtype} and shape "
                 f"{tuple(key.shape)}", TypeError)


def _sequence_axes(cell: Cell, xs: jax.Array, time_major: bool) -> tuple[int, tuple[int, ...]]:
  """The time axis of ``xs`` and its batch shape."""
  nf = sequence.feature_ndim(cell)
  if xs.ndim < nf + 1:  # as unroll checks it, before dropout's broadcasting changes xs
    _checks.fail("xs", f"an array of rank >= {nf + 1} (*batch, T, *features)",
                 f"shape {tuple(xs.shape)}")
  time_axis = 0 if time_major else xs.ndim - nf - 1
  batch = xs.shape[:time_axis] + xs.shape[time_axis + 1:xs.ndim - nf]
  return time_axis, tuple(batch)


def _with_recurrent_dropout(cell: Cell, mask: jax.Array) -> Cell:
  """The cell with ``h_{t-1}`` multiplied by a fixed mask before each step (Gal 2016)."""
  def step(params, carry, x_t):
    if isinstance(carry, LSTMState):
      dropped = carry._replace(h=carry.h * mask)
    elif isinstance(carry, jax.Array):
      dropped = carry * mask
    else:
      raise TypeError("recurrent_dropout: expected a cell whose carry is an array or an "
                      f"LSTMState, got carry of type {type(carry).__name__}")
    return cell.step(params, dropped, x_t)
  return cell._replace(step=step)


def recurrent(cell: Cell, *, reverse: bool = False, time_major: bool = False,
              unroll: int | bool = 1, remat: bool | int = False, dropout: float = 0.0,
              recurrent_dropout: float = 0.0) -> Layer:
  """A layer that runs ``cell`` over the sequence with ``jaxseq.unroll``.

  Args:
    cell: the ``Cell``.
    reverse, time_major, unroll, remat: as in ``jaxseq.unroll``.
    dropout: drop rate on the inputs, one mask per sequence shared by every step
      (variational dropout, Gal & Ghahramani 2016; Keras's ``dropout``).
    recurrent_dropout: drop rate on ``h_{t-1}`` as it enters each step, one mask per
      sequence (Gal & Ghahramani 2016). Both only act when ``apply`` gets a ``key``.

  ``params`` are the cell's params; ``carry`` is the cell's carry.
  """
  if not isinstance(cell, Cell):
    _checks.fail("cell", "a jaxseq Cell", type(cell).__name__, TypeError)
  dropout = _checks.probability("dropout", dropout)
  recurrent_dropout = _checks.probability("recurrent_dropout", recurrent_dropout)
  options = dict(reverse=reverse, time_major=time_major, unroll=unroll, remat=remat)

  def init(key: jax.Array, input_size: int) -> Any:
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
        _checks.cell_params(cell, params, xs.shape[-1])
        zero = jax.eval_shape(lambda p: cell.initial_carry(p, batch_shape), params)
        h = zero.h if isinstance(zero, LSTMState) else zero
        keep = jax.random.bernoulli(key_rec, 1.0 - recurrent_dropout, h.shape)
        step_cell = _with_recurrent_dropout(cell, keep / (1.0 - recurrent_dropout))
    return sequence.unroll(step_cell, params, xs, carry, lengths, **options)

  spec = dict(kind="recurrent", cell=cell, dropout=dropout,
              recurrent_dropout=recurrent_dropout, **options)
  return Layer(init, apply, spec)


def _as_layer(argument: str, layer: LayerLike) -> Layer:
  if isinstance(layer, Cell):
    return recurrent(layer)
  if not isinstance(layer, Layer):
    _checks.fail(argument, "a jaxseq Layer or Cell", type(layer).__name__, TypeError)
  return layer


def _reversed(argument: str, layer: Layer) -> Layer:
  spec = layer.spec or {}
  if spec.get("kind") != "recurrent":
    _checks.fail(argument, "a Cell or a layer made by jaxseq.recurrent (it must be re-run "
                 "in reverse)", f"a layer of kind {spec.get('kind')!r}")
  options = {k: v for k, v in spec.items() if k not in ("kind", "cell")}
  return recurrent(spec["cell"], **{**options, "reverse": True})


def bidirectional(fw: LayerLike, bw: LayerLike | None = None,
                  merge: str | Callable[[Any, Any], Any] | None = "concat") -> Layer:
  """Runs a forward and a backward recurrent layer over the same sequence.

  Args:
    fw: the forward direction: a ``Cell`` or a ``recurrent(...)`` layer.
    bw: the backward direction (a ``Cell`` or a ``recurrent(...)`` layer, always run with
      ``reverse=True``); ``None``: a second, independently initialised copy of ``fw``.
    merge: how the two output sequences combine: ``"concat"`` (feature axis), ``"sum"``,
      ``"mean"``, ``"mul"``, a callable ``merge(ys_fw, ys_bw)``, or ``None`` for the pair.

  With ``lengths`` the backward direction runs over each sequence's valid part only,
  from its last valid step, and outputs stay aligned with inputs (as PyTorch's
  bidirectional layers).

  Params and carry are ``{"forward": ..., "backward": ...}``.
  """
  fw = _as_layer("fw", fw)
  bw = _reversed("bw", fw if bw is None else _as_layer("bw", bw))
  if merge is None or callable(merge):
    merge_fn = merge or (lambda a, b: (a, b))
  else:
    merge_fn = MERGES[_checks.choice("merge", merge, list(MERGES) + [None])]

  def init(key: jax.Array, input_size: int) -> dict:
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
    return merge_fn(ys_fw, ys_bw), {"forward": c_fw, "backward": c_bw}

  spec = dict(kind="bidirectional", forward=fw.spec, backward=bw.spec, merge=merge)
  return Layer(init, apply, spec)


def _check_keys(argument: str, tree: Any, keys: tuple[str, ...]) -> None:
  if not isinstance(tree, Mapping) or set(tree) != set(keys):
    got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    _checks.fail(argument, f"a dict with keys {list(keys)}", got)


def _spatial_shape(spec: Mapping[str, Any] | None) -> tuple[int, ...]:
  """The axes between time and features of a layer's inputs: none for dense cells, the
  frame for convolutional cells (their ``spatial_shape``, or size 1 when it is unset)."""
  spec = spec or {}
  if spec.get("kind") == "recurrent":
    cell_spec = spec["cell"].spec or {}
    return tuple(cell_spec.get("spatial_shape")
                 or (1,) * (cell_spec.get("feature_ndim", 1) - 1))
  if spec.get("kind") == "bidirectional":
    return _spatial_shape(spec["forward"])
  if spec.get("kind") == "stack":
    return _spatial_shape(spec["layers"][0])
  return ()


def output_size(layer: Layer, params: Any, input_size: int) -> int:
  """Feature size of ``layer``'s outputs, by shape inference (no compute)."""
  xs = jax.ShapeDtypeStruct((1, 1) + _spatial_shape(layer.spec) + (input_size,), jnp.float32)
  ys, _ = jax.eval_shape(lambda p, x: layer.apply(p, x), params, xs)
  if not hasattr(ys, "shape"):
    _checks.fail("layers", "layers whose outputs are one array (merge=None gives a pair)",
                 type(ys).__name__)
  return ys.shape[-1]


def stack(*layers: LayerLike, dropout: float = 0.0, residual: bool = False) -> Layer:
  """Stacks layers: each one's output sequence is the next one's input (PyTorch's
  ``num_layers``).

  Args:
    *layers: ``Layer``s or ``Cell``s (wrapped with ``recurrent``).
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

  def init(key: jax.Array, input_size: int) -> list:
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

  spec = dict(kind="stack", layers=[layer.spec for layer in layers], dropout=dropout,
              residual=residual)
  return Layer(init, apply, spec)
