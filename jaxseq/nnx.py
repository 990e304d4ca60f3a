"""Flax NNX modules around jaxseq's cells and sequence layers.

The same set as ``jaxseq.linen`` in NNX's style: ``in_features`` first, ``rngs=`` by
keyword, one ``nnx.Param`` per array, ``train()``/``eval()`` switch dropout::

    from flax import nnx
    import optax, jaxseq.nnx

    model = jaxseq.nnx.LSTM(16, 64, num_layers=2, bidirectional=True, dropout=0.2,
                            rngs=nnx.Rngs(0))
    optimizer = jaxseq.nnx.optimizer(model, optax.adam(1e-3))   # nnx.Optimizer(..., wrt=Param)

    @nnx.jit
    def train_step(model, optimizer, xs, lengths, targets):
      def loss_fn(model):
        return jnp.mean((model(xs, seq_lengths=lengths) - targets) ** 2)
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      jaxseq.nnx.update(optimizer, model, grads)
      return loss

``model.params()`` is the jaxseq params tree (plain arrays), which the functional API,
``jaxseq.interop`` and ``jaxseq.gradflow`` take with ``model.layer``; ``params=`` in any
constructor, or ``RNN.from_torch(module)``, loads a tree (imported weights)::

    model = jaxseq.nnx.RNN.from_torch(torch_lstm)
    state = jaxseq.interop.to_torch(model.layer, model.params())

Calls take ``nnx.RNN``'s names (``initial_carry``, ``seq_lengths``, ``return_carry``,
``time_major``, ``reverse``, ``keep_order``, ``rngs``) with Flax's meanings, and differ from
Flax's RNN where ``jaxseq.linen``'s docstring says: padded outputs are zero, a length-0
sequence returns the initial carry, several batch axes work with ``seq_lengths``, and the
LSTM carry is ``LSTMState(h, c)`` (Flax's is ``(c, h)``).

Flax versions: ``nnx.Optimizer`` takes ``wrt`` and its ``update`` takes the model from
flax 0.11 on (``optimizer``/``update`` here work with both); containers of Variables are
marked with ``nnx.data`` where it exists (0.11+); values are read without the
``Variable.value`` property deprecated in 0.12.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq import cells as cells_lib
from jaxseq import interop
from jaxseq import linen as _shared
from jaxseq._layer import Layer

nnx = _checks.require("flax.nnx", "flax", "jaxseq.nnx")

# Containers holding Variables are data, not static, from flax 0.11 on; before, NNX found
# the Variables in plain lists and dicts by itself.
_data = getattr(nnx, "data", lambda value: value)


def _is_variable(value: Any) -> bool:
  return isinstance(value, nnx.Variable)


def _read(variable: Any) -> Any:
  """A Variable's array (``get_value`` where ``.value`` is deprecated)."""
  get = getattr(variable, "get_value", None)
  return get() if get is not None else variable.value


def _dropout_stream(rngs: Any) -> Any:
  """What the module keeps to draw dropout keys from: its own fork of the ``"dropout"``
  stream (as ``nnx.Dropout`` does), or the ``Rngs`` itself where streams cannot fork."""
  if not isinstance(rngs, (nnx.Rngs, nnx.RngStream)):
    _checks.fail("rngs", "an nnx.Rngs or nnx.RngStream", type(rngs).__name__, TypeError)
  stream = rngs
  if isinstance(rngs, nnx.Rngs):
    try:
      stream = rngs["dropout"]
    except (KeyError, TypeError, AttributeError):
      stream = rngs.dropout
  fork = getattr(stream, "fork", None)
  return fork() if callable(fork) and isinstance(stream, nnx.RngStream) else rngs


def _draw(source: Any) -> jax.Array:
  """One dropout key from an ``Rngs``, an ``RngStream`` or a key."""
  if isinstance(source, nnx.Rngs):
    return source.dropout()
  if isinstance(source, nnx.RngStream):
    return source()
  _checks.prng_key(source)
  return source


