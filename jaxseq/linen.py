"""Flax linen modules around jaxseq's cells and sequence layers.

``RNN`` takes the call names of Flax's ``nn.RNN`` (``initial_carry``, ``seq_lengths``,
``return_carry``, ``time_major``, ``reverse``, ``keep_order``), so it drops into
``nn.Bidirectional`` and code written for ``nn.RNN``; ``LSTM``, ``GRU``, ``SimpleRNN``,
``MGU`` and ``ConvLSTM`` build the layer for you (``num_layers``, ``bidirectional``,
``dropout``, ``recurrent_dropout``)::

    import flax.linen as nn
    import jaxseq, jaxseq.linen

    class Tagger(nn.Module):
      @nn.compact
      def __call__(self, x, lengths, train: bool = False):
        h = jaxseq.linen.LSTM(64, num_layers=2, bidirectional=True, dropout=0.2)(
            x, seq_lengths=lengths, deterministic=not train)
        return nn.Dense(10)(h)

The module holds the jaxseq params tree unchanged and calls the same pure functions, so
the functional API, ``jaxseq.interop.to_torch`` and ``jaxseq.gradflow`` take the tree as it
is. A module's ``params`` collection IS the tree when the tree is a dict (a cell's params,
a ``bidirectional`` layer's ``{"forward", "backward"}``); a ``stack``'s params (``num_layers
> 1``, or what ``interop.from_torch`` returns) are a list, which a Flax collection cannot
be, so they live under the one key ``"layers"``. ``to_variables(tree)`` and
``tree_of(variables["params"])`` go from one to the other::

    layer, tree = jaxseq.interop.from_torch(torch_lstm)          # imported weights
    module = jaxseq.linen.RNN(layer)
    ys = module.apply(jaxseq.linen.to_variables(tree), x)
    state = jaxseq.interop.to_torch(layer, jaxseq.linen.tree_of(variables["params"]))

Where the semantics differ from ``nn.RNN`` (and why):

* **Padded outputs are zero.** Past ``seq_lengths`` Flax keeps computing and returns what
  the cell made of the padding; jaxseq returns zeros there, so a loss or a pooling over the
  padded outputs needs no mask to be correct.
* **A length-0 sequence returns the initial carry.** Flax returns the carry of the last
  padded step (its index ``length - 1`` wraps to ``-1``); jaxseq's carry is always the carry
  after the last *valid* step, which for an empty sequence is the one it started from.
* **Several batch axes work with** ``seq_lengths`` (shaped like the batch axes), for
  outputs and the final carry alike.
* **The LSTM carry is** ``LSTMState(h, c)``; Flax's is ``(c, h)``. Convert with
  ``jaxseq.interop.carry_to_flax`` / ``carry_from_flax``.
* ``init_key`` is accepted for ``nn.Bidirectional`` and ignored: jaxseq's initial carries
  are zeros.
* ``deterministic`` (and the ``"dropout"`` rng stream) exists because jaxseq layers carry
  dropout; ``nn.RNN`` has none.

``reverse`` and ``keep_order`` mean what they mean in Flax: ``reverse=True`` runs each
sequence from its last valid step back to step 0 (padding stays at the end) and, unless
``keep_order=True``, returns the outputs in that processing order, i.e. each sequence's
valid steps flipped in time (``jaxseq.flip_sequences``). ``keep_order=True`` keeps
``ys[t]`` aligned with ``inputs[t]`` (how ``nn.Bidirectional`` calls its backward RNN).

Flax is imported by this module only; ``import jaxseq`` does not import it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import cells as cells_lib
from jaxseq import layers as layers_lib
from jaxseq import specs
from jaxseq._layer import Layer
from jaxseq.cells.base import Cell

nn = _checks.require("flax.linen", "flax", "jaxseq.linen")

STACK_KEY = "layers"


# ----------------------------------------------------------------------------- shared
# Pure-JAX helpers, also used by ``jaxseq.nnx``.


def as_layer(argument: str, cell_or_layer: Any, unroll: int | bool = 1,
             remat: bool | int = False) -> Layer:
  """The sequence layer a module runs: a ``Cell`` becomes ``recurrent(cell, unroll=,
  remat=)``; a layer gets ``unroll``/``remat`` on each of its recurrent layers when they
  differ from the defaults (1, False), and is kept as it is otherwise."""
  if isinstance(cell_or_layer, Cell):
    return _recurrent(cell_or_layer, unroll, remat)
  if not isinstance(cell_or_layer, Layer) or not cell_or_layer.is_sequence:
    got = (f"a {cell_or_layer.spec.kind!r} layer" if isinstance(cell_or_layer, Layer)
           else type(cell_or_layer).__name__)
    _checks.fail(argument, "a jaxseq Cell or sequence Layer (recurrent, bidirectional, "
                 "stack)", got, TypeError)
  if unroll == 1 and remat is False:
    return cell_or_layer
  return _with_options(cell_or_layer, unroll, remat)


def _cached(fn):
  """``lru_cache`` that falls back to a plain call for unhashable arguments: the same
  options give the same layer object, so jaxseq's compiled scans and shape checks (cached
  on the cell's functions) are reused across calls instead of retraced."""
  cached = functools.lru_cache(maxsize=256)(fn)

  @functools.wraps(fn)
  def wrapper(*args):
    try:
      return cached(*args)
    except TypeError as error:
      if "unhashable" not in str(error):
        raise
      return fn(*args)
  return wrapper


