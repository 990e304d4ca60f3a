r"""One-to-many decoding: a token-in, logits-out ``Decoder``, ``generate`` and ``beam_search``.

A ``Decoder`` is one autoregressive step as pure functions (the ``Cell`` pattern one level
up). This module is ``jaxseq.decoding``; its names are re-exported at the top level
(``jaxseq.generate``, ``jaxseq.beam_search``, ``jaxseq.decoder``, ``jaxseq.as_cell``)::

    dec = jaxseq.decoder(jaxseq.stack(jaxseq.lstm(128), jaxseq.lstm(128)), vocab_size=V,
                  embed=32)                      # or embed=None: one-hot inputs
    params = dec.init(key)                       # {"embed", "core", "readout"}
    logits, carry = dec.apply(params, tokens)    # teacher forcing, tokens (*batch, T)
    carry, logits_t = dec.step(params, carry, tokens_t)          # one step, (*batch,)
    out = jaxseq.generate(dec, params, start, num_steps, key=key, temperature=0.8, top_k=10)
    beams = jaxseq.beam_search(dec, params, start, num_steps, beam_size=4)

Each step reads the previous token ``y_{t-1}``, embeds it (``e = E[y_{t-1}]``, or the
one-hot vector), runs the recurrent core and reads out a distribution over the vocabulary::

    (s_t, h_t) = core(s_{t-1}, e(y_{t-1}))
    p(y_t | y_{<t}) = softmax(readout(h_t))

``generate`` draws ``y_t`` from ``p`` (greedy ``argmax`` without a key; with a key, a sample
from ``softmax(logits / temperature)`` among the ``top_k`` most likely tokens, Fan et al.
2018) and feeds it back, all in one ``lax.scan``. ``beam_search`` keeps the ``beam_size``
most likely prefixes instead (Graves 2012; Sutskever et al. 2014), optionally ranked by the
length-normalised log-probability ``log p(y) / |y|^alpha`` (Wu et al. 2016 use a smoothed
form of the same idea). Both stop a sequence at its first stop token; the tokens after it
are padding and the returned ``lengths`` count the tokens up to and including it.

The core is any cell, a ``recurrent`` layer, a ``stack`` of them (``as_cell`` steps a stack
one time step, with the same params and carry as the layer), or a list of cells; ``apply``
runs the same core with ``jaxseq.unroll`` (the fast whole-sequence path) so a decoder trained
with teacher forcing generates with the very same params.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq import specs
from jaxseq._layer import Layer
from jaxseq.cells.base import Cell
from jaxseq.layers import output_size, recurrent, stack

Params = Any
Carry = Any
Core = Union[Cell, Layer, Sequence[Union[Cell, Layer]]]

__all__ = ["Beams", "Decoder", "Generation", "as_cell", "beam_search", "decoder", "generate",
           "sample_logits"]


class Decoder(NamedTuple):
  """One autoregressive step, token ids in and logits out, as pure functions.

  Attributes:
    init: ``init(key) -> params``, a plain dict: ``{"embed", "core", "readout"}``
      (``"embed"`` absent with one-hot inputs).
    initialize_carry: ``initialize_carry(params, tokens_shape) -> carry``, the zero carry
      for tokens of shape ``(*batch,)`` (one step's input shape, as for cells).
    step: ``step(params, carry, tokens) -> (carry, logits)``: tokens ``(*batch,)`` int,
      logits ``(*batch, vocab_size)``.
    apply: teacher forcing, ``apply(params, tokens, *, lengths=None, carry=None, key=None)
      -> (logits, carry)`` with tokens ``(*batch, T)`` and logits ``(*batch, T, V)``; the
      same function as ``T`` calls of ``step`` (``key`` turns the core's dropout on).
    vocab_size: ``V``, the number of token ids (inputs and outputs).
  """
  init: Callable[[jax.Array], Params]
  initialize_carry: Callable[[Params, tuple], Carry]
  step: Callable[[Params, Carry, jax.Array], tuple[Carry, jax.Array]]
  apply: Callable[..., tuple[jax.Array, Carry]]
  vocab_size: int


class Generation(NamedTuple):
  """What ``generate`` returns.

  Attributes:
    tokens: ``(*batch, num_steps)`` int32, the generated tokens (the start token excluded);
      after a sequence's stop token, ``pad_token``.
    lengths: ``(*batch,)`` int32, tokens up to and including the first stop token
      (``num_steps`` when none was generated).
    log_prob: ``(*batch,)``, ``sum_t log p(y_t | y_{<t})`` over the valid tokens under the
      model's own distribution (temperature 1, no top-k).
    carry: the carry after each sequence's last valid step.
  """
  tokens: jax.Array
  lengths: jax.Array
  log_prob: jax.Array
  carry: Carry


class Beams(NamedTuple):
  """What ``beam_search`` returns, beams best first.

  Attributes:
    tokens: ``(*batch, beam_size, num_steps)`` int32; ``pad_token`` after a stop token.
    lengths: ``(*batch, beam_size)`` int32, as ``Generation.lengths``.
    log_prob: ``(*batch, beam_size)``, ``log p(y)`` of each beam (``-inf``: fewer than
      ``beam_size`` distinct hypotheses exist, that beam is empty).
    score: ``(*batch, beam_size)``, ``log_prob / lengths ** length_penalty``, the ranking.
  """
  tokens: jax.Array
  lengths: jax.Array
  log_prob: jax.Array
  score: jax.Array


# ----------------------------------------------------------------------------- the core


def _as_layer(core: Core) -> Layer:
  """The sequence layer a decoder's core runs as: a cell is ``recurrent(cell)``, a list is
  ``stack(*list)``."""
  if isinstance(core, Cell):
    return recurrent(core)
  if isinstance(core, (list, tuple)):
    if not core:
      _checks.fail("core", "a cell, a recurrent or stack layer, or a non-empty list of cells",
                   "an empty list")
    return stack(*core)
  if not isinstance(core, Layer) or not core.is_sequence:
    _checks.fail("core", "a Cell, a recurrent or stack layer, or a list of cells",
                 type(core).__name__ if not isinstance(core, Layer)
                 else f"a {core.spec.kind!r} layer", TypeError)
  return core


def as_cell(core: Core) -> Cell:
  """The ``Cell`` that runs a sequence layer one time step, on the layer's own params.

  ``as_cell(jaxseq.stack(a, b))`` steps ``a`` then ``b`` (adding the input from the second
  layer on when the stack is ``residual``); its params and carry are the stack's (lists with
  one entry per layer), so ``layer.apply`` and a loop of ``as_cell(layer).step`` give the
  same outputs. A ``recurrent`` layer steps its cell, a ``Cell`` is returned as it is and a
  list of cells is stepped as their ``stack``. Dropout is a training-time option of the
  layers and is not applied here. A layer that runs backwards in time (``reverse=True``,
  ``bidirectional``) cannot be stepped forward and raises ``ValueError``.
  """
  if isinstance(core, Cell):
    return core
  layer = _as_layer(core)
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    if spec.reverse:
      _checks.fail("core", "a layer that runs forward in time (generation steps forward)",
                   "a recurrent layer with reverse=True", ValueError)
    return spec.cell
  if isinstance(spec, specs.StackSpec):
    return _stack_cell(layer, [as_cell(sub) for sub in spec.layers], spec.residual)
  _checks.fail("core", "a layer that runs forward in time one step at a time (a cell, "
               "recurrent or stack; the backward half of a bidirectional layer needs the "
               "whole sequence first)", f"a {spec.kind!r} layer")


def _stack_cell(layer: Layer, cells: list[Cell], residual: bool) -> Cell:
  def initialize_carry(params, input_shape):
    _check_list("params", params, len(cells))
    carries = []
    shape, dtype = tuple(input_shape), _dtype_of(params)
    for cell, p in zip(cells, params):
      carry = cell.initialize_carry(p, shape)
      _, y = jax.eval_shape(cell.step, p, carry, jax.ShapeDtypeStruct(shape, dtype))
      carries.append(carry)
      shape = tuple(y.shape)
    return carries

  def step(params, carry, x_t):
    _check_list("params", params, len(cells))
    _check_list("carry", carry, len(cells))
    carries = []
    for i, (cell, p, c) in enumerate(zip(cells, params, carry)):
      c, y = cell.step(p, c, x_t)
      x_t = y + x_t if residual and i > 0 else y
      carries.append(c)
    return carries, x_t

  return Cell(layer.init, initialize_carry, step)


def _check_list(argument: str, value: Any, n: int) -> None:
  if not isinstance(value, (list, tuple)) or len(value) != n:
    _checks.fail(argument, f"a list of {n} entries, one per stacked layer",
                 f"{type(value).__name__} of length {len(value)}"
                 if isinstance(value, (list, tuple)) else type(value).__name__)


def _dtype_of(params: Params):
  leaves = [l for l in jax.tree.leaves(params) if hasattr(l, "dtype")]
  return leaves[0].dtype if leaves else jnp.float32


def _time_major(layer: Layer) -> bool:
  spec = layer.spec
  if isinstance(spec, specs.RecurrentSpec):
    return spec.time_major
  if isinstance(spec, specs.StackSpec):
    return _time_major(spec.layers[0])
  return False


# ----------------------------------------------------------------------------- per-row layers


def per_row(layer: Layer, params: Params, x: jax.Array, feature_ndim: int) -> jax.Array:
  """A network layer (one batch axis) applied to ``x`` with any batch axes, none included:
  the leading axes are flattened into one and restored."""
  batch_shape = x.shape[:x.ndim - feature_ndim]
  rows = x.reshape((-1,) + x.shape[x.ndim - feature_ndim:])
  y, _ = layer.apply(params, {}, rows)
  return y.reshape(batch_shape + y.shape[1:])


def _network_layer(argument: str, layer: Any) -> Layer:
  if not isinstance(layer, Layer) or layer.is_sequence:
    _checks.fail(argument, "a network layer such as jaxseq.nn.Dense or jaxseq.nn.Embedding",
                 type(layer).__name__ if not isinstance(layer, Layer)
                 else f"a sequence layer ({layer.spec.kind!r})", TypeError)
  return layer


def _stateless_init(argument: str, layer: Layer, key: jax.Array, input_shape) -> Params:
  params, state = layer.init(key, input_shape)
  if jax.tree.leaves(state):
    _checks.fail(argument, "a layer without state (generation runs it in eval mode on "
                 "{} state)", f"state {_checks.describe(state)}")
  return params


def token_ids(argument: str, tokens: Any, vocab_size: int) -> jax.Array:
  """Integer token ids; concrete ids are checked to lie in ``[0, vocab_size)``."""
  if not hasattr(tokens, "dtype"):
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer, list, tuple)):
      _checks.fail(argument, "integer token ids", repr(tokens), TypeError)
    tokens = np.asarray(tokens)
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    _checks.fail(argument, "integer token ids", f"dtype {tokens.dtype}", TypeError)
  if not isinstance(tokens, jax.core.Tracer) and np.size(tokens):
    values = np.asarray(tokens)     # NumPy: jnp reductions would be staged under a trace
    low, high = values.min(), values.max()
    if low < 0 or high >= vocab_size:
      _checks.fail(argument, f"token ids in [0, {vocab_size}) (the vocabulary)",
                   f"values in [{low}, {high}]")
  return jnp.asarray(tokens)


# ----------------------------------------------------------------------------- Decoder


def decoder(core: Core, vocab_size: int, *, embed: Union[int, Layer, None] = None,
            readout: Optional[Layer] = None) -> Decoder:
  r"""A token-in, logits-out ``Decoder`` around a recurrent core (see the module docstring).

  Args:
    core: a ``Cell``, a ``recurrent`` or ``stack`` layer, or a list of cells (stacked).
    vocab_size: ``V``, the number of token ids.
    embed: how a token becomes the core's input: ``None`` for the one-hot vector (input
      size ``V``, Karpathy's char-rnn), an int ``E`` for ``jaxseq.nn.Embedding(V, E)``, or
      any network layer mapping ids ``(N,)`` to ``(N, E)``.
    readout: a stateless network layer mapping the core's output ``(N, H)`` to logits
      ``(N, V)``; default ``jaxseq.nn.Dense(V)``.

  Returns:
    a ``Decoder``; its params are ``{"embed": ..., "core": ..., "readout": ...}`` with the
    core's params exactly as ``core.init`` makes them.
  """
  from jaxseq import nn
  layer = _as_layer(core)
  step_cell = as_cell(core)      # fails now for layers that cannot step forward
  vocab_size = _checks.positive_int("vocab_size", vocab_size)
  if embed is None:
    embed_layer = None
  elif isinstance(embed, Layer):
    embed_layer = _network_layer("embed", embed)
  else:
    embed_layer = nn.Embedding(vocab_size, _checks.positive_int("embed", embed))
  readout = nn.Dense(vocab_size) if readout is None else _network_layer("readout", readout)
  time_major = _time_major(layer)

  def embedded(params, tokens):
    tokens = token_ids("tokens", tokens, vocab_size)
    if embed_layer is None:
      return jax.nn.one_hot(tokens, vocab_size, dtype=_dtype_of(params["core"]))
    return per_row(embed_layer, params["embed"], tokens, 0)

  def init(key: jax.Array) -> Params:
    _checks.init_key(key)
    k_embed, k_core, k_readout = jax.random.split(key, 3)
    params = {}
    input_size = vocab_size
    if embed_layer is not None:
      params["embed"] = _stateless_init("embed", embed_layer, k_embed, ())
      input_size = jax.eval_shape(lambda p: per_row(embed_layer, p, jnp.zeros((1,), int), 0),
                                  params["embed"]).shape[-1]
    params["core"] = layer.init(k_core, input_size)
    hidden = output_size(layer, params["core"], input_size)
    params["readout"] = _stateless_init("readout", readout, k_readout, (hidden,))
    logits = jax.eval_shape(lambda p: per_row(readout, p, jnp.zeros((1, hidden)), 1),
                            params["readout"])
    if logits.shape[-1] != vocab_size:
      _checks.fail("readout", f"a layer with {vocab_size} outputs (the vocabulary)",
                   f"{logits.shape[-1]} outputs")
    return params

  def initialize_carry(params: Params, tokens_shape: tuple) -> Carry:
    _checks.param_dict(params, ("core", "readout"), "a decoder")
    shape = tuple(tokens_shape)
    x_t = jax.eval_shape(lambda p: embedded(p, jnp.zeros(shape, jnp.int32)), params)
    return step_cell.initialize_carry(params["core"], tuple(x_t.shape))

  def step(params: Params, carry: Carry, tokens: jax.Array):
    _checks.param_dict(params, ("core", "readout"), "a decoder")
    carry, h_t = step_cell.step(params["core"], carry, embedded(params, tokens))
    return carry, per_row(readout, params["readout"], h_t, 1)

  def apply(params: Params, tokens: jax.Array, *, lengths=None, carry=None, key=None):
    _checks.param_dict(params, ("core", "readout"), "a decoder")
    xs = embedded(params, tokens)
    if xs.ndim < 2:
      _checks.fail("tokens", "token ids of shape (*batch, T)", f"shape {tuple(xs.shape[:-1])}")
    if time_major:
      xs = jnp.moveaxis(xs, -2, 0)
    hs, carry = layer.apply(params["core"], xs, lengths=lengths, carry=carry, key=key)
    if time_major:
      hs = jnp.moveaxis(hs, 0, -2)
    return per_row(readout, params["readout"], hs, 1), carry

  return Decoder(init, initialize_carry, step, apply, vocab_size)


# ----------------------------------------------------------------------------- sampling


def sample_logits(logits: jax.Array, key: jax.Array | None = None, *,
                  temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
  r"""Token ids from logits ``(*batch, V)``: ``argmax`` without a key; with one, a draw from
  ``softmax(logits / temperature)`` renormalised over the ``top_k`` largest logits (all
  ``V`` when ``top_k`` is ``None``). ``top_k=1`` is greedy whatever the key."""
  if key is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if top_k is not None and top_k < logits.shape[-1]:
    values, indices = jax.lax.top_k(logits, top_k)
    choice = jax.random.categorical(key, values / temperature, axis=-1)
    return jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)
  return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def _stop_set(stop_tokens: Any, vocab_size: int) -> tuple[int, ...]:
  if stop_tokens is None:
    return ()
  values = stop_tokens if isinstance(stop_tokens, (list, tuple)) else [stop_tokens]
  out = []
  for i, value in enumerate(values):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        0 <= value < vocab_size):
      _checks.fail("stop_tokens", f"token ids in [0, {vocab_size}) (an int or a list)",
                   repr(stop_tokens), TypeError if not isinstance(value, (int, np.integer))
                   or isinstance(value, bool) else ValueError)
    out.append(int(value))
  return tuple(out)


def _is_stop(tokens: jax.Array, stop: tuple[int, ...]) -> jax.Array:
  if not stop:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(stop, tokens.dtype))


def _pad_id(pad_token: Any, vocab_size: int) -> int:
  if isinstance(pad_token, bool) or not isinstance(pad_token, (int, np.integer)):
    _checks.fail("pad_token", "an int token id", repr(pad_token), TypeError)
  if not 0 <= pad_token < vocab_size:
    _checks.fail("pad_token", f"a token id in [0, {vocab_size})", repr(pad_token))
  return int(pad_token)


def _check_decoder(dec: Any) -> Decoder:
  if not all(hasattr(dec, name) for name in ("step", "initialize_carry", "vocab_size")):
    _checks.fail("decoder", "a jaxseq Decoder (jaxseq.decoder(...), "
                 "or a seq2seq model's .decoder)", type(dec).__name__, TypeError)
  return dec


def _keep_where(done: jax.Array, old: Carry, new: Carry) -> Carry:
  """``old`` where a sequence is done (``done`` is ``(*batch,)``), ``new`` elsewhere."""
  def pick(o, n):
    mask = done.reshape(done.shape + (1,) * (n.ndim - done.ndim))
    return jnp.where(mask, o, n)
  return jax.tree.map(pick, old, new)


def generate(decoder: Decoder, params: Params, start: Any, num_steps: int, *,
             carry: Carry = None, key: jax.Array | None = None, temperature: float = 1.0,
             top_k: int | None = None, stop_tokens: Any = None,
             pad_token: int = 0) -> Generation:
  r"""Autoregressive decoding in one ``lax.scan``: each token is fed back as the next input.

  For ``t = 1 .. num_steps``: ``(s_t, logits_t) = decoder.step(s_{t-1}, y_{t-1})`` with
  ``y_0 = start``, then ``y_t = argmax logits_t`` (no ``key``: greedy) or
  ``y_t ~ softmax(logits_t / temperature)`` restricted to the ``top_k`` largest logits
  (a ``key``; one fresh subkey per step, so a key fixes the whole sample).

  Args:
    decoder: a ``Decoder`` (``jaxseq.decoder``, or a ``seq2seq``
      model's ``.decoder``).
    params: its params.
    start: the first input token(s), int ids of shape ``(*batch,)`` (a Python int for one
      sequence).
    num_steps: how many tokens to generate (a static int; the scan always runs that long).
    carry: the initial carry (a primed state, or an encoder's via ``seq2seq``); zeros
      (``decoder.initialize_carry``) when ``None``.
    key: a PRNG key to sample; ``None`` decodes greedily (``temperature`` and ``top_k`` do
      not change an ``argmax``).
    temperature: positive; below 1 sharpens the distribution, above 1 flattens it.
    top_k: sample among the ``top_k`` most likely tokens only (``None``: all).
    stop_tokens: a token id or a list of them: a sequence stops at its first one (kept in
      the output and counted in ``lengths``); its later tokens are ``pad_token`` and its
      carry is frozen.
    pad_token: the id written after a stop token.

  Returns:
    a ``Generation(tokens, lengths, log_prob, carry)``.
  """
  decoder = _check_decoder(decoder)
  vocab_size = decoder.vocab_size
  start = token_ids("start", start, vocab_size)
  num_steps = _checks.positive_int("num_steps", num_steps)
  _checks.prng_key(key)
  temperature = _checks.positive_float("temperature", temperature)
  top_k = _checks.optional_positive_int("top_k", top_k)
  stop = _stop_set(stop_tokens, vocab_size)
  pad = _pad_id(pad_token, vocab_size)
  if carry is None:
    carry = decoder.initialize_carry(params, tuple(start.shape))
  keys = (jnp.zeros((num_steps,), jnp.uint32) if key is None
          else jax.random.split(key, num_steps))

  def body(state, key_t):
    carry, y_prev, done, lengths, log_prob = state
    new_carry, logits = decoder.step(params, carry, y_prev)
    y_t = sample_logits(logits, None if key is None else key_t, temperature=temperature,
                        top_k=top_k)
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y_t[..., None],
                                axis=-1)[..., 0]
    y_t = jnp.where(done, pad, y_t)
    carry = _keep_where(done, carry, new_carry)
    log_prob = log_prob + jnp.where(done, 0.0, log_p)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | _is_stop(y_t, stop)
    return (carry, y_t, done, lengths, log_prob), y_t

  batch_shape = tuple(start.shape)
  log_dtype = jax.eval_shape(decoder.step, params, carry, start)[1].dtype
  state = (carry, start.astype(jnp.int32), jnp.zeros(batch_shape, bool),
           jnp.zeros(batch_shape, jnp.int32), jnp.zeros(batch_shape, log_dtype))
  (carry, _, _, lengths, log_prob), tokens = jax.lax.scan(body, state, keys)
  return Generation(jnp.moveaxis(tokens, 0, -1), lengths, log_prob, carry)


# ----------------------------------------------------------------------------- beam search


def beam_search(decoder: Decoder, params: Params, start: Any, num_steps: int, *,
                beam_size: int, carry: Carry = None, stop_tokens: Any = None,
                pad_token: int = 0, length_penalty: float = 0.0) -> Beams:
  r"""Beam search (Graves 2012; Sutskever et al. 2014) in one ``lax.scan``.

  Keeps the ``beam_size`` best prefixes of each sequence. At each step every live beam is
  extended by every token, ``log p(y_{\le t}) = log p(y_{<t}) + log p(y_t | y_{<t})``, and
  the ``beam_size`` best of the ``beam_size * V`` candidates survive, ranked by

      score(y) = log p(y) / |y| ** length_penalty

  (``length_penalty = 0``: the plain log-probability; ``1``: the mean per-token
  log-probability, which no longer favours short hypotheses). A beam that emitted a stop
  token is finished: it stays a candidate with its final score, extended by ``pad_token``
  at no cost. At the first step only the start beam exists, so no hypothesis is repeated.
  ``beam_size=1`` is greedy decoding (``generate`` without a key).

  Args:
    decoder, params, start, num_steps, carry, stop_tokens, pad_token: as ``generate``.
    beam_size: ``k``, the number of hypotheses kept per sequence.
    length_penalty: ``alpha >= 0`` above.

  Returns:
    ``Beams(tokens, lengths, log_prob, score)``, each sequence's beams sorted by ``score``,
    best first.
  """
  decoder = _check_decoder(decoder)
  vocab_size = decoder.vocab_size
  start = token_ids("start", start, vocab_size)
  num_steps = _checks.positive_int("num_steps", num_steps)
  k = _checks.positive_int("beam_size", beam_size)
  alpha = _checks.number("length_penalty", length_penalty, "a finite float >= 0",
                         lambda v: v >= 0)
  stop = _stop_set(stop_tokens, vocab_size)
  pad = _pad_id(pad_token, vocab_size)
  batch_shape = tuple(start.shape)
  if carry is None:
    carry = decoder.initialize_carry(params, batch_shape)
  n = int(np.prod(batch_shape, dtype=int))

  def tile(leaf):   # (*batch, ...) -> (n, k, ...): every beam starts from the same carry
    leaf = jnp.reshape(leaf, (n,) + jnp.shape(leaf)[len(batch_shape):])
    return jnp.broadcast_to(leaf[:, None], (n, k) + leaf.shape[1:])

  carry = jax.tree.map(tile, carry)
  tokens_in = tile(start.astype(jnp.int32))
  log_dtype = jax.eval_shape(decoder.step, params, carry, tokens_in)[1].dtype
  neg_inf = jnp.asarray(-jnp.inf, log_dtype)
  log_prob = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf).astype(log_dtype)
  log_prob = jnp.broadcast_to(log_prob, (n, k))
  pad_row = jnp.where(jnp.arange(vocab_size) == pad, 0.0, neg_inf).astype(log_dtype)

  def gather(leaf, parent):     # (n, k, ...) indexed by parent (n, k) along the beams
    index = parent.reshape(parent.shape + (1,) * (leaf.ndim - 2))
    return jnp.take_along_axis(leaf, index, axis=1)

  def normalised(log_p, length):
    if alpha == 0:
      return log_p
    return log_p / jnp.maximum(length, 1).astype(log_p.dtype) ** alpha

  def body(state, t):
    carry, y_prev, history, done, lengths, log_prob = state
    new_carry, logits = decoder.step(params, carry, y_prev)
    step_log_p = jax.nn.log_softmax(logits, axis=-1)                  # (n, k, V)
    step_log_p = jnp.where(done[..., None], pad_row, step_log_p)
    candidates = log_prob[..., None] + step_log_p                     # (n, k, V)
    cand_lengths = lengths + (~done).astype(jnp.int32)                # (n, k)
    scores = normalised(candidates, cand_lengths[..., None])
    _, best = jax.lax.top_k(scores.reshape(n, k * vocab_size), k)    # (n, k)
    parent, token = best // vocab_size, (best % vocab_size).astype(jnp.int32)
    log_prob = jnp.take_along_axis(candidates.reshape(n, -1), best, axis=1)
    parent_done = jnp.take_along_axis(done, parent, axis=1)
    carry = jax.tree.map(lambda c: gather(c, parent), _keep_where(done, carry, new_carry))
    lengths = jnp.take_along_axis(cand_lengths, parent, axis=1)
    token = jnp.where(parent_done, pad, token)
    history = gather(history, parent).at[:, :, t].set(token)
    done = parent_done | _is_stop(token, stop)
    return (carry, token, history, done, lengths, log_prob), None

  history = jnp.full((n, k, num_steps), pad, jnp.int32)
  state = (carry, tokens_in, history, jnp.zeros((n, k), bool), jnp.zeros((n, k), jnp.int32),
           log_prob)
  (_, _, history, _, lengths, log_prob), _ = jax.lax.scan(body, state,
                                                          jnp.arange(num_steps))
  score = normalised(log_prob, lengths)
  reshape = lambda a: a.reshape(batch_shape + a.shape[1:])
  return Beams(reshape(history), reshape(lengths), reshape(log_prob), reshape(score))