class _Sequence(nnx.Module):
  """What ``RNN`` and the convenience modules share."""

  def _setup(self, layer: Layer, in_features: Any, rngs: Any, params: Any,
             time_major: bool, return_carry: bool, reverse: bool, keep_order: bool,
             deterministic: bool) -> None:
    for argument, value in (("time_major", time_major), ("return_carry", return_carry),
                            ("reverse", reverse), ("keep_order", keep_order),
                            ("deterministic", deterministic)):
      _checks.boolean(argument, value)
    in_features = _in_features(layer, in_features)
    shapes = _shared.param_shapes(layer, in_features)
    if params is None:
      if rngs is None:
        _checks.fail("rngs", "an nnx.Rngs to initialise the params (or params=, a tree "
                     "to load)", "None", TypeError)
      if not isinstance(rngs, nnx.Rngs):
        _checks.fail("rngs", "an nnx.Rngs", type(rngs).__name__, TypeError)
      params = layer.init(rngs.params(), in_features)
    else:
      params = _shared._plain(params)
      if jax.tree.structure(params) != jax.tree.structure(shapes) or any(
          jnp.shape(p) != s.shape for p, s in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(shapes))):
        _checks.fail("params", f"the params of this layer for in_features {in_features}, "
                     f"shaped {_checks.describe(shapes)}", _checks.describe(params))
      params = jax.tree.map(jnp.asarray, params)
    self.layer = layer
    self.in_features = in_features
    self.weights = _data(jax.tree.map(nnx.Param, params))
    self.rngs = _data(None)
    if rngs is not None and _shared.has_dropout(layer):
      self.rngs = _dropout_stream(rngs)
    self.time_major = time_major
    self.return_carry = return_carry
    self.reverse = reverse
    self.keep_order = keep_order
    self.deterministic = deterministic

  def params(self) -> Any:
    """The jaxseq params tree, plain arrays (what ``self.layer.apply`` takes)."""
    return jax.tree.map(_read, self.weights, is_leaf=_is_variable)

  def __call__(self, inputs: jax.Array, *, initial_carry: Any = None,
               seq_lengths: Optional[jax.Array] = None, return_carry: Optional[bool] = None,
               time_major: Optional[bool] = None, reverse: Optional[bool] = None,
               keep_order: Optional[bool] = None, deterministic: Optional[bool] = None,
               rngs: Any = None) -> Any:
    """Runs the layer over ``inputs``, with ``nnx.RNN``'s names.

    Args:
      inputs: ``(*batch, T, *features)``, or ``(T, *batch, *features)`` when
        ``time_major``.
      initial_carry: the layer's carry; zeros if None.
      seq_lengths: integer valid lengths, shaped like the batch axes.
      return_carry, time_major, reverse, keep_order: override the attributes (Flax's
        meanings; see ``jaxseq.linen``).
      deterministic: overrides the attribute that ``train()``/``eval()`` set: no dropout
        when True.
      rngs: an ``nnx.Rngs`` (its ``dropout`` stream) or a key for the dropout masks,
        instead of the stream the module forked from its constructor's ``rngs``; an
        ``RngStream`` (what ``nnx.Bidirectional`` passes, meant for carries, which are
        zeros here) is used only when the module keeps no stream.

    Returns:
      ``ys``, or ``(carry, ys)`` with ``return_carry``.
    """
    deterministic = self.deterministic if deterministic is None else deterministic
    key = None
    if not _checks.boolean("deterministic", deterministic) and _shared.has_dropout(self.layer):
      source = self.rngs
      # An RngStream given to the call is what nnx.Bidirectional hands every RNN (its
      # stream for carry initialisation): a fallback only, not a dropout stream to prefer.
      if rngs is not None and (source is None or not isinstance(rngs, nnx.RngStream)):
        source = rngs
      if source is None:
        _checks.fail("rngs", "an nnx.Rngs for the dropout masks (give it to the "
                     "constructor or the call), or deterministic=True / model.eval()",
                     "None", TypeError)
      key = _draw(source)
    carry, ys = _shared.run(
        self.layer, self.params(), inputs, initial_carry=initial_carry,
        seq_lengths=seq_lengths, key=key,
        time_major=self.time_major if time_major is None else time_major,
        reverse=self.reverse if reverse is None else reverse,
        keep_order=self.keep_order if keep_order is None else keep_order)
    if self.return_carry if return_carry is None else return_carry:
      return carry, ys
    return ys