@_cached
def _recurrent(cell: Cell, unroll, remat) -> Layer:
  return layers_lib.recurrent(cell, unroll=unroll, remat=remat)


@_cached
def _with_options(layer: Layer, unroll, remat) -> Layer:
  return layers_lib.map_layers(layer, lambda r: layers_lib.recurrent(
      r.spec.cell, **{**r.spec.options, "unroll": unroll, "remat": remat}))


@_cached
def build_layer(factory: Callable[..., Cell], cell_args: tuple, cell_options: tuple,
                num_layers: int, bidirectional: bool, dropout: float,
                recurrent_dropout: float, unroll, remat) -> Layer:
  """The layer of the convenience modules, laid out as ``interop.from_torch`` lays out
  PyTorch's modules: ``recurrent`` per layer, ``bidirectional`` around it when asked,
  and a ``stack`` with ``dropout`` between layers when ``num_layers > 1``."""
  num_layers = _checks.positive_int("num_layers", num_layers)
  bidirectional = _checks.boolean("bidirectional", bidirectional)
  dropout = _checks.probability("dropout", dropout)
  cell = factory(*cell_args, **dict(cell_options))
  one = layers_lib.recurrent(cell, unroll=unroll, remat=remat,
                             recurrent_dropout=recurrent_dropout)
  one = layers_lib.bidirectional(one) if bidirectional else one
  if num_layers == 1:
    return one
  return layers_lib.stack(*([one] * num_layers), dropout=dropout)


def has_dropout(layer: Layer) -> bool:
  """Whether ``layer`` may draw dropout masks from a key (a layer of a kind it does not
  know is assumed to)."""
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return bool(spec.dropout or spec.recurrent_dropout)
  if isinstance(spec, specs.BidirectionalSpec):
    return has_dropout(spec.forward) or has_dropout(spec.backward)
  if isinstance(spec, specs.StackSpec):
    return bool(spec.dropout) or any(has_dropout(sub) for sub in spec.layers)
  if isinstance(spec, specs.FlippedSpec):
    return has_dropout(spec.layer)
  return True


def feature_ndim(layer: Layer) -> int:
  """Rank of one step's input without batch axes (1 dense, 3 for 2-D conv layers)."""
  return layers_lib._feature_ndim(layer)


def input_size(layer: Layer, inputs: Any) -> Any:
  """What ``layer.init`` takes for these inputs: the feature size, or ``(*spatial, C)``."""
  nf = feature_ndim(layer)
  if not hasattr(inputs, "shape") or len(inputs.shape) < nf + 1:
    _checks.fail("inputs", f"an array of rank >= {nf + 1} (*batch, T, *features)",
                 f"shape {tuple(getattr(inputs, 'shape', ()))}" if hasattr(inputs, "shape")
                 else type(inputs).__name__, TypeError if not hasattr(inputs, "shape")
                 else ValueError)
  step = tuple(int(d) for d in inputs.shape[len(inputs.shape) - nf:])
  return step[0] if nf == 1 else step