def _in_features(layer: Layer, in_features: Any) -> Any:
  """``in_features`` as ``layer.init`` takes it: an int, or ``(*spatial, C)`` (or ``C``
  alone when no param depends on the frame) for convolutional layers."""
  if isinstance(in_features, (tuple, list)):
    return _checks.positive_ints("in_features", in_features)
  return _checks.positive_int("in_features", in_features)


class RNN(_Sequence):
  """Any jaxseq ``Cell`` or sequence layer as an NNX module.

  Args:
    in_features: one step's input features (``(*spatial, C)`` for conv cells).
    cell: a ``Cell`` (run as ``jaxseq.recurrent(cell, unroll=, remat=)``) or a sequence
      ``Layer`` (``recurrent``, ``bidirectional``, ``stack``, ``interop.from_torch``'s).
    rngs: ``nnx.Rngs``: ``params`` initialises the weights, ``dropout`` (forked and kept)
      draws dropout masks. Optional with ``params``.
    params: a jaxseq params tree to load instead of initialising.
    time_major, return_carry, reverse, keep_order: ``nnx.RNN``'s options.
    unroll, remat: as in ``jaxseq.unroll``; for a layer, applied to each recurrent layer
      inside it unless 1 / False.
    deterministic: no dropout (``eval()`` sets it, ``train()`` clears it).
  """

  def __init__(self, in_features: Any, cell: Any, *, rngs: Any = None, params: Any = None,
               time_major: bool = False, return_carry: bool = False, reverse: bool = False,
               keep_order: bool = False, unroll: Any = 1, remat: Any = False,
               deterministic: bool = False):
    layer = _shared.as_layer("cell", cell, unroll, remat)
    self._setup(layer, in_features, rngs, params, time_major, return_carry, reverse,
                keep_order, deterministic)

  @classmethod
  def from_torch(cls, module: Any, *, rngs: Any = None, **options) -> "RNN":
    """The module holding a PyTorch ``nn.RNN``/``LSTM``/``GRU``'s weights
    (``jaxseq.interop.from_torch``); ``time_major`` defaults to ``not batch_first``."""
    layer, params = interop.from_torch(module)
    options.setdefault("time_major", not module.batch_first)
    return cls(int(module.input_size), layer, rngs=rngs, params=params, **options)


class _Convenience(_Sequence):
  _factory = None

  def __init__(self, in_features: Any, hidden_features: int, *cell_args: Any,
               num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
               recurrent_dropout: float = 0.0, rngs: Any = None, params: Any = None,
               time_major: bool = False, return_carry: bool = False, reverse: bool = False,
               keep_order: bool = False, unroll: Any = 1, remat: Any = False,
               deterministic: bool = False, **cell_options: Any):
    layer = _shared.build_layer(type(self)._factory, (hidden_features,) + cell_args,
                                tuple(sorted(cell_options.items())), num_layers,
                                bidirectional, dropout, recurrent_dropout, unroll, remat)
    self._setup(layer, in_features, rngs, params, time_major, return_carry, reverse,
                keep_order, deterministic)