@_cached
def param_shapes(layer: Layer, size: Any) -> Any:
  """The params tree of ``layer.init(key, size)`` as ``ShapeDtypeStruct``s."""
  return jax.eval_shape(lambda k: layer.init(k, size), jax.random.PRNGKey(0))


@_cached
def _backward(layer: Layer) -> Optional[Layer]:
  """``layer`` running backwards with outputs aligned with its inputs, when that is a
  ``recurrent`` layer's own ``reverse`` option (no flipping of the data); else None."""
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec) and not spec.reverse:
    return layers_lib.recurrent(spec.cell, **{**spec.options, "reverse": True})
  return None


def run(layer: Layer, params: Any, inputs: Any, *, initial_carry: Any = None,
        seq_lengths: Any = None, key: Any = None, time_major: bool = False,
        reverse: bool = False, keep_order: bool = False) -> tuple[Any, Any]:
  """Runs ``layer`` with ``nn.RNN``'s meaning of ``time_major``, ``reverse`` and
  ``keep_order``; returns ``(carry, ys)`` as ``nn.RNN`` does with ``return_carry=True``."""
  for argument, value in (("time_major", time_major), ("reverse", reverse),
                          ("keep_order", keep_order)):
    _checks.boolean(argument, value)
  inputs = _checks.float_array("inputs", inputs)
  nf = feature_ndim(layer)
  input_size(layer, inputs)  # the rank check, with the name ``inputs``
  last = inputs.ndim - nf - 1
  time_axis = 0 if time_major else last
  inner_axis = 0 if layers_lib._time_major(layer) else last
  xs = jnp.moveaxis(inputs, time_axis, inner_axis)
  lengths = None if seq_lengths is None else jnp.asarray(seq_lengths)
  flip = lambda tree: jax.tree.map(
      lambda a: layers_lib.flip_sequences(a, lengths, inner_axis), tree)
  backward = _backward(layer) if reverse else None
  if not reverse:
    ys, carry = layer.apply(params, xs, lengths=lengths, carry=initial_carry, key=key)
  elif backward is not None:  # outputs come back aligned: flip them for processing order
    ys, carry = backward.apply(params, xs, lengths=lengths, carry=initial_carry, key=key)
    ys = ys if keep_order else flip(ys)
  else:  # Flax's own way: run on the flipped sequences, flip back to keep the order
    ys, carry = layer.apply(params, flip(xs), lengths=lengths, carry=initial_carry, key=key)
    ys = flip(ys) if keep_order else ys
  ys = jax.tree.map(lambda a: jnp.moveaxis(a, inner_axis, time_axis), ys)
  return carry, ys


def _plain(tree: Any) -> Any:
  """Flax's ``FrozenDict``s as plain dicts, lists kept, so the tree is the one jaxseq's
  functions (and ``interop``) were written for."""
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    return type(tree)(_plain(v) for v in tree)
  return tree


def to_variables(tree: Any) -> dict:
  """``{"params": ...}`` for a module holding the jaxseq params ``tree`` (imported weights,
  say): the tree itself when it is a dict, ``{"layers": tree}`` for a ``stack``'s list."""
  if isinstance(tree, Mapping):
    return {"params": _plain(tree)}
  if isinstance(tree, (list, tuple)):
    return {"params": {STACK_KEY: _plain(list(tree))}}
  _checks.fail("tree", "a jaxseq params tree (a dict, or a stack's list)",
               type(tree).__name__, TypeError)


def tree_of(params: Mapping) -> Any:
  """The jaxseq params tree in a module's ``params`` collection (``variables["params"]``,
  or ``variables["params"]["<submodule>"]``), as ``interop`` and ``gradflow`` take it;
  works on gradients shaped like the params too."""
  if not isinstance(params, Mapping):
    _checks.fail("params", "a module's params collection (a dict)", type(params).__name__,
                 TypeError)
  if set(params) == {STACK_KEY} and isinstance(params[STACK_KEY], (list, tuple)):
    return _plain(list(params[STACK_KEY]))
  return _plain(params)


# ----------------------------------------------------------------------------- modules


class _SequenceModule(nn.Module):
  """What ``RNN`` and the convenience modules share: one param per top-level entry of the
  jaxseq params tree (the whole list for a stack), and ``nn.RNN``'s ``__call__``."""

  def _layer(self) -> Layer:
    raise NotImplementedError

  def _params(self, layer: Layer, inputs: Any) -> Any:
    size = input_size(layer, inputs)
    shapes = param_shapes(layer, size)
    names = list(shapes) if isinstance(shapes, Mapping) else [STACK_KEY]
    # One key for the whole tree, so it is ``layer.init(key, size)`` for one key.
    tree = None
    if not all(self.has_variable("params", name) for name in names):
      tree = layer.init(self.make_rng("params"), size)
    # When the param exists Flax still traces its init function to check the shape of
    # what it holds: zeros of the expected shapes are the cheap thing to trace.
    expected = lambda part: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), part)
    if not isinstance(shapes, Mapping):
      return _plain(self.param(STACK_KEY, lambda _: expected(shapes) if tree is None
                               else tree))
    return {name: _plain(self.param(name, lambda _, name=name: expected(shapes[name])
                                    if tree is None else tree[name]))
            for name in names}

  @nn.compact
  def __call__(self, inputs: jax.Array, *, initial_carry: Any = None,
               init_key: Any = None, seq_lengths: Optional[jax.Array] = None,
               return_carry: Optional[bool] = None, time_major: Optional[bool] = None,
               reverse: Optional[bool] = None, keep_order: Optional[bool] = None,
               deterministic: Optional[bool] = None) -> Any:
    """Runs the layer over ``inputs``.

    Args:
      inputs: ``(*batch, T, *features)``, or ``(T, *batch, *features)`` when
        ``time_major``.
      initial_carry: the layer's carry (``LSTMState(h, c)`` for LSTMs, a list per layer for
        stacks, ``(forward, backward)`` inside ``nn.Bidirectional``...); zeros if None.
      init_key: ignored (zero initial carries), accepted for ``nn.Bidirectional``.
      seq_lengths: integer valid lengths, shaped like the batch axes.
      return_carry, time_major, reverse, keep_order: override the attributes, as in
        ``nn.RNN``.
      deterministic: no dropout when True; merged with the attribute by
        ``nn.merge_param`` (exactly one of the two must be set when the layer has
        dropout; masks come from the ``"dropout"`` rng stream).

    Returns:
      ``ys``, or ``(carry, ys)`` with ``return_carry``: ``nn.RNN``'s order.
    """
    del init_key
    layer = self._layer()
    params = self._params(layer, inputs)
    key = None
    if has_dropout(layer) or (deterministic is not None or self.deterministic is not None):
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
      if not deterministic and has_dropout(layer):
        key = self.make_rng("dropout")
    carry, ys = run(layer, params, inputs, initial_carry=initial_carry,
                    seq_lengths=seq_lengths, key=key,
                    time_major=self.time_major if time_major is None else time_major,
                    reverse=self.reverse if reverse is None else reverse,
                    keep_order=self.keep_order if keep_order is None else keep_order)
    if self.return_carry if return_carry is None else return_carry:
      return carry, ys
    return ys

  @property
  def layer(self) -> Layer:
    """The jaxseq sequence layer this module runs (for ``interop``, ``gradflow``)."""
    return self._layer()


class RNN(_SequenceModule):
  """Any jaxseq ``Cell`` or sequence layer as a Flax linen module, with ``nn.RNN``'s
  attributes and call signature (see the module docstring for where they differ).

  Attributes:
    cell: a ``Cell`` (run as ``jaxseq.recurrent(cell, unroll=, remat=)``) or a sequence
      ``Layer`` (``recurrent``, ``bidirectional``, ``stack``, or one from
      ``interop.from_torch``), run as it is.
    time_major: inputs and outputs are ``(T, *batch, *features)``; the layer's own
      ``time_major`` does not matter, the module moves the axis for it.
    return_carry: return ``(carry, ys)`` instead of ``ys``.
    reverse: process each sequence from its last valid step back to the first.
    keep_order: with ``reverse``, return the outputs aligned with the inputs instead of in
      processing order.
    unroll: ``lax.scan``'s unroll factor; for a layer, applied to each recurrent layer
      inside it unless 1.
    remat: gradient checkpointing as in ``jaxseq.unroll``; likewise for layers.
    deterministic: turns dropout off; see ``__call__``.
  """
  cell: Any
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: Any = 1
  remat: Any = False
  deterministic: Optional[bool] = None

  def _layer(self) -> Layer:
    return as_layer("cell", self.cell, self.unroll, self.remat)