_ARGS = """
  Args:
    in_features: one step's input features.
    hidden_features: the hidden size ``H``.
    num_layers: stacked layers (a ``jaxseq.stack``; ``params()`` is then a list).
    bidirectional: each layer is a ``jaxseq.bidirectional`` pair, outputs concatenated.
    dropout: drop rate on each layer's outputs except the last (PyTorch's ``dropout``).
    recurrent_dropout: drop rate on ``h_{t-1}`` as it enters each step, one mask per
      sequence (Gal & Ghahramani 2016).
    rngs, params, time_major, return_carry, reverse, keep_order, unroll, remat,
      deterministic: as in ``RNN``.
    **cell_options: further keyword options of the cell factory (``use_bias``,
      ``dtype``, initializers, ...).
"""


class LSTM(_Convenience):
  """An LSTM (``jaxseq.lstm(hidden_features, **cell_options)``) as an NNX module, laid
  out as ``interop.from_torch`` lays out ``torch.nn.LSTM``, so
  ``interop.to_torch(model.layer, model.params())`` gives PyTorch's weights.
  """
  _factory = staticmethod(cells_lib.lstm)


class GRU(_Convenience):
  """A GRU (``jaxseq.gru(hidden_features, **cell_options)``) as an NNX module, laid out
  as ``torch.nn.GRU`` (see ``LSTM``).
  """
  _factory = staticmethod(cells_lib.gru)


class SimpleRNN(_Convenience):
  """An Elman RNN (``jaxseq.simple_rnn(hidden_features, **cell_options)``) as an NNX
  module, laid out as ``torch.nn.RNN`` (see ``LSTM``).
  """
  _factory = staticmethod(cells_lib.simple_rnn)


class MGU(_Convenience):
  """A minimal gated unit RNN (``jaxseq.mgu(hidden_features, **cell_options)``) as an NNX
  module.
  """
  _factory = staticmethod(cells_lib.mgu)


class ConvLSTM(_Convenience):
  """A convolutional LSTM (``jaxseq.conv_lstm(features, kernel_size, **cell_options)``,
  Shi et al. 2015) as an NNX module: ``ConvLSTM(in_features, features, kernel_size,
  ...)`` with ``in_features = (*spatial, C)`` (``C`` alone with ``peephole=False``, the
  ConvLSTM of Flax and Keras, whose params fit frames of any size). Inputs are
  ``(*batch, T, *spatial, C)``.
  """
  _factory = staticmethod(cells_lib.conv_lstm)

  def __init__(self, in_features: Any, features: int, kernel_size: Any, **options: Any):
    if not isinstance(kernel_size, (tuple, list)):
      _checks.fail("kernel_size", "a tuple of positive ints", repr(kernel_size), TypeError)
    super().__init__(in_features, features, tuple(kernel_size), **options)


for _module in (LSTM, GRU, SimpleRNN, MGU):
  _module.__doc__ += _ARGS


# ----------------------------------------------------------------------------- optimizer


def optimizer(model: Any, tx: Any, wrt: Any = None) -> Any:
  """``nnx.Optimizer(model, tx, wrt=wrt)`` (``wrt`` defaults to ``nnx.Param``) on any
  supported Flax version."""
  wrt = nnx.Param if wrt is None else wrt
  try:
    return nnx.Optimizer(model, tx, wrt=wrt)
  except TypeError:  # flax < 0.10.x: no wrt, Params only
    return nnx.Optimizer(model, tx)


def update(optimizer: Any, model: Any, grads: Any) -> Any:
  """Applies ``grads`` to ``model``: ``optimizer.update(model, grads)`` from flax 0.11 on,
  ``optimizer.update(grads)`` before (and for ``nnx.ModelAndOptimizer``)."""
  parameters = [p for p in inspect.signature(optimizer.update).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if len(parameters) >= 2:
    return optimizer.update(model, grads)
  return optimizer.update(grads)


__all__ = ["ConvLSTM", "GRU", "LSTM", "MGU", "RNN", "SimpleRNN", "optimizer", "update"]