class _Convenience(_SequenceModule):
  _factory = None

  def _cell_args(self) -> tuple:
    return (self.features,)

  def _layer(self) -> Layer:
    options = tuple(sorted(dict(self.cell_options or {}).items()))
    return build_layer(type(self)._factory, self._cell_args(), options, self.num_layers,
                       self.bidirectional, self.dropout, self.recurrent_dropout,
                       self.unroll, self.remat)


class _DenseConvenience(_Convenience):
  features: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  cell_options: Optional[Mapping[str, Any]] = None
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: Any = 1
  remat: Any = False
  deterministic: Optional[bool] = None


_ATTRIBUTES = """
  Attributes:
    num_layers: stacked layers (a ``jaxseq.stack``, whose params list lives under
      ``"layers"``).
    bidirectional: each layer is a ``jaxseq.bidirectional`` pair, outputs concatenated.
    dropout: drop rate on each layer's outputs except the last (PyTorch's ``dropout``;
      acts only with ``num_layers > 1``).
    recurrent_dropout: drop rate on ``h_{t-1}`` as it enters each step, one mask per
      sequence (Gal & Ghahramani 2016).
    cell_options: further keyword options of the cell factory (``use_bias``, ``dtype``,
      initializers, ...).
    time_major, return_carry, reverse, keep_order, unroll, remat, deterministic: as in
      ``RNN``.
"""


class LSTM(_DenseConvenience):
  """An LSTM (``jaxseq.lstm(features, **cell_options)``) as a linen module, laid out as
  ``interop.from_torch`` lays out ``torch.nn.LSTM``, so
  ``interop.to_torch(module.layer, tree_of(variables["params"]))`` gives PyTorch's
  weights. ``features`` is the hidden size ``H``.
  """
  _factory = staticmethod(cells_lib.lstm)


class GRU(_DenseConvenience):
  """A GRU (``jaxseq.gru(features, **cell_options)``) as a linen module, laid out as
  ``torch.nn.GRU`` (see ``LSTM``). ``features`` is the hidden size ``H``.
  """
  _factory = staticmethod(cells_lib.gru)


class SimpleRNN(_DenseConvenience):
  """An Elman RNN (``jaxseq.simple_rnn(features, **cell_options)``) as a linen module,
  laid out as ``torch.nn.RNN`` (see ``LSTM``). ``features`` is the hidden size ``H``.
  """
  _factory = staticmethod(cells_lib.simple_rnn)


class MGU(_DenseConvenience):
  """A minimal gated unit RNN (``jaxseq.mgu(features, **cell_options)``) as a linen
  module. ``features`` is the hidden size ``H``.
  """
  _factory = staticmethod(cells_lib.mgu)


class ConvLSTM(_Convenience):
  features: int
  kernel_size: Any
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  cell_options: Optional[Mapping[str, Any]] = None
  time_major: bool = False
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: Any = 1
  remat: Any = False
  deterministic: Optional[bool] = None

  _factory = staticmethod(cells_lib.conv_lstm)

  def _cell_args(self) -> tuple:
    return (self.features, tuple(self.kernel_size))


ConvLSTM.__doc__ = """A convolutional LSTM (``jaxseq.conv_lstm(features, kernel_size,
  **cell_options)``, Shi et al. 2015) as a linen module. ``features`` are the channels
  ``F`` of ``h`` and ``c``, ``kernel_size`` the convolution's ``(k_1, ..., k_n)``; inputs
  are ``(*batch, T, *spatial, C)``. With ``peephole=True`` (jaxseq's default; pass
  ``cell_options={"peephole": False}`` for Flax's and Keras's ConvLSTM) the params fix the
  frame size at init.
"""

for _module in (LSTM, GRU, SimpleRNN, MGU, ConvLSTM):
  _module.__doc__ += _ATTRIBUTES

__all__ = ["ConvLSTM", "GRU", "LSTM", "MGU", "RNN", "SimpleRNN", "to_variables", "tree_of"]
